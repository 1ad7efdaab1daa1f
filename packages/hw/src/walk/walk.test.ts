// The walker: fault values with all their fields, hardware access-flag and
// dirty updates, and nested walks (rulings 1, 2, 9; the 24-read cold walk).

import { describe, expect, it } from "vitest";
import { type ArmGranuleShift, armFormat, armStage1Config, armStage2Config } from "../format/arm.js";
import { mapRange, SimplePageAllocator, startTableBytes, unmapRange } from "../format/map.js";
import { vtdFirstStageConfig, vtdSecondStageConfig } from "../format/vtd.js";
import { SparseMemory } from "../memory.js";
import {
  Desc,
  EXEC,
  PERM_R,
  PERM_RW,
  PERM_X,
  Perm,
  READ,
  type StageConfig,
  type StageConfigResult,
  type TranslationConfig,
  type TranslationFault,
  type TranslationOk,
  type TranslationResult,
  WRITE,
  type WalkStep,
} from "../translation.js";
import { stage2View } from "./views.js";
import { translate, translateIpa, walkStage } from "./walk.js";

/** Walk options that keep each walk's descriptor reads (TranslationOk.descReads). */
const RECORD = { recordReads: true } as const;

function ok(r: StageConfigResult): StageConfig {
  if (!r.ok) throw new Error(r.error);
  return r.stage;
}
function expectOk(r: TranslationResult): TranslationOk {
  if (!r.ok) throw new Error(`expected ok, got ${r.kind} (stage ${r.stage} level ${r.level})`);
  return r;
}
function expectFault(r: TranslationResult): TranslationFault {
  if (r.ok) throw new Error(`expected a fault, got 0x${r.output.toString(16)}`);
  return r;
}

const AF = 1n << 10n;
const DBM = 1n << 51n;
const AP2 = 1n << 7n;

/** A single 4K stage with one page mapped, for hand-edited leaf tests. */
function single(stageNo: 1 | 2, extra: Partial<StageConfig> = {}, leafBits?: bigint) {
  const mem = new SparseMemory(48);
  const alloc = new SimplePageAllocator(mem, 0x100_0000n, 0x100_0000n);
  const root = alloc.alloc(4096) as bigint;
  const base =
    stageNo === 1
      ? ok(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root }))
      : ok(armStage2Config({ granuleShift: 12, s2t0sz: 16, sl0: 2, outputBits: 48, s2ttb: root }));
  const stage: StageConfig = { ...base, ...extra };
  mapRange(mem, stage, 0x4000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc });
  // Find the leaf slot.
  let leafAddr = 0n;
  walkStage(mem, stage, 0x4000n, { kind: "read", privileged: true, probe: true }, {
    visitor: (s) => {
      if (s.level === 3) leafAddr = s.descAddr;
    },
  });
  if (leafBits !== undefined) mem.write64(leafAddr, 0x9000n | 3n | leafBits);
  const leaf = () => (mem.read64(leafAddr) as { ok: true; value: bigint }).value;
  return { mem, alloc, stage, leafAddr, leaf };
}

describe("fault values (single stage)", () => {
  it("translation: invalid descriptor at each level, with descriptor address and value", () => {
    const { mem, stage, leafAddr } = single(1);
    const f = expectFault(walkStage(mem, stage, 0x8000_0000n, WRITE));
    expect(f).toEqual({
      ok: false,
      kind: "translation",
      stage: 1,
      level: 1,
      input: 0x8000_0000n,
      ipa: undefined,
      cls: "IN",
      descAddr: f.descAddr,
      desc: 0n,
      s1Level: undefined,
      access: "write",
      privileged: true,
      perms: undefined,
    });
    expect(f.descAddr).toBeDefined();
    mem.write64(leafAddr, 0n);
    expect(expectFault(walkStage(mem, stage, 0x4000n, READ))).toMatchObject({ kind: "translation", level: 3, descAddr: leafAddr });
  });

  it("external abort on a descriptor fetch: stage 1 reports CLASS TT and the fetch address", () => {
    const { mem, stage, leafAddr } = single(1);
    mem.addAbortRange(leafAddr, 8n);
    expect(expectFault(walkStage(mem, stage, 0x4000n, READ))).toMatchObject({
      kind: "external-abort",
      stage: 1,
      level: 3,
      cls: "TT",
      descAddr: leafAddr,
      access: "read",
    });
    mem.clearAbortRanges();
    mem.addAbortRange(stage.root, 8n);
    expect(expectFault(walkStage(mem, stage, 0x4000n, READ))).toMatchObject({ kind: "external-abort", level: 0, descAddr: stage.root });
  });

  it("external abort in a stage-2-only walk: stage 2, CLASS IN, IPA = input", () => {
    const { mem, stage, leafAddr } = single(2);
    mem.addAbortRange(leafAddr, 8n);
    expect(expectFault(walkStage(mem, stage, 0x4010n, READ))).toMatchObject({
      kind: "external-abort",
      stage: 2,
      level: 3,
      cls: "IN",
      ipa: 0x4010n,
      descAddr: leafAddr,
    });
  });

  it("input range: low (TTB0), high (TTB1) forms", () => {
    const { mem, stage } = single(1);
    expect(expectFault(walkStage(mem, stage, 1n << 48n, READ))).toMatchObject({ kind: "input-range", level: 0, descAddr: undefined });
    const high: StageConfig = { ...stage, inputForm: "high" };
    expect(expectFault(walkStage(mem, high, 0x4000n, READ)).kind).toBe("input-range");
    // TTB1: 0xffff_0000_0000_4000 indexes like 0x4000.
    expect(expectOk(walkStage(mem, high, 0xffff_0000_0000_4008n, READ)).output).toBe(0x9008n);
  });

  it("an impossible hand-built StageConfig is a fault, not an exception", () => {
    const { mem, stage } = single(1);
    expect(expectFault(walkStage(mem, { ...stage, inputBits: 39, startLevel: 0 }, 0x1000n, READ))).toMatchObject({ kind: "translation", level: 0 });
    expect(expectFault(walkStage(mem, { ...stage, startLevel: 3 }, 0x1000n, READ))).toMatchObject({ kind: "translation", level: 3 });
  });

  it("bypass and abort configs", () => {
    const mem = new SparseMemory(48);
    expect(expectOk(translate(mem, { mode: "bypass" }, 0x1234n, WRITE))).toMatchObject({ output: 0x1234n, perms: 63 });
    expect(expectFault(translate(mem, { mode: "abort" }, 0x1234n, READ))).toMatchObject({ kind: "aborted", stage: 0 });
  });

  it("S2-only with stage 1 bypassed: input ≥ 2^IAS is a stage-1 address-size fault", () => {
    const { mem, stage } = single(2);
    const cfg: TranslationConfig = { mode: "s2", s2: stage, s1Tag: -1, s2Tag: 3, s1BypassInputBits: 40 };
    expect(expectFault(translate(mem, cfg, 1n << 40n, READ))).toMatchObject({ kind: "address-size", stage: 1 });
    expect(expectOk(translate(mem, cfg, 0x4000n, READ)).output).toBe(0x9000n);
  });
});

describe("hardware access flag and dirty updates", () => {
  it("AF=0 without HA: access-flag fault before permission (ruling 2)", () => {
    const { mem, stage, leafAddr } = single(1, {}, AP2); // read-only, AF=0
    expect(expectFault(walkStage(mem, stage, 0x4000n, WRITE))).toMatchObject({ kind: "access-flag", level: 3, descAddr: leafAddr });
  });

  it("AFFD: AF=0 neither faults nor is updated", () => {
    const { mem, stage, leaf } = single(1, { affd: true }, 0n);
    expect(walkStage(mem, stage, 0x4000n, READ).ok).toBe(true);
    expect(leaf() & AF).toBe(0n);
  });

  it("HA sets AF with compare-and-swap and the visitor sees the write-back", () => {
    const { mem, stage, leaf, leafAddr } = single(1, { ha: true }, 0n);
    const steps: WalkStep[] = [];
    expect(walkStage(mem, stage, 0x4000n, READ, { visitor: (s) => steps.push(s) }).ok).toBe(true);
    expect(leaf() & AF).toBe(AF);
    const wb = steps.find((s) => s.updated !== undefined);
    expect(wb).toMatchObject({ stage: 1, level: 3, descAddr: leafAddr, value: 0x9003n, updated: 0x9003n | AF });
  });

  it("HD + DBM (stage 1): a write clears AP[2]; a read leaves it clean and marks writeNeedsWalk", () => {
    const { mem, stage, leaf } = single(1, { ha: true, hd: true }, AF | AP2 | DBM);
    const r = expectOk(walkStage(mem, stage, 0x4000n, READ));
    expect(r.s1?.writeNeedsWalk).toBe(true);
    expect(r.perms & Perm.PW).toBe(0);
    expect(leaf() & AP2).toBe(AP2);
    const w = expectOk(walkStage(mem, stage, 0x4000n, WRITE));
    expect(w.perms & Perm.PW).toBe(Perm.PW);
    expect(w.s1?.writeNeedsWalk).toBe(false);
    expect(leaf() & AP2).toBe(0n);
    expect(w.s1?.desc).toBe(leaf());
  });

  it("HD without DBM, or DBM without HD: a write to a read-only page is a permission fault", () => {
    const noDbm = single(1, { ha: true, hd: true }, AF | AP2);
    expect(expectFault(walkStage(noDbm.mem, noDbm.stage, 0x4000n, WRITE)).kind).toBe("permission");
    expect(noDbm.leaf() & AP2).toBe(AP2);
    const s = single(1, {}, AF | AP2 | DBM);
    expect(expectFault(walkStage(s.mem, s.stage, 0x4000n, WRITE)).kind).toBe("permission");
    expect(s.leaf() & AP2).toBe(AP2);
  });

  it("APTable[1] keeps a DBM page read-only (no dirty update)", () => {
    const s = single(1, { ha: true, hd: true }, AF | AP2 | DBM);
    // Set APTable[1] on the level-2 table descriptor.
    let l2 = 0n;
    walkStage(s.mem, s.stage, 0x4000n, READ, { visitor: (st) => { if (st.level === 2) l2 = st.descAddr; } });
    const v = (s.mem.read64(l2) as { value: bigint }).value;
    s.mem.write64(l2, v | (1n << 62n));
    expect(expectFault(walkStage(s.mem, s.stage, 0x4000n, WRITE)).kind).toBe("permission");
    expect(s.leaf() & AP2).toBe(AP2);
  });

  it("stage 2: S2HD + DBM sets S2AP[1]; S2HA sets AF", () => {
    const { mem, stage, leaf } = single(2, { ha: true, hd: true }, (1n << 6n) | DBM); // S2AP=01, AF=0
    expect(walkStage(mem, stage, 0x4000n, READ).ok).toBe(true);
    expect(leaf()).toBe(0x9003n | (1n << 6n) | DBM | AF);
    expect(walkStage(mem, stage, 0x4000n, WRITE).ok).toBe(true);
    expect(leaf() & (1n << 7n)).toBe(1n << 7n);
  });

  it("probe (ATS) walks do not fault on permission and do not dirty", () => {
    const { mem, stage, leaf } = single(1, { ha: true, hd: true }, AF | AP2 | DBM);
    const r = expectOk(walkStage(mem, stage, 0x4000n, { kind: "write", privileged: true, probe: true }));
    expect(r.perms & Perm.PW).toBe(0);
    expect(leaf() & AP2).toBe(AP2);
  });

  it("a lost compare-and-swap restarts the walk; a descriptor that never settles is reported", () => {
    const s = single(1, { ha: true }, 0n);
    let races = 1;
    const m = Object.create(s.mem) as SparseMemory;
    m.cas64 = (addr: bigint, expected: bigint, value: bigint) => {
      if (races-- > 0) return { ok: true, value: expected ^ 0x1000n }; // someone else changed it
      return s.mem.cas64(addr, expected, value);
    };
    const before = s.mem.stats.reads;
    expect(walkStage(m, s.stage, 0x4000n, READ).ok).toBe(true);
    expect(s.mem.stats.reads - before).toBe(9); // walked twice, plus the read inside the successful cas64
    expect(s.leaf() & AF).toBe(AF);
    const t = single(1, { ha: true }, 0n);
    const never = Object.create(t.mem) as SparseMemory;
    never.cas64 = (_a: bigint, expected: bigint) => ({ ok: true, value: expected ^ 0x1000n });
    expect(expectFault(walkStage(never, t.stage, 0x4000n, READ))).toMatchObject({ kind: "external-abort", access: "write", descAddr: t.leafAddr });
  });

  it("an abort on the A/D write-back is an external abort on a write", () => {
    const s = single(1, { ha: true }, 0n);
    // Make writes to the leaf abort by wrapping cas64.
    const m = Object.create(s.mem) as SparseMemory;
    m.cas64 = (addr: bigint) => ({ ok: false, abort: "external", addr });
    expect(expectFault(walkStage(m, s.stage, 0x4000n, READ))).toMatchObject({ kind: "external-abort", access: "write", descAddr: s.leafAddr, cls: "TT" });
  });
});

// ---------------------------------------------------------------------------
// Nested

const GUEST_RAM_IPA = 0x4000_0000n;
const GUEST_RAM_SIZE = 0x200_0000n; // 32 MB
const HOST_SCATTER = 0x2_0000_0000n;

/**
 * Host memory with a stage 2 mapping guest RAM (IPA 0x4000_0000..) to host
 * pages in REVERSED 4K order (so no two consecutive IPA pages are adjacent in
 * PA), plus a guest stage 1 built with map through the stage-2 view.
 */
function nestedFixture(s1Granule: ArmGranuleShift = 12, s2Granule: ArmGranuleShift = 12, s1Extra: Partial<StageConfig> = {}) {
  const mem = new SparseMemory(48);
  const halloc = new SimplePageAllocator(mem, 0x1000_0000n, 0x1000_0000n);
  const s2root = halloc.alloc(65536) as bigint;
  const s2 = ok(armStage2Config({ granuleShift: s2Granule, s2t0sz: 16, sl0: s2Granule === 12 ? 2 : 2, outputBits: 48, s2ttb: s2root }));
  const g = 1n << BigInt(s2Granule);
  const n = GUEST_RAM_SIZE / g;
  for (let i = 0n; i < n; i++) {
    const pa = HOST_SCATTER + (n - 1n - i) * g;
    const r = mapRange(mem, s2, GUEST_RAM_IPA + i * g, pa, g, { perms: PERM_RW | PERM_X }, { alloc: halloc });
    if (!r.ok) throw new Error(r.error);
  }
  const gview = stage2View(mem, s2);
  const galloc = new SimplePageAllocator(gview, GUEST_RAM_IPA, 0x100_0000n);
  const ttb = galloc.alloc(65536) as bigint;
  const s1 = { ...ok(armStage1Config({ granuleShift: s1Granule, tsz: 16, outputBits: 48, ttb })), ...s1Extra };
  const cfg: TranslationConfig = { mode: "nested", s1, s2, s1Tag: 5, s2Tag: 9 };
  const ipaToPa = (ipa: bigint) => expectOk(walkStage(mem, s2, ipa, READ)).output;
  return { mem, halloc, s2, gview, galloc, s1, cfg, ipaToPa };
}

describe("nested walks", () => {
  it("walks started inside a walk (a translating memory, a visitor) do not disturb it", () => {
    const f = nestedFixture();
    expect(mapRange(f.gview, f.s1, 0x1234_5000n, 0x4180_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc }).ok).toBe(true);
    const ref = expectOk(translate(f.mem, f.cfg, 0x1234_5678n, READ, RECORD));
    // Stage 1 walked in guest memory: every descriptor read is itself a stage-2 walk.
    const viaView = expectOk(walkStage(f.gview, f.s1, 0x1234_5678n, READ, RECORD));
    expect(viaView.output).toBe(ref.ipa);
    expect(viaView.descReads?.length).toBe(4);
    // A visitor that translates on every step.
    let inner = 0;
    const r = expectOk(
      translate(f.mem, f.cfg, 0x1234_5678n, READ, {
        recordReads: true,
        visitor: () => {
          if (expectOk(translate(f.mem, f.cfg, 0x1234_5000n, READ)).output === ref.output - 0x678n) inner++;
        },
      }),
    );
    expect(inner).toBe(24);
    expect(r.output).toBe(ref.output);
    expect(r.descReads).toHaveLength(24);
    expect(r.descReads).toEqual(ref.descReads);
  });

  it("a cold 4×4 nested walk reads 24 descriptors, in architectural order (§5.2)", () => {
    const f = nestedFixture();
    // VA 0x1234_5000 → IPA in guest RAM (data page at IPA 0x4180_0000).
    expect(mapRange(f.gview, f.s1, 0x1234_5000n, 0x4180_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc }).ok).toBe(true);
    const before = f.mem.stats.reads;
    const steps: WalkStep[] = [];
    const r = expectOk(translate(f.mem, f.cfg, 0x1234_5678n, WRITE, { visitor: (s) => steps.push(s), recordReads: true }));
    expect(f.mem.stats.reads - before).toBe(24);
    expect(r.descReads?.length).toBe(24);
    expect(r.ipa).toBe(0x4180_0678n);
    expect(r.output).toBe(f.ipaToPa(0x4180_0000n) + 0x678n);
    expect(r.perms).toBe(r.s1!.perms & r.s2!.perms);
    // Order: (S2 ×4, S1) × 4 levels, then S2 ×4 for the output.
    const pattern = steps.map((s) => (s.stage === 1 ? `1:L${s.level}` : `2:${s.purpose}`));
    const expected: string[] = [];
    for (let l = 0; l < 4; l++) expected.push("2:table", "2:table", "2:table", "2:table", `1:L${l}`);
    expected.push("2:output", "2:output", "2:output", "2:output");
    expect(pattern).toEqual(expected);
    // Each S1 read happens at the PA stage 2 gives for that descriptor's IPA (ruling 1).
    for (const s of steps.filter((x) => x.stage === 1)) {
      expect(s.descAddr).toBe(f.ipaToPa(s.descIpa as bigint));
    }
  });

  for (const s1g of [14, 16] as const) {
    it(`a ${1 << (s1g - 10)}K stage-1 table spread over non-contiguous 4K stage-2 pages walks correctly (ruling 1)`, () => {
      const f = nestedFixture(s1g, 12);
      const gs = 1n << BigInt(s1g);
      const fmt = f.s1.format;
      // Map many pages so the last-level table is populated across all its 4K chunks.
      const entries = 2n ** BigInt(fmt.bitsPerLevel);
      const step = entries / 8n; // 8 leaves spread over the whole table
      const leaves: [bigint, bigint][] = [];
      for (let i = 0n; i < entries; i += step) {
        const va = 0x10_0000_0000n + i * gs;
        const ipa = GUEST_RAM_IPA + 0x100_0000n + (i / step) * gs;
        expect(mapRange(f.gview, f.s1, va, ipa, gs, { perms: PERM_R }, { alloc: f.galloc }).ok).toBe(true);
        leaves.push([va, ipa]);
      }
      for (const [va, ipa] of leaves) {
        const steps: WalkStep[] = [];
        const r = expectOk(translate(f.mem, f.cfg, va + 0x10n, READ, { visitor: (s) => steps.push(s) }));
        expect(r.ipa).toBe(ipa + 0x10n);
        expect(r.output).toBe(f.ipaToPa(ipa) + 0x10n);
        const leafStep = steps.filter((s) => s.stage === 1).at(-1) as WalkStep;
        // The descriptor PA is not the table's PA + index × 8 when the table's pages are scattered.
        expect(leafStep.descAddr).toBe(f.ipaToPa(leafStep.descIpa as bigint));
      }
      // The leaves live in different 4K pieces of one table whose pieces are not adjacent in PA.
      const pas = leaves.map(([va]) => {
        let pa = 0n;
        translate(f.mem, f.cfg, va, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 3) pa = s.descAddr; } });
        return pa;
      });
      const diffs = pas.slice(1).map((p, i) => p - (pas[i] as bigint));
      expect(diffs.some((d) => d < 0n)).toBe(true);
    });
  }

  it("stage-2 fault on a stage-1 descriptor fetch: S2, CLASS TT, IPA = the descriptor's IPA", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x1234_5000n, 0x4180_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc });
    // Find the IPA of the level-2 descriptor, then unmap its S2 page.
    let l2Ipa = 0n;
    translate(f.mem, f.cfg, 0x1234_5000n, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 2) l2Ipa = s.descIpa as bigint; } });
    expect(unmapRange(f.mem, f.s2, l2Ipa & ~0xfffn, 0x1000n).ok).toBe(true);
    const fault = expectFault(translate(f.mem, f.cfg, 0x1234_5678n, WRITE));
    expect(fault).toMatchObject({
      kind: "translation",
      stage: 2,
      level: 3,
      cls: "TT",
      ipa: l2Ipa,
      s1Level: 2,
      input: 0x1234_5678n,
      access: "read",
      privileged: true,
    });
  });

  it("stage-2 fault on the stage-1 root fetch reports s1Level = start level", () => {
    const f = nestedFixture();
    expect(unmapRange(f.mem, f.s2, f.s1.root, 0x1000n).ok).toBe(true);
    expect(expectFault(translate(f.mem, f.cfg, 0x1000n, READ))).toMatchObject({ stage: 2, cls: "TT", s1Level: 0, ipa: f.s1.root });
  });

  it("stage-2 fault on the output IPA: S2, CLASS IN, IPA = the output IPA", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x5000n, 0x9_0000_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc });
    expect(expectFault(translate(f.mem, f.cfg, 0x5abcn, READ))).toMatchObject({
      kind: "translation",
      stage: 2,
      cls: "IN",
      ipa: 0x9_0000_0abcn,
      access: "read",
    });
  });

  it("fault order (ruling 2): stage-1 permission before the stage-2 walk of the output", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x5000n, 0x9_0000_0000n, 0x1000n, { perms: PERM_R }, { alloc: f.galloc });
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, WRITE))).toMatchObject({ kind: "permission", stage: 1, cls: "IN" });
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, READ))).toMatchObject({ kind: "translation", stage: 2, cls: "IN" });
  });

  it("fault order: a stage-2 fault on a table fetch comes before a stage-1 fault below it", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x5000n, 0x4180_0000n, 0x1000n, { perms: PERM_R }, { alloc: f.galloc });
    let l3Ipa = 0n;
    translate(f.mem, f.cfg, 0x5000n, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 3) l3Ipa = s.descIpa as bigint; } });
    unmapRange(f.mem, f.s2, l3Ipa & ~0xfffn, 0x1000n);
    // Address 0x6000 has no S1 leaf (translation fault at S1 L3) but the L3 table fetch faults at S2 first.
    expect(expectFault(translate(f.mem, f.cfg, 0x6000n, READ))).toMatchObject({ stage: 2, cls: "TT", s1Level: 3 });
  });

  it("combined permissions: S1 write allowed but S2 read-only → stage-2 permission fault on the output", () => {
    const f = nestedFixture();
    const ro = 0x5_0000_0000n;
    mapRange(f.mem, f.s2, ro, 0x7000_0000n, 0x1000n, { perms: PERM_R }, { alloc: f.halloc });
    mapRange(f.gview, f.s1, 0x5000n, ro, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc });
    const r = expectOk(translate(f.mem, f.cfg, 0x5000n, READ));
    expect(r.s1!.perms & Perm.PW).toBe(Perm.PW);
    expect(r.s2!.perms & Perm.PW).toBe(0);
    expect(r.perms & Perm.PW).toBe(0);
    expect(expectFault(translate(f.mem, f.cfg, 0x5008n, WRITE))).toMatchObject({ kind: "permission", stage: 2, cls: "IN", ipa: ro + 8n, perms: r.s2!.perms });
  });

  it("execute-only at stage 2 allows instruction fetches only (ruling 4)", () => {
    const f = nestedFixture();
    const xo = 0x5_0000_0000n;
    mapRange(f.mem, f.s2, xo, 0x7000_0000n, 0x1000n, { perms: PERM_X }, { alloc: f.halloc });
    mapRange(f.gview, f.s1, 0x5000n, xo, 0x1000n, { perms: Perm.PR | Perm.PX }, { alloc: f.galloc });
    expect(translate(f.mem, f.cfg, 0x5000n, EXEC).ok).toBe(true);
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, READ))).toMatchObject({ kind: "permission", stage: 2 });
  });

  it("HA in nested: the AF update needs stage-2 write on the descriptor's IPA (ruling 9)", () => {
    const f = nestedFixture(12, 12, { ha: true });
    mapRange(f.gview, f.s1, 0x5000n, 0x4180_0000n, 0x1000n, { perms: PERM_RW, accessed: false }, { alloc: f.galloc });
    let leafIpa = 0n;
    translate(f.mem, f.cfg, 0x5000n, { kind: "read", privileged: true, probe: true }, {
      visitor: (s) => { if (s.stage === 1 && s.level === 3) leafIpa = s.descIpa as bigint; },
    });
    // The probe set AF (HA applies to probes); clear it again.
    const leafVal = (f.gview.read64(leafIpa) as { value: bigint }).value;
    expect(leafVal & AF).toBe(AF);
    f.gview.write64(leafIpa, leafVal & ~AF);
    // Make the S2 mapping of the leaf table page read-only.
    const page = leafIpa & ~0xfffn;
    const pa = f.ipaToPa(page);
    unmapRange(f.mem, f.s2, page, 0x1000n);
    mapRange(f.mem, f.s2, page, pa, 0x1000n, { perms: PERM_R }, { alloc: f.halloc });
    // The (ungranted) write comes before the stage-1 permission check: even a S1-permitted read faults.
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, READ))).toMatchObject({
      kind: "permission",
      stage: 2,
      cls: "TT",
      ipa: leafIpa,
      s1Level: 3,
      access: "write",
    });
    // With stage-2 write allowed the AF is set in guest memory.
    unmapRange(f.mem, f.s2, page, 0x1000n);
    mapRange(f.mem, f.s2, page, pa, 0x1000n, { perms: PERM_RW }, { alloc: f.halloc });
    expect(translate(f.mem, f.cfg, 0x5000n, READ).ok).toBe(true);
    expect(((f.gview.read64(leafIpa) as { value: bigint }).value & AF) !== 0n).toBe(true);
  });

  it("stage-1 external abort during a nested walk: stage 1, CLASS TT, FetchAddr = descriptor PA", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x5000n, 0x4180_0000n, 0x1000n, { perms: PERM_R }, { alloc: f.galloc });
    let l1Pa = 0n;
    translate(f.mem, f.cfg, 0x5000n, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 1) l1Pa = s.descAddr; } });
    f.mem.addAbortRange(l1Pa, 8n);
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, READ))).toMatchObject({ kind: "external-abort", stage: 1, level: 1, cls: "TT", descAddr: l1Pa });
  });

  it("stage-2 external abort while translating a table address: stage 2, CLASS TT", () => {
    const f = nestedFixture();
    mapRange(f.gview, f.s1, 0x5000n, 0x4180_0000n, 0x1000n, { perms: PERM_R }, { alloc: f.galloc });
    f.mem.addAbortRange(f.s2.root, 8n);
    expect(expectFault(translate(f.mem, f.cfg, 0x5000n, READ))).toMatchObject({ kind: "external-abort", stage: 2, level: 0, cls: "TT", descAddr: f.s2.root, s1Level: 0 });
  });

  it("translateIpa: CD fetch through stage 2 with CLASS CD", () => {
    const f = nestedFixture();
    expect(expectOk(translateIpa(f.mem, f.s2, GUEST_RAM_IPA + 0x40n)).output).toBe(f.ipaToPa(GUEST_RAM_IPA) + 0x40n);
    expect(expectFault(translateIpa(f.mem, f.s2, 0x9_0000_0000n, READ, { cls: "CD", input: 0x1000n }))).toMatchObject({
      kind: "translation",
      stage: 2,
      cls: "CD",
      ipa: 0x9_0000_0000n,
      input: 0x1000n,
    });
    expect(expectFault(translateIpa(f.mem, f.s2, 1n << 48n, READ, { cls: "CD" }))).toMatchObject({ kind: "input-range", cls: "CD" });
  });

  it("stage-1 output beyond the stage-2 input size: stage-2 input-range, CLASS IN", () => {
    const f = nestedFixture();
    const s2 = { ...f.s2, inputBits: 40 };
    const cfg: TranslationConfig = { mode: "nested", s1: f.s1, s2, s1Tag: 1, s2Tag: 1 };
    mapRange(f.gview, f.s1, 0x5000n, 1n << 41n, 0x1000n, { perms: PERM_R }, { alloc: f.galloc });
    expect(expectFault(translate(f.mem, cfg, 0x5000n, READ))).toMatchObject({ kind: "input-range", stage: 2, cls: "IN", ipa: 1n << 41n });
  });

  it("nested block sizes combine to the smaller leaf", () => {
    const f = nestedFixture();
    // S2 maps guest RAM with 4K pages; S1 maps a 2 MB block onto it.
    mapRange(f.gview, f.s1, 0x20_0000n, GUEST_RAM_IPA + 0x120_0000n, 0x20_0000n, { perms: PERM_R }, { alloc: f.galloc });
    const r = expectOk(translate(f.mem, f.cfg, 0x20_1234n, READ));
    expect(r.s1!.level).toBe(2);
    expect(r.s2!.level).toBe(3);
    expect(r).toMatchObject({ pageShift: 12, level: 3 });
    expect(Desc.BLOCK).toBe(2);
    expect(armFormat(1, 12).name).toBe("arm-s1-4k");
    expect(startTableBytes(f.s1.format, 48, 0)).toBe(4096);
  });
});

describe("garbage tables never throw", () => {
  it("random descriptors in every format give values, not exceptions", () => {
    let seed = 99;
    const rnd32 = () => {
      seed = (Math.imul(seed, 1664525) + 1013904223) >>> 0;
      return seed;
    };
    const rnd64 = () => (BigInt(rnd32()) << 32n) | BigInt(rnd32());
    const configs: StageConfig[] = [
      ok(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: 0n, ha: true, hd: true })),
      ok(armStage1Config({ granuleShift: 16, tsz: 16, outputBits: 48, ttb: 0n })),
      ok(armStage2Config({ granuleShift: 14, s2t0sz: 24, sl0: 1, outputBits: 44, s2ttb: 0n, ha: true, hd: true })),
      ok(vtdFirstStageConfig({ levels: 5, fsptptr: 0n, haw: 46, sre: true, nxe: true, eafe: true })),
      ok(vtdSecondStageConfig({ aw: 3, ssptptr: 0n, haw: 46, ssade: true, large2M: true, large1G: true })),
    ];
    const kinds = new Set<string>();
    for (const cfg of configs) {
      const mem = new SparseMemory(40);
      // Garbage in the first 64 KB pages of memory, where every walk starts and often lands.
      for (let a = 0n; a < 0x10_0000n; a += 8n) mem.write64(a, rnd32() % 3 === 0 ? rnd64() : (rnd64() & 0xf_ffffn) | BigInt(rnd32() & 3));
      for (let i = 0; i < 400; i++) {
        const va = rnd64() & ((1n << BigInt(cfg.inputBits)) - 1n);
        for (const access of [READ, WRITE, EXEC]) {
          const r = walkStage(mem, cfg, va, access);
          kinds.add(r.ok ? "ok" : r.kind);
        }
      }
      const nested: TranslationConfig = { mode: "nested", s1: cfg, s2: configs[2] as StageConfig, s1Tag: 1, s2Tag: 1 };
      for (let i = 0; i < 100; i++) {
        const r = translate(mem, nested, rnd64() & ((1n << 39n) - 1n), READ);
        kinds.add(r.ok ? "ok" : r.kind);
      }
    }
    // Several outcomes were exercised.
    expect(kinds.has("translation")).toBe(true);
    expect(kinds.has("address-size") || kinds.has("external-abort")).toBe(true);
    expect(kinds.size).toBeGreaterThanOrEqual(4);
  });
});
