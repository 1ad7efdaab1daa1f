// Scalable-mode translation structures: root entry, scalable-mode context
// entry, PASID directory entry and scalable-mode PASID table entry (spec
// §9.4–9.6). Layouts are field tables; decode functions validate an entry and
// return either the decoded entry or the scalable-mode fault reason (a value,
// never an exception). Fetching from memory lives in lookup.ts.

import { abs, type FieldTable, f, get, getNum } from "../bits.js";
import { VTD_FR, type VtdFaultReason } from "./fault-reasons.js";

/** Scalable-mode root entry (128 bits): LP/LCTP for devfn 0–127, UP/UCTP for 128–255. */
export const SM_ROOT_ENTRY = {
  LP: abs(0, 0),
  RSVD_LO: abs(11, 1),
  LCTP: abs(63, 12),
  UP: abs(64, 64),
  RSVD_HI: abs(75, 65),
  UCTP: abs(127, 76),
} as const satisfies FieldTable;
export const SM_ROOT_ENTRY_BYTES = 16;

/** Scalable-mode context entry (256 bits). */
export const SM_CONTEXT_ENTRY = {
  P: abs(0, 0),
  FPD: abs(1, 1),
  DTE: abs(2, 2),
  PASIDE: abs(3, 3),
  PRE: abs(4, 4),
  RSVD0: abs(8, 5),
  PDTS: abs(11, 9),
  PASIDDIRPTR: abs(63, 12),
  RID_PASID: abs(83, 64),
  RID_PRIV: abs(84, 84),
  RSVD1: abs(127, 85),
  RSVD2: abs(191, 128),
  RSVD3: abs(255, 192),
} as const satisfies FieldTable;
export const SM_CONTEXT_ENTRY_BYTES = 32;

/** PASID directory entry (64 bits). */
export const PASID_DIR_ENTRY = {
  P: f(0, 0),
  FPD: f(0, 1),
  RSVD: f(0, 11, 2),
  SMPTBLPTR: f(0, 63, 12),
} as const satisfies FieldTable;
export const PASID_DIR_ENTRY_BYTES = 8;

/**
 * Scalable-mode PASID table entry (512 bits). VT-d 3.x names in comments
 * where 4.x renamed them (FLPM→FSPM etc.); the spec names are kept as field
 * names so this table reads beside Figure 9-36 and Linux pasid.h.
 */
export const SM_PASID_ENTRY = {
  P: abs(0, 0),
  FPD: abs(1, 1),
  AW: abs(4, 2),
  /** SLEE: second-stage execute enable. */
  SSEE: abs(5, 5),
  PGTT: abs(8, 6),
  /** SLADE: second-stage accessed/dirty enable. */
  SSADE: abs(9, 9),
  RSVD0: abs(11, 10),
  /** SLPTPTR: HPA of the second-stage root (stored in place). */
  SSPTPTR: abs(63, 12),
  DID: abs(79, 64),
  RSVD1: abs(86, 80),
  PWSNP: abs(87, 87),
  PGSNP: abs(88, 88),
  CD: abs(89, 89),
  EMTE: abs(90, 90),
  EMT: abs(93, 91),
  PWT: abs(94, 94),
  PCD: abs(95, 95),
  PAT: abs(127, 96),
  SRE: abs(128, 128),
  ERE: abs(129, 129),
  /** FLPM: 00 = 4-level, 01 = 5-level. */
  FLPM: abs(131, 130),
  WPE: abs(132, 132),
  NXE: abs(133, 133),
  SMEP: abs(134, 134),
  EAFE: abs(135, 135),
  RSVD2: abs(139, 136),
  /** FLPTPTR: first-stage root (a GPA when PGTT = nested; stored in place). */
  FSPTPTR: abs(191, 140),
  RSVD3: abs(255, 192),
  RSVD4: abs(319, 256),
  RSVD5: abs(383, 320),
  RSVD6: abs(447, 384),
  RSVD7: abs(511, 448),
} as const satisfies FieldTable;
export const SM_PASID_ENTRY_BYTES = 64;

/** PASID-granular translation types (PASID entry PGTT). */
export const PGTT = {
  FIRST_STAGE: 0b001,
  SECOND_STAGE: 0b010,
  NESTED: 0b011,
  PASS_THROUGH: 0b100,
} as const;
export type PgttValue = (typeof PGTT)[keyof typeof PGTT];

/** FLPM encodings. */
export const FLPM = { LEVEL4: 0, LEVEL5: 1 } as const;

/** What the decode functions need to know about the unit (from CAP/ECAP). */
export interface VtdEntryLimits {
  readonly haw: number;
  /** Supported second-stage AW values (SAGAW bits). */
  readonly aw: readonly number[];
  readonly pasidBits: number;
  readonly fs5lp: boolean;
  readonly nest: boolean;
  readonly ers: boolean;
  readonly srs: boolean;
  readonly eafs: boolean;
  readonly ssads: boolean;
  readonly rps: boolean;
  readonly rprivs: boolean;
  readonly dt: boolean;
  readonly prs: boolean;
}

export type Decoded<T> = { ok: true; entry: T } | { ok: false; reason: VtdFaultReason; fpd: boolean };

export interface SmRootEntryHalf {
  present: boolean;
  /** HPA of the 128-entry scalable-mode context table for this half. */
  ctp: bigint;
}

/** Pick the lower (devfn < 128) or upper half of a scalable-mode root entry. */
export function decodeSmRootEntry(words: readonly bigint[], devfn: number, haw: number): Decoded<SmRootEntryHalf> {
  const upper = devfn >= 128;
  const present = get(words, upper ? SM_ROOT_ENTRY.UP : SM_ROOT_ENTRY.LP) === 1n;
  if (!present) return { ok: false, reason: VTD_FR.SM_ROOT_P, fpd: false };
  const rsvd = get(words, upper ? SM_ROOT_ENTRY.RSVD_HI : SM_ROOT_ENTRY.RSVD_LO);
  const ctp = get(words, upper ? SM_ROOT_ENTRY.UCTP : SM_ROOT_ENTRY.LCTP) << 12n;
  if (rsvd !== 0n || ctp >> BigInt(haw) !== 0n) return { ok: false, reason: VTD_FR.SM_ROOT_RSVD, fpd: false };
  return { ok: true, entry: { present, ctp } };
}

export interface SmContextEntry {
  fpd: boolean;
  dte: boolean;
  paside: boolean;
  pre: boolean;
  /** PASID directory holds 2^(PDTS+7) entries. */
  pdts: number;
  pasidDirPtr: bigint;
  ridPasid: number;
  ridPriv: boolean;
  raw: readonly bigint[];
}

export function decodeSmContextEntry(words: readonly bigint[], lim: VtdEntryLimits): Decoded<SmContextEntry> {
  if (get(words, SM_CONTEXT_ENTRY.P) === 0n) return { ok: false, reason: VTD_FR.SM_CTX_P, fpd: false };
  const fpd = get(words, SM_CONTEXT_ENTRY.FPD) === 1n;
  const pasidDirPtr = get(words, SM_CONTEXT_ENTRY.PASIDDIRPTR) << 12n;
  const ridPriv = get(words, SM_CONTEXT_ENTRY.RID_PRIV) === 1n;
  const rsvd =
    get(words, SM_CONTEXT_ENTRY.RSVD0) |
    get(words, SM_CONTEXT_ENTRY.RSVD1) |
    get(words, SM_CONTEXT_ENTRY.RSVD2) |
    get(words, SM_CONTEXT_ENTRY.RSVD3);
  if (
    rsvd !== 0n ||
    pasidDirPtr >> BigInt(lim.haw) !== 0n ||
    (ridPriv && !lim.rprivs) ||
    (get(words, SM_CONTEXT_ENTRY.DTE) === 1n && !lim.dt) ||
    (get(words, SM_CONTEXT_ENTRY.PRE) === 1n && !lim.prs)
  ) {
    return { ok: false, reason: VTD_FR.SM_CTX_RSVD, fpd };
  }
  const ridPasid = getNum(words, SM_CONTEXT_ENTRY.RID_PASID);
  if (ridPasid >= 2 ** lim.pasidBits || (!lim.rps && ridPasid !== 0)) {
    return { ok: false, reason: VTD_FR.SM_CTX_RID_PASID, fpd };
  }
  return {
    ok: true,
    entry: {
      fpd,
      dte: get(words, SM_CONTEXT_ENTRY.DTE) === 1n,
      paside: get(words, SM_CONTEXT_ENTRY.PASIDE) === 1n,
      pre: get(words, SM_CONTEXT_ENTRY.PRE) === 1n,
      pdts: getNum(words, SM_CONTEXT_ENTRY.PDTS),
      pasidDirPtr,
      ridPasid,
      ridPriv,
      raw: words,
    },
  };
}

/** Number of PASID directory entries a context entry covers. */
export function pasidDirEntries(ctx: SmContextEntry): number {
  return 2 ** (ctx.pdts + 7);
}

/** PASID → (directory index, table index): PASID[19:6], PASID[5:0]. */
export function pasidIndices(pasid: number): { dir: number; table: number } {
  return { dir: pasid >>> 6, table: pasid & 0x3f };
}

export interface PasidDirEntry {
  fpd: boolean;
  /** HPA of the 64-entry PASID table. */
  table: bigint;
}

export function decodePasidDirEntry(word: bigint, haw: number, fpdAbove: boolean): Decoded<PasidDirEntry> {
  const w = [word];
  if (get(w, PASID_DIR_ENTRY.P) === 0n) return { ok: false, reason: VTD_FR.SM_PDE_P, fpd: fpdAbove };
  const fpd = fpdAbove || get(w, PASID_DIR_ENTRY.FPD) === 1n;
  const table = get(w, PASID_DIR_ENTRY.SMPTBLPTR) << 12n;
  if (get(w, PASID_DIR_ENTRY.RSVD) !== 0n || table >> BigInt(haw) !== 0n) {
    return { ok: false, reason: VTD_FR.SM_PDE_RSVD, fpd };
  }
  return { ok: true, entry: { fpd, table } };
}

export interface SmPasidEntry {
  fpd: boolean;
  aw: number;
  ssee: boolean;
  pgtt: PgttValue;
  ssade: boolean;
  ssptptr: bigint;
  did: number;
  pwsnp: boolean;
  pgsnp: boolean;
  sre: boolean;
  ere: boolean;
  flpm: number;
  wpe: boolean;
  nxe: boolean;
  smep: boolean;
  eafe: boolean;
  fsptptr: bigint;
  raw: readonly bigint[];
}

/** Second-stage levels for a PASID-entry AW (AW 1/2/3 → 3/4/5 levels). */
export function ssLevelsForAw(aw: number): number {
  return aw + 2;
}
/** Second-stage input width for an AW (39/48/57 bits). */
export function ssWidthForAw(aw: number): number {
  return 30 + 9 * aw;
}

/**
 * Validate a present PASID table entry in the order the spec's fault
 * conditions are listed: present, reserved bits, then programming errors
 * (invalid PGTT or a value the unit does not support → 0x5B).
 */
export function decodeSmPasidEntry(words: readonly bigint[], lim: VtdEntryLimits, fpdAbove: boolean): Decoded<SmPasidEntry> {
  if (get(words, SM_PASID_ENTRY.P) === 0n) return { ok: false, reason: VTD_FR.SM_PTE_P, fpd: fpdAbove };
  const fpd = fpdAbove || get(words, SM_PASID_ENTRY.FPD) === 1n;
  const pgtt = getNum(words, SM_PASID_ENTRY.PGTT);
  const ssptptr = get(words, SM_PASID_ENTRY.SSPTPTR) << 12n;
  const fsptptr = get(words, SM_PASID_ENTRY.FSPTPTR) << 12n;
  const usesSs = pgtt === PGTT.SECOND_STAGE || pgtt === PGTT.NESTED;
  const usesFs = pgtt === PGTT.FIRST_STAGE || pgtt === PGTT.NESTED;
  const rsvd =
    get(words, SM_PASID_ENTRY.RSVD0) |
    get(words, SM_PASID_ENTRY.RSVD1) |
    get(words, SM_PASID_ENTRY.RSVD2) |
    get(words, SM_PASID_ENTRY.RSVD3) |
    get(words, SM_PASID_ENTRY.RSVD4) |
    get(words, SM_PASID_ENTRY.RSVD5) |
    get(words, SM_PASID_ENTRY.RSVD6) |
    get(words, SM_PASID_ENTRY.RSVD7);
  const flpm = getNum(words, SM_PASID_ENTRY.FLPM);
  const sre = get(words, SM_PASID_ENTRY.SRE) === 1n;
  const ere = get(words, SM_PASID_ENTRY.ERE) === 1n;
  const eafe = get(words, SM_PASID_ENTRY.EAFE) === 1n;
  const ssade = get(words, SM_PASID_ENTRY.SSADE) === 1n;
  // Reserved bits, and fields that are reserved when the unit lacks the feature.
  if (
    rsvd !== 0n ||
    (usesFs && flpm > FLPM.LEVEL5) ||
    (usesFs && flpm === FLPM.LEVEL5 && !lim.fs5lp) ||
    (usesFs && sre && !lim.srs) ||
    (usesFs && ere && !lim.ers) ||
    (usesFs && eafe && !lim.eafs) ||
    (usesSs && ssade && !lim.ssads)
  ) {
    return { ok: false, reason: VTD_FR.SM_PTE_RSVD, fpd };
  }
  const aw = getNum(words, SM_PASID_ENTRY.AW);
  const validPgtt = pgtt >= PGTT.FIRST_STAGE && pgtt <= PGTT.PASS_THROUGH && (pgtt !== PGTT.NESTED || lim.nest);
  if (!validPgtt || (usesSs && !lim.aw.includes(aw))) {
    return { ok: false, reason: VTD_FR.SM_PTE_INV, fpd };
  }
  // Table pointers beyond the host address width.
  if (usesSs && ssptptr >> BigInt(lim.haw) !== 0n) return { ok: false, reason: VTD_FR.SM_SSPTPTR_INV, fpd };
  if (pgtt === PGTT.FIRST_STAGE && fsptptr >> BigInt(lim.haw) !== 0n) {
    return { ok: false, reason: VTD_FR.SM_FS_ROOT_ACCESS, fpd };
  }
  return {
    ok: true,
    entry: {
      fpd,
      aw,
      ssee: get(words, SM_PASID_ENTRY.SSEE) === 1n,
      pgtt: pgtt as PgttValue,
      ssade,
      ssptptr,
      did: getNum(words, SM_PASID_ENTRY.DID),
      pwsnp: get(words, SM_PASID_ENTRY.PWSNP) === 1n,
      pgsnp: get(words, SM_PASID_ENTRY.PGSNP) === 1n,
      sre,
      ere,
      flpm,
      wpe: get(words, SM_PASID_ENTRY.WPE) === 1n,
      nxe: get(words, SM_PASID_ENTRY.NXE) === 1n,
      smep: get(words, SM_PASID_ENTRY.SMEP) === 1n,
      eafe,
      fsptptr,
      raw: words,
    },
  };
}

/**
 * Request checks a PASID entry applies to requests-with-PASID before any
 * walk (first-stage and nested PGTTs): execute requests need ERE (0x5C),
 * supervisor requests need SRE (0x5D). Requests without PASID carry neither.
 */
export function pasidEntryRequestCheck(pe: SmPasidEntry, hasPasid: boolean, exec: boolean, priv: boolean): VtdFaultReason | undefined {
  if (!hasPasid || (pe.pgtt !== PGTT.FIRST_STAGE && pe.pgtt !== PGTT.NESTED)) return undefined;
  if (exec && !pe.ere) return VTD_FR.SM_PTE_ERE;
  if (priv && !pe.sre) return VTD_FR.SM_PTE_SRE;
  return undefined;
}
