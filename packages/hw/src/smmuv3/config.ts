// STE and CD validation, and their translation into the common contract
// (translation.ts TranslationConfig / StageConfig). Everything ILLEGAL per
// the spec becomes a ConfigFault value (C_BAD_STE / C_BAD_CD) for the one
// mapping function in faults.ts.
//
// Spec: Arm IHI 0070 §5.2 (STE fields and their validity), §5.4 (CD),
// §3.4 (address sizes); reference/hw-formats.md §1.3, §1.4, §1.6 and §7
// rulings 3 and 6.

import {
  type ArmGranuleShift,
  armS2TgToShift,
  armStage1Config,
  armStage2Config,
  armTg0ToShift,
  armTg1ToShift,
} from "../format/arm.js";
import type { AccessKind, StageConfig, TranslationConfig, TranslationFault } from "../translation.js";
import { type CdFields, decodeCdFields } from "./cd.js";
import type { CdTableConfig } from "./cdtable.js";
import type { ConfigFault } from "./faults.js";
import { IDR0_STALL_MODEL, type SmmuFeatures, oasBits } from "./regs.js";
import { STE_CONFIG, STE_EATS, STE_S1DSS, STE_S1FMT, STE_STRW, type SteFields, decodeSteFields } from "./ste.js";

/** SMMU-wide state STE/CD interpretation depends on. */
export interface DecodeContext {
  readonly feat: Readonly<SmmuFeatures>;
  /** SMMU_CR0.ATSCHK. */
  readonly atschk: boolean;
  /** SMMU_CR2.E2H. */
  readonly e2h: boolean;
}

/**
 * VMID tag used for stage-1 translations of EL2 / EL2-E2H StreamWorlds, so
 * they live apart from NS-EL1 entries and TLBI_EL2_* can find them. The
 * contract's CacheTags.s2Tag is a plain number; real VMIDs are 0..65535, so
 * 65536 cannot collide (the IOTLB keys tags up to 2^17 − 2).
 */
export const EL2_S2TAG = 0x1_0000;

/** A validated STE. */
export interface DecodedSte {
  readonly words: readonly bigint[];
  readonly f: SteFields;
  /** Effective Config (reserved 0b0xx → ABORT). */
  readonly config: number;
  readonly s1: boolean;
  readonly s2: boolean;
  /** Stage-2 stage config when Config[1] = 1. */
  readonly s2cfg?: StageConfig;
  /** TLB tag of the stream: S2VMID when stage 2 is implemented, else -1; EL2_S2TAG for EL2 StreamWorlds. */
  readonly vmid: number;
  /** StreamWorld EL2 without E2H: ASIDs are ignored. */
  readonly el2NoAsid: boolean;
  /** Effective STE.EATS (0 when ATS is off, the stream bypasses, or the encoding behaves as 0). */
  readonly eats: number;
  /** CD table addressing (stage 1 only). */
  readonly cdTable?: CdTableConfig;
  /** Stage-1 stalls are allowed (S1STALLD = 0 and the Stall model is supported). */
  readonly s1StallAllowed: boolean;
  /** IAS for the stream (AArch64-only: IAS = OAS, §3.4). */
  readonly ias: number;
}

/** A validated CD. */
export interface DecodedCd {
  readonly words: readonly bigint[];
  readonly f: CdFields;
  readonly asid: number;
  /** Stage-1 configs for the TTB0 / TTB1 regions; undefined when EPDx = 1. */
  readonly ttb0?: StageConfig;
  readonly ttb1?: StageConfig;
  /** Record stage-1 faults (CD.R). */
  readonly record: boolean;
  /** Stall stage-1 faults (CD.S and the STE allows it). */
  readonly stall: boolean;
}

export type SteDecode = { ok: true; ste: DecodedSte } | { ok: false; fault: ConfigFault };
export type CdDecode = { ok: true; cd: DecodedCd } | { ok: false; fault: ConfigFault };

const badSte = (reason: string): SteDecode => ({ ok: false, fault: { ok: false, config: "C_BAD_STE", reason } });
const badCd = (reason: string): CdDecode => ({ ok: false, fault: { ok: false, config: "C_BAD_CD", reason } });

function granuleSupported(feat: Readonly<SmmuFeatures>, shift: number | undefined): shift is ArmGranuleShift {
  return (shift === 12 && feat.gran4K) || (shift === 14 && feat.gran16K) || (shift === 16 && feat.gran64K);
}

/** Largest output an Arm descriptor can encode at this granule (52 only with 64K and a 52-bit OAS). */
function encodableOutputBits(effBits: number, granuleShift: number): number {
  return granuleShift === 16 ? effBits : Math.min(effBits, 48);
}

/** Validate an STE (§5.2) and build its stage-2 config. */
export function decodeSte(words: readonly bigint[], ctx: DecodeContext): SteDecode {
  const feat = ctx.feat;
  const f = decodeSteFields(words);
  const oas = feat.oas;
  const ias = oas;
  if (!f.V) return badSte("V = 0");
  // Config 0b0xx: reserved encodings behave as 0b000 (abort, no event).
  const config = (f.Config & 0b100) === 0 ? STE_CONFIG.ABORT : f.Config;
  const s1 = config !== STE_CONFIG.ABORT && (config & 1) !== 0;
  const s2 = config !== STE_CONFIG.ABORT && (config & 2) !== 0;
  if (s1 && !feat.stage1) return badSte("stage 1 enabled but IDR0.S1P = 0");
  if (s2 && !feat.stage2) return badSte("stage 2 enabled but IDR0.S2P = 0");
  const hyp = feat.stage1 && feat.stage2;
  let vmid = feat.stage2 ? f.S2VMID : -1;
  if (feat.stage2 && !feat.vmid16 && f.S2VMID >> 8 !== 0) return badSte("S2VMID[15:8] non-zero without VMID16");
  let el2NoAsid = false;

  // StreamWorld (§5.2 STRW): only meaningful for stage-1-only streams.
  if (s1 && !s2 && hyp) {
    if (f.STRW === STE_STRW.EL2) {
      vmid = EL2_S2TAG;
      el2NoAsid = !ctx.e2h;
    } else if (f.STRW !== STE_STRW.NSEL1) {
      return badSte(`STRW ${f.STRW} reserved`);
    }
  }

  // Stall controls.
  const stallModel = feat.stallModel;
  let s1StallAllowed = false;
  if (s1) {
    if (f.S1STALLD && stallModel !== IDR0_STALL_MODEL.STALL_AND_TERM) return badSte("S1STALLD with a fixed Stall model");
    s1StallAllowed = !f.S1STALLD && stallModel !== IDR0_STALL_MODEL.TERM_ONLY;
  }
  if (s2) {
    if (f.S2S && stallModel === IDR0_STALL_MODEL.TERM_ONLY) return badSte("S2S without Stall support");
    if (!f.S2S && stallModel === IDR0_STALL_MODEL.STALL_FORCED) return badSte("S2S = 0 with forced stall");
  }

  // EATS (§5.2): effective value and ILLEGAL combinations.
  let eats = 0;
  if (feat.ats && (config & 0b011) !== 0) {
    switch (f.EATS) {
      case STE_EATS.TRANS:
        if (s2 && f.S2S) return badSte("EATS = Full ATS with S2S = 1");
        eats = STE_EATS.TRANS;
        break;
      case STE_EATS.S1CHK: {
        const ns1ats = feat.stage1 && feat.stage2 && feat.ns1ats;
        if (config !== STE_CONFIG.NESTED || f.S2S || ns1ats) return badSte("EATS = split-stage not allowed");
        eats = ctx.atschk ? STE_EATS.S1CHK : 0;
        break;
      }
      default:
        // 0b11 (Full ATS with DPT checks) behaves as 0b00 without IDR3.DPT.
        eats = 0;
    }
  }

  // Stage 1: CD table pointer and format.
  let cdTable: CdTableConfig | undefined;
  if (s1) {
    if (f.S1CDMax > feat.ssidBits) return badSte(`S1CDMax ${f.S1CDMax} above SSIDSIZE ${feat.ssidBits}`);
    let fmt = f.S1Fmt === 3 ? STE_S1FMT.LINEAR : f.S1Fmt;
    if (f.S1CDMax === 0 || feat.ssidBits === 0) fmt = STE_S1FMT.LINEAR;
    if (fmt !== STE_S1FMT.LINEAR && !feat.twoLevelCdTable) return badSte("2-level CD table without IDR0.CD2L");
    const ptrBits = s2 ? ias : oas;
    if (f.S1ContextPtr >> BigInt(ptrBits) !== 0n) return badSte("S1ContextPtr beyond the address size");
    cdTable = {
      S1ContextPtr: f.S1ContextPtr,
      S1Fmt: fmt,
      S1CDMax: feat.ssidBits === 0 ? 0 : f.S1CDMax,
      twoLevel: feat.twoLevelCdTable,
      addrBits: ptrBits,
    };
  }

  // Stage 2 (§5.2 S2* fields, rulings 3 and 6).
  let s2cfg: StageConfig | undefined;
  if (s2) {
    if (!f.S2AA64) return badSte("S2AA64 = 0 (VMSAv8-32 not supported)");
    if (f.S2ENDI) return badSte("S2ENDI = 1 with little-endian-only walks");
    const g = armS2TgToShift(f.S2TG);
    if (!granuleSupported(feat, g)) return badSte(`S2TG ${f.S2TG} not supported`);
    if ((f.S2HA || f.S2HD) && feat.httu === 0) return badSte("S2HA/S2HD without HTTU");
    if (f.S2HD && f.S2HA && feat.httu < 2) return badSte("S2HD without dirty-state HTTU");
    // {S2HD, S2HA} = 0b10 is reserved and behaves as 0b00.
    const ha = f.S2HA;
    const hd = f.S2HA && f.S2HD;
    const eff = encodableOutputBits(Math.min(oasBits(f.S2PS), oas), g);
    const r = armStage2Config({
      granuleShift: g,
      s2t0sz: f.S2T0SZ,
      sl0: f.S2SL0,
      outputBits: eff,
      s2ttb: f.S2TTB,
      ias,
      affd: f.S2AFFD,
      ha,
      hd,
      oa52: eff === 52 && g === 16,
    });
    if (!r.ok) return badSte(r.error);
    s2cfg = r.stage;
  }

  return {
    ok: true,
    ste: {
      words,
      f,
      config,
      s1,
      s2,
      s2cfg,
      vmid,
      el2NoAsid,
      eats,
      cdTable,
      s1StallAllowed,
      ias,
    },
  };
}

/** Validate a CD (§5.4) fetched for a decoded STE and build the stage-1 configs. */
export function decodeCd(words: readonly bigint[], ste: DecodedSte, ctx: DecodeContext): CdDecode {
  const feat = ctx.feat;
  const f = decodeCdFields(words);
  if (!f.V) return badCd("V = 0");
  if (!f.AA64) return badCd("AA64 = 0 (VMSAv8-32 LPAE not supported)");
  if (f.ENDI && !(f.EPD0 && f.EPD1)) return badCd("ENDI = 1 with little-endian-only walks");
  if (f.HA && feat.httu === 0) return badCd("HA without HTTU");
  if (f.HD && f.HA && feat.httu < 2) return badCd("HD without dirty-state HTTU");
  if (!feat.asid16 && f.ASID >> 8 !== 0) return badCd("ASID[15:8] non-zero without ASID16");
  if (f.S && feat.stallModel === IDR0_STALL_MODEL.TERM_ONLY) return badCd("S = 1 without Stall support");
  if (!f.S && feat.stallModel === IDR0_STALL_MODEL.STALL_FORCED && ste.s1StallAllowed) {
    return badCd("S = 0 with forced stall");
  }
  const ha = f.HA;
  const hd = f.HA && f.HD; // {HD, HA} = 0b10 behaves as 0b00
  const ipsBits = Math.min(oasBits(f.IPS), feat.oas);
  // StreamWorld EL2 (non-E2H): only TTB0, EPD0/EPD1 IGNORED (effective 0 for TTB0).
  const el2 = ste.el2NoAsid;
  const epd0 = el2 ? false : f.EPD0;
  const epd1 = el2 ? true : f.EPD1;
  const region = (which: 0 | 1): { ok: true; stage?: StageConfig } | { ok: false; error: string } => {
    const epd = which === 0 ? epd0 : epd1;
    if (epd) return { ok: true };
    const tg = which === 0 ? armTg0ToShift(f.TG0) : armTg1ToShift(f.TG1);
    if (!granuleSupported(feat, tg)) return { ok: false, error: `TG${which} not supported` };
    const tsz = which === 0 ? f.T0SZ : f.T1SZ;
    if (tsz < 16 || tsz > 39) return { ok: false, error: `T${which}SZ ${tsz} out of range` };
    const out = encodableOutputBits(ipsBits, tg);
    const ttb = which === 0 ? f.TTB0 : f.TTB1;
    // Ruling 3: TTBx outside the effective IPS (or beyond 48 bits for 4K/16K) is ILLEGAL.
    if (ttb >> BigInt(out) !== 0n) return { ok: false, error: `TTB${which} beyond the output address size` };
    const r = armStage1Config({
      granuleShift: tg,
      tsz,
      outputBits: out,
      ttb,
      ttb1: which === 1,
      affd: f.AFFD,
      ha,
      hd,
      had: feat.had && (which === 0 ? f.HAD0 : f.HAD1),
      wxn: f.WXN,
      oa52: out === 52 && tg === 16,
    });
    return r.ok ? { ok: true, stage: r.stage } : r;
  };
  const r0 = region(0);
  if (!r0.ok) return badCd(r0.error);
  const r1 = region(1);
  if (!r1.ok) return badCd(r1.error);
  return {
    ok: true,
    cd: {
      words,
      f,
      asid: el2 ? 0 : f.ASID,
      ttb0: r0.stage,
      ttb1: r1.stage,
      record: f.R,
      stall: f.S && ste.s1StallAllowed,
    },
  };
}

/** How stage 1 applies to a transaction after S1CDMax / S1DSS (§5.2 S1DSS). */
export type SubstreamSelect =
  | { kind: "cd"; ssid: number }
  | { kind: "bypass-s1" }
  | { kind: "fault"; fault: ConfigFault };

/** Apply the SubstreamID rules of an STE to a transaction (SSV, SubstreamID). */
export function selectSubstream(ste: DecodedSte, ssv: boolean, ssid: number, ssidBits: number): SubstreamSelect {
  if (!ste.s1) {
    // §7.3.9: a SubstreamID without stage 1 is C_BAD_SUBSTREAMID.
    if (ssv) return { kind: "fault", fault: { ok: false, config: "C_BAD_SUBSTREAMID", SubstreamID: ssid, reason: "stage 1 disabled" } };
    return { kind: "bypass-s1" };
  }
  const cdmax = ste.cdTable?.S1CDMax ?? 0;
  if (ssv) {
    if (ssidBits === 0 || cdmax === 0) {
      return { kind: "fault", fault: { ok: false, config: "C_BAD_SUBSTREAMID", SubstreamID: ssid, reason: "substreams disabled" } };
    }
    if (ssid >= 2 ** cdmax) {
      return { kind: "fault", fault: { ok: false, config: "C_BAD_SUBSTREAMID", SubstreamID: ssid, reason: "SubstreamID ≥ 2^S1CDMax" } };
    }
    if (ssid === 0 && ste.f.S1DSS === STE_S1DSS.SSID0) {
      return { kind: "fault", fault: { ok: false, config: "F_STREAM_DISABLED", reason: "SubstreamID 0 reserved by S1DSS" } };
    }
    return { kind: "cd", ssid };
  }
  if (cdmax === 0) return { kind: "cd", ssid: 0 };
  switch (ste.f.S1DSS) {
    case STE_S1DSS.BYPASS:
      return { kind: "bypass-s1" };
    case STE_S1DSS.SSID0:
      return { kind: "cd", ssid: 0 };
    default:
      // 0b00 terminate, 0b11 reserved behaves as 0b00.
      return { kind: "fault", fault: { ok: false, config: "F_STREAM_DISABLED", reason: "S1DSS = terminate" } };
  }
}

/** The translation a stream performs for one transaction. */
export interface StreamSelection {
  readonly ste: DecodedSte;
  /** Present when stage 1 translates through a CD. */
  readonly cd?: DecodedCd;
  /** Stage 1 bypassed by S1DSS or Config. */
  readonly s1Bypass: boolean;
}

/**
 * The TranslationConfig for one input address: picks TTB0 / TTB1 (TBI and
 * EPD handled here, §3.4.1 and CD.TBIx/EPDx), or a stage-1 translation fault
 * when the address falls in a disabled or non-existent region. Returns the
 * (possibly top-byte-adjusted) input address to walk.
 */
export function translationConfigFor(
  sel: StreamSelection,
  va: bigint,
  access: AccessKind,
  privileged: boolean,
): { ok: true; cfg: TranslationConfig; input: bigint } | { ok: false; fault: TranslationFault } {
  const { ste, cd } = sel;
  const s2Tag = ste.vmid;
  if (ste.config === STE_CONFIG.ABORT) return { ok: true, cfg: { mode: "abort", s2Tag }, input: va };
  if (!ste.s1 || sel.s1Bypass || !cd) {
    if (ste.s2 && ste.s2cfg) {
      return { ok: true, cfg: { mode: "s2", s2: ste.s2cfg, s1Tag: -1, s2Tag, s1BypassInputBits: ste.ias }, input: va };
    }
    if (ste.s1 && va >> BigInt(ste.ias) !== 0n) {
      // Stage 1 skipped by S1DSS: an input above the IAS is a stage-1 address-size fault (§5.2 S1DSS).
      return {
        ok: false,
        fault: { ok: false, kind: "address-size", stage: 1, level: 0, input: va, cls: "IN", access, privileged },
      };
    }
    return { ok: true, cfg: { mode: "bypass", s2Tag }, input: va };
  }
  // TTB selection (Arm ARM, two VA ranges): VA[55] selects TTB0/TTB1; bits [63:56]
  // must then match VA[55] (the walker's range check) unless TBIx ignores them.
  const useTtb1 = ((va >> 55n) & 1n) === 1n;
  const tbi = useTtb1 ? cd.f.TBI1 : cd.f.TBI0;
  let input = va;
  if (tbi) input = useTtb1 ? va | (0xffn << 56n) : va & ((1n << 56n) - 1n);
  const s1 = useTtb1 ? cd.ttb1 : cd.ttb0;
  if (!s1) {
    // EPDx = 1: a TLB miss in this region is a stage-1 translation fault.
    return {
      ok: false,
      fault: { ok: false, kind: "translation", stage: 1, level: 0, input: va, cls: "IN", access, privileged },
    };
  }
  if (ste.s2 && ste.s2cfg) {
    return { ok: true, cfg: { mode: "nested", s1, s2: ste.s2cfg, s1Tag: cd.asid, s2Tag, s1TablesIpa: true }, input };
  }
  return { ok: true, cfg: { mode: "s1", s1, s1Tag: cd.asid, s2Tag }, input };
}
