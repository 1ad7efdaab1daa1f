// PRI queue entries (16 bytes): the page request an SMMU records for a PCIe
// Page Request Message (Arm IHI 0070 §8; reference/hw-formats.md §1.9, §4.2).

import { type FieldTable, f, get, getNum, pack } from "../bits.js";

export const PRI_QWORDS = 2;
export const PRI_BYTES = 16;

export const PRIQ_ENTRY = {
  StreamID: f(0, 31, 0),
  SubstreamID: f(0, 51, 32),
  Priv: f(0, 58),
  Exec: f(0, 59),
  Read: f(0, 60),
  Write: f(0, 61),
  Last: f(0, 62),
  SSV: f(0, 63),
  PRGIndex: f(1, 8, 0),
  /** Page address [63:12]. */
  Addr: f(1, 63, 12),
} as const satisfies FieldTable;

/** One PCIe page request (a PRI queue entry, decoded). */
export interface PriEntry {
  StreamID: number;
  SSV: boolean;
  SubstreamID: number;
  Priv: boolean;
  Exec: boolean;
  Read: boolean;
  Write: boolean;
  /** Last request of the Page Request Group (only the last one gets a response). */
  Last: boolean;
  PRGIndex: number;
  /** Page address (bits [11:0] zero). */
  Addr: bigint;
}

export function encodePriEntry(r: PriEntry): bigint[] {
  const b = (x: boolean) => (x ? 1 : 0);
  return pack(PRIQ_ENTRY, PRI_QWORDS, {
    StreamID: r.StreamID >>> 0,
    SubstreamID: r.SSV ? r.SubstreamID : 0,
    Priv: b(r.Priv),
    Exec: b(r.Exec),
    Read: b(r.Read),
    Write: b(r.Write),
    Last: b(r.Last),
    SSV: b(r.SSV),
    PRGIndex: r.PRGIndex,
    Addr: r.Addr >> 12n,
  });
}

export function decodePriEntry(w: readonly bigint[]): PriEntry {
  const b = (fld: (typeof PRIQ_ENTRY)[keyof typeof PRIQ_ENTRY]) => get(w, fld) !== 0n;
  return {
    StreamID: getNum(w, PRIQ_ENTRY.StreamID),
    SSV: b(PRIQ_ENTRY.SSV),
    SubstreamID: getNum(w, PRIQ_ENTRY.SubstreamID),
    Priv: b(PRIQ_ENTRY.Priv),
    Exec: b(PRIQ_ENTRY.Exec),
    Read: b(PRIQ_ENTRY.Read),
    Write: b(PRIQ_ENTRY.Write),
    Last: b(PRIQ_ENTRY.Last),
    PRGIndex: getNum(w, PRIQ_ENTRY.PRGIndex),
    Addr: get(w, PRIQ_ENTRY.Addr) << 12n,
  };
}

/** A Stop Marker: Last = 1 with R = W = 0 (PASID teardown, no response expected, §4.2). */
export function isPriStopMarker(r: PriEntry): boolean {
  return r.Last && !r.Read && !r.Write;
}
