// VT-d remapping-hardware register file: offsets, and every register's
// layout as a field table (VT-d Architecture Specification, chapter 11
// "Register Descriptions"). Positions were checked against public Intel
// processor datasheets that reproduce the spec's register tables (CAP, ECAP,
// FSTS, FRCD, IQERCD, PQA) and against the Linux intel driver's iommu.h.
//
// Registers are held as 64-bit words; 32-bit registers use the low half.

import { type FieldTable, f, get, pack } from "../bits.js";

/** Register offsets from the remapping unit's base (spec §11.4). */
export const VTD_REG = {
  VER: 0x00,
  CAP: 0x08,
  ECAP: 0x10,
  GCMD: 0x18,
  GSTS: 0x1c,
  RTADDR: 0x20,
  CCMD: 0x28,
  FSTS: 0x34,
  FECTL: 0x38,
  FEDATA: 0x3c,
  FEADDR: 0x40,
  FEUADDR: 0x44,
  AFLOG: 0x58,
  PMEN: 0x64,
  IQH: 0x80,
  IQT: 0x88,
  IQA: 0x90,
  ICS: 0x9c,
  IECTL: 0xa0,
  IEDATA: 0xa4,
  IEADDR: 0xa8,
  IEUADDR: 0xac,
  IQERCD: 0xb0,
  IRTA: 0xb8,
  PQH: 0xc0,
  PQT: 0xc8,
  PQA: 0xd0,
  PRS: 0xdc,
  PECTL: 0xe0,
  PEDATA: 0xe4,
  PEADDR: 0xe8,
  PEUADDR: 0xec,
} as const;
export type VtdRegName = keyof typeof VTD_REG;

/** Width in bytes of each register in VTD_REG. */
export const VTD_REG_WIDTH: Readonly<Record<VtdRegName, 4 | 8>> = {
  VER: 4,
  CAP: 8,
  ECAP: 8,
  GCMD: 4,
  GSTS: 4,
  RTADDR: 8,
  CCMD: 8,
  FSTS: 4,
  FECTL: 4,
  FEDATA: 4,
  FEADDR: 4,
  FEUADDR: 4,
  AFLOG: 8,
  PMEN: 4,
  IQH: 8,
  IQT: 8,
  IQA: 8,
  ICS: 4,
  IECTL: 4,
  IEDATA: 4,
  IEADDR: 4,
  IEUADDR: 4,
  IQERCD: 8,
  IRTA: 8,
  PQH: 8,
  PQT: 8,
  PQA: 8,
  PRS: 4,
  PECTL: 4,
  PEDATA: 4,
  PEADDR: 4,
  PEUADDR: 4,
};

/** VER_REG: architecture version (3.0 advertises scalable mode). */
export const VER_FIELDS = { MIN: f(0, 3, 0), MAX: f(0, 7, 4) } as const satisfies FieldTable;

/** CAP_REG (spec §11.4.2). */
export const CAP_FIELDS = {
  ND: f(0, 2, 0),
  AFL: f(0, 3),
  RWBF: f(0, 4),
  PLMR: f(0, 5),
  PHMR: f(0, 6),
  CM: f(0, 7),
  SAGAW: f(0, 12, 8),
  MGAW: f(0, 21, 16),
  ZLR: f(0, 22),
  FRO: f(0, 33, 24),
  /** Second-stage large pages: bit 34 = 2 MiB, bit 35 = 1 GiB. */
  SSLPS: f(0, 37, 34),
  PSI: f(0, 39),
  NFR: f(0, 47, 40),
  MAMV: f(0, 53, 48),
  DWD: f(0, 54),
  DRD: f(0, 55),
  /** First-stage 1 GiB pages (FL1GP in VT-d 3.x). */
  FS1GP: f(0, 56),
  PI: f(0, 59),
  /** First-stage 5-level paging (FL5LP in VT-d 3.x). */
  FS5LP: f(0, 60),
  ECMDS: f(0, 61),
  ESIRTPS: f(0, 62),
  ESRTPS: f(0, 63),
} as const satisfies FieldTable;

/** ECAP_REG (spec §11.4.3). */
export const ECAP_FIELDS = {
  C: f(0, 0),
  QI: f(0, 1),
  DT: f(0, 2),
  IR: f(0, 3),
  EIM: f(0, 4),
  PT: f(0, 6),
  SC: f(0, 7),
  IRO: f(0, 17, 8),
  MHMV: f(0, 23, 20),
  MTS: f(0, 25),
  NEST: f(0, 26),
  PRS: f(0, 29),
  ERS: f(0, 30),
  SRS: f(0, 31),
  NWFS: f(0, 33),
  EAFS: f(0, 34),
  PSS: f(0, 39, 35),
  PASID: f(0, 40),
  DIT: f(0, 41),
  PDS: f(0, 42),
  SMTS: f(0, 43),
  VCS: f(0, 44),
  SSADS: f(0, 45),
  SSTS: f(0, 46),
  FSTS: f(0, 47),
  SMPWCS: f(0, 48),
  RPS: f(0, 49),
  PMS: f(0, 51),
  ADMS: f(0, 52),
  RPRIVS: f(0, 53),
} as const satisfies FieldTable;

/** GCMD_REG; GSTS_REG reports the same positions (TES, RTPS, ... QIES, ...). */
export const GCMD_FIELDS = {
  CFI: f(0, 23),
  SIRTP: f(0, 24),
  IRE: f(0, 25),
  QIE: f(0, 26),
  WBF: f(0, 27),
  EAFL: f(0, 28),
  SFL: f(0, 29),
  SRTP: f(0, 30),
  TE: f(0, 31),
} as const satisfies FieldTable;
export const GSTS_FIELDS = {
  CFIS: f(0, 23),
  IRTPS: f(0, 24),
  IRES: f(0, 25),
  QIES: f(0, 26),
  WBFS: f(0, 27),
  AFLS: f(0, 28),
  FLS: f(0, 29),
  RTPS: f(0, 30),
  TES: f(0, 31),
} as const satisfies FieldTable;

/** RTADDR_REG: RTA (4 KiB aligned, in place) and TTM. */
export const RTADDR_FIELDS = { TTM: f(0, 11, 10), RTA: f(0, 63, 12) } as const satisfies FieldTable;

/** RTADDR.TTM translation table modes. */
export const VTD_TTM = { LEGACY: 0, SCALABLE: 1, RESERVED: 2, ABORT_DMA: 3 } as const;

/** FSTS_REG (spec §11.4.7.1). PRO moved to PRS_REG in VT-d 3.x; bit 7 is kept for 2.x readers. */
export const FSTS_FIELDS = {
  PFO: f(0, 0),
  PPF: f(0, 1),
  AFO: f(0, 2),
  APF: f(0, 3),
  IQE: f(0, 4),
  ICE: f(0, 5),
  ITE: f(0, 6),
  FRI: f(0, 15, 8),
} as const satisfies FieldTable;
/** FSTS bits that software clears by writing 1 (RW1C). */
export const FSTS_RW1C_MASK = 0x7dn; // PFO, AFO, APF, IQE, ICE, ITE (PPF is computed)

/** FECTL / IECTL / PECTL: interrupt mask and pending. */
export const EVCTL_FIELDS = { IP: f(0, 30), IM: f(0, 31) } as const satisfies FieldTable;

/** IQA_REG: base (4 KiB aligned, in place), DW (256-bit descriptors), QS (2^QS pages). */
export const IQA_FIELDS = { QS: f(0, 2, 0), DW: f(0, 11), IQA: f(0, 63, 12) } as const satisfies FieldTable;
/** IQH_REG / IQT_REG hold a byte offset into the queue, bits [18:4]. */
export const IQ_PTR_FIELDS = { QHT: f(0, 18, 4) } as const satisfies FieldTable;
/** ICS_REG: invalidation wait completion status. */
export const ICS_FIELDS = { IWC: f(0, 0) } as const satisfies FieldTable;

/** IQERCD_REG: IQ error info (checked against Intel datasheets reproducing the spec). */
export const IQERCD_FIELDS = { IQEI: f(0, 3, 0), ITESID: f(0, 47, 32), ICESID: f(0, 63, 48) } as const satisfies FieldTable;
/** IQERCD.IQEI encodings. */
export const VTD_IQEI = {
  NO_INFO: 0,
  INVALID_TAIL: 1,
  FETCH_ERROR: 2,
  INVALID_TYPE: 3,
  RESERVED_FIELD: 4,
  INVALID_WIDTH: 5,
} as const;

/** PQA_REG: base (in place), PQS (2^PQS pages of 32-byte descriptors). */
export const PQA_FIELDS = { PQS: f(0, 2, 0), PQA: f(0, 63, 12) } as const satisfies FieldTable;
/** PQH_REG / PQT_REG: byte offset of 32-byte descriptors, bits [18:5]. */
export const PQ_PTR_FIELDS = { PQHT: f(0, 18, 5) } as const satisfies FieldTable;
/** PRS_REG: pending page request, page request overflow. */
export const PRS_FIELDS = { PPR: f(0, 0), PRO: f(0, 1) } as const satisfies FieldTable;

/** What a VT-d unit advertises; turned into CAP/ECAP by capRegister()/ecapRegister(). */
export interface VtdCapabilities {
  /** Host address width (MGAW + 1 and the HAW for tables). */
  readonly haw: number;
  /** Second-stage levels supported (SAGAW bit 1 = 3-level, bit 2 = 4-level, bit 3 = 5-level). */
  readonly sagawLevels: readonly (3 | 4 | 5)[];
  readonly nfr: number;
  readonly fs1gp: boolean;
  readonly fs5lp: boolean;
  /** Second-stage large pages: 1 = 2 MiB, 2 = 2 MiB + 1 GiB. */
  readonly sslps: 0 | 1 | 2;
  readonly nest: boolean;
  readonly pasid: boolean;
  /** PASID width in bits (ECAP.PSS = width - 1). */
  readonly pasidBits: number;
  readonly prs: boolean;
  readonly dt: boolean;
  readonly ers: boolean;
  readonly srs: boolean;
  readonly eafs: boolean;
  readonly nwfs: boolean;
  readonly ssads: boolean;
  readonly pds: boolean;
  readonly rps: boolean;
  readonly mamv: number;
  /** Offset of the fault recording registers (CAP.FRO * 16). */
  readonly froOffset: number;
  /** Offset of the IOTLB registers (ECAP.IRO * 16). */
  readonly iroOffset: number;
}

export const DEFAULT_VTD_CAPABILITIES: VtdCapabilities = {
  haw: 52,
  sagawLevels: [3, 4, 5],
  nfr: 8,
  fs1gp: true,
  fs5lp: true,
  sslps: 2,
  nest: true,
  pasid: true,
  pasidBits: 20,
  prs: true,
  dt: true,
  ers: true,
  srs: true,
  eafs: true,
  nwfs: true,
  ssads: true,
  pds: true,
  rps: true,
  mamv: 18,
  froOffset: 0x400,
  iroOffset: 0x500,
};

/** ND encoding for 16-bit domain IDs (2^(4 + 2*ND) domains). */
const ND_16BIT = 6;

export function capRegister(c: VtdCapabilities): bigint {
  let sagaw = 0;
  for (const l of c.sagawLevels) sagaw |= 1 << (l - 2);
  return pack(CAP_FIELDS, 1, {
    ND: ND_16BIT,
    SAGAW: sagaw,
    MGAW: c.haw - 1,
    ZLR: 1,
    FRO: c.froOffset / 16,
    SSLPS: c.sslps === 2 ? 0b11 : c.sslps === 1 ? 0b01 : 0,
    PSI: 1,
    NFR: c.nfr - 1,
    MAMV: c.mamv,
    DWD: 1,
    DRD: 1,
    FS1GP: c.fs1gp ? 1 : 0,
    FS5LP: c.fs5lp ? 1 : 0,
    ESRTPS: 1,
  })[0] as bigint;
}

export function ecapRegister(c: VtdCapabilities): bigint {
  return pack(ECAP_FIELDS, 1, {
    C: 1,
    QI: 1,
    DT: c.dt ? 1 : 0,
    PT: 1,
    SC: 1,
    IRO: c.iroOffset / 16,
    NEST: c.nest ? 1 : 0,
    PRS: c.prs ? 1 : 0,
    ERS: c.ers ? 1 : 0,
    SRS: c.srs ? 1 : 0,
    NWFS: c.nwfs ? 1 : 0,
    EAFS: c.eafs ? 1 : 0,
    PSS: c.pasid ? c.pasidBits - 1 : 0,
    PASID: c.pasid ? 1 : 0,
    DIT: 1,
    PDS: c.pds ? 1 : 0,
    SMTS: 1,
    SSADS: c.ssads ? 1 : 0,
    SSTS: 1,
    FSTS: 1,
    SMPWCS: 1,
    RPS: c.rps ? 1 : 0,
    ADMS: 1,
  })[0] as bigint;
}

/** Second-stage AW values the unit accepts in PASID entries (AW = levels - 2). */
export function supportedAw(cap: bigint): number[] {
  const sagaw = Number(get([cap], CAP_FIELDS.SAGAW));
  const out: number[] = [];
  for (let aw = 0; aw < 5; aw++) if (sagaw & (1 << aw)) out.push(aw);
  return out;
}

/** IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 (iommufd uAPI). */
export const IOMMU_HW_INFO_VTD_ERRATA_772415_SPR17 = 1 << 0;

/** `struct iommu_hw_info_vtd` as the host reports it (24 bytes). */
export interface IommuHwInfoVtd {
  flags: number;
  __reserved: number;
  cap_reg: bigint;
  ecap_reg: bigint;
}

export function hwInfoVtd(cap: bigint, ecap: bigint, flags = 0): IommuHwInfoVtd {
  return { flags, __reserved: 0, cap_reg: cap, ecap_reg: ecap };
}

/** The kernel's C layout of iommu_hw_info_vtd (little-endian, 24 bytes). */
export function hwInfoVtdBytes(info: IommuHwInfoVtd): Uint8Array {
  const out = new Uint8Array(24);
  const v = new DataView(out.buffer);
  v.setUint32(0, info.flags, true);
  v.setUint32(4, info.__reserved, true);
  v.setBigUint64(8, info.cap_reg, true);
  v.setBigUint64(16, info.ecap_reg, true);
  return out;
}
