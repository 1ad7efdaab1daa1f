// DEVICE (the kernel's device.c plus the VFIO cdev verbs that create and
// attach it): bind a host PCI function to the session, attach (dev, pasid) to
// an IOAS (automatic domain), a HWPT_PAGING or a HWPT_NESTED, replace and
// detach, GET_HW_INFO. The DEVICE holds a reference for its driver binding
// (so DESTROY is always EBUSY) plus one per attachment; each attachment holds
// a reference on its HWPT (dropped on detach/replace/unbind).
import { ErrnoError, check } from "@iommufd/kit";
import { DeviceAttachFlags, DeviceDetachFlags, HwCapabilities, HwInfoFlags, type Iommufd } from "@iommufd/proto/iommufd";
import type { Ucmd, UcmdTable } from "../core/dispatch.js";
import { IommufdObject } from "../core/object.js";
import type { PciSlot } from "../core/pci.js";
import type { Session } from "../core/session.js";
import type { PciDevice } from "../drivers/ops.js";
import { type Hwpt, HwptPaging, allocPagingHwpt } from "./hw-pagetable.js";
import type { Ioas } from "./ioas.js";
import type { Vdevice } from "./viommu.js";

/** IOMMU_NO_PASID: the RID. */
export const NO_PASID = 0;

export class Device extends IommufdObject {
  readonly type = "DEVICE" as const;
  /** pasid (0 = RID) → attached HWPT */
  readonly attachments = new Map<number, Hwpt>();
  vdevice?: Vdevice;

  constructor(
    readonly slot: PciSlot,
    readonly session: Session,
  ) {
    super();
    this.users++; // the binding driver's reference, dropped by unbind
    slot.bound = { sessionId: session.id, unbind: () => unbindDevice(this) };
  }

  get dev(): PciDevice {
    return this.slot.dev;
  }

  /** Blocked DMA everywhere and every HWPT reference dropped (unbind / session close). */
  detachAll(): void {
    for (const pasid of [...this.attachments.keys()].sort((a, b) => b - a)) {
      void this.dev.iommu.attach(this.dev, pasid === NO_PASID ? undefined : pasid, undefined).catch(() => undefined);
      this.drop(pasid);
    }
  }

  /** Forget the attachment of `pasid`: references, reservations, and an auto HWPT left unused. */
  drop(pasid: number): void {
    const hwpt = this.attachments.get(pasid);
    if (!hwpt) return;
    this.attachments.delete(pasid);
    ioasOf(hwpt).iopt.removeReserved(reservationKey(this, pasid));
    hwpt.fault?.abortDevice(this, pasid);
    this.users--;
    releaseHwptRef(this.session, hwpt);
  }

  release(): void {
    this.detachAll();
    if (this.slot.bound?.sessionId === this.session.id) this.slot.bound = undefined;
  }

  override describe() {
    return {
      rid: `0x${this.dev.rid.toString(16)}`,
      name: this.dev.name,
      iommu: this.dev.iommu.id,
      attached: [...this.attachments.entries()].map(([p, h]) => `${p === NO_PASID ? "rid" : `pasid ${p}`}→${h.id}`).join(" ") || "blocked",
    };
  }
}

function ioasOf(hwpt: Hwpt): Ioas {
  return hwpt.type === "HWPT_PAGING" ? hwpt.ioas : hwpt.parent.ioas;
}

/** One object per (device, pasid) attachment, as the owner of its IOAS reservations. */
const reservationKeys = new WeakMap<Device, Map<number, object>>();
function reservationKey(d: Device, pasid: number): object {
  let m = reservationKeys.get(d);
  if (!m) reservationKeys.set(d, (m = new Map()));
  let k = m.get(pasid);
  if (!k) m.set(pasid, (k = {}));
  return k;
}

/** Drop an attachment's reference; an automatic HWPT nobody uses any more is destroyed. */
function releaseHwptRef(session: Session, hwpt: Hwpt): void {
  hwpt.users--;
  if (hwpt.type === "HWPT_PAGING" && hwpt.auto && hwpt.users === 1 && !hwpt.dying) session.objects.remove(hwpt);
}

/** The DEVICE object bound to `slot` is unbound (DeviceUnbind, hot-unplug, session close). */
export function unbindDevice(device: Device): void {
  const { session } = device;
  device.detachAll();
  if (device.vdevice) device.vdevice.destroyForUnbind();
  device.users--; // the driver's reference
  session.objects.remove(device);
}

async function attach(ucmd: Ucmd, device: Device, pasid: number, ptId: number): Promise<number> {
  const { objects } = ucmd.session;
  const dev = device.dev;
  const pt = objects.get(ptId);
  if (pt.type !== "IOAS" && pt.type !== "HWPT_PAGING" && pt.type !== "HWPT_NESTED") throw new ErrnoError("EINVAL", `pt_id ${ptId} is a ${pt.type}`);
  const old = device.attachments.get(pasid);
  if (old && old.id === ptId) return ptId; // replace with itself: no-op

  if (pt.type === "IOAS") {
    if (pasid !== NO_PASID) throw new ErrnoError("EINVAL", "an IOAS (automatic domain) cannot be attached to a PASID");
    const ioas = pt as Ioas;
    checkRidRules(device, pasid, undefined);
    // Try the existing automatic HWPTs of this IOAS first (EINVAL from the driver means "incompatible, next").
    for (const o of objects.objects()) {
      if (o.type !== "HWPT_PAGING") continue;
      const h = o as HwptPaging;
      if (!h.auto || h.ioas !== ioas || h.driver !== dev.iommu || h === old) continue;
      try {
        await attachHwpt(ucmd, device, pasid, h);
        return h.id;
      } catch (e) {
        if (!(e instanceof ErrnoError) || e.errno !== "EINVAL") throw e;
      }
    }
    const hwpt = allocPagingHwpt(ucmd, dev, ioas, { nestParent: false, dirtyTracking: false, pasid: false }, true);
    await attachHwpt(ucmd, device, pasid, hwpt);
    return hwpt.id;
  }

  const hwpt = pt as Hwpt;
  if (hwpt.driver !== dev.iommu) throw new ErrnoError("EINVAL", "the HWPT belongs to another IOMMU instance");
  if (pasid !== NO_PASID && !hwpt.pasidCompat) throw new ErrnoError("EINVAL", "the HWPT was not allocated with HWPT_ALLOC_PASID");
  checkRidRules(device, pasid, hwpt);
  // A nested HWPT of a vIOMMU needs the device's vDEVICE only for a translating vSTE: the driver checks (ENOENT).
  if (hwpt.type === "HWPT_PAGING" && hwpt.domain.flags.dirtyTracking && !dev.iommu.caps.dirtyTracking) {
    throw new ErrnoError("EINVAL", "the device's IOMMU has no dirty tracking");
  }
  await attachHwpt(ucmd, device, pasid, hwpt);
  return hwpt.id;
}

/** §5.4: a PASID next to a non-PASID-compatible RID domain, or a RID domain next to attached PASIDs. */
function checkRidRules(device: Device, pasid: number, hwpt: Hwpt | undefined): void {
  const compat = hwpt?.pasidCompat ?? false;
  if (pasid !== NO_PASID) {
    const rid = device.attachments.get(NO_PASID);
    if (rid && !rid.pasidCompat) throw new ErrnoError("EINVAL", "the RID is attached to a HWPT that is not PASID-compatible");
  } else {
    const pasids = [...device.attachments.keys()].some((p) => p !== NO_PASID);
    if (pasids && !compat) throw new ErrnoError("EINVAL", "PASIDs are attached: the RID needs a PASID-compatible HWPT");
  }
}

/** Program the hardware and move references: atomic, the old attachment stays on failure. */
async function attachHwpt(ucmd: Ucmd, device: Device, pasid: number, hwpt: Hwpt): Promise<void> {
  const dev = device.dev;
  const ioas = ioasOf(hwpt);
  const key = reservationKey(device, pasid);
  const old = device.attachments.get(pasid);
  const oldIoas = old ? ioasOf(old) : undefined;
  // Reserved regions are enforced for RID attachments only; a replace within the same IOAS keeps them.
  const reserve = pasid === NO_PASID && oldIoas !== ioas;
  if (reserve) {
    try {
      for (const r of dev.reservedRegions) ioas.iopt.addReserved(r.start, r.last, key);
    } catch (e) {
      ioas.iopt.removeReserved(key);
      throw e;
    }
  }
  try {
    ucmd.point("device_attach: driver");
    await dev.iommu.attach(dev, pasid === NO_PASID ? undefined : pasid, hwpt.domain);
  } catch (e) {
    if (reserve) ioas.iopt.removeReserved(key);
    throw e;
  }
  if (reserve && oldIoas) oldIoas.iopt.removeReserved(key);
  hwpt.users++;
  device.attachments.set(pasid, hwpt);
  if (old) {
    old.fault?.abortDevice(device, pasid);
    releaseHwptRef(device.session, old);
  } else {
    device.users++;
  }
}

const KNOWN_INFO_FLAGS = HwInfoFlags.INPUT_TYPE;

export const deviceHandlers: UcmdTable<typeof Iommufd> = {
  deviceBind(req, ucmd) {
    check(req.flags === 0, "EINVAL", "flags must be 0");
    const pci = ucmd.host.pci;
    let slot: PciSlot;
    if (req.device.case === "name") slot = pci.byName(req.device.value);
    else if (req.device.case === "rid") slot = pci.byRid(req.device.value);
    else throw new ErrnoError("ENOENT", "no device named");
    if (slot.unplugging) throw new ErrnoError("ENODEV", "the device is being unplugged");
    if (slot.bound) throw new ErrnoError("EINVAL", `the device is already bound (session ${slot.bound.sessionId})`);
    const device = ucmd.alloc(new Device(slot, ucmd.session));
    return { outDevid: device.id };
  },

  async deviceAttach(req, ucmd) {
    check((req.flags & ~DeviceAttachFlags.PASID) === 0, "EINVAL", "unknown flags");
    const device = ucmd.session.objects.get<Device>(req.devId, "DEVICE");
    let pasid = NO_PASID;
    if (req.flags & DeviceAttachFlags.PASID) {
      const max = device.dev.maxPasidLog2;
      check(max > 0 && req.pasid < 2 ** max, "EINVAL", `pasid ${req.pasid} is not supported by the device`);
      pasid = req.pasid;
    }
    return { ptId: await attach(ucmd, device, pasid, req.ptId) };
  },

  async deviceDetach(req, ucmd) {
    check((req.flags & ~DeviceDetachFlags.PASID) === 0, "EINVAL", "unknown flags");
    const device = ucmd.session.objects.get<Device>(req.devId, "DEVICE");
    let pasid = NO_PASID;
    if (req.flags & DeviceDetachFlags.PASID) {
      check(device.dev.maxPasidLog2 > 0, "EINVAL", "the device has no PASID support");
      pasid = req.pasid;
    }
    if (!device.attachments.has(pasid)) return {};
    await device.dev.iommu.attach(device.dev, pasid === NO_PASID ? undefined : pasid, undefined);
    device.drop(pasid);
    return {};
  },

  deviceUnbind(req, { session }) {
    unbindDevice(session.objects.get<Device>(req.devId, "DEVICE"));
    return {};
  },

  getHwInfo(req, { session }) {
    check((req.flags & ~KNOWN_INFO_FLAGS) === 0, "EOPNOTSUPP", "unknown flags");
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    const { dev } = session.objects.get<Device>(req.devId, "DEVICE");
    const info = dev.iommu.hwInfo(dev, req.flags & HwInfoFlags.INPUT_TYPE ? req.inDataType : undefined);
    const data = new Uint8Array(req.dataLen);
    data.set(info.data.subarray(0, Math.min(req.dataLen, info.data.length)));
    let caps = info.capabilities;
    const pasidLog2 = Math.min(dev.maxPasidLog2, dev.iommu.caps.maxPasidLog2);
    if (pasidLog2 > 0) {
      if (dev.pasidExec) caps |= BigInt(HwCapabilities.PCI_PASID_EXEC);
      if (dev.pasidPriv) caps |= BigInt(HwCapabilities.PCI_PASID_PRIV);
    }
    if (!dev.ats) caps |= BigInt(HwCapabilities.PCI_ATS_NOT_SUPPORTED);
    return { dataLen: info.data.length, outDataType: info.type, outMaxPasidLog2: pasidLog2, outCapabilities: caps, data };
  },
};

export { HwptPaging };
