// The contract between the iommufd core (uapi/*) and a vendor host driver
// (smmuv3.ts, vtd.ts), in the spirit of the kernel's iommu_ops and
// iommu_domain_ops. A driver owns one physical IOMMU model from packages/hw
// and programs it only as a kernel driver programs hardware: tables and
// queues in host memory, registers for bases and pointers. The core never
// touches the model. Errors are ErrnoErrors with the kernel driver's errnos.
import type { AccessRequest } from "@iommufd/hw";
import type { IoptDomain, IovaRange } from "../iopt/io-pagetable.js";
import type { HostMemory } from "../mm/phys.js";

/** A PCI function behind one physical IOMMU instance (the host's device table). */
export interface PciDevice {
  /** PCI requester ID: bus << 8 | devfn (the SMMUv3 StreamID / VT-d source-id). */
  readonly rid: number;
  readonly name: string;
  readonly iommu: IommuDriver;
  /** log2 of the PASIDs the function supports (0 = no PASID capability). */
  readonly maxPasidLog2: number;
  readonly pasidExec: boolean;
  readonly pasidPriv: boolean;
  readonly ats: boolean;
  readonly pri: boolean;
  /** "test": an Admin test device (no process behind it); "bus": registered by a device-sim over NATS. */
  readonly origin: "test" | "bus";
  /** Reserved IOVA regions of the device (MSI window...), enforced on RID attach. */
  readonly reservedRegions: IovaRange[];
}

/** Flags a paging domain is allocated with (IOMMU_HWPT_ALLOC_*). */
export interface PagingFlags {
  nestParent: boolean;
  dirtyTracking: boolean;
  pasid: boolean;
}

/** A stage-2-capable page table fed from an IOAS (iommu_domain of type PAGING). */
export interface PagingDomain extends IoptDomain {
  readonly kind: "paging";
  readonly flags: PagingFlags;
  readonly driver: IommuDriver;
  /** IOMMU_HWPT_SET_DIRTY_TRACKING: enabling clears existing dirty state. */
  setDirtyTracking(enable: boolean): void;
  /**
   * IOMMU_HWPT_GET_DIRTY_BITMAP: call `dirty(iova, length)` for every dirty
   * leaf overlapping [iova, iova+length) (a whole leaf, so huge leaves report
   * every page they cover); clears the dirty state unless `noClear`.
   */
  readDirty(iova: bigint, length: bigint, noClear: boolean, dirty: (iova: bigint, length: bigint) => void): void;
  /** Release the page tables (the domain is no longer attached anywhere). */
  free(): void;
  /**
   * Wait for the device-TLB (ATC) invalidations that map/unmap/readDirty
   * started; rethrows their failure (ETIMEDOUT). The core awaits it before
   * IOAS_UNMAP and GET_DIRTY_BITMAP return, as Linux's unmap is synchronous.
   */
  iotlbSync?(): Promise<void>;
}

/** Where a domain's recoverable faults (PRI / stall) go: the core's FAULT object. */
export interface IopfSink {
  /** One page request of a group; `last` ends the group. */
  pageRequest(req: { dev: PciDevice; pasid?: number; grpid: number; addr: bigint; perm: number; last: boolean }): void;
}

/** A user-managed stage-1 domain nested on a paging parent (iommu_domain of type NESTED). */
export interface NestedDomain {
  readonly kind: "nested";
  readonly parent: PagingDomain;
  readonly viommu?: ViommuHw;
  /**
   * IOMMU_HWPT_INVALIDATE on the nested HWPT: process `entries` (each the raw
   * bytes of one entry, entry_len long) in order; stop at the first failure.
   * Returns how many were handled; a failure throws ErrnoError with
   * `handled` set to the entries done before it.
   */
  invalidate?(dataType: number, entries: Uint8Array[]): Promise<number>;
  free(): void;
}

/** Vendor-side state of a vIOMMU object. */
export interface ViommuHw {
  readonly parent: PagingDomain;
  /**
   * IOMMU_HWPT_INVALIDATE on the vIOMMU (SMMUv3 commands), with the same
   * contract as NestedDomain.invalidate. The core hands over the whole user
   * array (the kernel copies it before processing any entry).
   */
  invalidate(dataType: number, entries: Uint8Array[]): Promise<number>;
  /** A vDEVICE now maps virt_id → dev (SMMUv3: vSID → pSID). */
  vdeviceAdd(dev: PciDevice, virtId: bigint): void;
  vdeviceRemove(dev: PciDevice): void;
  free(): void;
}

/**
 * invalidate() failures: an ErrnoError (the failing entry's errno) carrying
 * `handled`, the number of entries handled before it (Object.assign(err, { handled })).
 */
export interface PartialFailure {
  handled: number;
}

/** Hooks the core gives a vIOMMU: where its events go. */
export interface ViommuHooks {
  /** A vEVENT for `dev` (already carrying its virtual ID in the payload), of veventq `type`. */
  vevent(type: number, dev: PciDevice, payload: bigint[]): void;
}

/** What IOMMU_GET_HW_INFO reports for a device. */
export interface HwInfo {
  /** iommu_hw_info_type of the blob. */
  type: number;
  /** The blob in the kernel's C layout (iommu_hw_info_arm_smmuv3 / iommu_hw_info_vtd). */
  data: Uint8Array;
  /** iommufd_hw_capabilities bits. */
  capabilities: bigint;
}

/** A translation fault as the data plane reports it to the device (bus.v1.TranslationFault). */
export interface FaultInfo {
  kind:
    | "translation"
    | "address-size"
    | "access-flag"
    | "permission"
    | "walk-eabt"
    | "bad-stream-id"
    | "bad-ste"
    | "stream-disabled"
    | "bad-substream-id"
    | "bad-cd"
    | "config-fetch"
    | "translation-forbidden"
    | "aborted";
  stage: 1 | 2;
  level: number;
  inputAddress: bigint;
  ipa?: bigint;
  descriptorAddress?: bigint;
  faultClass?: "CD" | "TT" | "IN";
  /** SMMUv3 event id / VT-d fault reason, and its spec name. */
  vendorCode: number;
  vendorName: string;
  /** Where the IOMMU driver sent the record. */
  route: "none" | "host" | "veventq" | "iopf";
}

/** Outcome of one DMA access translated by the physical IOMMU. */
export type DmaTranslation =
  | { ok: true; pa: bigint; /** bytes valid from pa within this translation */ size: bigint; write: boolean }
  | {
      ok: false;
      /** "fault": translation/permission fault (reported by the IOMMU); "abort": blocked/bad config */
      reason: "fault" | "abort";
      detail: string;
      /** PRI may resolve it */
      recoverable: boolean;
      fault?: FaultInfo;
    };

/** An ATS translation completion (PCIe): an untranslated range → translated address with permissions. */
export interface AtsResult {
  status: "success" | "ur" | "ca";
  translated: bigint;
  size: bigint;
  read: boolean;
  write: boolean;
  exec: boolean;
  priv: boolean;
  global: boolean;
  fault?: FaultInfo;
}

/** A request to a device to invalidate its ATC, issued by the IOMMU model; resolves on the device's completion. */
export interface AtcInvalidation {
  rid: number;
  pasid?: number;
  /** Untranslated address range. "Everything" is addr 0, size 2^64 (with `pasid` kept for a per-PASID flush). */
  addr: bigint;
  size: bigint;
  /** Also set for "everything"; this is not the PCIe Global Invalidate bit. */
  global: boolean;
}

/** What the core gives a driver: memory, the bus ports, and logging. */
export interface DriverEnv {
  /** Host physical memory: `memory.mem` is what the model walks; allocPage/freePage for tables and queues. */
  memory: HostMemory;
  /** Ask the device to invalidate its ATC; resolves when it completes, rejects (ETIMEDOUT) on timeout. */
  atcInvalidate(req: AtcInvalidation): Promise<void>;
  /** Send a page group response to the device (PCIe PRG response). */
  pageGroupResponse(rid: number, pasid: number | undefined, grpid: number, code: "success" | "invalid" | "failure"): void;
  /** Host log for events not routed to a guest (stage-2 faults, bad config). */
  hostEvent(dev: PciDevice | undefined, text: string, fields: Record<string, unknown>): void;
}

/** One physical IOMMU instance and its host driver. */
export interface IommuDriver {
  /** Instance name ("smmu0", "dmar0"). */
  readonly id: string;
  readonly vendor: "smmuv3" | "vtd";
  /** Capabilities the core checks before calling the driver. */
  readonly caps: {
    dirtyTracking: boolean;
    nesting: boolean;
    /** Largest PASID width the IOMMU supports. */
    maxPasidLog2: number;
    /** iommu_viommu_type the driver can allocate (0 = none). */
    viommuType: number;
    /** iommu_hwpt_data_type the driver accepts for nested domains. */
    nestedDataType: number;
    /** IOMMU_HWPT_ALLOC_* flags a nested allocation may carry (SMMUv3: FAULT_ID_VALID; VT-d: also PASID). */
    nestedFlags: number;
    /** iommu_hwpt_invalidate_data_type for nested HWPTs (-1 = none) and for vIOMMUs (-1 = none). */
    hwptInvalidateType: number;
    viommuInvalidateType: number;
    /** iommu_veventq_type its vIOMMUs report (0 = none). */
    veventqType: number;
    /** Smallest page the domains map (IOAS iova_alignment contribution). */
    pgsizeMin: bigint;
    /** Input address range of paging domains (the rest is reserved while attached). */
    aperture: IovaRange;
  };

  /** A device appears behind this IOMMU (hot-plug): its DMA is blocked until attached. */
  probeDevice(dev: PciDevice): void;
  /** A device goes away: detach everything, drop its table entries. */
  releaseDevice(dev: PciDevice): void;

  hwInfo(dev: PciDevice, requestedType?: number): HwInfo;

  /** IOMMU_HWPT_ALLOC on an IOAS (and auto domains with all flags false). */
  allocPaging(dev: PciDevice, flags: PagingFlags, hooks: { fault?: IopfSink }): PagingDomain;
  /** IOMMU_HWPT_ALLOC on a nest parent or a vIOMMU: validate the vendor data (EINVAL, EIO, EOPNOTSUPP). */
  allocNested(dev: PciDevice, parent: PagingDomain, viommu: ViommuHw | undefined, dataType: number, data: Uint8Array, hooks: { fault?: IopfSink }): NestedDomain;
  /** IOMMU_VIOMMU_ALLOC. */
  allocViommu(dev: PciDevice, type: number, parent: PagingDomain, hooks: ViommuHooks): ViommuHw;

  /**
   * Point (dev, pasid) at `domain` (undefined = blocked DMA). pasid undefined is
   * the RID. Replacing is atomic: on failure the old domain stays. Waits for
   * the invalidations (ATC included) the change needs.
   */
  attach(dev: PciDevice, pasid: number | undefined, domain: PagingDomain | NestedDomain | undefined): Promise<void>;

  /** Complete a page group the core received a response for. */
  pageResponse(dev: PciDevice, pasid: number | undefined, grpid: number, code: "success" | "invalid"): void;

  /** The data plane: translate one untranslated DMA access (pasid undefined = none). */
  translate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): DmaTranslation;
  /** Check a translated (AT=translated) access: ATS enabled for the device, else blocked. */
  translatedAllowed(dev: PciDevice): boolean;
  /** ATS translation request. */
  atsTranslate(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): AtsResult;
  /** A device's PRI page request arriving at the IOMMU (goes to its PRI queue). */
  pageRequest(dev: PciDevice, req: { pasid?: number; addr: bigint; read: boolean; write: boolean; exec: boolean; priv: boolean; grpid: number; last: boolean }): void;

  /** Full nested walk without side effects, for Admin.Explain. */
  explain(dev: PciDevice, pasid: number | undefined, iova: bigint, access: AccessRequest): { steps: string[]; result: string };
  /** Counters for metrics (translations, cache hits/misses, events...). */
  counters(): Record<string, number>;
}
