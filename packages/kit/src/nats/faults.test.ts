// The fault-rule engine on its own: subject matching, validation (EINVAL,
// nothing changed), skip / count / probability, directions, replies, the
// control-subject exemption, and the control request envelope.
import { create } from "@bufbuild/protobuf";
import { FaultAction, FaultControlRequestSchema, FaultDirection } from "@iommufd/proto/bus";
import { describe, expect, it } from "vitest";
import { ErrnoError } from "../errno.js";
import { applyFlips, FaultInjector, subjectMatches, validSubjectPattern } from "./faults.js";

const tok = (p: string) => p.split(".");

describe("subject patterns", () => {
  it("match with NATS wildcards", () => {
    expect(subjectMatches(tok("iommu.v1.dev.*.dma"), "iommu.v1.dev.0018.dma")).toBe(true);
    expect(subjectMatches(tok("iommu.v1.dev.*.dma"), "iommu.v1.dev.0018.ats")).toBe(false);
    expect(subjectMatches(tok("iommu.v1.dev.>"), "iommu.v1.dev.0018.dma")).toBe(true);
    expect(subjectMatches(tok("iommu.v1.dev.>"), "iommu.v1.dev")).toBe(false);
    expect(subjectMatches(tok("a.b"), "a.b.c")).toBe(false);
    expect(subjectMatches(tok(">"), "a")).toBe(true);
  });

  it("are validated", () => {
    for (const ok of ["a", "a.*.c", "a.>", ">", "iommu.v1.s.s1.veventq.*"]) expect(validSubjectPattern(ok)).toBe(true);
    for (const bad of ["", "a..b", "a.>.c", "a b", "a.b*", ".a", "a."]) expect(validSubjectPattern(bad)).toBe(false);
  });
});

describe("FaultInjector", () => {
  it("refuses bad rules with EINVAL and changes nothing", () => {
    const f = new FaultInjector();
    f.set({ rules: [{ id: "keep", subject: "x", action: FaultAction.DROP }], replaceAll: false });
    const bad = [
      { id: "a", subject: "a..b", action: FaultAction.DROP },
      { id: "b", subject: "x", action: FaultAction.UNSPECIFIED },
      { id: "c", subject: "x", action: FaultAction.DELAY, delayMs: 0 },
      { id: "d", subject: "x", action: FaultAction.DROP, probability: 0 },
      { id: "e", subject: "x", action: FaultAction.DROP, probability: 1.5 },
    ];
    for (const r of bad) {
      const e = (() => {
        try {
          f.set({ rules: [{ id: "ok", subject: "y", action: FaultAction.DROP }, r], replaceAll: true });
        } catch (x) {
          return x;
        }
      })() as ErrnoError;
      expect(e).toBeInstanceOf(ErrnoError);
      expect(e.errno).toBe("EINVAL");
    }
    expect(f.list().map((r) => r.id)).toEqual(["keep"]);
    const noOp = create(FaultControlRequestSchema, { seq: 1n });
    expect(() => f.handle(noOp, "p")).toThrow(/without an operation/);
  });

  it("applies skip, then count; counts hits; drops end the evaluation", () => {
    const f = new FaultInjector();
    f.set({
      rules: [
        { id: "d", subject: "s.*", action: FaultAction.DROP, skip: 2, count: 3 },
        { id: "dup", subject: "s.>", action: FaultAction.DUPLICATE },
      ],
      replaceAll: false,
    });
    const effects = Array.from({ length: 8 }, () => f.decide("s.x", "out", false, 4));
    expect(effects.map((e) => (e?.drop ? "drop" : `dup${e?.duplicates}`))).toEqual(["dup1", "dup1", "drop", "drop", "drop", "dup1", "dup1", "dup1"]);
    expect(f.list().map((r) => [r.id, r.hits])).toEqual([
      ["d", 3n],
      ["dup", 5n],
    ]);
  });

  it("filters by direction and by replies; never touches the control subject", () => {
    const f = new FaultInjector();
    f.set({
      rules: [
        { id: "in", subject: "a", action: FaultAction.DELAY, delayMs: 5, direction: FaultDirection.INBOUND },
        { id: "rep", subject: "b", action: FaultAction.DELAY, delayMs: 7, replies: true, direction: FaultDirection.OUTBOUND },
        { id: "all", subject: ">", action: FaultAction.DROP },
      ],
      replaceAll: false,
    });
    expect(f.decide("a", "in", false, 1)).toMatchObject({ delayMs: 5, drop: true });
    expect(f.decide("b", "out", true, 1)).toMatchObject({ delayMs: 7, drop: false, rules: ["rep"] });
    expect(f.decide("b", "in", true, 1)).toBeUndefined();
    expect(f.decide("iommu.v1.ctl.host.faults", "in", false, 1)).toBeUndefined();
    expect(f.decide("iommu.v1.ctl.host.faults", "out", true, 1)).toBeUndefined();
  });

  it("makes seeded, reproducible probabilistic choices", () => {
    const run = () => {
      const f = new FaultInjector();
      f.set({ rules: [{ id: "p", subject: "x", action: FaultAction.DROP, probability: 0.25, seed: 42n }], replaceAll: false });
      return Array.from({ length: 400 }, () => (f.decide("x", "in", false, 1)?.drop ? 1 : 0)).join("");
    };
    const a = run();
    expect(run()).toBe(a);
    const drops = [...a].filter((c) => c === "1").length;
    expect(drops).toBeGreaterThan(60);
    expect(drops).toBeLessThan(140);
  });

  it("corrupts one bit of a copy; an empty payload is not corrupted or counted", () => {
    const f = new FaultInjector();
    f.set({ rules: [{ id: "c", subject: "x", action: FaultAction.CORRUPT, seed: 7n }], replaceAll: false });
    expect(f.decide("x", "out", false, 0)).toBeUndefined();
    const data = new Uint8Array(16).fill(0xaa);
    const out = applyFlips(data, f.decide("x", "out", false, data.length));
    expect(data.every((b) => b === 0xaa)).toBe(true);
    let bits = 0;
    for (let i = 0; i < 16; i++) for (let x = (out[i] as number) ^ 0xaa; x; x &= x - 1) bits++;
    expect(bits).toBe(1);
    expect(f.list()[0]?.hits).toBe(1n);
  });

  it("replaces rules by id, names unnamed ones, clears by id or all", () => {
    const f = new FaultInjector();
    f.set({ rules: [{ id: "a", subject: "x", action: FaultAction.DROP }, { subject: "y", action: FaultAction.DROP }], replaceAll: false });
    f.set({ rules: [{ id: "a", subject: "z", action: FaultAction.DUPLICATE }], replaceAll: false });
    expect(f.list().map((r) => [r.id, r.subject])).toEqual([
      ["a", "z"],
      ["rule-1", "y"],
    ]);
    expect(f.clear(["a", "nope"])).toBe(1);
    expect(f.clear([])).toBe(1);
    expect(f.empty).toBe(true);
  });
});
