// DMA benchmark (not a test): one endpoint of this process against a
// responder the caller provides (the fake host in testing/fake-host.ts, or
// a real host-iommufd with the RID bound and [iova, iova + regionBytes)
// mapped). For each op size it measures, in one run:
//
//   nats-raw   request/reply of that many bytes on the responder's
//              iommu.v1.ctl.<name>.ping, one at a time and `inFlight` at once
//              (what one bus round trip costs here)
//   dma        reads through the DMA engine: one op per round trip; batched
//              and pipelined (batch × inFlight outstanding); writes batched
//              and pipelined; and reads as TRANSLATED accesses from a warm
//              ATC (ATS), with the ATC hit rate
//
// and returns rows; printing is the caller's business.
import { Bus, createLogger, type Logger, subjects } from "@iommufd/kit";
import { PingSchema, PongSchema } from "@iommufd/proto/bus";
import { DmaStatus } from "@iommufd/proto/bus";
import type { EndpointConfig } from "./config.js";
import type { DmaEngine } from "./dma.js";
import { Endpoint } from "./endpoint.js";
import { LatencyHistogram } from "./histogram.js";
import { SeqCounter } from "./seq.js";

export interface DmaBenchOptions {
  natsUrl: string;
  /** RID the responder serves. */
  rid: number;
  /** The responder's process name (raw request/reply goes to its ping subject). */
  responder: string;
  /** Start of a mapped region (read/write) for the RID. */
  iova: bigint;
  /** Bytes of that region (default 4 MiB). */
  regionBytes?: number;
  pasid?: number;
  /** Op sizes (default 64 B, 4 KiB, 64 KiB). */
  sizes?: number[];
  /** Time per row (default 1000 ms). */
  durationMs?: number;
  /** Unmeasured run before each row, to warm the JIT and the ATC (default 300 ms). */
  warmupMs?: number;
  /** Ops per batch for the batched rows (default 64). */
  batch?: number;
  /** Batches (raw: requests) in flight for the pipelined rows (default 8). */
  inFlight?: number;
  /** Include the ATS rows (default true). */
  ats?: boolean;
  /** Endpoint name / process name used to register (default "dma-bench"). */
  processName?: string;
  log?: Logger;
}

export interface DmaBenchRow {
  /** Human label, e.g. "dma read 4096 B untranslated batch 64 × 8". */
  name: string;
  path: "dma" | "nats-raw";
  op: "read" | "write";
  translation: "untranslated" | "ats" | "-";
  opBytes: number;
  /** Ops per batch asked (raw: 1). */
  batch: number;
  inFlight: number;
  ops: number;
  /** Bus requests sent (DmaBatch or Ping). */
  requests: number;
  seconds: number;
  opsPerSec: number;
  /** Payload MB/s (10^6 bytes). */
  mbPerSec: number;
  /** Per-op latency quantiles (µs, bucket upper bounds). */
  p50Us: number;
  p99Us: number;
  /** ATS rows: ATC hits / lookups during the row. */
  atcHitRate?: number;
  /** Ops that did not complete OK. */
  failures: number;
}

interface Runner {
  requests(): number;
  op(i: number): Promise<boolean>;
}

async function measure(durationMs: number, width: number, r: Runner, warmupMs = 0): Promise<{ ops: number; seconds: number; requests: number; failures: number; h: LatencyHistogram }> {
  if (warmupMs > 0) await measure(warmupMs, width, r);
  const h = new LatencyHistogram();
  const req0 = r.requests();
  let next = 0;
  let ops = 0;
  let failures = 0;
  const t0 = process.hrtime.bigint();
  const end = Date.now() + durationMs;
  const worker = async () => {
    while (Date.now() < end) {
      const i = next++;
      const t = process.hrtime.bigint();
      const ok = await r.op(i);
      h.record(Number(process.hrtime.bigint() - t));
      ops++;
      if (!ok) failures++;
    }
  };
  await Promise.all(Array.from({ length: width }, worker));
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  return { ops, seconds, requests: r.requests() - req0, failures, h };
}

export async function runDmaBench(opts: DmaBenchOptions): Promise<DmaBenchRow[]> {
  const log = opts.log ?? createLogger("dma-bench", "silent");
  const name = opts.processName ?? "dma-bench";
  const region = opts.regionBytes ?? 4 << 20;
  const sizes = opts.sizes ?? [64, 4096, 65536];
  const duration = opts.durationMs ?? 1000;
  const warmup = opts.warmupMs ?? 300;
  const batch = opts.batch ?? 64;
  const inFlight = opts.inFlight ?? 8;
  const withAts = opts.ats ?? true;
  const bus = await Bus.connect({ url: opts.natsUrl, name, log });
  const cfg: EndpointConfig = {
    name: "bench",
    rid: opts.rid,
    iommuId: "",
    maxPasidLog2: opts.pasid === undefined ? 0 : 20,
    pasidExec: false,
    pasidPriv: false,
    ats: withAts,
    atcEntries: Math.max(64, Math.ceil(region / 4096) * 2),
    atsInvalidateQueueDepth: 0,
    atsGlobalInvalidate: false,
    pri: false,
    priOutstandingCapacity: 32,
    maxBatch: Math.max(batch, 1),
    inFlight,
  };
  const ep = new Endpoint(cfg, { bus, processName: name, log, registerSeq: new SeqCounter(), requestTimeoutMs: 10_000, priTimeoutMs: 5000 });
  const rows: DmaBenchRow[] = [];
  try {
    ep.start();
    await ep.whenRegistered(10_000);
    const ping = subjects.ping(opts.responder);
    let pingSeq = 0n;
    let pings = 0;

    const row = (
      label: Omit<DmaBenchRow, "ops" | "requests" | "seconds" | "opsPerSec" | "mbPerSec" | "p50Us" | "p99Us" | "failures" | "name">,
      m: Awaited<ReturnType<typeof measure>>,
      extra: Partial<DmaBenchRow> = {},
    ) => {
      const shape = label.path === "nats-raw" ? `× ${label.inFlight} in flight` : `batch ${label.batch} × ${label.inFlight}`;
      rows.push({
        name: `${label.path} ${label.op} ${label.opBytes} B ${label.translation === "-" ? "" : `${label.translation} `}${shape}`,
        ...label,
        ops: m.ops,
        requests: m.requests,
        seconds: m.seconds,
        opsPerSec: m.ops / m.seconds,
        mbPerSec: ((m.ops - m.failures) * label.opBytes) / m.seconds / 1e6,
        p50Us: m.h.quantileNs(0.5) / 1000,
        p99Us: m.h.quantileNs(0.99) / 1000,
        failures: m.failures,
        ...extra,
      });
    };
    const dmaRunner = (engine: DmaEngine, kind: "read" | "write", size: number, useAts: boolean): Runner => {
      const slots = Math.max(1, Math.floor(region / size));
      const data = new Uint8Array(size).fill(0xa5);
      return {
        requests: () => engine.batcher.stats.batches,
        op: async (i) => {
          const iova = opts.iova + BigInt((i % slots) * size);
          const r = await engine.access({ kind, iova, length: size, data: kind === "write" ? data : undefined, pasid: opts.pasid }, useAts);
          return r.status === DmaStatus.OK;
        },
      };
    };

    for (const size of sizes) {
      // Raw request/reply carrying `size` bytes back (like a read of that size).
      for (const w of [1, inFlight]) {
        const raw: Runner = {
          requests: () => pings,
          op: async () => {
            pings++;
            const p = await bus.request(ping, PingSchema, { seq: ++pingSeq, payload: new Uint8Array(16), responseSize: size }, PongSchema);
            return p.payload.length === size;
          },
        };
        row({ path: "nats-raw", op: "read", translation: "-", opBytes: size, batch: 1, inFlight: w }, await measure(duration, w, raw, warmup));
      }
      // DMA: one op per round trip, then batched and pipelined.
      const single = ep.engine({ maxItems: 1, maxInFlight: 1 });
      row(
        { path: "dma", op: "read", translation: "untranslated", opBytes: size, batch: 1, inFlight: 1 },
        await measure(duration, 1, dmaRunner(single, "read", size, false), warmup),
      );
      for (const kind of ["read", "write"] as const) {
        const e = ep.engine({ maxItems: batch, maxInFlight: inFlight });
        row(
          { path: "dma", op: kind, translation: "untranslated", opBytes: size, batch, inFlight },
          await measure(duration, batch * inFlight, dmaRunner(e, kind, size, false), warmup),
        );
      }
      if (withAts) {
        const e = ep.engine({ maxItems: batch, maxInFlight: inFlight });
        // Warm the ATC over the region, then measure.
        const warm = dmaRunner(e, "read", 4096, true);
        await Promise.all(Array.from({ length: Math.ceil(region / 4096) }, (_, i) => warm.op(i)));
        const runner = dmaRunner(e, "read", size, true);
        await measure(warmup, batch * inFlight, runner);
        const h0 = ep.counters.atcHits;
        const m0 = ep.counters.atcMisses;
        const m = await measure(duration, batch * inFlight, runner);
        const hits = ep.counters.atcHits - h0;
        const lookups = hits + ep.counters.atcMisses - m0;
        row({ path: "dma", op: "read", translation: "ats", opBytes: size, batch, inFlight }, m, { atcHitRate: lookups > 0 ? hits / lookups : 0 });
      }
    }
  } finally {
    await ep.stop(true);
    await bus.close();
  }
  return rows;
}
