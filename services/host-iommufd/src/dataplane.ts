// The host's side of the NATS data plane (DESIGN §6): device hot-plug into
// the PCI table, batched DMA through the physical IOMMU (permission checks,
// hardware dirty bits), ATS translation requests, PRI page requests in and
// page group responses out, ATC invalidations to devices with completion
// waits, and guest-memory scatter/gather for sessions. Requests from devices
// are answered in batches: one reply per DmaBatch / AtsRequest.
import type { AccessRequest } from "@iommufd/hw";
import { type Bus, ErrnoError, subjects } from "@iommufd/kit";
import {
  AtcInvalidateCompletionSchema,
  AtcInvalidateSchema,
  AtsCompletionStatus,
  AtsRequestSchema,
  AtsResultSchema,
  DeviceRegisterReplySchema,
  DeviceRegisterSchema,
  DeviceUnregisterReplySchema,
  DeviceUnregisterSchema,
  DmaBatchResultSchema,
  DmaBatchSchema,
  DmaOpKind,
  DmaStatus,
  FaultClass,
  FaultKind,
  FaultRoute,
  GuestMemBatchResultSchema,
  GuestMemBatchSchema,
  GuestMemOpKind,
  HostUpSchema,
  PageGroupResponseSchema,
  PageRequestSchema,
  PcieAddressType,
  PrgResponseCode,
} from "@iommufd/proto/bus";
import type { Subscription } from "nats";
import type { Host } from "./core/host.js";
import { defaultReservedRegions } from "./core/pci.js";
import type { AtcInvalidation, DriverEnv, FaultInfo, PciDevice } from "./drivers/ops.js";
import { PAGE } from "./mm/user-mm.js";

const RID_FROM_SUBJECT = /^iommu\.v1\.dev\.([0-9a-f]{4})\./;
const SESSION_FROM_SUBJECT = /^iommu\.v1\.s\.([^.]+)\.mem$/;

export interface DataplaneCounters {
  dmaBatches: number;
  dmaOps: number;
  dmaBytes: number;
  dmaFaults: number;
  atsRequests: number;
  pageRequests: number;
  atcInvalidations: number;
  atcTimeouts: number;
  memOps: number;
}

export function faultToProto(f: FaultInfo) {
  const kinds: Record<FaultInfo["kind"], FaultKind> = {
    translation: FaultKind.TRANSLATION,
    "address-size": FaultKind.ADDRESS_SIZE,
    "access-flag": FaultKind.ACCESS_FLAG,
    permission: FaultKind.PERMISSION,
    "walk-eabt": FaultKind.WALK_EABT,
    "bad-stream-id": FaultKind.BAD_STREAM_ID,
    "bad-ste": FaultKind.BAD_STE,
    "stream-disabled": FaultKind.STREAM_DISABLED,
    "bad-substream-id": FaultKind.BAD_SUBSTREAM_ID,
    "bad-cd": FaultKind.BAD_CD,
    "config-fetch": FaultKind.CONFIG_FETCH,
    "translation-forbidden": FaultKind.TRANSLATION_FORBIDDEN,
    aborted: FaultKind.ABORTED,
  };
  const routes = { none: FaultRoute.NONE, host: FaultRoute.HOST, veventq: FaultRoute.VEVENTQ, iopf: FaultRoute.IOPF } as const;
  const classes = { CD: FaultClass.CD, TT: FaultClass.TT, IN: FaultClass.IN } as const;
  return {
    kind: kinds[f.kind],
    stage: f.stage,
    level: f.level,
    inputAddress: f.inputAddress,
    ipa: f.ipa,
    descriptorAddress: f.descriptorAddress,
    faultClass: f.faultClass ? classes[f.faultClass] : FaultClass.UNSPECIFIED,
    vendorCode: f.vendorCode,
    vendorName: f.vendorName,
    route: routes[f.route],
  };
}

export class Dataplane {
  readonly counters: DataplaneCounters = {
    dmaBatches: 0,
    dmaOps: 0,
    dmaBytes: 0,
    dmaFaults: 0,
    atsRequests: 0,
    pageRequests: 0,
    atcInvalidations: 0,
    atcTimeouts: 0,
    memOps: 0,
  };
  readonly epoch = BigInt(Date.now());
  /**
   * Devices that failed to complete an ATC invalidation: their ATC may hold
   * stale translations, so their translated accesses and ATS requests are
   * refused (UR) until they register again.
   */
  readonly atsQuarantine = new Set<number>();
  private readonly subs: Subscription[] = [];
  private priSeq = new Map<number, bigint>();
  private atcSeq = 0n;

  constructor(
    readonly host: Host,
    readonly bus: Bus,
    readonly processName: string,
  ) {}

  /** What the drivers get: host memory and the bus ports. */
  driverEnv(): DriverEnv {
    return {
      memory: this.host.memory,
      atcInvalidate: (req) => this.atcInvalidate(req),
      pageGroupResponse: (rid, pasid, grpid, code) => {
        const seq = (this.priSeq.get(rid) ?? 0n) + 1n;
        this.priSeq.set(rid, seq);
        const responseCode = code === "success" ? PrgResponseCode.SUCCESS : code === "invalid" ? PrgResponseCode.INVALID_REQUEST : PrgResponseCode.RESPONSE_FAILURE;
        this.bus.publish(subjects.priResp(rid), PageGroupResponseSchema, { rid, seq, pasid: pasid ?? 0, pasidValid: pasid !== undefined, prgIndex: grpid, responseCode });
      },
      hostEvent: (dev, text, fields) => this.host.log.warn({ rid: dev ? `0x${dev.rid.toString(16)}` : undefined, ...fields }, text),
    };
  }

  private async atcInvalidate(req: AtcInvalidation): Promise<void> {
    this.counters.atcInvalidations++;
    const entry = {
      itag: 0,
      pasid: req.pasid ?? 0,
      pasidValid: req.pasid !== undefined,
      addr: req.addr,
      // "Everything" is the largest range (size_log2 64); the PCIe Global bit is for global pages only.
      sizeLog2: req.global ? 64 : log2Ceil(req.size, 12),
      global: false,
    };
    try {
      await this.bus.request(subjects.atcInv(req.rid), AtcInvalidateSchema, { rid: req.rid, seq: ++this.atcSeq, entries: [entry] }, AtcInvalidateCompletionSchema, {
        timeoutMs: this.host.tunables.atcInvalidationTimeoutMs,
      });
    } catch (e) {
      this.counters.atcTimeouts++;
      this.atsQuarantine.add(req.rid);
      this.host.log.error({ rid: `0x${req.rid.toString(16)}`, err: String(e) }, "ATC invalidation not completed: ATS disabled for the device until it registers again");
      throw e instanceof ErrnoError && e.errno === "ENOTCONN" ? new ErrnoError("ETIMEDOUT", `device 0x${req.rid.toString(16)} did not complete the ATC invalidation`) : e;
    }
  }

  start(): void {
    const b = this.bus;
    this.subs.push(
      b.serve(subjects.register, DeviceRegisterSchema, DeviceRegisterReplySchema, (req) => this.register(req)),
      b.serve(subjects.unregister, DeviceUnregisterSchema, DeviceUnregisterReplySchema, (req) => {
        const slot = this.host.pci.byRid(req.rid);
        if (slot.process !== req.process) throw new ErrnoError("EPERM", `rid 0x${req.rid.toString(16)} belongs to ${slot.process}`);
        this.host.pci.unplug(req.rid);
        this.host.log.info({ rid: req.rid, process: req.process }, "device unregistered");
        return { seq: req.seq, rid: req.rid };
      }),
      b.serve("iommu.v1.dev.*.dma", DmaBatchSchema, DmaBatchResultSchema, (req, ctx) => this.dma(this.devFromSubject(ctx.subject), req)),
      b.serve("iommu.v1.dev.*.ats", AtsRequestSchema, AtsResultSchema, (req, ctx) => this.ats(this.devFromSubject(ctx.subject), req)),
      b.subscribe("iommu.v1.dev.*.pri", PageRequestSchema, (req, ctx) => this.pageRequest(this.devFromSubject(ctx.subject), req)),
      b.serve("iommu.v1.s.*.mem", GuestMemBatchSchema, GuestMemBatchResultSchema, (req, ctx) => this.mem(ctx.subject, req)),
    );
    b.publish(subjects.hostUp, HostUpSchema, { seq: 1n, hostEpoch: this.epoch, process: this.processName });
  }

  stop(): void {
    for (const s of this.subs) s.unsubscribe();
  }

  private devFromSubject(subject: string): PciDevice {
    const m = RID_FROM_SUBJECT.exec(subject);
    const slot = m ? this.host.pci.findRid(Number.parseInt(m[1] as string, 16)) : undefined;
    if (!slot || slot.unplugging) throw new ErrnoError("ENODEV", `no device behind ${subject}: register first`);
    return slot.dev;
  }

  private register(req: { seq: bigint; rid: number; name: string; process: string; iommuId: string; maxPasidLog2: number; pasidExec: boolean; pasidPriv: boolean; ats: boolean; pri: boolean; priOutstandingCapacity: number; maxBatch: number }) {
    const pci = this.host.pci;
    // No IOMMU named: the only instance, if there is exactly one (else the device must say which).
    const only = pci.iommus.size === 1 ? [...pci.iommus.keys()][0] : undefined;
    if (!req.iommuId && !only) throw new ErrnoError("ENODEV", `rid 0x${req.rid.toString(16)} names no IOMMU and the host has ${pci.iommus.size} instances (${[...pci.iommus.keys()].join(", ")})`);
    const iommu = pci.iommu(req.iommuId || (only as string));
    const old = pci.findRid(req.rid);
    if (old) {
      // The same device-sim registering again (it restarted): the old function is gone, the new one replaces it.
      if (old.process !== req.process) throw new ErrnoError("EEXIST", `rid 0x${req.rid.toString(16)} is taken by ${old.process ?? "a test device"}`);
      pci.unplug(req.rid);
    }
    if (req.maxPasidLog2 > iommu.caps.maxPasidLog2) throw new ErrnoError("EINVAL", `PASID width ${req.maxPasidLog2} exceeds the IOMMU's ${iommu.caps.maxPasidLog2}`);
    this.atsQuarantine.delete(req.rid);
    pci.plug(
      {
        rid: req.rid,
        name: req.name || `${req.process}/${req.rid.toString(16)}`,
        iommu,
        maxPasidLog2: req.maxPasidLog2,
        pasidExec: req.pasidExec,
        pasidPriv: req.pasidPriv,
        ats: req.ats,
        pri: req.pri,
        origin: "bus",
        reservedRegions: defaultReservedRegions(iommu),
      },
      req.process,
    );
    this.host.log.info({ rid: `0x${req.rid.toString(16)}`, name: req.name, iommu: iommu.id, process: req.process }, "device registered");
    return {
      seq: req.seq,
      rid: req.rid,
      iommuId: iommu.id,
      // PCIe ATS STU: 2^stu × 4 KiB; the IOMMUs translate 4 KiB pages.
      stu: 0,
      priOutstandingAllocation: req.pri ? Math.min(req.priOutstandingCapacity || 32, 256) : 0,
      maxBatch: Math.min(req.maxBatch || 256, 1024),
      hostEpoch: this.epoch,
    };
  }

  /** One DMA batch: each op translated page by page and performed on host memory. */
  dma(dev: PciDevice, req: { seq: bigint; ops: { kind: DmaOpKind; addr: bigint; pasid: number; pasidValid: boolean; at: PcieAddressType; priv: boolean; exec: boolean; length: number; data: Uint8Array }[] }) {
    this.counters.dmaBatches++;
    const mem = this.host.memory.mem;
    const results = req.ops.map((op) => {
      this.counters.dmaOps++;
      const write = op.kind === DmaOpKind.WRITE;
      if (op.kind !== DmaOpKind.READ && !write) return { status: DmaStatus.UR, data: new Uint8Array(0), done: 0 };
      const length = write ? op.data.length : op.length;
      const out = write ? new Uint8Array(0) : new Uint8Array(length);
      const pasid = op.pasidValid ? op.pasid : undefined;
      const access: AccessRequest = { kind: write ? "write" : op.exec ? "exec" : "read", privileged: op.priv };
      let done = 0;
      while (done < length) {
        const addr = op.addr + BigInt(done);
        let pa: bigint;
        let chunk = Math.min(length - done, Number(PAGE - (addr & (PAGE - 1n))));
        if (op.at === PcieAddressType.TRANSLATED) {
          if (!dev.iommu.translatedAllowed(dev) || this.atsQuarantine.has(dev.rid)) return { status: DmaStatus.UR, data: out.subarray(0, done), done };
          pa = addr;
        } else if (op.at === PcieAddressType.UNTRANSLATED) {
          const t = dev.iommu.translate(dev, pasid, addr, access);
          if (!t.ok) {
            this.counters.dmaFaults++;
            return {
              status: t.reason === "abort" ? DmaStatus.UR : DmaStatus.FAULT,
              data: out.subarray(0, done),
              done,
              fault: t.fault ? { ...faultToProto(t.fault), write, exec: op.exec, priv: op.priv, detail: t.detail } : { detail: t.detail, write },
            };
          }
          pa = t.pa;
          if (t.size < BigInt(chunk)) chunk = Number(t.size);
        } else {
          return { status: DmaStatus.UR, data: out.subarray(0, done), done };
        }
        const r = write ? mem.write(pa, op.data.subarray(done, done + chunk)) : mem.read(pa, chunk);
        if (!r.ok) return { status: DmaStatus.CA, data: out.subarray(0, done), done };
        if (!write) out.set((r as { value: Uint8Array }).value, done);
        done += chunk;
      }
      this.counters.dmaBytes += length;
      return { status: DmaStatus.OK, data: out, done };
    });
    return { rid: dev.rid, seq: req.seq, results };
  }

  /** A PRI page request from a device, into its IOMMU's page request queue. */
  pageRequest(dev: PciDevice, req: { pasid: number; pasidValid: boolean; addr: bigint; r: boolean; w: boolean; x: boolean; priv: boolean; prgIndex: number; last: boolean }): void {
    this.counters.pageRequests++;
    dev.iommu.pageRequest(dev, {
      pasid: req.pasidValid ? req.pasid : undefined,
      addr: req.addr,
      read: req.r,
      write: req.w,
      exec: req.x,
      priv: req.priv,
      grpid: req.prgIndex,
      last: req.last,
    });
  }

  ats(dev: PciDevice, req: { seq: bigint; requests: { addr: bigint; pasid: number; pasidValid: boolean; noWrite: boolean; priv: boolean; exec: boolean }[] }) {
    const completions = req.requests.map((r) => {
      this.counters.atsRequests++;
      if (!dev.ats || this.atsQuarantine.has(dev.rid)) return { status: AtsCompletionStatus.UR };
      const a = dev.iommu.atsTranslate(dev, r.pasidValid ? r.pasid : undefined, r.addr, { kind: r.noWrite ? "read" : "write", privileged: r.priv });
      return {
        status: a.status === "success" ? AtsCompletionStatus.SUCCESS : a.status === "ur" ? AtsCompletionStatus.UR : AtsCompletionStatus.CA,
        translatedAddr: a.translated,
        sizeLog2: a.size > 0n ? a.size.toString(2).length - 1 : 12,
        r: a.read,
        w: a.write,
        exe: a.exec,
        priv: a.priv,
        global: a.global,
        fault: a.fault ? faultToProto(a.fault) : undefined,
      };
    });
    return { rid: dev.rid, seq: req.seq, completions };
  }

  /** Guest-memory scatter/gather at the session's user VAs; a write is visible to the hardware before the reply. */
  private mem(subject: string, req: { seq: bigint; ops: { kind: GuestMemOpKind; userVa: bigint; length: number; data: Uint8Array }[] }) {
    const id = SESSION_FROM_SUBJECT.exec(subject)?.[1] ?? "";
    const session = this.host.sessions.get(id);
    if (!session || session.closed) throw new ErrnoError("EBADF", `no session ${id}`);
    const results = req.ops.map((op) => {
      this.counters.memOps++;
      try {
        if (op.kind === GuestMemOpKind.WRITE) {
          session.mm.access(op.userVa, op.data.length, op.data);
          return { errno: 0, data: new Uint8Array(0) };
        }
        if (op.kind === GuestMemOpKind.READ) return { errno: 0, data: session.mm.access(op.userVa, op.length) };
        return { errno: 22, data: new Uint8Array(0) };
      } catch (e) {
        return { errno: e instanceof ErrnoError ? e.number : 5, data: new Uint8Array(0) };
      }
    });
    return { sessionId: id, seq: req.seq, results };
  }
}

function log2Ceil(size: bigint, floor: number): number {
  let n = 0;
  while (1n << BigInt(n) < size) n++;
  return Math.max(n, floor);
}
