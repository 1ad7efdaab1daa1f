// Context Descriptor (CD, 64 bytes) and Level-1 CD table descriptor (L1CD,
// 8 bytes): field tables and a raw decode. Validation is in config.ts.
//
// Spec: Arm IHI 0070 §5.3 (L1CD), §5.4 (CD); reference/hw-formats.md §1.4.

import { type FieldTable, f, get, getNum, pack } from "../bits.js";

export const CD_QWORDS = 8;
export const CD_BYTES = 64;
export const L1CD_BYTES = 8;

export const CD = {
  T0SZ: f(0, 5, 0),
  TG0: f(0, 7, 6),
  IR0: f(0, 9, 8),
  OR0: f(0, 11, 10),
  SH0: f(0, 13, 12),
  EPD0: f(0, 14),
  ENDI: f(0, 15),
  T1SZ: f(0, 21, 16),
  TG1: f(0, 23, 22),
  IR1: f(0, 25, 24),
  OR1: f(0, 27, 26),
  SH1: f(0, 29, 28),
  EPD1: f(0, 30),
  V: f(0, 31),
  IPS: f(0, 34, 32),
  AFFD: f(0, 35),
  WXN: f(0, 36),
  UWXN: f(0, 37),
  TBI0: f(0, 38),
  TBI1: f(0, 39),
  PAN: f(0, 40),
  AA64: f(0, 41),
  HD: f(0, 42),
  HA: f(0, 43),
  S: f(0, 44),
  R: f(0, 45),
  A: f(0, 46),
  ASET: f(0, 47),
  ASID: f(0, 63, 48),

  NSCFG0: f(1, 0),
  HAD0: f(1, 1),
  E0PD0: f(1, 2),
  HAFT: f(1, 3),
  /** TTB0[51:4] for VMSAv8-64 (bits [55:52] RES0). */
  TTB0: f(1, 51, 4),
  HWU0: f(1, 63, 60),

  NSCFG1: f(2, 0),
  HAD1: f(2, 1),
  E0PD1: f(2, 2),
  TTB1: f(2, 51, 4),
  HWU1: f(2, 63, 60),

  MAIR: f(3, 63, 0),
  AMAIR: f(4, 63, 0),
  IMPDEF: f(5, 63, 0),
} as const satisfies FieldTable;

/** Level-1 CD table descriptor (§5.3). L2Ptr[11:0] are taken as zero. */
export const L1CD = {
  V: f(0, 0),
  L2Ptr: f(0, 55, 12),
} as const satisfies FieldTable;

export interface CdFields {
  V: boolean;
  T0SZ: number;
  TG0: number;
  EPD0: boolean;
  ENDI: boolean;
  T1SZ: number;
  TG1: number;
  EPD1: boolean;
  IPS: number;
  AFFD: boolean;
  WXN: boolean;
  UWXN: boolean;
  TBI0: boolean;
  TBI1: boolean;
  PAN: boolean;
  AA64: boolean;
  HD: boolean;
  HA: boolean;
  S: boolean;
  R: boolean;
  A: boolean;
  ASET: boolean;
  ASID: number;
  HAD0: boolean;
  HAD1: boolean;
  HAFT: boolean;
  TTB0: bigint;
  TTB1: bigint;
  MAIR: bigint;
}

export function decodeCdFields(w: readonly bigint[]): CdFields {
  const b = (fld: (typeof CD)[keyof typeof CD]) => get(w, fld) !== 0n;
  return {
    V: b(CD.V),
    T0SZ: getNum(w, CD.T0SZ),
    TG0: getNum(w, CD.TG0),
    EPD0: b(CD.EPD0),
    ENDI: b(CD.ENDI),
    T1SZ: getNum(w, CD.T1SZ),
    TG1: getNum(w, CD.TG1),
    EPD1: b(CD.EPD1),
    IPS: getNum(w, CD.IPS),
    AFFD: b(CD.AFFD),
    WXN: b(CD.WXN),
    UWXN: b(CD.UWXN),
    TBI0: b(CD.TBI0),
    TBI1: b(CD.TBI1),
    PAN: b(CD.PAN),
    AA64: b(CD.AA64),
    HD: b(CD.HD),
    HA: b(CD.HA),
    S: b(CD.S),
    R: b(CD.R),
    A: b(CD.A),
    ASET: b(CD.ASET),
    ASID: getNum(w, CD.ASID),
    HAD0: b(CD.HAD0),
    HAD1: b(CD.HAD1),
    HAFT: b(CD.HAFT),
    TTB0: get(w, CD.TTB0) << 4n,
    TTB1: get(w, CD.TTB1) << 4n,
    MAIR: get(w, CD.MAIR),
  };
}

export type CdInit = Partial<Record<Exclude<keyof typeof CD, "TTB0" | "TTB1">, bigint | number>> & {
  TTB0?: bigint;
  TTB1?: bigint;
};

/** Build the 8 words of a CD (addresses TTB0/TTB1 given in place). */
export function encodeCd(init: CdInit): bigint[] {
  const { TTB0, TTB1, ...rest } = init;
  return pack(CD, CD_QWORDS, {
    ...rest,
    ...(TTB0 !== undefined ? { TTB0: TTB0 >> 4n } : {}),
    ...(TTB1 !== undefined ? { TTB1: TTB1 >> 4n } : {}),
  });
}

export function encodeL1Cd(l2Ptr: bigint, valid = true): bigint {
  return pack(L1CD, 1, { V: valid ? 1 : 0, L2Ptr: l2Ptr >> 12n })[0] as bigint;
}
