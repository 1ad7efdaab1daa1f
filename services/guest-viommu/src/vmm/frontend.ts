// What the two virtual IOMMU front ends (vsmmu.ts, vvtd.ts) share: the
// VMM context they work in (the iommufd client, guest RAM, the assigned
// devices and the host IOMMU slices), the MMIO trap entry points (one at a
// time: a trap is handled to the end before the next, as a vCPU exit is),
// interrupt delivery to the guest, and counters.
import type { IopfRecord, VeventRecord } from "@iommufd/proto/bus";
import type { GuestPciFunction, IrqLine, Mmio, VirtualIommuPort } from "../guest/port.js";
import type { GuestRam } from "../guest/ram.js";
import { Mutex } from "../util.js";
import type { IommufdClient } from "./client.js";

/** A device assigned to the VM: its host identity and its iommufd objects. */
export interface VmmDevice {
  /** Host device name (DeviceBind by name). */
  readonly name: string;
  /** Host requester ID. */
  readonly rid: number;
  /** Guest-visible ID: vSID (SMMUv3) / vRID (VT-d). */
  readonly vid: number;
  /** device.v1 address of the device-sim behind it, when known. */
  readonly devsim?: string;
  readonly devId: number;
  vdeviceId: number;
  readonly maxPasidLog2: number;
  readonly ats: boolean;
  readonly pri: boolean;
  readonly slice: HostSlice;
}

/**
 * The iommufd objects the VM has on one physical IOMMU instance: a nesting
 * parent (stage 2 over the IOAS of guest RAM), and on SMMUv3 a vIOMMU with
 * its vEVENTQ. Nested HWPTs and vDEVICEs must live on the instance of their
 * device, so the VMM keeps one slice per instance it has devices behind.
 */
export interface HostSlice {
  readonly iommuId: string;
  readonly parentHwptId: number;
  viommuId: number;
  veventqId: number;
  readonly devices: VmmDevice[];
  /** GET_HW_INFO of the first device (its IOMMU's registers as iommufd reports them). */
  readonly hwInfo?: { type: number; idr?: number[]; capReg?: bigint; ecapReg?: bigint; capabilities: bigint };
}

export interface VmmCounters {
  hwptInvalidateCalls: number;
  hwptInvalidateEntries: number;
  hwptAllocs: number;
  attaches: number;
  vevents: number;
  lostEvents: number;
  pageRequests: number;
  pageResponses: number;
  hostCalls: number;
  mmioTraps: number;
  guestEventsInjected: number;
  devtlbAbsorbed: number;
}

export function newCounters(): VmmCounters {
  return {
    hwptInvalidateCalls: 0,
    hwptInvalidateEntries: 0,
    hwptAllocs: 0,
    attaches: 0,
    vevents: 0,
    lostEvents: 0,
    pageRequests: 0,
    pageResponses: 0,
    hostCalls: 0,
    mmioTraps: 0,
    guestEventsInjected: 0,
    devtlbAbsorbed: 0,
  };
}

export type VmmLog = (level: "debug" | "info" | "warn" | "error", msg: string, fields?: Record<string, unknown>) => void;

/** Everything a front end needs from the VMM. */
export interface VmmContext {
  readonly client: IommufdClient;
  readonly ram: GuestRam;
  readonly devices: readonly VmmDevice[];
  readonly slices: readonly HostSlice[];
  readonly counters: VmmCounters;
  /** FAULT object for IOPF-capable HWPTs (0 = none). */
  readonly faultId: number;
  /** Answer a fault group toward the host (bus.v1.PageResponse). */
  pageResponse(cookie: number, code: number): void;
  log: VmmLog;
}

export const PAGE_RESPONSE = { SUCCESS: 0, INVALID: 1 } as const;
export const PGFAULT_FLAGS = { PASID_VALID: 1, LAST_PAGE: 2 } as const;
export const PGFAULT_PERM = { READ: 1, WRITE: 2, EXEC: 4, PRIV: 8 } as const;

export abstract class FrontEnd implements Mmio, VirtualIommuPort {
  abstract readonly vendor: "smmuv3" | "vtd";
  protected readonly lock = new Mutex();
  private irqHandler?: (line: IrqLine) => void;

  constructor(protected readonly ctx: VmmContext) {}

  get mmio(): Mmio {
    return this;
  }

  get ram(): GuestRam {
    return this.ctx.ram;
  }

  get devices(): GuestPciFunction[] {
    return this.ctx.devices.map((d) => ({ virtId: d.vid, maxPasidLog2: d.maxPasidLog2, ats: d.ats, pri: d.pri, name: d.name }));
  }

  setIrqHandler(handler: (line: IrqLine) => void): void {
    this.irqHandler = handler;
  }

  /** Raise an interrupt: delivered after the current trap / injection returns (an MSI write). */
  protected raise(line: IrqLine): void {
    const h = this.irqHandler;
    if (h) setImmediate(() => h(line));
  }

  read(offset: number, size: 4 | 8): Promise<bigint> {
    return this.lock.run(() => {
      this.ctx.counters.mmioTraps++;
      return this.readReg(offset, size);
    });
  }

  write(offset: number, value: bigint, size: 4 | 8): Promise<void> {
    return this.lock.run(() => {
      this.ctx.counters.mmioTraps++;
      return this.writeReg(offset, size === 4 ? value & 0xffff_ffffn : value, size);
    });
  }

  /** A vEVENTQ record of `slice` (sequence checks done by the caller: `lost` = events lost before it). */
  injectVevent(slice: HostSlice, rec: VeventRecord, lost: number): Promise<void> {
    return this.lock.run(() => this.onVevent(slice, rec, lost));
  }

  /** A whole IOPF group for `dev` (records in order, the last with LAST_PAGE). */
  injectIopf(dev: VmmDevice, group: IopfRecord[]): Promise<void> {
    return this.lock.run(() => this.onIopfGroup(dev, group));
  }

  protected deviceByVid(vid: number): VmmDevice | undefined {
    return this.ctx.devices.find((d) => d.vid === vid);
  }

  protected abstract readReg(offset: number, size: 4 | 8): Promise<bigint> | bigint;
  protected abstract writeReg(offset: number, value: bigint, size: 4 | 8): Promise<void> | void;
  protected abstract onVevent(slice: HostSlice, rec: VeventRecord, lost: number): Promise<void>;
  protected abstract onIopfGroup(dev: VmmDevice, group: IopfRecord[]): Promise<void>;
}

/** Read-modify-write of a 64-bit register through a 4- or 8-byte access at `offset` (base or base + 4). */
export function write64Part(cur: bigint, offset: number, base: number, value: bigint, size: 4 | 8): bigint {
  if (size === 8) return BigInt.asUintN(64, value);
  if (offset === base) return (cur & ~0xffff_ffffn) | (value & 0xffff_ffffn);
  return (cur & 0xffff_ffffn) | ((value & 0xffff_ffffn) << 32n);
}

export function read64Part(cur: bigint, offset: number, base: number, size: 4 | 8): bigint {
  if (size === 8) return cur;
  return offset === base ? cur & 0xffff_ffffn : (cur >> 32n) & 0xffff_ffffn;
}
