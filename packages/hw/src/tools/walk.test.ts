// The walk tool on a small hand-built image: a bare stage, a full SMMU setup
// with explain output, bare STE / CD configs, faults, vendor dispatch.

import { describe, expect, it } from "vitest";
import { armFormat } from "../format/arm.js";
import { PERM_R, PERM_RW } from "../translation.js";
import { encodeCd } from "../smmuv3/cd.js";
import { STE_CONFIG, encodeSte } from "../smmuv3/ste.js";
import { BED, makeBed, nestedStream } from "../smmuv3/testbed.js";
import { type ImageSegment, registerWalkVendor, runWalk } from "./walk.js";

const le64 = (v: bigint) => {
  let s = "";
  for (let i = 0; i < 8; i++) s += Number((v >> BigInt(8 * i)) & 0xffn).toString(16).padStart(2, "0");
  return s;
};
const words = (ws: bigint[]) => ws.map(le64).join("");

// Stage 1, 4K granule, 39-bit input: starts at level 1. TTB0 = 0x1000.
const fmt = armFormat(1, 12);
const leafRW = fmt.encodeLeaf(0x8000_5000n, 3, { perms: PERM_RW });
const leafRO = fmt.encodeLeaf(0x8000_6000n, 3, { perms: PERM_R });
const tables: ImageSegment[] = [
  { address: "0x1000", bytes: le64(fmt.encodeTable(0x2000n, 1)) }, // L1[0]
  { address: "0x2000", bytes: le64(fmt.encodeTable(0x3000n, 2)) }, // L2[0]
  { address: 0x3000 + 5 * 8, bytes: le64(leafRW) + le64(leafRO) }, // L3[5], L3[6]
];
const cdWords = encodeCd({ V: 1, T0SZ: 25, TG0: 0, IPS: 5, AA64: 1, R: 1, A: 1, EPD1: 1, ASID: 9, TTB0: 0x1000n });
const steWords = encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: 0x20_0000n });
const smmuImage: ImageSegment[] = [
  ...tables,
  { address: 0x10_0000n + 3n * 64n, bytes: words(steWords) },
  { address: "0x200000", bytes: words(cdWords) },
];

describe("walk tool", () => {
  it("walks a bare stage-1 config and explains each descriptor read", () => {
    const out = runWalk({
      image: tables,
      config: { vendor: "smmuv3", kind: "stage", stage: 1, granule: 4096, inputBits: 39, ttb: "0x1000" },
      queries: [{ iova: "0x5123", access: "write" }],
      explain: true,
    });
    expect(out.vendor).toBe("smmuv3");
    expect(out.results).toEqual([
      {
        query: { streamId: 0, iova: "0x5123", access: "write", privileged: false },
        ok: true,
        pa: "0x80005123",
        size: "0x1000",
        pageShift: 12,
        perms: "rw-/rw-",
        permBits: 27,
        steps: [
          { stage: 1, level: 1, descAddr: "0x1000", value: "0x2003", type: "table" },
          { stage: 1, level: 2, descAddr: "0x2000", value: "0x3003", type: "table" },
          { stage: 1, level: 3, descAddr: "0x3028", value: `0x${leafRW.toString(16)}`, type: "page" },
        ],
      },
    ]);
  });

  it("runs a full SMMU setup: STE and CD fetches in `config`, faults as event records", () => {
    const out = runWalk({
      image: smmuImage,
      config: { vendor: "smmuv3", kind: "smmu", strtabBase: "0x100000", log2size: 8 },
      queries: [
        { streamId: 3, iova: "0x6008", access: "read" },
        { streamId: 3, iova: "0x6008", access: "write" },
        { streamId: 4, iova: "0x6008" },
      ],
      explain: true,
    });
    const [ok, perm, bad] = out.results;
    expect(ok).toMatchObject({ ok: true, pa: "0x80006008", perms: "r--/r--" });
    expect(ok?.config).toEqual([
      { what: "STE", addr: "0x1000c0", value: `0x${(steWords[0] as bigint).toString(16)}` },
      { what: "CD", addr: "0x200000", pa: "0x200000", value: `0x${(cdWords[0] as bigint).toString(16)}` },
    ]);
    expect(ok?.steps).toHaveLength(3);
    expect(perm).toMatchObject({
      ok: false,
      fault: { kind: "permission", stage: 1, level: 3, input: "0x6008", cls: "IN" },
      event: { type: "F_PERMISSION", StreamID: 3, S2: false, CLASS: 2, RnW: false, InputAddr: "0x6008" },
      recorded: false, // the tool's SMMU has no event queue enabled
    });
    expect(bad).toMatchObject({ ok: false, fault: { config: "C_BAD_STE" }, event: { type: "C_BAD_STE", StreamID: 4 } });
  });

  it("accepts a bare STE or a bare CD", () => {
    const viaSte = runWalk({
      image: smmuImage,
      config: { vendor: "smmuv3", kind: "ste", ste: steWords.map((w) => `0x${w.toString(16)}`) },
      queries: [{ streamId: 77, iova: 0x5000 }],
    });
    expect(viaSte.results[0]).toMatchObject({ ok: true, pa: "0x80005000" });
    const viaCd = runWalk({
      image: tables,
      config: { vendor: "smmuv3", kind: "cd", cd: cdWords },
      queries: [{ iova: "0x7000" }],
    });
    expect(viaCd.results[0]).toMatchObject({
      ok: false,
      event: { type: "F_TRANSLATION", S2: false, CLASS: 2, InputAddr: "0x7000" },
    });
  });

  it("explains a nested walk: the CD fetch through stage 2, every stage-1 descriptor's stage-2 walk, the output IPA", () => {
    const bed = makeBed();
    const { s1, cdTable } = nestedStream(bed, 0x42, 9, 3);
    s1.map(0x4000_0000n, 0x0080_0000n, 0x1000n, PERM_RW);
    const out = runWalk({
      image: bed.mem,
      config: { vendor: "smmuv3", kind: "smmu", strtabBase: BED.STRTAB, log2size: 16 },
      queries: [{ streamId: 0x42, iova: "0x40000010", access: "write" }],
      explain: true,
    });
    const r = out.results[0];
    expect(r).toMatchObject({ ok: true, pa: `0x${(BED.GUEST_RAM_PA + 0x0080_0010n).toString(16)}`, ipa: "0x800010" });
    const steps = r?.steps ?? [];
    expect(steps.filter((s) => s.purpose === "ipa")).toHaveLength(3); // CD IPA through a 3-level stage 2
    expect(steps.filter((s) => s.stage === 1)).toHaveLength(4);
    expect(steps.filter((s) => s.purpose === "table")).toHaveLength(12);
    expect(steps.filter((s) => s.purpose === "output")).toHaveLength(3);
    expect(r?.config?.map((c) => [c.what, c.addr])).toEqual([
      ["STE", `0x${(BED.STRTAB + 0x42n * 64n).toString(16)}`],
      ["CD", `0x${cdTable.toString(16)}`],
    ]);
  });

  it("dispatches on `vendor`; unknown vendors are an error", () => {
    registerWalkVendor("fake", { run: (_m, _c, qs) => qs.map((q) => ({ query: { streamId: 0, iova: String(q.iova), access: "read", privileged: false }, ok: false, fault: { kind: "fake" } })) });
    expect(runWalk({ image: [], config: { vendor: "fake" }, queries: [{ iova: 1 }] }).results[0]).toMatchObject({ fault: { kind: "fake" } });
    expect(() => runWalk({ image: [], config: { vendor: "nope" }, queries: [] })).toThrow(/unknown vendor/);
  });
});
