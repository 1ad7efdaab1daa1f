// Invalidation queue descriptors (spec §6.5.2) and the page group response
// descriptor (§7.7.1), as field tables with encoders for drivers and a
// validating decoder for the hardware. The type is qw0[3:0] with qw0[11:9]
// as its high bits. In 256-bit mode (IQA.DW = 1) qw2/qw3 are reserved
// except for the page group response's private data.

import { type Field, type FieldTable, f, get, getNum, pack } from "../bits.js";
import { VTD_IQEI } from "./regs.js";

export const INV_DESC_TYPE = {
  CONTEXT_CACHE: 0x1,
  IOTLB: 0x2,
  DEVICE_TLB: 0x3,
  IEC: 0x4,
  WAIT: 0x5,
  PASID_IOTLB: 0x6,
  PASID_CACHE: 0x7,
  PASID_DEVICE_TLB: 0x8,
  PAGE_GROUP_RESPONSE: 0x9,
} as const;
export type InvDescType = (typeof INV_DESC_TYPE)[keyof typeof INV_DESC_TYPE];

const TYPE_LO = f(0, 3, 0);
const TYPE_HI = f(0, 11, 9);

export const CC_INV_DESC = {
  G: f(0, 5, 4),
  RSVD0: f(0, 8, 6),
  RSVD1: f(0, 15, 12),
  DID: f(0, 31, 16),
  SID: f(0, 47, 32),
  FM: f(0, 49, 48),
  RSVD2: f(0, 63, 50),
  RSVD3: f(1, 63, 0),
} as const satisfies FieldTable;
/** Context-cache invalidation granularity (qw0 G). */
export const CC_GRAN = { GLOBAL: 1, DOMAIN: 2, DEVICE: 3 } as const;

export const IOTLB_INV_DESC = {
  G: f(0, 5, 4),
  DW: f(0, 6),
  DR: f(0, 7),
  RSVD0: f(0, 8, 8),
  RSVD1: f(0, 15, 12),
  DID: f(0, 31, 16),
  RSVD2: f(0, 63, 32),
  AM: f(1, 5, 0),
  IH: f(1, 6),
  RSVD3: f(1, 11, 7),
  ADDR: f(1, 63, 12),
} as const satisfies FieldTable;
export const IOTLB_GRAN = { GLOBAL: 1, DOMAIN: 2, PAGE: 3 } as const;

export const DEVTLB_INV_DESC = {
  RSVD0: f(0, 11, 4),
  PFSID_LO: f(0, 15, 12),
  MIP: f(0, 20, 16),
  RSVD1: f(0, 31, 21),
  SID: f(0, 47, 32),
  RSVD2: f(0, 51, 48),
  PFSID_HI: f(0, 63, 52),
  S: f(1, 0),
  RSVD3: f(1, 11, 1),
  ADDR: f(1, 63, 12),
} as const satisfies FieldTable;

export const IEC_INV_DESC = {
  G: f(0, 4),
  RSVD0: f(0, 8, 5),
  RSVD1: f(0, 26, 12),
  IM: f(0, 31, 27),
  IIDX: f(0, 47, 32),
  RSVD2: f(0, 63, 48),
  RSVD3: f(1, 63, 0),
} as const satisfies FieldTable;

export const WAIT_INV_DESC = {
  IF: f(0, 4),
  SW: f(0, 5),
  FN: f(0, 6),
  PD: f(0, 7),
  RSVD0: f(0, 8, 8),
  RSVD1: f(0, 31, 12),
  SDATA: f(0, 63, 32),
  RSVD2: f(1, 1, 0),
  SADDR: f(1, 63, 2),
} as const satisfies FieldTable;

export const PIOTLB_INV_DESC = {
  G: f(0, 5, 4),
  RSVD0: f(0, 8, 6),
  RSVD1: f(0, 15, 12),
  DID: f(0, 31, 16),
  PASID: f(0, 51, 32),
  RSVD2: f(0, 63, 52),
  AM: f(1, 5, 0),
  IH: f(1, 6),
  RSVD3: f(1, 11, 7),
  ADDR: f(1, 63, 12),
} as const satisfies FieldTable;
/** PASID-based IOTLB granularity: 2 = all non-global of (DID, PASID), 3 = page-selective within PASID. */
export const PIOTLB_GRAN = { PASID: 2, PAGE: 3 } as const;

export const PC_INV_DESC = {
  G: f(0, 5, 4),
  RSVD0: f(0, 8, 6),
  RSVD1: f(0, 15, 12),
  DID: f(0, 31, 16),
  PASID: f(0, 51, 32),
  RSVD2: f(0, 63, 52),
  RSVD3: f(1, 63, 0),
} as const satisfies FieldTable;
/** PASID-cache granularity: 0 = all PASIDs of a DID, 1 = one PASID of a DID, 3 = global. */
export const PC_GRAN = { DOMAIN: 0, PASID: 1, GLOBAL: 3 } as const;

export const PDEVTLB_INV_DESC = {
  MIP: f(0, 8, 4),
  PFSID_LO: f(0, 15, 12),
  SID: f(0, 31, 16),
  PASID: f(0, 51, 32),
  PFSID_HI: f(0, 63, 52),
  G: f(1, 0),
  RSVD0: f(1, 10, 1),
  S: f(1, 11),
  ADDR: f(1, 63, 12),
} as const satisfies FieldTable;

export const PGRP_RESP_DESC = {
  PP: f(0, 4),
  PDP: f(0, 5),
  RSVD0: f(0, 8, 6),
  RC: f(0, 15, 12),
  RID: f(0, 31, 16),
  PASID: f(0, 51, 32),
  RSVD1: f(0, 63, 52),
  RSVD2: f(1, 1, 0),
  LPIG: f(1, 2),
  PRGI: f(1, 11, 3),
  RSVD3: f(1, 63, 12),
} as const satisfies FieldTable;
/** Page group response codes (PCIe PRG Response). */
export const PRG_RESPONSE_CODE = { SUCCESS: 0x0, INVALID_REQUEST: 0x1, FAILURE: 0xf } as const;

const TABLES: Record<InvDescType, FieldTable> = {
  [INV_DESC_TYPE.CONTEXT_CACHE]: CC_INV_DESC,
  [INV_DESC_TYPE.IOTLB]: IOTLB_INV_DESC,
  [INV_DESC_TYPE.DEVICE_TLB]: DEVTLB_INV_DESC,
  [INV_DESC_TYPE.IEC]: IEC_INV_DESC,
  [INV_DESC_TYPE.WAIT]: WAIT_INV_DESC,
  [INV_DESC_TYPE.PASID_IOTLB]: PIOTLB_INV_DESC,
  [INV_DESC_TYPE.PASID_CACHE]: PC_INV_DESC,
  [INV_DESC_TYPE.PASID_DEVICE_TLB]: PDEVTLB_INV_DESC,
  [INV_DESC_TYPE.PAGE_GROUP_RESPONSE]: PGRP_RESP_DESC,
};

/** Build a 4-qword descriptor of `type` from named fields (drivers and tests). */
export function encodeInvDesc<T extends FieldTable>(type: InvDescType, table: T, values: Partial<Record<keyof T, bigint | number>>): bigint[] {
  const words = pack(table, 4, values);
  words[0] = (words[0] as bigint) | BigInt(type & 0xf) | (BigInt(type >> 4) << 9n);
  return words;
}

export function invDescType(words: readonly bigint[]): number {
  return Number(get(words, TYPE_LO) | (get(words, TYPE_HI) << 4n));
}

export type InvDesc =
  | { type: "context-cache"; g: number; did: number; sid: number; fm: number }
  | { type: "iotlb"; g: number; did: number; dr: boolean; dw: boolean; am: number; ih: boolean; addr: bigint }
  | { type: "device-tlb"; sid: number; pfsid: number; mip: number; s: boolean; addr: bigint }
  | { type: "iec"; g: number; im: number; iidx: number }
  | { type: "wait"; if: boolean; sw: boolean; fn: boolean; pd: boolean; sdata: number; saddr: bigint }
  | { type: "pasid-iotlb"; g: number; did: number; pasid: number; am: number; ih: boolean; addr: bigint }
  | { type: "pasid-cache"; g: number; did: number; pasid: number }
  | { type: "pasid-device-tlb"; sid: number; pfsid: number; mip: number; pasid: number; global: boolean; s: boolean; addr: bigint }
  | {
      type: "page-group-response";
      pp: boolean;
      pdp: boolean;
      rc: number;
      rid: number;
      pasid: number;
      lpig: boolean;
      prgi: number;
      privateData: readonly [bigint, bigint];
    };

export type InvDescDecode = { ok: true; desc: InvDesc } | { ok: false; iqei: number };

function reservedClear(words: readonly bigint[], table: FieldTable): boolean {
  for (const [name, fld] of Object.entries(table) as [string, Field][]) {
    if (name.startsWith("RSVD") && get(words, fld) !== 0n) return false;
  }
  return true;
}

/**
 * Decode one fetched descriptor. `dw` = 256-bit mode (qw2/qw3 present and,
 * except for the page group response, reserved). Unknown types → IQEI 3;
 * reserved bits or out-of-range granularities → IQEI 4.
 */
export function decodeInvDesc(words: readonly bigint[], dw: boolean): InvDescDecode {
  const type = invDescType(words);
  const table = TABLES[type as InvDescType];
  if (!table) return { ok: false, iqei: VTD_IQEI.INVALID_TYPE };
  const bad = { ok: false, iqei: VTD_IQEI.RESERVED_FIELD } as const;
  if (!reservedClear(words, table)) return bad;
  if (dw && type !== INV_DESC_TYPE.PAGE_GROUP_RESPONSE && ((words[2] ?? 0n) !== 0n || (words[3] ?? 0n) !== 0n)) return bad;
  const n = (fld: Field) => getNum(words, fld);
  const b = (fld: Field) => get(words, fld) === 1n;
  switch (type) {
    case INV_DESC_TYPE.CONTEXT_CACHE: {
      const g = n(CC_INV_DESC.G);
      if (g === 0) return bad;
      return { ok: true, desc: { type: "context-cache", g, did: n(CC_INV_DESC.DID), sid: n(CC_INV_DESC.SID), fm: n(CC_INV_DESC.FM) } };
    }
    case INV_DESC_TYPE.IOTLB: {
      const g = n(IOTLB_INV_DESC.G);
      if (g === 0) return bad;
      return {
        ok: true,
        desc: {
          type: "iotlb",
          g,
          did: n(IOTLB_INV_DESC.DID),
          dr: b(IOTLB_INV_DESC.DR),
          dw: b(IOTLB_INV_DESC.DW),
          am: n(IOTLB_INV_DESC.AM),
          ih: b(IOTLB_INV_DESC.IH),
          addr: get(words, IOTLB_INV_DESC.ADDR) << 12n,
        },
      };
    }
    case INV_DESC_TYPE.DEVICE_TLB:
      return {
        ok: true,
        desc: {
          type: "device-tlb",
          sid: n(DEVTLB_INV_DESC.SID),
          pfsid: n(DEVTLB_INV_DESC.PFSID_LO) | (n(DEVTLB_INV_DESC.PFSID_HI) << 4),
          mip: n(DEVTLB_INV_DESC.MIP),
          s: b(DEVTLB_INV_DESC.S),
          addr: get(words, DEVTLB_INV_DESC.ADDR) << 12n,
        },
      };
    case INV_DESC_TYPE.IEC:
      return { ok: true, desc: { type: "iec", g: n(IEC_INV_DESC.G), im: n(IEC_INV_DESC.IM), iidx: n(IEC_INV_DESC.IIDX) } };
    case INV_DESC_TYPE.WAIT:
      return {
        ok: true,
        desc: {
          type: "wait",
          if: b(WAIT_INV_DESC.IF),
          sw: b(WAIT_INV_DESC.SW),
          fn: b(WAIT_INV_DESC.FN),
          pd: b(WAIT_INV_DESC.PD),
          sdata: n(WAIT_INV_DESC.SDATA),
          saddr: get(words, WAIT_INV_DESC.SADDR) << 2n,
        },
      };
    case INV_DESC_TYPE.PASID_IOTLB: {
      const g = n(PIOTLB_INV_DESC.G);
      if (g !== PIOTLB_GRAN.PASID && g !== PIOTLB_GRAN.PAGE) return bad;
      return {
        ok: true,
        desc: {
          type: "pasid-iotlb",
          g,
          did: n(PIOTLB_INV_DESC.DID),
          pasid: n(PIOTLB_INV_DESC.PASID),
          am: n(PIOTLB_INV_DESC.AM),
          ih: b(PIOTLB_INV_DESC.IH),
          addr: get(words, PIOTLB_INV_DESC.ADDR) << 12n,
        },
      };
    }
    case INV_DESC_TYPE.PASID_CACHE: {
      const g = n(PC_INV_DESC.G);
      if (g === 2) return bad;
      return { ok: true, desc: { type: "pasid-cache", g, did: n(PC_INV_DESC.DID), pasid: n(PC_INV_DESC.PASID) } };
    }
    case INV_DESC_TYPE.PASID_DEVICE_TLB:
      return {
        ok: true,
        desc: {
          type: "pasid-device-tlb",
          sid: n(PDEVTLB_INV_DESC.SID),
          pfsid: n(PDEVTLB_INV_DESC.PFSID_LO) | (n(PDEVTLB_INV_DESC.PFSID_HI) << 4),
          mip: n(PDEVTLB_INV_DESC.MIP),
          pasid: n(PDEVTLB_INV_DESC.PASID),
          global: b(PDEVTLB_INV_DESC.G),
          s: b(PDEVTLB_INV_DESC.S),
          addr: get(words, PDEVTLB_INV_DESC.ADDR) << 12n,
        },
      };
    case INV_DESC_TYPE.PAGE_GROUP_RESPONSE: {
      const pdp = b(PGRP_RESP_DESC.PDP);
      return {
        ok: true,
        desc: {
          type: "page-group-response",
          pp: b(PGRP_RESP_DESC.PP),
          pdp,
          rc: n(PGRP_RESP_DESC.RC),
          rid: n(PGRP_RESP_DESC.RID),
          pasid: n(PGRP_RESP_DESC.PASID),
          lpig: b(PGRP_RESP_DESC.LPIG),
          prgi: n(PGRP_RESP_DESC.PRGI),
          privateData: pdp ? [words[2] ?? 0n, words[3] ?? 0n] : [0n, 0n],
        },
      };
    }
  }
  return { ok: false, iqei: VTD_IQEI.INVALID_TYPE };
}
