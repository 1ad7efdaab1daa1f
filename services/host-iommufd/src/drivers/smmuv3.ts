// The host's ARM SMMUv3 driver: Linux drivers/iommu/arm/arm-smmu-v3/
// arm-smmu-v3.c and arm-smmu-v3-iommufd.c, behind the IommuDriver contract
// (ops.ts). It owns one SmmuV3 model from packages/hw and programs it only as
// that driver programs hardware: a 2-level stream table, per-device CD tables,
// io-pgtable stage-1/stage-2 tables and the three queues live in host memory
// (env.memory pages); registers are written through MMIO; every change is
// followed by the matching CFGI/TLBI/ATC_INV and a CMD_SYNC.
//
// Domains (Linux arm_smmu_domain_alloc_paging_flags):
// - plain paging domains (flags 0 or PASID) and DIRTY_TRACKING domains are
//   stage 1: a CD (ASID, VMID 0) in the device's CD table, so they can also be
//   attached to PASIDs;
// - NEST_PARENT domains are stage 2 with their own VMID; a vIOMMU on one
//   shares that VMID (arm_vsmmu_init);
// - NEST_PARENT | DIRTY_TRACKING is a stage-2 domain with S2HA/S2HD: an
//   extension over Linux (which answers EOPNOTSUPP) so a VMM can track the
//   dirty state of a nested guest. NEST_PARENT | PASID → EOPNOTSUPP.
// Dirty tracking follows Linux: HA/HD are set in the CD or STE for the
// domain's whole life and its writable leaves are created writable-clean
// (DBM); turning HD off would turn writes into permission faults.
// HWPT_SET_DIRTY_TRACKING(enable) therefore only cleans the dirty state.
//
// Ordering (why the async paths can be trusted): the command queue is
// consumed in order and a CMD_SYNC completes only once every command before
// it, including the ATC invalidations it waits for, has taken effect.
// - attach / vIOMMU invalidation / iotlbSync() return a promise of their own
//   trailing SYNC, so when it resolves everything queued before is done.
// - IoptDomain.map/unmap and readDirty are synchronous: the page-table
//   change and its TLBI/ATC_INV/SYNC are queued before they return. The model
//   consumes synchronously, so the IOTLB invalidation has taken effect on
//   return unless an earlier SYNC is still waiting for a device's ATC
//   completion; the ATC invalidation itself completes later. The core awaits
//   domain.iotlbSync() after an unmap or a dirty read (the kernel's
//   iotlb_sync): it settles when all of it completed and rejects with
//   ETIMEDOUT if an ATC invalidation of that domain failed. Later async
//   operations wait for that work anyway through their own SYNC.
// - Commands are never dropped: when the hardware queue is full they wait in
//   a software backlog that is published, in order, as SYNCs complete.
//
// ATC invalidation failures: the model reports CERROR_ATC_INV_SYNC at the
// SYNC; the driver logs it and acknowledges GERROR so the SYNC is retried
// (Linux arm_smmu_cmdq_skip_err). Attach carries on (as Linux does); unmap
// and dirty reads report it through iotlbSync(); a vIOMMU invalidation
// rejects with ETIMEDOUT and the entries handled before the failing ATC_INV
// (proto HwptInvalidate).
//
// Events are drained from the event queue on its interrupt, synchronously
// inside the access that raised them (arm_smmu_evtq_thread): guest-visible
// stage-1 records of a device attached through a vIOMMU become vEVENTs with
// the vSID; everything else goes to the host log. PRI requests are drained
// the same way and routed like the kernel's iopf code (PASID domain, else a
// nested RID domain, else the RID domain); without a fault sink the group is
// answered Response Failure. (Upstream arm-smmu-v3 denies every PRI request.)

import {
  ARM_LPAE_MAIR,
  ARM_S2_DEFAULT_MEMATTR,
  ByteMemory,
  CD,
  CERROR,
  CMDQ_CONS,
  CMD_COMMON,
  CMD_OP,
  CR1,
  CR2,
  type Command,
  type DriverLayout,
  EVT_ID,
  type EventRecord,
  IDR0,
  IDR1,
  IDR3,
  IDR5,
  IRQ_CTRL,
  type MapProt,
  type MemResult,
  PAGE_SIZE,
  PERM_R,
  PERM_W,
  PERM_X,
  PRI_RESP,
  type PageAllocator,
  type PhysicalMemory,
  type PriEntry,
  type PriResponseMessage,
  RESUME_ACTION,
  SMMU_REG,
  STE,
  STE_CONFIG,
  STE_EATS,
  STE_S1DSS,
  type AccessRequest,
  type AtcInvalidateRequest,
  type SmmuFault,
  type SmmuFeatures,
  SmmuDriver,
  SmmuV3,
  type StageConfig,
  WALK_VENDORS,
  type WalkConfig,
  armS2Geometry,
  armStage1Config,
  armStage2Config,
  armTlbiEncodeRange,
  cmd,
  commandOpcode,
  decodeEvent,
  encodeCd,
  encodeCommand,
  encodeL1Cd,
  encodeSte,
  get,
  getNum,
  harvestDirty,
  hex,
  isConfigFault,
  isGuestEvent,
  isPriStopMarker,
  mapRange,
  mask,
  oasEncoding,
  pack,
  permBitFor,
  rewriteViommuCommand,
  startTableBytes,
  unmapRange,
} from "@iommufd/hw";
import { ErrnoError, type ErrnoName, check } from "@iommufd/kit";
import { HwCapabilities, HwInfoType, HwptDataType, HwptInvalidateDataType, PgfaultPerm, VeventqType, ViommuType, HwptAllocFlags } from "@iommufd/proto/iommufd";
import type { IovaRange, Prot } from "../iopt/io-pagetable.js";
import type { HostMemory } from "../mm/phys.js";
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
  PciDevice,
  ViommuHooks,
  ViommuHw,
} from "./ops.js";

// ---------------------------------------------------------------------------
// Constants (Linux arm-smmu-v3.h names in comments)

/** Stream table: 2-level, 256 STEs (one PCI bus) per level-2 array (STRTAB_SPLIT). */
const STRTAB_SPLIT = 8;
/** CDs per level-2 CD table (CTXDESC_L2_ENTRIES): 64 KiB leaves, STE.S1Fmt = 0b10. */
const CTXDESC_L2_ENTRIES = 1024;
const S1FMT_LINEAR = 0;
const S1FMT_64K_L2 = 2;
/** S2 MemAttr with S2FWB: 0b0110 forces Normal Write-Back (io-pgtable ARM_LPAE_PTE_MEMATTR_FWB_WB). */
const S2_MEMATTR_FWB_WB = 0x6;
/** Inner/outer write-back read/write-allocate, inner shareable (queue, table and walk attributes). */
const CACHE_WBRA = 1;
const SH_ISH = 3;
/** CMD_SYNC.CS = SEV: completion wakes the waiters (the model's onSyncComplete port plays the event). */
const CMD_SYNC_SEV: Command = { name: "SYNC", CS: 2, MSH: SH_ISH, MSIAttr: 0xf, MSIData: 0, MSIAddr: 0n };
/** A range TLBI needing more commands than this invalidates the whole ASID/VMID instead. */
const MAX_TLBI_RANGE_CMDS = 8;
/** Without range invalidation: more pages than this invalidate the whole ASID/VMID. */
const MAX_TLBI_PAGES = 256;
/** iommu_hwpt_arm_smmuv3 (16 bytes) and the vIOMMU invalidation entry (16 bytes). */
const VSTE_BYTES = 16;
const VCMD_BYTES = 16;
const HW_INFO_ARM_SMMUV3_BYTES = 40;
const SID_MASK = 0xffff_ffffn << 32n;

/**
 * STRTAB_STE_0_NESTING_ALLOWED / STRTAB_STE_1_NESTING_ALLOWED: the vSTE bits a
 * guest may set (arm-smmu-v3.h). S1ContextPtr is [51:6] (Linux's mask), not
 * the model's [55:6].
 */
const VSTE0_ALLOWED = fieldMask(STE.V) | fieldMask(STE.Config) | fieldMask(STE.S1Fmt) | mask(51, 6) | fieldMask(STE.S1CDMax);
const VSTE1_ALLOWED =
  fieldMask(STE.S1DSS) | fieldMask(STE.S1CIR) | fieldMask(STE.S1COR) | fieldMask(STE.S1CSH) | fieldMask(STE.S1STALLD) | fieldMask(STE.EATS);

/** The IDR fields iommu_hw_info_arm_smmuv3 reports (uapi comment; reference §9.3), per register. */
const HW_INFO_IDR_MASKS: readonly bigint[] = [
  fieldMask(IDR0.ST_LEVEL) |
    fieldMask(IDR0.TERM_MODEL) |
    fieldMask(IDR0.STALL_MODEL) |
    fieldMask(IDR0.TTENDIAN) |
    fieldMask(IDR0.CD2L) |
    fieldMask(IDR0.ASID16) |
    fieldMask(IDR0.TTF),
  fieldMask(IDR1.SIDSIZE) | fieldMask(IDR1.SSIDSIZE),
  0n,
  fieldMask(IDR3.BBML) | fieldMask(IDR3.RIL),
  0n,
  fieldMask(IDR5.VAX) | fieldMask(IDR5.GRAN64K) | fieldMask(IDR5.GRAN16K) | fieldMask(IDR5.GRAN4K),
];

/** The in-word mask of a field. */
function fieldMask(fld: { hi: number; lo: number }): bigint {
  return mask(fld.hi, fld.lo);
}

// ---------------------------------------------------------------------------
// Public surface

export interface SmmuV3DriverOptions {
  /** Hardware features (default: the model's defaults with 16-bit StreamIDs = PCI RIDs). */
  readonly features?: Partial<SmmuFeatures>;
  /** log2 of the queue sizes (defaults: command 10, event 8, PRI 8). */
  readonly cmdqLog2?: number;
  readonly eventqLog2?: number;
  readonly priqLog2?: number;
  readonly iotlbCapacity?: number;
  readonly configCacheCapacity?: number;
}

/** A paging domain of this driver: the ops contract plus the kernel's iotlb_sync. */
export interface SmmuV3PagingDomain extends PagingDomain {
  /** 1: stage 1 (CD with an ASID); 2: stage 2 (STE with a VMID). */
  readonly stage: 1 | 2;
  /** ASID (stage 1) or VMID (stage 2). */
  readonly tag: number;
  /** Resolves when every invalidation queued so far (unmap, dirty clear), ATC included, has completed. */
  iotlbSync(): Promise<void>;
}

/** The SMMUv3 driver: the IommuDriver contract plus what tests and Admin dumps read. */
export interface SmmuV3HostDriver extends IommuDriver {
  readonly vendor: "smmuv3";
  /** The hardware model (tests and register dumps only; the core never touches it). */
  readonly smmu: SmmuV3;
  allocPaging(dev: PciDevice, flags: PagingFlags, hooks: { fault?: IopfSink }): SmmuV3PagingDomain;
  /** Resolves when every command queued so far has completed (the last CMD_SYNC queued: every batch ends in one). */
  flush(): Promise<void>;
}

export function createSmmuV3Driver(id: string, env: DriverEnv, opts: SmmuV3DriverOptions = {}): SmmuV3HostDriver {
  return new SmmuV3Driver(id, env, opts);
}

// ---------------------------------------------------------------------------
// Internal state

type RawCmd = readonly [bigint, bigint];

/** One command on its way to the hardware queue. */
interface QueuedCmd {
  readonly words: RawCmd;
  /** Linear position in the hardware queue once published. */
  pos?: number;
  /** ATC_INV: called when the device's completion failed (timeout). */
  readonly atcFail?: (err: unknown) => void;
}

interface VMaster {
  readonly viommu: SmmuVsmmu;
  readonly vsid: bigint;
}

/** Per-device state (Linux struct arm_smmu_master). */
interface Master {
  readonly dev: PciDevice;
  readonly sid: number;
  /** SSIDs the CD table covers: min(SSIDSIZE, the function's PASID width). */
  readonly ssidBits: number;
  rid: SmmuPagingDomainImpl | SmmuNestedDomain | undefined;
  readonly pasids: Map<number, SmmuPagingDomainImpl>;
  cdTable?: CdTable;
  /** The installed STE points at the host CD table (Linux cd_table.in_ste). */
  cdTableInSte: boolean;
  /** ATS enabled at the function (Linux master->ats_enabled). */
  atsEnabled: boolean;
  /** Events of this device go to this vIOMMU (Linux master->vmaster). */
  vmaster?: VMaster;
}

/** Where a domain is attached: the device and its SSID (undefined = RID), and whether through a nested domain. */
interface Attachment {
  readonly master: Master;
  readonly ssid: number | undefined;
  readonly nested: boolean;
}

function attachmentKey(m: Master, ssid: number | undefined): string {
  return `${m.sid}:${ssid ?? "rid"}`;
}

/** Small ID allocator (ASIDs, VMIDs): 0 is reserved, as Linux reserves it. */
class IdAllocator {
  private readonly used = new Set<number>();
  private next = 1;

  constructor(private readonly max: number) {}

  alloc(): number {
    for (let i = 0; i < this.max; i++) {
      const id = this.next;
      this.next = this.next >= this.max ? 1 : this.next + 1;
      if (!this.used.has(id)) {
        this.used.add(id);
        return id;
      }
    }
    throw new ErrnoError("ENOSPC", "no free ID");
  }

  free(id: number): void {
    this.used.delete(id);
  }
}

// ---------------------------------------------------------------------------
// The driver

class SmmuV3Driver implements SmmuV3HostDriver {
  readonly vendor = "smmuv3" as const;
  readonly smmu: SmmuV3;
  readonly caps: IommuDriver["caps"];
  readonly features: Readonly<SmmuFeatures>;

  private readonly mem: PhysicalMemory;
  private readonly hostMem: HostMemory;
  private readonly drv: SmmuDriver;
  private readonly layout: DriverLayout;
  private readonly masters = new Map<number, Master>();
  private readonly viommus = new Set<SmmuVsmmu>();
  private readonly asids: IdAllocator;
  private readonly vmids: IdAllocator;
  readonly ias: number;
  readonly oas: number;
  /** CD.S / STE.S2S for every master: only with a forced stall model (Linux master->stall_enabled for PCI). */
  readonly stallEnabled: boolean;

  // Command queue bookkeeping.
  private readonly cmdqSize: number;
  private readonly cmdqWrapMask: number;
  private hwSubmitted: number;
  private readonly backlog: QueuedCmd[] = [];
  private readonly syncWaiters: { cmd: QueuedCmd; resolve: () => void }[] = [];
  private lastSync: Promise<void> = Promise.resolve();
  private readonly atcByPos = new Map<number, QueuedCmd>();
  private pumping = false;
  private pumpScheduled = false;
  /** Where the last event record went (set while draining the event queue; read by translate()). */
  private eventRoute: FaultInfo["route"] | undefined;

  private readonly stats = {
    vevents: 0,
    hostEvents: 0,
    eventqOverflows: 0,
    priForwarded: 0,
    priRefused: 0,
    priStopMarkers: 0,
    priqOverflows: 0,
    atcInvalidations: 0,
    atcTimeouts: 0,
    cmdqErrors: 0,
    stallsTerminated: 0,
  };

  constructor(
    readonly id: string,
    private readonly env: DriverEnv,
    opts: SmmuV3DriverOptions,
  ) {
    this.hostMem = env.memory;
    this.mem = env.memory.mem;
    this.smmu = new SmmuV3({
      memory: this.mem,
      features: { sidBits: 16, ...opts.features },
      iotlbCapacity: opts.iotlbCapacity,
      configCacheCapacity: opts.configCacheCapacity,
      ports: {
        onAtcInvalidate: (req) => this.onAtcInvalidate(req),
        onPriResponse: (resp) => this.onPriResponse(resp),
        onSyncComplete: () => this.onSyncComplete(),
        onIrq: (line) => this.onIrq(line),
      },
    });
    const f = this.smmu.features;
    this.features = f;
    this.oas = f.oas;
    this.ias = f.oas; // AArch64-only: IAS = OAS (Linux smmu->ias)
    this.stallEnabled = f.stallModel === 2;
    this.asids = new IdAllocator(f.asid16 ? 0xffff : 0xff);
    this.vmids = new IdAllocator(f.vmid16 ? 0xffff : 0xff);
    const nesting = f.stage1 && f.stage2;
    this.caps = {
      dirtyTracking: f.httu === 2,
      nesting,
      maxPasidLog2: f.ssidBits,
      viommuType: nesting ? ViommuType.ARM_SMMUV3 : 0,
      nestedDataType: nesting ? HwptDataType.ARM_SMMUV3 : 0,
      // arm_vsmmu_alloc_domain_nested refuses anything but FAULT_ID_VALID
      nestedFlags: HwptAllocFlags.FAULT_ID_VALID,
      hwptInvalidateType: -1,
      viommuInvalidateType: nesting ? HwptInvalidateDataType.ARM_SMMUV3 : -1,
      veventqType: nesting ? VeventqType.ARM_SMMUV3 : 0,
      pgsizeMin: BigInt(PAGE_SIZE),
      aperture: { start: 0n, last: (1n << BigInt(this.ias)) - 1n },
    };

    // arm_smmu_device_reset: tables and queues in memory, then the registers.
    const cmdqLog2 = Math.min(opts.cmdqLog2 ?? 10, f.cmdqs);
    const eventqLog2 = Math.min(opts.eventqLog2 ?? 8, f.eventqs);
    const priqLog2 = Math.min(opts.priqLog2 ?? 8, f.priqs);
    this.cmdqSize = 2 ** cmdqLog2;
    this.cmdqWrapMask = 2 ** (cmdqLog2 + 1) - 1;
    const l1Bytes = Math.max(8, 2 ** Math.max(0, f.sidBits - STRTAB_SPLIT) * 8);
    const queueBytes = (log2: number, entry: number) => 2 ** log2 * entry;
    this.layout = {
      strtab: { base: this.allocContig(l1Bytes), log2size: f.sidBits, format: "2-level", split: STRTAB_SPLIT },
      cmdq: { base: this.allocContig(queueBytes(cmdqLog2, 16)), log2size: cmdqLog2 },
      eventq: { base: this.allocContig(queueBytes(eventqLog2, 32)), log2size: eventqLog2 },
      ...(f.ats && f.pri ? { priq: { base: this.allocContig(queueBytes(priqLog2, 16)), log2size: priqLog2 } } : {}),
    };
    // Level-2 stream tables start as abort STEs (Linux arm_smmu_init_initial_stes with disable_bypass).
    const steAlloc: PageAllocator = {
      alloc: (bytes) => {
        const pa = this.allocContig(bytes);
        const init = new Uint8Array(bytes);
        for (let i = 0; i < bytes; i += 64) init[i] = 1; // qw0: V = 1, Config = ABORT
        this.mem.write(pa, init);
        return pa;
      },
    };
    this.drv = new SmmuDriver(this.smmu, this.mem, steAlloc);
    // Queues and tables inner-shareable, write-back cacheable; record invalid StreamIDs; no E2H (host at EL1).
    const wb = { QUEUE_IC: CACHE_WBRA, QUEUE_OC: CACHE_WBRA, QUEUE_SH: SH_ISH, TABLE_IC: CACHE_WBRA, TABLE_OC: CACHE_WBRA, TABLE_SH: SH_ISH };
    this.smmu.write(SMMU_REG.CR1, pack(CR1, 1, wb)[0] as bigint);
    this.smmu.write(SMMU_REG.CR2, pack(CR2, 1, { PTM: 1, RECINVSID: 1 })[0] as bigint);
    this.drv.init(this.layout);
    this.hwSubmitted = Number(this.smmu.read(SMMU_REG.CMDQ_PROD)) & this.cmdqWrapMask;
    this.smmu.write(
      SMMU_REG.IRQ_CTRL,
      Number(pack(IRQ_CTRL, 1, { GERROR_IRQEN: 1, PRIQ_IRQEN: this.layout.priq ? 1 : 0, EVENTQ_IRQEN: 1 })[0]),
    );
  }

  // =========================================================================
  // Memory for tables and queues

  /** Host physical memory as the model walks it. */
  get memory(): PhysicalMemory {
    return this.mem;
  }

  /** Zeroed, naturally aligned, physically contiguous host pages (dma_alloc_coherent). */
  allocContig(bytes: number): bigint {
    const pages = Math.max(1, Math.ceil(bytes / PAGE_SIZE));
    if (pages === 1) return this.hostMem.allocPage();
    const align = BigInt(pages * PAGE_SIZE);
    const strays: bigint[] = [];
    let run: bigint[] = [];
    try {
      while (run.length < pages) {
        const pa = this.hostMem.allocPage();
        const last = run[run.length - 1];
        if (last !== undefined && pa === last + BigInt(PAGE_SIZE)) {
          run.push(pa);
          continue;
        }
        strays.push(...run);
        run = [];
        if (pa % align === 0n) run.push(pa);
        else strays.push(pa);
      }
    } catch (e) {
      for (const pa of [...strays, ...run]) this.hostMem.freePage(pa);
      throw e;
    }
    for (const pa of strays) this.hostMem.freePage(pa);
    return run[0] as bigint;
  }

  freeContig(pa: bigint, bytes: number): void {
    const pages = Math.max(1, Math.ceil(bytes / PAGE_SIZE));
    for (let i = 0; i < pages; i++) this.hostMem.freePage(pa + BigInt(i * PAGE_SIZE));
  }

  /** Page-table pages for io-pgtable (map/unmap allocate and free through it). */
  readonly tableAlloc: PageAllocator = {
    alloc: (bytes) => {
      try {
        return this.allocContig(bytes);
      } catch {
        return undefined;
      }
    },
    free: (addr, bytes) => this.freeContig(addr, bytes),
  };

  /** Write a table entry: qw1..qwN first, qw0 (with V) last, so it becomes valid only once complete. */
  writeEntry(addr: bigint, words: readonly bigint[]): void {
    for (let i = words.length - 1; i >= 1; i--) this.mem.write64(addr + BigInt(i * 8), words[i] as bigint);
    this.mem.write64(addr, words[0] as bigint);
  }

  // =========================================================================
  // Command queue: publish in order, wait for CMD_SYNC, recover from errors

  /**
   * Queue `cmds` followed by a CMD_SYNC; resolves when that SYNC completes.
   * `onAtcFail(i, err)` reports a failed completion of cmds[i] (an ATC_INV).
   */
  enqueue(cmds: readonly (Command | RawCmd)[], onAtcFail?: (index: number, err: unknown) => void): Promise<void> {
    const list: QueuedCmd[] = cmds.map((c, i) => {
      const words = isRawCmd(c) ? c : encodeCommand(c);
      const isAtc = commandOpcode(words) === CMD_OP.ATC_INV;
      return isAtc && onAtcFail ? { words, atcFail: (e: unknown) => onAtcFail(i, e) } : { words };
    });
    const sync: QueuedCmd = { words: encodeCommand(CMD_SYNC_SEV) };
    list.push(sync);
    const done = new Promise<void>((resolve) => this.syncWaiters.push({ cmd: sync, resolve }));
    this.lastSync = done;
    this.backlog.push(...list);
    this.pump();
    return done;
  }

  /**
   * Settles once everything queued so far has completed. Every batch ends in
   * a CMD_SYNC and the queue is in order, so that is the last batch's SYNC:
   * no new command is needed.
   */
  flush(): Promise<void> {
    return this.lastSync;
  }

  /** Commands published to the hardware queue and consumed by it (a linear count). */
  private consumedCount(): number {
    const prod = Number(this.smmu.read(SMMU_REG.CMDQ_PROD)) & this.cmdqWrapMask;
    const cons = Number(this.smmu.read(SMMU_REG.CMDQ_CONS)) & this.cmdqWrapMask;
    return this.hwSubmitted - ((prod - cons) & this.cmdqWrapMask);
  }

  private cmdqSpace(): number {
    return this.cmdqSize - (this.hwSubmitted - this.consumedCount());
  }

  /** Publish the backlog (as much as fits) with one CMDQ_PROD write per batch. */
  private pump(): void {
    if (this.pumping) return;
    this.pumping = true;
    try {
      while (this.backlog.length > 0) {
        const space = this.cmdqSpace();
        if (space <= 0) break;
        const batch = this.backlog.splice(0, space);
        for (const c of batch) {
          c.pos = this.hwSubmitted++;
          if (commandOpcode(c.words) === CMD_OP.ATC_INV) this.atcByPos.set(c.pos, c);
        }
        this.drv.submit(...batch.map((c) => c.words));
        this.recoverCmdq();
      }
    } finally {
      this.pumping = false;
    }
    this.pollSyncs();
  }

  /** Resolve the waiters whose CMD_SYNC has been consumed (Linux polls CONS past its SYNC). */
  private pollSyncs(): void {
    const consumed = this.consumedCount();
    while (this.syncWaiters.length > 0) {
      const w = this.syncWaiters[0] as (typeof this.syncWaiters)[number];
      if (w.cmd.pos === undefined || w.cmd.pos >= consumed) break;
      this.syncWaiters.shift();
      w.resolve();
    }
  }

  /**
   * A CMD_SYNC completed (the SEV that wakes the pollers). Consumption only
   * stops at a SYNC waiting for ATC completions, so this is also when queue
   * space frees up for the backlog: publish it from a fresh stack (we are
   * inside the model's consumption here).
   */
  private onSyncComplete(): void {
    this.pollSyncs();
    if (this.backlog.length > 0 && !this.pumpScheduled) {
      this.pumpScheduled = true;
      queueMicrotask(() => {
        this.pumpScheduled = false;
        this.pump();
      });
    }
  }

  /**
   * GERROR.CMDQ_ERR (arm_smmu_gerror_handler + arm_smmu_cmdq_skip_err):
   * CERROR_ILL turns the offending command into a CMD_SYNC; CERROR_ATC_INV_SYNC
   * and CERROR_ABT retry; then GERRORN is written to resume consumption.
   */
  private recoverCmdq(): void {
    for (let guard = 0; guard < 64 && this.smmu.cmdqState === "error"; guard++) {
      this.stats.cmdqErrors++;
      const cons = Number(this.smmu.read(SMMU_REG.CMDQ_CONS));
      const err = getNum([BigInt(cons >>> 0)], CMDQ_CONS.ERR);
      const fields: Record<string, unknown> = { cons: hex(cons >>> 0) };
      if (err === CERROR.ILL) {
        const log2 = this.layout.cmdq.log2size;
        const slot = this.layout.cmdq.base + BigInt((cons & (2 ** log2 - 1)) * 16);
        const r = this.mem.read(slot, 16);
        if (r.ok) {
          const dv = new DataView(r.value.buffer, r.value.byteOffset, 16);
          fields.command = [hex(dv.getBigUint64(0, true)), hex(dv.getBigUint64(8, true))];
        }
        this.atcByPos.delete(this.consumedCount());
        const sync = encodeCommand(CMD_SYNC_SEV);
        this.mem.write64(slot + 8n, sync[1]);
        this.mem.write64(slot, sync[0]);
        this.hostEvent(undefined, "CMDQ error: Illegal command, skipping it", fields);
      } else if (err === CERROR.ATC_INV_SYNC) {
        this.hostEvent(undefined, "CMDQ error: ATC invalidate timeout, retrying CMD_SYNC", fields);
      } else {
        this.hostEvent(undefined, err === CERROR.ABT ? "CMDQ error: Abort on command fetch, retrying" : "CMDQ error", fields);
      }
      const gerror = Number(this.smmu.read(SMMU_REG.GERROR));
      this.smmu.write(SMMU_REG.GERRORN, gerror);
    }
    this.pollSyncs();
  }

  /** The model forwards a CMD_ATC_INV to the device: ask it over the bus, acknowledge its completion. */
  private onAtcInvalidate(req: AtcInvalidateRequest): void {
    const pos = this.consumedCount() - 1;
    const queued = this.atcByPos.get(pos);
    this.atcByPos.delete(pos);
    this.stats.atcInvalidations++;
    // "Everything" (ATC_INV Size = 52) is addr 0, size 2^64 with global set; the PCIe Global
    // Invalidate bit of a guest's command has no counterpart on the bus and is not passed on.
    const inv = {
      rid: req.StreamID,
      ...(req.SSV ? { pasid: req.SubstreamID } : {}),
      addr: req.range.start,
      size: req.range.size,
      global: req.range.size >= 1n << 64n,
    };
    // From a fresh stack: the device may answer at once, and we are inside the model's consumption.
    void Promise.resolve()
      .then(() => this.env.atcInvalidate(inv))
      .then(
        () => this.ackAtc(req.id, true),
        (e: unknown) => {
          this.stats.atcTimeouts++;
          queued?.atcFail?.(e);
          this.hostEvent(this.masters.get(req.StreamID)?.dev, "ATC invalidation failed", {
            sid: req.StreamID,
            ...(req.SSV ? { ssid: req.SubstreamID } : {}),
            addr: hex(req.range.start),
            size: hex(req.range.size),
            error: e instanceof Error ? e.message : String(e),
          });
          this.ackAtc(req.id, false);
        },
      );
  }

  private ackAtc(id: number, ok: boolean): void {
    this.smmu.ackAtcInvalidation(id, ok);
    this.recoverCmdq();
  }

  private onIrq(line: "eventq" | "priq" | "gerror"): void {
    if (line === "eventq") this.handleEvents();
    else if (line === "priq") this.handlePri();
    else queueMicrotask(() => this.recoverCmdq());
  }

  // =========================================================================
  // Commands Linux builds

  /** arm_smmu_atc_inv_to_cmd: the smallest naturally aligned power-of-two span covering the range. */
  atcInvCmd(sid: number, ssid: number | undefined, iova: bigint, size: bigint | undefined): Command {
    if (size === undefined) return { name: "ATC_INV", StreamID: sid, SSV: ssid !== undefined, SubstreamID: ssid ?? 0, Global: false, Addr: 0n, Size: 52 };
    const pageStart = iova >> 12n;
    const pageEnd = (iova + size - 1n) >> 12n;
    const span = fls(pageStart ^ pageEnd);
    const start = pageStart & ~((1n << BigInt(span)) - 1n);
    return { name: "ATC_INV", StreamID: sid, SSV: ssid !== undefined, SubstreamID: ssid ?? 0, Global: false, Addr: start << 12n, Size: span };
  }

  /** arm_smmu_atc_inv_master: everything the function cached for `ssid` (undefined: no PASID). */
  atcInvMaster(m: Master, ssid: number | undefined): Promise<void> {
    return this.enqueue([this.atcInvCmd(m.sid, ssid, 0n, undefined)]);
  }

  /** The whole of a domain's context: its ASID (stage 1) or VMID (stage 2). */
  private tlbiContext(d: SmmuPagingDomainImpl): Command[] {
    return d.stage === 1 ? [cmd.tlbi("TLBI_NH_ASID", { ASID: d.tag, VMID: 0 })] : [cmd.tlbi("TLBI_S12_VMALL", { VMID: d.tag })];
  }

  /** TLBI for [iova, iova+size) of a domain (range commands with IDR3.RIL), or the whole context. */
  tlbiCmds(d: SmmuPagingDomainImpl, iova: bigint, size: bigint, leaf: boolean): Command[] {
    const name = d.stage === 1 ? "TLBI_NH_VA" : "TLBI_S2_IPA";
    // One object shape for both stages (a spread of two shapes is slow on this per-unmap path).
    const ASID = d.stage === 1 ? d.tag : 0;
    const VMID = d.stage === 1 ? 0 : d.tag;
    const start = iova & ~0xfffn;
    const end = (iova + size + 0xfffn) & ~0xfffn;
    if (this.features.rangeInvalidation) {
      const ranges = armTlbiEncodeRange(start, end - start, 12);
      if (ranges.length > MAX_TLBI_RANGE_CMDS || ranges.some((r) => r.scale > 31)) return this.tlbiContext(d);
      return ranges.map((r) => cmd.tlbi(name, { ASID, VMID, Addr: r.addr, Leaf: leaf, TG: r.tg, TTL: 0, NUM: r.num, SCALE: r.scale }));
    }
    const pages = (end - start) >> 12n;
    if (pages > BigInt(MAX_TLBI_PAGES)) return this.tlbiContext(d);
    const out: Command[] = [];
    for (let a = start; a < end; a += 0x1000n) out.push(cmd.tlbi(name, { ASID, VMID, Addr: a, Leaf: leaf }));
    return out;
  }

  /**
   * arm_smmu_tlb_inv_range_domain: TLBI + SYNC; for a nesting parent also
   * TLBI_NH_ALL of its VMID (the guests' combined entries); then ATC_INV on
   * every ATS-enabled attachment (the whole ATC through a nested domain) + SYNC.
   */
  invalidateDomainRange(d: SmmuPagingDomainImpl, iova: bigint, size: bigint | undefined, leaf: boolean): Promise<void> {
    const tlbi = size === undefined ? this.tlbiCmds(d, 0n, 1n << BigInt(this.ias), leaf) : this.tlbiCmds(d, iova, size, leaf);
    void this.enqueue(tlbi);
    if (d.flags.nestParent) void this.enqueue([cmd.tlbi("TLBI_NH_ALL", { VMID: d.tag })]);
    const atc: Command[] = [];
    for (const a of d.devices.values()) {
      if (!a.master.atsEnabled) continue;
      atc.push(a.nested ? this.atcInvCmd(a.master.sid, undefined, 0n, undefined) : this.atcInvCmd(a.master.sid, a.ssid, iova, size));
    }
    return atc.length > 0 ? this.enqueue(atc, (_i, err) => d.atcFailed(err)) : this.flush();
  }

  // =========================================================================
  // STEs and CDs (arm_smmu_make_*_ste, arm_smmu_make_s1_cd)

  abortSte(): bigint[] {
    return encodeSte({ V: 1, Config: STE_CONFIG.ABORT });
  }

  cdtableSte(m: Master, ats: boolean, s1dss: number): bigint[] {
    const t = m.cdTable as CdTable;
    return encodeSte({
      V: 1,
      Config: STE_CONFIG.S1_TRANS,
      S1Fmt: t.s1fmt,
      S1ContextPtr: t.base,
      S1CDMax: t.s1cdmax,
      S1DSS: s1dss,
      S1CIR: CACHE_WBRA,
      S1COR: CACHE_WBRA,
      S1CSH: SH_ISH,
      S1STALLD: this.features.stallModel === 0 && !this.stallEnabled ? 1 : 0,
      EATS: ats ? STE_EATS.TRANS : STE_EATS.ABT,
      STRW: 0, // NS-EL1
      S2VMID: 0, // VMID 0 is reserved for stage-1 streams (arm_smmu_domain_alloc_id)
    });
  }

  s2Ste(d: SmmuPagingDomainImpl, ats: boolean): bigint[] {
    const s = d.pgtable.stage;
    return encodeSte({
      V: 1,
      Config: STE_CONFIG.S2_TRANS,
      EATS: ats ? STE_EATS.TRANS : STE_EATS.ABT,
      S2FWB: this.features.fwb ? 1 : 0,
      S2VMID: d.tag,
      S2T0SZ: 64 - s.inputBits,
      S2SL0: d.pgtable.sl0,
      S2IR0: CACHE_WBRA,
      S2OR0: CACHE_WBRA,
      S2SH0: SH_ISH,
      S2TG: 0,
      S2PS: oasEncoding(this.oas),
      S2AA64: 1,
      S2PTW: 1,
      S2S: this.stallEnabled ? 1 : 0,
      S2R: 1,
      S2HA: d.flags.dirtyTracking ? 1 : 0,
      S2HD: d.flags.dirtyTracking ? 1 : 0,
      S2TTB: d.pgtable.root,
    });
  }

  /** arm_smmu_make_nested_domain_ste: the parent's S2 plus the guest's qw0/qw1, Config NESTED, MEV. */
  nestedSte(n: SmmuNestedDomain, ats: boolean): bigint[] {
    const cfg = n.vsteConfig;
    if (cfg === STE_CONFIG.BYPASS) return this.s2Ste(n.parent, ats);
    if (cfg !== STE_CONFIG.S1_TRANS) return this.abortSte();
    const w = this.s2Ste(n.parent, ats);
    const cfgMask = fieldMask(STE.Config);
    w[0] = (pack(STE, 1, { V: 1, Config: STE_CONFIG.NESTED })[0] as bigint) | (n.vste[0] & ~cfgMask);
    w[1] = (w[1] as bigint) | n.vste[1] | fieldMask(STE.MEV);
    return w;
  }

  s1Cd(d: SmmuPagingDomainImpl): bigint[] {
    const s = d.pgtable.stage;
    return encodeCd({
      T0SZ: 64 - s.inputBits,
      TG0: 0,
      IR0: CACHE_WBRA,
      OR0: CACHE_WBRA,
      SH0: SH_ISH,
      EPD1: 1,
      V: 1,
      IPS: oasEncoding(this.oas),
      AA64: 1,
      S: this.stallEnabled ? 1 : 0,
      R: 1,
      A: 1,
      ASET: 1,
      ASID: d.tag,
      HA: d.flags.dirtyTracking ? 1 : 0,
      HD: d.flags.dirtyTracking ? 1 : 0,
      TTB0: d.pgtable.root,
      MAIR: ARM_LPAE_MAIR,
    });
  }

  /** arm_smmu_install_ste_for_dev: qw1..qw7, then qw0, then CFGI_STE + SYNC. */
  installSte(m: Master, words: readonly bigint[]): Promise<void> {
    this.writeEntry(this.drv.steAddr(m.sid), words);
    return this.enqueue([cmd.cfgiSte(m.sid, true)]);
  }

  /** arm_smmu_write_cd_entry: the CD for `ssid` (all zero = invalid), then CFGI_CD + SYNC. */
  writeCd(m: Master, ssid: number, words: readonly bigint[] | undefined): Promise<void> {
    const t = m.cdTable as CdTable;
    const addr = t.cdAddr(ssid, words !== undefined);
    if (addr === undefined) return this.flush(); // no level-2 table: nothing to clear
    // A level-2 CD table was just hooked in: an invalid L1CD can be cached (arm_smmu_alloc_cd_ptr).
    if (t.takeNewL2(ssid)) void this.enqueue([cmd.cfgiCd(m.sid, ssid, false)]);
    const cur = this.mem.read64(addr);
    const was = cur.ok && get([cur.value], CD.V) !== 0n;
    if (words) {
      this.writeEntry(addr, words);
    } else {
      this.mem.write64(addr, 0n); // V = 0 first
      for (let i = 1; i < 8; i++) this.mem.write64(addr + BigInt(i * 8), 0n);
    }
    const now = words !== undefined;
    if (ssid !== 0 && was !== now) t.used += now ? 1 : -1;
    return this.enqueue([cmd.cfgiCd(m.sid, ssid, true)]);
  }

  atsSupported(m: Master): boolean {
    return this.features.ats && m.dev.ats;
  }

  // =========================================================================
  // Devices

  private masterOf(dev: PciDevice): Master {
    const m = this.masters.get(dev.rid);
    if (!m || m.dev !== dev) throw new ErrnoError("EINVAL", `${dev.name} is not a device of ${this.id}`);
    return m;
  }

  probeDevice(dev: PciDevice): void {
    check(dev.iommu === this, "EINVAL", `${dev.name} is behind ${dev.iommu.id}, not ${this.id}`);
    const old = this.masters.get(dev.rid);
    if (old?.dev === dev) return;
    if (old) throw new ErrnoError("EEXIST", `StreamID 0x${dev.rid.toString(16)} is already ${old.dev.name}`);
    check(dev.rid >= 0 && dev.rid < 2 ** this.features.sidBits, "EINVAL", "StreamID beyond SIDSIZE");
    const m: Master = {
      dev,
      sid: dev.rid,
      ssidBits: Math.min(this.features.ssidBits, dev.maxPasidLog2),
      rid: undefined,
      pasids: new Map(),
      cdTableInSte: false,
      atsEnabled: false,
    };
    this.masters.set(dev.rid, m);
    void this.installSte(m, this.abortSte());
  }

  releaseDevice(dev: PciDevice): void {
    const m = this.masters.get(dev.rid);
    if (!m || m.dev !== dev) return;
    for (const [ssid, d] of m.pasids) d.devices.delete(attachmentKey(m, ssid));
    m.pasids.clear();
    this.detachRidDomain(m);
    m.rid = undefined;
    m.vmaster = undefined;
    for (const v of this.viommus) v.forget(dev);
    const wasAts = m.atsEnabled;
    m.atsEnabled = false;
    void this.installSte(m, this.abortSte());
    if (wasAts) void this.atcInvMaster(m, undefined);
    m.cdTableInSte = false;
    const table = m.cdTable;
    m.cdTable = undefined;
    this.masters.delete(dev.rid);
    // The CD table goes once the abort STE is visible (no walker can reach it any more).
    void this.flush().then(() => table?.free());
  }

  private detachRidDomain(m: Master): void {
    const old = m.rid;
    if (old instanceof SmmuPagingDomainImpl) old.devices.delete(attachmentKey(m, undefined));
    else if (old instanceof SmmuNestedDomain) {
      old.parent.devices.delete(attachmentKey(m, undefined));
      old.masters.delete(m);
    }
  }

  private ensureCdTable(m: Master): CdTable {
    if (!m.cdTable) m.cdTable = new CdTable(this, m.ssidBits);
    return m.cdTable;
  }

  private ssidsInUse(m: Master): boolean {
    return (m.cdTable?.used ?? 0) > 0;
  }

  // =========================================================================
  // Attach (arm_smmu_attach_dev, arm_smmu_attach_dev_nested, arm_smmu_set_pasid)

  async attach(dev: PciDevice, pasid: number | undefined, domain: PagingDomain | NestedDomain | undefined): Promise<void> {
    const m = this.masterOf(dev);
    if (domain !== undefined && !this.owns(domain)) throw new ErrnoError("EINVAL", "the domain belongs to another IOMMU instance");
    const d = domain as SmmuPagingDomainImpl | SmmuNestedDomain | undefined;
    if (pasid === undefined) await this.attachRid(m, d);
    else await this.attachPasid(m, pasid, d);
  }

  private owns(domain: PagingDomain | NestedDomain): boolean {
    if (domain instanceof SmmuPagingDomainImpl) return domain.drv === this && !domain.freed;
    if (domain instanceof SmmuNestedDomain) return domain.parent.drv === this && !domain.freed;
    return false;
  }

  private attachRid(m: Master, domain: SmmuPagingDomainImpl | SmmuNestedDomain | undefined): Promise<void> {
    // Prepare: every check and allocation before anything changes (atomic replace).
    const inUse = this.ssidsInUse(m);
    let ats = false;
    let ste: bigint[];
    let cd: bigint[] | undefined;
    let vmaster: VMaster | undefined;
    if (domain === undefined) {
      // arm_smmu_attach_dev_blocked: with PASIDs in use the CD table stays, non-PASID traffic terminates.
      if (inUse) {
        ats = this.atsSupported(m);
        ste = this.cdtableSte(m, ats, STE_S1DSS.TERMINATE);
      } else {
        ste = this.abortSte();
      }
    } else if (domain instanceof SmmuPagingDomainImpl) {
      ats = this.atsSupported(m);
      if (domain.stage === 1) {
        const t = this.ensureCdTable(m);
        t.cdAddr(0, true); // allocate now: ENOMEM before any change
        cd = this.s1Cd(domain);
        ste = this.cdtableSte(m, ats, STE_S1DSS.SSID0);
      } else {
        if (inUse) throw new ErrnoError("EBUSY", "PASIDs are attached: a stage-2 domain cannot take the RID");
        ste = this.s2Ste(domain, ats);
      }
    } else {
      if (inUse) throw new ErrnoError("EBUSY", "PASIDs are attached: a nested domain cannot take the RID");
      const vsid = domain.viommu.vsidOf(m.dev);
      // A translating vSTE needs a vDEVICE (CD/ATC invalidations and vEVENTs use its vSID); abort/bypass do not.
      if (vsid === undefined && domain.vsteConfig === STE_CONFIG.S1_TRANS) {
        throw new ErrnoError("ENOENT", "the device has no vDEVICE on the nested domain's vIOMMU");
      }
      if (vsid !== undefined) vmaster = { viommu: domain.viommu, vsid };
      ats = domain.enableAts && this.atsSupported(m);
      ste = this.nestedSte(domain, ats);
    }

    // Commit.
    const oldAts = m.atsEnabled;
    if (!ats && oldAts) m.atsEnabled = false; // disable ATS at the function before the STE answers UR
    if (cd) void this.writeCd(m, 0, cd);
    void this.installSte(m, ste);
    if (ats && !oldAts) {
      void this.atcInvMaster(m, undefined); // arm_smmu_enable_ats: flush first
      m.atsEnabled = true;
    } else if (oldAts) {
      // The translation changed, or ATS is being switched off: flush the ATC.
      void this.atcInvMaster(m, undefined);
    }
    this.detachRidDomain(m);
    if (domain instanceof SmmuPagingDomainImpl) {
      domain.devices.set(attachmentKey(m, undefined), { master: m, ssid: undefined, nested: false });
    } else if (domain instanceof SmmuNestedDomain) {
      domain.parent.devices.set(attachmentKey(m, undefined), { master: m, ssid: undefined, nested: true });
      domain.masters.add(m);
    }
    m.rid = domain;
    m.vmaster = vmaster;
    m.cdTableInSte = cd !== undefined || (domain === undefined && inUse);
    // A stage-1 CD at SSID 0 is stale once the RID no longer uses it (arm_smmu_clear_cd).
    if (!cd && m.cdTable) void this.writeCd(m, 0, undefined);
    return this.flush();
  }

  private attachPasid(m: Master, pasid: number, domain: SmmuPagingDomainImpl | SmmuNestedDomain | undefined): Promise<void> {
    if (m.ssidBits === 0 || !Number.isInteger(pasid) || pasid <= 0 || pasid >= 2 ** m.ssidBits) {
      throw new ErrnoError("EINVAL", `pasid ${pasid} is out of range for ${m.dev.name}`);
    }
    if (domain === undefined) return this.detachPasid(m, pasid);
    // Nested domains have no set_dev_pasid: the guest owns the CD table (iommu_attach_device_pasid → EOPNOTSUPP).
    if (domain instanceof SmmuNestedDomain) throw new ErrnoError("EOPNOTSUPP", "a nested domain cannot be attached to a PASID");
    if (domain.stage !== 1) throw new ErrnoError("EINVAL", "only stage-1 domains can be attached to a PASID");
    if (!m.cdTableInSte && m.rid !== undefined) {
      throw new ErrnoError("EINVAL", "the RID is attached to a domain without a host CD table");
    }
    const t = this.ensureCdTable(m);
    t.cdAddr(pasid, true);
    const ats = this.atsSupported(m);

    const oldAts = m.atsEnabled;
    void this.writeCd(m, pasid, this.s1Cd(domain));
    // arm_smmu_update_ste: install the CD table with S1DSS = terminate if the RID is blocked.
    if (!m.cdTableInSte || oldAts !== ats) {
      const s1dss = m.rid === undefined ? STE_S1DSS.TERMINATE : STE_S1DSS.SSID0;
      void this.installSte(m, this.cdtableSte(m, ats, s1dss));
    }
    if (ats && !oldAts) {
      void this.atcInvMaster(m, undefined);
      m.atsEnabled = true;
    } else if (ats) {
      void this.atcInvMaster(m, pasid);
    }
    const old = m.pasids.get(pasid);
    old?.devices.delete(attachmentKey(m, pasid));
    domain.devices.set(attachmentKey(m, pasid), { master: m, ssid: pasid, nested: false });
    m.pasids.set(pasid, domain);
    m.cdTableInSte = true;
    return this.flush();
  }

  /** arm_smmu_blocking_set_dev_pasid. */
  private detachPasid(m: Master, pasid: number): Promise<void> {
    const old = m.pasids.get(pasid);
    if (!old) return this.flush();
    void this.writeCd(m, pasid, undefined);
    if (m.atsEnabled) void this.atcInvMaster(m, pasid);
    old.devices.delete(attachmentKey(m, pasid));
    m.pasids.delete(pasid);
    // The last PASID gone with a blocked RID: back to a plain abort STE.
    if (!this.ssidsInUse(m) && m.rid === undefined) return this.attachRid(m, undefined);
    return this.flush();
  }

  // =========================================================================
  // Domains and vIOMMUs

  allocPaging(dev: PciDevice, flags: PagingFlags, hooks: { fault?: IopfSink }): SmmuV3PagingDomain {
    this.masterOf(dev);
    const f = this.features;
    let stage: 1 | 2;
    if (flags.nestParent) {
      if (!this.caps.nesting) throw new ErrnoError("EOPNOTSUPP", "the SMMU has no nesting (S1P and S2P)");
      if (flags.pasid) throw new ErrnoError("EOPNOTSUPP", "a nesting parent is stage 2 and cannot be PASID-compatible");
      stage = 2;
    } else {
      if (!f.stage1 && flags.pasid) throw new ErrnoError("EOPNOTSUPP", "PASID domains need stage 1");
      stage = f.stage1 ? 1 : 2;
    }
    if (flags.dirtyTracking && f.httu !== 2) throw new ErrnoError("EOPNOTSUPP", "dirty tracking needs HTTU with dirty state (IDR0.HTTU = 2)");
    return new SmmuPagingDomainImpl(this, stage, { ...flags }, hooks.fault, stage === 1 ? this.asids : this.vmids);
  }

  allocNested(
    dev: PciDevice,
    parent: PagingDomain,
    viommu: ViommuHw | undefined,
    dataType: number,
    data: Uint8Array,
    hooks: { fault?: IopfSink },
  ): NestedDomain {
    this.masterOf(dev);
    // SMMUv3 nests only through a vIOMMU (arm_vsmmu_alloc_domain_nested).
    if (viommu === undefined) throw new ErrnoError("EOPNOTSUPP", "SMMUv3 nested domains are allocated on a vIOMMU");
    if (!(viommu instanceof SmmuVsmmu) || viommu.drv !== this || viommu.freed) throw new ErrnoError("EINVAL", "the vIOMMU belongs to another IOMMU");
    if (parent !== viommu.parent) throw new ErrnoError("EINVAL", "the parent is not the vIOMMU's");
    // iommu_copy_struct_from_user: type, then length.
    if (dataType !== HwptDataType.ARM_SMMUV3) throw new ErrnoError("EOPNOTSUPP", `data_type ${dataType} is not IOMMU_HWPT_DATA_ARM_SMMUV3`);
    if (data.length !== VSTE_BYTES) throw new ErrnoError("EINVAL", `iommu_hwpt_arm_smmuv3 is ${VSTE_BYTES} bytes, got ${data.length}`);
    const dv = new DataView(data.buffer, data.byteOffset, data.byteLength);
    const vste: [bigint, bigint] = [dv.getBigUint64(0, true), dv.getBigUint64(8, true)];
    const enableAts = validateVste(vste);
    return new SmmuNestedDomain(viommu, vste, enableAts, hooks.fault);
  }

  allocViommu(dev: PciDevice, type: number, parent: PagingDomain, hooks: ViommuHooks): ViommuHw {
    this.masterOf(dev);
    // arm_smmu_get_viommu_size: nesting, and S2FWB (or a coherent device) so the guest cannot bypass the cache.
    if (type !== ViommuType.ARM_SMMUV3 || !this.caps.nesting || !this.features.fwb) {
      throw new ErrnoError("EOPNOTSUPP", `vIOMMU type ${type} is not supported by ${this.id}`);
    }
    if (!(parent instanceof SmmuPagingDomainImpl) || parent.drv !== this) throw new ErrnoError("EINVAL", "the parent belongs to another IOMMU");
    if (!parent.flags.nestParent) throw new ErrnoError("EINVAL", "the parent is not a nesting parent");
    const v = new SmmuVsmmu(this, parent, hooks);
    this.viommus.add(v);
    return v;
  }

  dropViommu(v: SmmuVsmmu): void {
    this.viommus.delete(v);
    for (const m of this.masters.values()) if (m.vmaster?.viommu === v) m.vmaster = undefined;
  }

  clearVmaster(dev: PciDevice, v: SmmuVsmmu): void {
    const m = this.masters.get(dev.rid);
    if (m?.dev === dev && m.vmaster?.viommu === v) m.vmaster = undefined;
  }

  vsidToSid(v: SmmuVsmmu, vsid: number): number | undefined {
    const dev = v.devOf(BigInt(vsid));
    return dev === undefined ? undefined : dev.rid;
  }

  // =========================================================================
  // Info

  hwInfo(_dev: PciDevice, requestedType?: number): HwInfo {
    if (requestedType !== undefined && requestedType !== HwInfoType.NONE /* DEFAULT */ && requestedType !== HwInfoType.ARM_SMMUV3) {
      throw new ErrnoError("EOPNOTSUPP", `hw_info type ${requestedType} is not provided by ${this.id}`);
    }
    const data = new Uint8Array(HW_INFO_ARM_SMMUV3_BYTES);
    const dv = new DataView(data.buffer);
    // flags (0) and __reserved stay zero.
    const idrs = [SMMU_REG.IDR0, SMMU_REG.IDR1, SMMU_REG.IDR2, SMMU_REG.IDR3, SMMU_REG.IDR4, SMMU_REG.IDR5];
    idrs.forEach((off, i) => dv.setUint32(8 + i * 4, Number(this.smmu.read(off) & (HW_INFO_IDR_MASKS[i] as bigint)), true));
    dv.setUint32(32, Number(this.smmu.read(SMMU_REG.IIDR)), true);
    dv.setUint32(36, Number(this.smmu.read(SMMU_REG.AIDR)), true);
    const capabilities = this.features.httu === 2 ? BigInt(HwCapabilities.DIRTY_TRACKING) : 0n;
    return { type: HwInfoType.ARM_SMMUV3, data, capabilities };
  }

  counters(): Record<string, number> {
    const s = this.smmu.stats();
    const c = s.counters;
    const out: Record<string, number> = {
      translations: c.translations,
      translation_faults: c.translationFaults,
      ats_requests: c.atsRequests,
      ats_translated_transactions: c.atsTranslatedTransactions,
      events: c.events,
      events_dropped: c.eventsDropped,
      commands: c.commands,
      command_errors: c.commandErrors,
      syncs: c.syncs,
      pri_requests: c.priRequests,
      pri_overflows: c.priOverflows,
      pri_auto_responses: c.priAutoResponses,
      stalls: c.stalls,
      iotlb_hits: s.iotlb.hits,
      iotlb_misses: s.iotlb.misses,
      iotlb_evictions: s.iotlb.evictions,
      iotlb_invalidated: s.iotlb.invalidated,
      iotlb_size: s.iotlb.size,
      ste_cache_hits: s.steCache.hits,
      ste_cache_misses: s.steCache.misses,
      cd_cache_hits: s.cdCache.hits,
      cd_cache_misses: s.cdCache.misses,
      vevents: this.stats.vevents,
      host_events: this.stats.hostEvents,
      eventq_overflows: this.stats.eventqOverflows,
      pri_forwarded: this.stats.priForwarded,
      pri_refused: this.stats.priRefused,
      pri_stop_markers: this.stats.priStopMarkers,
      atc_invalidations: this.stats.atcInvalidations,
      atc_timeouts: this.stats.atcTimeouts,
      cmdq_errors: this.stats.cmdqErrors,
      stalls_terminated: this.stats.stallsTerminated,
    };
    for (const [k, v] of Object.entries(c.eventsByType)) out[`event_${k}`] = v;
    for (const [k, v] of Object.entries(c.commandsByOpcode)) out[`command_${k}`] = v;
    return out;
  }

  // =========================================================================
  // Events (arm_smmu_evtq_thread, arm_smmu_handle_event)

  hostEvent(dev: PciDevice | undefined, text: string, fields: Record<string, unknown>): void {
    this.stats.hostEvents++;
    if (this.eventRoute === undefined) this.eventRoute = "host";
    this.env.hostEvent(dev, text, { iommu: this.id, ...fields });
  }

  private handleEvents(): void {
    const { raw, overflow } = this.drv.drainEvents();
    for (const w of raw) this.handleEvent(w);
    if (overflow) {
      this.stats.eventqOverflows++;
      this.hostEvent(undefined, "EVTQ overflow detected -- events lost", {});
    }
  }

  private handleEvent(w: readonly bigint[]): void {
    const ev = decodeEvent(w);
    this.eventRoute = undefined;
    if (ev.type === "UNKNOWN") {
      this.hostEvent(undefined, `event 0x${ev.EventID.toString(16).padStart(2, "0")} received`, { raw: w.map((x) => hex(x)) });
      return;
    }
    const m = this.masters.get(ev.StreamID);
    if (ev.Stall) {
      // No PCI function stalls: nobody cared, terminate the transaction (arm_smmu_page_response: ABORT).
      this.stats.stallsTerminated++;
      void this.enqueue([cmd.resume(ev.StreamID, ev.STAG ?? 0, RESUME_ACTION.ABORT)]);
      this.hostEvent(m?.dev, `stalled ${ev.type} terminated`, eventFields(ev));
      return;
    }
    if (m?.vmaster && isGuestEvent(ev)) {
      // arm_vmaster_report_event: the raw record with the StreamID replaced by the vSID.
      const vsid = m.vmaster.vsid & 0xffff_ffffn;
      const payload = [((w[0] as bigint) & ~SID_MASK) | (vsid << 32n), w[1] as bigint, w[2] as bigint, w[3] as bigint];
      this.stats.vevents++;
      this.eventRoute = "veventq";
      m.vmaster.viommu.hooks.vevent(VeventqType.ARM_SMMUV3, m.dev, payload);
      return;
    }
    this.hostEvent(m?.dev, `event 0x${EVT_ID[ev.type].toString(16).padStart(2, "0")} ${ev.type} received`, eventFields(ev));
  }

  // =========================================================================
  // PRI (arm_smmu_priq_thread; iommu_report_device_fault's routing)

  private handlePri(): void {
    const { requests, overflow } = this.drv.drainPri();
    for (const r of requests) this.handlePpr(r);
    if (overflow) {
      this.stats.priqOverflows++;
      this.hostEvent(undefined, "PRIQ overflow detected -- requests lost", {});
    }
  }

  private handlePpr(r: PriEntry): void {
    const m = this.masters.get(r.StreamID);
    const pasid = r.SSV ? r.SubstreamID : undefined;
    if (isPriStopMarker(r)) {
      this.stats.priStopMarkers++;
      return;
    }
    const sink = m ? this.faultSinkFor(m, pasid) : undefined;
    if (m && sink) {
      let perm = 0;
      if (r.Read) perm |= PgfaultPerm.READ;
      if (r.Write) perm |= PgfaultPerm.WRITE;
      if (r.Exec) perm |= PgfaultPerm.EXEC;
      if (r.Priv) perm |= PgfaultPerm.PRIV;
      this.stats.priForwarded++;
      sink.pageRequest({ dev: m.dev, ...(pasid !== undefined ? { pasid } : {}), grpid: r.PRGIndex, addr: r.Addr, perm, last: r.Last });
      return;
    }
    // No fault handler for the group: abort it (iopf_group_response(IOMMU_PAGE_RESP_FAILURE)).
    this.hostEvent(m?.dev, "unexpected PRI request received", {
      sid: r.StreamID,
      ...(pasid !== undefined ? { ssid: pasid } : {}),
      grpid: r.PRGIndex,
      last: r.Last,
      addr: hex(r.Addr),
    });
    if (r.Last) {
      this.stats.priRefused++;
      void this.enqueue([cmd.priResp(r.StreamID, r.PRGIndex, PRI_RESP.FAIL, pasid)]);
    }
  }

  /** The domain a page request of (master, pasid) belongs to; PASIDs of a nested RID go to it (user PASID table). */
  private faultSinkFor(m: Master, pasid: number | undefined): IopfSink | undefined {
    if (pasid === undefined) return m.rid?.faultSink;
    const d = m.pasids.get(pasid);
    if (d) return d.faultSink;
    return m.rid instanceof SmmuNestedDomain ? m.rid.faultSink : undefined;
  }

  pageResponse(dev: PciDevice, pasid: number | undefined, grpid: number, code: "success" | "invalid"): void {
    const m = this.masters.get(dev.rid);
    if (!m || m.dev !== dev) return;
    void this.enqueue([cmd.priResp(m.sid, grpid, code === "success" ? PRI_RESP.SUCCESS : PRI_RESP.DENY, pasid)]);
  }

  private onPriResponse(resp: PriResponseMessage): void {
    const code = resp.pcieCode === 0 ? "success" : resp.pcieCode === 1 ? "invalid" : "failure";
    this.env.pageGroupResponse(resp.StreamID, resp.SSV ? resp.SubstreamID : undefined, resp.PRGIndex, code);
  }

  pageRequest(dev: PciDevice, req: { pasid?: number; addr: bigint; read: boolean; write: boolean; exec: boolean; priv: boolean; grpid: number; last: boolean }): void {
    this.smmu.pageRequest({
      StreamID: dev.rid,
      SSV: req.pasid !== undefined,
      SubstreamID: req.pasid ?? 0,
      Priv: req.priv,
      Exec: req.exec,
      Read: req.read,
      Write: req.write,
      Last: req.last,
      PRGIndex: req.grpid,
      Addr: req.addr & ~0xfffn,
    });
  }

  // =========================================================================
  // The data plane

  translate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): DmaTranslation {
    const m = this.masters.get(dev.rid);
    if (!m || m.dev !== dev) return { ok: false, reason: "abort", detail: `${dev.name} is not behind ${this.id}`, recoverable: false };
    // PCIe: only PASID-tagged requests carry a privileged bit.
    const privileged = pasid !== undefined && access.privileged;
    this.eventRoute = undefined;
    const r = this.smmu.translate(dev.rid, pasid, iova, { kind: access.kind, privileged });
    if (r.ok) {
      const page = 1n << BigInt(r.pageShift);
      return { ok: true, pa: r.pa, size: page - (r.pa & (page - 1n)), write: (r.perms & permBitFor({ kind: "write", privileged })) !== 0 };
    }
    const f = r.fault;
    const abort = isConfigFault(f) || f.kind === "aborted";
    const recoverable =
      !abort && dev.pri && (f.kind === "translation" || f.kind === "permission" || f.kind === "access-flag") && this.faultSinkFor(m, pasid) !== undefined;
    // The event was drained synchronously (event queue interrupt): eventRoute says where it went.
    const route = r.recorded ? (this.eventRoute ?? "none") : "none";
    return { ok: false, reason: abort ? "abort" : "fault", detail: describeFault(f, r.event), recoverable, fault: smmuFaultInfo(f, r.event, iova, route) };
  }

  translatedAllowed(dev: PciDevice): boolean {
    const m = this.masters.get(dev.rid);
    return m?.dev === dev && m.atsEnabled;
  }

  atsTranslate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): AtsResult {
    const none = { translated: 0n, size: 0n, read: false, write: false, exec: false, priv: false, global: false };
    const m = this.masters.get(dev.rid);
    if (!m || m.dev !== dev) return { status: "ur", ...none };
    const r = this.smmu.atsTranslate(dev.rid, pasid, iova, {
      write: access.kind === "write",
      exec: access.kind === "exec",
      priv: access.privileged,
    });
    if (r.status === "UR") {
      const ev = r.event;
      return { status: "ur", ...none, ...(ev ? { fault: smmuFaultInfo({ ok: false, config: "F_BAD_ATS_TREQ" }, ev, iova, "host") } : {}) };
    }
    if (r.status === "CA") return { status: "ca", ...none, fault: smmuFaultInfo(r.fault, undefined, iova, "none") };
    return {
      status: "success",
      translated: r.translatedAddress,
      size: 1n << BigInt(r.sizeShift),
      read: r.R,
      write: r.W,
      exec: r.Exe,
      priv: r.Priv,
      global: r.Global,
      ...(r.denied ? { fault: smmuFaultInfo(r.denied, undefined, iova, "none") } : {}),
    };
  }

  explain(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): { steps: string[]; result: string } {
    const vendor = WALK_VENDORS.get("smmuv3");
    if (!vendor) return { steps: [], result: "no SMMUv3 walk tool" };
    const config: WalkConfig = {
      vendor: "smmuv3",
      kind: "smmu",
      strtabBase: this.layout.strtab.base,
      log2size: this.layout.strtab.log2size,
      format: "2-level",
      split: STRTAB_SPLIT,
      features: { ...this.features },
    };
    // A scratch overlay: hardware A/D updates of the walk land there, not in host memory.
    const [res] = vendor.run(
      new OverlayMemory(this.mem),
      config,
      [{ streamId: dev.rid, ...(pasid !== undefined ? { substreamId: pasid } : {}), iova, access: access.kind, privileged: pasid !== undefined && access.privileged }],
      true,
    );
    if (!res) return { steps: [], result: "no result" };
    const steps: string[] = [];
    for (const c of res.config ?? []) steps.push(`${c.what} @${c.addr}${c.pa && c.pa !== c.addr ? ` (PA ${c.pa})` : ""}${c.value ? ` = ${c.value}` : ""}`);
    for (const s of res.steps ?? []) {
      steps.push(
        `S${s.stage} L${s.level}${s.purpose ? ` [${s.purpose}]` : ""} @${s.descAddr}${s.descIpa ? ` (IPA ${s.descIpa})` : ""} = ${s.value} ${s.type}${s.updated ? ` → ${s.updated}` : ""}`,
      );
    }
    if (res.ok) return { steps, result: `PA ${res.pa}${res.ipa ? ` (IPA ${res.ipa})` : ""}, ${res.size} bytes, ${res.perms}` };
    const ev = res.event ? ` → ${String(res.event.type)}` : "";
    return { steps, result: `fault ${JSON.stringify(res.fault)}${ev}` };
  }
}

/** An invalidate() failure: the errno and, as `handled`, the entries done before it (ops.ts PartialFailure). */
function fail(errno: ErrnoName, why: string, handled: number): never {
  throw Object.assign(new ErrnoError(errno, why), { handled });
}

function isRawCmd(c: Command | RawCmd): c is RawCmd {
  return Array.isArray(c);
}

/** Index of the most significant set bit plus one (Linux fls_long); 0 for 0. */
function fls(x: bigint): number {
  let n = 0;
  while (x > 0n) {
    x >>= 1n;
    n++;
  }
  return n;
}

function eventFields(ev: EventRecord): Record<string, unknown> {
  const out: Record<string, unknown> = {};
  for (const [k, v] of Object.entries(ev)) out[k] = typeof v === "bigint" ? hex(v) : v;
  return out;
}

function describeFault(f: SmmuFault, ev: EventRecord | undefined): string {
  const what = isConfigFault(f)
    ? `${f.config}${f.reason ? ` (${f.reason})` : ""}`
    : f.kind === "aborted"
      ? "aborted (STE abort / blocked)"
      : `stage-${f.stage} ${f.kind} fault at level ${f.level}${f.ipa !== undefined ? `, IPA ${hex(f.ipa)}` : ""}`;
  return ev ? `${what}; event ${ev.type}` : what;
}

const CONFIG_FAULT_KIND: Readonly<Record<string, FaultInfo["kind"]>> = {
  C_BAD_STREAMID: "bad-stream-id",
  F_STE_FETCH: "config-fetch",
  C_BAD_STE: "bad-ste",
  F_STREAM_DISABLED: "stream-disabled",
  C_BAD_SUBSTREAMID: "bad-substream-id",
  F_CD_FETCH: "config-fetch",
  C_BAD_CD: "bad-cd",
  F_TRANSL_FORBIDDEN: "translation-forbidden",
  F_BAD_ATS_TREQ: "translation-forbidden",
  F_CFG_CONFLICT: "bad-ste",
  F_UUT: "aborted",
};

/** A model fault as the data plane reports it (FaultInfo): the generic kind plus the exact SMMUv3 event. */
export function smmuFaultInfo(f: SmmuFault, ev: EventRecord | undefined, iova: bigint, route: FaultInfo["route"]): FaultInfo {
  const vendorName = ev?.type ?? (isConfigFault(f) ? f.config : f.kind === "aborted" ? "ABORT" : "");
  const vendorCode = ev ? EVT_ID[ev.type] : isConfigFault(f) ? (EVT_ID[f.config as keyof typeof EVT_ID] ?? 0) : 0;
  if (isConfigFault(f)) {
    return {
      kind: CONFIG_FAULT_KIND[f.config] ?? "aborted",
      stage: 1,
      level: 0,
      inputAddress: iova,
      ...(f.FetchAddr !== undefined ? { descriptorAddress: f.FetchAddr } : {}),
      vendorCode,
      vendorName,
      route,
    };
  }
  const kind: FaultInfo["kind"] =
    f.kind === "address-size" || f.kind === "access-flag" || f.kind === "permission" || f.kind === "aborted"
      ? f.kind
      : f.kind === "external-abort"
        ? "walk-eabt"
        : "translation";
  return {
    kind,
    stage: f.stage === 2 ? 2 : 1,
    level: f.level,
    inputAddress: iova,
    ...(f.ipa !== undefined ? { ipa: f.ipa } : {}),
    ...(f.descAddr !== undefined ? { descriptorAddress: f.descAddr } : {}),
    faultClass: f.cls,
    vendorCode,
    vendorName: vendorName || f.kind,
    route,
  };
}

/**
 * arm_smmu_validate_vste: V = 0 gives an (all-zero) abort vSTE; bits outside
 * the nesting-allowed fields, a Config other than abort/bypass/S1 translate,
 * or EATS other than 0/1 → EIO. EATS is stripped (the host decides ATS).
 * Returns whether the guest asked for ATS. Mutates `vste`.
 */
export function validateVste(vste: [bigint, bigint]): boolean {
  if ((vste[0] & 1n) === 0n) {
    vste[0] = 0n;
    vste[1] = 0n;
    return false;
  }
  if ((vste[0] & ~VSTE0_ALLOWED) !== 0n || (vste[1] & ~VSTE1_ALLOWED) !== 0n) {
    throw new ErrnoError("EIO", "vSTE sets bits outside the nesting-allowed fields");
  }
  const cfg = getNum([vste[0]], STE.Config);
  if (cfg !== STE_CONFIG.ABORT && cfg !== STE_CONFIG.BYPASS && cfg !== STE_CONFIG.S1_TRANS) {
    throw new ErrnoError("EIO", `vSTE Config 0b${cfg.toString(2).padStart(3, "0")} is not abort, bypass or stage-1 translate`);
  }
  const eats = getNum([0n, vste[1]], STE.EATS);
  vste[1] &= ~fieldMask(STE.EATS);
  if (eats !== STE_EATS.ABT && eats !== STE_EATS.TRANS) throw new ErrnoError("EIO", `vSTE EATS ${eats} is not 0 or 1`);
  return cfg === STE_CONFIG.S1_TRANS && eats === STE_EATS.TRANS;
}

// ---------------------------------------------------------------------------
// CD table of one device (Linux struct arm_smmu_ctx_desc_cfg)

class CdTable {
  readonly s1fmt: number;
  readonly s1cdmax: number;
  readonly base: bigint;
  private readonly baseBytes: number;
  private readonly l2 = new Map<number, bigint>();
  private readonly newL2 = new Set<number>();
  /** Valid CDs other than SSID 0 (Linux used_ssids). */
  used = 0;

  constructor(
    private readonly drv: SmmuV3Driver,
    ssidBits: number,
  ) {
    this.s1cdmax = ssidBits;
    const contexts = 2 ** ssidBits;
    if (!drv.features.twoLevelCdTable || contexts <= CTXDESC_L2_ENTRIES) {
      this.s1fmt = S1FMT_LINEAR;
      this.baseBytes = contexts * 64;
    } else {
      this.s1fmt = S1FMT_64K_L2;
      this.baseBytes = Math.ceil(contexts / CTXDESC_L2_ENTRIES) * 8;
    }
    this.base = drv.allocContig(this.baseBytes);
  }

  /** Address of the CD for `ssid`; with `create`, a missing level-2 table is allocated and hooked in. */
  cdAddr(ssid: number, create: boolean): bigint | undefined {
    if (this.s1fmt === S1FMT_LINEAR) return this.base + BigInt(ssid * 64);
    const idx = Math.floor(ssid / CTXDESC_L2_ENTRIES);
    let l2 = this.l2.get(idx);
    if (l2 === undefined) {
      if (!create) return undefined;
      l2 = this.drv.allocContig(CTXDESC_L2_ENTRIES * 64);
      this.l2.set(idx, l2);
      this.drv.memory.write64(this.base + BigInt(idx * 8), encodeL1Cd(l2));
      this.newL2.add(idx);
    }
    return l2 + BigInt((ssid % CTXDESC_L2_ENTRIES) * 64);
  }

  /** Whether the level-2 table holding `ssid` was hooked in since the last CFGI_CD (then forgets it). */
  takeNewL2(ssid: number): boolean {
    return this.newL2.delete(Math.floor(ssid / CTXDESC_L2_ENTRIES));
  }

  free(): void {
    for (const l2 of this.l2.values()) this.drv.freeContig(l2, CTXDESC_L2_ENTRIES * 64);
    this.l2.clear();
    this.drv.freeContig(this.base, this.baseBytes);
  }
}

// ---------------------------------------------------------------------------
// io-pgtable: one stage's tables in host memory

class IoPgtable {
  readonly stage: StageConfig;
  readonly root: bigint;
  readonly rootBytes: number;
  /** STE.S2SL0 (stage 2). */
  readonly sl0: number;

  constructor(
    private readonly drv: SmmuV3Driver,
    readonly stageNo: 1 | 2,
    dirty: boolean,
  ) {
    const ias = drv.ias;
    if (stageNo === 1) {
      const probe = armStage1Config({ granuleShift: 12, tsz: 64 - ias, outputBits: drv.oas, ttb: 0n });
      if (!probe.ok) throw new ErrnoError("EINVAL", probe.error);
      this.rootBytes = startTableBytes(probe.stage.format, ias, probe.stage.startLevel);
      this.root = drv.allocContig(this.rootBytes);
      const r = armStage1Config({ granuleShift: 12, tsz: 64 - ias, outputBits: drv.oas, ttb: this.root, ha: dirty, hd: dirty });
      if (!r.ok) throw new ErrnoError("EINVAL", r.error);
      this.stage = r.stage;
      this.sl0 = 0;
    } else {
      const geo = armS2Geometry(12, ias);
      if (!geo) throw new ErrnoError("EINVAL", `no stage-2 geometry for a ${ias}-bit IPA`);
      const probe = armStage2Config({ granuleShift: 12, s2t0sz: 64 - ias, sl0: geo.sl0, outputBits: drv.oas, s2ttb: 0n, ias });
      if (!probe.ok) throw new ErrnoError("EINVAL", probe.error);
      this.rootBytes = startTableBytes(probe.stage.format, ias, geo.startLevel);
      this.root = drv.allocContig(this.rootBytes);
      const r = armStage2Config({ granuleShift: 12, s2t0sz: 64 - ias, sl0: geo.sl0, outputBits: drv.oas, s2ttb: this.root, ias, ha: dirty, hd: dirty });
      if (!r.ok) throw new ErrnoError("EINVAL", r.error);
      this.stage = r.stage;
      this.sl0 = geo.sl0;
    }
  }

  map(iova: bigint, pa: bigint, size: bigint, prot: MapProt): { ok: true } | { ok: false; mapped: bigint; errno: ErrnoName; why: string } {
    const r = mapRange(this.drv.memory, this.stage, iova, pa, size, prot, { alloc: this.drv.tableAlloc });
    if (r.ok) return { ok: true };
    const errno: ErrnoName = r.error === "exists" ? "EEXIST" : r.error === "no-memory" ? "ENOMEM" : r.error === "out-of-range" ? "ERANGE" : r.error === "misaligned" ? "EINVAL" : "EFAULT";
    return { ok: false, mapped: r.mapped, errno, why: `${r.error} at ${hex(r.at)}` };
  }

  unmap(iova: bigint, size: bigint): bigint {
    const r = unmapRange(this.drv.memory, this.stage, iova, size, { alloc: this.drv.tableAlloc });
    if (!r.ok) throw new ErrnoError(r.error === "no-memory" ? "ENOMEM" : "EINVAL", `unmap: ${r.error} at ${hex(r.at)}`);
    return r.unmapped;
  }

  destroy(): void {
    unmapRange(this.drv.memory, this.stage, 0n, 1n << BigInt(this.stage.inputBits), { alloc: this.drv.tableAlloc });
    this.drv.freeContig(this.root, this.rootBytes);
  }
}

// ---------------------------------------------------------------------------
// Paging domain (struct arm_smmu_domain)

class SmmuPagingDomainImpl implements SmmuV3PagingDomain {
  readonly kind = "paging" as const;
  readonly pgsizeMin = BigInt(PAGE_SIZE);
  readonly aperture: IovaRange;
  readonly pgtable: IoPgtable;
  readonly tag: number;
  /** Where the domain is attached (Linux smmu_domain->devices). */
  readonly devices = new Map<string, Attachment>();
  freed = false;
  private dirtyEnabled = false;
  private deferredError: unknown;

  constructor(
    readonly drv: SmmuV3Driver,
    readonly stage: 1 | 2,
    readonly flags: PagingFlags,
    readonly faultSink: IopfSink | undefined,
    private readonly ids: IdAllocator,
  ) {
    this.aperture = { start: 0n, last: (1n << BigInt(drv.ias)) - 1n };
    this.tag = ids.alloc();
    try {
      this.pgtable = new IoPgtable(drv, stage, flags.dirtyTracking);
    } catch (e) {
      ids.free(this.tag);
      throw e;
    }
  }

  get driver(): IommuDriver {
    return this.drv;
  }

  private mapProt(prot: Prot): MapProt | undefined {
    if (!prot.read && !prot.write) return undefined;
    let perms = PERM_X; // iommufd never asks for IOMMU_NOEXEC
    if (prot.read) perms |= PERM_R;
    if (prot.write) perms |= PERM_W;
    if (this.stage === 1 && !prot.read) perms |= PERM_R; // stage 1 cannot express write-only
    return {
      perms, // stage 1: EL0 and EL1 alike (AP[1] set, as io-pgtable without IOMMU_PRIV)
      ...(this.stage === 2 ? { memAttr: this.drv.features.fwb ? S2_MEMATTR_FWB_WB : ARM_S2_DEFAULT_MEMATTR } : {}),
      ...(this.flags.dirtyTracking ? { dirtyTracking: true } : {}),
    };
  }

  map(iova: bigint, length: bigint, pfnAt: (offset: bigint) => number, prot: Prot): void {
    check(!this.freed, "EINVAL", "the domain is freed");
    check(length > 0n && iova % this.pgsizeMin === 0n && length % this.pgsizeMin === 0n, "EINVAL", "map not page aligned");
    check(iova >= this.aperture.start && iova + length - 1n <= this.aperture.last, "ERANGE", "map outside the aperture");
    const mprot = this.mapProt(prot);
    if (!mprot) return;
    const page = this.pgsizeMin;
    let done = 0n;
    let next: number | undefined;
    while (done < length) {
      // One physically contiguous run: mapRange picks block leaves where aligned.
      const pfn = next ?? pfnAt(done);
      let run = page;
      next = undefined;
      while (done + run < length) {
        const p = pfnAt(done + run);
        if (p !== pfn + Number(run / page)) {
          next = p;
          break;
        }
        run += page;
      }
      const r = this.pgtable.map(iova + done, BigInt(pfn) * page, run, mprot);
      if (!r.ok) {
        // All or nothing: undo what this call mapped (never visible to DMA: nothing ran in between).
        const mapped = done + r.mapped;
        if (mapped > 0n) this.pgtable.unmap(iova, mapped);
        throw new ErrnoError(r.errno, `map [${hex(iova)}, +${hex(length)}): ${r.why}`);
      }
      done += run;
    }
  }

  unmap(iova: bigint, length: bigint): void {
    check(!this.freed, "EINVAL", "the domain is freed");
    const unmapped = this.pgtable.unmap(iova, length);
    // Not leaf-only: a whole table may have gone (arm_smmu_tlb_inv_range_domain).
    if (unmapped > 0n) void this.drv.invalidateDomainRange(this, iova, length, false);
  }

  /**
   * iommu_iotlb_sync: settles once every invalidation queued so far (this
   * domain's unmap / dirty clear included, ATC too) completed; rejects with
   * the first ATC failure (ETIMEDOUT) of this domain since the previous call.
   */
  async iotlbSync(): Promise<void> {
    await this.drv.flush();
    const e = this.deferredError;
    this.deferredError = undefined;
    if (e !== undefined) throw e;
  }

  /** An ATC invalidation this domain started did not complete (reported by the next iotlbSync). */
  atcFailed(err: unknown): void {
    this.deferredError ??= err instanceof ErrnoError ? err : new ErrnoError("ETIMEDOUT", `ATC invalidation failed: ${String(err)}`);
  }

  setDirtyTracking(enable: boolean): void {
    check(this.flags.dirtyTracking, "EOPNOTSUPP", "the domain was not allocated with DIRTY_TRACKING");
    if (enable && !this.dirtyEnabled) {
      // HA/HD stay set for the domain's life (Linux); enabling starts from a clean snapshot.
      const r = harvestDirty(this.drv.memory, this.pgtable.stage, 0n, 1n << BigInt(this.pgtable.stage.inputBits), () => undefined, { clear: true });
      if (!r.ok) throw new ErrnoError("EFAULT", `dirty clear: memory error at ${hex(r.at)}`);
      if (r.dirty > 0) void this.drv.invalidateDomainRange(this, 0n, undefined, true);
    }
    this.dirtyEnabled = enable;
  }

  readDirty(iova: bigint, length: bigint, noClear: boolean, dirty: (iova: bigint, length: bigint) => void): void {
    check(this.flags.dirtyTracking, "EOPNOTSUPP", "the domain was not allocated with DIRTY_TRACKING");
    const r = harvestDirty(this.drv.memory, this.pgtable.stage, iova, length, dirty, { clear: !noClear });
    if (!r.ok) throw new ErrnoError("EFAULT", `dirty read: memory error at ${hex(r.at)}`);
    // Cleaned leaves must be re-walked on the next write: cached writable translations (IOTLB, ATC) go.
    if (!noClear && r.dirty > 0) void this.drv.invalidateDomainRange(this, iova, length, true);
  }

  free(): void {
    if (this.freed) return;
    this.freed = true;
    this.pgtable.destroy();
    // free_io_pgtable_ops → tlb_flush_all; the ID is reused only once that completed.
    const inv = this.stage === 1 ? cmd.tlbi("TLBI_NH_ASID", { ASID: this.tag, VMID: 0 }) : cmd.tlbi("TLBI_S12_VMALL", { VMID: this.tag });
    void this.drv.enqueue([inv]).then(() => this.ids.free(this.tag));
  }
}

// ---------------------------------------------------------------------------
// Nested domain (struct arm_smmu_nested_domain)

class SmmuNestedDomain implements NestedDomain {
  readonly kind = "nested" as const;
  readonly parent: SmmuPagingDomainImpl;
  /** Devices attached (for bookkeeping; the parent's attachment list drives invalidation). */
  readonly masters = new Set<Master>();
  readonly vsteConfig: number;
  freed = false;

  constructor(
    readonly viommu: SmmuVsmmu,
    readonly vste: readonly [bigint, bigint],
    readonly enableAts: boolean,
    readonly faultSink: IopfSink | undefined,
  ) {
    this.parent = viommu.parent;
    this.vsteConfig = (vste[0] & 1n) === 0n ? STE_CONFIG.ABORT : getNum([vste[0]], STE.Config);
  }

  free(): void {
    this.freed = true;
  }
}

// ---------------------------------------------------------------------------
// vIOMMU (struct arm_vsmmu)

class SmmuVsmmu implements ViommuHw {
  readonly parent: SmmuPagingDomainImpl;
  /** The parent's VMID (arm_vsmmu_init). */
  readonly vmid: number;
  private readonly vsids = new Map<PciDevice, bigint>();
  private readonly devs = new Map<bigint, PciDevice>();
  freed = false;

  constructor(
    readonly drv: SmmuV3Driver,
    parent: SmmuPagingDomainImpl,
    readonly hooks: ViommuHooks,
  ) {
    this.parent = parent;
    this.vmid = parent.tag;
  }

  vsidOf(dev: PciDevice): bigint | undefined {
    return this.vsids.get(dev);
  }

  devOf(vsid: bigint): PciDevice | undefined {
    return this.devs.get(vsid);
  }

  vdeviceAdd(dev: PciDevice, virtId: bigint): void {
    const old = this.vsids.get(dev);
    if (old !== undefined) this.devs.delete(old);
    this.vsids.set(dev, virtId);
    this.devs.set(virtId, dev);
  }

  vdeviceRemove(dev: PciDevice): void {
    this.forget(dev);
    this.drv.clearVmaster(dev, this);
  }

  forget(dev: PciDevice): void {
    const v = this.vsids.get(dev);
    if (v === undefined) return;
    this.vsids.delete(dev);
    this.devs.delete(v);
  }

  /**
   * arm_vsmmu_cache_invalidate: the whole array is copied first
   * (iommu_copy_struct_from_full_user_array: wrong type or no entries → EINVAL;
   * a short entry is zero-extended, a long one needs a zero tail → E2BIG), then
   * each command is checked and rewritten (arm_vsmmu_convert_user_cmd: VMID
   * forced, vSID → SID; anything else → EIO) and the batch is issued with a
   * trailing CMD_SYNC. On a failing entry the commands before it are issued
   * first, so `handled` entries really took effect (the kernel counts them
   * but drops the unissued part of the batch).
   */
  async invalidate(dataType: number, entries: Uint8Array[]): Promise<number> {
    if (this.freed) fail("ENOENT", "the vIOMMU is gone", 0);
    if (dataType !== HwptInvalidateDataType.ARM_SMMUV3) fail("EINVAL", `data_type ${dataType} is not IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3`, 0);
    if (entries.length === 0) fail("EINVAL", "no entries", 0);
    const cmds: RawCmd[] = [];
    for (const e of entries) {
      const b = new Uint8Array(VCMD_BYTES);
      b.set(e.subarray(0, VCMD_BYTES));
      if (e.length > VCMD_BYTES && e.subarray(VCMD_BYTES).some((x) => x !== 0)) fail("E2BIG", "entry longer than 16 bytes with a non-zero tail", 0);
      const dv = new DataView(b.buffer);
      cmds.push([dv.getBigUint64(0, true), dv.getBigUint64(8, true)]);
    }
    const ctx = { vmid: this.vmid, vsidToSid: (vsid: number) => this.drv.vsidToSid(this, vsid) };
    const batch: RawCmd[] = [];
    let failedAt: { index: number; err: unknown } | undefined;
    const onAtcFail = (i: number, err: unknown) => {
      if (!failedAt || i < failedAt.index) failedAt = { index: i, err };
    };
    for (let i = 0; i < cmds.length; i++) {
      const r = rewriteViommuCommand(cmds[i] as RawCmd, ctx);
      if (!r.ok) {
        if (batch.length > 0) await this.drv.enqueue(batch, onAtcFail);
        if (failedAt) fail("ETIMEDOUT", "ATC invalidation timed out", failedAt.index);
        const op = getNum([(cmds[i] as RawCmd)[0]], CMD_COMMON.OP);
        fail("EIO", `entry ${i}: command 0x${op.toString(16)} is not accepted (or its vSID has no vDEVICE)`, i);
      }
      batch.push(r.words);
    }
    await this.drv.enqueue(batch, onAtcFail);
    if (failedAt) fail("ETIMEDOUT", `entry ${failedAt.index}: ATC invalidation did not complete`, failedAt.index);
    return cmds.length;
  }

  free(): void {
    this.freed = true;
    this.vsids.clear();
    this.devs.clear();
    this.drv.dropViommu(this);
  }
}

// ---------------------------------------------------------------------------
// A copy-on-write view of physical memory for explain(): the walk's hardware
// access/dirty updates land in the overlay, never in host memory.

class OverlayMemory extends ByteMemory {
  readonly paBits: number;
  private readonly pages = new Map<bigint, Uint8Array>();

  constructor(private readonly backing: PhysicalMemory) {
    super();
    this.paBits = backing.paBits;
  }

  read(addr: bigint, length: number): MemResult<Uint8Array> {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const a = addr + BigInt(done);
      const pfn = a >> 12n;
      const off = Number(a & 0xfffn);
      const n = Math.min(length - done, PAGE_SIZE - off);
      const p = this.pages.get(pfn);
      if (p) out.set(p.subarray(off, off + n), done);
      else {
        const r = this.backing.read(a, n);
        if (!r.ok) return r;
        out.set(r.value, done);
      }
      done += n;
    }
    return { ok: true, value: out };
  }

  write(addr: bigint, data: Uint8Array): MemResult<void> {
    let done = 0;
    while (done < data.length) {
      const a = addr + BigInt(done);
      const pfn = a >> 12n;
      const off = Number(a & 0xfffn);
      const n = Math.min(data.length - done, PAGE_SIZE - off);
      let p = this.pages.get(pfn);
      if (!p) {
        const r = this.backing.read(pfn << 12n, PAGE_SIZE);
        if (!r.ok) return r;
        p = new Uint8Array(r.value);
        this.pages.set(pfn, p);
      }
      p.set(data.subarray(done, done + n), off);
      done += n;
    }
    return { ok: true, value: undefined };
  }
}
