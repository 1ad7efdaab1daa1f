// Arm VMSAv8-64 translation-table formats (stage 1 and stage 2, 4K/16K/64K
// granules) as PageTableFormat descriptors, plus the level maths and the
// StageConfig builders that a device model uses to turn CD / STE fields into a
// stage. Spec: Arm ARM D8 (VMSAv8-64 translation), SMMUv3 §3.4 / §5.2 / §5.4,
// reference/hw-formats.md §1.5, §1.6 and §7 rulings 3, 5, 6, 7, 8.

import { mask } from "../bits.js";
import {
  Desc,
  type DescType,
  type HwUpdateRules,
  hwWords,
  type MapProt,
  PERM_ALL,
  PERM_R,
  PERM_W,
  Perm,
  type PageTableFormat,
  type PermSet,
  type StageConfig,
  type StageConfigResult,
} from "../translation.js";
import { addrFromWords, WordFormat } from "./common.js";

/** Descriptor fields common to both stages (bit positions, Arm ARM D8.3). */
export const ARM_DESC = {
  VALID: 0,
  TYPE: 1, // [1]: 1 = table (L<3) / page (L3); 0 = block (L<3) / reserved (L3)
  ATTRINDX_LO: 2, // S1 AttrIndx [4:2], S2 MemAttr [5:2]
  NS: 5,
  AP1: 6, // S1 AP[1] (EL0 access) / S2 S2AP[0] (read)
  AP2: 7, // S1 AP[2] (read-only)  / S2 S2AP[1] (write)
  SH_LO: 8, // SH [9:8]
  AF: 10,
  NG: 11,
  DBM: 51,
  CONTIG: 52,
  PXN: 53, // S1 PXN; S2 XN[0] with FEAT_XNX
  UXN: 54, // S1 UXN/XN; S2 XN[1]
  PXNTABLE: 59,
  UXNTABLE: 60,
  APTABLE0: 61, // no EL0 access below
  APTABLE1: 62, // no write below
  NSTABLE: 63,
} as const;

const B = (n: number) => 1n << BigInt(n);
const AF_BIT = B(ARM_DESC.AF);
const NG_BIT = B(ARM_DESC.NG);
const AP1_BIT = B(ARM_DESC.AP1);
const AP2_BIT = B(ARM_DESC.AP2);
const DBM_BIT = B(ARM_DESC.DBM);
const PXN_BIT = B(ARM_DESC.PXN);
const UXN_BIT = B(ARM_DESC.UXN);
// The same bits in the 32-bit halves used by the walker's hot path.
const L_AP1 = 1 << ARM_DESC.AP1;
const L_AP2 = 1 << ARM_DESC.AP2;
const L_NG = 1 << ARM_DESC.NG;
const H_PXN = 1 << (ARM_DESC.PXN - 32);
const H_UXN = 1 << (ARM_DESC.UXN - 32);
const H_PXNT = 1 << (ARM_DESC.PXNTABLE - 32);
const H_UXNT = 1 << (ARM_DESC.UXNTABLE - 32);
const H_APT0 = 1 << (ARM_DESC.APTABLE0 - 32);
const H_APT1 = 1 << (ARM_DESC.APTABLE1 - 32);

/** Linux defaults: S1 AttrIndx of normal WB memory (ARM_LPAE_MAIR_ATTR_IDX_CACHE = 1), S2 MemAttr 0xF. */
export const ARM_S1_DEFAULT_ATTRINDX = 1;
export const ARM_S2_DEFAULT_MEMATTR = 0xf;
/** Linux's MAIR for io-pgtable-arm stage-1 tables (CD.MAIR): attr 0 NC, 1 WBRWA (ARM_S1_DEFAULT_ATTRINDX), 2 Device, 3 inner-NC outer-WB. */
export const ARM_LPAE_MAIR = 0xf404ff44n;

export type ArmGranuleShift = 12 | 14 | 16;

/** CD.TG0 encoding → granule shift (0 4K, 1 64K, 2 16K, 3 reserved). */
export function armTg0ToShift(tg0: number): ArmGranuleShift | undefined {
  return tg0 === 0 ? 12 : tg0 === 1 ? 16 : tg0 === 2 ? 14 : undefined;
}
/** CD.TG1 encoding → granule shift (1 16K, 2 4K, 3 64K, 0 reserved). */
export function armTg1ToShift(tg1: number): ArmGranuleShift | undefined {
  return tg1 === 1 ? 14 : tg1 === 2 ? 12 : tg1 === 3 ? 16 : undefined;
}
/** STE.S2TG encoding → granule shift (0 4K, 1 64K, 2 16K, 3 reserved). Same as TG0. */
export const armS2TgToShift = armTg0ToShift;
/** Granule shift → CD.TG0 / STE.S2TG encoding. */
export function armShiftToTg0(shift: ArmGranuleShift): number {
  return shift === 12 ? 0 : shift === 16 ? 1 : 2;
}

/** OAS/IPS/S2PS encoding (IDR5.OAS) → bits: 0=32 1=36 2=40 3=42 4=44 5=48 6=52. */
export const ARM_OAS_BITS = [32, 36, 40, 42, 44, 48, 52] as const;
export function armOasToBits(enc: number): number | undefined {
  return ARM_OAS_BITS[enc];
}
export function armBitsToOas(bits: number): number | undefined {
  const i = (ARM_OAS_BITS as readonly number[]).indexOf(bits);
  return i < 0 ? undefined : i;
}

/** level_shift(L) = G + (3 − L)(G − 3) (Arm ARM; io-pgtable ARM_LPAE_LVL_SHIFT). */
export function armLevelShift(granuleShift: number, level: number): number {
  return granuleShift + (3 - level) * (granuleShift - 3);
}

/** Stage-1 start level for an input size (Arm ARM, QEMU): 4 − ⌊(IA − 4)/(G − 3)⌋. */
export function armS1StartLevel(granuleShift: number, inputBits: number): number {
  return 4 - Math.floor((inputBits - 4) / (granuleShift - 3));
}

/** Stage-2 start level from S2SL0 (ruling 6): 4K 2 − SL0; 16K/64K 3 − SL0; SL0 = 3 reserved. */
export function armS2StartLevel(granuleShift: number, sl0: number): number | undefined {
  if (sl0 < 0 || sl0 > 2) return undefined;
  return granuleShift === 12 ? 2 - sl0 : 3 - sl0;
}

/** Inverse of armS2StartLevel (Linux: SL0 = ~(start + (4K ? 1 : 0)) & 3). */
export function armS2Sl0(granuleShift: number, startLevel: number): number | undefined {
  const sl0 = granuleShift === 12 ? 2 - startLevel : 3 - startLevel;
  return sl0 >= 0 && sl0 <= 2 ? sl0 : undefined;
}

/**
 * Stage-2 geometry the way Linux chooses it (io-pgtable-arm.c): the stage-1
 * start level for the IPA size, then, if that is level 0 and its table would
 * have at most 16 entries, concatenate at level 1 instead.
 */
export function armS2Geometry(
  granuleShift: ArmGranuleShift,
  inputBits: number,
): { startLevel: number; sl0: number; concatenated: number } | undefined {
  let start = armS1StartLevel(granuleShift, inputBits);
  const stride = granuleShift - 3;
  if (start <= 0) {
    const entries = 2 ** (inputBits - armLevelShift(granuleShift, start));
    if (entries <= 16) start = start + 1;
  }
  const sl0 = armS2Sl0(granuleShift, start);
  if (sl0 === undefined) return undefined;
  const idxBits = inputBits - armLevelShift(granuleShift, start);
  return { startLevel: start, sl0, concatenated: idxBits > stride ? 2 ** (idxBits - stride) : 1 };
}

export interface ArmFormatOptions {
  /** 52-bit output with the 64K granule (FEAT_LPA): OA[51:48] in descriptor bits [15:12]; L1 blocks. */
  readonly oa52?: boolean;
}

// Local snapshots of imported constants (keeps module-namespace getters off the hot path).
const D_INVALID = Desc.INVALID;
const D_TABLE = Desc.TABLE;
const D_BLOCK = Desc.BLOCK;
const D_PAGE = Desc.PAGE;
const P_PR = Perm.PR;
const P_PW = Perm.PW;
const P_PX = Perm.PX;
const P_UR = Perm.UR;
const P_UW = Perm.UW;
const P_UX = Perm.UX;
const P_R = PERM_R;
const P_W = PERM_W;
const P_ALL = PERM_ALL;

class ArmFormat extends WordFormat implements PageTableFormat {
  readonly family = "arm-vmsav8-64" as const;
  readonly name: string;
  readonly bitsPerLevel: number;
  readonly minLevel: number;
  readonly minInputBits = 25; // T0SZ ≤ 39 (QEMU limit; TTST not modelled)
  readonly maxInputBits: number;
  readonly maxOutputBits: number;
  readonly execNeedsRead = false;
  readonly hw: HwUpdateRules;
  readonly addressHiMask: number | undefined;
  /** Valid and type: bits [1:0]. */
  readonly decodeBits = { loShift: 0, loBits: 2, hiShift: 0, hiBits: 0 };
  /** PXNTable, UXNTable, APTable[1:0]: bits [62:59]. */
  readonly tableLimitBits = { loShift: 0, loBits: 0, hiShift: ARM_DESC.PXNTABLE - 32, hiBits: 4 };
  /** AP[2:1] / S2AP [7:6]; PXN, UXN / XN[1:0] [54:53]. */
  readonly leafPermBits = { loShift: ARM_DESC.AP1, loBits: 2, hiShift: ARM_DESC.PXN - 32, hiBits: 2 };
  private readonly shifts: number[] = [];
  private readonly oa52: boolean;
  private readonly blockLevels: readonly boolean[];

  constructor(
    readonly stage: 1 | 2,
    readonly granuleShift: ArmGranuleShift,
    opts: ArmFormatOptions,
  ) {
    super();
    this.oa52 = granuleShift === 16 && opts.oa52 === true;
    this.name = `arm-s${stage}-${1 << (granuleShift - 10)}k${this.oa52 ? "-oa52" : ""}`;
    this.bitsPerLevel = granuleShift - 3;
    this.minLevel = granuleShift === 16 ? 1 : 0;
    this.maxInputBits = 48;
    this.maxOutputBits = this.oa52 ? 52 : 48;
    this.addressHiMask = this.oa52 ? undefined : 0xffff; // OA[47:32]
    for (let l = -1; l <= 3; l++) this.shifts[l + 1] = armLevelShift(granuleShift, l);
    // Ruling 7: 4K blocks at L1/L2; 16K at L2; 64K at L2 (and L1 with 52-bit output).
    const bl = [false, false, false, false, false];
    bl[3] = true;
    if (granuleShift === 12 || this.oa52) bl[2] = true;
    this.blockLevels = bl;
    const dirty = { style: "dbm" as const, dbm: DBM_BIT, writeBit: AP2_BIT, writeBitMeansWritable: stage === 2 };
    this.hw = { accessBit: AF_BIT, accessInTables: false, accessFault: true, dirty, words: hwWords(AF_BIT, dirty) };
  }

  levelShift(level: number): number {
    return this.shifts[level + 1] as number;
  }

  blockReservedLo(): number {
    return 0;
  }

  blockAllowed(level: number): boolean {
    return this.blockLevels[level + 1] === true;
  }

  decodeW(lo: number, _hi: number, level: number): DescType {
    const t = lo & 3;
    if ((t & 1) === 0) return D_INVALID;
    if (level === 3) return t === 3 ? D_PAGE : D_INVALID;
    if (t === 3) return D_TABLE;
    return this.blockLevels[level + 1] === true ? D_BLOCK : D_INVALID;
  }

  outputAddressW(lo: number, hi: number, level: number, type: DescType): number {
    const a = addrFromWords(lo, hi, type === D_BLOCK ? (this.shifts[level + 1] as number) : this.granuleShift, 0xffff);
    return this.oa52 ? a + ((lo >>> 12) & 0xf) * 2 ** 48 : a;
  }

  tableLimitW(_lo: number, hi: number, _level: number, cfg: StageConfig): PermSet {
    if (this.stage === 2 || cfg.had) return P_ALL;
    let lim = P_ALL;
    if (hi & H_PXNT) lim &= ~P_PX;
    if (hi & H_UXNT) lim &= ~P_UX;
    if (hi & H_APT0) lim &= ~(P_UR | P_UW);
    if (hi & H_APT1) lim &= ~(P_PW | P_UW);
    return lim;
  }

  leafPermsW(lo: number, hi: number, _level: number, cfg: StageConfig): PermSet {
    if (this.stage === 1) {
      // AP[2:1] (Arm ARM D8.4.1, two privilege levels): 00 P:RW, 01 P:RW U:RW, 10 P:R, 11 P:R U:R.
      const ro = (lo & L_AP2) !== 0;
      let p: number = P_PR | (ro ? 0 : P_PW);
      if (lo & L_AP1) p |= P_UR | (ro ? 0 : P_UW);
      if ((hi & H_PXN) === 0) p |= P_PX;
      if ((hi & H_UXN) === 0) p |= P_UX;
      return p;
    }
    // S2AP[1:0] = bits [7:6]: bit 6 read, bit 7 write. XN bit 54 (or XN[1:0] = [54:53] with FEAT_XNX).
    let p = 0;
    if (lo & L_AP1) p |= P_R;
    if (lo & L_AP2) p |= P_W;
    if (cfg.xnx) {
      const xn = (hi >>> 21) & 3;
      // 00: EL1+EL0 exec; 01: EL0 only; 10: none; 11: EL1 only.
      if (xn === 0) p |= P_PX | P_UX;
      else if (xn === 1) p |= P_UX;
      else if (xn === 3) p |= P_PX;
    } else if ((hi & H_UXN) === 0) {
      p |= P_PX | P_UX;
    }
    return p;
  }

  /** Ruling 5: unprivileged-writable is never privileged-executable; WXN: writable ⇒ not executable. */
  finalPerms(perms: PermSet, cfg: StageConfig): PermSet {
    if (this.stage === 2) return perms;
    let p = perms;
    if (p & P_UW) p &= ~P_PX;
    if (cfg.wxn) {
      if (p & P_PW) p &= ~P_PX;
      if (p & P_UW) p &= ~P_UX;
    }
    return p;
  }

  isGlobalW(lo: number): boolean {
    return this.stage === 1 && (lo & L_NG) === 0;
  }

  private encodeOa(addr: bigint): bigint {
    if (!this.oa52) return addr & mask(47, 0);
    return (addr & mask(47, 0)) | (((addr >> 48n) & 0xfn) << 12n);
  }

  encodeTable(next: bigint): bigint {
    return this.encodeOa(next) | 3n;
  }

  encodeLeaf(output: bigint, level: number, prot: MapProt): bigint {
    let d = this.encodeOa(output) | (level === 3 ? 3n : 1n);
    const p = prot.perms;
    const writable = (p & P_W) !== 0;
    const dbm = writable && prot.dirtyTracking === true;
    if (prot.accessed !== false) d |= AF_BIT;
    d |= BigInt(prot.sh ?? 3) << 8n;
    if (this.stage === 1) {
      d |= BigInt((prot.memAttr ?? ARM_S1_DEFAULT_ATTRINDX) & 7) << 2n;
      if (!writable || dbm) d |= AP2_BIT;
      if (p & (P_UR | P_UW)) d |= AP1_BIT;
      if ((p & P_PX) === 0) d |= PXN_BIT;
      if ((p & P_UX) === 0) d |= UXN_BIT;
      if (prot.notGlobal !== false) d |= NG_BIT;
    } else {
      d |= BigInt((prot.memAttr ?? ARM_S2_DEFAULT_MEMATTR) & 0xf) << 2n;
      if (p & P_R) d |= AP1_BIT;
      if (writable && !dbm) d |= AP2_BIT;
      if ((p & (P_PX | P_UX)) === 0) d |= UXN_BIT;
    }
    if (dbm) d |= DBM_BIT;
    return d;
  }

  leafProt(desc: bigint, level: number): MapProt {
    const dbm = (desc & DBM_BIT) !== 0n;
    const cfg = { had: true } as StageConfig;
    let perms = this.leafPerms(desc, level, cfg);
    if (dbm) perms |= this.stage === 1 ? (perms & P_UR ? P_W : P_PW) : P_W;
    return {
      perms,
      memAttr: Number((desc >> 2n) & (this.stage === 1 ? 7n : 0xfn)),
      sh: Number((desc >> 8n) & 3n),
      notGlobal: (desc & NG_BIT) !== 0n,
      accessed: (desc & AF_BIT) !== 0n,
      dirtyTracking: dbm,
    };
  }

  levelName(level: number): string {
    return `L${level}`;
  }
}

const formatCache = new Map<string, ArmFormat>();

/** The Arm VMSAv8-64 format for a stage and granule (shared, immutable instances). */
export function armFormat(stage: 1 | 2, granuleShift: ArmGranuleShift, opts: ArmFormatOptions = {}): PageTableFormat {
  const key = `${stage}:${granuleShift}:${opts.oa52 === true && granuleShift === 16}`;
  let f = formatCache.get(key);
  if (!f) {
    f = new ArmFormat(stage, granuleShift, opts);
    formatCache.set(key, f);
  }
  return f;
}

// ---------------------------------------------------------------------------
// StageConfig builders (what CD / STE decoding produces). Errors are values;
// the device model turns them into C_BAD_CD / C_BAD_STE.

export interface ArmS1Params {
  readonly granuleShift: ArmGranuleShift;
  /** T0SZ / T1SZ: input size = 64 − tsz. */
  readonly tsz: number;
  /** Effective output size in bits: min(CD.IPS, IDR5.OAS). */
  readonly outputBits: number;
  /** CD.TTB0/TTB1 (an IPA when nested). */
  readonly ttb: bigint;
  /** TTB1 region (input bits [63:IA] all ones). Default TTB0. */
  readonly ttb1?: boolean;
  readonly affd?: boolean;
  readonly ha?: boolean;
  readonly hd?: boolean;
  readonly had?: boolean;
  readonly wxn?: boolean;
  readonly oa52?: boolean;
}

/** Build an Arm stage-1 StageConfig from CD fields (ruling 3: TTB beyond IPS is a bad CD). */
export function armStage1Config(p: ArmS1Params): StageConfigResult {
  const ia = 64 - p.tsz;
  const fmt = armFormat(1, p.granuleShift, { oa52: p.oa52 === true });
  if (ia < fmt.minInputBits || ia > fmt.maxInputBits) return { ok: false, error: `T0SZ ${p.tsz} out of range` };
  if (p.outputBits < 32 || p.outputBits > fmt.maxOutputBits) {
    return { ok: false, error: `output size ${p.outputBits} not supported` };
  }
  if (p.hd && !p.ha) return { ok: false, error: "HD without HA" };
  if (p.ttb >> BigInt(p.outputBits) !== 0n) return { ok: false, error: "TTB beyond output address size" };
  const startLevel = Math.max(armS1StartLevel(p.granuleShift, ia), fmt.minLevel);
  const tableBytes = 2 ** (ia - armLevelShift(p.granuleShift, startLevel)) * 8;
  const align = BigInt(Math.max(tableBytes, 64) - 1);
  return {
    ok: true,
    stage: {
      format: fmt,
      root: p.ttb & ~align,
      inputBits: ia,
      outputBits: p.outputBits,
      startLevel,
      concatenated: 1,
      inputForm: p.ttb1 ? "high" : "low",
      affd: p.affd === true,
      ha: p.ha === true,
      hd: p.hd === true,
      had: p.had === true,
      wxn: p.wxn === true,
    },
  };
}

export interface ArmS2Params {
  readonly granuleShift: ArmGranuleShift;
  readonly s2t0sz: number;
  readonly sl0: number;
  /** Effective S2PS in bits: min(S2PS, OAS). */
  readonly outputBits: number;
  readonly s2ttb: bigint;
  /** IDR-derived IAS: S2T0SZ must not ask for more (S2T0SZ ≥ 64 − IAS). Default 48. */
  readonly ias?: number;
  readonly affd?: boolean;
  readonly ha?: boolean;
  readonly hd?: boolean;
  readonly xnx?: boolean;
  readonly oa52?: boolean;
}

/**
 * Build an Arm stage-2 StageConfig from STE fields. Rulings 3 and 6: SL0 = 3,
 * start level not reachable with the granule, or an S2T0SZ / SL0 pair needing
 * more than 16 concatenated tables (or less than one index bit) is invalid.
 */
export function armStage2Config(p: ArmS2Params): StageConfigResult {
  const fmt = armFormat(2, p.granuleShift, { oa52: p.oa52 === true });
  const ia = 64 - p.s2t0sz;
  const ias = p.ias ?? fmt.maxInputBits;
  if (ia < fmt.minInputBits || ia > Math.min(ias, fmt.maxInputBits)) {
    return { ok: false, error: `S2T0SZ ${p.s2t0sz} out of range` };
  }
  if (p.outputBits < 32 || p.outputBits > fmt.maxOutputBits) {
    return { ok: false, error: `S2PS ${p.outputBits} not supported` };
  }
  if (p.hd && !p.ha) return { ok: false, error: "S2HD without S2HA" };
  const startLevel = armS2StartLevel(p.granuleShift, p.sl0);
  if (startLevel === undefined) return { ok: false, error: `S2SL0 ${p.sl0} reserved` };
  if (startLevel < fmt.minLevel) return { ok: false, error: `S2SL0 ${p.sl0} invalid for granule` };
  const idxBits = ia - armLevelShift(p.granuleShift, startLevel);
  if (idxBits < 1 || idxBits > fmt.bitsPerLevel + 4) {
    return { ok: false, error: `S2T0SZ ${p.s2t0sz} inconsistent with S2SL0 ${p.sl0}` };
  }
  if (p.s2ttb >> BigInt(p.outputBits) !== 0n) return { ok: false, error: "S2TTB beyond output address size" };
  const concatenated = idxBits > fmt.bitsPerLevel ? 2 ** (idxBits - fmt.bitsPerLevel) : 1;
  const groupBytes = 2 ** idxBits * 8;
  const align = BigInt(Math.max(groupBytes, 64) - 1);
  return {
    ok: true,
    stage: {
      format: fmt,
      root: p.s2ttb & ~align,
      inputBits: ia,
      outputBits: p.outputBits,
      startLevel,
      concatenated,
      inputForm: "low",
      affd: p.affd === true,
      ha: p.ha === true,
      hd: p.hd === true,
      xnx: p.xnx === true,
    },
  };
}
