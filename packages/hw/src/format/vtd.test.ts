// VT-d first-stage (4/5-level, canonical, 1 GB gating, U/S, WPE, SRE, XD/NXE,
// A/D/EA) and second-stage (3/4/5-level, superpages, present = R|W, SSADE,
// SSEE) formats, and VT-d nested walks through the same walker.

import { describe, expect, it } from "vitest";
import { SparseMemory } from "../memory.js";
import {
  EXEC,
  EXEC_USER,
  PERM_R,
  PERM_RW,
  Perm,
  READ,
  READ_USER,
  type StageConfig,
  type StageConfigResult,
  type TranslationConfig,
  type TranslationFault,
  type TranslationOk,
  type TranslationResult,
  WRITE,
  WRITE_USER,
  type WalkStep,
} from "../translation.js";
import { stage2View } from "../walk/views.js";
import { translate, walkStage } from "../walk/walk.js";
import { forEachLeaf, mapRange, SimplePageAllocator } from "./map.js";
import {
  VTD_FIRST_STAGE,
  VTD_SECOND_STAGE,
  type VtdFirstStageParams,
  type VtdSecondStageParams,
  vtdFirstStageConfig,
  vtdSecondStageConfig,
  vtdSpecLevel,
} from "./vtd.js";

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

function fs(p: Partial<VtdFirstStageParams> = {}) {
  const mem = new SparseMemory(52);
  const alloc = new SimplePageAllocator(mem, 0x100_0000n, 0x100_0000n);
  const root = alloc.alloc(4096) as bigint;
  const stage = ok(vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 46, sre: true, ...p }));
  return { mem, alloc, stage };
}

function ss(p: Partial<VtdSecondStageParams> = {}) {
  const mem = new SparseMemory(52);
  const alloc = new SimplePageAllocator(mem, 0x100_0000n, 0x100_0000n);
  const root = alloc.alloc(4096) as bigint;
  const stage = ok(vtdSecondStageConfig({ aw: 2, ssptptr: root, haw: 46, ...p }));
  return { mem, alloc, stage };
}

/** Leaf descriptor address of a mapped input (via a probe walk). */
function slotOf(mem: SparseMemory, stage: StageConfig, va: bigint, level: number): bigint {
  let a = -1n;
  walkStage(mem, stage, va, { kind: "read", privileged: true, probe: true }, {
    visitor: (s) => {
      if (s.level === level && s.updated === undefined) a = s.descAddr;
    },
  });
  return a;
}
const rd = (mem: SparseMemory, a: bigint) => (mem.read64(a) as { ok: true; value: bigint }).value;

describe("VT-d level numbering", () => {
  it("common levels map to the spec's", () => {
    expect([-1, 0, 1, 2, 3].map(vtdSpecLevel)).toEqual([5, 4, 3, 2, 1]);
    expect(VTD_FIRST_STAGE.levelName(0)).toBe("PML4E");
    expect(VTD_SECOND_STAGE.levelName(2)).toBe("SL-PDE");
  });
});

describe("VT-d first stage", () => {
  it("config: FSPM levels and widths", () => {
    expect(fs().stage).toMatchObject({ startLevel: 0, inputBits: 48, inputForm: "canonical", ha: true, hd: true });
    expect(fs({ levels: 5 }).stage).toMatchObject({ startLevel: -1, inputBits: 57 });
    expect(vtdFirstStageConfig({ levels: 3 as 4, fsptptr: 0n, haw: 46 }).ok).toBe(false);
  });

  for (const levels of [4, 5] as const) {
    it(`${levels}-level: map and walk low and upper-half canonical addresses`, () => {
      const { mem, alloc, stage } = fs({ levels });
      const ia = levels === 5 ? 57n : 48n;
      const upper = (~0n << (ia - 1n)) & ((1n << 64n) - 1n); // first upper-half canonical address
      const addrs = [0x1000n, (1n << (ia - 1n)) - 0x1000n, upper, 0xffff_ffff_ffff_f000n];
      addrs.forEach((va, i) => {
        expect(mapRange(mem, stage, va, 0x4000_0000n + BigInt(i) * 0x1000n, 0x1000n, { perms: PERM_RW }, { alloc }).ok).toBe(true);
      });
      addrs.forEach((va, i) => {
        const r = expectOk(walkStage(mem, stage, va + 0x10n, WRITE, RECORD));
        expect(r.output).toBe(0x4000_0010n + BigInt(i) * 0x1000n);
        expect(r.descReads?.length).toBe(levels);
      });
      // Non-canonical: first address past the lower half.
      expect(expectFault(walkStage(mem, stage, 1n << (ia - 1n), READ))).toMatchObject({ kind: "non-canonical", stage: 1, level: stage.startLevel });
      expect(expectFault(walkStage(mem, stage, upper - 0x1000n, READ)).kind).toBe("non-canonical");
      // Miss inside the range.
      expect(expectFault(walkStage(mem, stage, 0x2000n, READ))).toMatchObject({ kind: "translation", level: 3 });
    });
  }

  it("2 MB pages always; 1 GB pages only with FL1GP (else reserved-bit)", () => {
    const a = fs();
    expect(mapRange(a.mem, a.stage, 0x4000_0000n, 0x8000_0000n, 0x4000_0000n, { perms: PERM_RW }, { alloc: a.alloc }).ok).toBe(true);
    const leaves: number[] = [];
    forEachLeaf(a.mem, a.stage, 0x4000_0000n, 0x4000_0000n, (l) => leaves.push(l.level));
    expect(leaves.length).toBe(512);
    expect(new Set(leaves)).toEqual(new Set([2]));
    expect(expectOk(walkStage(a.mem, a.stage, 0x4020_0123n, READ))).toMatchObject({ output: 0x8020_0123n, pageShift: 21 });
    // Hand-written PS=1 in a PDPE without FL1GP.
    const pdpe = slotOf(a.mem, a.stage, 0x4000_0000n, 1);
    a.mem.write64(pdpe, 0xc000_0000n | 0x87n); // P|RW|US|PS
    expect(expectFault(walkStage(a.mem, a.stage, 0x4000_0000n, READ))).toMatchObject({ kind: "reserved-bit", level: 1, descAddr: pdpe });
    const b = fs({ large1G: true });
    expect(mapRange(b.mem, b.stage, 0x4000_0000n, 0x8000_0000n, 0x4000_0000n, { perms: PERM_RW }, { alloc: b.alloc }).ok).toBe(true);
    expect(expectOk(walkStage(b.mem, b.stage, 0x7fff_ffffn, READ))).toMatchObject({ output: 0xbfff_ffffn, level: 1, pageShift: 30 });
    // Large-page address bits [20:13] must be zero.
    const c = fs();
    mapRange(c.mem, c.stage, 0x20_0000n, 0x20_0000n, 0x20_0000n, { perms: PERM_R }, { alloc: c.alloc });
    const pde = slotOf(c.mem, c.stage, 0x20_0000n, 2);
    c.mem.write64(pde, rd(c.mem, pde) | 0x2000n);
    expect(expectFault(walkStage(c.mem, c.stage, 0x20_0000n, READ)).kind).toBe("reserved-bit");
    // PS in a PML4E is reserved.
    const pml4e = slotOf(c.mem, c.stage, 0x20_0000n, 0);
    c.mem.write64(pml4e, rd(c.mem, pml4e) | 0x80n);
    expect(expectFault(walkStage(c.mem, c.stage, 0x20_0000n, READ))).toMatchObject({ kind: "reserved-bit", level: 0 });
  });

  it("XD is reserved unless NXE; with NXE it removes execute", () => {
    const a = fs();
    mapRange(a.mem, a.stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc: a.alloc });
    const pte = slotOf(a.mem, a.stage, 0x1000n, 3);
    a.mem.write64(pte, rd(a.mem, pte) | (1n << 63n));
    expect(expectFault(walkStage(a.mem, a.stage, 0x1000n, READ))).toMatchObject({ kind: "reserved-bit", level: 3 });
    const nx: StageConfig = { ...a.stage, nxe: true };
    expect(walkStage(a.mem, nx, 0x1000n, READ).ok).toBe(true);
    expect(expectFault(walkStage(a.mem, nx, 0x1000n, EXEC))).toMatchObject({ kind: "permission", access: "exec" });
  });

  it("U/S: user requests need U/S=1 at every level; supervisor pages refuse them", () => {
    const a = fs();
    mapRange(a.mem, a.stage, 0x1000n, 0x9000n, 0x1000n, { perms: Perm.PR | Perm.PW | Perm.PX }, { alloc: a.alloc });
    expect(walkStage(a.mem, a.stage, 0x1000n, READ).ok).toBe(true);
    expect(expectFault(walkStage(a.mem, a.stage, 0x1000n, READ_USER))).toMatchObject({ kind: "permission", privileged: false, perms: Perm.PR | Perm.PW | Perm.PX });
    mapRange(a.mem, a.stage, 0x2000n, 0xa000n, 0x1000n, { perms: PERM_RW }, { alloc: a.alloc });
    expect(walkStage(a.mem, a.stage, 0x2000n, WRITE_USER).ok).toBe(true);
    // Clear U/S in the PDE above: user access goes, supervisor stays.
    const pde = slotOf(a.mem, a.stage, 0x2000n, 2);
    a.mem.write64(pde, rd(a.mem, pde) & ~4n);
    expect(expectFault(walkStage(a.mem, a.stage, 0x2000n, READ_USER)).kind).toBe("permission");
    expect(walkStage(a.mem, a.stage, 0x2000n, WRITE).ok).toBe(true);
  });

  it("WPE: supervisor writes to read-only pages are allowed only without WPE; user writes never", () => {
    const a = fs();
    mapRange(a.mem, a.stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_R }, { alloc: a.alloc });
    expect(walkStage(a.mem, a.stage, 0x1000n, WRITE).ok).toBe(true);
    expect(expectFault(walkStage(a.mem, a.stage, 0x1000n, WRITE_USER)).kind).toBe("permission");
    expect(expectFault(walkStage(a.mem, { ...a.stage, wpe: true }, 0x1000n, WRITE)).kind).toBe("permission");
  });

  it("SRE=0 blocks supervisor requests before the walk", () => {
    const a = fs({ sre: false });
    mapRange(a.mem, a.stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc: a.alloc });
    const before = a.mem.stats.reads;
    expect(expectFault(walkStage(a.mem, a.stage, 0x1000n, READ))).toMatchObject({ kind: "request-blocked", stage: 1, privileged: true });
    expect(a.mem.stats.reads).toBe(before);
    expect(walkStage(a.mem, a.stage, 0x1000n, READ_USER).ok).toBe(true);
    expect(walkStage(a.mem, { ...a.stage, sre: true }, 0x1000n, READ).ok).toBe(true);
  });

  it("A set in every entry used, D on write, EA with EAFE", () => {
    const a = fs({ eafe: true });
    mapRange(a.mem, a.stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW, accessed: false, dirtyTracking: true }, { alloc: a.alloc });
    // Clear A in the tables too.
    const slots = [0, 1, 2, 3].map((l) => slotOf(a.mem, a.stage, 0x1000n, l));
    for (const s of slots) a.mem.write64(s, rd(a.mem, s) & ~0x20n);
    const steps: WalkStep[] = [];
    const r = expectOk(walkStage(a.mem, a.stage, 0x1000n, READ, { visitor: (s) => steps.push(s) }));
    expect(r.s1?.writeNeedsWalk).toBe(true);
    for (const s of slots) expect(rd(a.mem, s) & 0x420n).toBe(0x420n);
    expect(rd(a.mem, slots[3] as bigint) & 0x40n).toBe(0n);
    expect(steps.filter((s) => s.updated !== undefined).length).toBe(4);
    expect(walkStage(a.mem, a.stage, 0x1000n, WRITE).ok).toBe(true);
    expect(rd(a.mem, slots[3] as bigint) & 0x40n).toBe(0x40n);
  });
});

describe("VT-d second stage", () => {
  for (const aw of [1, 2, 3]) {
    it(`AW=${aw}: ${aw + 2}-level walks`, () => {
      const { mem, alloc, stage } = ss({ aw });
      expect(stage.inputBits).toBe(30 + 9 * aw);
      const top = (1n << BigInt(stage.inputBits)) - 0x1000n;
      expect(mapRange(mem, stage, top, 0x1234_5000n, 0x1000n, { perms: PERM_RW }, { alloc }).ok).toBe(true);
      const r = expectOk(walkStage(mem, stage, top + 0xfffn, WRITE, RECORD));
      expect(r).toMatchObject({ output: 0x1234_5fffn, level: 3 });
      expect(r.descReads?.length).toBe(aw + 2);
      expect(expectFault(walkStage(mem, stage, top + 0x1000n, READ))).toMatchObject({ kind: "input-range", stage: 2 });
    });
  }

  it("present means R|W: an X-only entry is not present", () => {
    const { mem, alloc, stage } = ss({ ssee: true });
    mapRange(mem, stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc });
    const pte = slotOf(mem, stage, 0x1000n, 3);
    mem.write64(pte, 0x9000n | 4n);
    expect(expectFault(walkStage(mem, stage, 0x1000n, EXEC))).toMatchObject({ kind: "translation", level: 3, descAddr: pte });
    mem.write64(pte, 0x9000n | 2n); // write-only is present
    expect(walkStage(mem, stage, 0x1000n, WRITE).ok).toBe(true);
    expect(expectFault(walkStage(mem, stage, 0x1000n, READ)).kind).toBe("permission");
  });

  it("superpages follow SLLPS; PS without support is a reserved-bit fault", () => {
    const a = ss();
    mapRange(a.mem, a.stage, 0x20_0000n, 0x20_0000n, 0x20_0000n, { perms: PERM_RW }, { alloc: a.alloc });
    expect(expectOk(walkStage(a.mem, a.stage, 0x20_0000n, READ)).level).toBe(3);
    const pde = slotOf(a.mem, a.stage, 0x20_0000n, 2);
    a.mem.write64(pde, 0x20_0000n | 0x83n);
    expect(expectFault(walkStage(a.mem, a.stage, 0x20_0000n, READ))).toMatchObject({ kind: "reserved-bit", stage: 2, level: 2 });
    const b = ss({ large2M: true, large1G: true });
    mapRange(b.mem, b.stage, 0x4000_0000n, 0x4000_0000n, 0x4020_0000n, { perms: PERM_RW }, { alloc: b.alloc });
    expect(expectOk(walkStage(b.mem, b.stage, 0x4000_0000n, READ))).toMatchObject({ level: 1, pageShift: 30 });
    expect(expectOk(walkStage(b.mem, b.stage, 0x8000_0000n, READ))).toMatchObject({ level: 2, pageShift: 21 });
  });

  it("SSADE sets A in every entry and D on writes", () => {
    const { mem, alloc, stage } = ss({ ssade: true });
    mapRange(mem, stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc });
    const slots = [0, 1, 2, 3].map((l) => slotOf(mem, stage, 0x1000n, l));
    for (const s of slots) expect(rd(mem, s) & 0x100n).toBe(0x100n); // the probe set them
    expect(rd(mem, slots[3] as bigint) & 0x200n).toBe(0n);
    expect(walkStage(mem, stage, 0x1000n, WRITE).ok).toBe(true);
    expect(rd(mem, slots[3] as bigint) & 0x200n).toBe(0x200n);
    const noAd = ss();
    mapRange(noAd.mem, noAd.stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_RW }, { alloc: noAd.alloc });
    walkStage(noAd.mem, noAd.stage, 0x1000n, WRITE);
    expect(rd(noAd.mem, slotOf(noAd.mem, noAd.stage, 0x1000n, 3)) & 0x300n).toBe(0n);
  });

  it("SSEE: execute from the X bit; without it, execute follows read; execute needs read", () => {
    const { mem, alloc, stage } = ss();
    mapRange(mem, stage, 0x1000n, 0x9000n, 0x1000n, { perms: PERM_R }, { alloc });
    expect(walkStage(mem, stage, 0x1000n, EXEC).ok).toBe(true);
    expect(expectFault(walkStage(mem, { ...stage, ssee: true }, 0x1000n, EXEC)).kind).toBe("permission");
    const pte = slotOf(mem, stage, 0x1000n, 3);
    mem.write64(pte, 0x9000n | 2n | 4n); // W + X, no R
    expect(expectFault(walkStage(mem, { ...stage, ssee: true }, 0x1000n, EXEC)).kind).toBe("permission");
    expect(EXEC_USER.privileged).toBe(false);
  });
});

describe("VT-d nested (PGTT = 011b)", () => {
  function vtdNested() {
    const mem = new SparseMemory(52);
    const halloc = new SimplePageAllocator(mem, 0x100_0000n, 0x400_0000n);
    const s2 = ok(vtdSecondStageConfig({ aw: 2, ssptptr: halloc.alloc(4096) as bigint, haw: 46 }));
    // Guest RAM: GPA 0..16 MB → HPA 0x1_0000_0000.. in reverse page order.
    const n = 4096n;
    for (let i = 0n; i < n; i++) mapRange(mem, s2, i * 0x1000n, 0x1_0000_0000n + (n - 1n - i) * 0x1000n, 0x1000n, { perms: PERM_RW }, { alloc: halloc });
    const gview = stage2View(mem, s2);
    const galloc = new SimplePageAllocator(gview, 0x10_0000n, 0x10_0000n);
    const s1 = ok(vtdFirstStageConfig({ levels: 4, fsptptr: galloc.alloc(4096) as bigint, haw: 46, sre: true }));
    const cfg: TranslationConfig = { mode: "nested", s1, s2, s1Tag: 7, s2Tag: 3 };
    return { mem, halloc, s2, gview, galloc, s1, cfg };
  }

  it("a cold 4×4 walk reads 24 entries; A/D updates of FS entries go through the SS (GPA) mapping", () => {
    const f = vtdNested();
    mapRange(f.gview, f.s1, 0x7f00_0000_1000n, 0x80_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc });
    const before = f.mem.stats.reads;
    const r = expectOk(translate(f.mem, f.cfg, 0x7f00_0000_1234n, READ));
    expect(f.mem.stats.reads - before).toBe(24);
    expect(r.ipa).toBe(0x80_0234n);
    expect(r.output).toBe(0x1_0000_0000n + (4095n - 0x800n) * 0x1000n + 0x234n);
  });

  it("SS fault on the FS root fetch vs a lower FS entry: s1Level tells 0x75 from 0x76", () => {
    const f = vtdNested();
    mapRange(f.gview, f.s1, 0x1000n, 0x80_0000n, 0x1000n, { perms: PERM_RW }, { alloc: f.galloc });
    // Make the FS root's GPA page read-inaccessible at SS: W only.
    const root = f.s1.root;
    let rootHpa = 0n;
    translate(f.mem, f.cfg, 0x1000n, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 0) rootHpa = s.descAddr; } });
    const pte = slotOf(f.mem, f.s2, root, 3);
    f.mem.write64(pte, (rootHpa & ~0xfffn) | 2n);
    expect(expectFault(translate(f.mem, f.cfg, 0x1000n, READ))).toMatchObject({ kind: "permission", stage: 2, cls: "TT", s1Level: 0, ipa: root, access: "read" });
    expect(PERM_RW).toBe(27);
  });

  it("FS A-bit update needs SS write permission (0x77 case)", () => {
    const f = vtdNested();
    mapRange(f.gview, f.s1, 0x1000n, 0x80_0000n, 0x1000n, { perms: PERM_RW, accessed: false }, { alloc: f.galloc });
    let leafGpa = 0n;
    let leafHpa = 0n;
    translate(f.mem, f.cfg, 0x1000n, READ, { visitor: (s) => { if (s.stage === 1 && s.level === 3 && s.updated === undefined) { leafGpa = s.descIpa as bigint; leafHpa = s.descAddr; } } });
    // Clear A again and make that GPA page read-only at SS.
    f.mem.write64(leafHpa, rd(f.mem, leafHpa) & ~0x20n);
    const pte = slotOf(f.mem, f.s2, leafGpa, 3);
    f.mem.write64(pte, (leafHpa & ~0xfffn) | 1n);
    expect(expectFault(translate(f.mem, f.cfg, 0x1000n, READ))).toMatchObject({ kind: "permission", stage: 2, cls: "TT", s1Level: 3, access: "write", ipa: leafGpa });
  });
});
