// HWPT_PAGING and HWPT_NESTED (the kernel's hw_pagetable.c): allocation on an
// IOAS, a nesting parent or a vIOMMU; dirty tracking; cache invalidation.
// A paging HWPT is a driver domain fed from its IOAS; a nested HWPT is a
// driver domain whose stage 1 the user owns, on top of a paging parent.
// References: a paging HWPT holds its IOAS (dropped in release); a nested
// HWPT holds its parent or its vIOMMU; either holds its FAULT object.
import { ErrnoError, check } from "@iommufd/kit";
import { HwptAllocFlags, HwptDataType, HwptGetDirtyBitmapFlags, HwptSetDirtyTrackingFlags, type Iommufd } from "@iommufd/proto/iommufd";
import type { Ucmd, UcmdTable } from "../core/dispatch.js";
import { IommufdObject } from "../core/object.js";
import type { IommuDriver, NestedDomain, PagingDomain, PagingFlags, PciDevice } from "../drivers/ops.js";
import { ULONG_MAX } from "../iopt/io-pagetable.js";
import type { Device } from "./device.js";
import type { Fault } from "./eventq.js";
import type { Ioas } from "./ioas.js";
import { hwptDataBytes, invalidateEntryBytes, userBuffer } from "./payload.js";
import type { Viommu } from "./viommu.js";

export class HwptPaging extends IommufdObject {
  readonly type = "HWPT_PAGING" as const;
  private inIopt = false;

  /** Takes a reference on `ioas` and `fault` (dropped in release). */
  constructor(
    readonly ioas: Ioas,
    readonly domain: PagingDomain,
    readonly auto: boolean,
    readonly fault?: Fault,
  ) {
    super();
    ioas.users++;
    if (fault) fault.users++;
  }

  get driver(): IommuDriver {
    return this.domain.driver;
  }

  get pasidCompat(): boolean {
    return this.domain.flags.pasid;
  }

  /** Feed the domain from the IOAS (maps every area; EADDRINUSE/EINVAL from the aperture and alignment). */
  populate(): void {
    this.ioas.iopt.addDomain(this.domain);
    this.inIopt = true;
  }

  release(): void {
    if (this.inIopt) this.ioas.iopt.removeDomain(this.domain);
    this.domain.free();
    this.ioas.users--;
    if (this.fault) this.fault.users--;
  }

  override describe() {
    return {
      ioas_id: this.ioas.id,
      iommu: this.driver.id,
      auto_domain: this.auto,
      nest_parent: this.domain.flags.nestParent,
      dirty_tracking: this.domain.flags.dirtyTracking,
      pasid: this.pasidCompat,
      ...(this.fault ? { fault_id: this.fault.id } : {}),
    };
  }
}

export class HwptNested extends IommufdObject {
  readonly type = "HWPT_NESTED" as const;

  /** Takes a reference on its parent HWPT or its vIOMMU, and on `fault`. */
  constructor(
    readonly parent: HwptPaging,
    readonly viommu: Viommu | undefined,
    readonly domain: NestedDomain,
    readonly pasidCompat: boolean,
    readonly fault?: Fault,
  ) {
    super();
    (viommu ?? parent).users++;
    if (fault) fault.users++;
  }

  get driver(): IommuDriver {
    return this.parent.driver;
  }

  release(): void {
    this.domain.free();
    (this.viommu ?? this.parent).users--;
    if (this.fault) this.fault.users--;
  }

  override describe() {
    return {
      parent_id: this.parent.id,
      ...(this.viommu ? { viommu_id: this.viommu.id } : {}),
      iommu: this.driver.id,
      pasid: this.pasidCompat,
      ...(this.fault ? { fault_id: this.fault.id } : {}),
    };
  }
}

export type Hwpt = HwptPaging | HwptNested;

const PAGING_FLAGS = HwptAllocFlags.NEST_PARENT | HwptAllocFlags.DIRTY_TRACKING | HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID;
const NESTED_FLAGS = HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID;

/** Allocate a paging domain for `dev` on `ioas` and wrap it (auto domains come from DeviceAttach). */
export function allocPagingHwpt(ucmd: Ucmd, dev: PciDevice, ioas: Ioas, flags: PagingFlags, auto: boolean, fault?: Fault): HwptPaging {
  ucmd.point("hwpt_paging: domain alloc");
  const domain = dev.iommu.allocPaging(dev, flags, { fault: fault?.sink() });
  // From here the object owns the domain: abort() releases it (and drops the references).
  const hwpt = ucmd.alloc(new HwptPaging(ioas, domain, auto, fault));
  ucmd.point("hwpt_paging: populate");
  hwpt.populate();
  return hwpt;
}

/** Dirty bitmap cap (a kernel has none; we keep responses bounded). */
const MAX_BITMAP_BYTES = 4 << 20;

export const hwptHandlers: UcmdTable<typeof Iommufd> = {
  hwptAlloc(req, ucmd) {
    const { objects } = ucmd.session;
    check(req.reserved === 0 && req.reserved2 === 0, "EOPNOTSUPP", "reserved must be 0");
    const hasType = req.dataType !== HwptDataType.NONE;
    check(hasType === (req.dataLen !== 0), "EINVAL", "data_type and data_len disagree");
    const device = objects.get<Device>(req.devId, "DEVICE");
    const dev = device.dev;
    const pt = objects.find(req.ptId);
    if (!pt) throw new ErrnoError("EINVAL", `pt_id ${req.ptId} does not exist`);
    const faultOf = () => (req.flags & HwptAllocFlags.FAULT_ID_VALID ? objects.get<Fault>(req.faultId, "FAULT") : undefined);

    if (pt.type === "IOAS") {
      check((req.flags & ~PAGING_FLAGS) === 0, "EOPNOTSUPP", `unknown flags 0x${req.flags.toString(16)}`);
      const flags: PagingFlags = {
        nestParent: (req.flags & HwptAllocFlags.NEST_PARENT) !== 0,
        dirtyTracking: (req.flags & HwptAllocFlags.DIRTY_TRACKING) !== 0,
        pasid: (req.flags & HwptAllocFlags.PASID) !== 0,
      };
      if (flags.dirtyTracking && !dev.iommu.caps.dirtyTracking) throw new ErrnoError("EOPNOTSUPP", "the IOMMU has no dirty tracking");
      if (flags.nestParent && req.flags & HwptAllocFlags.FAULT_ID_VALID) throw new ErrnoError("EOPNOTSUPP", "a nesting parent cannot take faults");
      if (flags.pasid && dev.iommu.caps.maxPasidLog2 === 0) throw new ErrnoError("EOPNOTSUPP", "the IOMMU has no PASID support");
      if (hasType) throw new ErrnoError("EOPNOTSUPP", `data_type ${req.dataType} is not supported for paging domains`);
      const hwpt = allocPagingHwpt(ucmd, dev, pt as Ioas, flags, false, faultOf());
      return { outHwptId: hwpt.id };
    }

    if (pt.type !== "HWPT_PAGING" && pt.type !== "VIOMMU") throw new ErrnoError("EINVAL", `pt_id ${req.ptId} is a ${pt.type}`);
    check((req.flags & ~NESTED_FLAGS) === 0, "EOPNOTSUPP", `flags 0x${req.flags.toString(16)} not allowed for a nested HWPT`);
    if (!hasType) throw new ErrnoError("EOPNOTSUPP", "a nested HWPT needs driver data");
    const viommu = pt.type === "VIOMMU" ? (pt as Viommu) : undefined;
    const parent = viommu ? viommu.parent : (pt as HwptPaging);
    if (viommu && viommu.driver !== dev.iommu) throw new ErrnoError("EINVAL", "the device is behind another IOMMU than the vIOMMU");
    if (!dev.iommu.caps.nesting) throw new ErrnoError("EOPNOTSUPP", "the IOMMU has no nesting support");
    if (parent.auto || !parent.domain.flags.nestParent) throw new ErrnoError("EINVAL", "the parent is not a NEST_PARENT HWPT");
    if (parent.driver !== dev.iommu) throw new ErrnoError("EINVAL", "the parent belongs to another IOMMU");
    if (req.dataType !== dev.iommu.caps.nestedDataType) throw new ErrnoError("EOPNOTSUPP", `data_type ${req.dataType} is not this IOMMU's`);
    const pasid = (req.flags & HwptAllocFlags.PASID) !== 0;
    if (req.flags & ~dev.iommu.caps.nestedFlags) throw new ErrnoError("EOPNOTSUPP", `this IOMMU's nested domains do not take flags 0x${req.flags.toString(16)}`);
    if (pasid && dev.iommu.caps.maxPasidLog2 === 0) throw new ErrnoError("EOPNOTSUPP", "the IOMMU has no PASID support");
    const data = userBuffer(hwptDataBytes(req), req.dataLen);
    const fault = faultOf();
    ucmd.point("hwpt_nested: domain alloc");
    const domain = dev.iommu.allocNested(dev, parent.domain, viommu?.hw, req.dataType, data, { fault: fault?.sink() });
    const hwpt = ucmd.alloc(new HwptNested(parent, viommu, domain, pasid, fault));
    return { outHwptId: hwpt.id };
  },

  hwptSetDirtyTracking(req, { session }) {
    check((req.flags & ~HwptSetDirtyTrackingFlags.ENABLE) === 0, "EOPNOTSUPP", "unknown flags");
    const hwpt = session.objects.get<HwptPaging>(req.hwptId, "HWPT_PAGING");
    if (!hwpt.domain.flags.dirtyTracking) throw new ErrnoError("EOPNOTSUPP", "HWPT was not allocated with DIRTY_TRACKING");
    hwpt.domain.setDirtyTracking((req.flags & HwptSetDirtyTrackingFlags.ENABLE) !== 0);
    return {};
  },

  async hwptGetDirtyBitmap(req, { session }) {
    check((req.flags & ~HwptGetDirtyBitmapFlags.NO_CLEAR) === 0 && req.reserved === 0, "EOPNOTSUPP", "unknown flags or reserved ≠ 0");
    const hwpt = session.objects.get<HwptPaging>(req.hwptId, "HWPT_PAGING");
    const { iova, length, pageSize } = req;
    check(length !== 0n && iova + length - 1n <= ULONG_MAX, "EOVERFLOW", "iova + length overflows");
    const end = iova + length;
    const align = hwpt.ioas.iopt.iovaAlignment;
    check(iova % align === 0n && end % align === 0n, "EINVAL", "iova or end not aligned to iova_alignment");
    check(pageSize !== 0n, "EINVAL", "page_size is 0");
    check(iova % pageSize === 0n && end % pageSize === 0n, "EINVAL", "iova or end not aligned to page_size");
    if (!hwpt.domain.flags.dirtyTracking) throw new ErrnoError("EOPNOTSUPP", "HWPT was not allocated with DIRTY_TRACKING");
    const nbits = length / pageSize;
    const bytes = Number(((nbits + 63n) / 64n) * 8n);
    if (bytes > MAX_BITMAP_BYTES) throw new ErrnoError("ENOMEM", `bitmap of ${bytes} bytes exceeds ${MAX_BITMAP_BYTES}`);
    const data = new Uint8Array(bytes);
    hwpt.domain.readDirty(iova, length, (req.flags & HwptGetDirtyBitmapFlags.NO_CLEAR) !== 0, (at, len) => {
      const first = (at > iova ? at : iova) - iova;
      const last = (at + len < end ? at + len : end) - iova;
      for (let b = first / pageSize; b < (last + pageSize - 1n) / pageSize; b++) {
        const n = Number(b);
        data[n >> 3] = (data[n >> 3] as number) | (1 << (n & 7));
      }
    });
    await hwpt.domain.iotlbSync?.();
    return { data };
  },

  async hwptInvalidate(req, { session }) {
    let handled = 0;
    try {
      check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
      check(req.entryNum === 0 || (req.entries.length > 0 && req.entryLen !== 0), "EINVAL", "entry_num > 0 needs entries and entry_len");
      const obj = session.objects.get(req.hwptId);
      let invalidate: (dataType: number, entries: Uint8Array[]) => Promise<number>;
      let expected: number;
      // A vIOMMU driver copies the whole user array before handling any entry; a nested domain's goes entry by entry.
      let wholeArray = false;
      if (obj.type === "HWPT_NESTED") {
        const h = obj as HwptNested;
        if (!h.domain.invalidate) throw new ErrnoError("EOPNOTSUPP", "this nested HWPT has no cache invalidation");
        invalidate = h.domain.invalidate.bind(h.domain);
        expected = h.driver.caps.hwptInvalidateType;
      } else if (obj.type === "VIOMMU") {
        const v = obj as Viommu;
        invalidate = v.hw.invalidate.bind(v.hw);
        expected = v.driver.caps.viommuInvalidateType;
        wholeArray = true;
      } else {
        throw new ErrnoError("EINVAL", `hwpt_id ${req.hwptId} is a ${obj.type}`);
      }
      if (req.dataType !== expected) throw new ErrnoError("EINVAL", `data_type ${req.dataType} is not supported here`);
      if (req.entryNum === 0 && !wholeArray) return { entryNum: 0 };
      // The user array: entry_num entries of entry_len bytes; reading past what was sent faults.
      const flat = concat(req.entries.map(invalidateEntryBytes));
      const avail = req.entryLen === 0 ? 0 : Math.min(req.entryNum, Math.floor(flat.length / req.entryLen));
      if (wholeArray && avail < req.entryNum) throw new ErrnoError("EFAULT", `the array of ${req.entryNum} entries reaches past the entries given`);
      const entries = Array.from({ length: avail }, (_, i) => flat.subarray(i * req.entryLen, (i + 1) * req.entryLen));
      handled = await invalidate(req.dataType, entries);
      if (avail < req.entryNum) throw new ErrnoError("EFAULT", `entry ${avail} reaches past the entries given`);
      return { entryNum: handled };
    } catch (e) {
      const partial = (e as { handled?: number }).handled;
      const err = e instanceof ErrnoError ? e : new ErrnoError("EIO", String(e));
      err.response = { entryNum: partial ?? handled };
      throw err;
    }
  },
};

function concat(parts: Uint8Array[]): Uint8Array {
  const out = new Uint8Array(parts.reduce((n, p) => n + p.length, 0));
  let off = 0;
  for (const p of parts) {
    out.set(p, off);
    off += p.length;
  }
  return out;
}
