// SMMUv3 command queue entries (16 bytes): opcodes, field tables, decode,
// encode, the legality check the command queue applies (CERROR_ILL), and the
// pure classification/rewrite iommufd applies to a vIOMMU invalidation
// (IOMMU_VIOMMU_INVALIDATE_DATA_ARM_SMMUV3, Linux arm_vsmmu_convert_user_cmd).
//
// Spec: Arm IHI 0070 §4 (commands); reference/hw-formats.md §1.7, §1.10;
// reference/iommufd-uapi.md §9.4.

import { type FieldTable, f, get, getNum, nameOf, pack, set } from "../bits.js";
import type { SmmuFeatures } from "./regs.js";

export const CMD_QWORDS = 2;
export const CMD_BYTES = 16;

/** Command opcodes (§4.1, qw0[7:0]). */
export const CMD_OP = {
  PREFETCH_CONFIG: 0x01,
  PREFETCH_ADDR: 0x02,
  CFGI_STE: 0x03,
  CFGI_STE_RANGE: 0x04,
  CFGI_CD: 0x05,
  CFGI_CD_ALL: 0x06,
  TLBI_NH_ALL: 0x10,
  TLBI_NH_ASID: 0x11,
  TLBI_NH_VA: 0x12,
  TLBI_NH_VAA: 0x13,
  TLBI_EL3_ALL: 0x18,
  TLBI_EL3_VA: 0x1a,
  TLBI_EL2_ALL: 0x20,
  TLBI_EL2_ASID: 0x21,
  TLBI_EL2_VA: 0x22,
  TLBI_EL2_VAA: 0x23,
  TLBI_S12_VMALL: 0x28,
  TLBI_S2_IPA: 0x2a,
  TLBI_NSNH_ALL: 0x30,
  ATC_INV: 0x40,
  PRI_RESP: 0x41,
  RESUME: 0x44,
  STALL_TERM: 0x45,
  SYNC: 0x46,
} as const;

export type CmdName = keyof typeof CMD_OP;

/** CMD_CFGI_STE_RANGE with Range = 31 is CMD_CFGI_ALL (§4.3.3). */
export const CFGI_RANGE_ALL = 31;

/** Fields common to all commands that carry them. */
export const CMD_COMMON = {
  OP: f(0, 7, 0),
  SSV: f(0, 11),
  SubstreamID: f(0, 31, 12),
  StreamID: f(0, 63, 32),
} as const satisfies FieldTable;

export const CMD_PREFETCH = {
  ...CMD_COMMON,
  Size: f(1, 4, 0),
  Addr: f(1, 63, 12),
} as const satisfies FieldTable;

export const CMD_CFGI = {
  ...CMD_COMMON,
  Leaf: f(1, 0),
  Range: f(1, 4, 0),
} as const satisfies FieldTable;

export const CMD_TLBI = {
  OP: f(0, 7, 0),
  NUM: f(0, 16, 12),
  SCALE: f(0, 24, 20),
  VMID: f(0, 47, 32),
  ASID: f(0, 63, 48),
  Leaf: f(1, 0),
  TTL: f(1, 9, 8),
  TG: f(1, 11, 10),
  /** VA[63:12]; TLBI_S2_IPA uses IPA[51:12] of the same position. */
  Addr: f(1, 63, 12),
} as const satisfies FieldTable;

export const CMD_ATC_INV = {
  ...CMD_COMMON,
  Global: f(0, 9),
  Size: f(1, 5, 0),
  Addr: f(1, 63, 12),
} as const satisfies FieldTable;

export const CMD_PRI_RESP = {
  ...CMD_COMMON,
  PRGIndex: f(1, 8, 0),
  Resp: f(1, 13, 12),
} as const satisfies FieldTable;

export const CMD_RESUME = {
  OP: f(0, 7, 0),
  Action: f(0, 13, 12),
  StreamID: f(0, 63, 32),
  STAG: f(1, 15, 0),
} as const satisfies FieldTable;

export const CMD_SYNC = {
  OP: f(0, 7, 0),
  CS: f(0, 13, 12),
  MSH: f(0, 23, 22),
  MSIAttr: f(0, 27, 24),
  MSIData: f(0, 63, 32),
  MSIAddr: f(1, 51, 2),
} as const satisfies FieldTable;

/** CMD_PRI_RESP.Resp (§4.7.1). */
export const PRI_RESP = { DENY: 0, FAIL: 1, SUCCESS: 2 } as const;
/** CMD_RESUME.Action: Linux names (TERM = terminate, RETRY, ABORT). */
export const RESUME_ACTION = { TERM: 0, RETRY: 1, ABORT: 2 } as const;
/** CMD_SYNC.CS. */
export const SYNC_CS = { NONE: 0, IRQ: 1, SEV: 2 } as const;
/** CMD_ATC_INV.Size meaning "everything" (Linux ATC_INV_SIZE_ALL). */
export const ATC_INV_SIZE_ALL = 52;

// ---------------------------------------------------------------------------
// Decoded commands

export type TlbiName =
  | "TLBI_NH_ALL"
  | "TLBI_NH_ASID"
  | "TLBI_NH_VA"
  | "TLBI_NH_VAA"
  | "TLBI_EL2_ALL"
  | "TLBI_EL2_ASID"
  | "TLBI_EL2_VA"
  | "TLBI_EL2_VAA"
  | "TLBI_S12_VMALL"
  | "TLBI_S2_IPA"
  | "TLBI_NSNH_ALL";

export type Command =
  | { name: "PREFETCH_CONFIG"; StreamID: number; SSV: boolean; SubstreamID: number }
  | { name: "PREFETCH_ADDR"; StreamID: number; SSV: boolean; SubstreamID: number; Addr: bigint; Size: number }
  | { name: "CFGI_STE"; StreamID: number; Leaf: boolean }
  | { name: "CFGI_STE_RANGE"; StreamID: number; Range: number }
  | { name: "CFGI_CD"; StreamID: number; SSV: boolean; SubstreamID: number; Leaf: boolean }
  | { name: "CFGI_CD_ALL"; StreamID: number }
  | {
      name: TlbiName;
      VMID: number;
      ASID: number;
      /** VA or IPA, bits [63:12] in place. */
      Addr: bigint;
      Leaf: boolean;
      TG: number;
      TTL: number;
      NUM: number;
      SCALE: number;
    }
  | { name: "ATC_INV"; StreamID: number; SSV: boolean; SubstreamID: number; Global: boolean; Addr: bigint; Size: number }
  | { name: "PRI_RESP"; StreamID: number; SSV: boolean; SubstreamID: number; PRGIndex: number; Resp: number }
  | { name: "RESUME"; StreamID: number; STAG: number; Action: number }
  | { name: "STALL_TERM"; StreamID: number }
  | { name: "SYNC"; CS: number; MSH: number; MSIAttr: number; MSIData: number; MSIAddr: bigint };

/** Decode result: the command, or why the command is illegal (CERROR_ILL). */
export type CommandCheck = { ok: true; cmd: Command } | { ok: false; opcode: number; reason: string };

const TLBI_OPS: ReadonlySet<number> = new Set([
  CMD_OP.TLBI_NH_ALL,
  CMD_OP.TLBI_NH_ASID,
  CMD_OP.TLBI_NH_VA,
  CMD_OP.TLBI_NH_VAA,
  CMD_OP.TLBI_EL2_ALL,
  CMD_OP.TLBI_EL2_ASID,
  CMD_OP.TLBI_EL2_VA,
  CMD_OP.TLBI_EL2_VAA,
  CMD_OP.TLBI_S12_VMALL,
  CMD_OP.TLBI_S2_IPA,
  CMD_OP.TLBI_NSNH_ALL,
]);

/** Opcode of a raw command. */
export function commandOpcode(w: readonly bigint[]): number {
  return getNum(w, CMD_COMMON.OP);
}

/** Name of an opcode for logs and counters ("0x7f" when unknown). */
export function commandName(opcode: number): string {
  return nameOf(CMD_OP, opcode);
}

// Module-level, not closures: the services run under tsx, whose esbuild
// keepNames would give a per-call closure a defineProperty on every command.
const ok = (cmd: Command): CommandCheck => ({ ok: true, cmd });
const bad = (opcode: number, reason: string): CommandCheck => ({ ok: false, opcode, reason });
const bit = (x: boolean) => (x ? 1 : 0);

/**
 * Decode and check a raw 128-bit command against the features an SMMU
 * advertises. Commands for features not implemented, reserved encodings and
 * unknown opcodes are illegal (§4.1.3: CERROR_ILL). Without `feat` the check
 * assumes every feature is present (pure format decode).
 */
export function decodeCommand(w: readonly bigint[], feat?: Readonly<SmmuFeatures>): CommandCheck {
  const opcode = commandOpcode(w);
  const sid = getNum(w, CMD_COMMON.StreamID);
  const ssv = get(w, CMD_COMMON.SSV) !== 0n;
  const ssid = getNum(w, CMD_COMMON.SubstreamID);
  const s1 = feat?.stage1 ?? true;
  const s2 = feat?.stage2 ?? true;
  const hyp = s1 && s2;
  const ats = feat?.ats ?? true;
  const pri = ats && (feat?.pri ?? true);
  const ssidBits = feat?.ssidBits ?? 20;

  if (ssidBits < 20 && ssid >> ssidBits !== 0) {
    // SubstreamID bits above SSIDSIZE are RES0 in commands that carry one (CFGI_CD always does).
    if (opcode === CMD_OP.CFGI_CD || (ssv && (opcode === CMD_OP.ATC_INV || opcode === CMD_OP.PRI_RESP))) {
      return bad(opcode, "SubstreamID beyond IDR1.SSIDSIZE");
    }
  }

  switch (opcode) {
    case CMD_OP.PREFETCH_CONFIG:
      return ok({ name: "PREFETCH_CONFIG", StreamID: sid, SSV: ssv, SubstreamID: ssid });
    case CMD_OP.PREFETCH_ADDR:
      return ok({
        name: "PREFETCH_ADDR",
        StreamID: sid,
        SSV: ssv,
        SubstreamID: ssid,
        Addr: get(w, CMD_PREFETCH.Addr) << 12n,
        Size: getNum(w, CMD_PREFETCH.Size),
      });
    case CMD_OP.CFGI_STE:
      return ok({ name: "CFGI_STE", StreamID: sid, Leaf: get(w, CMD_CFGI.Leaf) !== 0n });
    case CMD_OP.CFGI_STE_RANGE:
      return ok({ name: "CFGI_STE_RANGE", StreamID: sid, Range: getNum(w, CMD_CFGI.Range) });
    case CMD_OP.CFGI_CD:
      if (!s1) return bad(opcode, "CFGI_CD without stage 1");
      return ok({ name: "CFGI_CD", StreamID: sid, SSV: ssv, SubstreamID: ssid, Leaf: get(w, CMD_CFGI.Leaf) !== 0n });
    case CMD_OP.CFGI_CD_ALL:
      if (!s1) return bad(opcode, "CFGI_CD_ALL without stage 1");
      return ok({ name: "CFGI_CD_ALL", StreamID: sid });
    case CMD_OP.TLBI_EL3_ALL:
    case CMD_OP.TLBI_EL3_VA:
      return bad(opcode, "EL3 TLB invalidation on the Non-secure command queue");
    case CMD_OP.ATC_INV: {
      if (!ats) return bad(opcode, "ATC_INV without ATS");
      const Size = getNum(w, CMD_ATC_INV.Size);
      if (Size > ATC_INV_SIZE_ALL) return bad(opcode, "ATC_INV Size above 52");
      return ok({
        name: "ATC_INV",
        StreamID: sid,
        SSV: ssv,
        SubstreamID: ssid,
        Global: get(w, CMD_ATC_INV.Global) !== 0n,
        Addr: get(w, CMD_ATC_INV.Addr) << 12n,
        Size,
      });
    }
    case CMD_OP.PRI_RESP: {
      if (!pri) return bad(opcode, "PRI_RESP without PRI");
      const Resp = getNum(w, CMD_PRI_RESP.Resp);
      if (Resp === 3) return bad(opcode, "PRI_RESP Resp reserved");
      return ok({
        name: "PRI_RESP",
        StreamID: sid,
        SSV: ssv,
        SubstreamID: ssid,
        PRGIndex: getNum(w, CMD_PRI_RESP.PRGIndex),
        Resp,
      });
    }
    case CMD_OP.RESUME: {
      if (feat?.stallModel === 1) return bad(opcode, "RESUME when stalls are not supported");
      const Action = getNum(w, CMD_RESUME.Action);
      if (Action === 3) return bad(opcode, "RESUME Action reserved");
      return ok({ name: "RESUME", StreamID: sid, STAG: getNum(w, CMD_RESUME.STAG), Action });
    }
    case CMD_OP.STALL_TERM:
      if (feat?.stallModel === 1) return bad(opcode, "STALL_TERM when stalls are not supported");
      return ok({ name: "STALL_TERM", StreamID: sid });
    case CMD_OP.SYNC: {
      const CS = getNum(w, CMD_SYNC.CS);
      if (CS === 3) return bad(opcode, "SYNC CS reserved");
      return ok({
        name: "SYNC",
        CS,
        MSH: getNum(w, CMD_SYNC.MSH),
        MSIAttr: getNum(w, CMD_SYNC.MSIAttr),
        MSIData: getNum(w, CMD_SYNC.MSIData),
        MSIAddr: get(w, CMD_SYNC.MSIAddr) << 2n,
      });
    }
    default:
      break;
  }

  if (TLBI_OPS.has(opcode)) {
    const name = nameOf(CMD_OP, opcode) as TlbiName;
    if (name.startsWith("TLBI_EL2") && !hyp) return bad(opcode, `${name} without Hyp`);
    if ((name === "TLBI_S12_VMALL" || name === "TLBI_S2_IPA") && !s2) return bad(opcode, `${name} without stage 2`);
    if (name.startsWith("TLBI_NH") && !s1) return bad(opcode, `${name} without stage 1`);
    const TG = getNum(w, CMD_TLBI.TG);
    const ril = feat?.rangeInvalidation ?? true;
    const ranged = name.endsWith("_VA") || name.endsWith("_VAA") || name === "TLBI_S2_IPA";
    if (ranged && TG !== 0 && !ril) return bad(opcode, `${name} range without IDR3.RIL`);
    let VMID = getNum(w, CMD_TLBI.VMID);
    let ASID = getNum(w, CMD_TLBI.ASID);
    // 8-bit VMID/ASID implementations: bits [15:8] are RES0 (IDR0.VMID16/ASID16).
    if (feat && !feat.vmid16) VMID &= 0xff;
    if (feat && !feat.asid16) ASID &= 0xff;
    let Addr = get(w, CMD_TLBI.Addr) << 12n;
    if (name === "TLBI_S2_IPA") Addr &= (1n << 52n) - 1n;
    return ok({
      name,
      VMID,
      ASID,
      Addr,
      Leaf: get(w, CMD_TLBI.Leaf) !== 0n,
      TG,
      TTL: getNum(w, CMD_TLBI.TTL),
      NUM: getNum(w, CMD_TLBI.NUM),
      SCALE: getNum(w, CMD_TLBI.SCALE),
    });
  }
  return bad(opcode, `unknown opcode 0x${opcode.toString(16)}`);
}

/** Encode a command into its two words. */
export function encodeCommand(cmd: Command): [bigint, bigint] {
  let w: bigint[];
  switch (cmd.name) {
    case "PREFETCH_CONFIG":
      w = pack(CMD_PREFETCH, 2, {
        OP: CMD_OP.PREFETCH_CONFIG,
        StreamID: cmd.StreamID,
        SSV: bit(cmd.SSV),
        SubstreamID: cmd.SubstreamID,
      });
      break;
    case "PREFETCH_ADDR":
      w = pack(CMD_PREFETCH, 2, {
        OP: CMD_OP.PREFETCH_ADDR,
        StreamID: cmd.StreamID,
        SSV: bit(cmd.SSV),
        SubstreamID: cmd.SubstreamID,
        Size: cmd.Size,
        Addr: cmd.Addr >> 12n,
      });
      break;
    case "CFGI_STE":
      w = pack(CMD_CFGI, 2, { OP: CMD_OP.CFGI_STE, StreamID: cmd.StreamID, Leaf: bit(cmd.Leaf) });
      break;
    case "CFGI_STE_RANGE":
      w = pack(CMD_CFGI, 2, { OP: CMD_OP.CFGI_STE_RANGE, StreamID: cmd.StreamID, Range: cmd.Range });
      break;
    case "CFGI_CD":
      w = pack(CMD_CFGI, 2, {
        OP: CMD_OP.CFGI_CD,
        StreamID: cmd.StreamID,
        SSV: bit(cmd.SSV),
        SubstreamID: cmd.SubstreamID,
        Leaf: bit(cmd.Leaf),
      });
      break;
    case "CFGI_CD_ALL":
      w = pack(CMD_CFGI, 2, { OP: CMD_OP.CFGI_CD_ALL, StreamID: cmd.StreamID });
      break;
    case "ATC_INV":
      w = pack(CMD_ATC_INV, 2, {
        OP: CMD_OP.ATC_INV,
        StreamID: cmd.StreamID,
        SSV: bit(cmd.SSV),
        SubstreamID: cmd.SubstreamID,
        Global: bit(cmd.Global),
        Size: cmd.Size,
        Addr: cmd.Addr >> 12n,
      });
      break;
    case "PRI_RESP":
      w = pack(CMD_PRI_RESP, 2, {
        OP: CMD_OP.PRI_RESP,
        StreamID: cmd.StreamID,
        SSV: bit(cmd.SSV),
        SubstreamID: cmd.SubstreamID,
        PRGIndex: cmd.PRGIndex,
        Resp: cmd.Resp,
      });
      break;
    case "RESUME":
      w = pack(CMD_RESUME, 2, { OP: CMD_OP.RESUME, StreamID: cmd.StreamID, STAG: cmd.STAG, Action: cmd.Action });
      break;
    case "STALL_TERM":
      w = pack(CMD_COMMON, 2, { OP: CMD_OP.STALL_TERM, StreamID: cmd.StreamID });
      break;
    case "SYNC":
      w = pack(CMD_SYNC, 2, {
        OP: CMD_OP.SYNC,
        CS: cmd.CS,
        MSH: cmd.MSH,
        MSIAttr: cmd.MSIAttr,
        MSIData: cmd.MSIData,
        MSIAddr: cmd.MSIAddr >> 2n,
      });
      break;
    default:
      w = pack(CMD_TLBI, 2, {
        OP: CMD_OP[cmd.name],
        VMID: cmd.VMID,
        ASID: cmd.ASID,
        NUM: cmd.NUM,
        SCALE: cmd.SCALE,
        Leaf: bit(cmd.Leaf),
        TTL: cmd.TTL,
        TG: cmd.TG,
        Addr: cmd.Addr >> 12n,
      });
  }
  return [w[0] as bigint, w[1] as bigint];
}

/** Convenience constructors for the commands drivers issue most. */
export const cmd = {
  cfgiSte: (StreamID: number, Leaf = true): Command => ({ name: "CFGI_STE", StreamID, Leaf }),
  cfgiAll: (): Command => ({ name: "CFGI_STE_RANGE", StreamID: 0, Range: CFGI_RANGE_ALL }),
  cfgiCd: (StreamID: number, SubstreamID: number, Leaf = true): Command => ({
    name: "CFGI_CD",
    StreamID,
    SSV: true,
    SubstreamID,
    Leaf,
  }),
  cfgiCdAll: (StreamID: number): Command => ({ name: "CFGI_CD_ALL", StreamID }),
  tlbi: (
    name: TlbiName,
    p: Partial<{ VMID: number; ASID: number; Addr: bigint; Leaf: boolean; TG: number; TTL: number; NUM: number; SCALE: number }> = {},
  ): Command => ({
    name,
    VMID: p.VMID ?? 0,
    ASID: p.ASID ?? 0,
    Addr: p.Addr ?? 0n,
    Leaf: p.Leaf ?? false,
    TG: p.TG ?? 0,
    TTL: p.TTL ?? 0,
    NUM: p.NUM ?? 0,
    SCALE: p.SCALE ?? 0,
  }),
  atcInv: (StreamID: number, Addr: bigint, Size: number, SubstreamID?: number): Command => ({
    name: "ATC_INV",
    StreamID,
    SSV: SubstreamID !== undefined,
    SubstreamID: SubstreamID ?? 0,
    Global: false,
    Addr,
    Size,
  }),
  priResp: (StreamID: number, PRGIndex: number, Resp: number, SubstreamID?: number): Command => ({
    name: "PRI_RESP",
    StreamID,
    SSV: SubstreamID !== undefined,
    SubstreamID: SubstreamID ?? 0,
    PRGIndex,
    Resp,
  }),
  resume: (StreamID: number, STAG: number, Action: number): Command => ({ name: "RESUME", StreamID, STAG, Action }),
  sync: (CS: number = SYNC_CS.NONE): Command => ({ name: "SYNC", CS, MSH: 0, MSIAttr: 0, MSIData: 0, MSIAddr: 0n }),
};

// ---------------------------------------------------------------------------
// ATC_INV range arithmetic (§4.7.1). TLBI ranges: cache/ranges.ts armTlbiRange.

/** An address range a TLBI or ATC_INV covers: [start, start + size). */
export interface AddrRange {
  start: bigint;
  size: bigint;
}

/** The address range an ATC_INV covers: 2^Size 4 KiB pages, Addr aligned to the span; Size 52 = all. */
export function atcInvRange(c: { Addr: bigint; Size: number }): AddrRange {
  if (c.Size >= ATC_INV_SIZE_ALL) return { start: 0n, size: 1n << 64n };
  const span = BigInt(c.Size + 12);
  return { start: c.Addr & ~((1n << span) - 1n), size: 1n << span };
}

// ---------------------------------------------------------------------------
// iommufd vIOMMU invalidation (reference/iommufd-uapi.md §9.4)

/** The opcodes IOMMU_HWPT_INVALIDATE on an ARM SMMUv3 vIOMMU accepts. */
export const VIOMMU_ACCEPTED_OPS: readonly CmdName[] = [
  "TLBI_NSNH_ALL",
  "TLBI_NH_VA",
  "TLBI_NH_VAA",
  "TLBI_NH_ALL",
  "TLBI_NH_ASID",
  "ATC_INV",
  "CFGI_CD",
  "CFGI_CD_ALL",
];

export type ViommuCommandClass =
  | { ok: true; name: CmdName; kind: "tlbi"; needs: "vmid" }
  | { ok: true; name: CmdName; kind: "sid"; needs: "sid"; vsid: number }
  | { ok: false; errno: "EIO"; opcode: number };

/**
 * Validate and classify a raw 128-bit command from a guest (kernel
 * arm_vsmmu_convert_user_cmd): TLBI_NH_* and TLBI_NSNH_ALL need the vSMMU's
 * VMID; ATC_INV, CFGI_CD and CFGI_CD_ALL need their virtual StreamID
 * translated; anything else is EIO.
 */
export function classifyViommuCommand(w: readonly bigint[]): ViommuCommandClass {
  const opcode = commandOpcode(w);
  switch (opcode) {
    case CMD_OP.TLBI_NSNH_ALL:
    case CMD_OP.TLBI_NH_VA:
    case CMD_OP.TLBI_NH_VAA:
    case CMD_OP.TLBI_NH_ALL:
    case CMD_OP.TLBI_NH_ASID:
      return { ok: true, name: nameOf(CMD_OP, opcode) as CmdName, kind: "tlbi", needs: "vmid" };
    case CMD_OP.ATC_INV:
    case CMD_OP.CFGI_CD:
    case CMD_OP.CFGI_CD_ALL:
      return {
        ok: true,
        name: nameOf(CMD_OP, opcode) as CmdName,
        kind: "sid",
        needs: "sid",
        vsid: getNum(w, CMD_COMMON.StreamID),
      };
    default:
      return { ok: false, errno: "EIO", opcode };
  }
}

/**
 * Rewrite an accepted guest command for the physical command queue, as the
 * kernel does: TLBI_NSNH_ALL → TLBI_NH_ALL(VMID) with qw1 = 0; TLBI_NH_* get
 * the vSMMU VMID; ATC_INV / CFGI_CD / CFGI_CD_ALL get the physical StreamID
 * (`vsidToSid` returning undefined → EIO).
 */
export function rewriteViommuCommand(
  w: readonly bigint[],
  ctx: { vmid: number; vsidToSid: (vsid: number) => number | undefined },
): { ok: true; words: [bigint, bigint] } | { ok: false; errno: "EIO" } {
  const c = classifyViommuCommand(w);
  if (!c.ok) return { ok: false, errno: "EIO" };
  const out = [w[0] ?? 0n, w[1] ?? 0n];
  if (c.name === "TLBI_NSNH_ALL") {
    const r = pack(CMD_TLBI, 2, { OP: CMD_OP.TLBI_NH_ALL, VMID: ctx.vmid & 0xffff });
    return { ok: true, words: [r[0] as bigint, 0n] };
  }
  if (c.kind === "tlbi") {
    set(out, CMD_TLBI.VMID, ctx.vmid & 0xffff);
    return { ok: true, words: [out[0] as bigint, out[1] as bigint] };
  }
  const sid = ctx.vsidToSid(c.vsid);
  if (sid === undefined) return { ok: false, errno: "EIO" };
  set(out, CMD_COMMON.StreamID, sid >>> 0);
  return { ok: true, words: [out[0] as bigint, out[1] as bigint] };
}
