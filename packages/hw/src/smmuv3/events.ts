// SMMUv3 event records (32 bytes): event numbers, the record layout as a
// field table, which fields each event type defines, and encode/decode.
// Mapping walker faults to these records happens in one place: faults.ts.
//
// Spec: Arm IHI 0070 §7.3; reference/hw-formats.md §1.8.

import { type FieldTable, f, get, getNum, nameOf, pack } from "../bits.js";

export const EVT_QWORDS = 4;
export const EVT_BYTES = 32;

/** Event numbers (§7.3, qw0[7:0]). */
export const EVT_ID = {
  F_UUT: 0x01,
  C_BAD_STREAMID: 0x02,
  F_STE_FETCH: 0x03,
  C_BAD_STE: 0x04,
  F_BAD_ATS_TREQ: 0x05,
  F_STREAM_DISABLED: 0x06,
  F_TRANSL_FORBIDDEN: 0x07,
  C_BAD_SUBSTREAMID: 0x08,
  F_CD_FETCH: 0x09,
  C_BAD_CD: 0x0a,
  F_WALK_EABT: 0x0b,
  F_TRANSLATION: 0x10,
  F_ADDR_SIZE: 0x11,
  F_ACCESS: 0x12,
  F_PERMISSION: 0x13,
  F_TLB_CONFLICT: 0x20,
  F_CFG_CONFLICT: 0x21,
  E_PAGE_REQUEST: 0x24,
  F_VMS_FETCH: 0x25,
} as const;

export type EventName = keyof typeof EVT_ID;

/** CLASS field (§7.3): what was being accessed when a stage-2 fault happened. */
export const EVT_CLASS = { CD: 0, TT: 1, IN: 2 } as const;

/** Record layout (union of all event types; which fields a type uses is EVENT_FIELDS). */
export const EVTQ_ENTRY = {
  EventID: f(0, 7, 0),
  SSV: f(0, 11),
  SubstreamID: f(0, 31, 12),
  StreamID: f(0, 63, 32),
  /** STAG for stall-capable faults; IMPLEMENTATION DEFINED Reason for fetch aborts / F_UUT. */
  STAG: f(1, 15, 0),
  Stall: f(1, 31),
  PnU: f(1, 33),
  InD: f(1, 34),
  RnW: f(1, 35),
  S2: f(1, 39),
  CLASS: f(1, 41, 40),
  /** HTTU: the failing translation-table access was a read (Linux EVTQ_1_TT_READ). */
  TTRnW: f(1, 44),
  InputAddr: f(2, 63, 0),
  // E_PAGE_REQUEST (§7.3.19): anticipated accesses and span. Positions read
  // from the spec's record figure (bits 115:108 Span, 103..101 pR/pW/pX,
  // 99..97 uR/uW/uX); the figure is garbled in the Markdown rendering — verify.
  Span: f(1, 51, 44),
  pR: f(1, 39),
  pW: f(1, 38),
  pX: f(1, 37),
  uR: f(1, 35),
  uW: f(1, 34),
  uX: f(1, 33),
  /** IPA[55:12] for stage-2 faults. */
  IPA: f(3, 55, 12),
  /** FetchAddr[55:3] for F_STE_FETCH, F_CD_FETCH, F_WALK_EABT, F_VMS_FETCH. */
  FetchAddr: f(3, 55, 3),
} as const satisfies FieldTable;

/** A decoded event record. Fields an event type does not define are absent. */
export interface EventRecord {
  type: EventName;
  StreamID: number;
  SSV?: boolean;
  SubstreamID?: number;
  Stall?: boolean;
  STAG?: number;
  PnU?: boolean;
  InD?: boolean;
  RnW?: boolean;
  S2?: boolean;
  CLASS?: number;
  TTRnW?: boolean;
  InputAddr?: bigint;
  IPA?: bigint;
  FetchAddr?: bigint;
  /** E_PAGE_REQUEST: span in 4 KiB pages and the anticipated accesses. */
  Span?: number;
  pR?: boolean;
  pW?: boolean;
  pX?: boolean;
  uR?: boolean;
  uW?: boolean;
  uX?: boolean;
}

type RecField = Exclude<keyof EventRecord, "type" | "StreamID">;

const TRANSLATION_FIELDS: readonly RecField[] = [
  "SSV",
  "SubstreamID",
  "Stall",
  "STAG",
  "PnU",
  "InD",
  "RnW",
  "S2",
  "CLASS",
  "InputAddr",
  "IPA",
];

/** Which fields each event type defines (§7.3.2–§7.3.25). */
export const EVENT_FIELDS: Readonly<Record<EventName, readonly RecField[]>> = {
  F_UUT: ["SSV", "SubstreamID", "PnU", "InD", "RnW", "InputAddr"],
  C_BAD_STREAMID: ["SSV", "SubstreamID"],
  F_STE_FETCH: ["SSV", "SubstreamID", "FetchAddr"],
  C_BAD_STE: ["SSV", "SubstreamID"],
  F_BAD_ATS_TREQ: ["SSV", "SubstreamID", "PnU", "InD", "RnW", "InputAddr"],
  F_STREAM_DISABLED: [],
  F_TRANSL_FORBIDDEN: ["RnW", "InputAddr"],
  // §7.3.9: SubstreamID is always valid, there is no SSV qualifier.
  C_BAD_SUBSTREAMID: ["SubstreamID"],
  F_CD_FETCH: ["SSV", "SubstreamID", "FetchAddr"],
  C_BAD_CD: ["SSV", "SubstreamID"],
  F_WALK_EABT: ["SSV", "SubstreamID", "PnU", "InD", "RnW", "S2", "CLASS", "InputAddr", "FetchAddr"],
  F_TRANSLATION: TRANSLATION_FIELDS,
  F_ADDR_SIZE: TRANSLATION_FIELDS,
  F_ACCESS: TRANSLATION_FIELDS,
  F_PERMISSION: [...TRANSLATION_FIELDS, "TTRnW"],
  F_TLB_CONFLICT: ["SSV", "SubstreamID", "PnU", "InD", "RnW", "S2", "InputAddr", "IPA"],
  F_CFG_CONFLICT: ["SSV", "SubstreamID"],
  E_PAGE_REQUEST: ["SSV", "SubstreamID", "Span", "pR", "pW", "pX", "uR", "uW", "uX", "InputAddr"],
  F_VMS_FETCH: ["FetchAddr"],
};

/** Encode an event record into its four words (fields the type does not define are left RES0). */
export function encodeEvent(r: EventRecord): bigint[] {
  const defined = new Set(EVENT_FIELDS[r.type]);
  const v: Partial<Record<keyof typeof EVTQ_ENTRY, bigint | number>> = {
    EventID: EVT_ID[r.type],
    StreamID: r.StreamID >>> 0,
  };
  const b = (x: boolean | undefined) => (x ? 1 : 0);
  if (defined.has("SSV")) v.SSV = b(r.SSV);
  if (defined.has("SubstreamID") && (r.SSV || !defined.has("SSV"))) v.SubstreamID = r.SubstreamID ?? 0;
  if (defined.has("Stall")) v.Stall = b(r.Stall);
  if (defined.has("STAG") && r.Stall) v.STAG = r.STAG ?? 0;
  if (defined.has("PnU")) v.PnU = b(r.PnU);
  if (defined.has("InD")) v.InD = b(r.InD);
  if (defined.has("RnW")) v.RnW = b(r.RnW);
  if (defined.has("S2")) v.S2 = b(r.S2);
  if (defined.has("CLASS")) v.CLASS = r.CLASS ?? 0;
  if (defined.has("TTRnW")) v.TTRnW = b(r.TTRnW);
  if (defined.has("Span")) v.Span = r.Span ?? 0;
  for (const k of ["pR", "pW", "pX", "uR", "uW", "uX"] as const) if (defined.has(k)) v[k] = b(r[k]);
  if (defined.has("InputAddr")) v.InputAddr = BigInt.asUintN(64, r.InputAddr ?? 0n);
  if (defined.has("IPA") && r.S2) v.IPA = (r.IPA ?? 0n) >> 12n;
  if (defined.has("FetchAddr")) v.FetchAddr = (r.FetchAddr ?? 0n) >> 3n;
  return pack(EVTQ_ENTRY, EVT_QWORDS, v);
}

/** Decode a raw 32-byte event record (unknown event numbers decode as F_UUT-shaped "0x.." names are rejected). */
export function decodeEvent(w: readonly bigint[]): EventRecord | { type: "UNKNOWN"; EventID: number } {
  const id = getNum(w, EVTQ_ENTRY.EventID);
  const name = nameOf(EVT_ID, id);
  if (!(name in EVT_ID)) return { type: "UNKNOWN", EventID: id };
  const type = name as EventName;
  const rec: EventRecord = { type, StreamID: getNum(w, EVTQ_ENTRY.StreamID) };
  const b = (fld: (typeof EVTQ_ENTRY)[keyof typeof EVTQ_ENTRY]) => get(w, fld) !== 0n;
  for (const fld of EVENT_FIELDS[type]) {
    switch (fld) {
      case "SSV":
      case "pR":
      case "pW":
      case "pX":
      case "uR":
      case "uW":
      case "uX":
      case "Stall":
      case "PnU":
      case "InD":
      case "RnW":
      case "S2":
      case "TTRnW":
        rec[fld] = b(EVTQ_ENTRY[fld]);
        break;
      case "SubstreamID":
      case "Span":
      case "STAG":
      case "CLASS":
        rec[fld] = getNum(w, EVTQ_ENTRY[fld]);
        break;
      case "InputAddr":
        rec.InputAddr = get(w, EVTQ_ENTRY.InputAddr);
        break;
      case "IPA":
        rec.IPA = get(w, EVTQ_ENTRY.IPA) << 12n;
        break;
      case "FetchAddr":
        rec.FetchAddr = get(w, EVTQ_ENTRY.FetchAddr) << 3n;
        break;
    }
  }
  return rec;
}

/**
 * Events Linux forwards to a guest's vEVENTQ (arm_smmu_handle_event with a
 * vmaster): non-stall, stage-1 (S2 = 0) records of these types
 * (reference/iommufd-uapi.md §9.6).
 */
export const VEVENT_FORWARDED: ReadonlySet<EventName> = new Set([
  "C_BAD_STE",
  "F_STREAM_DISABLED",
  "C_BAD_SUBSTREAMID",
  "C_BAD_CD",
  "F_TRANSLATION",
  "F_ADDR_SIZE",
  "F_ACCESS",
  "F_PERMISSION",
]);

/** Whether the host should route a record to the guest's vEVENTQ rather than its own log. */
export function isGuestEvent(r: EventRecord): boolean {
  return VEVENT_FORWARDED.has(r.type) && !r.S2 && !r.Stall;
}
