// The ONE place SMMUv3 turns fault values into event records: walker faults
// (translation.ts TranslationFault) and the model's own configuration faults
// (stream table, STE, CD) both go through `faultToEvent`.
//
// Spec: Arm IHI 0070 §7.3 (record fields), §3.12 (recording), §5.3 of
// reference/hw-formats.md (S2 / CLASS / IPA), ruling 2 (fault order is the
// walker's business; this only encodes).

import type { AccessKind, TranslationFault } from "../translation.js";
import { EVT_CLASS, type EventName, type EventRecord } from "./events.js";

/** Configuration faults found by the model before (or instead of) a walk. */
export type ConfigFaultName =
  | "C_BAD_STREAMID"
  | "F_STE_FETCH"
  | "C_BAD_STE"
  | "F_STREAM_DISABLED"
  | "C_BAD_SUBSTREAMID"
  | "F_CD_FETCH"
  | "C_BAD_CD"
  | "F_TRANSL_FORBIDDEN"
  | "F_BAD_ATS_TREQ"
  | "F_UUT"
  | "F_CFG_CONFLICT";

export interface ConfigFault {
  readonly ok: false;
  readonly config: ConfigFaultName;
  /** F_STE_FETCH / F_CD_FETCH: physical address of the failed fetch. */
  readonly FetchAddr?: bigint;
  /** C_BAD_SUBSTREAMID records the SubstreamID it was fetching (0 for S1DSS=0b10 traffic, §7.3.9). */
  readonly SubstreamID?: number;
  /** Human-readable reason (logs and explain output; not part of the record). */
  readonly reason?: string;
}

/** A fault the SMMU model can raise: a walker fault or a configuration fault. */
export type SmmuFault = TranslationFault | ConfigFault;

export function isConfigFault(f: SmmuFault): f is ConfigFault {
  return "config" in f;
}

/** Attributes of the incoming transaction, after STE.PRIVCFG/INSTCFG overrides. */
export interface TxnAttrs {
  readonly StreamID: number;
  readonly SSV: boolean;
  readonly SubstreamID: number;
  readonly kind: AccessKind;
  readonly privileged: boolean;
  readonly InputAddr: bigint;
}

/** Set when the fault stalls the transaction (CD.S / STE.S2S with the Stall model). */
export interface StallInfo {
  readonly STAG: number;
}

const WALK_EVENT: Readonly<Record<TranslationFault["kind"], EventName | undefined>> = {
  translation: "F_TRANSLATION",
  "input-range": "F_TRANSLATION",
  "non-canonical": "F_TRANSLATION",
  // Arm has no reserved-bit fault: a descriptor the format calls reserved is invalid.
  "reserved-bit": "F_TRANSLATION",
  "address-size": "F_ADDR_SIZE",
  "access-flag": "F_ACCESS",
  permission: "F_PERMISSION",
  "request-blocked": "F_PERMISSION",
  "external-abort": "F_WALK_EABT",
  // STE.Config = 0b000: aborted with no event (§5.2).
  aborted: undefined,
};

/**
 * Build the event record for a fault. Returns undefined for faults that are
 * never recorded (Config = abort). Whether a translation fault is recorded
 * at all (CD.R / STE.S2R) and whether it stalls is the caller's decision.
 */
export function faultToEvent(f: SmmuFault, txn: TxnAttrs, stall?: StallInfo): EventRecord | undefined {
  const RnW = txn.kind !== "write";
  const InD = txn.kind === "exec";
  const PnU = txn.privileged;
  if (isConfigFault(f)) {
    const base = { type: f.config, StreamID: txn.StreamID } as const;
    switch (f.config) {
      case "C_BAD_STREAMID":
      case "C_BAD_STE":
      case "C_BAD_CD":
      case "F_CFG_CONFLICT":
        return { ...base, SSV: txn.SSV, SubstreamID: txn.SubstreamID };
      case "F_STE_FETCH":
      case "F_CD_FETCH":
        return { ...base, SSV: txn.SSV, SubstreamID: txn.SubstreamID, FetchAddr: f.FetchAddr ?? 0n };
      case "F_STREAM_DISABLED":
        return { ...base };
      case "C_BAD_SUBSTREAMID":
        return { ...base, SubstreamID: f.SubstreamID ?? txn.SubstreamID };
      case "F_TRANSL_FORBIDDEN":
        return { ...base, RnW, InputAddr: txn.InputAddr };
      case "F_BAD_ATS_TREQ":
      case "F_UUT":
        return { ...base, SSV: txn.SSV, SubstreamID: txn.SubstreamID, PnU, InD, RnW, InputAddr: txn.InputAddr };
    }
  }
  const type = WALK_EVENT[f.kind];
  if (type === undefined) return undefined;
  const S2 = f.stage === 2;
  const common = {
    StreamID: txn.StreamID,
    SSV: txn.SSV,
    SubstreamID: txn.SubstreamID,
    PnU,
    // §7.3.12/13: InD == 0 when RnW == 0.
    InD: RnW && InD,
    RnW,
    S2,
    CLASS: EVT_CLASS[f.cls],
    InputAddr: txn.InputAddr,
  };
  if (type === "F_WALK_EABT") return { type, ...common, FetchAddr: f.descAddr ?? 0n };
  const rec: EventRecord = {
    type,
    ...common,
    Stall: stall !== undefined,
    STAG: stall?.STAG ?? 0,
    ...(S2 ? { IPA: f.ipa ?? 0n } : {}),
  };
  // HTTU: a stage-2 permission fault on a stage-1 descriptor access says whether it was a read.
  if (type === "F_PERMISSION") rec.TTRnW = S2 && f.cls !== "IN" && f.access !== "write";
  return rec;
}
