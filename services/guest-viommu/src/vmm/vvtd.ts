// The VMM's virtual Intel VT-d, scalable mode with first-stage translation
// only (QEMU's intel_iommu with x-flts, accelerated by iommufd). The guest's
// root / context / PASID tables and its invalidation and page request queues
// live in guest RAM; register writes trap here.
//   - PASID entries are shadowed, not copied: a PASID-cache invalidation
//     (or a context-cache one, for the RID's PASID) re-reads the guest's PASID
//     entry; PGTT = first-stage → HWPT_ALLOC of a nested HWPT on the nesting
//     parent with HwptVtdS1 {flags (SRE/WPE/EAFE), pgtbl_addr = FSPTPTR,
//     addr_width} and DeviceAttach on that PASID (the RID_PASID → the RID);
//     PGTT = pass-through → the parent itself; not present → DeviceDetach.
//   - PASID-IOTLB / IOTLB descriptors are collected while the queue is
//     consumed and go as one HwptInvalidate (VTD_S1 entries) per nested HWPT
//     per batch, flushed at each wait descriptor; device-TLB descriptors are
//     absorbed (the host invalidates the ATC with the stage-1 flush, uAPI
//     §9.4); the wait descriptor's status write happens after the RPCs.
//   - Page group responses → bus.v1.PageResponse; IOPF groups → page
//     request descriptors in the guest's PRQ.
//   - The guest allocates PASIDs with the virtual command interface
//     (vtd-vcmd.ts), so the VMM owns the VM's PASID space.
//   - Faults the VMM itself finds (a PASID entry the host refuses) are
//     recorded in the fault recording registers. The host has no vEVENTQ for
//     VT-d, so DMA faults on nested translations do not reach the guest.
//
// Spec: VT-d 3.x §6.5, §7.2, §7.5, §9, §10/§11; reference/hw-formats.md §2.
import type { VtdCapabilities } from "@iommufd/hw";
import {
  CC_GRAN,
  ECAP_FIELDS,
  FSTS_FIELDS,
  GCMD_FIELDS,
  GSTS_FIELDS,
  IQA_FIELDS,
  IQERCD_FIELDS,
  IOTLB_GRAN,
  type InvDesc,
  PAGE_REQ_DESC_BYTES,
  PASID_DIR_ENTRY,
  PC_GRAN,
  PGTT,
  PIOTLB_GRAN,
  PQA_FIELDS,
  PRG_RESPONSE_CODE,
  PRS_FIELDS,
  SM_CONTEXT_ENTRY,
  SM_PASID_ENTRY,
  SM_ROOT_ENTRY,
  VTD_FR,
  VTD_IQEI,
  VTD_REG,
  type VtdFaultReason,
  bytesToWords,
  capRegister,
  decodeInvDesc,
  ecapRegister,
  encodeFaultRecord,
  encodePageRequest,
  get,
  getNum,
  pack,
  set,
  wordsToBytes,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import type { IopfRecord, VeventRecord } from "@iommufd/proto/bus";
import { DeviceAttachFlags, DeviceDetachFlags, HwptAllocFlags, HwptDataType, HwptInvalidateDataType, type HwptInvalidateResponse } from "@iommufd/proto/iommufd";
import type { GuestRamOp } from "../guest/ram.js";
import { hex } from "../util.js";
import { VCCAP_PAS, VCMD_CMD, VCMD_REG, VCMD_SC, vcrsp } from "../vtd-vcmd.js";
import { FrontEnd, type HostSlice, PAGE_RESPONSE, PGFAULT_FLAGS, PGFAULT_PERM, type VmmContext, type VmmDevice, read64Part, write64Part } from "./frontend.js";

const U64_MAX = 0xffff_ffff_ffff_ffffn;
const FRO = 0x400;
const NFR = 8;
const DESC_BYTES = 32;
const VTD_S1_FLAGS = { SRE: 1n, EAFE: 2n, WPE: 4n } as const;

const REG64 = new Set<number>([VTD_REG.CAP, VTD_REG.ECAP, VTD_REG.RTADDR, VTD_REG.CCMD, VTD_REG.IQH, VTD_REG.IQT, VTD_REG.IQA, VTD_REG.IQERCD, VTD_REG.IRTA, VTD_REG.PQH, VTD_REG.PQT, VTD_REG.PQA, VCMD_REG.VCCAP, VCMD_REG.VCMD, VCMD_REG.VCRSP]);

export interface VVtdOptions {
  /** Guest address width (CAP.MGAW + 1). */
  haw?: number;
  /** Offer the virtual command interface for PASID allocation (ECAP.VCS). Default true. */
  vcmd?: boolean;
}

interface Context {
  present: boolean;
  pasidDirPtr: bigint;
  pdts: number;
  pre: boolean;
  ridPasid: number;
}

type ShadowKind = { kind: "blocked" } | { kind: "pt"; did: number } | { kind: "nested"; did: number; flags: bigint; pgtbl: bigint; addrWidth: number };

interface Shadow {
  key: string;
  state: ShadowKind;
  /** Owned nested HWPT. */
  hwptId?: number;
}

interface PendingInv {
  hwptId: number;
  entries: { addr: bigint; npages: bigint; flags: number }[];
  descPtr: number;
}

function shadowKey(s: ShadowKind): string {
  return s.kind === "nested" ? `fs:${s.did}:${s.flags}:${s.pgtbl.toString(16)}:${s.addrWidth}` : s.kind === "pt" ? `pt:${s.did}` : "blocked";
}

export class VVtd extends FrontEnd {
  readonly vendor = "vtd" as const;
  readonly cap: bigint;
  readonly ecap: bigint;
  readonly pasidBits: number;
  private gsts = 0;
  private fsts = 0;
  private fectl = 0x8000_0000;
  private pectl = 0x8000_0000;
  private iectl = 0x8000_0000;
  private ics = 0;
  private prs = 0;
  private readonly reg64 = new Map<number, bigint>();
  private readonly misc = new Map<number, number>();
  /** Root table address latched by GCMD.SRTP. */
  private rta = 0n;
  private iqeOrItePending = false;
  private readonly frcd: bigint[][] = Array.from({ length: NFR }, () => [0n, 0n]);
  private nextFrcd = 0;
  private readonly contexts = new Map<number, Context>();
  /** Shadows by "<vrid>/<pasid>". */
  private readonly shadows = new Map<string, Shadow>();
  private readonly prqCookies = new Map<string, number>();
  private readonly pasidPool = new Set<number>();
  /** Entries sent per HwptInvalidate call (tests read it). */
  readonly invalidateBatches: { hwptId: number; entries: { addr: bigint; npages: bigint; flags: number }[] }[] = [];
  /** HwptAlloc data of every nested HWPT allocated (tests read it). */
  readonly installs: { vrid: number; pasid: number; hwptId: number; data: { flags: bigint; pgtblAddr: bigint; addrWidth: number } }[] = [];

  constructor(ctx: VmmContext, opts: VVtdOptions = {}) {
    super(ctx);
    const maxPasid = Math.max(0, ...ctx.devices.map((d) => d.maxPasidLog2));
    this.pasidBits = Math.min(20, maxPasid);
    const anyAts = ctx.devices.some((d) => d.ats);
    const anyPri = ctx.devices.some((d) => d.pri);
    // What the virtual unit advertises; CAP and ECAP are both derived from it.
    const caps: VtdCapabilities = {
      haw: opts.haw ?? 48,
      sagawLevels: [4],
      nfr: NFR,
      fs1gp: false,
      fs5lp: false,
      sslps: 0,
      nest: false,
      pasid: this.pasidBits > 0,
      pasidBits: Math.max(1, this.pasidBits),
      prs: anyPri,
      dt: anyAts,
      ers: false,
      srs: true,
      eafs: false,
      nwfs: false,
      ssads: false,
      pds: false,
      rps: false,
      mamv: 18,
      froOffset: FRO,
      iroOffset: 0x500,
    };
    this.cap = capRegister(caps);
    const e = [ecapRegister(caps)];
    // First stage only: the guest's tables are nested over the host's second stage, so no second stage to offer.
    set(e, ECAP_FIELDS.SSTS, 0);
    set(e, ECAP_FIELDS.VCS, opts.vcmd === false || this.pasidBits === 0 ? 0 : 1);
    this.ecap = e[0] as bigint;
    this.reg64.set(VTD_REG.CAP, this.cap);
    this.reg64.set(VTD_REG.ECAP, this.ecap);
    this.reg64.set(VCMD_REG.VCCAP, opts.vcmd === false ? 0n : VCCAP_PAS);
  }

  private bit(table: Record<string, { qw: number; hi: number; lo: number }>, name: string): number {
    const f = table[name] as { hi: number; lo: number };
    return Number(((1n << BigInt(f.hi - f.lo + 1)) - 1n) << BigInt(f.lo));
  }

  /** The HWPT (vrid, pasid) is attached to (0 = blocked / none). */
  attachedHwpt(vrid: number, pasid = 0): number {
    const sh = this.shadows.get(`${vrid}/${pasid}`);
    if (!sh) return 0;
    if (sh.state.kind === "pt") return this.deviceByVid(vrid)?.slice.parentHwptId ?? 0;
    return sh.hwptId ?? 0;
  }

  // ---- registers ---------------------------------------------------------

  protected readReg(offset: number, size: 4 | 8): bigint {
    if (offset >= FRO && offset < FRO + NFR * 16) {
      const i = (offset - FRO) >> 4;
      const rec = this.frcd[i] as bigint[];
      const within = (offset - FRO) & 15;
      const v128 = within < 8 ? rec[0] as bigint : rec[1] as bigint;
      return read64Part(v128, offset, FRO + i * 16 + (within < 8 ? 0 : 8), size);
    }
    for (const base of REG64) if (offset === base || offset === base + 4) return read64Part(this.reg64.get(base) ?? 0n, offset, base, size);
    const v = (n: number) => BigInt(n >>> 0);
    switch (offset) {
      case VTD_REG.VER:
        return 0x30n;
      case VTD_REG.GCMD:
        return 0n;
      case VTD_REG.GSTS:
        return v(this.gsts);
      case VTD_REG.FSTS:
        return v(this.fstsValue());
      case VTD_REG.FECTL:
        return v(this.fectl);
      case VTD_REG.ICS:
        return v(this.ics);
      case VTD_REG.IECTL:
        return v(this.iectl);
      case VTD_REG.PRS:
        return v(this.prs);
      case VTD_REG.PECTL:
        return v(this.pectl);
      default:
        return v(this.misc.get(offset) ?? 0);
    }
  }

  private fstsValue(): number {
    const ppf = this.frcd.some((r) => (r[1] as bigint) >> 63n === 1n);
    return (this.fsts & ~this.bit(FSTS_FIELDS, "PPF")) | (ppf ? this.bit(FSTS_FIELDS, "PPF") : 0);
  }

  protected async writeReg(offset: number, value: bigint, size: 4 | 8): Promise<void> {
    if (offset >= FRO && offset < FRO + NFR * 16) {
      // FRCD: F (bit 127) is RW1C; the rest is read-only.
      const i = (offset - FRO) >> 4;
      const within = (offset - FRO) & 15;
      const hiDword = (within === 12 && size === 4) || (within === 8 && size === 8);
      const f = size === 8 ? value >> 63n : value >> 31n;
      if (hiDword && f & 1n) (this.frcd[i] as bigint[])[1] = ((this.frcd[i] as bigint[])[1] as bigint) & ~(1n << 63n);
      return;
    }
    for (const base of REG64) {
      if (offset === base || offset === base + 4) {
        if (base === VTD_REG.CAP || base === VTD_REG.ECAP || base === VCMD_REG.VCCAP || base === VCMD_REG.VCRSP) return;
        const nv = write64Part(this.reg64.get(base) ?? 0n, offset, base, value, size);
        this.reg64.set(base, nv);
        if (base === VTD_REG.IQT && (this.gsts & this.bit(GSTS_FIELDS, "QIES")) !== 0 && !this.iqeOrItePending) await this.processQueue();
        if (base === VCMD_REG.VCMD && (size === 8 || offset === base)) this.virtualCommand(nv);
        return;
      }
    }
    const v = Number(value & 0xffff_ffffn) >>> 0;
    switch (offset) {
      case VTD_REG.GCMD:
        await this.gcmd(v);
        return;
      case VTD_REG.FSTS: {
        const clear = v & 0x7d;
        const hadBlock = (this.fsts & (this.bit(FSTS_FIELDS, "IQE") | this.bit(FSTS_FIELDS, "ITE"))) !== 0;
        this.fsts &= ~clear;
        if (hadBlock && (this.fsts & (this.bit(FSTS_FIELDS, "IQE") | this.bit(FSTS_FIELDS, "ITE"))) === 0) {
          this.iqeOrItePending = false;
          this.reg64.set(VTD_REG.IQERCD, 0n);
          await this.processQueue();
        }
        return;
      }
      case VTD_REG.FECTL:
        this.fectl = v & 0x8000_0000;
        return;
      case VTD_REG.ICS:
        this.ics &= ~(v & 1);
        return;
      case VTD_REG.IECTL:
        this.iectl = v & 0x8000_0000;
        return;
      case VTD_REG.PRS:
        this.prs &= ~(v & 3);
        return;
      case VTD_REG.PECTL:
        this.pectl = v & 0x8000_0000;
        return;
      default:
        this.misc.set(offset, v);
    }
  }

  /** GCMD: one command per write, status in GSTS (§10.4.4). */
  private async gcmd(v: number): Promise<void> {
    const b = (n: keyof typeof GCMD_FIELDS) => (v & this.bit(GCMD_FIELDS, n)) !== 0;
    const s = (n: keyof typeof GSTS_FIELDS) => this.bit(GSTS_FIELDS, n);
    if (b("SRTP")) {
      this.rta = (this.reg64.get(VTD_REG.RTADDR) ?? 0n) & ~0xfffn;
      this.gsts |= s("RTPS");
      this.contexts.clear();
    }
    this.gsts = b("TE") ? this.gsts | s("TES") : this.gsts & ~s("TES");
    if (b("QIE") && !(this.gsts & s("QIES"))) {
      this.reg64.set(VTD_REG.IQH, 0n);
      this.gsts |= s("QIES");
    } else if (!b("QIE")) this.gsts &= ~s("QIES");
    this.gsts = b("IRE") ? this.gsts | s("IRES") : this.gsts & ~s("IRES");
    if (b("SIRTP")) this.gsts |= s("IRTPS");
  }

  private virtualCommand(v: bigint): void {
    const op = Number(v & 0xffn);
    const operand = Number(v >> 8n);
    let rsp: bigint;
    if (op === VCMD_CMD.ALLOC) {
      let p = 1;
      while (p < 2 ** this.pasidBits && this.pasidPool.has(p)) p++;
      if (p >= 2 ** this.pasidBits) rsp = vcrsp(VCMD_SC.NO_PASID_AVAIL);
      else {
        this.pasidPool.add(p);
        rsp = vcrsp(VCMD_SC.SUCCESS, BigInt(p));
      }
    } else if (op === VCMD_CMD.FREE) {
      rsp = this.pasidPool.delete(operand) ? vcrsp(VCMD_SC.SUCCESS) : vcrsp(VCMD_SC.INVALID_PASID);
    } else {
      rsp = vcrsp(1);
    }
    this.reg64.set(VCMD_REG.VCRSP, rsp);
  }

  // ---- invalidation queue --------------------------------------------------

  private async processQueue(): Promise<void> {
    const iqa = [this.reg64.get(VTD_REG.IQA) ?? 0n];
    const base = get(iqa, IQA_FIELDS.IQA) << 12n;
    const size = 4096 << getNum(iqa, IQA_FIELDS.QS);
    let head = Number((this.reg64.get(VTD_REG.IQH) ?? 0n) & 0x7fff0n);
    const tail = Number((this.reg64.get(VTD_REG.IQT) ?? 0n) & 0x7fff0n);
    if (head === tail) return;
    if (!getNum(iqa, IQA_FIELDS.DW)) return this.iqe(head, VTD_IQEI.INVALID_WIDTH);
    if (tail % DESC_BYTES !== 0 || tail >= size) return this.iqe(head, VTD_IQEI.INVALID_TAIL);
    const ops: GuestRamOp[] =
      tail > head
        ? [{ kind: "read", gpa: base + BigInt(head), length: tail - head }]
        : [{ kind: "read", gpa: base + BigInt(head), length: size - head }, ...(tail > 0 ? [{ kind: "read" as const, gpa: base, length: tail }] : [])];
    let words: bigint[];
    try {
      words = (await this.ctx.ram.batch(ops)).flatMap((d) => bytesToWords(d));
    } catch {
      return this.iqe(head, VTD_IQEI.FETCH_ERROR);
    }
    const pending = new Map<number, PendingInv>();
    for (let i = 0; i < words.length; i += 4) {
      const w = words.slice(i, i + 4);
      const d = decodeInvDesc(w, true);
      if (!d.ok) {
        if (!(await this.flush(pending))) return;
        return this.iqe(head, d.iqei);
      }
      const desc = d.desc;
      switch (desc.type) {
        case "context-cache":
          if (!(await this.flush(pending))) return;
          await this.contextInvalidate(desc);
          break;
        case "pasid-cache":
          if (!(await this.flush(pending))) return;
          await this.pasidCacheInvalidate(desc);
          break;
        case "iotlb":
        case "pasid-iotlb":
          this.collect(pending, desc, head);
          break;
        case "device-tlb":
        case "pasid-device-tlb":
          // Absorbed: HWPT_INVALIDATE on a VT-d nested HWPT flushes the device TLB too when ATS is on (uAPI §9.4).
          this.ctx.counters.devtlbAbsorbed++;
          break;
        case "wait":
          if (!(await this.flush(pending))) {
            // A device-TLB timeout: stop at the wait descriptor until the guest clears ITE (§6.5.2.10).
            this.reg64.set(VTD_REG.IQH, BigInt(head));
            return;
          }
          if (desc.sw) await this.ctx.ram.batch([{ kind: "write", gpa: desc.saddr, data: wordsToBytes([BigInt(desc.sdata)]).subarray(0, 4) }]);
          if (desc.if) {
            this.ics |= 1;
            if (!(this.iectl & 0x8000_0000)) this.raise("inv");
          }
          break;
        case "page-group-response":
          if (!(await this.flush(pending))) return;
          this.pageGroupResponse(desc);
          break;
        default:
          // Interrupt entry cache: no interrupt remapping here.
          break;
      }
      head = (head + DESC_BYTES) % size;
      this.reg64.set(VTD_REG.IQH, BigInt(head));
    }
    await this.flush(pending);
  }

  private iqe(head: number, iqei: number): void {
    this.reg64.set(VTD_REG.IQH, BigInt(head));
    this.reg64.set(VTD_REG.IQERCD, pack(IQERCD_FIELDS, 1, { IQEI: iqei })[0] as bigint);
    this.fsts |= this.bit(FSTS_FIELDS, "IQE");
    this.iqeOrItePending = true;
    this.ctx.log("warn", "vVT-d: invalidation queue error", { iqei, head });
    if (!(this.fectl & 0x8000_0000)) this.raise("fault");
  }

  /** Turn an (PASID-)IOTLB descriptor into VTD_S1 entries on the nested HWPTs it covers. */
  private collect(pending: Map<number, PendingInv>, d: Extract<InvDesc, { type: "iotlb" | "pasid-iotlb" }>, descPtr: number): void {
    for (const [k, sh] of this.shadows) {
      if (sh.state.kind !== "nested" || sh.hwptId === undefined) continue;
      const pasid = Number(k.split("/")[1]);
      let match: boolean;
      let entry: { addr: bigint; npages: bigint; flags: number };
      if (d.type === "pasid-iotlb") {
        match = d.did === sh.state.did && d.pasid === pasid;
        entry = d.g === PIOTLB_GRAN.PAGE ? { addr: d.addr & ~((4096n << BigInt(d.am)) - 1n), npages: 1n << BigInt(d.am), flags: d.ih ? 1 : 0 } : { addr: 0n, npages: U64_MAX, flags: 0 };
      } else {
        match = d.g === IOTLB_GRAN.GLOBAL || d.did === sh.state.did;
        entry = d.g === IOTLB_GRAN.PAGE ? { addr: d.addr & ~((4096n << BigInt(d.am)) - 1n), npages: 1n << BigInt(d.am), flags: d.ih ? 1 : 0 } : { addr: 0n, npages: U64_MAX, flags: 0 };
      }
      if (!match) continue;
      let p = pending.get(sh.hwptId);
      if (!p) pending.set(sh.hwptId, (p = { hwptId: sh.hwptId, entries: [], descPtr }));
      p.entries.push(entry);
    }
  }

  private async flush(pending: Map<number, PendingInv>): Promise<boolean> {
    for (const [id, p] of pending) {
      pending.delete(id);
      this.ctx.counters.hwptInvalidateCalls++;
      this.ctx.counters.hwptInvalidateEntries += p.entries.length;
      this.invalidateBatches.push({ hwptId: p.hwptId, entries: p.entries });
      try {
        await this.ctx.client.hwptInvalidate({
          hwptId: p.hwptId,
          dataType: HwptInvalidateDataType.VTD_S1,
          entryLen: 24,
          entryNum: p.entries.length,
          entries: p.entries.map((e) => ({ entry: { case: "vtdS1" as const, value: { addr: e.addr, npages: e.npages, flags: e.flags, reserved: 0 } } })),
        });
      } catch (e) {
        const err = e instanceof ErrnoError ? e : new ErrnoError("EIO", String(e));
        const handled = (err.response as HwptInvalidateResponse | undefined)?.entryNum ?? 0;
        this.ctx.log("warn", "vVT-d: HWPT_INVALIDATE failed", { errno: err.errno, msg: err.message, handled, of: p.entries.length });
        if (err.errno === "ETIMEDOUT") {
          this.fsts |= this.bit(FSTS_FIELDS, "ITE");
          this.iqeOrItePending = true;
          if (!(this.fectl & 0x8000_0000)) this.raise("fault");
          return false;
        }
        // The host refused an entry: report it as an invalid descriptor at the IOTLB descriptor that produced it.
        this.iqe(p.descPtr, VTD_IQEI.RESERVED_FIELD);
        return false;
      }
    }
    return true;
  }

  // ---- context / PASID shadowing -------------------------------------------

  private async readContext(vrid: number): Promise<Context> {
    const none: Context = { present: false, pasidDirPtr: 0n, pdts: 0, pre: false, ridPasid: 0 };
    if (this.rta === 0n) return none;
    const bus = (vrid >> 8) & 0xff;
    const devfn = vrid & 0xff;
    const [re] = await this.ctx.ram.batch([{ kind: "read", gpa: this.rta + BigInt(bus * 16), length: 16 }]);
    const root = bytesToWords(re as Uint8Array);
    const upper = devfn >= 128;
    if (!get(root, upper ? SM_ROOT_ENTRY.UP : SM_ROOT_ENTRY.LP)) return none;
    const ctp = get(root, upper ? SM_ROOT_ENTRY.UCTP : SM_ROOT_ENTRY.LCTP) << 12n;
    const [ce] = await this.ctx.ram.batch([{ kind: "read", gpa: ctp + BigInt((devfn & 0x7f) * 32), length: 32 }]);
    const c = bytesToWords(ce as Uint8Array);
    return {
      present: get(c, SM_CONTEXT_ENTRY.P) === 1n,
      pasidDirPtr: get(c, SM_CONTEXT_ENTRY.PASIDDIRPTR) << 12n,
      pdts: getNum(c, SM_CONTEXT_ENTRY.PDTS),
      pre: get(c, SM_CONTEXT_ENTRY.PRE) === 1n,
      ridPasid: getNum(c, SM_CONTEXT_ENTRY.RID_PASID),
    };
  }

  private async readPasidEntry(ctx: Context, pasid: number): Promise<ShadowKind | { kind: "invalid"; reason: VtdFaultReason }> {
    if (!ctx.present) return { kind: "blocked" };
    const dirIdx = pasid >> 6;
    if (dirIdx >= 2 ** (ctx.pdts + 7)) return { kind: "blocked" };
    const [de] = await this.ctx.ram.batch([{ kind: "read", gpa: ctx.pasidDirPtr + BigInt(dirIdx * 8), length: 8 }]);
    const dir = bytesToWords(de as Uint8Array);
    if (!get(dir, PASID_DIR_ENTRY.P)) return { kind: "blocked" };
    const table = get(dir, PASID_DIR_ENTRY.SMPTBLPTR) << 12n;
    const [pe] = await this.ctx.ram.batch([{ kind: "read", gpa: table + BigInt((pasid & 63) * 64), length: 64 }]);
    const e = bytesToWords(pe as Uint8Array);
    if (!get(e, SM_PASID_ENTRY.P)) return { kind: "blocked" };
    const pgtt = getNum(e, SM_PASID_ENTRY.PGTT);
    const did = getNum(e, SM_PASID_ENTRY.DID);
    if (pgtt === PGTT.PASS_THROUGH) return { kind: "pt", did };
    if (pgtt !== PGTT.FIRST_STAGE) return { kind: "invalid", reason: VTD_FR.SM_PTE_INV };
    let flags = 0n;
    if (get(e, SM_PASID_ENTRY.SRE)) flags |= VTD_S1_FLAGS.SRE;
    if (get(e, SM_PASID_ENTRY.EAFE)) flags |= VTD_S1_FLAGS.EAFE;
    if (get(e, SM_PASID_ENTRY.WPE)) flags |= VTD_S1_FLAGS.WPE;
    return { kind: "nested", did, flags, pgtbl: get(e, SM_PASID_ENTRY.FSPTPTR) << 12n, addrWidth: getNum(e, SM_PASID_ENTRY.FLPM) === 1 ? 57 : 48 };
  }

  private async contextInvalidate(d: Extract<InvDesc, { type: "context-cache" }>): Promise<void> {
    const devs = d.g === CC_GRAN.DEVICE ? this.ctx.devices.filter((x) => x.vid === d.sid) : this.ctx.devices;
    for (const dev of devs) {
      const ctx = await this.readContext(dev.vid);
      this.contexts.set(dev.vid, ctx);
      const known = new Set([ctx.ridPasid, ...this.pasidsOf(dev)]);
      for (const p of known) await this.reshadow(dev, p, ctx);
    }
  }

  private pasidsOf(dev: VmmDevice): number[] {
    return [...this.shadows.keys()].filter((k) => k.startsWith(`${dev.vid}/`)).map((k) => Number(k.split("/")[1]));
  }

  private async pasidCacheInvalidate(d: Extract<InvDesc, { type: "pasid-cache" }>): Promise<void> {
    for (const dev of this.ctx.devices) {
      let ctx = this.contexts.get(dev.vid);
      if (!ctx) {
        ctx = await this.readContext(dev.vid);
        this.contexts.set(dev.vid, ctx);
      }
      if (d.g === PC_GRAN.PASID) {
        await this.reshadow(dev, d.pasid, ctx);
        continue;
      }
      // Domain-selective / global: every present PASID entry (scan the directory) plus the known shadows.
      const pasids = new Set(this.pasidsOf(dev));
      if (ctx.present) for (const p of await this.scanPasids(ctx)) pasids.add(p);
      for (const p of pasids) await this.reshadow(dev, p, ctx);
    }
  }

  private async scanPasids(ctx: Context): Promise<number[]> {
    const entries = 2 ** (ctx.pdts + 7);
    const [dirBytes] = await this.ctx.ram.batch([{ kind: "read", gpa: ctx.pasidDirPtr, length: entries * 8 }]);
    const dir = bytesToWords(dirBytes as Uint8Array);
    const tables: { idx: number; addr: bigint }[] = [];
    dir.forEach((w, idx) => {
      if (get([w], PASID_DIR_ENTRY.P)) tables.push({ idx, addr: get([w], PASID_DIR_ENTRY.SMPTBLPTR) << 12n });
    });
    if (tables.length === 0) return [];
    const data = await this.ctx.ram.batch(tables.map((t) => ({ kind: "read" as const, gpa: t.addr, length: 4096 })));
    const out: number[] = [];
    tables.forEach((t, i) => {
      const w = bytesToWords(data[i] as Uint8Array);
      for (let j = 0; j < 64; j++) if ((w[j * 8] as bigint) & 1n) out.push(t.idx * 64 + j);
    });
    return out;
  }

  /** Make the host attachment of (dev, pasid) follow the guest's PASID entry. */
  private async reshadow(dev: VmmDevice, pasid: number, ctx: Context): Promise<void> {
    const k = `${dev.vid}/${pasid}`;
    const cur = this.shadows.get(k);
    let want: ShadowKind;
    try {
      const r = await this.readPasidEntry(ctx, pasid);
      if (r.kind === "invalid") {
        this.recordFault({ reason: r.reason, sid: dev.vid, pasid, addr: 0n });
        want = { kind: "blocked" };
      } else want = r;
    } catch (e) {
      this.ctx.log("warn", "vVT-d: PASID entry fetch failed", { vrid: dev.vid, pasid, err: String(e) });
      want = { kind: "blocked" };
    }
    const key = shadowKey(want);
    if ((cur?.key ?? "blocked") === key) return;
    const isRid = pasid === ctx.ridPasid;
    const where = isRid ? { flags: 0, pasid: 0 } : { flags: DeviceAttachFlags.PASID, pasid };
    const oldHwpt = cur?.hwptId;
    try {
      if (want.kind === "blocked") {
        await this.ctx.client.deviceDetach({ devId: dev.devId, flags: isRid ? 0 : DeviceDetachFlags.PASID, pasid: isRid ? 0 : pasid });
        this.shadows.delete(k);
      } else if (want.kind === "pt") {
        this.ctx.counters.attaches++;
        await this.ctx.client.deviceAttach({ devId: dev.devId, ptId: dev.slice.parentHwptId, ...where });
        this.shadows.set(k, { key, state: want });
      } else {
        const fault = dev.pri && ctx.pre && this.ctx.faultId !== 0;
        const data = { flags: want.flags, pgtblAddr: want.pgtbl, addrWidth: want.addrWidth, reserved: 0 };
        this.ctx.counters.hwptAllocs++;
        const { outHwptId } = await this.ctx.client.hwptAlloc({
          flags: (dev.maxPasidLog2 > 0 ? HwptAllocFlags.PASID : 0) | (fault ? HwptAllocFlags.FAULT_ID_VALID : 0),
          devId: dev.devId,
          ptId: dev.slice.parentHwptId,
          dataType: HwptDataType.VTD_S1,
          dataLen: 24,
          data: { case: "vtdS1", value: data },
          faultId: fault ? this.ctx.faultId : 0,
        });
        this.installs.push({ vrid: dev.vid, pasid, hwptId: outHwptId, data });
        try {
          this.ctx.counters.attaches++;
          await this.ctx.client.deviceAttach({ devId: dev.devId, ptId: outHwptId, ...where });
        } catch (e) {
          await this.ctx.client.destroy({ id: outHwptId }).catch(() => undefined);
          throw e;
        }
        this.shadows.set(k, { key, state: want, hwptId: outHwptId });
      }
    } catch (e) {
      this.ctx.log("warn", "vVT-d: host refused the PASID entry", { vrid: hex(dev.vid), pasid, err: String(e) });
      this.recordFault({ reason: VTD_FR.SM_PTE_INV, sid: dev.vid, pasid: isRid ? undefined : pasid, addr: 0n });
      return;
    }
    if (oldHwpt !== undefined) await this.ctx.client.destroy({ id: oldHwpt }).catch((e: unknown) => this.ctx.log("warn", "vVT-d: destroy of the old nested HWPT failed", { oldHwpt, err: String(e) }));
    this.ctx.log("info", "vVT-d: PASID entry shadowed", { vrid: hex(dev.vid), pasid, state: key });
  }

  // ---- faults and page requests ---------------------------------------------

  /** Record a fault in the fault recording registers (§7.2.1) and raise the fault event. */
  private recordFault(r: { reason: number; sid: number; pasid?: number; addr: bigint; read?: boolean }): void {
    if (this.fsts & this.bit(FSTS_FIELDS, "PFO")) return;
    const i = this.nextFrcd;
    const slot = this.frcd[i] as bigint[];
    if ((slot[1] as bigint) >> 63n === 1n) {
      this.fsts |= this.bit(FSTS_FIELDS, "PFO");
    } else {
      const hadPending = this.frcd.some((x) => (x[1] as bigint) >> 63n === 1n);
      this.frcd[i] = encodeFaultRecord({ reason: r.reason as VtdFaultReason, sid: r.sid, addr: r.addr, ...(r.pasid !== undefined ? { pasid: r.pasid } : {}), priv: false, exe: false, type: r.read ? 1 : 0, at: 0 });
      if (!hadPending) this.fsts = (this.fsts & ~0xff00) | (i << 8);
      this.nextFrcd = (i + 1) % NFR;
    }
    if (!(this.fectl & 0x8000_0000)) this.raise("fault");
  }

  private pageGroupResponse(d: Extract<InvDesc, { type: "page-group-response" }>): void {
    const key = `${d.rid}/${d.pp ? d.pasid : "-"}/${d.prgi}`;
    const cookie = this.prqCookies.get(key);
    if (cookie === undefined) {
      this.ctx.log("warn", "vVT-d: page group response for no outstanding group", { key });
      return;
    }
    this.prqCookies.delete(key);
    this.ctx.counters.pageResponses++;
    this.ctx.pageResponse(cookie, d.rc === PRG_RESPONSE_CODE.SUCCESS ? PAGE_RESPONSE.SUCCESS : PAGE_RESPONSE.INVALID);
  }

  protected async onIopfGroup(dev: VmmDevice, group: IopfRecord[]): Promise<void> {
    this.ctx.counters.pageRequests += group.length;
    const first = group[0] as IopfRecord;
    const pp = (first.flags & PGFAULT_FLAGS.PASID_VALID) !== 0;
    const refuse = (why: string) => {
      this.ctx.log("warn", "vVT-d: page request group refused", { vrid: dev.vid, why });
      this.ctx.counters.pageResponses++;
      this.ctx.pageResponse(first.cookie, PAGE_RESPONSE.INVALID);
    };
    const pqa = [this.reg64.get(VTD_REG.PQA) ?? 0n];
    const base = get(pqa, PQA_FIELDS.PQA) << 12n;
    const size = 4096 << getNum(pqa, PQA_FIELDS.PQS);
    const ctx = this.contexts.get(dev.vid);
    if (base === 0n || !ctx?.pre) return refuse("page requests not enabled (PQA / context PRE)");
    const head = Number((this.reg64.get(VTD_REG.PQH) ?? 0n) & 0x7ffe0n);
    let tail = Number((this.reg64.get(VTD_REG.PQT) ?? 0n) & 0x7ffe0n);
    const free = (head - tail - PAGE_REQ_DESC_BYTES + 2 * size) % size / PAGE_REQ_DESC_BYTES;
    if (group.length > free) {
      this.prs |= this.bit(PRS_FIELDS, "PRO");
      if (!(this.pectl & 0x8000_0000)) this.raise("prq");
      return refuse("page request queue full");
    }
    const ops: GuestRamOp[] = [];
    group.forEach((r, i) => {
      const w = encodePageRequest({
        rid: dev.vid,
        ...(pp ? { pasid: r.pasid } : {}),
        addr: r.addr & ~0xfffn,
        read: (r.perm & PGFAULT_PERM.READ) !== 0,
        write: (r.perm & PGFAULT_PERM.WRITE) !== 0,
        exec: (r.perm & PGFAULT_PERM.EXEC) !== 0,
        priv: (r.perm & PGFAULT_PERM.PRIV) !== 0,
        prgi: r.grpid & 0x1ff,
        lpig: i === group.length - 1,
      });
      ops.push({ kind: "write", gpa: base + BigInt(tail), data: wordsToBytes(w) });
      tail = (tail + PAGE_REQ_DESC_BYTES) % size;
    });
    await this.ctx.ram.batch(ops);
    this.prqCookies.set(`${dev.vid}/${pp ? first.pasid : "-"}/${first.grpid & 0x1ff}`, first.cookie);
    this.reg64.set(VTD_REG.PQT, BigInt(tail));
    this.prs |= this.bit(PRS_FIELDS, "PPR");
    if (!(this.pectl & 0x8000_0000)) this.raise("prq");
  }

  protected async onVevent(_slice: HostSlice, _rec: VeventRecord, _lost: number): Promise<void> {
    // No vEVENTQ type exists for VT-d (uAPI §9.1): nothing arrives here.
  }
}
