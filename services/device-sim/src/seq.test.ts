import { describe, expect, it } from "vitest";
import { SeqCounter, SeqTracker } from "./seq.js";

describe("SeqCounter", () => {
  it("numbers a stream from 1 and restarts at 1 after reset", () => {
    const c = new SeqCounter();
    expect([c.next(), c.next(), c.next()]).toEqual([1n, 2n, 3n]);
    c.reset();
    expect(c.next()).toBe(1n);
  });
});

describe("SeqTracker", () => {
  it("accepts an in-order stream", () => {
    const t = new SeqTracker();
    for (const s of [1n, 2n, 3n]) expect(t.observe(s).kind).toBe("in-order");
    expect(t.counters).toEqual({ received: 3, gaps: 0, missing: 0n, duplicates: 0, late: 0 });
  });

  it("reports a gap with the number of missing messages", () => {
    const t = new SeqTracker();
    t.observe(1n);
    expect(t.observe(5n)).toEqual({ kind: "gap", missing: 3n, expected: 2n });
    expect(t.counters.gaps).toBe(1);
    expect(t.counters.missing).toBe(3n);
    expect(t.expected).toBe(6n);
  });

  it("counts a stream that starts above 1 as a gap (the first messages were lost)", () => {
    const t = new SeqTracker();
    expect(t.observe(3n)).toMatchObject({ kind: "gap", missing: 2n });
  });

  it("tells a late (reordered) message from a duplicate", () => {
    const t = new SeqTracker();
    t.observe(1n);
    t.observe(3n); // 2 missing
    expect(t.observe(2n).kind).toBe("late");
    expect(t.counters.missing).toBe(0n);
    expect(t.observe(2n).kind).toBe("duplicate");
    expect(t.observe(3n).kind).toBe("duplicate");
    expect(t.observe(0n).kind).toBe("duplicate");
    expect(t.counters).toMatchObject({ received: 3, gaps: 1, duplicates: 3, late: 1 });
  });

  it("expects 1 again after reset and keeps its counters", () => {
    const t = new SeqTracker();
    t.observe(1n);
    t.observe(4n);
    t.reset();
    expect(t.observe(1n).kind).toBe("in-order");
    expect(t.counters.gaps).toBe(1);
  });
});
