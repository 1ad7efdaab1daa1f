// STE / CD decode through the model: every validation failure with the exact
// event record read back from the event queue, linear vs 2-level stream and
// CD tables, and the walk faults with their S2 / CLASS / IPA / FetchAddr.

import { describe, expect, it } from "vitest";
import { PERM_R, PERM_RW } from "../translation.js";
import { encodeCd, encodeL1Cd } from "./cd.js";
import { EVT_CLASS } from "./events.js";
import { STE_CONFIG, STE_S1DSS, STE_S1FMT, encodeSte } from "./ste.js";
import { BED, cdFor, makeBed, makeS1, nestedStream, s1Stream, s2SteFields, s2Stream, writeCd } from "./testbed.js";
import { makeS2 } from "./testbed.js";

const IOVA = 0x0000_1234_5000n;

/** The only event drained from the queue (and the same one reported through onEvent). */
function onlyEvent(bed: ReturnType<typeof makeBed>) {
  const { events } = bed.drv.drainEvents();
  expect(events).toHaveLength(1);
  return events[0];
}

describe("stream table lookup", () => {
  it("C_BAD_STREAMID for a StreamID beyond STRTAB_BASE_CFG.LOG2SIZE", () => {
    const bed = makeBed({ strtabLog2: 8 });
    const r = bed.smmu.translate(0x100, undefined, IOVA, "read");
    expect(r.ok).toBe(false);
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_STREAMID", StreamID: 0x100, SSV: false, SubstreamID: 0 });
  });

  it("F_STE_FETCH with FetchAddr = the STE address on an external abort", () => {
    const bed = makeBed();
    bed.mem.addAbortRange(BED.STRTAB + 5n * 64n, 64n);
    bed.smmu.translate(5, undefined, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({
      type: "F_STE_FETCH",
      StreamID: 5,
      SSV: false,
      SubstreamID: 0,
      FetchAddr: BED.STRTAB + 5n * 64n,
    });
  });

  it("2-level: L1STD.Span = 0 is C_BAD_STREAMID; installed L2 arrays translate", () => {
    const bed = makeBed({ strtabFormat: "2-level", strtabLog2: 16 });
    const { s1 } = s1Stream(bed, 0x305, 1);
    s1.map(IOVA, 0x5000_0000n, 0x1000n, PERM_RW);
    const ok = bed.smmu.translate(0x305, undefined, IOVA + 0x10n, "read");
    expect(ok).toMatchObject({ ok: true, pa: 0x5000_0010n });
    // StreamID 0x405 is in L1 entry 4, never written: Span = 0.
    bed.smmu.translate(0x405, undefined, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_STREAMID", StreamID: 0x405, SSV: false, SubstreamID: 0 });
    // The L1 descriptor for 0x3xx has Span = SPLIT + 1 = 9 and points at a 16 KiB L2 array.
    const l1 = bed.mem.read64(BED.STRTAB + 3n * 8n);
    expect(l1.ok && l1.value & 0x1fn).toBe(9n);
  });
});

describe("STE validation (C_BAD_STE)", () => {
  const bad = (name: string, ste: bigint[], features = {}) =>
    it(name, () => {
      const bed = makeBed({ features });
      bed.drv.installSte(7, ste);
      const r = bed.smmu.translate(7, undefined, IOVA, "read");
      expect(r.ok).toBe(false);
      expect(onlyEvent(bed)).toEqual({ type: "C_BAD_STE", StreamID: 7, SSV: false, SubstreamID: 0 });
    });

  bad("V = 0", encodeSte({ V: 0, Config: STE_CONFIG.BYPASS }));
  bad(
    "S2TTB above the effective S2PS (ruling 3)",
    encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, S2T0SZ: 32, S2SL0: 1, S2TG: 0, S2PS: 0, S2AA64: 1, S2TTB: 0x2_0000_0000n }),
  );
  bad(
    "S2TG reserved",
    encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, S2T0SZ: 24, S2SL0: 1, S2TG: 3, S2PS: 5, S2AA64: 1, S2TTB: 0x10_0000n }),
  );
  bad(
    "S2T0SZ inconsistent with S2SL0 (more than 16 concatenated tables)",
    encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, S2T0SZ: 24, S2SL0: 0, S2TG: 0, S2PS: 5, S2AA64: 1, S2TTB: 0x10_0000n }),
  );
  bad(
    "S2SL0 = 3 reserved",
    encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, S2T0SZ: 24, S2SL0: 3, S2TG: 0, S2PS: 5, S2AA64: 1, S2TTB: 0x10_0000n }),
  );
  bad(
    "S2AA64 = 0",
    encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, S2T0SZ: 24, S2SL0: 1, S2TG: 0, S2PS: 5, S2AA64: 0, S2TTB: 0x10_0000n }),
  );
  bad("S1CDMax above IDR1.SSIDSIZE", encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: 0x10_0000n, S1CDMax: 9 }), {
    ssidBits: 8,
  });
  bad(
    "2-level CD table without IDR0.CD2L",
    encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: 0x10_0000n, S1CDMax: 8, S1Fmt: STE_S1FMT.TWO_LEVEL_4K }),
    { twoLevelCdTable: false },
  );
  bad("stage 2 without IDR0.S2P", encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS }), { stage2: false });
  bad("split-stage ATS (EATS = 0b10) on a stage-1-only STE", encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: 0x10_0000n, EATS: 2 }));

  it("Config = abort (and reserved 0b0xx) terminate with no event", () => {
    const bed = makeBed();
    bed.drv.installSte(3, encodeSte({ V: 1, Config: STE_CONFIG.ABORT }));
    bed.drv.installSte(4, encodeSte({ V: 1, Config: 0b011 }));
    for (const sid of [3, 4]) {
      const r = bed.smmu.translate(sid, undefined, IOVA, "write");
      expect(r.ok).toBe(false);
      expect(!r.ok && r.recorded).toBe(false);
      expect(!r.ok && "kind" in r.fault && r.fault.kind).toBe("aborted");
    }
    expect(bed.drv.drainEvents().events).toEqual([]);
  });

  it("Config = bypass passes the address through", () => {
    const bed = makeBed();
    bed.drv.installSte(3, encodeSte({ V: 1, Config: STE_CONFIG.BYPASS }));
    expect(bed.smmu.translate(3, undefined, 0xabc_d000n, "write")).toMatchObject({ ok: true, pa: 0xabc_d000n });
  });
});

describe("substreams and CD tables", () => {
  it("F_STREAM_DISABLED: no SubstreamID with S1DSS = terminate; SubstreamID 0 with S1DSS = SSID0", () => {
    const bed = makeBed();
    s1Stream(bed, 9, 1, { ste: { S1CDMax: 2, S1DSS: STE_S1DSS.TERMINATE } });
    bed.smmu.translate(9, undefined, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "F_STREAM_DISABLED", StreamID: 9 });
    s1Stream(bed, 10, 1, { ste: { S1CDMax: 2, S1DSS: STE_S1DSS.SSID0 } });
    bed.smmu.translate(10, 0, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "F_STREAM_DISABLED", StreamID: 10 });
  });

  it("C_BAD_SUBSTREAMID: SSV with S1CDMax = 0, SubstreamID ≥ 2^S1CDMax, SSV without stage 1", () => {
    const bed = makeBed();
    s1Stream(bed, 9, 1);
    bed.smmu.translate(9, 3, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_SUBSTREAMID", StreamID: 9, SubstreamID: 3 });
    s1Stream(bed, 11, 1, { ste: { S1CDMax: 2, S1DSS: STE_S1DSS.SSID0 } });
    bed.smmu.translate(11, 4, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_SUBSTREAMID", StreamID: 11, SubstreamID: 4 });
    s2Stream(bed, 12, 5);
    bed.smmu.translate(12, 1, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_SUBSTREAMID", StreamID: 12, SubstreamID: 1 });
  });

  it("linear CD table indexed by SubstreamID; S1DSS = bypass skips stage 1", () => {
    const bed = makeBed();
    const s1 = makeS1(bed.mem, bed.alloc);
    s1.map(IOVA, 0x6000_0000n, 0x1000n, PERM_RW);
    const table = bed.alloc.alloc(4096) as bigint;
    writeCd(bed.mem, table + 2n * 64n, cdFor(s1, 22));
    bed.drv.installSte(
      13,
      encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: table, S1CDMax: 3, S1DSS: STE_S1DSS.BYPASS }),
    );
    expect(bed.smmu.translate(13, 2, IOVA, "read")).toMatchObject({ ok: true, pa: 0x6000_0000n });
    // CD 1 is all zeroes: C_BAD_CD with the SubstreamID.
    bed.smmu.translate(13, 1, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_CD", StreamID: 13, SSV: true, SubstreamID: 1 });
    // No SubstreamID: stage 1 bypassed, identity.
    expect(bed.smmu.translate(13, undefined, 0x7000_0000n, "read")).toMatchObject({ ok: true, pa: 0x7000_0000n });
  });

  it("2-level CD table (S1Fmt = 4 KB leaves): L1CD.V = 0 is C_BAD_SUBSTREAMID", () => {
    const bed = makeBed();
    const s1 = makeS1(bed.mem, bed.alloc);
    s1.map(IOVA, 0x6100_0000n, 0x1000n, PERM_RW);
    const l1 = bed.alloc.alloc(4096) as bigint;
    const l2 = bed.alloc.alloc(4096) as bigint;
    bed.mem.write64(l1 + 1n * 8n, encodeL1Cd(l2));
    // SubstreamID 70 = L1 index 1, L2 index 6.
    writeCd(bed.mem, l2 + 6n * 64n, cdFor(s1, 33));
    bed.drv.installSte(
      14,
      encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: l1, S1CDMax: 8, S1Fmt: STE_S1FMT.TWO_LEVEL_4K }),
    );
    expect(bed.smmu.translate(14, 70, IOVA, "read")).toMatchObject({ ok: true, pa: 0x6100_0000n });
    bed.smmu.translate(14, 5, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "C_BAD_SUBSTREAMID", StreamID: 14, SubstreamID: 5 });
  });

  it("F_CD_FETCH with FetchAddr = the CD address", () => {
    const bed = makeBed();
    const { cdAddr } = s1Stream(bed, 15, 1);
    bed.mem.addAbortRange(cdAddr, 64n);
    bed.smmu.translate(15, undefined, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({ type: "F_CD_FETCH", StreamID: 15, SSV: false, SubstreamID: 0, FetchAddr: cdAddr });
  });
});

describe("CD validation (C_BAD_CD)", () => {
  const badCd = (name: string, cd: (root: bigint) => bigint[], features = {}) =>
    it(name, () => {
      const bed = makeBed({ features });
      const s1 = makeS1(bed.mem, bed.alloc);
      const cdAddr = bed.alloc.alloc(4096) as bigint;
      writeCd(bed.mem, cdAddr, cd(s1.root));
      bed.drv.installSte(16, encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: cdAddr }));
      expect(bed.smmu.translate(16, undefined, IOVA, "read").ok).toBe(false);
      expect(onlyEvent(bed)).toEqual({ type: "C_BAD_CD", StreamID: 16, SSV: false, SubstreamID: 0 });
    });
  const base = { V: 1, T0SZ: 16, TG0: 0, IPS: 5, AA64: 1, R: 1, A: 1, EPD1: 1, ASID: 1 };
  badCd("V = 0", (root) => encodeCd({ ...base, V: 0, TTB0: root }));
  badCd("TTB0 beyond the effective IPS (ruling 3)", () => encodeCd({ ...base, IPS: 0, TTB0: 0x1_0000_0000n }));
  badCd("T0SZ out of range", (root) => encodeCd({ ...base, T0SZ: 10, TTB0: root }));
  badCd("TG0 reserved", (root) => encodeCd({ ...base, TG0: 3, TTB0: root }));
  badCd("AA64 = 0", (root) => encodeCd({ ...base, AA64: 0, TTB0: root }));
  badCd("HA without IDR0.HTTU", (root) => encodeCd({ ...base, HA: 1, TTB0: root }), { httu: 0 });
  badCd("ASID[15:8] without ASID16", (root) => encodeCd({ ...base, ASID: 0x100, TTB0: root }), { asid16: false });
  badCd("16K granule not advertised", (root) => encodeCd({ ...base, TG0: 2, TTB0: root }), { gran16K: false });
});

describe("walk faults as event records", () => {
  it("stage-1 F_TRANSLATION / F_PERMISSION / F_ACCESS / F_ADDR_SIZE: S2 = 0, CLASS = IN", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 20, 5);
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_R);
    s1.map(0x20_0000n, 0x4000_1000n, 0x1000n, PERM_RW, { accessed: false });
    bed.smmu.translate(20, undefined, IOVA, "read");
    const common = { StreamID: 20, SSV: false, SubstreamID: 0, Stall: false, STAG: 0, PnU: false, InD: false, S2: false, CLASS: EVT_CLASS.IN, IPA: 0n };
    expect(onlyEvent(bed)).toEqual({ type: "F_TRANSLATION", ...common, RnW: true, InputAddr: IOVA });
    bed.smmu.translate(20, undefined, 0x10_0008n, "write");
    expect(onlyEvent(bed)).toEqual({ type: "F_PERMISSION", ...common, RnW: false, InputAddr: 0x10_0008n, TTRnW: false });
    bed.smmu.translate(20, undefined, 0x20_0000n, "read");
    expect(onlyEvent(bed)).toEqual({ type: "F_ACCESS", ...common, RnW: true, InputAddr: 0x20_0000n });
    // Exec by a privileged PASID-less request: InD reported only with RnW.
    bed.smmu.translate(20, undefined, IOVA, { kind: "exec", privileged: true });
    expect(onlyEvent(bed)).toEqual({ type: "F_TRANSLATION", ...common, PnU: true, InD: true, RnW: true, InputAddr: IOVA });
  });

  it("stage-1 F_ADDR_SIZE when the leaf output is beyond CD.IPS", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 21, 5, { cd: { IPS: 0 } });
    s1.map(0x10_0000n, 0x1_0000_0000n, 0x1000n, PERM_RW);
    bed.smmu.translate(21, undefined, 0x10_0000n, "read");
    expect(onlyEvent(bed)).toMatchObject({ type: "F_ADDR_SIZE", S2: false, CLASS: EVT_CLASS.IN, InputAddr: 0x10_0000n });
  });

  it("stage-1 F_WALK_EABT: S2 = 0, CLASS = TT, FetchAddr = descriptor PA", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 22, 5);
    bed.mem.addAbortRange(s1.root, 4096n);
    bed.smmu.translate(22, undefined, IOVA, "read");
    const idx = (IOVA >> 39n) & 511n;
    expect(onlyEvent(bed)).toEqual({
      type: "F_WALK_EABT",
      StreamID: 22,
      SSV: false,
      SubstreamID: 0,
      PnU: false,
      InD: false,
      RnW: true,
      S2: false,
      CLASS: EVT_CLASS.TT,
      InputAddr: IOVA,
      FetchAddr: s1.root + idx * 8n,
    });
  });

  it("CD.R = 0 and STE.S2R = 0 suppress recording", () => {
    const bed = makeBed();
    s1Stream(bed, 23, 5, { cd: { R: 0 } });
    const r = bed.smmu.translate(23, undefined, IOVA, "read");
    expect(!r.ok && r.recorded).toBe(false);
    s2Stream(bed, 24, 6, { ste: { S2R: 0 } });
    const r2 = bed.smmu.translate(24, undefined, IOVA, "read");
    expect(!r2.ok && r2.recorded).toBe(false);
    expect(bed.drv.drainEvents().events).toEqual([]);
  });

  it("stage-2-only fault: S2 = 1, CLASS = IN, IPA = the input", () => {
    const bed = makeBed();
    s2Stream(bed, 25, 6);
    bed.smmu.translate(25, undefined, IOVA, "write");
    expect(onlyEvent(bed)).toEqual({
      type: "F_TRANSLATION",
      StreamID: 25,
      SSV: false,
      SubstreamID: 0,
      Stall: false,
      STAG: 0,
      PnU: false,
      InD: false,
      RnW: false,
      S2: true,
      CLASS: EVT_CLASS.IN,
      InputAddr: IOVA,
      IPA: IOVA,
    });
  });

  it("stage-2-only: input ≥ 2^IAS is a stage-1 F_ADDR_SIZE (stage 1 bypassed)", () => {
    const bed = makeBed();
    s2Stream(bed, 26, 6);
    bed.smmu.translate(26, undefined, 1n << 50n, "read");
    expect(onlyEvent(bed)).toMatchObject({ type: "F_ADDR_SIZE", S2: false, InputAddr: 1n << 50n });
  });

  it("nested: CD fetch failing at stage 2 is S2 = 1, CLASS = CD, IPA = CD address", () => {
    const bed = makeBed();
    nestedStream(bed, 30, 7, 1, { ste: { S1ContextPtr: 0x4000_0000n } });
    bed.smmu.translate(30, undefined, IOVA, "read");
    expect(onlyEvent(bed)).toEqual({
      type: "F_TRANSLATION",
      StreamID: 30,
      SSV: false,
      SubstreamID: 0,
      Stall: false,
      STAG: 0,
      PnU: false,
      InD: false,
      RnW: true,
      S2: true,
      CLASS: EVT_CLASS.CD,
      InputAddr: IOVA,
      IPA: 0x4000_0000n,
    });
  });

  it("nested: S2 fault on a stage-1 descriptor IPA (CLASS = TT) and on the output IPA (CLASS = IN)", () => {
    const bed = makeBed();
    const { s1, guestMem } = nestedStream(bed, 31, 7, 1);
    // Output IPA outside guest RAM.
    s1.map(0x10_0000n, 0x0900_0000n, 0x1000n, PERM_RW);
    bed.smmu.translate(31, undefined, 0x10_0010n, "read");
    expect(onlyEvent(bed)).toMatchObject({ type: "F_TRANSLATION", S2: true, CLASS: EVT_CLASS.IN, IPA: 0x0900_0000n, InputAddr: 0x10_0010n });
    // A stage-1 level-0 entry pointing at a table IPA that stage 2 does not map.
    const va = 0x0000_8000_0000_0000n; // level-0 index 256
    guestMem.write64(s1.root + 256n * 8n, 0x0800_0000n | 3n);
    bed.smmu.translate(31, undefined, va, "read");
    const idx1 = (va >> 30n) & 511n;
    expect(onlyEvent(bed)).toMatchObject({
      type: "F_TRANSLATION",
      S2: true,
      CLASS: EVT_CLASS.TT,
      InputAddr: va,
      // IPA of the descriptor being fetched (ruling 1), as recorded in IPA[55:12].
      IPA: (0x0800_0000n + idx1 * 8n) & ~0xfffn,
    });
  });
});

describe("stage-2 config from STE fields", () => {
  it("concatenated start tables (4K, 40-bit IPA at level 1 with 2 tables)", () => {
    const bed = makeBed();
    const s2 = makeS2(bed.mem, bed.alloc, { ias: 40 });
    expect(s2.stage.startLevel).toBe(1);
    expect(s2.stage.concatenated).toBe(2);
    s2.map(0x80_0000_0000n, 0x4000_0000n, 0x1000n, PERM_RW); // IPA in the second concatenated table
    bed.drv.installSte(40, encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, ...s2SteFields(s2, 3) }));
    expect(bed.smmu.translate(40, undefined, 0x80_0000_0123n, "read")).toMatchObject({ ok: true, pa: 0x4000_0123n });
  });
});
