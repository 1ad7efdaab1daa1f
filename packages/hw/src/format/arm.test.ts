// Arm VMSAv8-64 formats: configuration rules and the io-pgtable-style
// self-test (every granule × start level × input size: map, walk hits and
// misses, blocks, unmap then walk faults), concatenated stage-2 starts,
// permissions, block levels and address-size checks.

import { afterAll, describe, expect, it } from "vitest";
import { SparseMemory } from "../memory.js";
import {
  EXEC,
  EXEC_USER,
  PERM_ALL,
  PERM_R,
  PERM_RW,
  PERM_W,
  PERM_X,
  Perm,
  READ,
  READ_USER,
  type StageConfig,
  type StageConfigResult,
  type TranslationFault,
  type TranslationOk,
  WRITE,
  WRITE_USER,
} from "../translation.js";
import { walkStage } from "../walk/walk.js";
import {
  type ArmGranuleShift,
  armFormat,
  armLevelShift,
  armS1StartLevel,
  armS2Geometry,
  armS2Sl0,
  armS2StartLevel,
  armStage1Config,
  armStage2Config,
  armTg0ToShift,
  armTg1ToShift,
} from "./arm.js";
import { forEachLeaf, mapRange, SimplePageAllocator, startTableBytes, unmapRange } from "./map.js";

/** Walk options that keep each walk's descriptor reads (TranslationOk.descReads). */
const RECORD = { recordReads: true } as const;

const TABLES_BASE = 0x1000_0000n;

function ok(r: StageConfigResult): StageConfig {
  if (!r.ok) throw new Error(r.error);
  return r.stage;
}

function fixture(make: (root: bigint) => StageConfigResult, paBits = 48) {
  const mem = new SparseMemory(paBits);
  const alloc = new SimplePageAllocator(mem, TABLES_BASE, 0x1000_0000n);
  // Allocate the largest possible start group (16 × 64K) so any config fits.
  const root = alloc.alloc(16 * 65536) as bigint;
  const stage = ok(make(root));
  return { mem, alloc, stage };
}

function expectOk(r: ReturnType<typeof walkStage>): TranslationOk {
  if (!r.ok) throw new Error(`expected ok, got ${r.kind} at level ${r.level}`);
  return r;
}

function expectFault(r: ReturnType<typeof walkStage>): TranslationFault {
  if (r.ok) throw new Error(`expected a fault, got 0x${r.output.toString(16)}`);
  return r;
}

describe("Arm level maths", () => {
  it("level shifts per granule", () => {
    expect([0, 1, 2, 3].map((l) => armLevelShift(12, l))).toEqual([39, 30, 21, 12]);
    expect([0, 1, 2, 3].map((l) => armLevelShift(14, l))).toEqual([47, 36, 25, 14]);
    expect([1, 2, 3].map((l) => armLevelShift(16, l))).toEqual([42, 29, 16]);
  });

  it("stage-1 start level from the input size", () => {
    expect(armS1StartLevel(12, 48)).toBe(0);
    expect(armS1StartLevel(12, 39)).toBe(1);
    expect(armS1StartLevel(12, 40)).toBe(0);
    expect(armS1StartLevel(12, 30)).toBe(2);
    expect(armS1StartLevel(14, 48)).toBe(0);
    expect(armS1StartLevel(14, 47)).toBe(1);
    expect(armS1StartLevel(16, 48)).toBe(1);
    expect(armS1StartLevel(16, 42)).toBe(2);
    expect(armS1StartLevel(16, 29)).toBe(3);
  });

  it("stage-2 SL0 encoding (ruling 6)", () => {
    expect([0, 1, 2, 3].map((s) => armS2StartLevel(12, s))).toEqual([2, 1, 0, undefined]);
    expect([0, 1, 2, 3].map((s) => armS2StartLevel(14, s))).toEqual([3, 2, 1, undefined]);
    expect([0, 1, 2, 3].map((s) => armS2StartLevel(16, s))).toEqual([3, 2, 1, undefined]);
    expect(armS2Sl0(12, 1)).toBe(1);
    expect(armS2Sl0(16, 1)).toBe(2);
    expect(armS2Sl0(12, 3)).toBeUndefined();
  });

  it("Linux stage-2 geometry concatenates small level-0 tables at level 1", () => {
    expect(armS2Geometry(12, 40)).toEqual({ startLevel: 1, sl0: 1, concatenated: 2 });
    expect(armS2Geometry(12, 48)).toEqual({ startLevel: 0, sl0: 2, concatenated: 1 });
    expect(armS2Geometry(12, 44)).toEqual({ startLevel: 0, sl0: 2, concatenated: 1 });
    expect(armS2Geometry(14, 48)).toEqual({ startLevel: 1, sl0: 2, concatenated: 2 });
    expect(armS2Geometry(16, 48)).toEqual({ startLevel: 1, sl0: 2, concatenated: 1 });
  });

  it("TG encodings", () => {
    expect([0, 1, 2, 3].map(armTg0ToShift)).toEqual([12, 16, 14, undefined]);
    expect([0, 1, 2, 3].map(armTg1ToShift)).toEqual([undefined, 14, 12, 16]);
  });
});

describe("Arm StageConfig builders", () => {
  it("stage 1: T0SZ range, TTB beyond IPS is a bad config (ruling 3), TTB aligned", () => {
    expect(armStage1Config({ granuleShift: 12, tsz: 15, outputBits: 48, ttb: 0x1000n }).ok).toBe(false);
    expect(armStage1Config({ granuleShift: 12, tsz: 40, outputBits: 48, ttb: 0x1000n }).ok).toBe(false);
    const bad = armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 40, ttb: 1n << 40n });
    expect(bad).toEqual({ ok: false, error: "TTB beyond output address size" });
    const s = ok(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 40, ttb: 0x12345_6fffn }));
    expect(s.root).toBe(0x12345_6000n);
    expect(s.startLevel).toBe(0);
    expect(s.inputBits).toBe(48);
    expect(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: 0n, hd: true }).ok).toBe(false);
  });

  it("stage 2: SL0 = 3 reserved, inconsistent S2T0SZ/SL0 rejected, concatenation counted (ruling 6)", () => {
    const base = { outputBits: 48, s2ttb: 0n } as const;
    expect(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 24, sl0: 3 })).toEqual({ ok: false, error: "S2SL0 3 reserved" });
    // 4K, 48-bit IPA starting at level 2: 27 index bits > 9 + 4.
    expect(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 16, sl0: 0 }).ok).toBe(false);
    // 4K, 30-bit IPA starting at level 0: no index bits at all.
    expect(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 34, sl0: 2 }).ok).toBe(false);
    // 4K, 44-bit IPA at level 1 would need 32 tables.
    expect(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 20, sl0: 1 }).ok).toBe(false);
    expect(ok(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 24, sl0: 1 })).concatenated).toBe(2);
    expect(ok(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 21, sl0: 1 })).concatenated).toBe(16);
    expect(ok(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 30, sl0: 0 })).concatenated).toBe(16);
    expect(ok(armStage2Config({ ...base, granuleShift: 14, s2t0sz: 16, sl0: 2 })).concatenated).toBe(2);
    expect(ok(armStage2Config({ ...base, granuleShift: 16, s2t0sz: 18, sl0: 1 })).concatenated).toBe(16);
    expect(ok(armStage2Config({ ...base, granuleShift: 16, s2t0sz: 16, sl0: 2 })).concatenated).toBe(1);
    // IAS limit.
    expect(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 16, sl0: 2, ias: 44 }).ok).toBe(false);
    // S2TTB beyond S2PS.
    expect(armStage2Config({ granuleShift: 12, s2t0sz: 24, sl0: 1, outputBits: 40, s2ttb: 1n << 41n }).ok).toBe(false);
    // S2TTB aligned down to the concatenated group (2 × 4K).
    expect(ok(armStage2Config({ ...base, granuleShift: 12, s2t0sz: 24, sl0: 1, s2ttb: 0x7000n })).root).toBe(0x6000n);
  });
});

// ---------------------------------------------------------------------------
// The io-pgtable-style sweep.

interface SweepCase {
  name: string;
  granule: ArmGranuleShift;
  stage: 1 | 2;
  ia: number;
  make: (root: bigint) => StageConfigResult;
  startLevel: number;
}

const sweep: SweepCase[] = [];
for (const granule of [12, 14, 16] as const) {
  const s1Sizes = granule === 12 ? [48, 40, 39, 32, 30, 25] : granule === 14 ? [48, 47, 40, 36, 25] : [48, 42, 36, 29, 25];
  for (const ia of s1Sizes) {
    const start = Math.max(armS1StartLevel(granule, ia), granule === 16 ? 1 : 0);
    sweep.push({
      name: `S1 ${1 << (granule - 10)}K IA=${ia} start L${start}`,
      granule,
      stage: 1,
      ia,
      startLevel: start,
      make: (root) => armStage1Config({ granuleShift: granule, tsz: 64 - ia, outputBits: 48, ttb: root }),
    });
  }
  // (IA, SL0) pairs covering every start level and the concatenation limits.
  const s2Pairs: [number, number][] =
    granule === 12
      ? [[48, 2], [44, 2], [43, 1], [40, 1], [39, 1], [34, 0], [30, 0], [25, 0]]
      : granule === 14
        ? [[48, 2], [47, 2], [40, 1], [36, 1], [29, 0], [25, 0]]
        : [[48, 2], [46, 1], [42, 1], [33, 0], [29, 0], [25, 0]];
  for (const [ia, sl0] of s2Pairs) {
    const start = armS2StartLevel(granule, sl0) as number;
    sweep.push({
      name: `S2 ${1 << (granule - 10)}K IA=${ia} SL0=${sl0} start L${start}`,
      granule,
      stage: 2,
      ia,
      startLevel: start,
      make: (root) => armStage2Config({ granuleShift: granule, s2t0sz: 64 - ia, sl0, outputBits: 48, s2ttb: root }),
    });
  }
}

const blocksTested = new Set<string>();

describe("Arm map / walk / unmap sweep (io-pgtable self-test)", () => {
  afterAll(() => {
    // Every configuration not starting at the last level was tested with a block.
    expect([...blocksTested].sort()).toEqual(sweep.filter((c) => c.startLevel < 3).map((c) => c.name).sort());
  });
  for (const c of sweep) {
    it(c.name, () => {
      const { mem, alloc, stage } = fixture(c.make);
      expect(stage.startLevel).toBe(c.startLevel);
      const fmt = stage.format;
      const g = 1n << BigInt(c.granule);
      const levels = 4 - c.startLevel;
      const top = 1n << BigInt(c.ia);
      const prot = { perms: PERM_RW };
      // A page at 0, one at the very top of the input range, one in the middle.
      const pages: [bigint, bigint][] = [
        [0n, 0x8000_0000n],
        [top - g, 0x8100_0000n],
        [(top / 2n) & ~(g - 1n), 0x8200_0000n],
      ];
      for (const [iova, pa] of pages) {
        expect(mapRange(mem, stage, iova, pa, g, prot, { alloc })).toEqual({ ok: true, mapped: g });
      }
      for (const [iova, pa] of pages) {
        const r = expectOk(walkStage(mem, stage, iova + 0x18n, READ, RECORD));
        expect(r.output).toBe(pa + 0x18n);
        expect(r.level).toBe(3);
        expect(r.pageShift).toBe(c.granule);
        expect(r.descReads?.length).toBe(levels);
        expect(r.perms & PERM_RW).toBe(PERM_RW);
        expect(expectOk(walkStage(mem, stage, iova, WRITE)).output).toBe(pa);
      }
      // Mapping again is refused.
      expect(mapRange(mem, stage, 0n, 0x9000_0000n, g, prot, { alloc })).toMatchObject({ ok: false, error: "exists" });
      // A miss next to a mapping: translation fault at the last level.
      const miss = expectFault(walkStage(mem, stage, g, READ));
      expect(miss).toMatchObject({ kind: "translation", stage: c.stage, level: 3, input: g, cls: "IN" });
      // Out of range input.
      if (c.ia < 48) {
        expect(expectFault(walkStage(mem, stage, top, READ))).toMatchObject({ kind: "input-range", level: c.startLevel });
      }
      // Blocks: the largest allowed level below the start that fits in the range.
      const blockLevel = [0, 1, 2].find((l) => l >= c.startLevel && fmt.blockAllowed(l, stage) && 2n << BigInt(fmt.levelShift(l)) <= top / 2n);
      if (blockLevel !== undefined) {
        blocksTested.add(c.name);
        const bsz = 1n << BigInt(fmt.levelShift(blockLevel));
        const biova = bsz; // second block-sized region (the first holds page 0's tables)
        {
          const bpa = 0x40_0000_0000n;
          expect(mapRange(mem, stage, biova, bpa, bsz, prot, { alloc })).toEqual({ ok: true, mapped: bsz });
          const r = expectOk(walkStage(mem, stage, biova + bsz - 8n, READ, RECORD));
          expect(r).toMatchObject({ output: bpa + bsz - 8n, level: blockLevel, pageShift: fmt.levelShift(blockLevel) });
          expect(r.descReads?.length).toBe(blockLevel - c.startLevel + 1);
          // Unmap the whole block.
          expect(unmapRange(mem, stage, biova, bsz)).toEqual({ ok: true, unmapped: bsz });
          expect(expectFault(walkStage(mem, stage, biova, READ))).toMatchObject({ kind: "translation", level: blockLevel });
        }
      }
      // Unmap every page, then every walk faults.
      for (const [iova] of pages) {
        expect(unmapRange(mem, stage, iova, g, { alloc })).toEqual({ ok: true, unmapped: g });
        expect(expectFault(walkStage(mem, stage, iova, READ))).toMatchObject({ kind: "translation", level: 3 });
      }
    });
  }
});

describe("concatenated stage-2 start tables", () => {
  it("4K, 40-bit IPA: two level-1 tables; the top half of the IPA space indexes the second table", () => {
    const { mem, alloc, stage } = fixture((root) =>
      armStage2Config({ granuleShift: 12, s2t0sz: 24, sl0: 1, outputBits: 48, s2ttb: root }),
    );
    expect(stage.concatenated).toBe(2);
    const hi = 0xc0_0000_0000n; // 768 GB: index 768 at level 1 → second table, entry 256
    expect(mapRange(mem, stage, hi, 0x5000n, 0x1000n, { perms: PERM_RW }, { alloc }).ok).toBe(true);
    const r = expectOk(walkStage(mem, stage, hi + 4n, READ, RECORD));
    expect(r.output).toBe(0x5004n);
    expect(r.descReads?.[0]).toBe(stage.root + 4096n + 256n * 8n);
    expect(r.descReads?.length).toBe(3);
  });

  it("64K, 46-bit IPA: 16 level-2 tables", () => {
    const { mem, alloc, stage } = fixture((root) =>
      armStage2Config({ granuleShift: 16, s2t0sz: 18, sl0: 1, outputBits: 48, s2ttb: root }),
    );
    expect(stage.concatenated).toBe(16);
    const ipa = (1n << 46n) - 0x10000n;
    expect(mapRange(mem, stage, ipa, 0x7_0000n, 0x10000n, { perms: PERM_R }, { alloc }).ok).toBe(true);
    const r = expectOk(walkStage(mem, stage, ipa + 0x123n, READ, RECORD));
    expect(r.output).toBe(0x7_0123n);
    expect(r.descReads?.[0]).toBe(stage.root + 15n * 65536n + 8191n * 8n);
    expect(startTableBytes(stage.format, stage.inputBits, stage.startLevel)).toBe(16 * 65536);
  });
});

// ---------------------------------------------------------------------------
// Hand-built descriptors: block levels, address sizes, permissions.

/** Build a 4K stage with hand-written descriptors: returns a writer per level. */
function handBuilt(stageNo: 1 | 2, granule: ArmGranuleShift = 12, extra: Partial<StageConfig> = {}) {
  const mem = new SparseMemory(48);
  const fmt = armFormat(stageNo, granule);
  const stage: StageConfig = {
    format: fmt,
    root: 0x10_0000n,
    inputBits: 48,
    outputBits: 40,
    startLevel: granule === 16 ? 1 : 0,
    concatenated: 1,
    inputForm: "low",
    ...extra,
  };
  const tables = [0x10_0000n, 0x20_0000n, 0x30_0000n, 0x40_0000n];
  /** Write descriptor `d` at `level` for address `va`, with tables chained above it. */
  const put = (va: bigint, level: number, d: bigint, tableBits = 0n) => {
    for (let l = stage.startLevel; l < level; l++) {
      const slot = (tables[l - stage.startLevel] as bigint) + BigInt(Number((va >> BigInt(fmt.levelShift(l))) & ((1n << BigInt(fmt.bitsPerLevel)) - 1n)) * 8);
      mem.write64(slot, (tables[l - stage.startLevel + 1] as bigint) | 3n | tableBits);
    }
    const idx = (va >> BigInt(fmt.levelShift(level))) & ((1n << BigInt(fmt.bitsPerLevel)) - 1n);
    const slot = (tables[level - stage.startLevel] as bigint) + idx * 8n;
    mem.write64(slot, d);
    return slot;
  };
  return { mem, stage, put };
}

const AF = 1n << 10n;
const S2_PAGE_RW = 3n | AF | (3n << 6n);

describe("block levels (ruling 7)", () => {
  it("4K: blocks at L1 and L2; a block at L0 and type 01 at L3 are translation faults", () => {
    const { mem, stage, put } = handBuilt(1);
    put(0x4000_0000n, 1, 0x8000_0000n | 1n | AF);
    expect(expectOk(walkStage(mem, stage, 0x4000_1234n, READ))).toMatchObject({ output: 0x8000_1234n, level: 1, pageShift: 30 });
    put(0x20_0000n, 2, 0x60_0000n | 1n | AF);
    expect(expectOk(walkStage(mem, stage, 0x20_0008n, READ))).toMatchObject({ output: 0x60_0008n, level: 2 });
    const l0 = put(0x80_0000_0000n, 0, 0x80_0000_0000n | 1n | AF);
    expect(expectFault(walkStage(mem, stage, 0x80_0000_0000n, READ))).toMatchObject({ kind: "translation", level: 0, descAddr: l0 });
    const l3 = put(0x1000n, 3, 0x9000n | 1n | AF);
    expect(expectFault(walkStage(mem, stage, 0x1000n, READ))).toMatchObject({ kind: "translation", level: 3, descAddr: l3 });
  });

  it("16K: block only at L2; 64K: only at L2 without 52-bit output, L1 with it", () => {
    const a = handBuilt(1, 14, { startLevel: 1, inputBits: 47 });
    a.put(0x10_0000_0000n, 1, 0x10_0000_0000n | 1n | AF);
    expect(expectFault(walkStage(a.mem, a.stage, 0x10_0000_0000n, READ))).toMatchObject({ kind: "translation", level: 1 });
    a.put(0x200_0000n, 2, 0x400_0000n | 1n | AF);
    expect(expectOk(walkStage(a.mem, a.stage, 0x200_0010n, READ))).toMatchObject({ output: 0x400_0010n, pageShift: 25 });
    const b = handBuilt(1, 16);
    b.put(0x400_0000_0000n, 1, 0x400_0000_0000n | 1n | AF);
    expect(expectFault(walkStage(b.mem, b.stage, 0x400_0000_0000n, READ))).toMatchObject({ kind: "translation", level: 1 });
    expect(armFormat(1, 16, { oa52: true }).blockAllowed(1, b.stage)).toBe(true);
    expect(armFormat(1, 16).blockAllowed(1, b.stage)).toBe(false);
  });
});

describe("address-size checks (ruling 8)", () => {
  it("a next-table address above the output size faults at the table descriptor's level", () => {
    const { mem, stage } = handBuilt(1); // outputBits 40
    mem.write64(0x10_0000n, (1n << 40n) | 3n); // L0 entry 0 → table at 1 TB
    const f = expectFault(walkStage(mem, stage, 0x1000n, READ));
    expect(f).toMatchObject({ kind: "address-size", stage: 1, level: 0, descAddr: 0x10_0000n, desc: (1n << 40n) | 3n });
  });

  it("a leaf output above the output size faults at the leaf level", () => {
    const { mem, stage, put } = handBuilt(2);
    const slot = put(0x5000n, 3, (1n << 44n) | S2_PAGE_RW);
    expect(expectFault(walkStage(mem, stage, 0x5000n, READ))).toMatchObject({ kind: "address-size", stage: 2, level: 3, descAddr: slot, ipa: 0x5000n });
  });

  it("64K with 52-bit output reads OA[51:48] from bits [15:12]", () => {
    const fmt = armFormat(2, 16, { oa52: true });
    const d = fmt.encodeLeaf(0xf_0000_0001_0000n, 3, { perms: PERM_RW });
    expect((d >> 12n) & 0xfn).toBe(0xfn);
    expect(fmt.outputAddress(d, 3, 3)).toBe(0xf_0000_0001_0000n);
  });
});

describe("stage-1 permissions (ruling 5)", () => {
  const AP = (ap: bigint) => ap << 6n;
  const cases: [string, bigint, number][] = [
    ["AP=00 privileged RW only", AP(0n), Perm.PR | Perm.PW | Perm.PX | Perm.UX],
    ["AP=01 RW at both levels (no privileged exec)", AP(1n), Perm.PR | Perm.PW | Perm.UR | Perm.UW | Perm.UX],
    ["AP=10 privileged read-only", AP(2n), Perm.PR | Perm.PX | Perm.UX],
    ["AP=11 read-only at both", AP(3n), Perm.PR | Perm.UR | Perm.PX | Perm.UX],
    ["PXN", AP(3n) | (1n << 53n), Perm.PR | Perm.UR | Perm.UX],
    ["UXN", AP(3n) | (1n << 54n), Perm.PR | Perm.UR | Perm.PX],
  ];
  for (const [name, bits, perms] of cases) {
    it(name, () => {
      const { mem, stage, put } = handBuilt(1);
      put(0x1000n, 3, 0x9000n | 3n | AF | bits);
      const r = expectOk(walkStage(mem, stage, 0x1000n, { kind: "read", privileged: true, probe: true }));
      expect(r.perms).toBe(perms);
      for (const access of [READ, WRITE, EXEC, READ_USER, WRITE_USER, EXEC_USER]) {
        const bit = access.privileged
          ? access.kind === "read" ? Perm.PR : access.kind === "write" ? Perm.PW : Perm.PX
          : access.kind === "read" ? Perm.UR : access.kind === "write" ? Perm.UW : Perm.UX;
        const w = walkStage(mem, stage, 0x1000n, access);
        expect(w.ok).toBe((perms & bit) !== 0);
        if (!w.ok) expect(w).toMatchObject({ kind: "permission", level: 3, perms, access: access.kind, privileged: access.privileged });
      }
    });
  }

  it("APTable and XNTable accumulate down the walk; HAD ignores them", () => {
    const APT0 = 1n << 61n;
    const APT1 = 1n << 62n;
    const PXNT = 1n << 59n;
    const UXNT = 1n << 60n;
    const check = (tableBits: bigint, had: boolean) => {
      const { mem, stage, put } = handBuilt(1, 12, { had });
      put(0x1000n, 3, 0x9000n | 3n | AF | (1n << 6n), tableBits); // AP=01
      return expectOk(walkStage(mem, stage, 0x1000n, { kind: "read", privileged: true, probe: true })).perms;
    };
    expect(check(APT0, false)).toBe(Perm.PR | Perm.PW | Perm.PX | Perm.UX); // no EL0 data access; UW gone → PX allowed
    expect(check(APT1, false)).toBe(Perm.PR | Perm.UR | Perm.PX | Perm.UX); // read-only; no UW → PX comes back
    expect(check(PXNT | UXNT, false)).toBe(Perm.PR | Perm.PW | Perm.UR | Perm.UW);
    expect(check(APT0 | APT1 | PXNT | UXNT, true)).toBe(Perm.PR | Perm.PW | Perm.UR | Perm.UW | Perm.UX);
  });

  it("WXN removes execute from writable pages", () => {
    const { mem, stage, put } = handBuilt(1, 12, { wxn: true });
    put(0x1000n, 3, 0x9000n | 3n | AF);
    expect(expectOk(walkStage(mem, stage, 0x1000n, READ)).perms).toBe(Perm.PR | Perm.PW | Perm.UX);
    expect(expectFault(walkStage(mem, stage, 0x1000n, EXEC)).kind).toBe("permission");
  });

  it("EL0 execute-only (AP=00, UXN=0): unprivileged fetch allowed, unprivileged read refused", () => {
    const { mem, stage, put } = handBuilt(1);
    put(0x1000n, 3, 0x9000n | 3n | AF | (1n << 53n));
    expect(walkStage(mem, stage, 0x1000n, EXEC_USER).ok).toBe(true);
    expect(expectFault(walkStage(mem, stage, 0x1000n, READ_USER)).kind).toBe("permission");
  });
});

describe("stage-2 permissions", () => {
  const cases: [string, bigint, number][] = [
    ["S2AP=00 none (exec only)", 0n, PERM_X],
    ["S2AP=01 read", 1n << 6n, PERM_R | PERM_X],
    ["S2AP=10 write only", 2n << 6n, PERM_W | PERM_X],
    ["S2AP=11 read/write", 3n << 6n, PERM_RW | PERM_X],
    ["XN", (3n << 6n) | (1n << 54n), PERM_RW],
  ];
  for (const [name, bits, perms] of cases) {
    it(name, () => {
      const { mem, stage, put } = handBuilt(2);
      put(0x1000n, 3, 0x9000n | 3n | AF | bits);
      expect(expectOk(walkStage(mem, stage, 0x1000n, { kind: "read", privileged: true, probe: true })).perms).toBe(perms);
      expect(walkStage(mem, stage, 0x1000n, READ).ok).toBe((perms & Perm.PR) !== 0);
      expect(walkStage(mem, stage, 0x1000n, WRITE).ok).toBe((perms & Perm.PW) !== 0);
      // Execute needs execute permission only (ruling 4).
      expect(walkStage(mem, stage, 0x1000n, EXEC).ok).toBe((perms & Perm.PX) !== 0);
    });
  }

  it("FEAT_XNX: XN[1:0] splits privileged and unprivileged execute", () => {
    const { mem, stage, put } = handBuilt(2, 12, { xnx: true });
    const probe = { kind: "read", privileged: true, probe: true } as const;
    const perms = (xn: bigint) => {
      put(0x1000n, 3, 0x9000n | 3n | AF | (3n << 6n) | (xn << 53n));
      return expectOk(walkStage(mem, stage, 0x1000n, probe)).perms & PERM_X;
    };
    expect(perms(0n)).toBe(PERM_X);
    expect(perms(1n)).toBe(Perm.UX);
    expect(perms(2n)).toBe(0);
    expect(perms(3n)).toBe(Perm.PX);
  });
});

describe("map policies", () => {
  it("chooses blocks when aligned, pages otherwise, and honours blocks: false", () => {
    const { mem, alloc, stage } = fixture((root) => armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }));
    // 2 MB + 4 KB from a 2 MB-aligned IOVA and PA: one L2 block and one page.
    expect(mapRange(mem, stage, 0x20_0000n, 0x4020_0000n, 0x20_1000n, { perms: PERM_RW }, { alloc }).ok).toBe(true);
    const leaves: [bigint, number][] = [];
    forEachLeaf(mem, stage, 0n, 1n << 30n, (l) => leaves.push([l.iova, l.level]));
    expect(leaves).toEqual([
      [0x20_0000n, 2],
      [0x40_0000n, 3],
    ]);
    // Misaligned PA for a block: pages only.
    expect(mapRange(mem, stage, 0x4000_0000n, 0x5000_1000n, 0x20_0000n, { perms: PERM_R }, { alloc }).ok).toBe(true);
    expect(expectOk(walkStage(mem, stage, 0x4000_0000n, READ)).level).toBe(3);
    expect(mapRange(mem, stage, 0x8000_0000n, 0x8000_0000n, 0x40_0000n, { perms: PERM_R }, { alloc, blocks: false }).ok).toBe(true);
    expect(expectOk(walkStage(mem, stage, 0x803f_f000n, READ)).level).toBe(3);
    expect(mapRange(mem, stage, 0x1_0000_0000n, 0x1_0000_0000n, 0x4000_0000n, { perms: PERM_R }, { alloc, maxPageShift: 21 }).ok).toBe(true);
    expect(expectOk(walkStage(mem, stage, 0x1_0000_0000n, READ)).level).toBe(2);
  });

  it("refuses misaligned and out-of-range requests, and mapping under a block", () => {
    const { mem, alloc, stage } = fixture((root) => armStage1Config({ granuleShift: 12, tsz: 25, outputBits: 40, ttb: root }));
    expect(mapRange(mem, stage, 0x800n, 0n, 0x1000n, { perms: PERM_R }, { alloc }).ok).toBe(false);
    expect(mapRange(mem, stage, 1n << 39n, 0n, 0x1000n, { perms: PERM_R }, { alloc })).toMatchObject({ error: "out-of-range" });
    expect(mapRange(mem, stage, 0n, 1n << 40n, 0x1000n, { perms: PERM_R }, { alloc })).toMatchObject({ error: "out-of-range" });
    expect(mapRange(mem, stage, 0n, 0n, 0x4000_0000n, { perms: PERM_R }, { alloc }).ok).toBe(true);
    expect(mapRange(mem, stage, 0x1000n, 0n, 0x1000n, { perms: PERM_R }, { alloc })).toMatchObject({ ok: false, error: "exists", at: 0x1000n });
  });

  it("reports running out of table memory", () => {
    const mem = new SparseMemory(48);
    const alloc = new SimplePageAllocator(mem, 0x10_0000n, 0x2000n); // two pages: root + one table
    const root = alloc.alloc(4096) as bigint;
    const stage = ok(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }));
    expect(mapRange(mem, stage, 0n, 0n, 0x1000n, { perms: PERM_R }, { alloc })).toMatchObject({ ok: false, error: "no-memory", mapped: 0n });
  });
});

describe("unmap policies", () => {
  it("splits a block on a partial unmap when given an allocator, keeping the rest with the same attributes", () => {
    const { mem, alloc, stage } = fixture((root) => armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }));
    const prot = { perms: Perm.PR | Perm.UR | Perm.UX, memAttr: 2, notGlobal: false };
    expect(mapRange(mem, stage, 0x4000_0000n, 0x8000_0000n, 0x4000_0000n, prot, { alloc }).ok).toBe(true);
    const before = expectOk(walkStage(mem, stage, 0x4000_0000n, READ));
    expect(before.level).toBe(1);
    // Without an allocator: refused, nothing changed.
    expect(unmapRange(mem, stage, 0x4000_1000n, 0x1000n)).toEqual({ ok: false, error: "split-needed", at: 0x4000_0000n, unmapped: 0n });
    expect(expectOk(walkStage(mem, stage, 0x4000_1000n, READ)).level).toBe(1);
    // With one: the 1 GB block becomes 2 MB blocks, then the 2 MB block pages.
    expect(unmapRange(mem, stage, 0x4000_1000n, 0x1000n, { alloc })).toEqual({ ok: true, unmapped: 0x1000n });
    expect(expectFault(walkStage(mem, stage, 0x4000_1000n, READ))).toMatchObject({ kind: "translation", level: 3 });
    const p0 = expectOk(walkStage(mem, stage, 0x4000_0000n, READ));
    expect(p0).toMatchObject({ output: 0x8000_0000n, level: 3, perms: before.perms });
    expect(p0.s1?.desc).toBe(stage.format.encodeLeaf(0x8000_0000n, 3, prot));
    expect(expectOk(walkStage(mem, stage, 0x4020_0000n, READ))).toMatchObject({ output: 0x8020_0000n, level: 2 });
    expect(expectOk(walkStage(mem, stage, 0x7fff_f000n, READ))).toMatchObject({ output: 0xbfff_f000n, level: 2 });
  });

  it("frees tables whose whole range is unmapped and skips holes", () => {
    const { mem, alloc, stage } = fixture((root) => armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }));
    const base = alloc.allocated;
    expect(mapRange(mem, stage, 0x1000n, 0x1000n, 0x3000n, { perms: PERM_R }, { alloc }).ok).toBe(true);
    expect(alloc.allocated - base).toBe(3 * 4096); // L1, L2, L3 tables
    expect(unmapRange(mem, stage, 0n, 1n << 39n, { alloc })).toEqual({ ok: true, unmapped: 0x3000n });
    expect(alloc.allocated).toBe(base);
    expect(mem.read64(stage.root)).toEqual({ ok: true, value: 0n });
    expect(unmapRange(mem, stage, 0n, 0x10000n)).toEqual({ ok: true, unmapped: 0n });
  });

  it("stops with memory-error on an aborting table", () => {
    const { mem, alloc, stage } = fixture((root) => armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }));
    mapRange(mem, stage, 0n, 0n, 0x1000n, { perms: PERM_R }, { alloc });
    mem.addAbortRange(stage.root, 8n);
    expect(unmapRange(mem, stage, 0n, 0x1000n)).toEqual({ ok: false, error: "memory-error", at: stage.root, unmapped: 0n });
    expect(PERM_ALL).toBe(63);
  });
});
