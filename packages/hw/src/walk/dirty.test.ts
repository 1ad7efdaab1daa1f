// Dirty harvest after hardware dirty updates (Arm S2 DBM, Arm S1 DBM, VT-d SS D).

import { describe, expect, it } from "vitest";
import { armStage1Config, armStage2Config } from "../format/arm.js";
import { mapRange, SimplePageAllocator } from "../format/map.js";
import { vtdSecondStageConfig } from "../format/vtd.js";
import { SparseMemory } from "../memory.js";
import { PERM_R, PERM_RW, READ, type StageConfig, type StageConfigResult, WRITE } from "../translation.js";
import { cleanLeaf, harvestDirty, isLeafDirty } from "./dirty.js";
import { walkStage } from "./walk.js";

function setup(make: (root: bigint) => StageConfigResult) {
  const mem = new SparseMemory(48);
  const alloc = new SimplePageAllocator(mem, 0x100_0000n, 0x100_0000n);
  const r = make(alloc.alloc(8192) as bigint);
  if (!r.ok) throw new Error(r.error);
  const stage: StageConfig = r.stage;
  mapRange(mem, stage, 0x10_0000n, 0x4000_0000n, 0x8000n, { perms: PERM_RW, dirtyTracking: true }, { alloc });
  mapRange(mem, stage, 0x20_0000n, 0x5000_0000n, 0x20_0000n, { perms: PERM_RW, dirtyTracking: true }, { alloc, blocks: true });
  mapRange(mem, stage, 0x40_0000n, 0x6000_0000n, 0x1000n, { perms: PERM_R }, { alloc });
  return { mem, stage };
}

const cases: [string, (root: bigint) => StageConfigResult][] = [
  ["arm s2 (S2HD + DBM)", (root) => armStage2Config({ granuleShift: 12, s2t0sz: 24, sl0: 1, outputBits: 48, s2ttb: root, ha: true, hd: true })],
  ["arm s1 (HD + DBM)", (root) => armStage1Config({ granuleShift: 12, tsz: 25, outputBits: 48, ttb: root, ha: true, hd: true })],
  ["vtd ss (SSADE)", (root) => vtdSecondStageConfig({ aw: 2, ssptptr: root, haw: 48, ssade: true, large2M: true })],
];

describe("dirty harvest", () => {
  for (const [name, make] of cases) {
    it(name, () => {
      const { mem, stage } = setup(make);
      const report = (clear = true) => {
        const out: [bigint, bigint][] = [];
        const r = harvestDirty(mem, stage, 0n, 0x100_0000n, (a, n) => out.push([a, n]), { clear });
        expect(r.ok).toBe(true);
        return out;
      };
      expect(report()).toEqual([]);
      for (const a of [0x10_1000n, 0x10_3008n, 0x21_0000n]) expect(walkStage(mem, stage, a, WRITE).ok).toBe(true);
      expect(walkStage(mem, stage, 0x10_2000n, READ).ok).toBe(true);
      const dirty = [
        [0x10_1000n, 0x1000n],
        [0x10_3000n, 0x1000n],
        [0x20_0000n, 0x20_0000n],
      ];
      expect(report(false)).toEqual(dirty);
      expect(report()).toEqual(dirty);
      expect(report()).toEqual([]);
      // Cleaned leaves are writable-clean again: the next write dirties them.
      expect(walkStage(mem, stage, 0x10_1000n, WRITE).ok).toBe(true);
      expect(report()).toEqual([[0x10_1000n, 0x1000n]]);
    });
  }

  it("isLeafDirty / cleanLeaf per style", () => {
    const s2 = armStage2Config({ granuleShift: 12, s2t0sz: 24, sl0: 1, outputBits: 48, s2ttb: 0n });
    if (!s2.ok) throw new Error();
    const f = s2.stage.format;
    const clean = f.encodeLeaf(0x1000n, 3, { perms: PERM_RW, dirtyTracking: true });
    expect(isLeafDirty(f, clean)).toBe(false);
    const dirty = clean | (1n << 7n);
    expect(isLeafDirty(f, dirty)).toBe(true);
    expect(cleanLeaf(f, dirty)).toBe(clean);
    // Writable without DBM is not tracked.
    expect(isLeafDirty(f, f.encodeLeaf(0x1000n, 3, { perms: PERM_RW }))).toBe(false);
  });
});
