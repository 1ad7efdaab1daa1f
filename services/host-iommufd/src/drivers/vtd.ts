// The host's Intel VT-d driver (Linux drivers/iommu/intel/{iommu,pasid,
// nested,cache,prq}.c in spirit; our own code). It owns one Vtd model from
// packages/hw and programs it only as that driver programs hardware: a root
// table, scalable-mode context entries, PASID directories and tables in host
// memory; registers for bases and pointers; the invalidation queue
// (vtd-qi.ts) with wait descriptors for completion; the page request queue
// drained like prq.c; the fault recording registers drained like dmar_fault.
// Paging domains are second-stage tables (vtd-pgtable.ts); nested domains
// are the guest's first stage (iommu_hwpt_vtd_s1) over a nest-parent.
//
// Domain IDs: one per domain (paging and nested), as Linux allocates them.
// The IOTLB tags nested translations with (DID, PASID) only, so two nested
// domains sharing their parent's DID would alias each other's entries.
//
// Invalidation ordering (what the core can rely on):
// - IoptDomain.map needs no flush (the unit caches no non-present entry).
// - IoptDomain.unmap and readDirty's clearing flush the IOTLB synchronously:
//   page-selective by DID for the domain and for every nested child (the
//   child's entries whose GPA overlaps the range), domain-selective when the
//   range exceeds CAP.MAMV. That part is complete when they return.
// - Their device-TLB part (range for second-stage attachments, the whole ATC
//   for nested ones, like CACHE_TAG_NESTING_DEVTLB) is queued behind the
//   IOTLB part before they return and completes asynchronously:
//   `iotlbSync()` on the domain awaits it (and reports a time-out); every
//   later attach() and nested invalidate() waits for it first; a later wait
//   descriptor on the queue completes only after it (VT-d waits complete in
//   order).
// - attach() changes a PASID entry with Linux's tear-down protocol: clear P,
//   flush PASID cache (old DID), IOTLB (old DID: domain-selective for
//   second-stage/nested), device TLB (all of it, when ATS), await it all,
//   then write the new entry. A failure (validation, no memory, a device-TLB
//   time-out) leaves the old entry in place; detaching (blocked) never
//   fails and only logs a time-out.
// - Nested invalidate(): per entry, PASID-based IOTLB for every (device,
//   PASID) the domain is attached to plus PASID-based (or RID) device-TLB
//   invalidations, awaited before the next entry.

import {
  type AccessRequest,
  bytesToWords,
  CAP_FIELDS,
  CC_GRAN,
  CC_INV_DESC,
  decodeFaultRecord,
  decodePageRequest,
  devtlbDesc,
  ECAP_FIELDS,
  encodeInvDesc,
  encodePasidDirEntry,
  encodeSmContextEntry,
  encodeSmPasidEntry,
  encodeSmRootEntry,
  FAULT_REQ_TYPE,
  type Field,
  FLPM,
  FSTS_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  get,
  hwInfoVtd,
  hwInfoVtdBytes,
  INV_DESC_TYPE,
  IOTLB_GRAN,
  IOTLB_INV_DESC,
  isStopMarker,
  PAGE_REQ_DESC_BYTES,
  type PageGroupResponse,
  type PageRequest,
  pasidCacheDesc,
  PC_GRAN,
  PC_INV_DESC,
  Perm,
  PGRP_RESP_DESC,
  PGTT,
  PIOTLB_GRAN,
  PIOTLB_INV_DESC,
  PRG_RESPONSE_CODE,
  SM_CONTEXT_ENTRY_BYTES,
  SM_PASID_ENTRY,
  SM_PASID_ENTRY_BYTES,
  SM_ROOT_ENTRY_BYTES,
  type SmPasidFields,
  VTD_FR,
  VTD_REG,
  Vtd,
  type VtdCapabilities,
  vtdAmFor,
  vtdFaultReasonName,
  vtdWalk,
  wordsToBytes,
} from "@iommufd/hw";
import { check, ErrnoError, type ErrnoName } from "@iommufd/kit";
import { HwCapabilities, HwInfoType, HwptDataType, HwptInvalidateDataType, HwptVtdS1Flags, HwptVtdS1InvalidateFlags, HwptAllocFlags } from "@iommufd/proto/iommufd";
import type { IovaRange, Prot } from "../iopt/io-pagetable.js";
import type {
  AtsResult,
  DmaTranslation,
  DriverEnv,
  FaultInfo,
  HwInfo,
  IommuDriver,
  IopfSink,
  NestedDomain,
  PagingDomain,
  PagingFlags,
  PartialFailure,
  PciDevice,
  ViommuHooks,
  ViommuHw,
} from "./ops.js";
import { SecondStageTable } from "./vtd-pgtable.js";
import { InvalidationQueue, type QiBatch } from "./vtd-qi.js";

/** The PASID that requests without PASID use (context entry RID_PASID; Linux IOMMU_NO_PASID). */
export const RID_PASID = 0;
/** sizeof(struct iommu_hwpt_vtd_s1) and sizeof(struct iommu_hwpt_vtd_s1_invalidate). */
export const IOMMU_HWPT_VTD_S1_BYTES = 24;
export const IOMMU_HWPT_VTD_S1_INVALIDATE_BYTES = 24;
const U64_MAX = (1n << 64n) - 1n;
const PAGE = 4096n;
/** DIDs below this are reserved (Linux: 0, and FLPT_DEFAULT_DID = 1). */
const FIRST_DID = 2;
const DID_LIMIT = 1 << 16;

const FSTS_PFO = 1n << BigInt(FSTS_FIELDS.PFO.lo);
const FSTS_PPF = 1n << BigInt(FSTS_FIELDS.PPF.lo);
const PRS_PPR = 1n;
const PRS_PRO = 2n;
const FRCD_F_HI32 = 0x8000_0000n;
const SSADE_BIT = 1n << BigInt(SM_PASID_ENTRY.SSADE.lo);
const PASID_P_BIT = 1n;

/** iommu_hwpt_pgfault perm bits. */
const FAULT_PERM = { READ: 1, WRITE: 2, EXEC: 4, PRIV: 8 } as const;

/** Walk faults a page request can resolve (not present, or a permission the OS may grant). */
const RECOVERABLE = new Set<number>([VTD_FR.SM_FS_P, VTD_FR.SM_SS_NOT_PRESENT, VTD_FR.SM_WRITE, VTD_FR.SM_READ]);

export interface VtdDriverOptions {
  /** Capabilities of the modelled unit; defaults: the model's (scalable mode, nesting, 20-bit PASID, PRS, DT, SSADS, 5-level FS) with HAW = host memory width. */
  readonly caps?: Partial<VtdCapabilities>;
}

/** What the driver reads from CAP/ECAP at init (Linux cap_* / ecap_* macros). */
interface UnitCaps {
  readonly sagaw: number;
  readonly mgaw: number;
  readonly fro: number;
  readonly nfr: number;
  readonly mamv: number;
  readonly psi: boolean;
  readonly drd: boolean;
  readonly dwd: boolean;
  readonly ss2m: boolean;
  readonly ss1g: boolean;
  readonly fs5lp: boolean;
  readonly dt: boolean;
  readonly nest: boolean;
  readonly prs: boolean;
  readonly srs: boolean;
  readonly eafs: boolean;
  readonly pasid: boolean;
  readonly pss: number;
  readonly ssads: boolean;
  readonly smpwc: boolean;
}

/** Per-device state (Linux device_domain_info). */
interface DeviceState {
  readonly dev: PciDevice;
  readonly ats: boolean;
  readonly pri: boolean;
  /** PASID width usable on this device (0 = no PASID). */
  readonly pasidBits: number;
  /** PASID directory: contiguous pages. */
  readonly dir: bigint;
  readonly dirPages: number;
  readonly pdts: number;
  /** Directory index → PASID table page. */
  readonly tables: Map<number, bigint>;
  /** PASID (RID_PASID for the RID) → attached domain. */
  readonly attached: Map<number, VtdPagingDomain | VtdNestedDomain>;
}

interface Attachment {
  readonly state: DeviceState;
  readonly pasid: number;
}

/** A failure of entry `handled` of an invalidation array (ops.ts PartialFailure). */
function partialFailure(errno: ErrnoName, handled: number, message: string, cause?: unknown): ErrnoError & PartialFailure {
  const e = new ErrnoError(errno, message, cause === undefined ? undefined : { cause }) as ErrnoError & PartialFailure;
  e.handled = handled;
  return e;
}

function attachKey(a: { state: DeviceState; pasid: number }): string {
  return `${a.state.dev.rid}/${a.pasid}`;
}

function bdf(rid: number): string {
  const h = (n: number, w: number) => n.toString(16).padStart(w, "0");
  return `${h((rid >> 8) & 0xff, 2)}:${h((rid >> 3) & 0x1f, 2)}.${rid & 7}`;
}

/** A paging (second-stage) domain: iommu_domain of type PAGING. */
export class VtdPagingDomain implements PagingDomain {
  readonly kind = "paging" as const;
  readonly pgsizeMin = PAGE;
  readonly aperture: IovaRange;
  /** Dirty tracking currently enabled (SSADE in its PASID entries). */
  dirtyTracking = false;
  readonly attachments = new Map<string, Attachment>();
  readonly children = new Set<VtdNestedDomain>();
  /** Device-TLB invalidations started by unmap / readDirty, not yet complete. */
  private readonly pendingDevTlb = new Set<Promise<void>>();
  private deferredError: unknown;
  private freed = false;

  constructor(
    readonly drv: VtdDriver,
    readonly flags: PagingFlags,
    readonly did: number,
    readonly table: SecondStageTable,
    readonly fault: IopfSink | undefined,
    aperture: IovaRange,
  ) {
    this.aperture = aperture;
  }

  get driver(): IommuDriver {
    return this.drv;
  }

  /** PASID-entry AW of the table. */
  get aw(): number {
    return this.table.geometry.aw;
  }

  map(iova: bigint, length: bigint, pfnAt: (offset: bigint) => number, prot: Prot): void {
    check(iova >= this.aperture.start && iova + length - 1n <= this.aperture.last, "EINVAL", "outside the domain aperture");
    this.table.map(iova, length, pfnAt, prot);
  }

  unmap(iova: bigint, length: bigint): void {
    const unmapped = this.table.unmap(iova, length);
    if (unmapped > 0n) this.drv.flushParentRange(this, iova, length, false);
  }

  setDirtyTracking(enable: boolean): void {
    check(this.flags.dirtyTracking, "EOPNOTSUPP", "domain not allocated with dirty tracking");
    this.drv.setDirtyTracking(this, enable);
  }

  readDirty(iova: bigint, length: bigint, noClear: boolean, dirty: (iova: bigint, length: bigint) => void): void {
    check(this.flags.dirtyTracking, "EOPNOTSUPP", "domain not allocated with dirty tracking");
    // intel_iommu_read_and_clear_dirty: a bitmap read while tracking is off is refused.
    check(this.dirtyTracking, "EINVAL", "dirty tracking is not enabled");
    const span = this.table.harvestDirty(iova, length, noClear, dirty);
    if (span) this.drv.flushParentRange(this, span.start, span.end - span.start, false);
  }

  /**
   * iommu_iotlb_sync: settles when every device-TLB invalidation started by
   * an earlier unmap / readDirty of this domain completed; rejects with the
   * first failure (ETIMEDOUT) since the previous call.
   */
  async iotlbSync(): Promise<void> {
    await Promise.allSettled([...this.pendingDevTlb]);
    const e = this.deferredError;
    this.deferredError = undefined;
    if (e !== undefined) throw e;
  }

  /** The unit-side part of a flush batch this domain started (driver internal). */
  track(batch: QiBatch): void {
    if (batch.deviceTlb === 0) return;
    const p = batch.promise;
    this.pendingDevTlb.add(p);
    p.then(
      () => this.pendingDevTlb.delete(p),
      (e: unknown) => {
        this.pendingDevTlb.delete(p);
        this.deferredError ??= e;
        this.drv.logEvent(undefined, "device-TLB invalidation failed", { did: this.did, error: e instanceof Error ? e.message : String(e) });
      },
    );
  }

  free(): void {
    if (this.freed) return;
    check(this.attachments.size === 0, "EBUSY", "domain still attached");
    check(this.children.size === 0, "EBUSY", "domain still has nested children");
    this.freed = true;
    this.table.destroy();
    this.drv.freeDid(this.did);
  }
}

/** Parsed struct iommu_hwpt_vtd_s1. */
export interface VtdS1Config {
  readonly flags: bigint;
  readonly pgtblAddr: bigint;
  readonly addrWidth: number;
  readonly reserved: number;
}

/** A nested domain: the guest's first stage over a nest-parent (iommu_domain of type NESTED). */
export class VtdNestedDomain implements NestedDomain {
  readonly kind = "nested" as const;
  readonly attachments = new Map<string, Attachment>();
  private freed = false;

  constructor(
    readonly drv: VtdDriver,
    readonly parent: VtdPagingDomain,
    readonly did: number,
    readonly s1: VtdS1Config,
    readonly fault: IopfSink | undefined,
  ) {}

  /**
   * IOMMU_HWPT_INVALIDATE with iommu_hwpt_vtd_s1_invalidate entries
   * (intel_nested_cache_invalidate_user): stops at the first bad entry; a
   * failure carries `handled`.
   */
  async invalidate(dataType: number, entries: Uint8Array[]): Promise<number> {
    if (dataType !== HwptInvalidateDataType.VTD_S1) throw partialFailure("EINVAL", 0, `invalidation data type ${dataType} is not VTD_S1`);
    // Device-TLB invalidations of earlier unmaps complete first.
    await this.drv.drainQueue();
    let handled = 0;
    for (const e of entries) {
      if (e.length !== IOMMU_HWPT_VTD_S1_INVALIDATE_BYTES) throw partialFailure("EINVAL", handled, `entry_len ${e.length} is not ${IOMMU_HWPT_VTD_S1_INVALIDATE_BYTES}`);
      const v = new DataView(e.buffer, e.byteOffset, e.byteLength);
      const addr = v.getBigUint64(0, true);
      const npages = v.getBigUint64(8, true);
      const flags = v.getUint32(16, true);
      const reserved = v.getUint32(20, true);
      if ((flags & ~HwptVtdS1InvalidateFlags.LEAF) !== 0 || reserved !== 0) throw partialFailure("EOPNOTSUPP", handled, "unsupported invalidation flags or reserved bits");
      if ((addr & (PAGE - 1n)) !== 0n || (npages === U64_MAX && addr !== 0n)) throw partialFailure("EINVAL", handled, "address not 4 KiB aligned, or npages = U64_MAX with addr ≠ 0");
      try {
        await this.drv.flushNested(this, addr, npages, (flags & HwptVtdS1InvalidateFlags.LEAF) !== 0);
      } catch (err) {
        const errno = err instanceof ErrnoError ? err.errno : "EIO";
        throw partialFailure(errno, handled, err instanceof Error ? err.message : String(err), err);
      }
      handled++;
    }
    return handled;
  }

  free(): void {
    if (this.freed) return;
    check(this.attachments.size === 0, "EBUSY", "nested domain still attached");
    this.freed = true;
    this.parent.children.delete(this);
    this.drv.freeDid(this.did);
  }
}

/** The VT-d host driver of one remapping unit. */
export class VtdDriver implements IommuDriver {
  readonly vendor = "vtd" as const;
  readonly caps: IommuDriver["caps"];
  /** The remapping unit (tests and admin introspection; the core never touches it). */
  readonly vtd: Vtd;
  private readonly unit: UnitCaps;
  private readonly cap: bigint;
  private readonly ecap: bigint;
  private readonly qi: InvalidationQueue;
  private readonly rootTable: bigint;
  private readonly prq: bigint;
  private readonly prqBytes = 4096;
  private gcmd = 0n;
  private readonly ssAw: number;
  private readonly devices = new Map<number, DeviceState>();
  private readonly contextTables = new Map<string, bigint>();
  private readonly dids = new Set<number>();
  private nextDid = FIRST_DID;
  private attachChain: Promise<unknown> = Promise.resolve();
  private prqScheduled = false;
  private faultScheduled = false;
  private readonly stats = { prqRequests: 0, prqInvalid: 0, prqStopMarkers: 0, prqOverflows: 0, faultRecords: 0, faultOverflows: 0, pageResponses: 0 };

  constructor(
    readonly id: string,
    private readonly env: DriverEnv,
    opts: VtdDriverOptions = {},
  ) {
    const mem = env.memory.mem;
    const caps: Partial<VtdCapabilities> = { haw: Math.min(52, mem.paBits), ...opts.caps };
    this.vtd = new Vtd(mem, {
      caps,
      ports: {
        atcInvalidate: (req) => this.qi.onAtcInvalidate(req),
        pageResponse: (resp) => this.onPageResponse(resp),
        faultEvent: () => this.scheduleFaultDrain(),
        pageRequestEvent: () => this.schedulePrqDrain(),
      },
    });
    const v = this.vtd;
    this.cap = v.readReg(VTD_REG.CAP);
    this.ecap = v.readReg(VTD_REG.ECAP);
    this.unit = decodeUnitCaps(this.cap, this.ecap);
    const u = this.unit;
    check(get([this.ecap], ECAP_FIELDS.SMTS) === 1n && get([this.ecap], ECAP_FIELDS.QI) === 1n, "ENODEV", "unit without scalable mode / queued invalidation");

    // Second-stage geometry (Linux: the smallest supported AGAW covering
    // min(MGAW, 57)); the aperture stops at MGAW.
    const want = Math.min(57, u.mgaw);
    const aws = [1, 2, 3].filter((aw) => (u.sagaw & (1 << aw)) !== 0);
    check(aws.length > 0, "ENODEV", "no supported second-stage AGAW");
    this.ssAw = aws.find((aw) => 30 + 9 * aw >= want) ?? (aws[aws.length - 1] as number);
    const width = Math.min(30 + 9 * this.ssAw, u.mgaw);

    this.caps = {
      dirtyTracking: u.ssads,
      nesting: u.nest,
      maxPasidLog2: u.pasid ? u.pss + 1 : 0,
      viommuType: 0,
      nestedDataType: u.nest ? HwptDataType.VTD_S1 : 0,
      // intel_iommu_domain_alloc_nested takes PASID (and the core's FAULT_ID_VALID)
      nestedFlags: HwptAllocFlags.FAULT_ID_VALID | HwptAllocFlags.PASID,
      hwptInvalidateType: u.nest ? HwptInvalidateDataType.VTD_S1 : -1,
      viommuInvalidateType: -1,
      veventqType: 0,
      pgsizeMin: PAGE,
      aperture: { start: 0n, last: (1n << BigInt(width)) - 1n },
    };

    // Structures and queues in host memory.
    this.rootTable = env.memory.allocPage();
    const iq = env.memory.allocPage();
    const status = env.memory.allocPage();
    this.prq = env.memory.allocPage();
    this.qi = new InvalidationQueue(
      {
        vtd: v,
        write: (addr, bytes) => {
          mem.write(addr, bytes);
        },
        read32: (addr) => {
          const r = mem.read(addr, 4);
          return r.ok ? new DataView(r.value.buffer, r.value.byteOffset, 4).getUint32(0, true) : 0;
        },
        atcInvalidate: (req) => env.atcInvalidate(req),
        log: (text, fields) => this.logEvent(undefined, text, fields),
      },
      iq,
      0,
      status,
    );

    // Enable the unit in Linux's order: root table (RTADDR + SRTP), queued
    // invalidation (IQA + QIE), page request queue (PQH/PQT/PQA), event
    // interrupts unmasked, then translation (TE).
    v.writeReg(VTD_REG.RTADDR, this.rootTable | (1n << 10n)); // TTM = 01b: scalable mode
    this.gcmdOneShot(GCMD_FIELDS.SRTP.lo, GSTS_FIELDS.RTPS.lo);
    v.writeReg(VTD_REG.IQT, 0n);
    v.writeReg(VTD_REG.IQA, this.qi.iqa);
    this.gcmdSet(GCMD_FIELDS.QIE.lo, GSTS_FIELDS.QIES.lo);
    v.writeReg(VTD_REG.PQH, 0n);
    v.writeReg(VTD_REG.PQA, this.prq); // PQS = 0: one page, 128 descriptors
    v.writeReg(VTD_REG.FEDATA, 0x30n, 4);
    v.writeReg(VTD_REG.FEADDR, 0xfee0_0000n, 4);
    v.writeReg(VTD_REG.FECTL, 0n, 4);
    v.writeReg(VTD_REG.PEDATA, 0x31n, 4);
    v.writeReg(VTD_REG.PEADDR, 0xfee0_0000n, 4);
    v.writeReg(VTD_REG.PECTL, 0n, 4);
    this.gcmdSet(GCMD_FIELDS.TE.lo, GSTS_FIELDS.TES.lo);
  }

  // ---- registers -----------------------------------------------------------

  private gsts(): bigint {
    return this.vtd.readReg(VTD_REG.GSTS, 4);
  }

  /** Level-sensitive GCMD bit (iommu->gcmd |= bit; write; wait for GSTS). */
  private gcmdSet(bit: number, stsBit: number): void {
    this.gcmd |= 1n << BigInt(bit);
    this.vtd.writeReg(VTD_REG.GCMD, this.gcmd, 4);
    check((this.gsts() & (1n << BigInt(stsBit))) !== 0n, "EIO", `GSTS bit ${stsBit} did not set`);
  }

  /** One-shot GCMD command (SRTP): write with the current gcmd, wait for its status. */
  private gcmdOneShot(bit: number, stsBit: number): void {
    this.vtd.writeReg(VTD_REG.GCMD, this.gcmd | (1n << BigInt(bit)), 4);
    check((this.gsts() & (1n << BigInt(stsBit))) !== 0n, "EIO", `GSTS bit ${stsBit} did not set`);
  }

  // ---- host memory helpers -------------------------------------------------

  private readWords(addr: bigint, bytes: number): bigint[] {
    const r = this.env.memory.mem.read(addr, bytes);
    if (!r.ok) throw new ErrnoError("EFAULT", `cannot read host memory at 0x${addr.toString(16)}`);
    return bytesToWords(r.value);
  }

  private writeWords(addr: bigint, words: readonly bigint[]): void {
    const r = this.env.memory.mem.write(addr, wordsToBytes(words));
    if (!r.ok) throw new ErrnoError("EFAULT", `cannot write host memory at 0x${addr.toString(16)}`);
  }

  /** `pages` physically contiguous pages (PASID directories above one page). */
  private allocContiguous(pages: number): bigint {
    const memory = this.env.memory;
    if (pages === 1) return memory.allocPage();
    const got = new Set<number>();
    try {
      for (let i = 0; i < pages + (1 << 16); i++) {
        const pfn = Number(memory.allocPage() >> 12n);
        got.add(pfn);
        let lo = pfn;
        while (got.has(lo - 1)) lo--;
        let hi = pfn;
        while (got.has(hi + 1)) hi++;
        if (hi - lo + 1 >= pages) {
          for (let p = lo; p < lo + pages; p++) got.delete(p);
          return BigInt(lo) << 12n;
        }
      }
      throw new ErrnoError("ENOMEM", `no ${pages} contiguous pages`);
    } finally {
      for (const p of got) memory.freePfn(p);
    }
  }

  // ---- domain IDs ----------------------------------------------------------

  private allocDid(): number {
    for (let i = 0; i < DID_LIMIT; i++) {
      const did = this.nextDid;
      this.nextDid = this.nextDid + 1 >= DID_LIMIT ? FIRST_DID : this.nextDid + 1;
      if (!this.dids.has(did)) {
        this.dids.add(did);
        return did;
      }
    }
    throw new ErrnoError("ENOSPC", "no free domain ID");
  }

  /** @internal */
  freeDid(did: number): void {
    this.dids.delete(did);
  }

  // ---- root / context / PASID tables ----------------------------------------

  private contextEntryAddr(rid: number): bigint {
    const bus = (rid >> 8) & 0xff;
    const devfn = rid & 0xff;
    const key = `${bus}:${devfn >= 128 ? "u" : "l"}`;
    let t = this.contextTables.get(key);
    if (t === undefined) {
      t = this.env.memory.allocPage();
      this.contextTables.set(key, t);
      const lctp = this.contextTables.get(`${bus}:l`);
      const uctp = this.contextTables.get(`${bus}:u`);
      this.writeWords(this.rootTable + BigInt(bus * SM_ROOT_ENTRY_BYTES), encodeSmRootEntry({ ...(lctp !== undefined ? { lctp } : {}), ...(uctp !== undefined ? { uctp } : {}) }));
    }
    return t + BigInt((devfn & 0x7f) * SM_CONTEXT_ENTRY_BYTES);
  }

  /** Address of the PASID table entry; creates the PASID table when `create`. */
  private pasidEntryAddr(st: DeviceState, pasid: number, create: boolean): bigint | undefined {
    const di = pasid >>> 6;
    let t = st.tables.get(di);
    if (t === undefined) {
      if (!create) return undefined;
      t = this.env.memory.allocPage();
      st.tables.set(di, t);
      const w = this.env.memory.mem.write64(st.dir + BigInt(di * 8), encodePasidDirEntry(t));
      if (!w.ok) throw new ErrnoError("EFAULT", "cannot write PASID directory entry");
    }
    return t + BigInt((pasid & 0x3f) * SM_PASID_ENTRY_BYTES);
  }

  /** The PASID table entry of (dev, pasid) as it is in memory (tests, admin). */
  pasidEntry(dev: PciDevice, pasid: number | undefined): bigint[] | undefined {
    const st = this.devices.get(dev.rid);
    if (!st) return undefined;
    const addr = this.pasidEntryAddr(st, pasid ?? RID_PASID, false);
    return addr === undefined ? undefined : this.readWords(addr, SM_PASID_ENTRY_BYTES);
  }

  private stateOf(dev: PciDevice): DeviceState {
    const st = this.devices.get(dev.rid);
    if (!st || st.dev !== dev) throw new ErrnoError("ENODEV", `device ${bdf(dev.rid)} is not behind ${this.id}`);
    return st;
  }

  private pasidBitsOf(dev: PciDevice): number {
    return this.unit.pasid && dev.maxPasidLog2 > 0 ? Math.min(dev.maxPasidLog2, this.unit.pss + 1) : 0;
  }

  // ---- device hot-plug -----------------------------------------------------

  probeDevice(dev: PciDevice): void {
    check(!this.devices.has(dev.rid), "EEXIST", `device ${bdf(dev.rid)} already probed`);
    const pasidBits = this.pasidBitsOf(dev);
    // intel_pasid_alloc_table: one directory entry per 64 PASIDs, at least a page.
    const dirEntries = Math.max(512, 2 ** pasidBits >>> 6);
    const dirPages = (dirEntries * 8) / 4096;
    const pdts = Math.log2(dirEntries) - 7;
    const dir = this.allocContiguous(dirPages);
    const st: DeviceState = {
      dev,
      ats: dev.ats && this.unit.dt,
      pri: dev.pri && this.unit.prs,
      pasidBits,
      dir,
      dirPages,
      pdts,
      tables: new Map(),
      attached: new Map(),
    };
    // context_entry_set_pasid_table: non-present → present needs no flush
    // (the unit does not cache non-present entries; CAP.CM = 0).
    this.writeWords(
      this.contextEntryAddr(dev.rid),
      encodeSmContextEntry({
        P: 1,
        DTE: st.ats ? 1 : 0,
        PASIDE: pasidBits > 0 ? 1 : 0,
        PRE: st.pri ? 1 : 0,
        PDTS: pdts,
        PASIDDIRPTR: dir,
        RID_PASID: RID_PASID,
      }),
    );
    this.devices.set(dev.rid, st);
  }

  releaseDevice(dev: PciDevice): void {
    const st = this.devices.get(dev.rid);
    if (!st || st.dev !== dev) return;
    this.drainPrq();
    for (const [pasid, d] of [...st.attached]) {
      const addr = this.pasidEntryAddr(st, pasid, false);
      if (addr !== undefined) {
        const b = this.tearDown(st, pasid, addr);
        b?.promise.catch((e: unknown) => this.logEvent(dev, "device-TLB invalidation on release failed", { error: String(e) }));
      }
      d.attachments.delete(attachKey({ state: st, pasid }));
    }
    st.attached.clear();
    // device_pasid_table_teardown + intel_context_flush_no_pasid.
    this.writeWords(this.contextEntryAddr(dev.rid), [0n, 0n, 0n, 0n]);
    const descs = [
      encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: CC_GRAN.DEVICE, SID: dev.rid }),
      encodeInvDesc(INV_DESC_TYPE.PASID_CACHE, PC_INV_DESC, { G: PC_GRAN.GLOBAL }),
      this.iotlbDesc(IOTLB_GRAN.GLOBAL, 0),
    ];
    if (st.ats) descs.push(devtlbDesc(dev.rid, undefined, 0n, 0n, true));
    this.qi.submit(descs).promise.catch((e: unknown) => this.logEvent(dev, "device-TLB invalidation on release failed", { error: String(e) }));
    for (const t of st.tables.values()) this.env.memory.freePage(t);
    for (let i = 0; i < st.dirPages; i++) this.env.memory.freePage(st.dir + BigInt(i) * PAGE);
    this.devices.delete(dev.rid);
  }

  // ---- GET_HW_INFO ----------------------------------------------------------

  hwInfo(dev: PciDevice, requestedType?: number): HwInfo {
    if (requestedType !== undefined && requestedType !== HwInfoType.NONE && requestedType !== HwInfoType.INTEL_VTD) {
      throw new ErrnoError("EOPNOTSUPP", `hw_info type ${requestedType} not provided by VT-d`);
    }
    let capabilities = 0n;
    if (this.unit.ssads) capabilities |= BigInt(HwCapabilities.DIRTY_TRACKING);
    if (this.pasidBitsOf(dev) > 0) {
      if (dev.pasidExec) capabilities |= BigInt(HwCapabilities.PCI_PASID_EXEC);
      if (dev.pasidPriv) capabilities |= BigInt(HwCapabilities.PCI_PASID_PRIV);
    }
    if (!dev.ats) capabilities |= BigInt(HwCapabilities.PCI_ATS_NOT_SUPPORTED);
    return { type: HwInfoType.INTEL_VTD, data: hwInfoVtdBytes(hwInfoVtd(this.cap, this.ecap, 0)), capabilities };
  }

  // ---- domain allocation -----------------------------------------------------

  allocPaging(_dev: PciDevice, flags: PagingFlags, hooks: { fault?: IopfSink }): VtdPagingDomain {
    // intel_iommu_domain_alloc_paging_flags.
    check(!flags.nestParent || this.unit.nest, "EOPNOTSUPP", "nesting not supported");
    check(!flags.dirtyTracking || this.unit.ssads, "EOPNOTSUPP", "dirty tracking (SSADS) not supported");
    check(!flags.pasid || this.unit.pasid, "EOPNOTSUPP", "PASID not supported");
    const did = this.allocDid();
    let table: SecondStageTable;
    try {
      table = new SecondStageTable(this.env.memory, { aw: this.ssAw, haw: this.unit.mgaw, large2M: this.unit.ss2m, large1G: this.unit.ss1g });
    } catch (e) {
      this.freeDid(did);
      throw e;
    }
    return new VtdPagingDomain(this, { ...flags }, did, table, hooks.fault, { ...this.caps.aperture });
  }

  /**
   * intel_iommu_domain_alloc_nested: the data is copied (length must be the
   * struct size) but its content is checked only when the domain is attached
   * (intel_pasid_setup_nested → EINVAL), as the uAPI contract says.
   */
  allocNested(_dev: PciDevice, parent: PagingDomain, viommu: ViommuHw | undefined, dataType: number, data: Uint8Array, hooks: { fault?: IopfSink }): VtdNestedDomain {
    check(this.unit.nest, "EOPNOTSUPP", "nesting not supported");
    check(viommu === undefined, "EOPNOTSUPP", "VT-d nests on a parent HWPT, not a vIOMMU");
    check(dataType === HwptDataType.VTD_S1, "EOPNOTSUPP", `hwpt data type ${dataType} is not VTD_S1`);
    check(parent instanceof VtdPagingDomain && parent.drv === this && parent.flags.nestParent, "EINVAL", "parent is not a nest parent of this IOMMU");
    check(data.length === IOMMU_HWPT_VTD_S1_BYTES, "EINVAL", `data_len ${data.length} is not ${IOMMU_HWPT_VTD_S1_BYTES}`);
    const v = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const s1: VtdS1Config = {
      flags: v.getBigUint64(0, true),
      pgtblAddr: v.getBigUint64(8, true),
      addrWidth: v.getUint32(16, true),
      reserved: v.getUint32(20, true),
    };
    const d = new VtdNestedDomain(this, parent, this.allocDid(), s1, hooks.fault);
    parent.children.add(d);
    return d;
  }

  allocViommu(_dev: PciDevice, type: number, _parent: PagingDomain, _hooks: ViommuHooks): ViommuHw {
    throw new ErrnoError("EOPNOTSUPP", `VT-d has no vIOMMU (type ${type})`);
  }

  // ---- PASID entries -----------------------------------------------------------

  private ownDomain(domain: PagingDomain | NestedDomain): VtdPagingDomain | VtdNestedDomain {
    if ((domain instanceof VtdPagingDomain || domain instanceof VtdNestedDomain) && domain.drv === this) return domain;
    throw new ErrnoError("EINVAL", "domain belongs to another IOMMU");
  }

  /** The new PASID entry for `d` on (st, pasid), validated like intel_pasid_setup_*. */
  private buildPasidEntry(d: VtdPagingDomain | VtdNestedDomain, onPasid: boolean): bigint[] {
    const pwsnp = this.unit.smpwc ? 1 : 0;
    if (d instanceof VtdPagingDomain) {
      // intel_iommu_set_dev_pasid: dirty-tracking domains are RID-only.
      check(!(onPasid && d.flags.dirtyTracking), "EINVAL", "a dirty-tracking domain cannot attach to a PASID");
      const fields: SmPasidFields = {
        P: 1,
        PGTT: PGTT.SECOND_STAGE,
        SSPTPTR: d.table.root,
        AW: d.aw,
        DID: d.did,
        SSADE: d.dirtyTracking ? 1 : 0,
        PWSNP: pwsnp,
      };
      return encodeSmPasidEntry(fields);
    }
    const s1 = d.s1;
    const parent = d.parent;
    check(!(onPasid && parent.flags.dirtyTracking), "EINVAL", "nested domain over a dirty-tracking parent cannot attach to a PASID");
    const known = BigInt(HwptVtdS1Flags.SRE | HwptVtdS1Flags.EAFE | HwptVtdS1Flags.WPE);
    check((s1.flags & ~known) === 0n && s1.reserved === 0, "EINVAL", "unsupported iommu_hwpt_vtd_s1 flags or reserved bits");
    check(s1.addrWidth === 48 || s1.addrWidth === 57, "EINVAL", `invalid stage-1 address width ${s1.addrWidth}`);
    check(s1.addrWidth !== 57 || this.unit.fs5lp, "EINVAL", "5-level first stage not supported");
    const sre = (s1.flags & BigInt(HwptVtdS1Flags.SRE)) !== 0n;
    const eafe = (s1.flags & BigInt(HwptVtdS1Flags.EAFE)) !== 0n;
    check(!sre || this.unit.srs, "EINVAL", "no supervisor request support");
    check(!eafe || this.unit.eafs, "EINVAL", "no extended access flag support");
    check((s1.pgtblAddr & (PAGE - 1n)) === 0n && s1.pgtblAddr <= parent.aperture.last, "EINVAL", "pgtbl_addr not a page of the parent's IOVA space");
    const fields: SmPasidFields = {
      P: 1,
      PGTT: PGTT.NESTED,
      FSPTPTR: s1.pgtblAddr,
      FLPM: s1.addrWidth === 57 ? FLPM.LEVEL5 : FLPM.LEVEL4,
      SRE: sre ? 1 : 0,
      // WPE only means something with SRE (pasid_pte_config_nestd).
      WPE: sre && (s1.flags & BigInt(HwptVtdS1Flags.WPE)) !== 0n ? 1 : 0,
      EAFE: eafe ? 1 : 0,
      SSPTPTR: parent.table.root,
      AW: parent.aw,
      SSADE: parent.dirtyTracking ? 1 : 0,
      DID: d.did,
      PWSNP: pwsnp,
    };
    return encodeSmPasidEntry(fields);
  }

  /**
   * intel_pasid_tear_down_entry's hardware part: clear P, then PASID-cache
   * (old DID), IOTLB (domain-selective for second-stage / nested, PASID-
   * based for first-stage / pass-through), and the whole device TLB.
   * Returns the batch, or undefined if the entry was not present.
   */
  private tearDown(st: DeviceState, pasid: number, addr: bigint): QiBatch | undefined {
    const words = this.readWords(addr, SM_PASID_ENTRY_BYTES);
    if ((words[0] & PASID_P_BIT) === 0n) return undefined;
    const did = Number((words[1] as bigint) & 0xffffn);
    const pgtt = Number(((words[0] as bigint) >> 6n) & 7n);
    this.writeWords(addr, [(words[0] as bigint) & ~PASID_P_BIT, ...words.slice(1)]);
    const descs = [pasidCacheDesc(did, pasid)];
    if (pgtt === PGTT.FIRST_STAGE || pgtt === PGTT.PASS_THROUGH) descs.push(this.piotlbDesc(did, pasid));
    else descs.push(this.iotlbDesc(IOTLB_GRAN.DOMAIN, did));
    if (st.ats) descs.push(devtlbDesc(st.dev.rid, pasid === RID_PASID ? undefined : pasid, 0n, 0n, true));
    return this.qi.submit(descs);
  }

  attach(dev: PciDevice, pasid: number | undefined, domain: PagingDomain | NestedDomain | undefined): Promise<void> {
    const run = this.attachChain.then(
      () => this.doAttach(dev, pasid, domain),
      () => this.doAttach(dev, pasid, domain),
    );
    this.attachChain = run.catch(() => undefined);
    return run;
  }

  private async doAttach(dev: PciDevice, pasid: number | undefined, domain: PagingDomain | NestedDomain | undefined): Promise<void> {
    const st = this.stateOf(dev);
    const p = pasid ?? RID_PASID;
    if (p !== RID_PASID) check(st.pasidBits > 0 && p < 2 ** st.pasidBits, "EINVAL", `PASID ${p} not supported by ${bdf(dev.rid)}`);
    const d = domain === undefined ? undefined : this.ownDomain(domain);
    // Outstanding device-TLB invalidations (earlier unmaps) complete first.
    await this.qi.drain();
    // Page requests already queued go to the current domain (intel_iommu_drain_pasid_prq).
    this.drainPrq();
    const old = st.attached.get(p);
    if (old === d) return;
    const entry = d === undefined ? undefined : this.buildPasidEntry(d, p !== RID_PASID);
    // Allocate the PASID table now: nothing can fail after the old entry goes.
    const addr = this.pasidEntryAddr(st, p, d !== undefined);
    if (addr !== undefined) {
      const before = this.readWords(addr, SM_PASID_ENTRY_BYTES);
      const b = this.tearDown(st, p, addr);
      if (b) {
        try {
          await b.promise;
        } catch (e) {
          if (d !== undefined) {
            this.writeWords(addr, before); // the old domain stays
            throw e;
          }
          this.logEvent(dev, "device-TLB invalidation on detach failed", { pasid: p, error: e instanceof Error ? e.message : String(e) });
        }
      }
      // pasid_flush_caches: a non-present → present change needs no flush (CAP.CM = 0).
      this.writeWords(addr, entry ?? new Array<bigint>(8).fill(0n));
    }
    const key = attachKey({ state: st, pasid: p });
    old?.attachments.delete(key);
    st.attached.delete(p);
    if (d) {
      st.attached.set(p, d);
      d.attachments.set(key, { state: st, pasid: p });
    }
  }

  // ---- invalidation helpers --------------------------------------------------

  private iotlbDesc(g: number, did: number, addr = 0n, am = 0, ih = false): bigint[] {
    return encodeInvDesc(INV_DESC_TYPE.IOTLB, IOTLB_INV_DESC, {
      G: g,
      DID: did,
      DR: this.unit.drd ? 1 : 0,
      DW: this.unit.dwd ? 1 : 0,
      AM: am,
      IH: ih ? 1 : 0,
      ADDR: addr >> 12n,
    });
  }

  /** PASID-based IOTLB: PASID-selective without `range`, page-selective within the PASID with it. */
  private piotlbDesc(did: number, pasid: number, range?: { addr: bigint; am: number; ih: boolean }): bigint[] {
    if (!range) return encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: PIOTLB_GRAN.PASID, DID: did, PASID: pasid });
    return encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, {
      G: PIOTLB_GRAN.PAGE,
      DID: did,
      PASID: pasid,
      AM: range.am,
      IH: range.ih ? 1 : 0,
      ADDR: range.addr >> 12n,
    });
  }

  /** A naturally aligned power-of-two cover of [start, start+size) for PSI, or undefined beyond CAP.MAMV. */
  private psiRange(start: bigint, size: bigint): { addr: bigint; am: number } | undefined {
    if (!this.unit.psi || size === 0n || start + size > 1n << 64n) return undefined;
    const r = vtdAmFor(start, size);
    return r.am <= this.unit.mamv ? r : undefined;
  }

  /**
   * cache_tag_flush_range on a paging domain: IOTLB (page-selective by DID,
   * for the domain and every nested child: the child's nested entries whose
   * GPA overlaps) synchronously; device TLBs (range for second-stage
   * attachments, everything for nested ones) completing asynchronously,
   * tracked by the domain. @internal
   */
  flushParentRange(d: VtdPagingDomain, start: bigint, size: bigint, ih: boolean): void {
    const r = this.psiRange(start, size);
    const iotlb = (did: number) => (r ? this.iotlbDesc(IOTLB_GRAN.PAGE, did, r.addr, r.am, ih) : this.iotlbDesc(IOTLB_GRAN.DOMAIN, did));
    const descs: bigint[][] = [];
    const devtlb = new Map<string, bigint[]>();
    const addDevtlb = (a: Attachment, all: boolean) => {
      if (!a.state.ats) return;
      const pasid = a.pasid === RID_PASID ? undefined : a.pasid;
      const key = `${a.state.dev.rid}/${pasid ?? "-"}`;
      const whole = all || !r;
      if (whole || !devtlb.has(key)) devtlb.set(key, devtlbDesc(a.state.dev.rid, pasid, r?.addr ?? 0n, r ? PAGE << BigInt(r.am) : 0n, whole));
    };
    if (d.attachments.size > 0) {
      descs.push(iotlb(d.did));
      for (const a of d.attachments.values()) addDevtlb(a, false);
    }
    for (const c of d.children) {
      if (c.attachments.size === 0) continue;
      descs.push(iotlb(c.did));
      for (const a of c.attachments.values()) addDevtlb(a, true);
    }
    if (descs.length === 0) return;
    const b = this.qi.submit([...descs, ...devtlb.values()]);
    if (!b.executed) this.logEvent(undefined, "IOTLB flush not executed synchronously", { did: d.did });
    d.track(b);
  }

  /**
   * The flush of one iommu_hwpt_vtd_s1_invalidate entry (cache_tag_flush_range
   * on the nested domain): PASID-based IOTLB and device-TLB invalidations for
   * every (device, PASID) the domain is attached to, awaited. @internal
   */
  async flushNested(n: VtdNestedDomain, addr: bigint, npages: bigint, leaf: boolean): Promise<void> {
    if (npages === 0n || n.attachments.size === 0) return;
    const all = npages === U64_MAX;
    const r = all ? undefined : this.psiRange(addr, npages << 12n);
    const descs: bigint[][] = [];
    const devtlb: bigint[][] = [];
    for (const a of n.attachments.values()) {
      descs.push(this.piotlbDesc(n.did, a.pasid, r ? { ...r, ih: leaf } : undefined));
      if (a.state.ats) {
        const pasid = a.pasid === RID_PASID ? undefined : a.pasid;
        devtlb.push(devtlbDesc(a.state.dev.rid, pasid, r?.addr ?? 0n, r ? PAGE << BigInt(r.am) : 0n, !r));
      }
    }
    await this.qi.submit([...descs, ...devtlb]).promise;
  }

  /** Every batch submitted so far completed or failed. @internal */
  drainQueue(): Promise<void> {
    return this.qi.drain();
  }

  /**
   * intel_iommu_set_dirty_tracking: SSADE in every PASID entry using the
   * domain (its own second-stage entries and its nested children's), then
   * PASID-cache, domain-selective IOTLB and device-TLB invalidations
   * (intel_pasid_setup_dirty_tracking). Enabling first clears every D bit.
   * @internal
   */
  setDirtyTracking(d: VtdPagingDomain, enable: boolean): void {
    if (d.dirtyTracking === enable) return;
    if (enable) d.table.harvestDirty(0n, 1n << BigInt(d.table.inputBits), false, () => undefined);
    d.dirtyTracking = enable;
    const descs: bigint[][] = [];
    const devtlb: bigint[][] = [];
    const update = (a: Attachment, did: number) => {
      const addr = this.pasidEntryAddr(a.state, a.pasid, false);
      if (addr === undefined) return;
      const w = this.readWords(addr, SM_PASID_ENTRY_BYTES);
      if ((w[0] & PASID_P_BIT) === 0n) return;
      this.writeWords(addr, [enable ? w[0] | SSADE_BIT : w[0] & ~SSADE_BIT, ...w.slice(1)]);
      descs.push(pasidCacheDesc(did, a.pasid), this.iotlbDesc(IOTLB_GRAN.DOMAIN, did));
      if (a.state.ats) devtlb.push(devtlbDesc(a.state.dev.rid, a.pasid === RID_PASID ? undefined : a.pasid, 0n, 0n, true));
    };
    for (const a of d.attachments.values()) update(a, d.did);
    for (const c of d.children) for (const a of c.attachments.values()) update(a, c.did);
    if (descs.length === 0) return;
    d.track(this.qi.submit([...descs, ...devtlb]));
  }

  // ---- page requests (prq.c) ---------------------------------------------------

  pageRequest(dev: PciDevice, req: { pasid?: number; addr: bigint; read: boolean; write: boolean; exec: boolean; priv: boolean; grpid: number; last: boolean }): void {
    const pr: PageRequest = {
      rid: dev.rid,
      ...(req.pasid !== undefined ? { pasid: req.pasid } : {}),
      addr: req.addr & ~(PAGE - 1n),
      read: req.read,
      write: req.write,
      exec: req.exec,
      priv: req.priv,
      prgi: req.grpid & 0x1ff,
      lpig: req.last,
    };
    this.vtd.pageRequest(pr);
  }

  /** The page request event (PECTL): drain in a deferred "IRQ thread". */
  private schedulePrqDrain(): void {
    if (this.prqScheduled) return;
    this.prqScheduled = true;
    queueMicrotask(() => {
      this.prqScheduled = false;
      this.drainPrq();
    });
  }

  /** prq_event_thread: clear PPR, handle PQH..PQT, move PQH, clear PRO once empty. */
  private drainPrq(): void {
    const v = this.vtd;
    v.writeReg(VTD_REG.PRS, PRS_PPR, 4);
    const tail = Number(v.readReg(VTD_REG.PQT));
    let head = Number(v.readReg(VTD_REG.PQH));
    while (head !== tail) {
      const req = decodePageRequest(this.readWords(this.prq + BigInt(head), PAGE_REQ_DESC_BYTES));
      this.handlePageRequest(req);
      head = (head + PAGE_REQ_DESC_BYTES) % this.prqBytes;
    }
    v.writeReg(VTD_REG.PQH, BigInt(tail));
    if ((v.readReg(VTD_REG.PRS, 4) & PRS_PRO) !== 0n && v.readReg(VTD_REG.PQH) === v.readReg(VTD_REG.PQT)) {
      this.stats.prqOverflows++;
      this.logEvent(undefined, "page request queue overflow cleared", {});
      v.writeReg(VTD_REG.PRS, PRS_PRO, 4);
    }
  }

  private handlePageRequest(req: PageRequest): void {
    this.stats.prqRequests++;
    const bad = (why: string) => {
      this.stats.prqInvalid++;
      const st = this.devices.get(req.rid);
      this.logEvent(st?.dev, `invalid page request: ${why}`, { rid: req.rid, pasid: req.pasid, addr: req.addr, grpid: req.prgi });
      if (req.lpig) this.respond(req.rid, req.pasid, req.prgi, PRG_RESPONSE_CODE.INVALID_REQUEST);
    };
    // Linux's checks: canonical address, no privileged or execute requests.
    if (!isCanonical57(req.addr)) return bad("address is not canonical");
    if (req.priv && (req.read || req.write)) return bad("page request in privilege mode");
    if (req.exec && req.read) return bad("execution request not supported");
    if (isStopMarker(req)) {
      this.stats.prqStopMarkers++;
      return; // no response expected
    }
    const st = this.devices.get(req.rid);
    if (!st) return bad("no such device");
    // VT-d PASID tables are host-owned: a PASID goes to its own domain only.
    const d = st.attached.get(req.pasid ?? RID_PASID);
    const sink = d?.fault;
    if (!sink) {
      if (req.lpig) this.respond(req.rid, req.pasid, req.prgi, PRG_RESPONSE_CODE.INVALID_REQUEST);
      return;
    }
    const perm = (req.read ? FAULT_PERM.READ : 0) | (req.write ? FAULT_PERM.WRITE : 0) | (req.exec ? FAULT_PERM.EXEC : 0) | (req.priv ? FAULT_PERM.PRIV : 0);
    sink.pageRequest({
      dev: st.dev,
      ...(req.pasid !== undefined ? { pasid: req.pasid } : {}),
      grpid: req.prgi,
      addr: req.addr,
      perm,
      last: req.lpig,
    });
  }

  pageResponse(dev: PciDevice, pasid: number | undefined, grpid: number, code: "success" | "invalid"): void {
    this.respond(dev.rid, pasid, grpid, code === "success" ? PRG_RESPONSE_CODE.SUCCESS : PRG_RESPONSE_CODE.INVALID_REQUEST);
  }

  /** intel_page_response: a page group response descriptor through the invalidation queue. */
  private respond(rid: number, pasid: number | undefined, prgi: number, rc: number): void {
    const desc = encodeInvDesc(INV_DESC_TYPE.PAGE_GROUP_RESPONSE, PGRP_RESP_DESC, {
      PP: pasid !== undefined ? 1 : 0,
      RC: rc,
      RID: rid,
      PASID: pasid ?? 0,
      LPIG: 1,
      PRGI: prgi & 0x1ff,
    });
    this.qi.submit([desc]);
  }

  /** The unit delivers a page group response (ours, or its own on overflow / PRE = 0). */
  private onPageResponse(resp: PageGroupResponse): void {
    this.stats.pageResponses++;
    const code = resp.code === PRG_RESPONSE_CODE.SUCCESS ? "success" : resp.code === PRG_RESPONSE_CODE.INVALID_REQUEST ? "invalid" : "failure";
    this.env.pageGroupResponse(resp.rid, resp.pasid, resp.prgi, code);
  }

  // ---- fault recording (dmar_fault) ------------------------------------------

  private scheduleFaultDrain(): void {
    if (this.faultScheduled) return;
    this.faultScheduled = true;
    queueMicrotask(() => {
      this.faultScheduled = false;
      this.drainFaults();
    });
  }

  /** dmar_fault: read every pending fault record from FSTS.FRI on, clear F, report; then clear PFO. */
  private drainFaults(): void {
    const v = this.vtd;
    const fsts = v.readReg(VTD_REG.FSTS, 4);
    if ((fsts & FSTS_PPF) !== 0n) {
      let idx = Number((fsts >> BigInt(FSTS_FIELDS.FRI.lo)) & 0xffn);
      for (let n = 0; n < this.unit.nfr; n++) {
        const off = this.unit.fro + idx * 16;
        const hi = v.readReg(off + 8);
        if ((hi >> 63n) === 0n) break;
        const lo = v.readReg(off);
        v.writeReg(off + 12, FRCD_F_HI32, 4);
        this.reportFault(decodeFaultRecord([lo, hi]));
        idx = (idx + 1) % this.unit.nfr;
      }
    }
    if ((fsts & FSTS_PFO) !== 0n) {
      this.stats.faultOverflows++;
      this.logEvent(undefined, "primary fault overflow", {});
    }
    v.writeReg(VTD_REG.FSTS, FSTS_PFO, 4);
  }

  private reportFault(r: ReturnType<typeof decodeFaultRecord>): void {
    this.stats.faultRecords++;
    const reasonName = vtdFaultReasonName(r.reason);
    const type = r.type === FAULT_REQ_TYPE.WRITE ? "Write" : r.type === FAULT_REQ_TYPE.READ ? "Read" : r.type === FAULT_REQ_TYPE.PAGE_REQUEST ? "Page Request" : "AtomicOp";
    const st = this.devices.get(r.sid);
    const pasidText = r.pasid === undefined ? "NO_PASID" : `PASID ${r.pasid}`;
    this.logEvent(
      st?.dev,
      `DMAR: [DMA ${type} ${pasidText}] Request device [${bdf(r.sid)}] fault addr 0x${r.addr.toString(16)} [fault reason 0x${r.reason.toString(16).padStart(2, "0")}] ${reasonName}`,
      {
        reason: r.reason,
        reasonName,
        sid: r.sid,
        ...(r.pasid !== undefined ? { pasid: r.pasid } : {}),
        addr: r.addr,
        type: type.toLowerCase(),
        priv: r.priv,
        exe: r.exe,
        at: r.at,
      },
    );
  }

  /** @internal */
  logEvent(dev: PciDevice | undefined, text: string, fields: Record<string, unknown>): void {
    this.env.hostEvent(dev, text, { iommu: this.id, ...fields });
  }

  // ---- the data plane ----------------------------------------------------------

  translate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): DmaTranslation {
    const priv = pasid !== undefined && access.privileged;
    const r = this.vtd.translate(dev.rid, pasid, iova, { kind: access.kind, priv });
    if (r.ok) {
      const size = 1n << BigInt(r.pageShift);
      return { ok: true, pa: r.output, size: size - (iova & (size - 1n)), write: (r.perms & (priv ? Perm.PW : Perm.UW)) !== 0 };
    }
    const st = this.devices.get(dev.rid);
    return {
      ok: false,
      reason: r.reason >= VTD_FR.SM_FS_ACCESS ? "fault" : "abort",
      detail: `${r.reasonName} (0x${r.reason.toString(16)})`,
      recoverable: st?.dev === dev && st.pri && RECOVERABLE.has(r.reason),
      fault: vtdFaultInfo(r.reason, r.reasonName, iova, r.recorded === "suppressed" ? "none" : "host"),
    };
  }

  translatedAllowed(dev: PciDevice): boolean {
    const st = this.devices.get(dev.rid);
    return st?.dev === dev && st.ats;
  }

  atsTranslate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): AtsResult {
    // A request without write intent carries the No-Write hint: no D update, no W in the completion.
    const noWrite = access.kind !== "write";
    const c = this.vtd.atsTranslate(dev.rid, pasid, iova, { exec: access.kind === "exec", priv: access.privileged, noWrite });
    return {
      status: c.status === "SC" ? "success" : "ur",
      translated: c.translatedAddr,
      size: c.size,
      read: c.r,
      write: c.w && !noWrite,
      exec: c.exe,
      priv: c.priv,
      global: c.global,
    };
  }

  explain(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): { steps: string[]; result: string } {
    // A private unit over a copy-on-write view: no fault records, no A/D updates, no cache fills.
    const r = vtdWalk({
      config: { kind: "tables", mem: this.env.memory.mem, rtaddr: this.vtd.readReg(VTD_REG.RTADDR) },
      rid: dev.rid,
      ...(pasid !== undefined ? { pasid } : {}),
      addr: iova,
      access: access.kind,
      priv: pasid !== undefined && access.privileged,
      caps: this.vtd.caps,
    });
    const lines = [...r.explain];
    const result = (lines.pop() ?? "").replace(/^→ /, "");
    return { steps: lines, result };
  }

  counters(): Record<string, number> {
    const c = this.vtd.counters;
    const out: Record<string, number> = {
      translations: c.translations,
      atsRequests: c.atsRequests,
      contextCacheHits: c.contextCache.hit,
      contextCacheMisses: c.contextCache.miss,
      pasidCacheHits: c.pasidCache.hit,
      pasidCacheMisses: c.pasidCache.miss,
      iotlbHits: c.iotlb.hit,
      iotlbMisses: c.iotlb.miss,
      faultsRecorded: c.faultsRecorded,
      faultsSuppressed: c.faultsSuppressed,
      faultOverflows: c.faultOverflows,
      pageRequests: c.pageRequests,
      pageRequestOverflows: c.pageRequestOverflows,
      pageResponses: c.pageResponses,
      qiBatches: this.qi.counters.batches,
      qiDescriptors: this.qi.counters.descriptors,
      atcInvalidations: this.qi.counters.atcRequests,
      atcInvalidationCompletions: this.qi.counters.atcCompletions,
      atcInvalidationTimeouts: this.qi.counters.atcTimeouts,
      qiRestarts: this.qi.counters.restarts,
      qiErrors: this.qi.counters.iqe,
      prqRequests: this.stats.prqRequests,
      prqInvalid: this.stats.prqInvalid,
      prqStopMarkers: this.stats.prqStopMarkers,
      faultRecordsReported: this.stats.faultRecords,
      devices: this.devices.size,
      domainIds: this.dids.size,
    };
    for (const [name, n] of Object.entries(c.faults)) out[`fault.${name}`] = n;
    for (const [type, n] of Object.entries(c.descriptors)) out[`descriptor.${type}`] = n;
    return out;
  }
}

function decodeUnitCaps(cap: bigint, ecap: bigint): UnitCaps {
  const c = (f: Field) => Number(get([cap], f));
  const e = (f: Field) => Number(get([ecap], f));
  const sslps = c(CAP_FIELDS.SSLPS);
  return {
    sagaw: c(CAP_FIELDS.SAGAW),
    mgaw: c(CAP_FIELDS.MGAW) + 1,
    fro: c(CAP_FIELDS.FRO) * 16,
    nfr: c(CAP_FIELDS.NFR) + 1,
    mamv: c(CAP_FIELDS.MAMV),
    psi: c(CAP_FIELDS.PSI) === 1,
    drd: c(CAP_FIELDS.DRD) === 1,
    dwd: c(CAP_FIELDS.DWD) === 1,
    ss2m: (sslps & 1) !== 0,
    ss1g: (sslps & 2) !== 0,
    fs5lp: c(CAP_FIELDS.FS5LP) === 1,
    dt: e(ECAP_FIELDS.DT) === 1,
    nest: e(ECAP_FIELDS.NEST) === 1,
    prs: e(ECAP_FIELDS.PRS) === 1,
    srs: e(ECAP_FIELDS.SRS) === 1,
    eafs: e(ECAP_FIELDS.EAFS) === 1,
    pasid: e(ECAP_FIELDS.PASID) === 1,
    pss: e(ECAP_FIELDS.PSS),
    ssads: e(ECAP_FIELDS.SSADS) === 1,
    smpwc: e(ECAP_FIELDS.SMPWCS) === 1,
  };
}

/** 57-bit canonical (bits 63:56 copy bit 56): the widest the unit's first stage translates. */
function isCanonical57(addr: bigint): boolean {
  const top = addr >> 56n;
  return top === 0n || top === 0xffn;
}

/** Create the VT-d driver of one remapping unit ("dmar0"). */
export function createVtdDriver(id: string, env: DriverEnv, opts: VtdDriverOptions = {}): VtdDriver {
  return new VtdDriver(id, env, opts);
}

/**
 * A scalable-mode fault reason as the data plane reports it: which stage,
 * and the generic kind (the reason code and name stay exact). 0x74–0x77 are
 * second-stage failures while fetching first-stage structures (CLASS TT in
 * Arm terms); 0x78–0x7C second-stage faults on the final GPA.
 */
export function vtdFaultInfo(reason: number, name: string, iova: bigint, route: FaultInfo["route"]): FaultInfo {
  const base = { level: 0, inputAddress: iova, vendorCode: reason, vendorName: name, route };
  const R = VTD_FR;
  switch (reason) {
    case R.SM_FS_ACCESS:
    case R.SM_FS_ROOT_ACCESS:
      return { ...base, kind: "walk-eabt", stage: 1, faultClass: "TT" };
    case R.SM_FS_P:
    case R.SM_FS_RSVD:
    case R.SM_NON_CANONICAL:
      return { ...base, kind: "translation", stage: 1, faultClass: "IN" };
    case R.SM_INPUT_BEYOND_MAX:
    case R.SM_OUTPUT_BEYOND_MAX:
      return { ...base, kind: "address-size", stage: 1, faultClass: "IN" };
    case R.SM_US:
    case R.SM_EXECUTE:
    case R.SM_WRITE:
    case R.SM_READ:
      return { ...base, kind: "permission", stage: 1, faultClass: "IN" };
    case R.SM_NESTED_FS_ADDR:
    case R.SM_NESTED_FS_ROOT_READ:
    case R.SM_NESTED_FS_READ:
    case R.SM_NESTED_FS_WRITE:
      return { ...base, kind: reason === R.SM_NESTED_FS_WRITE ? "permission" : "translation", stage: 2, faultClass: "TT" };
    case R.SM_SS_ACCESS:
      return { ...base, kind: "walk-eabt", stage: 2, faultClass: "IN" };
    case R.SM_SS_NOT_PRESENT:
    case R.SM_SS_RSVD:
      return { ...base, kind: "translation", stage: 2, faultClass: "IN" };
    case R.SM_INTERRUPT_ADDR:
      return { ...base, kind: "translation-forbidden", stage: 1 };
    default:
      // Root/context/PASID-entry reasons: a configuration fault, not a walk fault.
      return { ...base, kind: name.endsWith("ACCESS") ? "config-fetch" : "aborted", stage: 1 };
  }
}
