// The host's PCI device table: every function behind one of the physical
// IOMMU instances, whether an Admin test device or a device-sim endpoint
// registered over NATS (hot-plug), and which session has it bound (a VFIO
// cdev binds once). Hot-unplug tells the binding session first.
import { ErrnoError } from "@iommufd/kit";
import type { IommuDriver, PciDevice } from "../drivers/ops.js";
import type { IovaRange } from "../iopt/io-pagetable.js";

/**
 * Reserved IOVA regions a device brings (enforced on RID attach): the MSI
 * doorbell window its platform reserves — the x86 interrupt range for VT-d,
 * Linux's software MSI window (MSI_IOVA_BASE) for SMMUv3.
 */
export function defaultReservedRegions(iommu: IommuDriver): IovaRange[] {
  return iommu.vendor === "vtd" ? [{ start: 0xfee0_0000n, last: 0xfeef_ffffn }] : [{ start: 0x800_0000n, last: 0x80f_ffffn }];
}

export interface PciSlot {
  dev: PciDevice;
  /** The session's DEVICE object bound to it, if any. */
  bound?: { sessionId: string; unbind(): void };
  unplugging: boolean;
  /** device-sim process that registered it (bus devices). */
  process?: string;
}

export class PciTable {
  readonly iommus = new Map<string, IommuDriver>();
  private readonly slots = new Map<number, PciSlot>();

  addIommu(d: IommuDriver): void {
    this.iommus.set(d.id, d);
  }

  iommu(id: string): IommuDriver {
    const d = this.iommus.get(id);
    if (!d) throw new ErrnoError("ENODEV", `no IOMMU instance ${id}`);
    return d;
  }

  /** Hot-plug: the IOMMU driver probes the device (DMA blocked until attached). */
  plug(dev: PciDevice, process?: string): PciSlot {
    if (this.slots.has(dev.rid)) throw new ErrnoError("EEXIST", `rid 0x${dev.rid.toString(16)} is already present`);
    if ([...this.slots.values()].some((s) => s.dev.name === dev.name)) throw new ErrnoError("EEXIST", `device name ${dev.name} is in use`);
    dev.iommu.probeDevice(dev);
    const slot: PciSlot = { dev, unplugging: false, process };
    this.slots.set(dev.rid, slot);
    return slot;
  }

  /** Hot-unplug: the binding session loses the device first (vDEVICE tombstone, detach), then the driver releases it. */
  unplug(rid: number): PciDevice {
    const slot = this.byRid(rid);
    slot.unplugging = true;
    slot.bound?.unbind();
    slot.dev.iommu.releaseDevice(slot.dev);
    this.slots.delete(rid);
    return slot.dev;
  }

  byRid(rid: number): PciSlot {
    const s = this.slots.get(rid);
    if (!s) throw new ErrnoError("ENOENT", `no device with rid 0x${rid.toString(16)}`);
    return s;
  }

  findRid(rid: number): PciSlot | undefined {
    return this.slots.get(rid);
  }

  byName(name: string): PciSlot {
    for (const s of this.slots.values()) if (s.dev.name === name) return s;
    throw new ErrnoError("ENOENT", `no device named ${name}`);
  }

  all(): PciSlot[] {
    return [...this.slots.values()];
  }
}
