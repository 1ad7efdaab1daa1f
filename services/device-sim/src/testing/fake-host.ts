// A fake host for device-sim tests and benchmarks: the host side of the
// device bus (bus/v1) over a byte array, with no IOMMU model. It serves
// iommu.v1.dev.register / .unregister, iommu.v1.dev.<rid>.dma and .ats,
// takes page requests on .pri and answers them on .pri-resp through a
// policy the test sets, sends ATC invalidations on .atc-inv and waits for
// their completion, and announces itself on iommu.v1.host.up. Translation
// is a map IOVA page → (PA page, R, W) per (RID, PASID).
//
// It also checks what the device sends: sequence numbers of every device
// stream (gaps / duplicates are counted in `seqErrors`), batch limits, PRI
// credits (page requests beyond the allocation are counted in
// `creditViolations`), and records every message (unless record: false) so
// tests can assert on what crossed the bus.
import { EventEmitter } from "node:events";
import { Bus, createLogger, ErrnoError, type Logger, subjects } from "@iommufd/kit";
import {
  type AtcInvalidateCompletion,
  AtcInvalidateCompletionSchema,
  type AtcInvalidateEntrySchema,
  AtcInvalidateSchema,
  AtsCompletionStatus,
  type AtsRequest,
  AtsRequestSchema,
  AtsResultSchema,
  type DeviceRegister,
  DeviceRegisterReplySchema,
  DeviceRegisterSchema,
  DeviceUnregisterReplySchema,
  DeviceUnregisterSchema,
  type DmaBatch,
  DmaBatchResultSchema,
  DmaBatchSchema,
  DmaOpKind,
  type DmaOpResultSchema,
  DmaStatus,
  FaultKind,
  HostUpSchema,
  PageGroupResponseSchema,
  type PageRequest,
  PageRequestSchema,
  PcieAddressType,
  PingSchema,
  PongSchema,
  PrgResponseCode,
} from "@iommufd/proto/bus";
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { Subscription } from "nats";

export interface FakeHostOptions {
  natsUrl: string;
  /** Process name (ping subject, HostUp.process). Default "fake-host". */
  name?: string;
  /** Bytes of "physical" memory. Default 16 MiB. */
  memoryBytes?: number;
  /** ATS STU granted (2^stu × 4 KiB). Default 0. */
  stu?: number;
  /** Largest batch accepted. Default 1024. */
  maxBatch?: number;
  /** PRI allocation cap (granted = min(capacity, this)). Default: the capacity. */
  priAllocation?: number;
  /** Translated (AT=10b) requests allowed (STE.EATS). Default true. */
  allowTranslated?: boolean;
  /** Record every message in `log`. Default true (benchmarks turn it off). */
  record?: boolean;
  /** Publish HostUp when started. Default true. */
  announce?: boolean;
  log?: Logger;
}

interface Perm {
  pa: bigint;
  r: boolean;
  w: boolean;
}

type DmaOpResultInit = MessageInitShape<typeof DmaOpResultSchema>;
type InvEntryInit = MessageInitShape<typeof AtcInvalidateEntrySchema>;

/** Decides the answer to a complete page request group; undefined = never answer. */
export type PriPolicy = (rid: number, group: PageRequest[]) => PrgResponseCode | undefined | Promise<PrgResponseCode | undefined>;

interface RidState {
  reg: DeviceRegister;
  maxBatch: number;
  priAllocation: number;
  /** Next expected seq per device stream. */
  expect: { dma: bigint; ats: bigint; pri: bigint };
  invSeq: bigint;
  priRespSeq: bigint;
  priOutstanding: number;
  groups: Map<number, PageRequest[]>;
}

const key = (rid: number, pasid: number | undefined) => `${rid}:${pasid ?? "-"}`;

export class FakeHost {
  readonly name: string;
  readonly mem: Uint8Array;
  epoch = 1n;
  stu: number;
  allowTranslated: boolean;
  /** Every message received (when recording). */
  readonly log = { dma: [] as DmaBatch[], ats: [] as AtsRequest[], pri: [] as PageRequest[], register: [] as DeviceRegister[] };
  readonly counts = { dmaBatches: 0, dmaOps: 0, translatedOps: 0, atsRequests: 0, atsTranslations: 0, pageRequests: 0, registers: 0, unregisters: 0 };
  /** Sequence anomalies seen on device → host streams. */
  seqErrors = 0;
  /** Page requests received beyond the RID's allocation. */
  creditViolations = 0;
  /** Highest page requests outstanding per RID. */
  readonly priMaxOutstanding = new Map<number, number>();
  /** Page request group policy; the default answers Invalid Request. */
  onPageRequestGroup: PriPolicy = () => PrgResponseCode.INVALID_REQUEST;
  /** Awaited before a DmaBatch is performed (hold replies to test in-flight DMA). */
  dmaGate: ((req: DmaBatch) => Promise<void> | void) | undefined;
  /** Awaited before an AtsRequest is answered (race invalidations against translations). */
  atsGate: ((req: AtsRequest) => Promise<void> | void) | undefined;
  /** RIDs whose ATS requests get UR (ATS not permitted). */
  readonly atsUr = new Set<number>();
  readonly events = new EventEmitter();
  readonly bus: Bus;
  private readonly maps = new Map<string, Map<bigint, Perm>>();
  private readonly rids = new Map<number, RidState>();
  private readonly subs: Subscription[] = [];
  private hostUpSeq = 0n;
  private readonly opts: FakeHostOptions;

  private constructor(bus: Bus, opts: FakeHostOptions) {
    this.bus = bus;
    this.opts = opts;
    this.name = opts.name ?? "fake-host";
    this.mem = new Uint8Array(opts.memoryBytes ?? 16 << 20);
    this.stu = opts.stu ?? 0;
    this.allowTranslated = opts.allowTranslated ?? true;
    this.events.setMaxListeners(100);
  }

  static async start(opts: FakeHostOptions): Promise<FakeHost> {
    const log = opts.log ?? createLogger(opts.name ?? "fake-host", "silent");
    const bus = await Bus.connect({ url: opts.natsUrl, name: opts.name ?? "fake-host", log });
    const h = new FakeHost(bus, opts);
    h.listen();
    await bus.flush();
    if (opts.announce ?? true) await h.publishHostUp();
    return h;
  }

  private get recording(): boolean {
    return this.opts.record ?? true;
  }

  private listen(): void {
    const b = this.bus;
    this.subs.push(b.serve(subjects.register, DeviceRegisterSchema, DeviceRegisterReplySchema, (r) => this.onRegister(r)));
    this.subs.push(
      b.serve("iommu.v1.dev.unregister", DeviceUnregisterSchema, DeviceUnregisterReplySchema, (r) => {
        const st = this.rids.get(r.rid);
        if (!st) throw new ErrnoError("ENOENT", "not registered");
        if (st.reg.process !== r.process) throw new ErrnoError("EPERM", "registered by another process");
        this.rids.delete(r.rid);
        this.counts.unregisters++;
        this.events.emit("unregister", r);
        return { seq: r.seq, rid: r.rid };
      }),
    );
    this.subs.push(
      b.serve("iommu.v1.dev.*.dma", DmaBatchSchema, DmaBatchResultSchema, async (req, ctx) => {
        if (this.dmaGate) await this.dmaGate(req);
        return this.onDma(req, ctx.subject);
      }),
    );
    this.subs.push(
      b.serve("iommu.v1.dev.*.ats", AtsRequestSchema, AtsResultSchema, async (req, ctx) => {
        if (this.atsGate) await this.atsGate(req);
        return this.onAts(req, ctx.subject);
      }),
    );
    this.subs.push(b.subscribe("iommu.v1.dev.*.pri", PageRequestSchema, (req, ctx) => this.onPageRequest(req, ctx.subject)));
    this.subs.push(
      b.serve(subjects.ping(this.name), PingSchema, PongSchema, (p) => ({
        seq: p.seq,
        payload: p.responseSize > 0 ? new Uint8Array(p.responseSize) : p.payload,
        process: this.name,
        sentUnixNanos: p.sentUnixNanos,
      })),
    );
  }

  async stop(): Promise<void> {
    for (const s of this.subs) s.unsubscribe();
    await this.bus.close();
  }

  // ---- host lifecycle ------------------------------------------------------

  async publishHostUp(): Promise<void> {
    this.bus.publish(subjects.hostUp, HostUpSchema, { seq: ++this.hostUpSeq, hostEpoch: this.epoch, process: this.name });
    await this.bus.flush();
  }

  /**
   * A host restart: every registration (and, unless keepMappings, every
   * mapping) is forgotten and the epoch changes; memory is kept so tests can
   * compare across it. With announce (default) a HostUp is published.
   */
  async restart(opts: { announce?: boolean; keepMappings?: boolean } = {}): Promise<void> {
    this.rids.clear();
    if (!opts.keepMappings) this.maps.clear();
    this.epoch++;
    this.hostUpSeq = 0n;
    if (opts.announce ?? true) await this.publishHostUp();
  }

  isRegistered(rid: number): boolean {
    return this.rids.has(rid);
  }

  registration(rid: number): DeviceRegister | undefined {
    return this.rids.get(rid)?.reg;
  }

  // ---- memory and mappings -------------------------------------------------

  /** Map [iova, iova+size) → [pa, pa+size) for (rid, pasid), page by page. */
  map(rid: number, iova: bigint, pa: bigint, size: number, perm: { r?: boolean; w?: boolean } = {}, pasid?: number): void {
    let m = this.maps.get(key(rid, pasid));
    if (!m) {
      m = new Map();
      this.maps.set(key(rid, pasid), m);
    }
    for (let o = 0n; o < BigInt(size); o += 4096n) m.set((iova + o) >> 12n, { pa: pa + o, r: perm.r ?? true, w: perm.w ?? true });
  }

  unmap(rid: number, iova: bigint, size: number, pasid?: number): void {
    const m = this.maps.get(key(rid, pasid));
    for (let o = 0n; o < BigInt(size); o += 4096n) m?.delete((iova + o) >> 12n);
  }

  read(pa: bigint, len: number): Uint8Array {
    return this.mem.slice(Number(pa), Number(pa) + len);
  }

  write(pa: bigint, data: Uint8Array): void {
    this.mem.set(data, Number(pa));
  }

  private lookup(rid: number, pasid: number | undefined, addr: bigint): Perm | undefined {
    return this.maps.get(key(rid, pasid))?.get(addr >> 12n);
  }

  // ---- waiting on events ---------------------------------------------------

  /** Resolve when `pred` holds (checked now and after every message), or reject after timeoutMs. */
  waitFor(pred: () => boolean, timeoutMs = 5000, what = "condition"): Promise<void> {
    if (pred()) return Promise.resolve();
    return new Promise((resolve, reject) => {
      const check = () => {
        if (!pred()) return;
        cleanup();
        resolve();
      };
      const t = setTimeout(() => {
        cleanup();
        reject(new Error(`fake host: timed out after ${timeoutMs} ms waiting for ${what}`));
      }, timeoutMs);
      const cleanup = () => {
        clearTimeout(t);
        this.events.off("any", check);
      };
      this.events.on("any", check);
    });
  }

  private emit(kind: string, msg: unknown): void {
    this.events.emit(kind, msg);
    this.events.emit("any", kind, msg);
  }

  // ---- handlers --------------------------------------------------------------

  private ridOf(subject: string): number {
    return Number.parseInt(subject.split(".")[3], 16);
  }

  private checkSeq(st: RidState, stream: "dma" | "ats" | "pri", seq: bigint): void {
    if (seq !== st.expect[stream]) this.seqErrors++;
    if (seq >= st.expect[stream]) st.expect[stream] = seq + 1n;
  }

  private onRegister(r: DeviceRegister) {
    this.counts.registers++;
    if (this.recording) this.log.register.push(r);
    const old = this.rids.get(r.rid);
    if (old && old.reg.process !== r.process) throw new ErrnoError("EEXIST", `rid ${r.rid} registered by ${old.reg.process}`);
    if (r.pri && !r.ats) throw new ErrnoError("EINVAL", "PRI without ATS");
    const maxBatch = Math.min(r.maxBatch || 1024, this.opts.maxBatch ?? 1024);
    const priAllocation = r.pri ? Math.min(r.priOutstandingCapacity, this.opts.priAllocation ?? r.priOutstandingCapacity) : 0;
    this.rids.set(r.rid, {
      reg: r,
      maxBatch,
      priAllocation,
      expect: { dma: 1n, ats: 1n, pri: 1n },
      invSeq: 0n,
      priRespSeq: 0n,
      priOutstanding: 0,
      groups: new Map(),
    });
    this.emit("register", r);
    return { seq: r.seq, rid: r.rid, iommuId: "fake0", stu: r.ats ? this.stu : 0, priOutstandingAllocation: priAllocation, maxBatch, hostEpoch: this.epoch };
  }

  private state(rid: number, subject: string, msgRid: number): RidState {
    if (msgRid !== rid) throw new ErrnoError("EINVAL", `rid ${msgRid} does not match subject ${subject}`);
    const st = this.rids.get(rid);
    if (!st) throw new ErrnoError("ENODEV", `rid ${rid.toString(16)} is not registered`);
    return st;
  }

  private onDma(req: DmaBatch, subject: string) {
    const rid = this.ridOf(subject);
    const st = this.state(rid, subject, req.rid);
    if (req.ops.length === 0) throw new ErrnoError("EINVAL", "empty batch");
    if (req.ops.length > st.maxBatch) throw new ErrnoError("E2BIG", `${req.ops.length} ops above max_batch ${st.maxBatch}`);
    this.checkSeq(st, "dma", req.seq);
    this.counts.dmaBatches++;
    this.counts.dmaOps += req.ops.length;
    if (this.recording) this.log.dma.push(req);
    const results: DmaOpResultInit[] = req.ops.map((op) => {
      const read = op.kind === DmaOpKind.READ;
      if (op.kind !== DmaOpKind.READ && op.kind !== DmaOpKind.WRITE) return { status: DmaStatus.UR };
      const length = read ? op.length : op.data.length;
      if (op.at === PcieAddressType.TRANSLATED) {
        this.counts.translatedOps++;
        if (!this.allowTranslated)
          return { status: DmaStatus.FAULT, fault: { kind: FaultKind.TRANSLATION_FORBIDDEN, level: -1, inputAddress: op.addr, write: !read } };
        if (op.addr + BigInt(length) > BigInt(this.mem.length)) return { status: DmaStatus.CA };
        if (read) return { status: DmaStatus.OK, data: this.read(op.addr, length), done: length };
        this.write(op.addr, op.data);
        return { status: DmaStatus.OK, done: length };
      }
      if (op.at !== PcieAddressType.UNTRANSLATED) return { status: DmaStatus.UR };
      const pasid = op.pasidValid ? op.pasid : undefined;
      const out = read ? new Uint8Array(length) : undefined;
      let done = 0;
      while (done < length) {
        const addr = op.addr + BigInt(done);
        const p = this.lookup(rid, pasid, addr);
        const n = Math.min(length - done, 4096 - Number(addr & 0xfffn));
        if (!p || (read ? !p.r : !p.w)) {
          return {
            status: DmaStatus.FAULT,
            done,
            fault: { kind: p ? FaultKind.PERMISSION : FaultKind.TRANSLATION, stage: 1, level: 3, inputAddress: addr, write: !read, detail: "fake host" },
          };
        }
        const pa = p.pa + (addr & 0xfffn);
        if (pa + BigInt(n) > BigInt(this.mem.length)) return { status: DmaStatus.CA, done };
        if (out) out.set(this.mem.subarray(Number(pa), Number(pa) + n), done);
        else this.mem.set(op.data.subarray(done, done + n), Number(pa));
        done += n;
      }
      return { status: DmaStatus.OK, data: out, done };
    });
    this.emit("dma", req);
    return { rid, seq: req.seq, results };
  }

  private onAts(req: AtsRequest, subject: string) {
    const rid = this.ridOf(subject);
    const st = this.state(rid, subject, req.rid);
    if (req.requests.length > st.maxBatch) throw new ErrnoError("E2BIG", `${req.requests.length} requests above max_batch ${st.maxBatch}`);
    this.checkSeq(st, "ats", req.seq);
    this.counts.atsRequests++;
    this.counts.atsTranslations += req.requests.length;
    if (this.recording) this.log.ats.push(req);
    const sizeLog2 = 12 + this.stu;
    const span = 1n << BigInt(sizeLog2);
    const completions = req.requests.map((t) => {
      if (this.atsUr.has(rid)) return { status: AtsCompletionStatus.UR };
      const pasid = t.pasidValid ? t.pasid : undefined;
      const base = t.addr & ~(span - 1n);
      const first = this.lookup(rid, pasid, base);
      let ok = !!first;
      // The whole STU-sized range must be mapped contiguously with the same permissions.
      for (let o = 4096n; ok && o < span; o += 4096n) {
        const p = this.lookup(rid, pasid, base + o);
        ok = !!p && !!first && p.pa === first.pa + o && p.r === first.r && p.w === first.w;
      }
      if (!ok || !first) {
        return {
          status: AtsCompletionStatus.SUCCESS,
          sizeLog2,
          fault: { kind: FaultKind.TRANSLATION, stage: 1, level: 3, inputAddress: t.addr, detail: "fake host: not mapped" },
        };
      }
      return { status: AtsCompletionStatus.SUCCESS, translatedAddr: first.pa, sizeLog2, r: first.r, w: first.w, exe: first.r, priv: true };
    });
    this.emit("ats", req);
    return { rid, seq: req.seq, completions };
  }

  private onPageRequest(req: PageRequest, subject: string): void {
    const rid = this.ridOf(subject);
    const st = this.rids.get(rid);
    if (!st || req.rid !== rid) {
      this.seqErrors++;
      return;
    }
    this.checkSeq(st, "pri", req.seq);
    this.counts.pageRequests++;
    if (this.recording) this.log.pri.push(req);
    st.priOutstanding++;
    if (st.priOutstanding > st.priAllocation) this.creditViolations++;
    this.priMaxOutstanding.set(rid, Math.max(this.priMaxOutstanding.get(rid) ?? 0, st.priOutstanding));
    const g = st.groups.get(req.prgIndex) ?? [];
    g.push(req);
    st.groups.set(req.prgIndex, g);
    this.emit("pri", req);
    if (!req.last) return;
    st.groups.delete(req.prgIndex);
    void Promise.resolve(this.onPageRequestGroup(rid, g)).then((code) => {
      if (code === undefined) return;
      this.respondPri(rid, req.prgIndex, code, g.length, req.pasidValid ? req.pasid : undefined);
    });
  }

  /** Publish a page group response (the policy calls this; tests may call it by hand). */
  respondPri(rid: number, prgIndex: number, code: PrgResponseCode, groupSize = 0, pasid?: number): void {
    const st = this.rids.get(rid);
    if (st) st.priOutstanding = Math.max(0, st.priOutstanding - groupSize);
    const seq = st ? ++st.priRespSeq : 1n;
    this.bus.publish(subjects.priResp(rid), PageGroupResponseSchema, {
      rid,
      seq,
      pasid: pasid ?? 0,
      pasidValid: pasid !== undefined,
      prgIndex,
      responseCode: code,
    });
  }

  /** Send one ATC invalidation and wait for its completion (ETIMEDOUT when the device does not answer). */
  async invalidateAtc(rid: number, entries: InvEntryInit[], timeoutMs = 2000): Promise<AtcInvalidateCompletion> {
    const st = this.rids.get(rid);
    const seq = st ? ++st.invSeq : 1n;
    return this.bus.request(subjects.atcInv(rid), AtcInvalidateSchema, { rid, seq, entries }, AtcInvalidateCompletionSchema, { timeoutMs });
  }
}
