// Latency histograms (device.v1.Histogram): fixed upper bounds in
// nanoseconds, not cumulative, the last bucket unbounded. The bounds cover
// what this system does: a cached in-process path (µs) to a NATS round
// trip (~0.5 ms) to timeouts (s).
import type { MessageInitShape } from "@bufbuild/protobuf";
import type { HistogramSchema } from "@iommufd/proto/device";

const US = 1_000n;
const MS = 1_000_000n;

/** Inclusive upper bounds; a final unbounded bucket follows. */
export const LATENCY_BOUNDS_NS: readonly bigint[] = [
  10n * US,
  25n * US,
  50n * US,
  100n * US,
  250n * US,
  500n * US,
  1n * MS,
  2n * MS,
  5n * MS,
  10n * MS,
  25n * MS,
  50n * MS,
  100n * MS,
  250n * MS,
  500n * MS,
  1000n * MS,
  5000n * MS,
];

const UNBOUNDED = (1n << 64n) - 1n;

export class LatencyHistogram {
  private readonly counts = new Array<number>(LATENCY_BOUNDS_NS.length + 1).fill(0);
  private readonly boundsNum = LATENCY_BOUNDS_NS.map(Number);
  count = 0;
  sumNs = 0;

  record(ns: number): void {
    let i = 0;
    while (i < this.boundsNum.length && ns > this.boundsNum[i]) i++;
    this.counts[i]++;
    this.count++;
    this.sumNs += ns;
  }

  /** Approximate quantile (upper bound of the bucket holding it), ns; 0 when empty. */
  quantileNs(q: number): number {
    if (this.count === 0) return 0;
    const target = Math.ceil(q * this.count);
    let acc = 0;
    for (let i = 0; i < this.counts.length; i++) {
      acc += this.counts[i];
      if (acc >= target) return i < this.boundsNum.length ? this.boundsNum[i] : Number.POSITIVE_INFINITY;
    }
    return Number.POSITIVE_INFINITY;
  }

  toProto(): MessageInitShape<typeof HistogramSchema> {
    return {
      buckets: this.counts.map((c, i) => ({ leNs: i < LATENCY_BOUNDS_NS.length ? LATENCY_BOUNDS_NS[i] : UNBOUNDED, count: BigInt(c) })),
      count: BigInt(this.count),
      sumNs: BigInt(Math.round(this.sumNs)),
    };
  }
}
