// Primary fault logging (spec §7.2.1, §11.4.14): NFR+1 fault recording
// registers of 128 bits at CAP.FRO*16, FSTS.PPF/PFO/FRI, and the fault
// event (FECTL.IM/IP) raised through a hook. Record layout checked against
// Intel datasheets reproducing the spec (FRCD high qword: F, T, AT, PV, FR,
// PP, EXE, PRIV, SID); T2 (bit 92) is from VT-d 3.x and Linux.

import { abs, type FieldTable, get, getNum, pack } from "../bits.js";
import type { VtdFaultReason } from "./fault-reasons.js";

export const FRCD_FIELDS = {
  FI: abs(63, 12),
  SID: abs(79, 64),
  T2: abs(92, 92),
  PRIV: abs(93, 93),
  EXE: abs(94, 94),
  PP: abs(95, 95),
  FR: abs(103, 96),
  PV: abs(123, 104),
  AT: abs(125, 124),
  T1: abs(126, 126),
  F: abs(127, 127),
} as const satisfies FieldTable;

/**
 * Request type as recorded (T2:T1): 00 write, 01 read, 10 page request, 11
 * AtomicOp (spec 3.x); T1 alone keeps its legacy meaning (0 write, 1 read).
 */
export const FAULT_REQ_TYPE = { WRITE: 0b00, READ: 0b01, PAGE_REQUEST: 0b10, ATOMIC: 0b11 } as const;

/** PCIe TLP address type (AT). */
export const PCIE_AT = { UNTRANSLATED: 0b00, TRANSLATION_REQUEST: 0b01, TRANSLATED: 0b10 } as const;

/** One recorded (or suppressed) fault, as a value. */
export interface VtdFaultRecord {
  reason: VtdFaultReason;
  sid: number;
  /** Faulting page address (FI, 4 KiB aligned). */
  addr: bigint;
  pasid?: number;
  priv: boolean;
  exe: boolean;
  /** FAULT_REQ_TYPE. */
  type: number;
  at: number;
}

export function encodeFaultRecord(r: VtdFaultRecord): bigint[] {
  return pack(FRCD_FIELDS, 2, {
    FI: r.addr >> 12n,
    SID: r.sid,
    T2: (r.type >> 1) & 1,
    PRIV: r.priv ? 1 : 0,
    EXE: r.exe ? 1 : 0,
    PP: r.pasid === undefined ? 0 : 1,
    FR: r.reason,
    PV: r.pasid ?? 0,
    AT: r.at,
    T1: r.type & 1,
    F: 1,
  });
}

export function decodeFaultRecord(words: readonly bigint[]): VtdFaultRecord & { f: boolean } {
  const out: VtdFaultRecord & { f: boolean } = {
    reason: getNum(words, FRCD_FIELDS.FR) as VtdFaultReason,
    sid: getNum(words, FRCD_FIELDS.SID),
    addr: get(words, FRCD_FIELDS.FI) << 12n,
    priv: get(words, FRCD_FIELDS.PRIV) === 1n,
    exe: get(words, FRCD_FIELDS.EXE) === 1n,
    type: (getNum(words, FRCD_FIELDS.T2) << 1) | getNum(words, FRCD_FIELDS.T1),
    at: getNum(words, FRCD_FIELDS.AT),
    f: get(words, FRCD_FIELDS.F) === 1n,
  };
  if (get(words, FRCD_FIELDS.PP) === 1n) out.pasid = getNum(words, FRCD_FIELDS.PV);
  return out;
}

/** Outcome of offering a fault to the recorder. */
export type RecordOutcome = "recorded" | "overflow" | "suppressed";

/**
 * The fault recording registers. Hardware writes the next record at the
 * index after the last one it used (wrapping); if that register still has
 * F = 1 it sets FSTS.PFO and drops the fault (spec §7.2.1). PPF is the OR of
 * all F bits; FRI is latched when PPF goes 0 → 1.
 */
export class FaultRecorder {
  readonly records: bigint[][];
  private next = 0;
  pfo = false;
  fri = 0;

  constructor(readonly count: number) {
    this.records = Array.from({ length: count }, () => [0n, 0n]);
  }

  get ppf(): boolean {
    return this.records.some((r) => get(r, FRCD_FIELDS.F) === 1n);
  }

  record(r: VtdFaultRecord): RecordOutcome {
    if (this.pfo) return "overflow";
    const idx = this.next;
    const slot = this.records[idx] as bigint[];
    if (get(slot, FRCD_FIELDS.F) === 1n) {
      this.pfo = true;
      return "overflow";
    }
    const wasPending = this.ppf;
    this.records[idx] = encodeFaultRecord(r);
    if (!wasPending) this.fri = idx;
    this.next = (idx + 1) % this.count;
    return "recorded";
  }

  /** Software wrote `value` to the high qword of record `idx` (F is RW1C). */
  writeHigh(idx: number, value: bigint): void {
    const slot = this.records[idx];
    if (!slot) return;
    if ((value >> 63n) & 1n) slot[1] = (slot[1] as bigint) & ~(1n << 63n);
  }

  read(idx: number, qw: 0 | 1): bigint {
    return this.records[idx]?.[qw] ?? 0n;
  }
}
