// The VMM: one iommufd session per VM and the objects a VMM builds on it
// before the guest boots (QEMU's iommufd backend + vfio cdev), then the
// virtual IOMMU front end the guest programs.
//   OpenSession (+ KeepAlive within the lease)
//   guest RAM: MemfdCreate + Mmap (MAP_SHARED) → IoasAlloc → IoasMap at
//     IOVA = GPA (FIXED_IOVA), so the host's stage 2 maps GPA → host memory
//   FaultQueueAlloc (IOPF), consumed on NATS (.fault.<id>, answered on .resp)
//   per device: DeviceBind (by host name or RID), GetHwInfo
//   per physical IOMMU instance: a nesting-parent HWPT_PAGING on the IOAS;
//     SMMUv3: ViommuAlloc(ARM_SMMUV3) + VeventqAlloc, consumed on NATS
//   SMMUv3 per device: VdeviceAlloc(virt_id = vSID)
// Guest RAM accesses (the guest's and the front end's) go to the host at the
// session's user VAs (vmm/ram.ts), or to whatever `ramFactory` returns.
import { ErrnoError } from "@iommufd/kit";
import type { IopfRecord, VeventRecord } from "@iommufd/proto/bus";
import { EventDelivery, HwInfoType, HwptAllocFlags, IoasMapFlags, MmapFlags, MmapProt, VeventqFlag, VeventqType, ViommuType } from "@iommufd/proto/iommufd";
import type { IommuVendor, VirtualIommuPort } from "../guest/port.js";
import type { GuestRam, RamRegion } from "../guest/ram.js";
import { hex } from "../util.js";
import { type HostEventPort, type HostInventory, type IommufdClient, countingClient } from "./client.js";
import { type HostSlice, PAGE_RESPONSE, PGFAULT_FLAGS, type VmmContext, type VmmCounters, type VmmDevice, type VmmLog, newCounters } from "./frontend.js";
import { VSmmu, type VSmmuOptions } from "./vsmmu.js";
import { VVtd, type VVtdOptions } from "./vvtd.js";

/** Where guest RAM starts in the guest physical address space (Arm virt: 1 GiB; x86: 0, below the 0xFEE0_0000 MSI window). */
export const RAM_BASE: Record<IommuVendor, bigint> = { smmuv3: 0x4000_0000n, vtd: 0n };
/** x86 guests keep RAM below the interrupt window (the host reserves 0xFEE0_0000.. on VT-d RID attaches). */
export const VTD_MAX_RAM = 0xc000_0000n;

const INT_MAX = 0x7fff_ffff;

export interface VmmDeviceSpec {
  /** Host device name (Admin Inventory); or give `rid`. */
  name?: string;
  rid?: number;
  /** Guest-visible ID (vSID / vRID). */
  vid: number;
  /** device.v1 gRPC address of the device-sim behind it. */
  devsim?: string;
}

export interface VmmOptions {
  vendor: IommuVendor;
  vmName: string;
  memory: bigint;
  devices: readonly VmmDeviceSpec[];
  client: IommufdClient;
  /** Called with the session token after OpenSession (the gRPC client sends it as `iommufd-session`). */
  setSessionToken?(token: string | undefined): void;
  inventory?: HostInventory;
  events: HostEventPort;
  /** Guest RAM for a session (bus.v1 mem batches in production, a byte map in tests). */
  ramFactory(s: { sessionId: string; userVa: bigint; regions: readonly RamRegion[] }): GuestRam;
  leaseMs?: number;
  veventqDepth?: number;
  smmu?: VSmmuOptions;
  vtd?: VVtdOptions;
  log?: VmmLog;
  /** Session changes the guest's log should show. */
  onSessionEvent?(kind: string, text: string): void;
}

export type SessionStateName = "connecting" | "open" | "lost" | "closed";

export class Vmm {
  state: SessionStateName = "connecting";
  sessionId = "";
  leaseMs = 0;
  ioasId = 0;
  faultId = 0;
  memfd = -1;
  userVa = 0n;
  regions: RamRegion[] = [];
  ram!: GuestRam;
  readonly devices: VmmDevice[] = [];
  readonly slices: HostSlice[] = [];
  frontend!: VSmmu | VVtd;
  readonly counters: VmmCounters = newCounters();
  readonly client: IommufdClient;
  private readonly unsubs: (() => void)[] = [];
  private keepAlive?: ReturnType<typeof setInterval>;
  private readonly iopfPartial = new Map<string, IopfRecord[]>();
  private iopfSeq?: bigint;
  private readonly veventSeq = new Map<number, number>();
  private readonly lostWaiters: (() => void)[] = [];
  private readonly log: VmmLog;

  constructor(readonly opts: VmmOptions) {
    this.client = countingClient(opts.client, () => this.counters.hostCalls++);
    this.log = opts.log ?? (() => undefined);
  }

  /** The guest's view of its virtual IOMMU. */
  get port(): VirtualIommuPort {
    return this.frontend;
  }

  /** Resolves when the session is lost (host gone or lease expired). */
  whenLost(): Promise<void> {
    if (this.state === "lost") return Promise.resolve();
    return new Promise((r) => this.lostWaiters.push(r));
  }

  async start(): Promise<void> {
    const o = this.opts;
    const size = (o.memory + 0xfffn) & ~0xfffn;
    if (o.vendor === "vtd" && size > VTD_MAX_RAM) throw new ErrnoError("EINVAL", `a VT-d guest keeps RAM below ${hex(VTD_MAX_RAM)}`);
    this.state = "connecting";
    const s = await this.client.openSession({ clientName: o.vmName, leaseMs: o.leaseMs ?? 0, eventDelivery: EventDelivery.NATS, capSysResource: false });
    o.setSessionToken?.(s.session);
    this.sessionId = s.sessionId;
    this.leaseMs = s.leaseMs;
    this.startKeepAlive();

    // Guest RAM: a memfd mapped into the session's address space and into an IOAS at IOVA = GPA.
    this.regions = [{ gpa: RAM_BASE[o.vendor], size }];
    this.memfd = (await this.client.memfdCreate({ name: `${o.vmName}-ram`, flags: 1, size })).fd;
    this.userVa = (await this.client.mmap({ addr: 0n, length: size, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.SHARED, fd: this.memfd, offset: 0n })).addr;
    this.ioasId = (await this.client.ioasAlloc({ flags: 0 })).outIoasId;
    await this.client.ioasMap({
      flags: IoasMapFlags.FIXED_IOVA | IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE,
      ioasId: this.ioasId,
      userVa: this.userVa,
      length: size,
      iova: RAM_BASE[o.vendor],
    });
    this.ram = o.ramFactory({ sessionId: this.sessionId, userVa: this.userVa, regions: this.regions });

    try {
      this.faultId = (await this.client.faultQueueAlloc({ flags: 0 })).outFaultId;
      this.unsubs.push(o.events.subscribeFault(this.sessionId, this.faultId, (r) => this.onIopf(r)));
    } catch (e) {
      this.log("warn", "no fault queue: page requests will not reach the guest", { err: String(e) });
      this.faultId = 0;
    }

    for (const spec of o.devices) await this.addDevice(spec);

    const ctx: VmmContext = {
      client: this.client,
      ram: this.ram,
      devices: this.devices,
      slices: this.slices,
      counters: this.counters,
      faultId: this.faultId,
      pageResponse: (cookie, code) => o.events.pageResponse(this.sessionId, this.faultId, cookie, code),
      log: this.log,
    };
    this.frontend = o.vendor === "smmuv3" ? new VSmmu(ctx, o.smmu) : new VVtd(ctx, o.vtd);
    this.state = "open";
    this.log("info", "VMM session open", {
      sessionId: this.sessionId,
      ioasId: this.ioasId,
      ram: `${hex(RAM_BASE[o.vendor])}+${hex(size)}`,
      devices: this.devices.map((d) => ({ name: d.name, rid: hex(d.rid), vid: hex(d.vid), devId: d.devId })),
    });
    o.onSessionEvent?.("session open", `iommufd session ${this.sessionId}: IOAS ${this.ioasId}, ${this.devices.length} device(s)`);
  }

  private async addDevice(spec: VmmDeviceSpec): Promise<void> {
    const o = this.opts;
    const { outDevid: devId } = await this.client.deviceBind({
      flags: 0,
      device: spec.name !== undefined ? { case: "name", value: spec.name } : { case: "rid", value: spec.rid ?? 0 },
    });
    const inv = await o.inventory?.lookup({ name: spec.name, rid: spec.rid }).catch(() => undefined);
    const hw = await this.client.getHwInfo({ flags: 0, devId, dataLen: 64, inDataType: 0, reserved: 0 });
    const wantType = o.vendor === "smmuv3" ? HwInfoType.ARM_SMMUV3 : HwInfoType.INTEL_VTD;
    if (hw.outDataType !== wantType) {
      throw new ErrnoError("EINVAL", `device ${spec.name ?? hex(spec.rid ?? 0)} is behind a ${HwInfoType[hw.outDataType] ?? hw.outDataType} IOMMU, not ${o.vendor}`);
    }
    const iommuId = inv?.iommuId ?? "default";
    let slice = this.slices.find((s) => s.iommuId === iommuId);
    if (!slice) {
      // The nesting parent: stage 2 over guest RAM. PASID-compatible so a VT-d guest can use it for pass-through PASIDs.
      let parent: number;
      const flags = HwptAllocFlags.NEST_PARENT | (o.vendor === "vtd" ? HwptAllocFlags.PASID : 0);
      try {
        parent = (await this.client.hwptAlloc({ flags, devId, ptId: this.ioasId, dataType: 0, dataLen: 0 })).outHwptId;
      } catch (e) {
        if (!(e instanceof ErrnoError) || e.errno !== "EOPNOTSUPP" || flags === HwptAllocFlags.NEST_PARENT) throw e;
        parent = (await this.client.hwptAlloc({ flags: HwptAllocFlags.NEST_PARENT, devId, ptId: this.ioasId, dataType: 0, dataLen: 0 })).outHwptId;
      }
      const info = hw.info;
      slice = {
        iommuId,
        parentHwptId: parent,
        viommuId: 0,
        veventqId: 0,
        devices: [],
        hwInfo: {
          type: hw.outDataType,
          capabilities: hw.outCapabilities,
          ...(info.case === "armSmmuv3" ? { idr: [...info.value.idr] } : {}),
          ...(info.case === "vtd" ? { capReg: info.value.capReg, ecapReg: info.value.ecapReg } : {}),
        },
      };
      if (o.vendor === "smmuv3") {
        slice.viommuId = (await this.client.viommuAlloc({ flags: 0, type: ViommuType.ARM_SMMUV3, devId, hwptId: parent, dataLen: 0, reserved: 0 })).outViommuId;
        const q = await this.client.veventqAlloc({ flags: 0, viommuId: slice.viommuId, type: VeventqType.ARM_SMMUV3, veventqDepth: o.veventqDepth ?? 64, reserved: 0 });
        slice.veventqId = q.outVeventqId;
        const sl = slice;
        this.unsubs.push(o.events.subscribeVeventq(this.sessionId, q.outVeventqId, (r) => this.onVevent(sl, r)));
      }
      this.slices.push(slice);
    }
    const atsNotSupported = (hw.outCapabilities & 8n) !== 0n;
    const dev: VmmDevice = {
      name: inv?.name ?? spec.name ?? `rid-${hex(spec.rid ?? 0)}`,
      rid: inv?.rid ?? spec.rid ?? 0,
      vid: spec.vid,
      ...(spec.devsim !== undefined ? { devsim: spec.devsim } : {}),
      devId,
      vdeviceId: 0,
      maxPasidLog2: inv?.maxPasidLog2 ?? hw.outMaxPasidLog2,
      ats: inv?.ats ?? !atsNotSupported,
      pri: inv?.pri ?? false,
      slice,
    };
    if (o.vendor === "smmuv3") {
      dev.vdeviceId = (await this.client.vdeviceAlloc({ viommuId: slice.viommuId, devId, virtId: BigInt(spec.vid) })).outVdeviceId;
    }
    slice.devices.push(dev);
    this.devices.push(dev);
  }

  private startKeepAlive(): void {
    const every = Math.max(100, Math.floor(this.leaseMs / 3));
    this.keepAlive = setInterval(() => {
      this.client.keepAlive({}).catch((e: unknown) => {
        if (e instanceof ErrnoError && e.errno === "EBADF") this.lost(`KeepAlive: ${e.message}`);
        else this.log("warn", "KeepAlive failed", { err: String(e) });
      });
    }, every);
    this.keepAlive.unref?.();
  }

  private lost(why: string): void {
    if (this.state !== "open" && this.state !== "connecting") return;
    this.state = "lost";
    clearInterval(this.keepAlive);
    for (const u of this.unsubs.splice(0)) u();
    this.log("error", "iommufd session lost", { sessionId: this.sessionId, why });
    this.opts.onSessionEvent?.("session lost", `iommufd session ${this.sessionId} lost: ${why}`);
    for (const w of this.lostWaiters.splice(0)) w();
  }

  async stop(): Promise<void> {
    clearInterval(this.keepAlive);
    for (const u of this.unsubs.splice(0)) u();
    if (this.state === "open" || this.state === "connecting") {
      this.state = "closed";
      await this.client.closeSession({}).catch(() => undefined);
    }
    this.state = "closed";
  }

  // ---- host events ---------------------------------------------------------

  /** vEVENTQ record: check the sequence (0..INT_MAX, wrapping), then hand it to the front end. */
  onVevent(slice: HostSlice, r: VeventRecord): void {
    this.counters.vevents++;
    const last = this.veventSeq.get(slice.veventqId);
    const expected = last === undefined ? 0 : (last + 1) & INT_MAX;
    const gap = (r.sequence - expected + (INT_MAX + 1)) % (INT_MAX + 1);
    this.veventSeq.set(slice.veventqId, r.sequence);
    const flagged = (r.flags & VeventqFlag.LOST_EVENTS) !== 0;
    if (gap > 0 || flagged) {
      this.counters.lostEvents += gap + (flagged ? 1 : 0);
      this.log("warn", "vEVENTQ: events lost", { veventqId: slice.veventqId, sequence: r.sequence, expected, lostEventsFlag: flagged });
    }
    void this.frontend?.injectVevent(slice, r, gap).catch((e: unknown) => this.log("error", "vEVENT injection failed", { err: String(e) }));
  }

  /** IOPF record: whole groups (up to LAST_PAGE) go to the front end. */
  onIopf(r: IopfRecord): void {
    if (this.iopfSeq !== undefined && r.seq !== this.iopfSeq + 1n) {
      this.counters.lostEvents += Number(r.seq - this.iopfSeq - 1n);
      this.log("warn", "fault queue: sequence gap", { seq: r.seq.toString(), last: this.iopfSeq.toString() });
    }
    this.iopfSeq = r.seq;
    const key = `${r.devId}/${r.flags & PGFAULT_FLAGS.PASID_VALID ? r.pasid : "-"}/${r.grpid}`;
    let g = this.iopfPartial.get(key);
    if (!g) this.iopfPartial.set(key, (g = []));
    g.push(r);
    if (!(r.flags & PGFAULT_FLAGS.LAST_PAGE)) return;
    this.iopfPartial.delete(key);
    const dev = this.devices.find((d) => d.devId === r.devId);
    if (!dev || !this.frontend) {
      this.log("warn", "page request for a device the VM does not have", { devId: r.devId });
      this.opts.events.pageResponse(this.sessionId, this.faultId, r.cookie, PAGE_RESPONSE.INVALID);
      return;
    }
    const group = g;
    void this.frontend.injectIopf(dev, group).catch((e: unknown) => {
      this.log("error", "page request injection failed", { err: String(e) });
      this.opts.events.pageResponse(this.sessionId, this.faultId, r.cookie, PAGE_RESPONSE.INVALID);
    });
  }
}
