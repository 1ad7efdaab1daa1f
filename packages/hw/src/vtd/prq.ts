// Page request queue (spec §7.5): 32-byte page request descriptors written
// by hardware at PQT, consumed by software from PQH. Overflow sets PRS.PRO
// and the request is answered by hardware (see Vtd.pageRequest).

import { type FieldTable, f, get, getNum, pack } from "../bits.js";

export const PAGE_REQ_DESC = {
  TYPE: f(0, 7, 0),
  PP: f(0, 8),
  PDP: f(0, 9),
  RID: f(0, 31, 16),
  PASID: f(0, 51, 32),
  ER: f(0, 52),
  PM: f(0, 53),
  RDR: f(1, 0),
  WRR: f(1, 1),
  LPIG: f(1, 2),
  PRGI: f(1, 11, 3),
  ADDR: f(1, 63, 12),
  PRIV0: f(2, 63, 0),
  PRIV1: f(3, 63, 0),
} as const satisfies FieldTable;
export const PAGE_REQ_DESC_BYTES = 32;
/** Descriptor type of a page request (page_req_dsc). */
export const PAGE_REQ_TYPE = 0x1;

/** A page request as the device sends it (PCIe Page Request Message + PASID prefix). */
export interface PageRequest {
  rid: number;
  /** undefined = no PASID prefix. */
  pasid?: number;
  addr: bigint;
  read: boolean;
  write: boolean;
  exec: boolean;
  priv: boolean;
  /** Page request group index (9 bits). */
  prgi: number;
  /** Last page in group. */
  lpig: boolean;
  privateData?: readonly [bigint, bigint];
}

export function encodePageRequest(req: PageRequest): bigint[] {
  return pack(PAGE_REQ_DESC, 4, {
    TYPE: PAGE_REQ_TYPE,
    PP: req.pasid === undefined ? 0 : 1,
    PDP: req.privateData ? 1 : 0,
    RID: req.rid,
    PASID: req.pasid ?? 0,
    ER: req.exec ? 1 : 0,
    PM: req.priv ? 1 : 0,
    RDR: req.read ? 1 : 0,
    WRR: req.write ? 1 : 0,
    LPIG: req.lpig ? 1 : 0,
    PRGI: req.prgi,
    ADDR: req.addr >> 12n,
    PRIV0: req.privateData?.[0] ?? 0n,
    PRIV1: req.privateData?.[1] ?? 0n,
  });
}

export function decodePageRequest(words: readonly bigint[]): PageRequest {
  const pp = get(words, PAGE_REQ_DESC.PP) === 1n;
  const pdp = get(words, PAGE_REQ_DESC.PDP) === 1n;
  const req: PageRequest = {
    rid: getNum(words, PAGE_REQ_DESC.RID),
    addr: get(words, PAGE_REQ_DESC.ADDR) << 12n,
    read: get(words, PAGE_REQ_DESC.RDR) === 1n,
    write: get(words, PAGE_REQ_DESC.WRR) === 1n,
    exec: get(words, PAGE_REQ_DESC.ER) === 1n,
    priv: get(words, PAGE_REQ_DESC.PM) === 1n,
    prgi: getNum(words, PAGE_REQ_DESC.PRGI),
    lpig: get(words, PAGE_REQ_DESC.LPIG) === 1n,
  };
  if (pp) req.pasid = getNum(words, PAGE_REQ_DESC.PASID);
  if (pdp) req.privateData = [words[2] ?? 0n, words[3] ?? 0n];
  return req;
}

/** LPIG = 1 with no access requested: a Stop Marker (no response expected). */
export function isStopMarker(req: PageRequest): boolean {
  return req.lpig && !req.read && !req.write;
}

/** A page group response delivered to the device (PCIe PRG Response Message). */
export interface PageGroupResponse {
  rid: number;
  pasid?: number;
  prgi: number;
  /** PRG_RESPONSE_CODE. */
  code: number;
  privateData?: readonly [bigint, bigint];
  /** True when the IOMMU answered on its own (PRQ overflow or PRE = 0), not software. */
  auto: boolean;
}
