// SMMUv3 programming interface: register offsets (Page 0 and Page 1), the
// field tables of every register the model implements, and the ID register
// values computed from the features an instance advertises.
//
// Spec: Arm IHI 0070 §6.2 (register map), §6.3 (register descriptions).
// Registers are 32-bit unless noted; 64-bit registers are two separately
// writable 32-bit halves, bits[63:32] at offset +4 (§6.2).

import { type FieldTable, f, pack } from "../bits.js";

/** Register offsets from the SMMU base. Page 1 holds EVTQ/PRIQ PROD/CONS at +0x10000. */
export const SMMU_REG = {
  IDR0: 0x00,
  IDR1: 0x04,
  IDR2: 0x08,
  IDR3: 0x0c,
  IDR4: 0x10,
  IDR5: 0x14,
  IIDR: 0x18,
  AIDR: 0x1c,
  CR0: 0x20,
  CR0ACK: 0x24,
  CR1: 0x28,
  CR2: 0x2c,
  STATUSR: 0x40,
  GBPA: 0x44,
  AGBPA: 0x48,
  IRQ_CTRL: 0x50,
  IRQ_CTRLACK: 0x54,
  GERROR: 0x60,
  GERRORN: 0x64,
  GERROR_IRQ_CFG0: 0x68, // 64-bit
  GERROR_IRQ_CFG1: 0x70,
  GERROR_IRQ_CFG2: 0x74,
  STRTAB_BASE: 0x80, // 64-bit
  STRTAB_BASE_CFG: 0x88,
  CMDQ_BASE: 0x90, // 64-bit
  CMDQ_PROD: 0x98,
  CMDQ_CONS: 0x9c,
  EVENTQ_BASE: 0xa0, // 64-bit
  EVENTQ_IRQ_CFG0: 0xb0, // 64-bit
  EVENTQ_IRQ_CFG1: 0xb8,
  EVENTQ_IRQ_CFG2: 0xbc,
  PRIQ_BASE: 0xc0, // 64-bit
  PRIQ_IRQ_CFG0: 0xd0, // 64-bit
  PRIQ_IRQ_CFG1: 0xd8,
  PRIQ_IRQ_CFG2: 0xdc,
  /** Page 1 (§6.2.2). The Page 0 aliases at 0xA8/0xAC/0xC8/0xCC are also decoded. */
  EVENTQ_PROD: 0x100a8,
  EVENTQ_CONS: 0x100ac,
  PRIQ_PROD: 0x100c8,
  PRIQ_CONS: 0x100cc,
} as const;

/** Size of the MMIO window the model decodes (Page 0 + Page 1). */
export const SMMU_MMIO_SIZE = 0x20000;

/** Registers that are 64 bits wide (two 32-bit halves). */
export const SMMU_REG64: ReadonlySet<number> = new Set([
  SMMU_REG.GERROR_IRQ_CFG0,
  SMMU_REG.STRTAB_BASE,
  SMMU_REG.CMDQ_BASE,
  SMMU_REG.EVENTQ_BASE,
  SMMU_REG.EVENTQ_IRQ_CFG0,
  SMMU_REG.PRIQ_BASE,
  SMMU_REG.PRIQ_IRQ_CFG0,
]);

// ---------------------------------------------------------------------------
// ID registers (§6.3.1–§6.3.6)

export const IDR0 = {
  S2P: f(0, 0),
  S1P: f(0, 1),
  TTF: f(0, 3, 2),
  COHACC: f(0, 4),
  BTM: f(0, 5),
  HTTU: f(0, 7, 6),
  DORMHINT: f(0, 8),
  Hyp: f(0, 9),
  ATS: f(0, 10),
  NS1ATS: f(0, 11),
  ASID16: f(0, 12),
  MSI: f(0, 13),
  SEV: f(0, 14),
  ATOS: f(0, 15),
  PRI: f(0, 16),
  VMW: f(0, 17),
  VMID16: f(0, 18),
  CD2L: f(0, 19),
  VATOS: f(0, 20),
  TTENDIAN: f(0, 22, 21),
  ATSRECERR: f(0, 23),
  STALL_MODEL: f(0, 25, 24),
  TERM_MODEL: f(0, 26),
  ST_LEVEL: f(0, 28, 27),
  RME_IMPL: f(0, 30),
} as const satisfies FieldTable;

export const IDR0_TTF = { AARCH32: 1, AARCH64: 2, BOTH: 3 } as const;
export const IDR0_HTTU = { NONE: 0, AF: 1, AF_DIRTY: 2 } as const;
export const IDR0_STALL_MODEL = { STALL_AND_TERM: 0, TERM_ONLY: 1, STALL_FORCED: 2 } as const;
export const IDR0_TTENDIAN = { MIXED: 0, LITTLE: 2, BIG: 3 } as const;

export const IDR1 = {
  SIDSIZE: f(0, 5, 0),
  SSIDSIZE: f(0, 10, 6),
  PRIQS: f(0, 15, 11),
  EVENTQS: f(0, 20, 16),
  CMDQS: f(0, 25, 21),
  ATTR_PERMS_OVR: f(0, 26),
  ATTR_TYPES_OVR: f(0, 27),
  REL: f(0, 28),
  QUEUES_PRESET: f(0, 29),
  TABLES_PRESET: f(0, 30),
  ECMDQ: f(0, 31),
} as const satisfies FieldTable;

export const IDR3 = {
  HAD: f(0, 2),
  PBHA: f(0, 3),
  XNX: f(0, 4),
  PPS: f(0, 5),
  MPAM: f(0, 7),
  FWB: f(0, 8),
  STT: f(0, 9),
  RIL: f(0, 10),
  BBML: f(0, 12, 11),
  E0PD: f(0, 13),
  PTWNNC: f(0, 14),
  DPT: f(0, 15),
} as const satisfies FieldTable;

export const IDR5 = {
  OAS: f(0, 2, 0),
  GRAN4K: f(0, 4),
  GRAN16K: f(0, 5),
  GRAN64K: f(0, 6),
  VAX: f(0, 11, 10),
  STALL_MAX: f(0, 31, 16),
} as const satisfies FieldTable;

/** Address-size encoding shared by IDR5.OAS, CD.IPS and STE.S2PS (§6.3.6). */
export const OAS_ENC = { BITS32: 0, BITS36: 1, BITS40: 2, BITS42: 3, BITS44: 4, BITS48: 5, BITS52: 6 } as const;
const OAS_BITS = [32, 36, 40, 42, 44, 48, 52, 56] as const;

/** Bits for an OAS/IPS/PS encoding. Reserved 0b111 behaves as 52 bits here (SMMUv3.1–3.3). */
export function oasBits(enc: number | bigint): number {
  const e = Number(enc);
  return e >= 6 ? 52 : (OAS_BITS[e] ?? 52);
}

/** The OAS encoding for a number of address bits (must be one of the encodable sizes). */
export function oasEncoding(bits: number): number {
  const i = OAS_BITS.indexOf(bits as (typeof OAS_BITS)[number]);
  if (i < 0 || i > 6) throw new RangeError(`no OAS encoding for ${bits} bits`);
  return i;
}

// ---------------------------------------------------------------------------
// Control registers (§6.3.9–§6.3.12)

export const CR0 = {
  SMMUEN: f(0, 0),
  PRIQEN: f(0, 1),
  EVENTQEN: f(0, 2),
  CMDQEN: f(0, 3),
  ATSCHK: f(0, 4),
  VMW: f(0, 8, 6),
} as const satisfies FieldTable;

/** Writable bits of CR0 this model implements; CR0ACK mirrors them at once. */
export const CR0_IMPLEMENTED_MASK = 0x1f;

export const CR1 = {
  QUEUE_IC: f(0, 1, 0),
  QUEUE_OC: f(0, 3, 2),
  QUEUE_SH: f(0, 5, 4),
  TABLE_IC: f(0, 7, 6),
  TABLE_OC: f(0, 9, 8),
  TABLE_SH: f(0, 11, 10),
} as const satisfies FieldTable;

export const CR2 = {
  E2H: f(0, 0),
  RECINVSID: f(0, 1),
  PTM: f(0, 2),
  REC_CFG_ATS: f(0, 3),
} as const satisfies FieldTable;

export const GBPA = {
  MEMATTR: f(0, 3, 0),
  MTCFG: f(0, 4),
  ALLOCCFG: f(0, 11, 8),
  SHCFG: f(0, 13, 12),
  PRIVCFG: f(0, 17, 16),
  INSTCFG: f(0, 19, 18),
  ABORT: f(0, 20),
  UPDATE: f(0, 31),
} as const satisfies FieldTable;

export const IRQ_CTRL = {
  GERROR_IRQEN: f(0, 0),
  PRIQ_IRQEN: f(0, 1),
  EVENTQ_IRQEN: f(0, 2),
} as const satisfies FieldTable;

/**
 * GERROR / GERRORN (§6.3.18). An error is active while the GERROR bit differs
 * from the GERRORN bit; software acknowledges by toggling GERRORN to match.
 */
export const GERROR = {
  CMDQ_ERR: f(0, 0),
  EVENTQ_ABT_ERR: f(0, 2),
  PRIQ_ABT_ERR: f(0, 3),
  MSI_CMDQ_ABT_ERR: f(0, 4),
  MSI_EVENTQ_ABT_ERR: f(0, 5),
  MSI_PRIQ_ABT_ERR: f(0, 6),
  MSI_GERROR_ABT_ERR: f(0, 7),
  SFM_ERR: f(0, 8),
  CMDQP_ERR: f(0, 9),
} as const satisfies FieldTable;

// ---------------------------------------------------------------------------
// Stream table and queue registers (§6.3.24–§6.3.35)

export const STRTAB_BASE = {
  ADDR: f(0, 55, 6),
  RA: f(0, 62),
} as const satisfies FieldTable;

export const STRTAB_BASE_CFG = {
  LOG2SIZE: f(0, 5, 0),
  SPLIT: f(0, 10, 6),
  FMT: f(0, 17, 16),
} as const satisfies FieldTable;

export const STRTAB_FMT = { LINEAR: 0, TWO_LEVEL: 1 } as const;

/** CMDQ_BASE, EVENTQ_BASE, PRIQ_BASE share this layout (RA for CMDQ, WA for the others). */
export const Q_BASE = {
  LOG2SIZE: f(0, 4, 0),
  ADDR: f(0, 55, 5),
  RWA: f(0, 62),
} as const satisfies FieldTable;

/**
 * PROD/CONS index registers: the index lives in bits [LOG2SIZE-1:0] and the wrap
 * flag in bit LOG2SIZE (see queue.ts); these are the fixed-position extras.
 */
export const CMDQ_CONS = { ERR: f(0, 30, 24) } as const satisfies FieldTable;
export const EVENTQ_PROD = { OVFLG: f(0, 31) } as const satisfies FieldTable;
export const EVENTQ_CONS = { OVACKFLG: f(0, 31) } as const satisfies FieldTable;
export const PRIQ_PROD = { OVFLG: f(0, 31) } as const satisfies FieldTable;
export const PRIQ_CONS = { OVACKFLG: f(0, 31) } as const satisfies FieldTable;

/** CMDQ_CONS.ERR encodings (§6.3.27, §7.1). */
export const CERROR = { NONE: 0, ILL: 1, ABT: 2, ATC_INV_SYNC: 3 } as const;

// ---------------------------------------------------------------------------
// Features an instance advertises

export interface SmmuFeatures {
  /** Stage 1 (IDR0.S1P). */
  stage1: boolean;
  /** Stage 2 (IDR0.S2P). Nesting = stage1 && stage2. */
  stage2: boolean;
  ats: boolean;
  /** PRI needs ATS. */
  pri: boolean;
  /** SubstreamID bits (IDR1.SSIDSIZE), 0..20. */
  ssidBits: number;
  /** StreamID bits (IDR1.SIDSIZE), 0..32. */
  sidBits: number;
  /** Range invalidation (IDR3.RIL). */
  rangeInvalidation: boolean;
  /** HTTU: 0 none, 1 access flag, 2 access flag + dirty state (IDR0.HTTU). */
  httu: 0 | 1 | 2;
  /** 2-level stream table (IDR0.ST_LEVEL = 1). */
  twoLevelStreamTable: boolean;
  /** 2-level CD tables (IDR0.CD2L). */
  twoLevelCdTable: boolean;
  asid16: boolean;
  vmid16: boolean;
  gran4K: boolean;
  gran16K: boolean;
  gran64K: boolean;
  /** Output address size in bits: 32, 36, 40, 42, 44, 48 or 52. */
  oas: number;
  /** IDR0.STALL_MODEL (0 stall + terminate, 1 terminate only, 2 stall forced). */
  stallModel: 0 | 1 | 2;
  /** Hierarchical attribute disable (IDR3.HAD). */
  had: boolean;
  /** Stage-2 forced write-back (IDR3.FWB). */
  fwb: boolean;
  /** log2 of the queue sizes the instance allows (IDR1.CMDQS/EVENTQS/PRIQS). */
  cmdqs: number;
  eventqs: number;
  priqs: number;
  /** Split-stage ATS not supported (IDR0.NS1ATS). */
  ns1ats: boolean;
}

export const DEFAULT_SMMU_FEATURES: Readonly<SmmuFeatures> = Object.freeze({
  stage1: true,
  stage2: true,
  ats: true,
  pri: true,
  ssidBits: 20,
  sidBits: 16,
  rangeInvalidation: true,
  httu: 2,
  twoLevelStreamTable: true,
  twoLevelCdTable: true,
  asid16: true,
  vmid16: true,
  gran4K: true,
  gran16K: true,
  gran64K: true,
  oas: 48,
  stallModel: 0,
  had: true,
  fwb: true,
  cmdqs: 19,
  eventqs: 19,
  priqs: 19,
  ns1ats: true,
});

export interface IdRegisters {
  IDR0: number;
  IDR1: number;
  IDR2: number;
  IDR3: number;
  IDR4: number;
  IDR5: number;
  IIDR: number;
  AIDR: number;
}

/** Compute the ID registers for a feature set (constant after reset, §6.2). */
export function buildIdRegisters(feat: SmmuFeatures): IdRegisters {
  const b = (x: boolean) => (x ? 1 : 0);
  const idr0 = pack(IDR0, 1, {
    S2P: b(feat.stage2),
    S1P: b(feat.stage1),
    TTF: IDR0_TTF.AARCH64,
    COHACC: 1,
    HTTU: feat.httu,
    Hyp: b(feat.stage1 && feat.stage2),
    ATS: b(feat.ats),
    NS1ATS: b(feat.ats && feat.stage1 && feat.stage2 && feat.ns1ats),
    ASID16: b(feat.asid16),
    PRI: b(feat.ats && feat.pri),
    VMID16: b(feat.vmid16 && feat.stage2),
    CD2L: b(feat.twoLevelCdTable),
    TTENDIAN: IDR0_TTENDIAN.LITTLE,
    STALL_MODEL: feat.stallModel,
    TERM_MODEL: 1,
    ST_LEVEL: b(feat.twoLevelStreamTable),
  })[0] as bigint;
  const idr1 = pack(IDR1, 1, {
    SIDSIZE: feat.sidBits,
    SSIDSIZE: feat.ssidBits,
    PRIQS: feat.ats && feat.pri ? feat.priqs : 0,
    EVENTQS: feat.eventqs,
    CMDQS: feat.cmdqs,
  })[0] as bigint;
  const idr3 = pack(IDR3, 1, {
    HAD: b(feat.had),
    FWB: b(feat.fwb && feat.stage2),
    RIL: b(feat.rangeInvalidation),
  })[0] as bigint;
  const idr5 = pack(IDR5, 1, {
    OAS: oasEncoding(feat.oas),
    GRAN4K: b(feat.gran4K),
    GRAN16K: b(feat.gran16K),
    GRAN64K: b(feat.gran64K),
    VAX: 0,
    STALL_MAX: feat.stallModel === 1 ? 0 : 32,
  })[0] as bigint;
  return {
    IDR0: Number(idr0),
    IDR1: Number(idr1),
    IDR2: 0,
    IDR3: Number(idr3),
    IDR4: 0,
    IDR5: Number(idr5),
    // IIDR: ProductID/Variant/Revision/Implementer — an obviously fake implementer (0x43B is Arm).
    IIDR: 0,
    // AIDR: ArchMajorRev 0 (v3), ArchMinorRev 2 (SMMUv3.2).
    AIDR: 0x02,
  };
}
