import { describe, expect, it } from "vitest";
import { Batcher } from "./batcher.js";

/** A send function whose replies the test releases by hand. */
function manual() {
  const sent: { items: number[]; release(): void; fail(e: unknown): void }[] = [];
  const send = (items: number[]) =>
    new Promise<number[]>((resolve, reject) => {
      sent.push({ items, release: () => resolve(items.map((x) => x * 10)), fail: reject });
    });
  return { sent, send };
}

const flushMicrotasks = () => new Promise<void>((r) => setImmediate(r));

describe("Batcher", () => {
  it("sends items pushed in one turn as one batch, results in order", async () => {
    const { sent, send } = manual();
    const b = new Batcher<number, number>({ maxItems: 64, maxBytes: 1 << 20, maxInFlight: 4, sizeOf: () => 1, send });
    const ps = [1, 2, 3, 4, 5].map((x) => b.push(x));
    await flushMicrotasks();
    expect(sent.map((s) => s.items)).toEqual([[1, 2, 3, 4, 5]]);
    sent[0].release();
    expect(await Promise.all(ps)).toEqual([10, 20, 30, 40, 50]);
  });

  it("sends a full batch at once and splits by maxItems", async () => {
    const { sent, send } = manual();
    const b = new Batcher<number, number>({ maxItems: 3, maxBytes: 1 << 20, maxInFlight: 8, sizeOf: () => 1, send });
    for (let i = 0; i < 7; i++) void b.push(i);
    expect(sent.map((s) => s.items)).toEqual([
      [0, 1, 2],
      [3, 4, 5],
    ]);
    await flushMicrotasks();
    expect(sent.map((s) => s.items.length)).toEqual([3, 3, 1]);
  });

  it("splits by bytes (a single oversized item still goes alone)", async () => {
    const { sent, send } = manual();
    const b = new Batcher<number, number>({ maxItems: 100, maxBytes: 10, maxInFlight: 8, sizeOf: (x) => x, send });
    for (const x of [4, 4, 4, 20, 1]) void b.push(x);
    await flushMicrotasks();
    expect(sent.map((s) => s.items)).toEqual([[4, 4], [4], [20], [1]]);
  });

  it("keeps at most maxInFlight requests outstanding; queued items grow the next batch", async () => {
    const { sent, send } = manual();
    const b = new Batcher<number, number>({ maxItems: 4, maxBytes: 1 << 20, maxInFlight: 2, sizeOf: () => 1, send });
    const all = Array.from({ length: 10 }, (_, i) => b.push(i));
    await flushMicrotasks();
    expect(sent.length).toBe(2);
    expect(b.outstanding).toBe(2);
    expect(b.queued).toBe(2);
    sent[0].release();
    await flushMicrotasks();
    expect(sent.length).toBe(3);
    expect(sent[2].items).toEqual([8, 9]);
    sent[1].release();
    sent[2].release();
    expect((await Promise.all(all)).length).toBe(10);
    expect(b.stats.peakInFlight).toBe(2);
    await b.idle();
  });

  it("fails every item of a failed batch and goes on with the next", async () => {
    const { sent, send } = manual();
    const b = new Batcher<number, number>({ maxItems: 2, maxBytes: 1 << 20, maxInFlight: 1, sizeOf: () => 1, send });
    const [a, c, d] = [b.push(1), b.push(2), b.push(3)];
    sent[0].fail(new Error("boom"));
    await expect(a).rejects.toThrow("boom");
    await expect(c).rejects.toThrow("boom");
    await flushMicrotasks();
    sent[1].release();
    expect(await d).toBe(30);
  });
});
