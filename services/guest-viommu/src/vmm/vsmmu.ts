// The VMM's virtual SMMUv3 (QEMU's smmuv3-accel in spirit). Guest register
// writes trap here; the stream table, CD tables and the command / event /
// PRI queues live in guest RAM. The guest's stage-1 configuration reaches
// the host through iommufd:
//   - CMD_CFGI_STE / _RANGE / _ALL: re-read the vSTE; S1_TRANS → HWPT_ALLOC
//     of a nested HWPT on the vIOMMU with the vSTE's qw0/qw1 masked to the
//     fields iommufd accepts (HwptArmSmmuv3), then DeviceAttach (a replace);
//     ABORT / BYPASS / V=0 → shared abort / bypass nested HWPTs (QEMU's
//     abort_hwpt / bypass_hwpt).
//   - TLBI_NH_* / TLBI_NSNH_ALL / ATC_INV / CFGI_CD* are collected while the
//     CMDQ is consumed and go as ONE HwptInvalidate on the vIOMMU per batch
//     (flushed at CMD_SYNC, before a CFGI_STE or PRI_RESP, and at the end);
//     CMD_SYNC completes (CONS passes it) only after that RPC returned.
//   - CMD_PRI_RESP → bus.v1.PageResponse with the IOPF group's cookie.
// Host → guest: vEVENTQ records are written into the guest event queue
// (LOST_EVENTS or a sequence gap → EVENTQ_PROD.OVFLG, the guest's overflow
// indication); IOPF groups become PRI queue entries.
//
// Spec: Arm IHI 0070 §3.5, §4, §5, §6.3, §7, §8; reference/hw-formats.md
// §1.10 (what iommufd lets a guest control).
import {
  CERROR,
  CMD_BYTES,
  CR0,
  CR0_IMPLEMENTED_MASK,
  type Command,
  DEFAULT_SMMU_FEATURES,
  EVENTQ_CONS,
  EVENTQ_PROD,
  EVT_BYTES,
  GERROR,
  IDR1,
  IDR3,
  IDR5,
  IRQ_CTRL,
  L1STD,
  PRIQ_CONS,
  PRIQ_PROD,
  PRI_BYTES,
  PRI_RESP,
  SMMU_REG,
  STE,
  STE_CONFIG,
  STRTAB_BASE,
  STRTAB_BASE_CFG,
  STRTAB_FMT,
  type SmmuFeatures,
  buildIdRegisters,
  bytesToWords,
  decodeCommand,
  decodeSteFields,
  effectiveSplit,
  encodeEvent,
  encodePriEntry,
  encodeSte,
  get,
  getNum,
  mask,
  oasBits,
  qCount,
  qEmpty,
  qFull,
  qInc,
  qIndex,
  qPtr,
  queueGeometry,
  wordsToBytes,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import type { IopfRecord, VeventRecord } from "@iommufd/proto/bus";
import { HwptAllocFlags, HwptDataType, HwptInvalidateDataType, type HwptInvalidateResponse, VeventqFlag } from "@iommufd/proto/iommufd";
import type { GuestRamOp } from "../guest/ram.js";
import { hex } from "../util.js";
import { FrontEnd, type HostSlice, PAGE_RESPONSE, PGFAULT_FLAGS, PGFAULT_PERM, type VmmContext, type VmmDevice, read64Part, write64Part } from "./frontend.js";

/** STE qw0 / qw1 bits a guest may set through iommufd (Linux STRTAB_STE_{0,1}_NESTING_ALLOWED, hw-formats §1.10). */
const fieldMask = (...fs: { qw: number; hi: number; lo: number }[]) => fs.reduce((m, f) => m | mask(f.hi, f.lo), 0n);
export const VSTE_QW0_ALLOWED = fieldMask(STE.V, STE.Config, STE.S1Fmt, { qw: 0, hi: 51, lo: 6 }, STE.S1CDMax);
export const VSTE_QW1_ALLOWED = fieldMask(STE.S1DSS, STE.S1CIR, STE.S1COR, STE.S1CSH, STE.S1STALLD, STE.EATS);

const INT_MAX = 0x7fff_ffff;
const REG64 = new Set<number>([SMMU_REG.STRTAB_BASE, SMMU_REG.CMDQ_BASE, SMMU_REG.EVENTQ_BASE, SMMU_REG.PRIQ_BASE, SMMU_REG.GERROR_IRQ_CFG0, SMMU_REG.EVENTQ_IRQ_CFG0, SMMU_REG.PRIQ_IRQ_CFG0]);
/** Page-0 aliases of the page-1 queue pointers. */
const ALIAS: Record<number, number> = { 0xa8: SMMU_REG.EVENTQ_PROD, 0xac: SMMU_REG.EVENTQ_CONS, 0xc8: SMMU_REG.PRIQ_PROD, 0xcc: SMMU_REG.PRIQ_CONS };

export interface VSmmuOptions {
  /** Advertise range invalidation (IDR3.RIL); default: what the host SMMU has, else true. */
  ril?: boolean;
  /** log2 of the largest queues the guest may configure (IDR1.CMDQS / EVENTQS / PRIQS). */
  queueLog2?: number;
  /** IDR1.SIDSIZE. */
  sidBits?: number;
}

interface PendingCmd {
  words: [bigint, bigint];
  ptr: number;
}

export class VSmmu extends FrontEnd {
  readonly vendor = "smmuv3" as const;
  readonly features: SmmuFeatures;
  private readonly idr: ReturnType<typeof buildIdRegisters>;
  private cr0 = 0;
  private cr1 = 0;
  private cr2 = 0;
  private gbpa = 0;
  private irqCtrl = 0;
  private gerror = 0;
  private gerrorn = 0;
  private strtabBaseCfg = 0;
  private cmdqProd = 0;
  private cmdqCons = 0;
  private cmdqErrorPending = false;
  private eventqProd = 0;
  private eventqCons = 0;
  private priqProd = 0;
  private priqCons = 0;
  private readonly reg64 = new Map<number, bigint>();
  private readonly misc = new Map<number, number>();
  /** Installed configuration per vSID ("abort", "bypass", "s1:<qw0>:<qw1>"). */
  private readonly steKeys = new Map<number, string>();
  /** The nested HWPT each vSID owns (shared abort / bypass ones are not owned). */
  private readonly ownHwpt = new Map<number, number>();
  private readonly sharedHwpt = new Map<string, number>();
  /** Outstanding PRI groups: "<vsid>/<ssid|->/<prgi>" → cookie. */
  private readonly priCookies = new Map<string, number>();
  /** HwptAlloc data of every nested HWPT allocated (tests read it). */
  readonly installs: { vsid: number; hwptId: number; ste: [bigint, bigint] }[] = [];
  /** Commands sent to the host per HwptInvalidate call (tests read it). */
  readonly invalidateBatches: { viommuId: number; cmds: [bigint, bigint][] }[] = [];

  constructor(ctx: VmmContext, opts: VSmmuOptions = {}) {
    super(ctx);
    const info = ctx.slices[0]?.hwInfo;
    const hostIdr = info?.idr;
    const hostIdr1 = hostIdr ? [BigInt(hostIdr[1] ?? 0)] : undefined;
    const hostIdr3 = hostIdr ? [BigInt(hostIdr[3] ?? 0)] : undefined;
    const hostIdr5 = hostIdr ? [BigInt(hostIdr[5] ?? 0)] : undefined;
    const q = opts.queueLog2 ?? 10;
    const hostSsid = hostIdr1 ? getNum(hostIdr1, IDR1.SSIDSIZE) : 20;
    this.features = {
      ...DEFAULT_SMMU_FEATURES,
      stage1: true,
      stage2: false,
      ats: ctx.devices.some((d) => d.ats),
      pri: ctx.devices.some((d) => d.pri),
      ssidBits: Math.min(20, hostSsid || 20, Math.max(0, ...ctx.devices.map((d) => d.maxPasidLog2))),
      sidBits: opts.sidBits ?? 16,
      rangeInvalidation: opts.ril ?? (hostIdr3 ? getNum(hostIdr3, IDR3.RIL) === 1 : true),
      httu: 0,
      twoLevelStreamTable: true,
      twoLevelCdTable: true,
      asid16: true,
      vmid16: false,
      gran4K: true,
      gran16K: false,
      gran64K: false,
      oas: Math.min(48, hostIdr5 && getNum(hostIdr5, IDR5.OAS) ? oasBits(getNum(hostIdr5, IDR5.OAS)) : 48),
      stallModel: 1,
      had: false,
      fwb: false,
      cmdqs: q,
      eventqs: q,
      priqs: q,
      ns1ats: false,
    };
    this.idr = buildIdRegisters(this.features);
  }

  /** The HWPT the device of `vsid` is attached to (0 = none yet). */
  attachedHwpt(vsid: number): number {
    const own = this.ownHwpt.get(vsid);
    if (own !== undefined) return own;
    const key = this.steKeys.get(vsid);
    const dev = this.deviceByVid(vsid);
    return key && dev ? (this.sharedHwpt.get(`${dev.slice.iommuId}/${key}`) ?? 0) : 0;
  }

  /** The guest's STE config for `vsid` as installed ("abort", "bypass", "s1:..."). */
  steConfig(vsid: number): string | undefined {
    return this.steKeys.get(vsid);
  }

  // ---- registers ---------------------------------------------------------

  protected readReg(offset: number, size: 4 | 8): bigint {
    const off = ALIAS[offset] ?? offset;
    for (const base of REG64) if (off === base || off === base + 4) return read64Part(this.reg64.get(base) ?? 0n, off, base, size);
    const v = (n: number) => BigInt(n >>> 0);
    switch (off) {
      case SMMU_REG.IDR0:
        return v(this.idr.IDR0);
      case SMMU_REG.IDR1:
        return v(this.idr.IDR1);
      case SMMU_REG.IDR2:
        return v(this.idr.IDR2);
      case SMMU_REG.IDR3:
        return v(this.idr.IDR3);
      case SMMU_REG.IDR4:
        return v(this.idr.IDR4);
      case SMMU_REG.IDR5:
        return v(this.idr.IDR5);
      case SMMU_REG.IIDR:
        return v(this.idr.IIDR);
      case SMMU_REG.AIDR:
        return v(this.idr.AIDR);
      case SMMU_REG.CR0:
      case SMMU_REG.CR0ACK:
        return v(this.cr0);
      case SMMU_REG.CR1:
        return v(this.cr1);
      case SMMU_REG.CR2:
        return v(this.cr2);
      case SMMU_REG.GBPA:
        return v(this.gbpa);
      case SMMU_REG.IRQ_CTRL:
      case SMMU_REG.IRQ_CTRLACK:
        return v(this.irqCtrl);
      case SMMU_REG.GERROR:
        return v(this.gerror);
      case SMMU_REG.GERRORN:
        return v(this.gerrorn);
      case SMMU_REG.STRTAB_BASE_CFG:
        return v(this.strtabBaseCfg);
      case SMMU_REG.CMDQ_PROD:
        return v(this.cmdqProd);
      case SMMU_REG.CMDQ_CONS:
        return v(this.cmdqCons);
      case SMMU_REG.EVENTQ_PROD:
        return v(this.eventqProd);
      case SMMU_REG.EVENTQ_CONS:
        return v(this.eventqCons);
      case SMMU_REG.PRIQ_PROD:
        return v(this.priqProd);
      case SMMU_REG.PRIQ_CONS:
        return v(this.priqCons);
      default:
        return v(this.misc.get(off) ?? 0);
    }
  }

  protected async writeReg(offset: number, value: bigint, size: 4 | 8): Promise<void> {
    const off = ALIAS[offset] ?? offset;
    for (const base of REG64) {
      if (off === base || off === base + 4) {
        this.reg64.set(base, write64Part(this.reg64.get(base) ?? 0n, off, base, value, size));
        return;
      }
    }
    const v = Number(value & 0xffff_ffffn) >>> 0;
    switch (off) {
      case SMMU_REG.CR0: {
        const was = this.cr0;
        this.cr0 = v & CR0_IMPLEMENTED_MASK;
        const on = (f: typeof CR0.CMDQEN) => get([BigInt(this.cr0)], f) === 1n && get([BigInt(was)], f) === 0n;
        if (on(CR0.CMDQEN)) this.ctx.log("debug", "vSMMU command queue enabled");
        if (this.cmdqEnabled() && !qEmpty(this.cmdqProd, this.cmdqCons, this.cmdqLog2())) await this.processCmdq();
        return;
      }
      case SMMU_REG.CR1:
        this.cr1 = v;
        return;
      case SMMU_REG.CR2:
        this.cr2 = v;
        return;
      case SMMU_REG.GBPA:
        this.gbpa = v & 0x7fff_ffff; // UPDATE completes at once
        return;
      case SMMU_REG.IRQ_CTRL:
        this.irqCtrl = v & 7;
        return;
      case SMMU_REG.GERRORN: {
        this.gerrorn = v;
        const cmdqErr = Number(mask(GERROR.CMDQ_ERR.hi, GERROR.CMDQ_ERR.lo));
        if (this.cmdqErrorPending && ((this.gerror ^ this.gerrorn) & cmdqErr) === 0) {
          // The guest acknowledged the command error: clear CONS.ERR and go on from CONS (§7.1).
          this.cmdqErrorPending = false;
          this.cmdqCons = qPtr(this.cmdqCons, this.cmdqLog2());
          if (this.cmdqEnabled()) await this.processCmdq();
        }
        return;
      }
      case SMMU_REG.STRTAB_BASE_CFG:
        this.strtabBaseCfg = v;
        return;
      case SMMU_REG.CMDQ_PROD:
        this.cmdqProd = v & ((2 << this.features.cmdqs) - 1);
        if (this.cmdqEnabled()) await this.processCmdq();
        return;
      case SMMU_REG.CMDQ_CONS:
        if (!this.cmdqEnabled()) this.cmdqCons = v;
        return;
      case SMMU_REG.EVENTQ_PROD:
        if (!this.flag(CR0.EVENTQEN)) this.eventqProd = v;
        return;
      case SMMU_REG.EVENTQ_CONS:
        this.eventqCons = v;
        return;
      case SMMU_REG.PRIQ_PROD:
        if (!this.flag(CR0.PRIQEN)) this.priqProd = v;
        return;
      case SMMU_REG.PRIQ_CONS:
        this.priqCons = v;
        return;
      default:
        this.misc.set(off, v);
    }
  }

  private flag(f: typeof CR0.CMDQEN): boolean {
    return get([BigInt(this.cr0)], f) === 1n;
  }

  private cmdqEnabled(): boolean {
    return this.flag(CR0.CMDQEN) && !this.cmdqErrorPending;
  }

  private cmdqLog2(): number {
    return queueGeometry(this.reg64.get(SMMU_REG.CMDQ_BASE) ?? 0n, CMD_BYTES, this.features.cmdqs).log2size;
  }

  // ---- command queue -----------------------------------------------------

  private async readEntries(base: bigint, log2: number, from: number, n: number, bytes: number): Promise<bigint[][]> {
    if (n === 0) return [];
    const size = 1 << log2;
    const start = qIndex(from, log2);
    const first = Math.min(n, size - start);
    const ops: GuestRamOp[] = [{ kind: "read", gpa: base + BigInt(start * bytes), length: first * bytes }];
    if (n > first) ops.push({ kind: "read", gpa: base, length: (n - first) * bytes });
    const words = (await this.ctx.ram.batch(ops)).flatMap((d) => bytesToWords(d));
    const per = bytes / 8;
    return Array.from({ length: n }, (_, i) => words.slice(i * per, i * per + per));
  }

  /** Consume the guest CMDQ from CONS to PROD (the trap of a CMDQ_PROD write runs to the end, as QEMU's does). */
  private async processCmdq(): Promise<void> {
    const g = queueGeometry(this.reg64.get(SMMU_REG.CMDQ_BASE) ?? 0n, CMD_BYTES, this.features.cmdqs);
    const log2 = g.log2size;
    let cons = qPtr(this.cmdqCons, log2);
    const prod = qPtr(this.cmdqProd, log2);
    const n = qCount(prod, cons, log2);
    if (n === 0) return;
    let entries: bigint[][];
    try {
      entries = await this.readEntries(g.base, log2, cons, n, CMD_BYTES);
    } catch (e) {
      this.cmdqError(cons, CERROR.ABT, `CMDQ fetch failed: ${String(e)}`);
      return;
    }
    const pending = new Map<HostSlice, PendingCmd[]>();
    for (const w of entries) {
      const ptr = cons;
      const d = decodeCommand(w, this.features);
      if (!d.ok) {
        if (!(await this.flush(pending, ptr))) return;
        this.cmdqError(ptr, CERROR.ILL, d.reason);
        return;
      }
      const c = d.cmd;
      const words: [bigint, bigint] = [w[0] as bigint, w[1] as bigint];
      switch (c.name) {
        case "TLBI_NH_ALL":
        case "TLBI_NH_ASID":
        case "TLBI_NH_VA":
        case "TLBI_NH_VAA":
        case "TLBI_NSNH_ALL":
          // ASID-tagged: every vIOMMU of the VM may hold entries for it.
          for (const s of this.ctx.slices) if (s.viommuId) this.queue(pending, s, words, ptr);
          break;
        case "ATC_INV":
        case "CFGI_CD":
        case "CFGI_CD_ALL": {
          const dev = this.deviceByVid(c.StreamID);
          if (dev?.slice.viommuId) this.queue(pending, dev.slice, words, ptr);
          else this.ctx.log("debug", "vSMMU: command for a StreamID with no device dropped", { cmd: c.name, vsid: c.StreamID });
          break;
        }
        case "CFGI_STE":
        case "CFGI_STE_RANGE":
          if (!(await this.flush(pending, ptr))) return;
          await this.configInvalidate(c);
          break;
        case "PRI_RESP":
          if (!(await this.flush(pending, ptr))) return;
          this.priResponse(c);
          break;
        case "SYNC":
          if (!(await this.flush(pending, ptr))) return;
          break;
        default:
          // PREFETCH_*: hints, nothing to do.
          break;
      }
      cons = qInc(cons, log2);
    }
    if (!(await this.flush(pending, prod))) return;
    this.cmdqCons = prod;
  }

  private queue(pending: Map<HostSlice, PendingCmd[]>, slice: HostSlice, words: [bigint, bigint], ptr: number): void {
    let l = pending.get(slice);
    if (!l) pending.set(slice, (l = []));
    l.push({ words, ptr });
  }

  /** One HwptInvalidate per vIOMMU for the commands collected so far. False when it failed (CMDQ error raised). */
  private async flush(pending: Map<HostSlice, PendingCmd[]>, syncPtr: number): Promise<boolean> {
    for (const [slice, cmds] of pending) {
      pending.delete(slice);
      this.ctx.counters.hwptInvalidateCalls++;
      this.ctx.counters.hwptInvalidateEntries += cmds.length;
      this.invalidateBatches.push({ viommuId: slice.viommuId, cmds: cmds.map((c) => c.words) });
      try {
        await this.ctx.client.hwptInvalidate({
          hwptId: slice.viommuId,
          dataType: HwptInvalidateDataType.ARM_SMMUV3,
          entryLen: 16,
          entryNum: cmds.length,
          entries: cmds.map((c) => ({ entry: { case: "armSmmuv3" as const, value: { cmd: c.words } } })),
        });
      } catch (e) {
        const err = e instanceof ErrnoError ? e : new ErrnoError("EIO", String(e));
        const handled = (err.response as HwptInvalidateResponse | undefined)?.entryNum ?? 0;
        const failing = cmds[Math.min(handled, cmds.length - 1)] as PendingCmd;
        this.ctx.log("warn", "vSMMU: HWPT_INVALIDATE failed", { errno: err.errno, msg: err.message, handled, of: cmds.length });
        // An ATC invalidation that timed out is reported at the CMD_SYNC (CERROR_ATC_INV_SYNC), anything else at the command.
        if (err.errno === "ETIMEDOUT") this.cmdqError(syncPtr, CERROR.ATC_INV_SYNC, err.message);
        else this.cmdqError(failing.ptr, CERROR.ILL, `${err.errno}: ${err.message}`);
        return false;
      }
    }
    return true;
  }

  /** Stop at `ptr` with CONS.ERR and raise GERROR.CMDQ_ERR (§7.1). */
  private cmdqError(ptr: number, err: number, why: string): void {
    const log2 = this.cmdqLog2();
    this.cmdqCons = (qPtr(ptr, log2) | (err << 24)) >>> 0;
    this.cmdqErrorPending = true;
    const bit = Number(mask(GERROR.CMDQ_ERR.hi, GERROR.CMDQ_ERR.lo));
    this.gerror = ((this.gerrorn & bit) ^ bit) | (this.gerror & ~bit);
    this.ctx.log("warn", "vSMMU: command queue error", { err, ptr, why });
    if (get([BigInt(this.irqCtrl)], IRQ_CTRL.GERROR_IRQEN)) this.raise("gerror");
  }

  // ---- STE installs --------------------------------------------------------

  private async configInvalidate(c: Extract<Command, { name: "CFGI_STE" | "CFGI_STE_RANGE" }>): Promise<void> {
    let vsids: number[];
    if (c.name === "CFGI_STE") vsids = [c.StreamID];
    else if (c.Range >= 31) vsids = this.ctx.devices.map((d) => d.vid);
    else {
      const span = 2 ** (c.Range + 1);
      const first = c.StreamID - (c.StreamID % span);
      vsids = this.ctx.devices.map((d) => d.vid).filter((v) => v >= first && v < first + span);
    }
    for (const v of vsids) await this.installSte(v);
  }

  /** Read the guest's STE for `vsid` (linear or 2-level stream table); undefined when it does not exist. */
  private async fetchVste(vsid: number): Promise<bigint[] | undefined> {
    const base = get([this.reg64.get(SMMU_REG.STRTAB_BASE) ?? 0n], STRTAB_BASE.ADDR) << 6n;
    const cfg = [BigInt(this.strtabBaseCfg)];
    const log2size = Math.min(getNum(cfg, STRTAB_BASE_CFG.LOG2SIZE), this.features.sidBits);
    if (vsid >= 2 ** log2size || base === 0n) return undefined;
    let steAddr: bigint;
    if (getNum(cfg, STRTAB_BASE_CFG.FMT) === STRTAB_FMT.TWO_LEVEL) {
      const split = effectiveSplit(getNum(cfg, STRTAB_BASE_CFG.SPLIT));
      const [l1] = await this.ctx.ram.batch([{ kind: "read", gpa: base + BigInt(vsid >>> split) * 8n, length: 8 }]);
      const desc = bytesToWords(l1 as Uint8Array);
      const span = getNum(desc, L1STD.Span);
      const idx = vsid & ((1 << split) - 1);
      if (span === 0 || idx >= 2 ** (span - 1)) return undefined;
      steAddr = (get(desc, L1STD.L2Ptr) << 6n) + BigInt(idx) * 64n;
    } else {
      steAddr = (base & ~((1n << BigInt(log2size + 6)) - 1n)) + BigInt(vsid) * 64n;
    }
    const [ste] = await this.ctx.ram.batch([{ kind: "read", gpa: steAddr, length: 64 }]);
    return bytesToWords(ste as Uint8Array);
  }

  private async sharedNested(dev: VmmDevice, kind: "abort" | "bypass"): Promise<number> {
    const key = `${dev.slice.iommuId}/${kind}`;
    let id = this.sharedHwpt.get(key);
    if (id === undefined) {
      const w = encodeSte({ V: 1, Config: kind === "abort" ? STE_CONFIG.ABORT : STE_CONFIG.BYPASS });
      id = await this.allocNested(dev, [w[0] as bigint, 0n], false);
      this.sharedHwpt.set(key, id);
    }
    return id;
  }

  private async allocNested(dev: VmmDevice, ste: [bigint, bigint], fault: boolean): Promise<number> {
    const withFault = fault && this.ctx.faultId !== 0;
    this.ctx.counters.hwptAllocs++;
    const r = await this.ctx.client.hwptAlloc({
      flags: withFault ? HwptAllocFlags.FAULT_ID_VALID : 0,
      devId: dev.devId,
      ptId: dev.slice.viommuId,
      dataType: HwptDataType.ARM_SMMUV3,
      dataLen: 16,
      data: { case: "armSmmuv3", value: { ste } },
      faultId: withFault ? this.ctx.faultId : 0,
    });
    return r.outHwptId;
  }

  /** Turn the guest's STE into a nested HWPT attached to the device (QEMU smmuv3_accel_install_nested_ste). */
  private async installSte(vsid: number): Promise<void> {
    const dev = this.deviceByVid(vsid);
    if (!dev) return;
    let words: bigint[] | undefined;
    try {
      words = await this.fetchVste(vsid);
    } catch (e) {
      this.ctx.log("warn", "vSMMU: STE fetch failed", { vsid, err: String(e) });
    }
    const f = words ? decodeSteFields(words) : undefined;
    let key: string;
    let ste: [bigint, bigint] | undefined;
    let bad = false;
    if (!f || !f.V || f.Config === STE_CONFIG.ABORT) key = "abort";
    else if (f.Config === STE_CONFIG.BYPASS) key = "bypass";
    else if (f.Config === STE_CONFIG.S1_TRANS) {
      const w = words as bigint[];
      ste = [(w[0] as bigint) & VSTE_QW0_ALLOWED, (w[1] as bigint) & VSTE_QW1_ALLOWED];
      if ((w[0] as bigint) !== ste[0] || (w[1] as bigint) !== ste[1]) this.ctx.log("debug", "vSMMU: vSTE bits outside the nesting set ignored", { vsid });
      key = `s1:${ste[0].toString(16)}:${ste[1].toString(16)}`;
    } else {
      key = "abort";
      bad = true;
    }
    if (this.steKeys.get(vsid) === key && !bad) return;
    let hwpt: number;
    let owned = false;
    try {
      if (ste) {
        hwpt = await this.allocNested(dev, ste, dev.pri);
        owned = true;
        this.installs.push({ vsid, hwptId: hwpt, ste });
      } else {
        hwpt = await this.sharedNested(dev, key as "abort" | "bypass");
      }
    } catch (e) {
      this.ctx.log("warn", "vSMMU: nested HWPT refused; STE treated as abort", { vsid, err: String(e) });
      bad = true;
      hwpt = await this.sharedNested(dev, "abort");
      key = "abort";
    }
    try {
      this.ctx.counters.attaches++;
      await this.ctx.client.deviceAttach({ devId: dev.devId, ptId: hwpt, flags: 0, pasid: 0 });
    } catch (e) {
      this.ctx.log("warn", "vSMMU: attach failed", { vsid, hwpt, err: String(e) });
      if (owned) await this.ctx.client.destroy({ id: hwpt }).catch(() => undefined);
      await this.injectEvent(encodeEvent({ type: "C_BAD_STE", StreamID: vsid, SSV: false }));
      return;
    }
    const old = this.ownHwpt.get(vsid);
    if (old !== undefined && old !== hwpt) await this.ctx.client.destroy({ id: old }).catch((e: unknown) => this.ctx.log("warn", "vSMMU: destroy of the old nested HWPT failed", { old, err: String(e) }));
    if (owned) this.ownHwpt.set(vsid, hwpt);
    else this.ownHwpt.delete(vsid);
    this.steKeys.set(vsid, key);
    this.ctx.log("info", "vSMMU: vSTE installed", { vsid: hex(vsid), config: key, hwpt });
    if (bad) await this.injectEvent(encodeEvent({ type: "C_BAD_STE", StreamID: vsid, SSV: false }));
  }

  // ---- PRI ----------------------------------------------------------------

  private priResponse(c: Extract<Command, { name: "PRI_RESP" }>): void {
    const key = `${c.StreamID}/${c.SSV ? c.SubstreamID : "-"}/${c.PRGIndex}`;
    let cookie = this.priCookies.get(key);
    if (cookie === undefined && !c.SSV) {
      // A response without SSV for a PASID group (PRG Response PASID Required = 0): match on vSID + PRGI.
      for (const [k, v] of this.priCookies) {
        if (k.startsWith(`${c.StreamID}/`) && k.endsWith(`/${c.PRGIndex}`)) {
          cookie = v;
          this.priCookies.delete(k);
          break;
        }
      }
    } else this.priCookies.delete(key);
    if (cookie === undefined) {
      this.ctx.log("warn", "vSMMU: PRI_RESP for no outstanding group", { key });
      return;
    }
    this.ctx.counters.pageResponses++;
    this.ctx.pageResponse(cookie, c.Resp === PRI_RESP.SUCCESS ? PAGE_RESPONSE.SUCCESS : PAGE_RESPONSE.INVALID);
  }

  protected async onIopfGroup(dev: VmmDevice, group: IopfRecord[]): Promise<void> {
    this.ctx.counters.pageRequests += group.length;
    const first = group[0] as IopfRecord;
    const ssv = (first.flags & PGFAULT_FLAGS.PASID_VALID) !== 0;
    const refuse = (why: string) => {
      this.ctx.log("warn", "vSMMU: page request group refused", { vsid: dev.vid, why });
      this.ctx.counters.pageResponses++;
      this.ctx.pageResponse(first.cookie, PAGE_RESPONSE.INVALID);
    };
    const base = this.reg64.get(SMMU_REG.PRIQ_BASE) ?? 0n;
    if (!this.flag(CR0.PRIQEN) || base === 0n) return refuse("PRI queue disabled");
    const g = queueGeometry(base, PRI_BYTES, this.features.priqs);
    const free = (1 << g.log2size) - qCount(this.priqProd, this.priqCons, g.log2size);
    if (group.length > free) {
      this.overflow("priq");
      return refuse("PRI queue full");
    }
    const ops: GuestRamOp[] = [];
    let prod = this.priqProd;
    group.forEach((r, i) => {
      const w = encodePriEntry({
        StreamID: dev.vid,
        SSV: ssv,
        SubstreamID: ssv ? r.pasid : 0,
        Priv: (r.perm & PGFAULT_PERM.PRIV) !== 0,
        Exec: (r.perm & PGFAULT_PERM.EXEC) !== 0,
        Read: (r.perm & PGFAULT_PERM.READ) !== 0,
        Write: (r.perm & PGFAULT_PERM.WRITE) !== 0,
        Last: i === group.length - 1,
        PRGIndex: r.grpid & 0x1ff,
        Addr: r.addr & ~0xfffn,
      });
      ops.push({ kind: "write", gpa: g.base + BigInt(qIndex(prod, g.log2size) * PRI_BYTES), data: wordsToBytes(w) });
      prod = qInc(prod, g.log2size);
    });
    await this.ctx.ram.batch(ops);
    this.priCookies.set(`${dev.vid}/${ssv ? first.pasid : "-"}/${first.grpid & 0x1ff}`, first.cookie);
    this.priqProd = prod;
    if (get([BigInt(this.irqCtrl)], IRQ_CTRL.PRIQ_IRQEN)) this.raise("priq");
  }

  // ---- events -------------------------------------------------------------

  /** Signal a queue overflow: toggle PROD.OVFLG unless one is already unacknowledged (§7.4). */
  private overflow(q: "evtq" | "priq"): void {
    if (q === "evtq") {
      const ov = getNum([BigInt(this.eventqProd)], EVENTQ_PROD.OVFLG);
      const ack = getNum([BigInt(this.eventqCons)], EVENTQ_CONS.OVACKFLG);
      if (ov === ack) this.eventqProd = (this.eventqProd ^ 0x8000_0000) >>> 0;
      if (get([BigInt(this.irqCtrl)], IRQ_CTRL.EVENTQ_IRQEN)) this.raise("evtq");
    } else {
      const ov = getNum([BigInt(this.priqProd)], PRIQ_PROD.OVFLG);
      const ack = getNum([BigInt(this.priqCons)], PRIQ_CONS.OVACKFLG);
      if (ov === ack) this.priqProd = (this.priqProd ^ 0x8000_0000) >>> 0;
      if (get([BigInt(this.irqCtrl)], IRQ_CTRL.PRIQ_IRQEN)) this.raise("priq");
    }
  }

  /** Write one event record into the guest event queue (or overflow). Caller holds the lock. */
  private async injectEvent(words: readonly bigint[]): Promise<void> {
    const base = this.reg64.get(SMMU_REG.EVENTQ_BASE) ?? 0n;
    if (!this.flag(CR0.EVENTQEN) || base === 0n) {
      this.ctx.log("debug", "vSMMU: event dropped, event queue disabled");
      return;
    }
    const g = queueGeometry(base, EVT_BYTES, this.features.eventqs);
    if (qFull(this.eventqProd, this.eventqCons, g.log2size)) {
      this.overflow("evtq");
      return;
    }
    await this.ctx.ram.batch([{ kind: "write", gpa: g.base + BigInt(qIndex(this.eventqProd, g.log2size) * EVT_BYTES), data: wordsToBytes(words) }]);
    this.eventqProd = qInc(this.eventqProd, g.log2size);
    this.ctx.counters.guestEventsInjected++;
    if (get([BigInt(this.irqCtrl)], IRQ_CTRL.EVENTQ_IRQEN)) this.raise("evtq");
  }

  protected async onVevent(_slice: HostSlice, rec: VeventRecord, lost: number): Promise<void> {
    if (lost > 0 || rec.flags & VeventqFlag.LOST_EVENTS) this.overflow("evtq");
    if (rec.payload.length === 4) await this.injectEvent(rec.payload);
  }
}

export { INT_MAX as VEVENT_SEQ_MAX };
