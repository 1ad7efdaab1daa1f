// Workloads (device.v1.WorkloadSpec): DMA patterns an endpoint runs until
// their count or duration is reached or they are stopped. Each workload has
// its own DmaEngine, so its batch_ops and in_flight shape its batches:
// batch_ops × in_flight accesses are kept outstanding; the engine's Batcher
// sends them in batches of up to batch_ops with up to in_flight batches on
// the bus.
//
//   STREAM_READ / STREAM_WRITE  sequential op_size accesses over the region, wrapping
//   RANDOM                      op_size-aligned random offsets; read_percent % reads
//   SCATTER_GATHER              the segments cut into op_size accesses, cycled; read_percent % reads
//   COPY                        the region copied to dst_iova, op_size at a time (read, then write)
//   VERIFY                      a seeded pattern written over the region, read back and compared
//
// COPY and VERIFY work in whole passes: one pass unless count or duration_ms
// asks for more (checked between passes). The other kinds stop at `count`
// ops or `duration_ms`, or run until stopped.
//
// Misbehaviour.dma_outside_mappings: every 4th access of a workload goes one
// region length past its place (outside the region it was given), so the
// host sees DMA outside the mappings.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { create } from "@bufbuild/protobuf";
import { ErrnoError, toErrnoError } from "@iommufd/kit";
import { DmaStatus, type TranslationFault } from "@iommufd/proto/bus";
import { type WorkloadSpec, WorkloadKind, WorkloadSpecSchema, WorkloadState, type WorkloadStatusSchema } from "@iommufd/proto/device";
import type { AccessKind, DmaEngine } from "./dma.js";
import type { Endpoint } from "./endpoint.js";
import { LatencyHistogram } from "./histogram.js";
import { patternSlice, randomSeed, SplitMix64 } from "./rng.js";

export const MAX_OP_SIZE = 1 << 20;
const MAX_BATCH_OPS = 4096;
const MAX_IN_FLIGHT = 256;
const U64 = 1n << 64n;

/** Check a spec against the endpoint (errnos as device.proto says) and fill defaults. */
export function normalizeSpec(ep: Endpoint, s: WorkloadSpec): WorkloadSpec {
  const spec = create(WorkloadSpecSchema, s);
  if (spec.kind === WorkloadKind.UNSPECIFIED || WorkloadKind[spec.kind] === undefined) throw new ErrnoError("EINVAL", `workload kind ${spec.kind}`);
  if (spec.pasid !== undefined) {
    if (ep.cfg.maxPasidLog2 === 0) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no PASID capability`);
    if (spec.pasid >= 2 ** ep.cfg.maxPasidLog2) throw new ErrnoError("EINVAL", `pasid ${spec.pasid} ≥ 2^${ep.cfg.maxPasidLog2}`);
  }
  if (spec.priv) {
    if (spec.pasid === undefined) throw new ErrnoError("EINVAL", "priv travels in the PASID prefix: give a pasid");
    if (!ep.cfg.pasidPriv) throw new ErrnoError("EOPNOTSUPP", `${ep.name} does not support PASID Privileged Mode`);
  }
  if (spec.useAts && !ep.cfg.ats) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no ATS capability`);
  if (spec.opSize === 0) spec.opSize = 4096;
  if (spec.opSize > MAX_OP_SIZE) throw new ErrnoError("EINVAL", `op_size ${spec.opSize} above ${MAX_OP_SIZE}`);
  if (spec.batchOps === 0) spec.batchOps = ep.maxBatch;
  if (spec.batchOps > MAX_BATCH_OPS) throw new ErrnoError("EINVAL", `batch_ops ${spec.batchOps} above ${MAX_BATCH_OPS}`);
  if (spec.inFlight === 0) spec.inFlight = ep.cfg.inFlight;
  if (spec.inFlight > MAX_IN_FLIGHT) throw new ErrnoError("EINVAL", `in_flight ${spec.inFlight} above ${MAX_IN_FLIGHT}`);
  if (spec.readPercent > 100) throw new ErrnoError("EINVAL", `read_percent ${spec.readPercent} above 100`);
  if (spec.kind === WorkloadKind.SCATTER_GATHER) {
    if (spec.segments.length === 0) throw new ErrnoError("EINVAL", "SCATTER_GATHER needs segments");
    for (const g of spec.segments) {
      if (g.length === 0n) throw new ErrnoError("EINVAL", "empty segment");
      if (g.iova + g.length > U64) throw new ErrnoError("EOVERFLOW", "segment wraps the address space");
    }
  } else {
    if (spec.length === 0n) throw new ErrnoError("EINVAL", "region length is 0");
    if (spec.iova + spec.length > U64) throw new ErrnoError("EOVERFLOW", "region wraps the address space");
  }
  if (spec.kind === WorkloadKind.COPY) {
    if (spec.dstIova + spec.length > U64) throw new ErrnoError("EOVERFLOW", "destination wraps the address space");
    if (spec.dstIova < spec.iova + spec.length && spec.iova < spec.dstIova + spec.length) throw new ErrnoError("EINVAL", "COPY source and destination overlap");
  }
  if (spec.seed === 0n) spec.seed = randomSeed();
  return spec;
}

type Job = () => Promise<void>;

export class Workload {
  state = WorkloadState.RUNNING;
  ops = 0n;
  bytes = 0n;
  faults = 0n;
  errors = 0n;
  verifyMismatches = 0n;
  readonly latency = new LatencyHistogram();
  firstFault: TranslationFault | undefined;
  error = "";
  readonly done: Promise<void>;
  private readonly t0 = process.hrtime.bigint();
  private tEnd: bigint | undefined;
  private stopRequested = false;
  private failed = false;
  private readonly engine: DmaEngine;
  private readonly rng: SplitMix64;
  private readonly deadline: number;
  private opIndex = 0;
  private writeBuf: Uint8Array | undefined;

  constructor(
    readonly id: string,
    readonly ep: Endpoint,
    readonly spec: WorkloadSpec,
  ) {
    this.engine = ep.engine({ maxItems: spec.batchOps, maxInFlight: spec.inFlight });
    this.rng = new SplitMix64(spec.seed);
    this.deadline = spec.durationMs > 0 ? Date.now() + spec.durationMs : Number.POSITIVE_INFINITY;
    ep.workloadIds.add(id);
    this.done = this.run()
      .catch((e: unknown) => {
        this.failed = true;
        this.error = toErrnoError(e).toString();
      })
      .finally(() => {
        this.tEnd = process.hrtime.bigint();
        ep.workloadIds.delete(id);
        this.state = this.failed ? WorkloadState.FAILED : this.stopRequested ? WorkloadState.STOPPED : WorkloadState.DONE;
        ep.log.info({ workload: id, state: WorkloadState[this.state], ops: String(this.ops), faults: String(this.faults), errors: String(this.errors) }, "workload ended");
      });
  }

  /** Ask it to stop; resolves once its outstanding accesses have completed. */
  async stop(): Promise<void> {
    this.stopRequested = true;
    await this.done;
  }

  private get running(): boolean {
    return !this.stopRequested && !this.failed && Date.now() < this.deadline;
  }

  status(): MessageInitShape<typeof WorkloadStatusSchema> {
    return {
      workloadId: this.id,
      spec: this.spec,
      state: this.state,
      ops: this.ops,
      bytes: this.bytes,
      faults: this.faults,
      errors: this.errors,
      verifyMismatches: this.verifyMismatches,
      elapsedNs: (this.tEnd ?? process.hrtime.bigint()) - this.t0,
      latency: this.latency.toProto(),
      firstFault: this.firstFault,
      error: this.error,
    };
  }

  // ---- the runner ----------------------------------------------------------

  /** Run jobs from `next` with batch_ops × in_flight of them outstanding. */
  private async pool(next: () => Job | undefined): Promise<void> {
    const width = Math.max(1, this.spec.batchOps * this.spec.inFlight);
    const worker = async () => {
      while (this.running) {
        const job = next();
        if (!job) return;
        await job();
      }
    };
    await Promise.all(Array.from({ length: width }, worker));
  }

  /** Where access number `idx` really goes (dma_outside_mappings shifts every 4th one out of its region). */
  private place(iova: bigint, idx: number, span: bigint): bigint {
    if (this.ep.misbehaviour.dmaOutsideMappings && idx % 4 === 3) return iova + ((span + 0xfffn) & ~0xfffn);
    return iova;
  }

  /** One access with accounting; resolves with the data read (reads) or undefined. */
  private async access(kind: AccessKind, iova: bigint, length: number, data?: Uint8Array): Promise<Uint8Array | undefined> {
    const t = process.hrtime.bigint();
    this.ops++;
    try {
      const r = await this.engine.access(
        { kind, iova, length, data, pasid: this.spec.pasid, priv: this.spec.priv },
        this.spec.useAts,
      );
      this.latency.record(Number(process.hrtime.bigint() - t));
      this.bytes += BigInt(r.done);
      if (r.status === DmaStatus.OK) return kind === "read" ? r.data : undefined;
      if (r.status === DmaStatus.FAULT) {
        this.faults++;
        this.firstFault ??= r.fault;
        if (this.spec.stopOnFault) this.fail(`fault at 0x${iova.toString(16)}: ${r.fault?.detail || "translation fault"}`);
      } else {
        this.errors++;
        if (this.spec.stopOnFault) this.fail(`DMA ${DmaStatus[r.status]} at 0x${iova.toString(16)}`);
      }
      return undefined;
    } catch (e) {
      this.errors++;
      const err = toErrnoError(e);
      if (this.spec.stopOnFault) this.fail(err.toString());
      else await new Promise((r) => setTimeout(r, 20)); // host unreachable: do not spin
      return undefined;
    }
  }

  private fail(why: string): void {
    if (this.failed) return;
    this.failed = true;
    this.error = why;
  }

  private withinCount(): boolean {
    return this.spec.count === 0n || this.ops < this.spec.count;
  }

  private writeData(length: number): Uint8Array {
    if (!this.writeBuf || this.writeBuf.length < length) {
      const p = this.spec.pattern;
      const buf = new Uint8Array(Math.max(length, this.spec.opSize));
      if (p.length > 0) for (let i = 0; i < buf.length; i++) buf[i] = p[i % p.length];
      else buf.set(patternSlice(this.spec.seed, 0, buf.length));
      this.writeBuf = buf;
    }
    return this.writeBuf.subarray(0, length);
  }

  private async run(): Promise<void> {
    const s = this.spec;
    const op = BigInt(s.opSize);
    switch (s.kind) {
      case WorkloadKind.STREAM_READ:
      case WorkloadKind.STREAM_WRITE: {
        const read = s.kind === WorkloadKind.STREAM_READ;
        let off = 0n;
        return this.pool(() => {
          if (!this.withinCount()) return undefined;
          const idx = this.opIndex++;
          if (off >= s.length) off = 0n;
          const len = Number(s.length - off < op ? s.length - off : op);
          const iova = this.place(s.iova + off, idx, s.length);
          off += op;
          return async () => {
            await this.access(read ? "read" : "write", iova, len, read ? undefined : this.writeData(len));
          };
        });
      }
      case WorkloadKind.RANDOM: {
        const slots = Number((s.length + op - 1n) / op);
        return this.pool(() => {
          if (!this.withinCount()) return undefined;
          const idx = this.opIndex++;
          const off = BigInt(this.rng.below(slots)) * op;
          const len = Number(s.length - off < op ? s.length - off : op);
          const read = this.rng.below(100) < s.readPercent;
          const iova = this.place(s.iova + off, idx, s.length);
          return async () => {
            await this.access(read ? "read" : "write", iova, len, read ? undefined : this.writeData(len));
          };
        });
      }
      case WorkloadKind.SCATTER_GATHER: {
        const pieces: { iova: bigint; len: number }[] = [];
        for (const g of s.segments) for (let o = 0n; o < g.length; o += op) pieces.push({ iova: g.iova + o, len: Number(g.length - o < op ? g.length - o : op) });
        const span = s.segments.reduce((m, g) => (g.iova + g.length > m ? g.iova + g.length : m), 0n) - s.segments.reduce((m, g) => (g.iova < m ? g.iova : m), U64);
        let i = 0;
        return this.pool(() => {
          if (!this.withinCount()) return undefined;
          const idx = this.opIndex++;
          const pc = pieces[i++ % pieces.length];
          const read = this.rng.below(100) < s.readPercent;
          const iova = this.place(pc.iova, idx, span);
          return async () => {
            await this.access(read ? "read" : "write", iova, pc.len, read ? undefined : this.writeData(pc.len));
          };
        });
      }
      case WorkloadKind.COPY:
        do {
          let off = 0n;
          let idx = 0;
          await this.pool(() => {
            if (off >= s.length) return undefined;
            const o = off;
            const i = idx++;
            const len = Number(s.length - o < op ? s.length - o : op);
            off += op;
            return async () => {
              const data = await this.access("read", this.place(s.iova + o, i, s.length), len);
              if (data && data.length === len) await this.access("write", this.place(s.dstIova + o, i, s.length), len, data);
            };
          });
        } while (this.running && (s.count > 0n || s.durationMs > 0) && this.withinCount());
        return;
      case WorkloadKind.VERIFY: {
        let pass = 0n;
        do {
          const seed = s.seed + pass++;
          const passOf = (job: (o: bigint, i: number, len: number) => Job) => {
            let off = 0n;
            let idx = 0;
            return () => {
              if (off >= s.length) return undefined;
              const o = off;
              off += op;
              return job(o, idx++, Number(s.length - o < op ? s.length - o : op));
            };
          };
          const pattern = (o: bigint, len: number) => {
            if (s.pattern.length === 0) return patternSlice(seed, Number(o), len);
            const b = new Uint8Array(len);
            for (let k = 0; k < len; k++) b[k] = s.pattern[(Number(o) + k) % s.pattern.length];
            return b;
          };
          await this.pool(passOf((o, i, len) => async () => void (await this.access("write", this.place(s.iova + o, i, s.length), len, pattern(o, len)))));
          if (!this.running) break;
          await this.pool(
            passOf((o, i, len) => async () => {
              const got = await this.access("read", this.place(s.iova + o, i, s.length), len);
              if (!got) return;
              const want = pattern(o, len);
              let bad = 0;
              for (let k = 0; k < len; k++) if (got[k] !== want[k]) bad++;
              if (bad > 0) {
                this.verifyMismatches += BigInt(bad);
                this.ep.log.warn({ workload: this.id, iova: `0x${(s.iova + o).toString(16)}`, bad }, "VERIFY mismatch");
                if (s.stopOnFault) this.fail(`VERIFY: ${bad} bytes differ at 0x${(s.iova + o).toString(16)}`);
              }
            }),
          );
        } while (this.running && (s.count > 0n || s.durationMs > 0) && this.withinCount());
        return;
      }
      default:
        throw new ErrnoError("EINVAL", `workload kind ${s.kind}`);
    }
  }
}
