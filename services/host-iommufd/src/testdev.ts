// Admin test devices: PCI functions with chosen capabilities and no process
// behind them (the counterpart of the kernel selftest's mock device). The
// host answers their side of the bus itself: ATC invalidations are completed
// (unless the device is told to ignore them) and recorded, page group
// responses are recorded; tests take both from the device's inbox.
import { type Bus, ErrnoError, check, subjects } from "@iommufd/kit";
import {
  type AtcInvalidate,
  AtcInvalidateCompletionSchema,
  AtcInvalidateSchema,
  type PageGroupResponse,
  PageGroupResponseSchema,
} from "@iommufd/proto/bus";
import type { Subscription } from "nats";
import type { Host } from "./core/host.js";
import { defaultReservedRegions } from "./core/pci.js";
import type { PciDevice } from "./drivers/ops.js";

interface TestDevice {
  dev: PciDevice;
  ignoreAtcInvalidations: boolean;
  atc: AtcInvalidate[];
  prg: PageGroupResponse[];
  waiters: (() => void)[];
  subs: Subscription[];
}

export class TestDevices {
  private readonly devices = new Map<number, TestDevice>();

  constructor(
    readonly host: Host,
    readonly bus: Bus,
  ) {}

  create(req: {
    iommuId: string;
    name: string;
    rid?: number;
    maxPasidLog2: number;
    pasidExec: boolean;
    pasidPriv: boolean;
    ats: boolean;
    pri: boolean;
    ignoreAtcInvalidations: boolean;
  }): PciDevice {
    const iommu = this.host.pci.iommu(req.iommuId);
    check(req.maxPasidLog2 <= 20 && req.maxPasidLog2 <= iommu.caps.maxPasidLog2, "EINVAL", `max_pasid_log2 ${req.maxPasidLog2} is not supported`);
    check(!req.pri || req.ats, "EINVAL", "PRI needs ATS");
    const rid = req.rid ?? this.freeRid();
    check(rid >= 0 && rid <= 0xffff, "EINVAL", "rid must fit in 16 bits");
    const dev: PciDevice = {
      rid,
      name: req.name || `test-${rid.toString(16).padStart(4, "0")}`,
      iommu,
      maxPasidLog2: req.maxPasidLog2,
      pasidExec: req.pasidExec,
      pasidPriv: req.pasidPriv,
      ats: req.ats,
      pri: req.pri,
      origin: "test",
      reservedRegions: defaultReservedRegions(iommu),
    };
    this.host.pci.plug(dev, "admin");
    const t: TestDevice = { dev, ignoreAtcInvalidations: req.ignoreAtcInvalidations, atc: [], prg: [], waiters: [], subs: [] };
    const wake = () => {
      for (const w of t.waiters.splice(0)) w();
    };
    t.subs.push(
      this.bus.serve(subjects.atcInv(rid), AtcInvalidateSchema, AtcInvalidateCompletionSchema, async (inv) => {
        t.atc.push(inv);
        wake();
        // A device that ignores invalidations never completes them: the host's wait times out.
        if (t.ignoreAtcInvalidations) await new Promise(() => undefined);
        return { rid, seq: inv.seq, itagVector: inv.entries.reduce((v, e) => v | (1 << e.itag), 0) };
      }),
      this.bus.subscribe(subjects.priResp(rid), PageGroupResponseSchema, (r) => {
        t.prg.push(r);
        wake();
      }),
    );
    this.devices.set(rid, t);
    return dev;
  }

  private freeRid(): number {
    for (let rid = 0x100; rid < 0x10000; rid += 8) if (!this.host.pci.findRid(rid)) return rid;
    throw new ErrnoError("ENOSPC", "no free requester ID");
  }

  get(rid: number): TestDevice {
    const t = this.devices.get(rid);
    if (!t) throw new ErrnoError("ENOENT", `rid 0x${rid.toString(16)} is not a test device`);
    return t;
  }

  destroy(rid: number): void {
    const t = this.get(rid);
    for (const s of t.subs) s.unsubscribe();
    this.devices.delete(rid);
    this.host.pci.unplug(rid);
  }

  /** Messages received since the last call; waits up to waitMs for the first one. */
  async inbox(rid: number, waitMs: number): Promise<{ pageGroupResponses: PageGroupResponse[]; atcInvalidations: AtcInvalidate[] }> {
    const t = this.get(rid);
    if (t.atc.length === 0 && t.prg.length === 0 && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const timer = setTimeout(resolve, waitMs);
        t.waiters.push(() => {
          clearTimeout(timer);
          resolve();
        });
      });
    }
    return { pageGroupResponses: t.prg.splice(0), atcInvalidations: t.atc.splice(0) };
  }
}
