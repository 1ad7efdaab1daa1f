// Section 3: DMA throughput through the REAL host. The device-sim process's
// "dma" endpoint (SMMUv3, ATS) is bound to a session and attached to an IOAS
// with 4 MiB of user memory mapped; device.v1 workloads (STREAM_READ /
// STREAM_WRITE over that region) run for a fixed time at each op size, one op
// per round trip and batched + pipelined (64 ops × 8 batches), and as ATS
// reads from a warm ATC. Beside them, in the same run and at the same size:
// raw request/reply on NATS (kit Bus → the host's ping responder, the same
// process the DMA goes to, no IOMMU work), one and 8 in flight, and a raw
// publish stream (bench → peer sink, window-limited) as the bus's ceiling.
// A figure and its baseline run in alternating slices (3 rounds by default),
// so both see the same spells of machine load. A diagnostic row times the
// host's DMA path alone: the bench registered as a bare bus device sending
// one-op DmaBatches itself, without device-sim in between.
import { subjects } from "@iommufd/kit";
import { DmaBatchResultSchema, DmaBatchSchema, DmaOpKind, DmaStatus } from "@iommufd/proto/bus";
import { WorkloadKind, type WorkloadStatus } from "@iommufd/proto/device";
import { type BenchRow, judge, type Progress, Samples, timed } from "./common.js";
import { ioasWithDevices, runWorkload } from "./devices.js";
import { type BenchSystem, RID } from "./system.js";

const REGION = 4n << 20n;
const IOVA = 0x1000_0000n;

export interface DmaOptions {
  sizes: number[];
  durationMs: number;
  warmupMs: number;
  /** Unmeasured run of every shape first (fresh processes: the JIT has not compiled the hot paths yet). */
  globalWarmupMs: number;
  /** Alternating slices per figure and baseline (durationMs is split between them). */
  rounds: number;
  batch: number;
  inFlight: number;
}

let runNo = 0;

type Timed = Awaited<ReturnType<typeof timed>>;

/** Raw request/reply slices added up. */
class RawTotal {
  ops = 0;
  seconds = 0;
  failures = 0;
  readonly lat = new Samples();
  add(m: Timed, record: boolean): void {
    if (!record) return;
    this.ops += m.ops;
    this.seconds += m.seconds;
    this.failures += m.failures;
    for (const x of m.lat.xs) this.lat.add(x);
  }
  get rate(): number {
    return this.ops / this.seconds;
  }
}

type EndpointStats = Awaited<ReturnType<BenchSystem["device"]["rpc"]["stats"]>>["endpoints"][number] | undefined;

/** Workload slices added up: ops, time, latency histogram, ATC and batch counters. */
class DmaTotal {
  ops = 0;
  seconds = 0;
  hits = 0;
  misses = 0;
  batches = 0;
  sumNs = 0;
  readonly buckets = new Map<bigint, number>();
  add(st: WorkloadStatus, before: EndpointStats, after: EndpointStats): void {
    this.ops += Number(st.ops);
    this.seconds += Number(st.elapsedNs) / 1e9;
    this.hits += Number((after?.atcHits ?? 0n) - (before?.atcHits ?? 0n));
    this.misses += Number((after?.atcMisses ?? 0n) - (before?.atcMisses ?? 0n));
    this.batches += Number((after?.dmaBatches ?? 0n) - (before?.dmaBatches ?? 0n));
    this.sumNs += Number(st.latency?.sumNs ?? 0n);
    for (const b of st.latency?.buckets ?? []) this.buckets.set(b.leNs, (this.buckets.get(b.leNs) ?? 0) + Number(b.count));
  }
  get rate(): number {
    return this.ops / this.seconds;
  }
  get hitRate(): number {
    return this.hits + this.misses > 0 ? this.hits / (this.hits + this.misses) : Number.NaN;
  }
  get opsPerBatch(): number {
    return this.ops / Math.max(1, this.batches);
  }
  get meanUs(): number {
    return this.sumNs / Math.max(1, this.ops) / 1000;
  }
  /** Quantile as the upper bound of its histogram bucket, µs. */
  q(p: number): number {
    const entries = [...this.buckets.entries()].sort((a, b) => (a[0] < b[0] ? -1 : 1));
    const total = entries.reduce((n, [, c]) => n + c, 0);
    let acc = 0;
    for (const [le, c] of entries) {
      acc += c;
      if (acc >= Math.ceil(p * total)) return le >= 1n << 63n ? Number.POSITIVE_INFINITY : Number(le) / 1000;
    }
    return Number.NaN;
  }
}

/**
 * Raw publish stream of `size`-byte messages to the peer's sink. Flow
 * control: windows of about 1 MiB, each followed by a count request to the
 * sink, with at most two windows unacknowledged.
 */
async function publishRate(sys: BenchSystem, size: number, ms: number): Promise<{ rate: number; msgs: number }> {
  const nc = sys.bus.nc;
  const subject = `bench.sink.r${++runNo}`;
  const data = new Uint8Array(size);
  const window = Math.max(16, Math.min(4096, Math.floor((1 << 20) / size)));
  const count = async () => Number(new TextDecoder().decode((await nc.request(`${subject}.count`, new Uint8Array(0), { timeout: 10_000 })).data));
  const t0 = process.hrtime.bigint();
  const end = Date.now() + ms;
  let previous: Promise<number> = Promise.resolve(0);
  while (Date.now() < end) {
    for (let i = 0; i < window; i++) nc.publish(subject, data);
    const ack = count();
    await previous;
    previous = ack;
  }
  await previous;
  const msgs = await count();
  return { rate: msgs / (Number(process.hrtime.bigint() - t0) / 1e9), msgs };
}

export async function dmaSection(sys: BenchSystem, progress: Progress, o: DmaOptions): Promise<BenchRow[]> {
  const s = await sys.session("bench-dma");
  const rows: BenchRow[] = [];
  try {
    // Registered before the IOAS is set up, so it is attached with the endpoint.
    await sys.registerBusDevice(RID.busDma, "bench-dma-bus-device");
    await ioasWithDevices(s, [RID.dma, RID.busDma], IOVA, REGION);
    progress.step("IOAS with 4 MiB mapped, endpoint attached");
    const spec = (size: number, kind: WorkloadKind, batch: number, inFlight: number, useAts: boolean, ms: number) => ({
      rid: RID.dma,
      kind,
      iova: IOVA,
      length: REGION,
      opSize: size,
      durationMs: ms,
      batchOps: batch,
      inFlight,
      useAts,
      seed: 1n,
    });
    const stats = async () => (await sys.device.rpc.stats({ rid: RID.dma })).endpoints[0];
    const warmEach = o.globalWarmupMs / 5;
    await timed(warmEach, o.inFlight, () => sys.ping({ responseBytes: 4096 }));
    for (const [kind, b, f, ats] of [
      [WorkloadKind.STREAM_READ, 1, 1, false],
      [WorkloadKind.STREAM_READ, o.batch, o.inFlight, false],
      [WorkloadKind.STREAM_WRITE, o.batch, o.inFlight, false],
      [WorkloadKind.STREAM_READ, o.batch, o.inFlight, true],
    ] as const) {
      await runWorkload(sys, spec(4096, kind, b, f, ats, warmEach));
    }
    progress.step("warm-up of every shape");

    for (const size of o.sizes) {
      const mb = (opsS: number) => `${((opsS * size) / 1e6).toFixed(1)} MB/s`;
      let busSeq = 0n;
      const slots = Number(REGION) / size;
      const bareOp = async (i: number) => {
        const r = await sys.bus.request(
          subjects.dma(RID.busDma),
          DmaBatchSchema,
          { rid: RID.busDma, seq: ++busSeq, ops: [{ kind: DmaOpKind.READ, addr: IOVA + BigInt((i % slots) * size), length: size }] },
          DmaBatchResultSchema,
        );
        return r.results[0]?.status === DmaStatus.OK;
      };
      // Each figure and its baseline run in alternation, `rounds` slices each,
      // so that both see the same spells of machine load; totals are summed.
      const raw = {
        one: new RawTotal(),
        bare: new RawTotal(),
        readN: new RawTotal(),
        writeN: new RawTotal(),
      };
      const dma = { one: new DmaTotal(), read: new DmaTotal(), write: new DmaTotal(), ats: new DmaTotal() };
      const slice = o.durationMs / o.rounds;
      const work = async (t: DmaTotal, kind: WorkloadKind, batch: number, inFlight: number, useAts: boolean, ms: number, record: boolean) => {
        const before = await stats();
        const st = await runWorkload(sys, spec(size, kind, batch, inFlight, useAts, ms));
        const after = await stats();
        if (st.faults > 0n || st.errors > 0n) throw new Error(`DMA workload ${size} B: ${st.faults} faults, ${st.errors} errors (${st.error})`);
        if (record) t.add(st, before, after);
      };
      for (let round = 0; round <= o.rounds; round++) {
        // Round 0 is the warm-up of this size (not recorded).
        const record = round > 0;
        const ms = record ? slice : o.warmupMs / 2;
        raw.one.add(await timed(ms, 1, () => sys.ping({ responseBytes: size })), record);
        await work(dma.one, WorkloadKind.STREAM_READ, 1, 1, false, ms, record);
        raw.bare.add(await timed(ms, 1, bareOp), record);
        raw.readN.add(await timed(ms, o.inFlight, () => sys.ping({ responseBytes: size })), record);
        await work(dma.read, WorkloadKind.STREAM_READ, o.batch, o.inFlight, false, ms, record);
        await work(dma.ats, WorkloadKind.STREAM_READ, o.batch, o.inFlight, true, ms, record);
        raw.writeN.add(await timed(ms, o.inFlight, () => sys.ping({ payloadBytes: size, responseBytes: 16 })), record);
        await work(dma.write, WorkloadKind.STREAM_WRITE, o.batch, o.inFlight, false, ms, record);
      }
      const pub = await publishRate(sys, size, Math.min(1000, o.durationMs));
      progress.step(`${size} B: raw NATS and DMA, ${o.rounds} alternating rounds`);

      const dmaRow = (name: string, d: DmaTotal, base: RawTotal, baseName: string, note: string) =>
        judge({
          section: "dma",
          name,
          figure: { value: d.rate, unit: "ops/s" },
          baseline: { name: baseName, value: base.rate, unit: "msg/s" },
          ratio: d.rate / base.rate,
          target: { on: "ratio", op: ">=", limit: 0.8 },
          note: `${mb(d.rate)}; op latency p50 ≤${d.q(0.5)} µs p99 ≤${d.q(0.99)} µs (mean ${d.meanUs.toFixed(0)} µs); ${d.opsPerBatch.toFixed(1)} ops/batch; ${note}`,
        });
      const shape = `batch ${o.batch} × ${o.inFlight} in flight`;
      rows.push(dmaRow(`DMA read ${size} B, one op per round trip`, dma.one, raw.one, "NATS req/reply ×1", `raw p50 ${raw.one.lat.p50.toFixed(0)} µs`));
      rows.push(
        judge({
          section: "dma",
          name: `DMA read ${size} B, one op per round trip, bare bus device (no device-sim)`,
          figure: { value: raw.bare.rate, unit: "ops/s" },
          baseline: { name: "NATS req/reply ×1", value: raw.one.rate, unit: "msg/s" },
          ratio: raw.bare.rate / raw.one.rate,
          note: `diagnostic, the host's DMA path alone: p50 ${raw.bare.lat.p50.toFixed(0)} µs vs raw ${raw.one.lat.p50.toFixed(0)} µs; ${raw.bare.failures} failed`,
        }),
      );
      rows.push(dmaRow(`DMA read ${size} B, ${shape}`, dma.read, raw.readN, `NATS req/reply ×${o.inFlight}`, `raw ${mb(raw.readN.rate)}`));
      rows.push(dmaRow(`DMA write ${size} B, ${shape}`, dma.write, raw.writeN, `NATS req/reply ×${o.inFlight} (${size} B out)`, `raw ${mb(raw.writeN.rate)}`));
      rows.push(dmaRow(`DMA read ${size} B ATS (warm ATC), ${shape}`, dma.ats, raw.readN, `NATS req/reply ×${o.inFlight}`, `ATC hit rate ${(dma.ats.hitRate * 100).toFixed(1)}%`));
      rows.push(judge({ section: "dma", name: `ATC hit rate, ATS reads ${size} B over 4 MiB`, figure: { value: dma.ats.hitRate * 100, unit: "% hits" } }));
      rows.push(
        judge({
          section: "dma",
          name: `raw NATS publish ${size} B (ceiling; DMA batched read ÷ it)`,
          figure: { value: dma.read.rate, unit: "ops/s" },
          baseline: { name: "publish stream", value: pub.rate, unit: "msg/s" },
          ratio: dma.read.rate / pub.rate,
          note: `publish ${mb(pub.rate)}, ${pub.msgs} messages`,
        }),
      );
    }
  } finally {
    await s.close();
    await sys.unregisterBusDevice(RID.busDma);
  }
  return rows;
}
