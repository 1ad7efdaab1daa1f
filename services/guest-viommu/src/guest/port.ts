// The narrow interface between the guest kernel and the VMM (DESIGN §7):
// everything the guest kernel knows of its virtual IOMMU. Like a real
// driver it sees
//   - an MMIO window (register reads and writes; a write resolves once the
//     VMM has handled the trap, as a vCPU resumes after an MMIO exit),
//   - guest RAM (GuestRam, ram.ts), where it keeps its tables and queues,
//   - interrupt lines (MSIs) the IOMMU raises,
//   - the PCI functions behind the IOMMU (what firmware tables — IORT /
//     DMAR — and config space tell a kernel).
// Nothing here knows iommufd, gRPC or NATS: the VMM implements this port
// (vmm/vsmmu.ts, vmm/vvtd.ts) and tests can implement it in-process.
import type { GuestRam } from "./ram.js";

export type IommuVendor = "smmuv3" | "vtd";

/** A register window. Offsets and sizes are the architecture's (4- or 8-byte registers). */
export interface Mmio {
  read(offset: number, size: 4 | 8): Promise<bigint>;
  /** Resolves when the device has taken the write (the trap is handled). */
  write(offset: number, value: bigint, size: 4 | 8): Promise<void>;
}

/**
 * Interrupt lines an IOMMU raises. SMMUv3: event queue, PRI queue, global
 * errors (MSIs). VT-d: fault event (FECTL), page request event (PECTL),
 * invalidation completion (IECTL).
 */
export type IrqLine = "evtq" | "priq" | "gerror" | "fault" | "prq" | "inv";

/** A PCI function behind the virtual IOMMU, as the guest enumerates it. */
export interface GuestPciFunction {
  /** Guest-visible ID: the SMMUv3 StreamID (vSID) or the VT-d requester ID (vRID). */
  readonly virtId: number;
  /** PASID capability width (0 = no PASID capability). */
  readonly maxPasidLog2: number;
  /** ATS capability. */
  readonly ats: boolean;
  /** PRI capability. */
  readonly pri: boolean;
  /** Human name for logs. */
  readonly name: string;
}

/** Everything the guest kernel gets from its platform for one virtual IOMMU. */
export interface VirtualIommuPort {
  readonly vendor: IommuVendor;
  readonly mmio: Mmio;
  readonly ram: GuestRam;
  readonly devices: readonly GuestPciFunction[];
  /** Route the IOMMU's interrupts to the guest (one handler; a later call replaces it). */
  setIrqHandler(handler: (line: IrqLine) => void): void;
}
