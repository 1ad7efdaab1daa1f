// Stream Table Entry (STE, 64 bytes) and Level-1 Stream Table Descriptor
// (L1STD, 8 bytes): field tables, spec encodings, and a raw decode that
// exposes every field the model uses. Validation against the advertised
// features lives in config.ts, so this file stays a plain layout.
//
// Spec: Arm IHI 0070 §5.1 (L1STD), §5.2 (STE). Bit positions are qwN[hi:lo]
// of little-endian 64-bit words (reference/hw-formats.md §1.3).

import { type FieldTable, f, get, getNum, pack } from "../bits.js";

export const STE_QWORDS = 8;
export const STE_BYTES = 64;
export const L1STD_BYTES = 8;

export const STE = {
  V: f(0, 0),
  Config: f(0, 3, 1),
  S1Fmt: f(0, 5, 4),
  S1ContextPtr: f(0, 55, 6),
  S1CDMax: f(0, 63, 59),

  S1DSS: f(1, 1, 0),
  S1CIR: f(1, 3, 2),
  S1COR: f(1, 5, 4),
  S1CSH: f(1, 7, 6),
  S2HWU: f(1, 11, 8),
  DRE: f(1, 12),
  CONT: f(1, 16, 13),
  DCP: f(1, 17),
  PPAR: f(1, 18),
  MEV: f(1, 19),
  SW_RESERVED: f(1, 23, 20),
  S1PIE: f(1, 24),
  S2FWB: f(1, 25),
  S1MPAM: f(1, 26),
  S1STALLD: f(1, 27),
  EATS: f(1, 29, 28),
  STRW: f(1, 31, 30),
  MemAttr: f(1, 35, 32),
  MTCFG: f(1, 36),
  ALLOCCFG: f(1, 40, 37),
  SHCFG: f(1, 45, 44),
  NSCFG: f(1, 47, 46),
  PRIVCFG: f(1, 49, 48),
  INSTCFG: f(1, 51, 50),

  S2VMID: f(2, 15, 0),
  S2T0SZ: f(2, 37, 32),
  S2SL0: f(2, 39, 38),
  S2IR0: f(2, 41, 40),
  S2OR0: f(2, 43, 42),
  S2SH0: f(2, 45, 44),
  S2TG: f(2, 47, 46),
  S2PS: f(2, 50, 48),
  S2AA64: f(2, 51),
  S2ENDI: f(2, 52),
  S2AFFD: f(2, 53),
  S2PTW: f(2, 54),
  S2HD: f(2, 55),
  S2HA: f(2, 56),
  S2S: f(2, 57),
  S2R: f(2, 58),

  /** S2TTB[51:4] for VMSAv8-64 (bits [55:52] RES0). */
  S2TTB: f(3, 51, 4),
} as const satisfies FieldTable;

/** STE.Config (§5.2): bit 0 stage 1, bit 1 stage 2, bit 2 "traffic can pass". */
export const STE_CONFIG = {
  ABORT: 0b000,
  BYPASS: 0b100,
  S1_TRANS: 0b101,
  S2_TRANS: 0b110,
  NESTED: 0b111,
} as const;

/** STE.S1Fmt: CD table layout. 0b11 is Reserved and behaves as LINEAR. */
export const STE_S1FMT = { LINEAR: 0, TWO_LEVEL_4K: 1, TWO_LEVEL_64K: 2 } as const;

/** STE.S1DSS: what non-substream traffic does when S1CDMax != 0. 0b11 behaves as TERMINATE. */
export const STE_S1DSS = { TERMINATE: 0, BYPASS: 1, SSID0: 2 } as const;

/** STE.EATS. */
export const STE_EATS = { ABT: 0, TRANS: 1, S1CHK: 2, TRANS_DPT: 3 } as const;

/** STE.STRW (StreamWorld). */
export const STE_STRW = { NSEL1: 0, EL2: 2 } as const;

/** STE.S2TG / CD.TG0 granule encoding. */
export const TG0_ENC = { G4K: 0, G64K: 1, G16K: 2 } as const;

/** CD.TG1 uses a different encoding (§5.4). */
export const TG1_ENC = { G16K: 1, G4K: 2, G64K: 3 } as const;

/** Level-1 Stream Table Descriptor (§5.1). */
export const L1STD = {
  Span: f(0, 4, 0),
  L2Ptr: f(0, 55, 6),
} as const satisfies FieldTable;

/** Every field of an STE decoded (addresses in place, not shifted). */
export interface SteFields {
  V: boolean;
  Config: number;
  S1Fmt: number;
  S1ContextPtr: bigint;
  S1CDMax: number;
  S1DSS: number;
  S1CIR: number;
  S1COR: number;
  S1CSH: number;
  MEV: boolean;
  S2FWB: boolean;
  S1STALLD: boolean;
  EATS: number;
  STRW: number;
  PRIVCFG: number;
  INSTCFG: number;
  S2VMID: number;
  S2T0SZ: number;
  S2SL0: number;
  S2TG: number;
  S2PS: number;
  S2AA64: boolean;
  S2ENDI: boolean;
  S2AFFD: boolean;
  S2PTW: boolean;
  S2HD: boolean;
  S2HA: boolean;
  S2S: boolean;
  S2R: boolean;
  S2TTB: bigint;
}

/** Decode an STE's fields (no validation). */
export function decodeSteFields(w: readonly bigint[]): SteFields {
  const b = (fld: (typeof STE)[keyof typeof STE]) => get(w, fld) !== 0n;
  return {
    V: b(STE.V),
    Config: getNum(w, STE.Config),
    S1Fmt: getNum(w, STE.S1Fmt),
    S1ContextPtr: get(w, STE.S1ContextPtr) << 6n,
    S1CDMax: getNum(w, STE.S1CDMax),
    S1DSS: getNum(w, STE.S1DSS),
    S1CIR: getNum(w, STE.S1CIR),
    S1COR: getNum(w, STE.S1COR),
    S1CSH: getNum(w, STE.S1CSH),
    MEV: b(STE.MEV),
    S2FWB: b(STE.S2FWB),
    S1STALLD: b(STE.S1STALLD),
    EATS: getNum(w, STE.EATS),
    STRW: getNum(w, STE.STRW),
    PRIVCFG: getNum(w, STE.PRIVCFG),
    INSTCFG: getNum(w, STE.INSTCFG),
    S2VMID: getNum(w, STE.S2VMID),
    S2T0SZ: getNum(w, STE.S2T0SZ),
    S2SL0: getNum(w, STE.S2SL0),
    S2TG: getNum(w, STE.S2TG),
    S2PS: getNum(w, STE.S2PS),
    S2AA64: b(STE.S2AA64),
    S2ENDI: b(STE.S2ENDI),
    S2AFFD: b(STE.S2AFFD),
    S2PTW: b(STE.S2PTW),
    S2HD: b(STE.S2HD),
    S2HA: b(STE.S2HA),
    S2S: b(STE.S2S),
    S2R: b(STE.S2R),
    S2TTB: get(w, STE.S2TTB) << 4n,
  };
}

/** Values for building an STE: addresses given in place (S1ContextPtr, S2TTB). */
export type SteInit = Partial<Record<Exclude<keyof typeof STE, "S1ContextPtr" | "S2TTB">, bigint | number>> & {
  S1ContextPtr?: bigint;
  S2TTB?: bigint;
};

/** Build the 8 words of an STE (drivers, guests and tests). */
export function encodeSte(init: SteInit): bigint[] {
  const { S1ContextPtr, S2TTB, ...rest } = init;
  return pack(STE, STE_QWORDS, {
    ...rest,
    ...(S1ContextPtr !== undefined ? { S1ContextPtr: S1ContextPtr >> 6n } : {}),
    ...(S2TTB !== undefined ? { S2TTB: S2TTB >> 4n } : {}),
  });
}

/** Build an L1STD word: `span` = log2(#STEs in the L2 array) + 1; 0 = invalid. */
export function encodeL1Std(l2Ptr: bigint, span: number): bigint {
  return pack(L1STD, 1, { Span: span, L2Ptr: l2Ptr >> 6n })[0] as bigint;
}
