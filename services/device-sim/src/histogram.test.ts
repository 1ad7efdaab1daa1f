import { describe, expect, it } from "vitest";
import { LATENCY_BOUNDS_NS, LatencyHistogram } from "./histogram.js";

describe("LatencyHistogram", () => {
  it("puts samples in (previous bound, bound] buckets with an unbounded last one", () => {
    const h = new LatencyHistogram();
    for (const ns of [5_000, 10_000, 10_001, 700_000, 9e9]) h.record(ns);
    const p = h.toProto();
    const buckets = p.buckets ?? [];
    expect(buckets.length).toBe(LATENCY_BOUNDS_NS.length + 1);
    expect(buckets[0]).toEqual({ leNs: 10_000n, count: 2n });
    expect(buckets[1]).toEqual({ leNs: 25_000n, count: 1n });
    expect(buckets.find((b) => b.leNs === 1_000_000n)?.count).toBe(1n);
    expect(buckets[buckets.length - 1]).toEqual({ leNs: (1n << 64n) - 1n, count: 1n });
    expect(p.count).toBe(5n);
    expect(p.sumNs).toBe(BigInt(5_000 + 10_000 + 10_001 + 700_000 + 9e9));
    expect(h.quantileNs(0.5)).toBe(25_000);
  });
});
