// What the guest kernel's IOMMU core (kernel.ts: DMA API, SVA, IOPF) asks
// of a vendor driver (smmuv3.ts, vtd.ts) — the guest's iommu_ops. A driver
// programs its virtual IOMMU only through the port (registers, guest RAM,
// interrupts) and reports what it reads from the hardware through the
// callbacks.
import type { GuestLogInit } from "./log.js";
import type { IoPgtable, PgtableFormat } from "./pgtable.js";
import type { GuestPciFunction, IommuVendor, IrqLine } from "./port.js";

/** An invalidation command / descriptor as the driver wrote it to its queue. */
export interface IssuedInvalidation {
  /** "CMD_TLBI_NH_VA", "CMD_ATC_INV", "PASID-IOTLB", "DEVICE-TLB"... */
  kind: string;
  words: bigint[];
  text: string;
}

/** A translation domain: page tables and the tag the IOTLB keys them by. */
export interface Domain {
  readonly id: number;
  /** SMMUv3 ASID / VT-d DID. */
  readonly tag: number;
  readonly pgtable: IoPgtable;
  readonly kind: "dma" | "sva";
}

/** A device as the guest driver manages it. */
export interface GuestDevice {
  readonly fn: GuestPciFunction;
  atsEnabled: boolean;
  priEnabled: boolean;
  /** PASID bits the driver set up for it (CD table / PASID directory size); 0 = none. */
  pasidBits: number;
}

/** A domain user: the RID (pasid undefined) or a PASID of a device. */
export interface DomainUser {
  readonly dev: GuestDevice;
  readonly pasid?: number;
}

/** One page request the IOMMU reported (SMMUv3 PRI queue entry / VT-d page request descriptor). */
export interface PageRequestRecord {
  virtId: number;
  pasid?: number;
  addr: bigint;
  read: boolean;
  write: boolean;
  exec: boolean;
  priv: boolean;
  prgi: number;
  last: boolean;
}

export interface DriverCallbacks {
  log(e: GuestLogInit): void;
  /** A whole page request group (the last record has last = true); the core answers with pageResponse. */
  pageRequests(group: PageRequestRecord[]): void;
}

export interface GuestIommuDriver {
  readonly vendor: IommuVendor;
  readonly pgtableFormat: PgtableFormat;
  /** Stage-1 output (IPA / GPA) size in bits. */
  readonly outputBits: number;
  /** Reset and program the IOMMU (tables, queues, enables). */
  probe(): Promise<void>;
  /** Set a device up (ATS / PRI / PASID) and point its RID at `target`. */
  attachDevice(dev: GuestDevice, target: Domain | "identity" | "blocked"): Promise<IssuedInvalidation[]>;
  /** SVA: point PASID `pasid` of `dev` at `domain`'s tables. */
  setPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]>;
  /** Tear a PASID down (its caches and the device's ATC for it are invalidated). */
  clearPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]>;
  /**
   * After unmapping [iova, iova+size) from `domain`: write the table changes
   * to guest RAM, then invalidate the IOTLB and every user's ATC, and wait
   * for completion (CMD_SYNC / wait descriptor). `leaf` = only leaf entries
   * changed (no table freed).
   */
  invalidateRange(domain: Domain, users: readonly DomainUser[], iova: bigint, size: bigint, leaf: boolean): Promise<IssuedInvalidation[]>;
  /** Write pending table changes to guest RAM (new mappings need no invalidation). */
  syncTables(): Promise<void>;
  /** Answer a page request group. */
  pageResponse(dev: GuestDevice, pasid: number | undefined, prgi: number, ok: boolean): Promise<void>;
  /** A PASID for SVA (VT-d: the virtual command interface; SMMUv3: the guest's own allocator). */
  allocPasid(dev: GuestDevice): Promise<number>;
  freePasid(pasid: number): Promise<void>;
  allocTag(): number;
  freeTag(tag: number): void;
  /** Interrupt from the IOMMU. */
  handleIrq(line: IrqLine): Promise<void>;
}
