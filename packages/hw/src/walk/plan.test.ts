// The walker's per-stage tables agree with the formats' own decode and
// permission functions: a format whose DescBits missed a bit its function
// reads would make the walker decode, grant or refuse differently.
import { describe, expect, it } from "vitest";
import { armStage1Config, armStage2Config } from "../format/arm.js";
import { vtdFirstStageConfig, vtdSecondStageConfig } from "../format/vtd.js";
import { PERM_ALL, type StageConfig, type StageConfigResult } from "../translation.js";
import { planOf } from "./plan.js";

function must(r: StageConfigResult): StageConfig {
  if (!r.ok) throw new Error(r.error);
  return r.stage;
}

const CONFIGS: Record<string, StageConfig> = {
  "arm s1 4K": must(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: 0x1000n })),
  "arm s1 16K HAD": must(armStage1Config({ granuleShift: 14, tsz: 16, outputBits: 48, ttb: 0x4000n, had: true })),
  "arm s1 64K WXN": must(armStage1Config({ granuleShift: 16, tsz: 22, outputBits: 48, ttb: 0x10000n, wxn: true })),
  "arm s2 4K": must(armStage2Config({ granuleShift: 12, s2t0sz: 16, sl0: 2, outputBits: 48, s2ttb: 0x1000n })),
  "arm s2 4K XNX": must(armStage2Config({ granuleShift: 12, s2t0sz: 16, sl0: 2, outputBits: 48, s2ttb: 0x1000n, xnx: true })),
  "vtd fs": must(vtdFirstStageConfig({ levels: 4, fsptptr: 0x1000n, haw: 48 })),
  "vtd fs NXE WPE": must(vtdFirstStageConfig({ levels: 5, fsptptr: 0x1000n, haw: 52, nxe: true, wpe: true, sre: true })),
  "vtd ss": must(vtdSecondStageConfig({ aw: 2, ssptptr: 0x1000n, haw: 48 })),
  "vtd ss SSEE": must(vtdSecondStageConfig({ aw: 3, ssptptr: 0x1000n, haw: 52, ssee: true })),
  "vtd fs 1G": must(vtdFirstStageConfig({ levels: 4, fsptptr: 0x1000n, haw: 48, large1G: true })),
  "vtd ss 2M 1G": must(vtdSecondStageConfig({ aw: 2, ssptptr: 0x1000n, haw: 48, large2M: true, large1G: true })),
};

describe("walk plan: tabulated permission functions", () => {
  for (const [name, st] of Object.entries(CONFIGS)) {
    it(`${name}: decode, table limits, leaf and final permissions match the format on random descriptors`, () => {
      const fmt = st.format;
      const plan = planOf(st);
      let seed = 0x2545f491;
      const rnd = () => {
        seed ^= seed << 13;
        seed ^= seed >>> 17;
        seed ^= seed << 5;
        return seed >>> 0;
      };
      for (let i = 0; i < 4000; i++) {
        const level = (i % 5) - 1;
        // Every other descriptor without reserved block address bits, so valid blocks occur.
        const lo = i & 1 ? (rnd() & ~fmt.blockReservedLo(level)) >>> 0 : rnd();
        const hi = rnd();
        expect(plan.decodeW(lo, hi, level)).toBe(fmt.decodeW(lo, hi, level, st));
        expect(plan.tableLimitW(lo, hi, level)).toBe(fmt.tableLimitW(lo, hi, level, st));
        expect(plan.leafPerms.at(lo, hi, level)).toBe(fmt.leafPermsW(lo, hi, level, st));
        const p = rnd() & PERM_ALL;
        expect(plan.finalPerms[p]).toBe(fmt.finalPerms(p, st));
      }
    });
  }
});
