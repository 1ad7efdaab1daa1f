// PASID entry → the common TranslationConfig (the one contract with the
// walker). PGTT selects the mode; DID is the domain tag (s2Tag) for every
// PGTT and the PASID is the address-space tag (s1Tag) for first-stage and
// nested translations. Second-stage-only and pass-through translations are
// not PASID-tagged (second-stage mappings are cached by DID), so
// PASID-based invalidations do not touch them. Stage configs come from the
// common format builders in format/vtd.ts.

import { vtdFirstStageConfig, vtdSecondStageConfig } from "../format/vtd.js";
import type { StageConfig, TranslationConfig } from "../translation.js";
import { FLPM, PGTT, type SmPasidEntry } from "./entries.js";

/** Unit capabilities that shape stage configs. */
export interface VtdStageCaps {
  readonly haw: number;
  readonly fs1gp: boolean;
  /** Second-stage 2 MiB / 1 GiB pages (CAP.SLLPS bits 34/35). */
  readonly ss2m: boolean;
  readonly ss1g: boolean;
}

/**
 * Second-stage StageConfig from a validated PASID entry (AW, SSPTPTR, SSADE,
 * SSEE). The entry was validated against CAP.SAGAW/HAW by decodeSmPasidEntry,
 * so the common builder cannot refuse it; undefined if it does anyway.
 */
export function pasidSecondStageConfig(pe: SmPasidEntry, caps: VtdStageCaps): StageConfig | undefined {
  const r = vtdSecondStageConfig({
    aw: pe.aw,
    ssptptr: pe.ssptptr,
    haw: caps.haw,
    ssade: pe.ssade,
    ssee: pe.ssee,
    large2M: caps.ss2m,
    large1G: caps.ss1g,
  });
  return r.ok ? r.stage : undefined;
}

/** First-stage StageConfig (FLPM, FSPTPTR, SRE, WPE, NXE, EAFE; CAP.FL1GP). */
export function pasidFirstStageConfig(pe: SmPasidEntry, caps: VtdStageCaps): StageConfig | undefined {
  const r = vtdFirstStageConfig({
    levels: pe.flpm === FLPM.LEVEL5 ? 5 : 4,
    fsptptr: pe.fsptptr,
    haw: caps.haw,
    sre: pe.sre,
    wpe: pe.wpe,
    nxe: pe.nxe,
    eafe: pe.eafe,
    large1G: caps.fs1gp,
  });
  return r.ok ? r.stage : undefined;
}

/** Build the TranslationConfig for a validated PASID entry and the request's PASID. */
export function pasidTranslationConfig(pe: SmPasidEntry, pasid: number, caps: VtdStageCaps): TranslationConfig | undefined {
  switch (pe.pgtt) {
    case PGTT.FIRST_STAGE: {
      const s1 = pasidFirstStageConfig(pe, caps);
      return s1 && { mode: "s1", s1, s1Tag: pasid, s2Tag: pe.did };
    }
    case PGTT.SECOND_STAGE: {
      const s2 = pasidSecondStageConfig(pe, caps);
      return s2 && { mode: "s2", s2, s1Tag: -1, s2Tag: pe.did };
    }
    case PGTT.NESTED: {
      const s1 = pasidFirstStageConfig(pe, caps);
      const s2 = pasidSecondStageConfig(pe, caps);
      return s1 && s2 && { mode: "nested", s1, s2, s1TablesIpa: true, s1Tag: pasid, s2Tag: pe.did };
    }
    case PGTT.PASS_THROUGH:
      return { mode: "bypass", s2Tag: pe.did };
  }
}
