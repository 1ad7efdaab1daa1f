import { PrgResponseCode } from "@iommufd/proto/bus";
import { describe, expect, it } from "vitest";
import { type PageWant, PriEngine } from "./pri.js";

interface Sent {
  prgIndex: number;
  last: boolean;
  addr: bigint;
}

function engine(allocation: number, opts: { exceed?: boolean; timeoutMs?: number } = {}) {
  const sent: Sent[] = [];
  const warnings: string[] = [];
  const pri = new PriEngine({
    publish: (r) => sent.push({ prgIndex: r.prgIndex, last: r.last, addr: r.addr }),
    exceedCredits: () => opts.exceed ?? false,
    timeoutMs: opts.timeoutMs ?? 5000,
    warn: (_o, m) => warnings.push(m),
  });
  pri.reset(allocation);
  return { pri, sent, warnings };
}

const pages = (n: number): PageWant[] =>
  Array.from({ length: n }, (_, i) => ({ addr: BigInt(i) << 12n, pasid: undefined, r: true, w: false, x: false, priv: false }));

const tick = () => new Promise<void>((r) => setImmediate(r));

describe("PriEngine", () => {
  it("sends a group with LAST on the last request and resolves on Success", async () => {
    const { pri, sent } = engine(8);
    const p = pri.request(pages(3));
    await tick();
    expect(sent.map((s) => s.last)).toEqual([false, false, true]);
    expect(new Set(sent.map((s) => s.prgIndex)).size).toBe(1);
    expect(pri.outstanding).toBe(3);
    pri.onResponse(sent[0].prgIndex, PrgResponseCode.SUCCESS);
    expect(await p).toBe("success");
    expect(pri.outstanding).toBe(0);
    expect(pri.counters).toMatchObject({ pageRequests: 3, groups: 1, prgSuccess: 1 });
  });

  it("never has more requests outstanding than the allocation; waits for credits", async () => {
    const { pri, sent } = engine(2);
    const p = pri.request(pages(5)); // groups of 2, 2, 1
    await tick();
    expect(sent.length).toBe(2);
    expect(pri.outstanding).toBe(2);
    pri.onResponse(sent[1].prgIndex, PrgResponseCode.SUCCESS);
    await tick();
    expect(sent.length).toBe(4);
    pri.onResponse(sent[3].prgIndex, PrgResponseCode.SUCCESS);
    await tick();
    expect(sent.length).toBe(5);
    expect(pri.outstanding).toBe(1);
    pri.onResponse(sent[4].prgIndex, PrgResponseCode.SUCCESS);
    expect(await p).toBe("success");
    expect(pri.counters.creditOverruns).toBe(0);
  });

  it("exceeds the allocation when misbehaving, and counts it", async () => {
    const { pri, sent } = engine(2, { exceed: true });
    void pri.request(pages(5));
    await tick();
    expect(sent.length).toBe(5);
    expect(pri.outstanding).toBe(5);
    expect(pri.counters.creditOverruns).toBe(3);
  });

  it("reports Invalid Request, and disables PRI on Response Failure until reset", async () => {
    const { pri, sent } = engine(4);
    const a = pri.request(pages(1));
    await tick();
    pri.onResponse(sent[0].prgIndex, PrgResponseCode.INVALID_REQUEST);
    expect(await a).toBe("invalid");
    const b = pri.request(pages(1));
    await tick();
    pri.onResponse(sent[1].prgIndex, PrgResponseCode.RESPONSE_FAILURE);
    expect(await b).toBe("failure");
    expect(pri.enabled).toBe(false);
    expect(await pri.request(pages(1))).toBe("disabled");
    pri.reset(4);
    expect(pri.enabled).toBe(true);
  });

  it("counts a response for no outstanding group (Unexpected PRG Index)", () => {
    const { pri, warnings } = engine(4);
    pri.onResponse(77, PrgResponseCode.SUCCESS);
    expect(pri.counters.unexpectedResponses).toBe(1);
    expect(warnings[0]).toMatch(/Unexpected PRG Index/);
  });

  it("times out a group that gets no response and returns its credits", async () => {
    const { pri } = engine(1, { timeoutMs: 20 });
    expect(await pri.request(pages(1))).toBe("timeout");
    expect(pri.outstanding).toBe(0);
    expect(pri.counters.timeouts).toBe(1);
  });

  it("with no allocation sends nothing", async () => {
    const { pri, sent } = engine(0);
    expect(await pri.request(pages(1))).toBe("no-credits");
    expect(sent.length).toBe(0);
  });

  it("ends outstanding groups with reset on a new registration", async () => {
    const { pri } = engine(4);
    const p = pri.request(pages(2));
    await tick();
    pri.reset(4);
    expect(await p).toBe("reset");
  });
});
