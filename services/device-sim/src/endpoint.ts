// One simulated PCIe function: its registration with the host, its bus
// streams (numbered per bus.proto), its ATC and ATS requester, its PRI
// engine, its Invalidate Request handler and its counters. The access path
// (ATC → ATS → PRI → DMA) lives in dma.ts and runs on engines created here.
//
// Registration (bus/v1/register.proto): register before the first DMA,
// retrying until a host answers; again on a HostUp with a new host_epoch and
// on an ENODEV error reply. Every successful registration starts new
// streams: our .dma/.ats/.pri numbering restarts at 1, the host's
// .atc-inv/.pri-resp numbering is expected from 1, the ATC is flushed (the
// host's memory and tables may be gone) and PRI is reset with the new
// allocation. Batches composed before a registration are never sent after it
// (their translated addresses may be stale): they fail with ENODEV and the
// access layer retries them once from the start.
import { create, fromBinary, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { type Bus, ErrnoError, errnoToHeaders, type Logger, ridToken, subjects, toErrnoError } from "@iommufd/kit";
import {
  type AtcInvalidate,
  AtcInvalidateCompletionSchema,
  AtcInvalidateSchema,
  AtsCompletionStatus,
  AtsRequestSchema,
  AtsResultSchema,
  type AtsTranslationCompletion,
  type AtsTranslationRequestSchema,
  DeviceRegisterReplySchema,
  DeviceRegisterSchema,
  DeviceUnregisterReplySchema,
  DeviceUnregisterSchema,
  DmaBatchResultSchema,
  DmaBatchSchema,
  DmaOpKind,
  type DmaOpResult,
  type DmaOpSchema,
  DmaStatus,
  type HostUp,
  PageGroupResponseSchema,
  PageRequestSchema,
  PcieAddressType,
} from "@iommufd/proto/bus";
import { type Msg, headers as natsHeaders, type Subscription } from "nats";
import { type AtcInvalidation, type AtsRecord, DeviceAtc } from "./atc-port.js";
import { Batcher } from "./batcher.js";
import type { EndpointConfig } from "./config.js";
import { DmaEngine } from "./dma.js";
import { LatencyHistogram } from "./histogram.js";
import { PriEngine } from "./pri.js";
import { SeqCounter, SeqTracker, type SeqVerdict } from "./seq.js";

const CORRELATION_HEADER = "x-correlation-id";
export const UNREGISTER_SUBJECT = subjects.unregister;

/** Ways to break the rules (device.v1.Misbehaviour, same field names). */
export interface MisbehaviourSettings {
  ignoreAtcInvalidations: boolean;
  dropAtcInvalidations: boolean;
  atcCompletionDelayMs: number;
  exceedPriCredits: boolean;
  dmaOutsideMappings: boolean;
  forgeTranslatedAddresses: boolean;
}

export const NO_MISBEHAVIOUR: Readonly<MisbehaviourSettings> = {
  ignoreAtcInvalidations: false,
  dropAtcInvalidations: false,
  atcCompletionDelayMs: 0,
  exceedPriCredits: false,
  dmaOutsideMappings: false,
  forgeTranslatedAddresses: false,
};

/** What the host granted at registration (bus.v1.DeviceRegisterReply). */
export interface Grant {
  iommuId: string;
  stu: number;
  priAllocation: number;
  maxBatch: number;
  hostEpoch: bigint;
}

export interface EndpointCounters {
  registrations: number;
  /** Registration attempts that failed (no host, error reply, timeout). */
  registerFailures: number;
  dmaOps: number;
  dmaBatches: number;
  bytesRead: number;
  bytesWritten: number;
  atcHits: number;
  atcMisses: number;
  /** Invalidate Requests (entries) received. */
  atcInvalidations: number;
  /** AtcInvalidate messages received. */
  atcInvalidateMessages: number;
  /** Of those, not answered (Misbehaviour.drop_atc_invalidations). */
  atcInvalidateDropped: number;
  /** Of those, answered without invalidating (Misbehaviour.ignore_atc_invalidations). */
  atcInvalidateIgnored: number;
  atsRequests: number;
  atsBatches: number;
  atsFailures: number;
  /** Accesses that ended in a fault. */
  faults: number;
  retries: number;
  unsupportedRequests: number;
  completerAborts: number;
  /** Replies whose seq or rid did not match the request (dropped from accounting, logged). */
  replyMismatches: number;
}

export interface EndpointDeps {
  bus: Bus;
  /** Process name (DeviceRegister.process, the "<process>/" of the registered name). */
  processName: string;
  log: Logger;
  /** Numbering of iommu.v1.dev.register (one stream per process). */
  registerSeq: SeqCounter;
  requestTimeoutMs: number;
  priTimeoutMs: number;
}

/** One item of a DMA batch: the op and the registration it was composed under. */
export interface DmaItem {
  op: MessageInitShape<typeof DmaOpSchema>;
  gen: number;
}

interface AtsItem {
  req: MessageInitShape<typeof AtsTranslationRequestSchema>;
  gen: number;
}

/** Largest payload per batch we aim for (NATS max_payload is 1 MiB by default). */
const DEFAULT_MAX_BATCH_BYTES = 512 * 1024;

function sleep(ms: number, signal?: { wake?: () => void }): Promise<void> {
  return new Promise((resolve) => {
    const t = setTimeout(resolve, ms);
    if (signal)
      signal.wake = () => {
        clearTimeout(t);
        resolve();
      };
  });
}

export class Endpoint {
  readonly rid: number;
  readonly log: Logger;
  grant: Grant | undefined;
  registered = false;
  /** Bumped by every successful registration; batches carry the value they were built under. */
  gen = 0;
  misbehaviour: MisbehaviourSettings = { ...NO_MISBEHAVIOUR };
  readonly counters: EndpointCounters = {
    registrations: 0,
    registerFailures: 0,
    dmaOps: 0,
    dmaBatches: 0,
    bytesRead: 0,
    bytesWritten: 0,
    atcHits: 0,
    atcMisses: 0,
    atcInvalidations: 0,
    atcInvalidateMessages: 0,
    atcInvalidateDropped: 0,
    atcInvalidateIgnored: 0,
    atsRequests: 0,
    atsBatches: 0,
    atsFailures: 0,
    faults: 0,
    retries: 0,
    unsupportedRequests: 0,
    completerAborts: 0,
    replyMismatches: 0,
  };
  /** Per-batch round-trip latency (.dma requests). */
  readonly latency = new LatencyHistogram();
  readonly atc: DeviceAtc | undefined;
  readonly pri: PriEngine | undefined;
  /** The engine the control API's Dma uses (the endpoint's own batch and in-flight limits). */
  readonly dma: DmaEngine;
  /** Workloads running on this endpoint (ids). */
  readonly workloadIds = new Set<string>();

  readonly seq = { dma: new SeqCounter(), ats: new SeqCounter(), pri: new SeqCounter() };
  /** Host → device streams of this endpoint (host.up is tracked by the process and reported here too). */
  readonly tracked = { atcInv: new SeqTracker(), priResp: new SeqTracker() };
  /** Gaps seen on host.up (process-wide stream), added by the DeviceSim. */
  hostUpGaps = 0;

  private readonly atsBatcher: Batcher<AtsItem, AtsTranslationCompletion>;
  private readonly atsInFlight = new Map<string, AtsRecord>();
  private subs: Subscription[] = [];
  private stopped = false;
  private regLoop: Promise<void> | undefined;
  private regWake: { wake?: () => void } = {};
  /** A HostUp arrived while registering: its epoch, to check against the reply. */
  private hostUpDuringRegistration: bigint | undefined;
  private regWaiters: (() => void)[] = [];
  private lastRegisterError = "";

  constructor(
    readonly cfg: EndpointConfig,
    private readonly deps: EndpointDeps,
  ) {
    this.rid = cfg.rid;
    this.log = deps.log.child({ component: "endpoint", ep: cfg.name, rid: ridToken(cfg.rid) });
    if (cfg.ats) this.atc = new DeviceAtc(cfg.atcEntries);
    if (cfg.pri)
      this.pri = new PriEngine({
        publish: (r) => this.publishPageRequest(r),
        exceedCredits: () => this.misbehaviour.exceedPriCredits,
        timeoutMs: deps.priTimeoutMs,
        warn: (o, m) => this.log.warn(o, m),
      });
    this.atsBatcher = new Batcher<AtsItem, AtsTranslationCompletion>({
      maxItems: cfg.maxBatch,
      maxBytes: 1 << 20,
      maxInFlight: cfg.inFlight,
      sizeOf: () => 32,
      send: (items) => this.sendAtsBatch(items),
    });
    this.dma = this.engine({ maxItems: cfg.maxBatch, maxInFlight: cfg.inFlight });
  }

  get name(): string {
    return this.cfg.name;
  }

  /** Largest batch: what we asked for, capped by the host's grant. */
  get maxBatch(): number {
    const g = this.grant?.maxBatch ?? 0;
    return g > 0 ? Math.min(g, this.cfg.maxBatch) : this.cfg.maxBatch;
  }

  /** Payload bytes per batch: ours, capped by the server's max_payload. */
  get maxBatchBytes(): number {
    const mp = this.deps.bus.nc.info?.max_payload ?? 1 << 20;
    return Math.max(4096, Math.min(DEFAULT_MAX_BATCH_BYTES, mp - 64 * 1024));
  }

  /** ATS Smallest Translation Unit in bytes (4 KiB until granted). */
  stuBytes = 4096n;

  get requestTimeoutMs(): number {
    return this.deps.requestTimeoutMs;
  }

  /** A DMA engine with its own batching limits (workloads, benchmarks). */
  engine(limits: { maxItems: number; maxInFlight: number }): DmaEngine {
    return new DmaEngine(this, limits);
  }

  // ---- lifecycle -----------------------------------------------------------

  /** Listen on the host → device subjects, then register (in the background, retrying). */
  start(): void {
    const bus = this.deps.bus;
    this.subs.push(
      bus.nc.subscribe(subjects.atcInv(this.rid), {
        callback: (err, m) => {
          if (err) this.log.error({ err }, "atc-inv subscription error");
          else void this.onAtcInvalidate(m);
        },
      }),
    );
    this.subs.push(bus.subscribe(subjects.priResp(this.rid), PageGroupResponseSchema, (r) => this.onPageGroupResponse(r)));
    this.requestRegistration("start");
  }

  async stop(unregister: boolean): Promise<void> {
    this.stopped = true;
    this.regWake.wake?.();
    for (const s of this.subs) s.unsubscribe();
    this.subs = [];
    this.pri?.reset(0);
    if (unregister && this.registered) {
      this.registered = false;
      await this.deps.bus
        .request(UNREGISTER_SUBJECT, DeviceUnregisterSchema, { seq: this.deps.registerSeq.next(), rid: this.rid, process: this.deps.processName }, DeviceUnregisterReplySchema, {
          timeoutMs: 500,
        })
        .then(() => this.log.info("unregistered"))
        .catch((e: unknown) => this.log.info({ errno: toErrnoError(e).errno }, "unregister not acknowledged"));
    }
    await this.regLoop;
  }

  /** Resolves once registered; ENOTCONN ("host unreachable") after timeoutMs. */
  whenRegistered(timeoutMs = this.deps.requestTimeoutMs): Promise<void> {
    if (this.registered) return Promise.resolve();
    if (this.stopped) return Promise.reject(new ErrnoError("ENOTCONN", `${this.name} is stopped`));
    return new Promise((resolve, reject) => {
      const waiter = () => {
        clearTimeout(t);
        resolve();
      };
      const t = setTimeout(() => {
        this.regWaiters = this.regWaiters.filter((w) => w !== waiter);
        reject(new ErrnoError("ENOTCONN", `host unreachable: rid ${ridToken(this.rid)} not registered within ${timeoutMs} ms`));
      }, timeoutMs);
      this.regWaiters.push(waiter);
    });
  }

  /** Register now (or again); a registration already under way is woken and finishes first. */
  requestRegistration(reason: string): void {
    if (this.stopped) return;
    if (this.regLoop) {
      this.regWake.wake?.();
      return;
    }
    this.regLoop = this.registerLoop(reason).finally(() => {
      this.regLoop = undefined;
    });
  }

  /** The host forgot us (ENODEV) or restarted (HostUp): register again. */
  lostRegistration(reason: string): void {
    if (this.registered) this.log.warn({ reason }, "registration lost; registering again");
    this.registered = false;
    this.requestRegistration(reason);
  }

  /** A HostUp (already sequence-checked by the process). */
  onHostUp(up: HostUp): void {
    if (this.regLoop) {
      this.hostUpDuringRegistration = up.hostEpoch;
      this.regWake.wake?.();
      return;
    }
    if (this.registered && this.grant?.hostEpoch === up.hostEpoch) return; // a repeat of the HostUp we registered with
    this.lostRegistration(`host up (epoch ${up.hostEpoch})`);
  }

  private async registerLoop(reason: string): Promise<void> {
    let delay = 50;
    this.log.debug({ reason }, "registering");
    while (!this.stopped) {
      const seq = this.deps.registerSeq.next();
      this.hostUpDuringRegistration = undefined;
      try {
        const reply = await this.deps.bus.request(
          subjects.register,
          DeviceRegisterSchema,
          {
            seq,
            rid: this.rid,
            name: `${this.deps.processName}/${this.cfg.name}`,
            process: this.deps.processName,
            iommuId: this.cfg.iommuId,
            maxPasidLog2: this.cfg.maxPasidLog2,
            pasidExec: this.cfg.pasidExec,
            pasidPriv: this.cfg.pasidPriv,
            ats: this.cfg.ats,
            atcEntries: this.cfg.ats ? this.cfg.atcEntries : 0,
            atsInvalidateQueueDepth: this.cfg.atsInvalidateQueueDepth,
            atsGlobalInvalidate: this.cfg.atsGlobalInvalidate,
            pri: this.cfg.pri,
            priOutstandingCapacity: this.cfg.pri ? this.cfg.priOutstandingCapacity : 0,
            maxBatch: this.cfg.maxBatch,
          },
          DeviceRegisterReplySchema,
          { timeoutMs: Math.min(this.deps.requestTimeoutMs, 2000) },
        );
        if (this.stopped) return;
        if (reply.seq !== seq || reply.rid !== this.rid) {
          this.counters.replyMismatches++;
          throw new ErrnoError("EIO", `register reply (seq ${reply.seq}, rid ${ridToken(reply.rid)}) does not match its request (seq ${seq})`);
        }
        const upEpoch = this.hostUpDuringRegistration;
        if (upEpoch !== undefined && upEpoch !== reply.hostEpoch) {
          // A host started while we were registering with the previous one: register with the new one.
          this.log.info({ replyEpoch: String(reply.hostEpoch), hostUpEpoch: String(upEpoch) }, "host restarted during registration; registering again");
          continue;
        }
        this.applyGrant({
          iommuId: reply.iommuId,
          stu: reply.stu,
          priAllocation: Math.min(reply.priOutstandingAllocation, this.cfg.priOutstandingCapacity),
          maxBatch: reply.maxBatch,
          hostEpoch: reply.hostEpoch,
        });
        return;
      } catch (e) {
        const err = toErrnoError(e);
        this.counters.registerFailures++;
        const key = `${err.errno}:${err.message}`;
        if (key !== this.lastRegisterError) this.log.warn({ errno: err.errno, msg: err.message, retryMs: delay }, "registration failed; retrying");
        else this.log.debug({ errno: err.errno }, "registration failed; retrying");
        this.lastRegisterError = key;
        await sleep(delay, this.regWake);
        this.regWake = {};
        delay = Math.min(delay * 2, 2000);
      }
    }
  }

  private applyGrant(g: Grant): void {
    const previous = this.grant;
    this.grant = g;
    this.stuBytes = 4096n << BigInt(Math.min(g.stu, 40));
    this.gen++;
    this.counters.registrations++;
    // New streams both ways (see the file comment).
    this.seq.dma.reset();
    this.seq.ats.reset();
    this.seq.pri.reset();
    this.tracked.atcInv.reset();
    this.tracked.priResp.reset();
    this.atc?.flush();
    this.pri?.reset(this.cfg.pri ? g.priAllocation : 0);
    this.atsBatcher.configure({ maxItems: this.maxBatch });
    this.registered = true;
    this.lastRegisterError = "";
    this.log.info(
      {
        iommuId: g.iommuId,
        stu: g.stu,
        priAllocation: g.priAllocation,
        maxBatch: this.maxBatch,
        hostEpoch: String(g.hostEpoch),
        again: previous !== undefined,
      },
      "registered",
    );
    const w = this.regWaiters;
    this.regWaiters = [];
    for (const f of w) f();
  }

  // ---- sequence checks on host → device streams ----------------------------

  private noteSeq(stream: string, v: SeqVerdict, seq: bigint): void {
    if (v.kind === "in-order") return;
    if (v.kind === "gap")
      this.log.warn({ stream, seq: String(seq), expected: String(v.expected), missing: String(v.missing) }, "sequence gap: messages lost");
    else if (v.kind === "late") this.log.warn({ stream, seq: String(seq) }, "sequence: late (reordered) message");
    else this.log.warn({ stream, seq: String(seq) }, "sequence: duplicate message");
  }

  /** Gap events on host → device streams (EndpointStats.sequence_gaps). */
  get sequenceGaps(): number {
    return this.tracked.atcInv.counters.gaps + this.tracked.priResp.counters.gaps + this.hostUpGaps;
  }

  get sequenceDuplicates(): number {
    return this.tracked.atcInv.counters.duplicates + this.tracked.priResp.counters.duplicates;
  }

  // ---- DMA and ATS requests --------------------------------------------------

  /** Send one DmaBatch (called by the engines' batchers). */
  async sendDmaBatch(items: DmaItem[]): Promise<DmaOpResult[]> {
    await this.whenRegistered();
    if (items.some((i) => i.gen !== this.gen && i.op.at === PcieAddressType.TRANSLATED)) {
      throw new ErrnoError("ENODEV", "registration changed since the batch was built (translated addresses may be stale)");
    }
    const gen = this.gen;
    const seq = this.seq.dma.next();
    const ops = items.map((i) => i.op);
    this.counters.dmaBatches++;
    this.counters.dmaOps += ops.length;
    const t0 = process.hrtime.bigint();
    let reply;
    try {
      reply = await this.deps.bus.request(subjects.dma(this.rid), DmaBatchSchema, { rid: this.rid, seq, ops }, DmaBatchResultSchema, {
        timeoutMs: this.deps.requestTimeoutMs,
      });
    } catch (e) {
      // Only the registration the batch was sent under is lost (a later one may already be in place).
      if (e instanceof ErrnoError && e.errno === "ENODEV" && gen === this.gen) this.lostRegistration("ENODEV on .dma");
      throw e;
    }
    this.latency.record(Number(process.hrtime.bigint() - t0));
    if (reply.seq !== seq || reply.rid !== this.rid) {
      this.counters.replyMismatches++;
      this.log.warn({ seq: String(seq), replySeq: String(reply.seq), replyRid: reply.rid }, "DMA reply does not match its batch");
    }
    if (reply.results.length !== ops.length) throw new ErrnoError("EIO", `DMA reply has ${reply.results.length} results for ${ops.length} ops`);
    for (let i = 0; i < ops.length; i++) {
      const r = reply.results[i];
      if (r.status === DmaStatus.UR) this.counters.unsupportedRequests++;
      else if (r.status === DmaStatus.CA) this.counters.completerAborts++;
      if (ops[i].kind === DmaOpKind.READ) this.counters.bytesRead += r.status === DmaStatus.OK ? r.data.length : 0;
      else this.counters.bytesWritten += r.done;
    }
    return reply.results;
  }

  private async sendAtsBatch(items: AtsItem[]): Promise<AtsTranslationCompletion[]> {
    await this.whenRegistered();
    if (items.some((i) => i.gen !== this.gen)) throw new ErrnoError("ENODEV", "registration changed since the translation was requested");
    const gen = this.gen;
    const seq = this.seq.ats.next();
    this.counters.atsBatches++;
    this.counters.atsRequests += items.length;
    let reply;
    try {
      reply = await this.deps.bus.request(
        subjects.ats(this.rid),
        AtsRequestSchema,
        { rid: this.rid, seq, requests: items.map((i) => i.req) },
        AtsResultSchema,
        { timeoutMs: this.deps.requestTimeoutMs },
      );
    } catch (e) {
      if (e instanceof ErrnoError && e.errno === "ENODEV" && gen === this.gen) this.lostRegistration("ENODEV on .ats");
      throw e;
    }
    if (reply.seq !== seq || reply.rid !== this.rid) {
      this.counters.replyMismatches++;
      this.log.warn({ seq: String(seq), replySeq: String(reply.seq) }, "ATS reply does not match its request");
    }
    if (reply.completions.length !== items.length)
      throw new ErrnoError("EIO", `ATS reply has ${reply.completions.length} completions for ${items.length} requests`);
    for (const c of reply.completions) if (c.status !== AtsCompletionStatus.SUCCESS || (!c.r && !c.w)) this.counters.atsFailures++;
    return reply.completions;
  }

  /**
   * Translation requests for `pages`, batched with whatever else is being
   * asked, and shared with an identical request already in flight. The
   * caller holds each record and must release it (atc.releaseAts).
   */
  requestTranslations(pages: { pasid: number | undefined; page: bigint; noWrite: boolean; priv: boolean; exec: boolean }[]): AtsRecord[] {
    const atc = this.atc as DeviceAtc;
    const unit = this.stuBytes;
    return pages.map((p) => {
      const key = `${p.pasid ?? "-"}:${p.page}:${p.noWrite ? 1 : 0}${p.priv ? 1 : 0}${p.exec ? 1 : 0}`;
      const shared = this.atsInFlight.get(key);
      if (shared && !shared.poisoned) {
        shared.refs++;
        return shared;
      }
      const rec = atc.beginAts(p.pasid, p.page, unit);
      rec.ready = this.atsBatcher
        .push({
          req: { addr: p.page, pasid: p.pasid ?? 0, pasidValid: p.pasid !== undefined, noWrite: p.noWrite, priv: p.priv, exec: p.exec },
          gen: this.gen,
        })
        .then(
          (c) => {
            rec.completion = c;
          },
          (e: unknown) => {
            rec.error = e;
          },
        )
        .finally(() => {
          if (this.atsInFlight.get(key) === rec) this.atsInFlight.delete(key);
        });
      this.atsInFlight.set(key, rec);
      return rec;
    });
  }

  private publishPageRequest(r: { pasid: number | undefined; addr: bigint; r: boolean; w: boolean; x: boolean; priv: boolean; prgIndex: number; last: boolean }): void {
    this.deps.bus.publish(subjects.pri(this.rid), PageRequestSchema, {
      rid: this.rid,
      seq: this.seq.pri.next(),
      pasid: r.pasid ?? 0,
      pasidValid: r.pasid !== undefined,
      addr: r.addr,
      r: r.r,
      w: r.w,
      x: r.x,
      priv: r.priv,
      prgIndex: r.prgIndex,
      last: r.last,
    });
  }

  // ---- host → device messages ----------------------------------------------

  private onPageGroupResponse(r: { rid: number; seq: bigint; prgIndex: number; responseCode: number }): void {
    const v = this.tracked.priResp.observe(r.seq);
    this.noteSeq("pri-resp", v, r.seq);
    if (v.kind === "duplicate") return; // never act on a response twice (credits would be returned twice)
    if (r.rid !== this.rid) {
      this.log.warn({ rid: r.rid }, "page group response for another RID dropped");
      return;
    }
    if (!this.pri) {
      this.log.warn({ prgIndex: r.prgIndex }, "page group response to an endpoint without PRI dropped");
      return;
    }
    this.pri.onResponse(r.prgIndex, r.responseCode);
  }

  private respond(m: Msg, body: Uint8Array, extra?: Record<string, string>): void {
    const h = natsHeaders();
    const cid = m.headers?.get(CORRELATION_HEADER);
    if (cid) h.set(CORRELATION_HEADER, cid);
    for (const [k, v] of Object.entries(extra ?? {})) h.set(k, v);
    m.respond(body, { headers: h });
  }

  /** An ATC invalidation request (host → device request/reply). */
  private async onAtcInvalidate(m: Msg): Promise<void> {
    let req: AtcInvalidate;
    try {
      req = fromBinary(AtcInvalidateSchema, m.data);
    } catch (e) {
      this.log.warn({ err: e }, "undecodable AtcInvalidate");
      this.respond(m, new Uint8Array(0), errnoToHeaders(new ErrnoError("EINVAL", "undecodable AtcInvalidate")));
      return;
    }
    const v = this.tracked.atcInv.observe(req.seq);
    this.noteSeq("atc-inv", v, req.seq);
    // A duplicate request is answered again (the invalidation is idempotent; the host drops the extra reply).
    this.counters.atcInvalidateMessages++;
    this.counters.atcInvalidations += req.entries.length;
    const fail = (errno: "EINVAL" | "EOPNOTSUPP", msg: string) => this.respond(m, new Uint8Array(0), errnoToHeaders(new ErrnoError(errno, msg)));
    if (req.rid !== this.rid) return fail("EINVAL", `rid ${ridToken(req.rid)} does not match the subject`);
    if (!this.atc) return fail("EOPNOTSUPP", "endpoint has no ATS capability");
    if (req.entries.length > 32) return fail("EINVAL", `${req.entries.length} entries: at most 32 ITags`);
    let itagVector = 0;
    const invs: AtcInvalidation[] = [];
    for (const e of req.entries) {
      if (e.itag > 31) return fail("EINVAL", `itag ${e.itag} above 31`);
      if (e.sizeLog2 < 12 || e.sizeLog2 > 64) return fail("EINVAL", `size_log2 ${e.sizeLog2} outside 12..64`);
      itagVector |= 1 << e.itag;
      invs.push({ pasid: e.pasidValid ? e.pasid : undefined, range: this.invRange(e.addr, e.sizeLog2), global: e.global });
    }
    const mis = this.misbehaviour;
    if (mis.dropAtcInvalidations) {
      this.counters.atcInvalidateDropped++;
      this.log.warn({ seq: String(req.seq), entries: req.entries.length }, "misbehaving: ATC invalidation dropped (no completion)");
      return;
    }
    let removed = 0;
    if (mis.ignoreAtcInvalidations) {
      this.counters.atcInvalidateIgnored++;
      this.log.warn({ seq: String(req.seq), entries: req.entries.length }, "misbehaving: ATC invalidation completed without invalidating");
    } else {
      const r = this.atc.invalidate(invs);
      removed = r.removed;
      await r.waitFor;
    }
    if (mis.atcCompletionDelayMs > 0) await sleep(mis.atcCompletionDelayMs);
    this.log.debug({ seq: String(req.seq), entries: req.entries.length, removed, itagVector }, "ATC invalidation complete");
    this.respond(m, toBinary(AtcInvalidateCompletionSchema, create(AtcInvalidateCompletionSchema, { rid: this.rid, seq: req.seq, itagVector: itagVector >>> 0 })));
  }

  /** An Invalidate Request's range, widened to the STU (the device caches nothing smaller). */
  private invRange(addr: bigint, sizeLog2: number): { start: bigint; size: bigint } | undefined {
    if (sizeLog2 >= 64) return undefined;
    const stuLog2 = 12 + (this.grant?.stu ?? 0);
    const size = 1n << BigInt(Math.max(sizeLog2, stuLog2));
    return { start: addr & ~(size - 1n), size };
  }
}
