// The VT-d remapping unit (scalable mode): MMIO registers, DMA translation,
// ATS translation requests, the invalidation queue, primary fault logging,
// the page request queue. Translation goes through the common walker and
// caches (common.ts binds them); this file owns only VT-d state.
//
// Asynchrony without timers: device-TLB invalidations are forwarded through
// `ports.atcInvalidate` with a tag; an invalidation wait descriptor issued
// after them stays pending (and, with FN = 1, blocks the queue) until the
// host calls `atcInvalidationDone(tag)` for each, or `atcInvalidationTimeout`
// (→ FSTS.ITE).

import { get, getNum, wordsToBytes } from "../bits.js";
import { atsRangeDecode, atsRangeEncode, vtdAmRange } from "../cache/ranges.js";
import type { PhysicalMemory } from "../memory.js";
import type { AccessRequest, PermSet, TranslationConfig, TranslationOk, WalkStep } from "../translation.js";
import { Perm, permits } from "../translation.js";
import { commonWalker, VtdCacheSet, type VtdCaches, type VtdWalker } from "./common.js";
import { pasidTranslationConfig, type VtdStageCaps } from "./config.js";
import {
  decodeSmPasidEntry,
  PGTT,
  pasidEntryRequestCheck,
  type SmContextEntry,
  type SmPasidEntry,
  type VtdEntryLimits,
} from "./entries.js";
import { type FaultContext, vtdReasonForWalkFault } from "./fault-map.js";
import { VTD_FR, VTD_INTERRUPT_RANGE, type VtdFaultReason, vtdFaultReasonName } from "./fault-reasons.js";
import { FAULT_REQ_TYPE, FaultRecorder, PCIE_AT, type RecordOutcome, type VtdFaultRecord } from "./fault-record.js";
import {
  CC_GRAN,
  decodeInvDesc,
  type InvDesc,
  IOTLB_GRAN,
  PC_GRAN,
  PIOTLB_GRAN,
  PRG_RESPONSE_CODE,
} from "./invdesc.js";
import { fetchContextEntry, fetchPasidEntry, type StructureRead } from "./lookup.js";
import { encodePageRequest, isStopMarker, PAGE_REQ_DESC_BYTES, type PageGroupResponse, type PageRequest } from "./prq.js";
import {
  CAP_FIELDS,
  capRegister,
  DEFAULT_VTD_CAPABILITIES,
  ECAP_FIELDS,
  EVCTL_FIELDS,
  ecapRegister,
  FSTS_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  hwInfoVtd,
  type IommuHwInfoVtd,
  IQA_FIELDS,
  RTADDR_FIELDS,
  supportedAw,
  VTD_IQEI,
  VTD_REG,
  VTD_REG_WIDTH,
  VTD_TTM,
  type VtdCapabilities,
  type VtdRegName,
} from "./regs.js";

/** A device-TLB invalidation forwarded to the device (PCIe Invalidate Request). */
export interface AtcInvalidationRequest {
  /** Completion tag (the host passes it back to atcInvalidationDone). */
  readonly tag: number;
  readonly sid: number;
  readonly pfsid: number;
  /** PASID-based device-TLB invalidation; undefined for the RID-only form. */
  readonly pasid?: number;
  /** PASID-based with G = 1: all PASIDs' global entries. */
  readonly global: boolean;
  /** Raw ADDR/S as in the descriptor (PCIe encoding) and the decoded range. */
  readonly addr: bigint;
  readonly s: boolean;
  readonly base: bigint;
  readonly size: bigint;
}

/** Wiring to the outside world: the host connects these to the bus and interrupt controller. */
export interface VtdPorts {
  /** Forward a device-TLB invalidation; acknowledge later with atcInvalidationDone(tag). */
  atcInvalidate?(req: AtcInvalidationRequest): void;
  /** Deliver a page group response to the device (software's or the unit's own). */
  pageResponse?(resp: PageGroupResponse): void;
  /** Fault event interrupt (FECTL/FEDATA/FEADDR), delivered when not masked. */
  faultEvent?(msg: { data: number; addr: bigint }): void;
  /** Invalidation completion event (IECTL). */
  invalidationEvent?(msg: { data: number; addr: bigint }): void;
  /** Page request event (PECTL). */
  pageRequestEvent?(msg: { data: number; addr: bigint }): void;
}

/** A DMA access as issued by a device. */
export interface VtdAccess {
  readonly kind: "read" | "write" | "exec";
  /** Privileged-mode request (PASID prefix PMR); ignored without a PASID. */
  readonly priv?: boolean;
}

export interface VtdTranslateOk {
  readonly ok: true;
  readonly output: bigint;
  readonly perms: PermSet;
  readonly pageShift: number;
  readonly did?: number;
  readonly pasid?: number;
  readonly pgtt?: number;
  /** "bypass" when translation is disabled (GSTS.TES = 0) or the request was already translated. */
  readonly via: "iotlb" | "walk" | "bypass";
  readonly walk?: TranslationOk;
}
export interface VtdTranslateFault {
  readonly ok: false;
  readonly reason: VtdFaultReason;
  readonly reasonName: string;
  readonly record: VtdFaultRecord;
  /** What the fault recorder did (suppressed = FPD). */
  readonly recorded: RecordOutcome;
}
export type VtdTranslateResult = VtdTranslateOk | VtdTranslateFault;

/** A PCIe ATS Translation Completion (one entry). */
export interface AtsCompletion {
  /** "SC" success, "UR" unsupported request (configuration errors). */
  readonly status: "SC" | "UR";
  readonly translatedAddr: bigint;
  /** S bit and the size it encodes together with translatedAddr's low bits. */
  readonly s: boolean;
  readonly size: bigint;
  readonly r: boolean;
  readonly w: boolean;
  readonly exe: boolean;
  readonly priv: boolean;
  readonly global: boolean;
  /** Non-snooped (PGSNP = 0 and the SS SNP bit clear) — always false here (coherent DMA). */
  readonly n: boolean;
  /** Untranslated access only (pass-through). */
  readonly u: boolean;
  readonly reason?: VtdFaultReason;
}

export interface VtdCounters {
  translations: number;
  atsRequests: number;
  contextCache: { hit: number; miss: number };
  pasidCache: { hit: number; miss: number };
  iotlb: { hit: number; miss: number };
  faults: Record<string, number>;
  faultsRecorded: number;
  faultsSuppressed: number;
  faultOverflows: number;
  descriptors: Record<string, number>;
  pageRequests: number;
  pageRequestOverflows: number;
  pageResponses: number;
}

export interface VtdOptions {
  readonly caps?: Partial<VtdCapabilities>;
  readonly ports?: VtdPorts;
  /** The common walker (default: walk/walk.ts translate). */
  readonly walker?: VtdWalker;
  /** The caches (default: a VtdCacheSet on the common Iotlb / ConfigCache). */
  readonly caches?: VtdCaches;
}

/** Context and PASID entries as the unit caches them (config cache values). */
export interface CachedContext {
  readonly rid: number;
  readonly ctx: SmContextEntry;
}
export interface CachedPasidEntry {
  readonly rid: number;
  readonly pasid: number;
  readonly pe: SmPasidEntry;
}

interface PendingWait {
  readonly desc: Extract<InvDesc, { type: "wait" }>;
  readonly waitFor: Set<number>;
}

/** Explain output for one translation: every structure and descriptor read. */
export interface VtdExplain {
  structures: StructureRead[];
  steps: WalkStep[];
  config?: TranslationConfig;
}

const STATUS_EVENT_MASK = 0x7fn; // PFO, PPF, AFO, APF, IQE, ICE, ITE

export class Vtd {
  readonly caps: VtdCapabilities;
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly counters: VtdCounters = {
    translations: 0,
    atsRequests: 0,
    contextCache: { hit: 0, miss: 0 },
    pasidCache: { hit: 0, miss: 0 },
    iotlb: { hit: 0, miss: 0 },
    faults: {},
    faultsRecorded: 0,
    faultsSuppressed: 0,
    faultOverflows: 0,
    descriptors: {},
    pageRequests: 0,
    pageRequestOverflows: 0,
    pageResponses: 0,
  };
  readonly faults: FaultRecorder;
  ports: VtdPorts;
  /** Debugging: keep every walk's descriptor reads in the result (walk.descReads; WalkOptions.recordReads). */
  recordWalkReads = false;

  private readonly regs = new Map<number, bigint>();
  private readonly lim: VtdEntryLimits;
  private readonly stageCaps: VtdStageCaps;
  private readonly walker: VtdWalker;
  readonly caches: VtdCaches;
  /** Root table pointer latched by SRTP (RTADDR value). */
  private activeRtaddr = 0n;
  private gsts = 0n;
  private fsts = 0n; // IQE/ICE/ITE/AFO/APF; PFO/PPF/FRI come from the recorder
  private nextTag = 1;
  private readonly outstanding = new Map<number, AtcInvalidationRequest>();
  private readonly pendingWaits: PendingWait[] = [];
  private fenced = false;

  constructor(
    readonly mem: PhysicalMemory,
    opts: VtdOptions = {},
  ) {
    this.caps = { ...DEFAULT_VTD_CAPABILITIES, ...opts.caps };
    this.cap = capRegister(this.caps);
    this.ecap = ecapRegister(this.caps);
    this.ports = opts.ports ?? {};
    this.walker = opts.walker ?? commonWalker;
    this.caches = opts.caches ?? new VtdCacheSet();
    this.faults = new FaultRecorder(this.caps.nfr);
    const e = [this.ecap];
    this.lim = {
      haw: this.caps.haw,
      aw: supportedAw(this.cap),
      pasidBits: this.caps.pasid ? this.caps.pasidBits : 0,
      fs5lp: get([this.cap], CAP_FIELDS.FS5LP) === 1n,
      nest: get(e, ECAP_FIELDS.NEST) === 1n,
      ers: get(e, ECAP_FIELDS.ERS) === 1n,
      srs: get(e, ECAP_FIELDS.SRS) === 1n,
      eafs: get(e, ECAP_FIELDS.EAFS) === 1n,
      ssads: get(e, ECAP_FIELDS.SSADS) === 1n,
      rps: get(e, ECAP_FIELDS.RPS) === 1n,
      rprivs: get(e, ECAP_FIELDS.RPRIVS) === 1n,
      dt: get(e, ECAP_FIELDS.DT) === 1n,
      prs: get(e, ECAP_FIELDS.PRS) === 1n,
    };
    this.stageCaps = {
      haw: this.caps.haw,
      fs1gp: this.caps.fs1gp,
      ss2m: this.caps.sslps >= 1,
      ss1g: this.caps.sslps >= 2,
    };
    this.regs.set(VTD_REG.VER, 0x30n); // architecture 3.0 (scalable mode)
    this.regs.set(VTD_REG.FECTL, 1n << 31n); // IM = 1 at reset
    this.regs.set(VTD_REG.IECTL, 1n << 31n);
    this.regs.set(VTD_REG.PECTL, 1n << 31n);
  }

  /** What the host reports in IOMMU_GET_HW_INFO (struct iommu_hw_info_vtd). */
  hwInfo(flags = 0): IommuHwInfoVtd {
    return hwInfoVtd(this.cap, this.ecap, flags);
  }

  // -------------------------------------------------------------------------
  // MMIO

  private reg(name: VtdRegName): bigint {
    return this.regs.get(VTD_REG[name]) ?? 0n;
  }
  private setReg(name: VtdRegName, v: bigint): void {
    this.regs.set(VTD_REG[name], v);
  }

  private fstsValue(): bigint {
    let v = this.fsts;
    if (this.faults.pfo) v |= 1n << BigInt(FSTS_FIELDS.PFO.lo);
    if (this.faults.ppf) {
      v |= 1n << BigInt(FSTS_FIELDS.PPF.lo);
      v |= BigInt(this.faults.fri) << BigInt(FSTS_FIELDS.FRI.lo);
    }
    return v;
  }

  /** Current value of a 64-bit-aligned register word (for reads). */
  private readWord(off: number): bigint | undefined {
    const fro = this.caps.froOffset;
    if (off >= fro && off < fro + 16 * this.caps.nfr) {
      const idx = Math.floor((off - fro) / 16);
      return this.faults.read(idx, ((off - fro) % 16) / 8 >= 1 ? 1 : 0);
    }
    switch (off) {
      case VTD_REG.CAP:
        return this.cap;
      case VTD_REG.ECAP:
        return this.ecap;
      case VTD_REG.GCMD: // GCMD (write-only, reads 0) | GSTS << 32
        return this.gsts << 32n;
      case 0x30: // FSTS at 0x34 is the high half
        return this.fstsValue() << 32n;
      default:
        return this.regs.get(off);
    }
  }

  /** MMIO read of 4 or 8 bytes at `offset`. */
  readReg(offset: number, size: 4 | 8 = 8): bigint {
    const base = offset & ~7;
    const word = this.readWord(base) ?? 0n;
    const lowHalf = (this.readWord(base) ?? 0n) & 0xffff_ffffn;
    if (size === 8) return word;
    // 32-bit registers at base+4 (GSTS, FSTS, FEDATA, FEUADDR, ICS, ...) are stored at their own offset.
    if (offset & 4) {
      const own = this.regs.get(offset);
      if (own !== undefined) return own & 0xffff_ffffn;
      return (word >> 32n) & 0xffff_ffffn;
    }
    return lowHalf;
  }

  /** MMIO write of 4 or 8 bytes at `offset`. */
  writeReg(offset: number, value: bigint, size: 4 | 8 = 8): void {
    const fro = this.caps.froOffset;
    if (offset >= fro && offset < fro + 16 * this.caps.nfr) {
      const rel = offset - fro;
      const idx = Math.floor(rel / 16);
      const within = rel % 16;
      if (within === 8 && size === 8) this.faults.writeHigh(idx, value);
      else if (within === 12 && size === 4) this.faults.writeHigh(idx, (value & 0xffff_ffffn) << 32n);
      this.updateFaultEventOnClear();
      return;
    }
    const name = (Object.keys(VTD_REG) as VtdRegName[]).find((n) => VTD_REG[n] === (offset & ~(VTD_REG_WIDTH[n] - 1)));
    if (!name) return;
    let v = value;
    if (VTD_REG_WIDTH[name] === 8 && size === 4) {
      const cur = this.reg(name);
      v = offset & 4 ? (cur & 0xffff_ffffn) | ((value & 0xffff_ffffn) << 32n) : (cur & ~0xffff_ffffn) | (value & 0xffff_ffffn);
    } else if (VTD_REG_WIDTH[name] === 4) {
      v = value & 0xffff_ffffn;
    }
    this.writeNamed(name, v);
  }

  private writeNamed(name: VtdRegName, v: bigint): void {
    switch (name) {
      case "GCMD":
        this.writeGcmd(v);
        return;
      case "RTADDR":
        this.setReg("RTADDR", v & ~0x3ffn);
        return;
      case "FSTS":
        this.writeFsts(v);
        return;
      case "FECTL":
      case "IECTL":
      case "PECTL":
        this.writeEventControl(name, v);
        return;
      case "FEDATA":
      case "FEADDR":
      case "FEUADDR":
      case "IEDATA":
      case "IEADDR":
      case "IEUADDR":
      case "PEDATA":
      case "PEADDR":
      case "PEUADDR":
      case "IRTA":
        this.setReg(name, v);
        return;
      case "IQA":
        this.setReg("IQA", v & ~0x7f8n);
        return;
      case "IQT":
        this.setReg("IQT", v & 0x7fff0n);
        if (get([this.reg("IQA")], IQA_FIELDS.DW) === 1n && (v & 0x10n) !== 0n) {
          this.raiseIqe(VTD_IQEI.INVALID_TAIL);
          return;
        }
        this.processInvalidationQueue();
        return;
      case "ICS":
        if (v & 1n) this.setReg("ICS", 0n);
        this.updateEventPending("IECTL", this.reg("ICS") !== 0n);
        return;
      case "PQA":
        this.setReg("PQA", v & ~0xff8n);
        return;
      case "PQH":
        this.setReg("PQH", v & 0x7ffe0n);
        return;
      case "PRS": {
        const cur = this.reg("PRS");
        this.setReg("PRS", cur & ~(v & 3n));
        this.updateEventPending("PECTL", this.reg("PRS") !== 0n);
        return;
      }
      default:
        // Read-only or unmodelled (VER, CAP, ECAP, GSTS, IQH, PQT, IQERCD, CCMD, PMEN, AFLOG...).
        return;
    }
  }

  private writeGcmd(v: bigint): void {
    const w = [v];
    const bit = (fld: { lo: number }) => 1n << BigInt(fld.lo);
    // Level-sensitive enables.
    for (const [cmd, sts] of [
      [GCMD_FIELDS.TE, GSTS_FIELDS.TES],
      [GCMD_FIELDS.QIE, GSTS_FIELDS.QIES],
      [GCMD_FIELDS.IRE, GSTS_FIELDS.IRES],
      [GCMD_FIELDS.CFI, GSTS_FIELDS.CFIS],
    ] as const) {
      const on = get(w, cmd) === 1n;
      const was = (this.gsts & bit(sts)) !== 0n;
      if (on === was) continue;
      if (on) this.gsts |= bit(sts);
      else this.gsts &= ~bit(sts);
      if (cmd === GCMD_FIELDS.QIE) {
        // Enabling queued invalidation resets the head (spec §6.5.2).
        this.setReg("IQH", 0n);
        if (!on) this.setReg("IQT", 0n);
      }
    }
    // One-shot commands.
    if (get(w, GCMD_FIELDS.SRTP) === 1n) {
      this.activeRtaddr = this.reg("RTADDR");
      this.gsts |= bit(GSTS_FIELDS.RTPS);
      // CAP.ESRTPS: SRTP also invalidates all DMA-remapping caches.
      this.caches.invalidateAll();
    }
    if (get(w, GCMD_FIELDS.SIRTP) === 1n) this.gsts |= bit(GSTS_FIELDS.IRTPS);
    if (get(w, GCMD_FIELDS.SFL) === 1n) this.gsts |= bit(GSTS_FIELDS.FLS);
  }

  private writeFsts(v: bigint): void {
    const clear = v & 0x7dn; // RW1C: PFO, AFO, APF, IQE, ICE, ITE
    if (clear & 1n) this.faults.pfo = false;
    const hadBlock = (this.fsts & 0x50n) !== 0n;
    this.fsts &= ~(clear & ~1n);
    if ((this.fsts & 0x40n) === 0n && (clear & 0x40n) !== 0n) this.setReg("IQERCD", this.reg("IQERCD") & ~(0xffffn << 32n));
    this.updateFaultEventOnClear();
    // Clearing IQE / ITE lets the queue run again from IQH.
    if (hadBlock && (this.fsts & 0x50n) === 0n) this.processInvalidationQueue();
  }

  private writeEventControl(name: "FECTL" | "IECTL" | "PECTL", v: bigint): void {
    const cur = this.reg(name);
    const im = get([v], EVCTL_FIELDS.IM);
    const next = (cur & (1n << 30n)) | (im << 31n);
    this.setReg(name, next);
    if (im === 0n && (next & (1n << 30n)) !== 0n) this.deliverEvent(name);
  }

  private eventMsg(prefix: "FE" | "IE" | "PE"): { data: number; addr: bigint } {
    const data = Number(this.regs.get(VTD_REG[`${prefix}DATA`]) ?? 0n);
    const lo = this.regs.get(VTD_REG[`${prefix}ADDR`]) ?? 0n;
    const hi = this.regs.get(VTD_REG[`${prefix}UADDR`]) ?? 0n;
    return { data, addr: (hi << 32n) | lo };
  }

  private deliverEvent(name: "FECTL" | "IECTL" | "PECTL"): void {
    this.setReg(name, this.reg(name) & ~(1n << 30n));
    if (name === "FECTL") this.ports.faultEvent?.(this.eventMsg("FE"));
    else if (name === "IECTL") this.ports.invalidationEvent?.(this.eventMsg("IE"));
    else this.ports.pageRequestEvent?.(this.eventMsg("PE"));
  }

  /** A new interrupt condition: set IP, deliver unless masked. */
  private raiseEvent(name: "FECTL" | "IECTL" | "PECTL"): void {
    const cur = this.reg(name);
    this.setReg(name, cur | (1n << 30n));
    if ((cur & (1n << 31n)) === 0n) this.deliverEvent(name);
  }

  /** IP is cleared when software has serviced every status that could raise it. */
  private updateEventPending(name: "FECTL" | "IECTL" | "PECTL", stillPending: boolean): void {
    if (!stillPending) this.setReg(name, this.reg(name) & ~(1n << 30n));
  }

  private updateFaultEventOnClear(): void {
    this.updateEventPending("FECTL", (this.fstsValue() & STATUS_EVENT_MASK) !== 0n);
  }

  /** Set FSTS status bits; a fault event is raised only if no status was already set (spec §7.3). */
  private setFsts(bits: bigint): void {
    const before = this.fstsValue() & STATUS_EVENT_MASK;
    this.fsts |= bits;
    if (before === 0n) this.raiseEvent("FECTL");
  }

  // -------------------------------------------------------------------------
  // Fault recording

  /** Offer a fault to primary fault logging (FPD suppresses it). */
  private recordFault(r: VtdFaultRecord, fpd: boolean): RecordOutcome {
    const name = vtdFaultReasonName(r.reason);
    this.counters.faults[name] = (this.counters.faults[name] ?? 0) + 1;
    if (fpd) {
      this.counters.faultsSuppressed++;
      return "suppressed";
    }
    const before = this.fstsValue() & STATUS_EVENT_MASK;
    const out = this.faults.record(r);
    if (out === "overflow") this.counters.faultOverflows++;
    else this.counters.faultsRecorded++;
    const after = this.fstsValue() & STATUS_EVENT_MASK;
    if (before === 0n && after !== 0n) this.raiseEvent("FECTL");
    return out;
  }

  // -------------------------------------------------------------------------
  // Structure lookup through the config cache

  private get translationEnabled(): boolean {
    return (this.gsts & (1n << BigInt(GSTS_FIELDS.TES.lo))) !== 0n;
  }

  private get ttm(): number {
    return Number(get([this.activeRtaddr], RTADDR_FIELDS.TTM));
  }

  private contextFor(
    rid: number,
    visit?: (r: StructureRead) => void,
  ): { ok: true; ctx: SmContextEntry } | { ok: false; reason: VtdFaultReason; fpd: boolean } {
    if (!visit) {
      const hit = this.caches.context.lookup(rid);
      if (hit) {
        this.counters.contextCache.hit++;
        return { ok: true, ctx: hit.ctx };
      }
    }
    this.counters.contextCache.miss++;
    const rta = this.activeRtaddr & ~0xfffn;
    const r = fetchContextEntry(this.mem, rta, rid, this.lim, visit);
    if (r.ok) this.caches.context.insert(rid, { rid, ctx: r.ctx });
    return r;
  }

  private pasidEntryFor(
    rid: number,
    ctx: SmContextEntry,
    pasid: number,
    visit?: (r: StructureRead) => void,
  ): { ok: true; pe: SmPasidEntry } | { ok: false; reason: VtdFaultReason; fpd: boolean } {
    if (!visit) {
      const hit = this.caches.pasid.lookup(rid, pasid);
      if (hit) {
        this.counters.pasidCache.hit++;
        return { ok: true, pe: hit.pe };
      }
    }
    this.counters.pasidCache.miss++;
    const r = fetchPasidEntry(this.mem, ctx, pasid, this.lim, visit);
    if (r.ok) this.caches.pasid.insert(rid, pasid, { rid, pasid, pe: r.pe });
    return r;
  }

  // -------------------------------------------------------------------------
  // Translation

  /**
   * Resolve (rid, pasid) to its context and PASID entries, applying the
   * request-level checks of the spec in order: TTM, root/context, PASIDE,
   * PDTS, DTE (ATS), PASID directory/table, ERE, SRE.
   */
  private resolve(
    rid: number,
    pasid: number | undefined,
    req: { exec: boolean; priv: boolean; ats: boolean; translated: boolean },
    visit?: (r: StructureRead) => void,
  ):
    | { ok: true; ctx: SmContextEntry; pe?: SmPasidEntry; pasid: number }
    | { ok: false; reason: VtdFaultReason; fpd: boolean } {
    if (this.ttm !== VTD_TTM.SCALABLE) {
      return { ok: false, reason: this.ttm === VTD_TTM.LEGACY && pasid !== undefined ? VTD_FR.SM_TTM_LEGACY_PASID : VTD_FR.SM_RTADDR_INV, fpd: false };
    }
    const c = this.contextFor(rid, visit);
    if (!c.ok) return c;
    const ctx = c.ctx;
    if (pasid !== undefined && !ctx.paside) return { ok: false, reason: VTD_FR.SM_CTX_PASIDE, fpd: ctx.fpd };
    if ((req.ats || req.translated) && !ctx.dte) return { ok: false, reason: VTD_FR.SM_CTX_DTE, fpd: ctx.fpd };
    const effPasid = pasid ?? ctx.ridPasid;
    if (effPasid >> 6 >= 2 ** (ctx.pdts + 7)) return { ok: false, reason: VTD_FR.SM_CTX_PDTS, fpd: ctx.fpd };
    if (req.translated) return { ok: true, ctx, pasid: effPasid };
    const p = this.pasidEntryFor(rid, ctx, effPasid, visit);
    if (!p.ok) return p;
    const pe = p.pe;
    const blocked = pasidEntryRequestCheck(pe, pasid !== undefined, req.exec, req.priv);
    if (blocked !== undefined) return { ok: false, reason: blocked, fpd: pe.fpd };
    return { ok: true, ctx, pe, pasid: effPasid };
  }

  private faultResult(
    reason: VtdFaultReason,
    fpd: boolean,
    rid: number,
    pasid: number | undefined,
    addr: bigint,
    acc: { kind: string; priv: boolean },
    at: number,
    type?: number,
  ): VtdTranslateFault {
    const record: VtdFaultRecord = {
      reason,
      sid: rid,
      addr: addr & ~0xfffn,
      priv: pasid !== undefined && acc.priv,
      exe: pasid !== undefined && acc.kind === "exec",
      type: type ?? (acc.kind === "write" ? FAULT_REQ_TYPE.WRITE : FAULT_REQ_TYPE.READ),
      at,
    };
    if (pasid !== undefined) record.pasid = pasid;
    const recorded = this.recordFault(record, fpd);
    return { ok: false, reason, reasonName: vtdFaultReasonName(reason), record, recorded };
  }

  /**
   * Translate a DMA request. `pasid` undefined = request without PASID (the
   * context entry's RID_PASID selects the PASID entry; such requests are
   * user-privilege, non-execute). `translated` = AT = 10b (device used its
   * ATC): allowed only when the context entry has DTE = 1, output = input.
   */
  translate(rid: number, pasid: number | undefined, addr: bigint, access: VtdAccess, opts: { translated?: boolean; explain?: VtdExplain } = {}): VtdTranslateResult {
    this.counters.translations++;
    const priv = pasid !== undefined && (access.priv ?? false);
    const kind = pasid === undefined && access.kind === "exec" ? "read" : access.kind;
    const acc: { kind: "read" | "write" | "exec"; priv: boolean } = { kind, priv };
    const at = opts.translated ? PCIE_AT.TRANSLATED : PCIE_AT.UNTRANSLATED;
    if (!this.translationEnabled) return { ok: true, output: addr, perms: Perm.PR | Perm.PW | Perm.PX | Perm.UR | Perm.UW | Perm.UX, pageShift: 12, via: "bypass" };
    const explain = opts.explain;
    const visit = explain ? (r: StructureRead) => explain.structures.push(r) : undefined;
    const res = this.resolve(rid, pasid, { exec: kind === "exec", priv, ats: false, translated: opts.translated ?? false }, visit);
    if (!res.ok) return this.faultResult(res.reason, res.fpd, rid, pasid, addr, acc, at);
    if (opts.translated || !res.pe) {
      return { ok: true, output: addr, perms: Perm.PR | Perm.PW | Perm.UR | Perm.UW, pageShift: 12, via: "bypass", pasid: res.pasid };
    }
    return this.finish(res.pe, res.pasid, rid, pasid, addr, acc, at, explain);
  }

  /** Walk a resolved PASID entry (through the IOTLB), check the interrupt range, record a fault. */
  private finish(
    pe: SmPasidEntry,
    effPasid: number,
    rid: number,
    pasid: number | undefined,
    addr: bigint,
    acc: { kind: "read" | "write" | "exec"; priv: boolean },
    at: number,
    explain?: VtdExplain,
  ): VtdTranslateResult {
    const request: AccessRequest = { kind: acc.kind, privileged: acc.priv };
    const w = this.walkWithCache(pe, effPasid, addr, request, explain);
    if (!w.ok) return this.faultResult(w.reason, pe.fpd, rid, pasid, addr, acc, at);
    if (pe.pgtt !== PGTT.PASS_THROUGH && w.output >= VTD_INTERRUPT_RANGE.first && w.output <= VTD_INTERRUPT_RANGE.last) {
      return this.faultResult(VTD_FR.SM_INTERRUPT_ADDR, pe.fpd, rid, pasid, addr, acc, at);
    }
    return {
      ok: true,
      output: w.output,
      perms: w.perms,
      pageShift: w.pageShift,
      did: pe.did,
      pasid: effPasid,
      pgtt: pe.pgtt,
      via: w.via,
      ...(w.walk ? { walk: w.walk } : {}),
    };
  }

  /**
   * Translate with a PASID entry given directly (the walk tool's "bare PASID
   * entry" configuration): the entry is validated as if fetched, then the
   * request checks and the walk run as for translate(). Faults are recorded.
   */
  translateWithPasidEntry(
    entry: readonly bigint[],
    rid: number,
    pasid: number | undefined,
    addr: bigint,
    access: VtdAccess,
    opts: { explain?: VtdExplain } = {},
  ): VtdTranslateResult {
    this.counters.translations++;
    const priv = pasid !== undefined && (access.priv ?? false);
    const kind = pasid === undefined && access.kind === "exec" ? "read" : access.kind;
    const acc = { kind, priv };
    const d = decodeSmPasidEntry(entry, this.lim, false);
    if (!d.ok) return this.faultResult(d.reason, d.fpd, rid, pasid, addr, acc, PCIE_AT.UNTRANSLATED);
    const blocked = pasidEntryRequestCheck(d.entry, pasid !== undefined, kind === "exec", priv);
    if (blocked !== undefined) return this.faultResult(blocked, d.entry.fpd, rid, pasid, addr, acc, PCIE_AT.UNTRANSLATED);
    return this.finish(d.entry, pasid ?? 0, rid, pasid, addr, acc, PCIE_AT.UNTRANSLATED, opts.explain);
  }

  /** Pass-through (PGTT = 100b): output = input, bounded by HAW. */
  private passThrough(addr: bigint): { ok: true; output: bigint; perms: PermSet; pageShift: number } | { ok: false; reason: VtdFaultReason } {
    if (addr >> BigInt(this.caps.haw) !== 0n) return { ok: false, reason: VTD_FR.SM_INPUT_BEYOND_MAX };
    return { ok: true, output: addr, perms: Perm.PR | Perm.PW | Perm.PX | Perm.UR | Perm.UW | Perm.UX, pageShift: 12 };
  }

  private walkWithCache(
    pe: SmPasidEntry,
    pasid: number,
    addr: bigint,
    request: AccessRequest,
    explain?: VtdExplain,
  ):
    | { ok: true; output: bigint; perms: PermSet; pageShift: number; global: boolean; via: "iotlb" | "walk"; walk?: TranslationOk }
    | { ok: false; reason: VtdFaultReason } {
    if (pe.pgtt === PGTT.PASS_THROUGH) {
      const p = this.passThrough(addr);
      return p.ok ? { ...p, global: false, via: "walk" } : p;
    }
    const cfg = pasidTranslationConfig(pe, pasid, this.stageCaps);
    if (!cfg || cfg.mode === "abort" || cfg.mode === "bypass") return { ok: false, reason: VTD_FR.SM_PTE_INV };
    if (explain) explain.config = cfg;
    const tags = { s1Tag: cfg.s1Tag, s2Tag: cfg.s2Tag };
    const execNeedsRead = true;
    if (!explain && !request.probe) {
      const hit = this.caches.iotlb.lookup(tags, addr);
      if (hit && permits(hit.perms, request, execNeedsRead) && !(request.kind === "write" && hit.writeNeedsWalk)) {
        this.counters.iotlb.hit++;
        const mask = (1n << BigInt(hit.pageShift)) - 1n;
        return { ok: true, output: hit.outputBase | (addr & mask), perms: hit.perms, pageShift: hit.pageShift, global: hit.global, via: "iotlb" };
      }
    }
    this.counters.iotlb.miss++;
    const visitor = explain ? (s: WalkStep) => explain.steps.push(s) : undefined;
    const walkOpts = visitor || this.recordWalkReads ? { visitor, recordReads: this.recordWalkReads } : undefined;
    const r = this.walker.walk(this.mem, cfg, addr, request, walkOpts);
    if (!r.ok) {
      const fctx: FaultContext = {
        nested: cfg.mode === "nested",
        ...(cfg.mode === "s1" || cfg.mode === "nested" ? { s1StartLevel: cfg.s1.startLevel } : {}),
        ...(cfg.mode === "s2" || cfg.mode === "nested" ? { s2StartLevel: cfg.s2.startLevel } : {}),
      };
      return { ok: false, reason: vtdReasonForWalkFault(r, fctx) };
    }
    if (!request.probe) this.caches.iotlb.insert(cfg, r);
    const global = (r.s1?.global ?? false) && cfg.mode !== "s2";
    return { ok: true, output: r.output, perms: r.perms, pageShift: r.pageShift, global, via: "walk", walk: r };
  }

  /**
   * ATS Translation Request (AT = 01b) from a device TLB. Configuration
   * errors are recorded faults answered with UR; walk faults are not
   * recorded and answer success with R = W = 0 (the device may then use
   * PRI). `noWrite` = the request's NW hint.
   */
  atsTranslate(rid: number, pasid: number | undefined, addr: bigint, req: { exec?: boolean; priv?: boolean; noWrite?: boolean } = {}): AtsCompletion {
    this.counters.atsRequests++;
    const priv = pasid !== undefined && (req.priv ?? false);
    const exec = pasid !== undefined && (req.exec ?? false);
    const none = (status: "SC" | "UR", reason?: VtdFaultReason): AtsCompletion => ({
      status,
      translatedAddr: addr & ~0xfffn,
      s: false,
      size: 0x1000n,
      r: false,
      w: false,
      exe: false,
      priv: false,
      global: false,
      n: false,
      u: false,
      ...(reason !== undefined ? { reason } : {}),
    });
    if (!this.translationEnabled) return { ...none("SC"), r: true, w: true, u: true };
    const res = this.resolve(rid, pasid, { exec, priv, ats: true, translated: false });
    if (!res.ok) {
      this.faultResult(res.reason, res.fpd, rid, pasid, addr, { kind: "read", priv }, PCIE_AT.TRANSLATION_REQUEST);
      return none("UR", res.reason);
    }
    const pe = res.pe as SmPasidEntry;
    if (pe.pgtt === PGTT.PASS_THROUGH) {
      // Pass-through: the device must use untranslated requests (U = 1).
      return { ...none("SC"), r: true, w: true, u: true };
    }
    const request: AccessRequest = { kind: "read", privileged: priv, probe: true };
    const w = this.walkWithCache(pe, res.pasid, addr, request);
    if (!w.ok) return none("SC", w.reason);
    const p = w.perms;
    const rBit = priv ? Perm.PR : Perm.UR;
    const wBit = priv ? Perm.PW : Perm.UW;
    const xBit = priv ? Perm.PX : Perm.UX;
    // Without the No-Write hint a writable translation lets the device write
    // through its ATC unseen, so the unit marks the page dirty now (FS D /
    // SS D with SSADE) by walking as a write.
    let writable = (p & wBit) !== 0 && (p & rBit) !== 0;
    if (writable && !(req.noWrite ?? false)) {
      const wr = this.walkWithCache(pe, res.pasid, addr, { kind: "write", privileged: priv });
      writable = wr.ok;
    }
    const size = 1n << BigInt(w.pageShift);
    const enc = atsRangeEncode(w.output & ~(size - 1n), size);
    return {
      status: "SC",
      translatedAddr: enc.addr,
      s: enc.s,
      size,
      r: (p & rBit) !== 0,
      w: writable,
      exe: exec && (p & xBit) !== 0,
      priv,
      global: w.global,
      n: false,
      u: false,
    };
  }

  /** Full explain of a translation: every root/context/PASID read and every walk step of both stages. */
  explain(rid: number, pasid: number | undefined, addr: bigint, access: VtdAccess): { result: VtdTranslateResult; explain: VtdExplain } {
    const explain: VtdExplain = { structures: [], steps: [] };
    const result = this.translate(rid, pasid, addr, access, { explain });
    return { result, explain };
  }

  // -------------------------------------------------------------------------
  // Invalidation queue

  private get qies(): boolean {
    return (this.gsts & (1n << BigInt(GSTS_FIELDS.QIES.lo))) !== 0n;
  }

  private raiseIqe(iqei: number): void {
    this.setReg("IQERCD", (this.reg("IQERCD") & ~0xfn) | BigInt(iqei));
    this.setFsts(1n << BigInt(FSTS_FIELDS.IQE.lo));
  }

  /** Process descriptors from IQH to IQT until the queue is empty, an error, or a fenced wait. */
  processInvalidationQueue(): void {
    if (!this.qies) return;
    const iqa = this.reg("IQA");
    const dw = get([iqa], IQA_FIELDS.DW) === 1n;
    const descBytes = dw ? 32 : 16;
    const queueBytes = 4096 << getNum([iqa], IQA_FIELDS.QS);
    const base = iqa & ~0xfffn;
    for (;;) {
      if ((this.fsts & 0x50n) !== 0n || this.fenced) return; // IQE / ITE stop the queue
      const head = Number(this.reg("IQH"));
      const tail = Number(this.reg("IQT"));
      if (tail >= queueBytes) {
        this.raiseIqe(VTD_IQEI.INVALID_TAIL);
        return;
      }
      if (head === tail) return;
      const r = this.mem.read(base + BigInt(head), descBytes);
      if (!r.ok) {
        this.raiseIqe(VTD_IQEI.FETCH_ERROR);
        return;
      }
      const words = [0n, 0n, 0n, 0n];
      const view = new DataView(r.value.buffer, r.value.byteOffset, r.value.byteLength);
      for (let i = 0; i < descBytes / 8; i++) words[i] = view.getBigUint64(i * 8, true);
      const d = decodeInvDesc(words, dw);
      if (!d.ok) {
        this.raiseIqe(d.iqei);
        return;
      }
      // The head moves past the descriptor once it is fetched and valid.
      this.setReg("IQH", BigInt((head + descBytes) % queueBytes));
      this.counters.descriptors[d.desc.type] = (this.counters.descriptors[d.desc.type] ?? 0) + 1;
      this.execute(d.desc);
    }
  }

  private execute(d: InvDesc): void {
    const c = this.caches;
    switch (d.type) {
      case "context-cache":
        // Scalable-mode context entries carry no DID: domain-selective acts as global.
        if (d.g === CC_GRAN.DEVICE) {
          // FM masks the function-number bits SID[2], SID[2:1] or SID[2:0].
          const mask = 0xffff & ~(((1 << d.fm) - 1) << (3 - d.fm));
          c.context.invalidate((rid) => (rid & mask) === (d.sid & mask));
        } else {
          c.context.invalidate(() => true);
        }
        return;
      case "pasid-cache":
        if (d.g === PC_GRAN.GLOBAL) c.pasid.invalidate(() => true);
        else if (d.g === PC_GRAN.DOMAIN) c.pasid.invalidate((e) => e.pe.did === d.did);
        else c.pasid.invalidate((e) => e.pe.did === d.did && e.pasid === d.pasid);
        return;
      case "iotlb":
        if (d.g === IOTLB_GRAN.GLOBAL) c.iotlb.invalidateAll();
        else if (d.g === IOTLB_GRAN.DOMAIN) c.iotlb.invalidateDomain(d.did);
        else {
          c.iotlb.invalidateDomainRange(d.did, vtdAmRange(d.addr, d.am), d.ih);
        }
        return;
      case "pasid-iotlb":
        if (d.g === PIOTLB_GRAN.PASID) c.iotlb.invalidatePasid(d.did, d.pasid);
        else {
          c.iotlb.invalidatePasidRange(d.did, d.pasid, vtdAmRange(d.addr, d.am), d.ih);
        }
        return;
      case "device-tlb":
      case "pasid-device-tlb": {
        const range = atsRangeDecode(d.addr, d.s);
        const req: AtcInvalidationRequest = {
          tag: this.nextTag++,
          sid: d.sid,
          pfsid: d.pfsid,
          ...(d.type === "pasid-device-tlb" ? { pasid: d.pasid } : {}),
          global: d.type === "pasid-device-tlb" ? d.global : false,
          addr: d.addr,
          s: d.s,
          base: range.start,
          size: range.size,
        };
        if (!this.ports.atcInvalidate) return; // no device attached: nothing to wait for
        this.outstanding.set(req.tag, req);
        this.ports.atcInvalidate(req);
        return;
      }
      case "iec":
        return; // interrupt remapping is not modelled
      case "wait": {
        const pending: PendingWait = { desc: d, waitFor: new Set(this.outstanding.keys()) };
        if (pending.waitFor.size === 0 && this.pendingWaits.length === 0) {
          this.completeWait(d);
          return;
        }
        this.pendingWaits.push(pending);
        if (d.fn) this.fenced = true;
        return;
      }
      case "page-group-response": {
        this.counters.pageResponses++;
        const resp: PageGroupResponse = {
          rid: d.rid,
          prgi: d.prgi,
          code: d.rc,
          auto: false,
          ...(d.pp ? { pasid: d.pasid } : {}),
          ...(d.pdp ? { privateData: d.privateData } : {}),
        };
        this.ports.pageResponse?.(resp);
        return;
      }
    }
  }

  private completeWait(d: Extract<InvDesc, { type: "wait" }>): void {
    if (d.sw) {
      const data = new Uint8Array(4);
      new DataView(data.buffer).setUint32(0, d.sdata, true);
      this.mem.write(d.saddr, data);
    }
    if (d.if) {
      const was = this.reg("ICS");
      this.setReg("ICS", 1n);
      if (was === 0n) this.raiseEvent("IECTL");
    }
  }

  /** Device-TLB invalidations forwarded and not yet acknowledged. */
  get outstandingAtcInvalidations(): readonly AtcInvalidationRequest[] {
    return [...this.outstanding.values()];
  }

  /** Invalidation waits not yet completed. */
  get pendingWaitCount(): number {
    return this.pendingWaits.length;
  }

  /**
   * The device acknowledged a device-TLB invalidation (PCIe Invalidate
   * Completion). An unknown tag or a completion from another requester is an
   * Invalidation Completion Error (FSTS.ICE, IQERCD.ICESID).
   */
  atcInvalidationDone(tag: number, sid?: number): void {
    const req = this.outstanding.get(tag);
    if (!req || (sid !== undefined && sid !== req.sid)) {
      this.setReg("IQERCD", (this.reg("IQERCD") & ~(0xffffn << 48n)) | (BigInt(sid ?? 0) << 48n));
      this.setFsts(1n << BigInt(FSTS_FIELDS.ICE.lo));
      return;
    }
    this.outstanding.delete(tag);
    for (const w of this.pendingWaits) w.waitFor.delete(tag);
    // Waits complete in queue order: a wait completes once it and all earlier ones have nothing outstanding.
    while (this.pendingWaits.length > 0 && (this.pendingWaits[0] as PendingWait).waitFor.size === 0) {
      const w = this.pendingWaits.shift() as PendingWait;
      this.completeWait(w.desc);
      if (w.desc.fn) this.fenced = this.pendingWaits.some((p) => p.desc.fn);
    }
    this.processInvalidationQueue();
  }

  /**
   * The device did not answer in time (the host's policy decides when):
   * FSTS.ITE, IQERCD.ITESID; pending waits are abandoned without their
   * status write, and the queue stops until software clears ITE.
   */
  atcInvalidationTimeout(tag: number): void {
    const req = this.outstanding.get(tag);
    if (!req) return;
    if ((this.fsts & 0x40n) === 0n) {
      this.setReg("IQERCD", (this.reg("IQERCD") & ~(0xffffn << 32n)) | (BigInt(req.sid) << 32n));
    }
    this.outstanding.clear();
    this.pendingWaits.length = 0;
    this.fenced = false;
    this.setFsts(1n << BigInt(FSTS_FIELDS.ITE.lo));
  }

  // -------------------------------------------------------------------------
  // Page requests

  /**
   * A page request from a device (PCIe Page Request Message). Checked
   * against the root/context entries (TTM, PRE, PASIDE); queued at PQT; on
   * overflow PRS.PRO is set and, if the request is the last of its group,
   * the unit answers it itself with Success (the device retries).
   */
  pageRequest(req: PageRequest): { queued: boolean; reason?: VtdFaultReason; overflow?: boolean } {
    this.counters.pageRequests++;
    const autoRespond = (code: number) => {
      if (req.lpig && !isStopMarker(req)) {
        this.ports.pageResponse?.({
          rid: req.rid,
          prgi: req.prgi,
          code,
          auto: true,
          ...(req.pasid !== undefined ? { pasid: req.pasid } : {}),
          ...(req.privateData ? { privateData: req.privateData } : {}),
        });
      }
    };
    const acc = { kind: req.write ? "write" : "read", priv: req.priv };
    const fail = (reason: VtdFaultReason, fpd: boolean) => {
      this.faultResult(reason, fpd, req.rid, req.pasid, req.addr, acc, PCIE_AT.UNTRANSLATED, FAULT_REQ_TYPE.PAGE_REQUEST);
      autoRespond(PRG_RESPONSE_CODE.INVALID_REQUEST);
      return { queued: false, reason };
    };
    if (this.ttm !== VTD_TTM.SCALABLE) return fail(this.ttm === VTD_TTM.LEGACY ? VTD_FR.SM_TTM_LEGACY_PRQ : VTD_FR.SM_RTADDR_INV, false);
    const c = this.contextFor(req.rid);
    if (!c.ok) return fail(c.reason, c.fpd);
    if (req.pasid !== undefined && !c.ctx.paside) return fail(VTD_FR.SM_CTX_PASIDE, c.ctx.fpd);
    if (!c.ctx.pre) return fail(VTD_FR.SM_CTX_PRE, c.ctx.fpd);
    const pqa = this.reg("PQA");
    const size = 4096 << Number(pqa & 7n);
    const head = Number(this.reg("PQH"));
    const tail = Number(this.reg("PQT"));
    const next = (tail + PAGE_REQ_DESC_BYTES) % size;
    const prs = this.reg("PRS");
    if ((prs & 2n) !== 0n || next === head) {
      this.counters.pageRequestOverflows++;
      this.setReg("PRS", prs | 2n);
      if ((prs & 3n) === 0n) this.raiseEvent("PECTL");
      autoRespond(PRG_RESPONSE_CODE.SUCCESS);
      return { queued: false, overflow: true };
    }
    const w = this.mem.write((pqa & ~0xfffn) + BigInt(tail), wordsToBytes(encodePageRequest(req)));
    if (!w.ok) return { queued: false };
    this.setReg("PQT", BigInt(next));
    this.setReg("PRS", prs | 1n);
    if ((prs & 3n) === 0n) this.raiseEvent("PECTL");
    return { queued: true };
  }

  /** Decoded register snapshot for logs and tests. */
  snapshot(): Record<string, bigint> {
    const out: Record<string, bigint> = {};
    for (const n of Object.keys(VTD_REG) as VtdRegName[]) out[n] = this.readReg(VTD_REG[n], VTD_REG_WIDTH[n]);
    return out;
  }
}
