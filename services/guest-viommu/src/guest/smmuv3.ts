// The guest's Arm SMMUv3 driver (Linux arm-smmu-v3 in miniature). It knows
// only the SMMU's registers and what it keeps in guest RAM: the stream table
// (2-level, SPLIT 8, when IDR0.ST_LEVEL allows), a linear CD table per
// device, the command queue (kernel memory), and the event and PRI queues
// (written by the SMMU, read here). Stage-1 page tables are Arm VMSAv8-64
// 4 KiB / 48-bit (pgtable.ts).
//
// Ordering (DESIGN §3): every table / queue change is written to guest RAM
// in one batch and the batch is awaited before CMDQ_PROD is written; a
// submission always ends with CMD_SYNC and waits until CMDQ_CONS passes it.
//
// Spec: Arm IHI 0070 §3.5 (queues), §4 (commands), §5 (STE, CD), §6.3
// (registers), §7 (events), §8 (PRI); reference/hw-formats.md §1.
import {
  ARM_LPAE_MAIR,
  ATC_INV_SIZE_ALL,
  CERROR,
  CMDQ_CONS,
  CMD_BYTES,
  CR0,
  type Command,
  EVENTQ_CONS,
  EVENTQ_PROD,
  EVT_BYTES,
  GERROR,
  IDR0,
  IDR1,
  IDR3,
  IDR5,
  IRQ_CTRL,
  PRIQ_CONS,
  PRIQ_PROD,
  PRI_BYTES,
  PRI_RESP,
  Q_BASE,
  SMMU_REG,
  STE_CONFIG,
  STE_EATS,
  STE_S1DSS,
  STE_S1FMT,
  STRTAB_BASE,
  STRTAB_BASE_CFG,
  STRTAB_FMT,
  armTlbiEncodeRange,
  bytesToWords,
  cmd,
  decodeCommand,
  decodeEvent,
  decodePriEntry,
  encodeCd,
  encodeCommand,
  encodeL1Std,
  encodeSte,
  get,
  getNum,
  isPriStopMarker,
  oasBits,
  oasEncoding,
  pack,
  qCount,
  qInc,
  qIndex,
  qPtr,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import { Mutex, fls, hex, sleep } from "../util.js";
import type { Domain, DomainUser, DriverCallbacks, GuestDevice, GuestIommuDriver, IssuedInvalidation, PageRequestRecord } from "./iommu.js";
import type { KernelMemory, PhysAllocator, TableAllocator } from "./kmem.js";
import type { IrqLine, VirtualIommuPort } from "./port.js";
import type { GuestRamOp } from "./ram.js";

/** log2 of the queue sizes the driver asks for (capped by IDR1). */
const CMDQ_LOG2 = 10;
const EVTQ_LOG2 = 7;
const PRIQ_LOG2 = 8;
/** 2-level stream table split (Linux STRTAB_SPLIT). */
const STRTAB_SPLIT = 8;
const STE_BYTES = 64n;
const CD_BYTES = 64n;
/** Largest linear CD table this driver builds: 2^8 SSIDs. */
const MAX_CD_BITS = 8;
/** Without range invalidation, ranges above this many pages use TLBI_NH_ASID. */
const TLBI_MAX_PAGES = 256;

interface Features {
  ats: boolean;
  pri: boolean;
  twoLevelStrtab: boolean;
  sidBits: number;
  ssidBits: number;
  ril: boolean;
  oas: number;
  cmdqs: number;
  eventqs: number;
  priqs: number;
}

interface Queue {
  base: bigint;
  log2: number;
  /** Producer (CMDQ) or consumer (EVTQ, PRIQ) shadow, with the wrap bit (and OVACKFLG). */
  ptr: number;
}

interface DeviceCfg {
  cdBase: bigint;
  cdBits: number;
  attachedOnce: boolean;
  livePasids: Set<number>;
}

function tlbiText(c: Command): string {
  if (c.name === "ATC_INV") return `ATC_INV sid ${hex(c.StreamID)}${c.SSV ? ` ssid ${c.SubstreamID}` : ""} addr ${hex(c.Addr)} size 2^${c.Size} pages`;
  if (c.name === "SYNC") return "SYNC";
  if (c.name === "CFGI_STE") return `CFGI_STE sid ${hex(c.StreamID)}`;
  if (c.name === "CFGI_CD") return `CFGI_CD sid ${hex(c.StreamID)} ssid ${c.SubstreamID}`;
  if (c.name === "PRI_RESP") return `PRI_RESP sid ${hex(c.StreamID)} prgi ${c.PRGIndex} resp ${c.Resp}`;
  if ("ASID" in c) return `${c.name} asid ${c.ASID} addr ${hex(c.Addr)} leaf ${c.Leaf ? 1 : 0} tg ${c.TG} num ${c.NUM} scale ${c.SCALE}`;
  return c.name;
}

export class SmmuV3GuestDriver implements GuestIommuDriver {
  readonly vendor = "smmuv3" as const;
  readonly pgtableFormat = "arm-s1" as const;
  outputBits = 48;
  private feat!: Features;
  private cmdq!: Queue;
  private evtq!: Queue;
  private priq?: Queue;
  private strtab!: { base: bigint; twoLevel: boolean; l2: Map<number, bigint> };
  private cr0 = 0;
  private readonly devices = new Map<number, DeviceCfg>();
  private readonly cmdqLock = new Mutex();
  private readonly evtqLock = new Mutex();
  private readonly priqLock = new Mutex();
  private readonly asids = new Set<number>();
  private readonly pasids = new Set<number>();
  /** PRI groups being assembled across PRIQ drains. */
  private readonly partialGroups = new Map<string, PageRequestRecord[]>();
  /** Commands the SMMU refused (CMDQ_CONS.ERR), kept for tests and logs. */
  readonly cmdqErrors: { error: number; words: bigint[] }[] = [];

  constructor(
    private readonly port: VirtualIommuPort,
    private readonly kmem: KernelMemory,
    private readonly tables: TableAllocator,
    private readonly phys: PhysAllocator,
    private readonly cb: DriverCallbacks,
  ) {}

  private async r32(off: number): Promise<number> {
    return Number((await this.port.mmio.read(off, 4)) & 0xffff_ffffn);
  }

  private w32(off: number, v: number): Promise<void> {
    return this.port.mmio.write(off, BigInt(v >>> 0), 4);
  }

  private w64(off: number, v: bigint): Promise<void> {
    return this.port.mmio.write(off, v, 8);
  }

  private async ram(ops: GuestRamOp[]): Promise<void> {
    if (ops.length > 0) await this.port.ram.batch(ops);
  }

  /** Write CR0 and wait for CR0ACK (§6.3.9). */
  private async writeCr0(v: number): Promise<void> {
    await this.w32(SMMU_REG.CR0, v);
    for (let i = 0; i < 1000; i++) {
      if ((await this.r32(SMMU_REG.CR0ACK)) === v) {
        this.cr0 = v;
        return;
      }
      await sleep(1);
    }
    throw new ErrnoError("ETIMEDOUT", `CR0ACK did not follow CR0 = ${hex(v)}`);
  }

  private allocOwned(bytes: bigint): bigint {
    const r = this.phys.alloc(bytes);
    if (!r) throw new ErrnoError("ENOMEM", "guest out of memory for IOMMU structures");
    this.kmem.own(r.gpa, r.bytes, r.fresh);
    return r.gpa;
  }

  async probe(): Promise<void> {
    const idr0 = [BigInt(await this.r32(SMMU_REG.IDR0))];
    const idr1 = [BigInt(await this.r32(SMMU_REG.IDR1))];
    const idr3 = [BigInt(await this.r32(SMMU_REG.IDR3))];
    const idr5 = [BigInt(await this.r32(SMMU_REG.IDR5))];
    if (getNum(idr0, IDR0.S1P) !== 1) throw new ErrnoError("ENODEV", "SMMU without stage 1");
    if (getNum(idr5, IDR5.GRAN4K) !== 1) throw new ErrnoError("ENODEV", "SMMU without 4K granule");
    this.feat = {
      ats: getNum(idr0, IDR0.ATS) === 1,
      pri: getNum(idr0, IDR0.PRI) === 1,
      twoLevelStrtab: getNum(idr0, IDR0.ST_LEVEL) === 1,
      sidBits: getNum(idr1, IDR1.SIDSIZE),
      ssidBits: getNum(idr1, IDR1.SSIDSIZE),
      ril: getNum(idr3, IDR3.RIL) === 1,
      oas: oasBits(getNum(idr5, IDR5.OAS)),
      cmdqs: getNum(idr1, IDR1.CMDQS),
      eventqs: getNum(idr1, IDR1.EVENTQS),
      priqs: getNum(idr1, IDR1.PRIQS),
    };
    this.outputBits = Math.min(this.feat.oas, 48);
    await this.writeCr0(0);

    const cmdqLog2 = Math.min(CMDQ_LOG2, this.feat.cmdqs);
    this.cmdq = { base: this.allocOwned(BigInt(CMD_BYTES << cmdqLog2)), log2: cmdqLog2, ptr: 0 };
    const evtqLog2 = Math.min(EVTQ_LOG2, this.feat.eventqs);
    const ev = this.phys.alloc(BigInt(EVT_BYTES << evtqLog2));
    if (!ev) throw new ErrnoError("ENOMEM", "no memory for the event queue");
    this.evtq = { base: ev.gpa, log2: evtqLog2, ptr: 0 };
    if (this.feat.pri) {
      const priqLog2 = Math.min(PRIQ_LOG2, this.feat.priqs);
      const pq = this.phys.alloc(BigInt(PRI_BYTES << priqLog2));
      if (!pq) throw new ErrnoError("ENOMEM", "no memory for the PRI queue");
      this.priq = { base: pq.gpa, log2: priqLog2, ptr: 0 };
    }

    const twoLevel = this.feat.twoLevelStrtab && this.feat.sidBits > STRTAB_SPLIT;
    const stBytes = twoLevel ? 8n << BigInt(this.feat.sidBits - STRTAB_SPLIT) : STE_BYTES << BigInt(this.feat.sidBits);
    this.strtab = { base: this.allocOwned(stBytes), twoLevel, l2: new Map() };
    await this.ram(this.kmem.drain());

    await this.w64(SMMU_REG.STRTAB_BASE, pack(STRTAB_BASE, 1, { ADDR: this.strtab.base >> 6n, RA: 1 })[0] as bigint);
    await this.w32(
      SMMU_REG.STRTAB_BASE_CFG,
      Number(
        pack(STRTAB_BASE_CFG, 1, {
          LOG2SIZE: this.feat.sidBits,
          SPLIT: twoLevel ? STRTAB_SPLIT : 0,
          FMT: twoLevel ? STRTAB_FMT.TWO_LEVEL : STRTAB_FMT.LINEAR,
        })[0],
      ),
    );
    const qbase = (q: Queue) => pack(Q_BASE, 1, { ADDR: q.base >> 5n, LOG2SIZE: q.log2, RWA: 1 })[0] as bigint;
    await this.w64(SMMU_REG.CMDQ_BASE, qbase(this.cmdq));
    await this.w32(SMMU_REG.CMDQ_PROD, 0);
    await this.w32(SMMU_REG.CMDQ_CONS, 0);
    await this.w64(SMMU_REG.EVENTQ_BASE, qbase(this.evtq));
    await this.w32(SMMU_REG.EVENTQ_PROD, 0);
    await this.w32(SMMU_REG.EVENTQ_CONS, 0);
    if (this.priq) {
      await this.w64(SMMU_REG.PRIQ_BASE, qbase(this.priq));
      await this.w32(SMMU_REG.PRIQ_PROD, 0);
      await this.w32(SMMU_REG.PRIQ_CONS, 0);
    }
    const CR = (v: Partial<Record<keyof typeof CR0, number>>) => Number(pack(CR0, 1, v)[0]);
    await this.writeCr0(CR({ CMDQEN: 1 }));
    // Invalidate any cached configuration and TLB entries before use (Linux arm_smmu_device_reset).
    await this.submit([cmd.cfgiAll(), cmd.tlbi("TLBI_NSNH_ALL")]);
    await this.writeCr0(CR({ CMDQEN: 1, EVENTQEN: 1, PRIQEN: this.priq ? 1 : 0 }));
    const irqen = Number(pack(IRQ_CTRL, 1, { GERROR_IRQEN: 1, EVENTQ_IRQEN: 1, PRIQ_IRQEN: this.priq ? 1 : 0 })[0]);
    await this.w32(SMMU_REG.IRQ_CTRL, irqen);
    await this.writeCr0(CR({ CMDQEN: 1, EVENTQEN: 1, PRIQEN: this.priq ? 1 : 0, SMMUEN: 1 }));
    this.cb.log({
      source: "driver",
      kind: "probe",
      text:
        `arm-smmu-v3: ${twoLevel ? "2-level" : "linear"} stream table (${this.feat.sidBits}-bit SIDs), ` +
        `${this.feat.ssidBits}-bit SSIDs, ATS ${this.feat.ats ? "on" : "off"}, PRI ${this.feat.pri ? "on" : "off"}, ` +
        `range invalidation ${this.feat.ril ? "on" : "off"}, OAS ${this.feat.oas} bits, cmdq 2^${cmdqLog2}, evtq 2^${evtqLog2}`,
    });
  }

  // ---- stream table and CD tables ---------------------------------------

  /** Address of the STE of `sid`; allocates the level-2 array (2^SPLIT STEs) on first use. */
  private steAddr(sid: number): bigint {
    if (sid >= 2 ** this.feat.sidBits) throw new ErrnoError("EINVAL", `StreamID ${hex(sid)} beyond SIDSIZE`);
    if (!this.strtab.twoLevel) return this.strtab.base + BigInt(sid) * STE_BYTES;
    const l1 = sid >>> STRTAB_SPLIT;
    let l2 = this.strtab.l2.get(l1);
    if (l2 === undefined) {
      l2 = this.allocOwned(STE_BYTES << BigInt(STRTAB_SPLIT));
      this.strtab.l2.set(l1, l2);
      this.kmem.writeWords(this.strtab.base + BigInt(l1) * 8n, [encodeL1Std(l2, STRTAB_SPLIT + 1)]);
    }
    return l2 + BigInt(sid & ((1 << STRTAB_SPLIT) - 1)) * STE_BYTES;
  }

  private deviceCfg(dev: GuestDevice): DeviceCfg {
    let c = this.devices.get(dev.fn.virtId);
    if (!c) {
      dev.atsEnabled = dev.fn.ats && this.feat.ats;
      dev.priEnabled = dev.fn.pri && this.feat.pri && dev.atsEnabled && this.priq !== undefined;
      dev.pasidBits = Math.min(dev.fn.maxPasidLog2, this.feat.ssidBits, MAX_CD_BITS);
      const cdBase = this.allocOwned(CD_BYTES << BigInt(dev.pasidBits));
      c = { cdBase, cdBits: dev.pasidBits, attachedOnce: false, livePasids: new Set() };
      this.devices.set(dev.fn.virtId, c);
    }
    return c;
  }

  /** A stage-1 CD for `domain` (Linux arm_smmu_make_s1_cd). */
  private cdWords(domain: Domain): bigint[] {
    return encodeCd({
      V: 1,
      T0SZ: 64 - domain.pgtable.inputBits,
      TG0: 0,
      IR0: 1,
      OR0: 1,
      SH0: 3,
      EPD1: 1,
      IPS: oasEncoding(this.outputBits),
      AA64: 1,
      R: 1,
      A: 1,
      ASET: domain.kind === "sva" ? 1 : 0,
      ASID: domain.tag,
      TTB0: domain.pgtable.root,
      MAIR: ARM_LPAE_MAIR,
    });
  }

  async attachDevice(dev: GuestDevice, target: Domain | "identity" | "blocked"): Promise<IssuedInvalidation[]> {
    return this.cmdqLock.run(async () => {
      const c = this.deviceCfg(dev);
      const sid = dev.fn.virtId;
      const cmds: Command[] = [];
      let ste: bigint[];
      const common = { V: 1, S1CIR: 1, S1COR: 1, S1CSH: 3, EATS: dev.atsEnabled ? STE_EATS.TRANS : STE_EATS.ABT };
      if (target === "blocked") {
        ste = encodeSte({ V: 1, Config: STE_CONFIG.ABORT });
      } else if (target === "identity" && c.livePasids.size === 0) {
        ste = encodeSte({ V: 1, Config: STE_CONFIG.BYPASS });
      } else {
        if (target === "identity") this.kmem.writeWords(c.cdBase, new Array<bigint>(8).fill(0n));
        else this.kmem.writeWords(c.cdBase, this.cdWords(target));
        if (c.attachedOnce) cmds.push(cmd.cfgiCd(sid, 0));
        ste = encodeSte({
          ...common,
          Config: STE_CONFIG.S1_TRANS,
          S1Fmt: STE_S1FMT.LINEAR,
          S1ContextPtr: c.cdBase,
          S1CDMax: c.cdBits,
          S1DSS: c.cdBits === 0 ? 0 : target === "identity" ? STE_S1DSS.BYPASS : STE_S1DSS.SSID0,
        });
      }
      this.kmem.writeWords(this.steAddr(sid), ste);
      cmds.push(cmd.cfgiSte(sid));
      if (c.attachedOnce && dev.atsEnabled) cmds.push(cmd.atcInv(sid, 0n, ATC_INV_SIZE_ALL));
      c.attachedOnce = true;
      return this.submit(cmds);
    });
  }

  async setPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]> {
    return this.cmdqLock.run(async () => {
      const c = this.deviceCfg(dev);
      if (pasid <= 0 || pasid >= 2 ** c.cdBits) throw new ErrnoError("EINVAL", `SSID ${pasid} outside the CD table (2^${c.cdBits})`);
      this.kmem.writeWords(c.cdBase + BigInt(pasid) * CD_BYTES, this.cdWords(domain));
      c.livePasids.add(pasid);
      return this.submit([cmd.cfgiCd(dev.fn.virtId, pasid)]);
    });
  }

  async clearPasid(dev: GuestDevice, pasid: number, domain: Domain): Promise<IssuedInvalidation[]> {
    return this.cmdqLock.run(async () => {
      const c = this.deviceCfg(dev);
      this.kmem.writeWords(c.cdBase + BigInt(pasid) * CD_BYTES, new Array<bigint>(8).fill(0n));
      c.livePasids.delete(pasid);
      const sid = dev.fn.virtId;
      const cmds: Command[] = [cmd.cfgiCd(sid, pasid), cmd.tlbi("TLBI_NH_ASID", { ASID: domain.tag })];
      if (dev.atsEnabled) cmds.push(cmd.atcInv(sid, 0n, ATC_INV_SIZE_ALL, pasid));
      return this.submit(cmds);
    });
  }

  async invalidateRange(domain: Domain, users: readonly DomainUser[], iova: bigint, size: bigint, leaf: boolean): Promise<IssuedInvalidation[]> {
    return this.cmdqLock.run(async () => {
      const cmds: Command[] = [];
      const pages = Number(size >> 12n);
      if (this.feat.ril) {
        for (const r of armTlbiEncodeRange(iova, size, 12)) {
          cmds.push(cmd.tlbi("TLBI_NH_VA", { ASID: domain.tag, Addr: r.addr, Leaf: leaf, TG: r.tg, NUM: r.num, SCALE: r.scale, TTL: r.ttl }));
        }
      } else if (pages > TLBI_MAX_PAGES) {
        cmds.push(cmd.tlbi("TLBI_NH_ASID", { ASID: domain.tag }));
      } else {
        for (let i = 0; i < pages; i++) cmds.push(cmd.tlbi("TLBI_NH_VA", { ASID: domain.tag, Addr: iova + BigInt(i) * 4096n, Leaf: leaf }));
      }
      // ATC: one command per (device, PASID) covering the range (Linux arm_smmu_atc_inv_to_cmd).
      const startPage = iova >> 12n;
      const endPage = (iova + size - 1n) >> 12n;
      const span = fls(startPage ^ endPage);
      const seen = new Set<string>();
      for (const u of users) {
        if (!u.dev.atsEnabled) continue;
        const key = `${u.dev.fn.virtId}/${u.pasid ?? "-"}`;
        if (seen.has(key)) continue;
        seen.add(key);
        if (span >= ATC_INV_SIZE_ALL) cmds.push(cmd.atcInv(u.dev.fn.virtId, 0n, ATC_INV_SIZE_ALL, u.pasid));
        else cmds.push(cmd.atcInv(u.dev.fn.virtId, (startPage & ~((1n << BigInt(span)) - 1n)) << 12n, span, u.pasid));
      }
      return this.submit(cmds);
    });
  }

  async syncTables(): Promise<void> {
    await this.cmdqLock.run(() => this.ram(this.kmem.drain()));
  }

  async pageResponse(dev: GuestDevice, pasid: number | undefined, prgi: number, ok: boolean): Promise<void> {
    await this.cmdqLock.run(() => this.submit([cmd.priResp(dev.fn.virtId, prgi, ok ? PRI_RESP.SUCCESS : PRI_RESP.DENY, pasid)]));
  }

  async allocPasid(dev: GuestDevice): Promise<number> {
    const c = this.deviceCfg(dev);
    for (let p = 1; p < 2 ** c.cdBits; p++) {
      if (!this.pasids.has(p)) {
        this.pasids.add(p);
        return p;
      }
    }
    throw new ErrnoError("ENOSPC", "no free PASID");
  }

  async freePasid(pasid: number): Promise<void> {
    this.pasids.delete(pasid);
  }

  allocTag(): number {
    for (let a = 1; a < 0x10000; a++) {
      if (!this.asids.has(a)) {
        this.asids.add(a);
        return a;
      }
    }
    throw new ErrnoError("ENOSPC", "no free ASID");
  }

  freeTag(tag: number): void {
    this.asids.delete(tag);
  }

  // ---- command queue -----------------------------------------------------

  private cmdEntry(ptr: number): bigint {
    return this.cmdq.base + BigInt(qIndex(ptr, this.cmdq.log2) * CMD_BYTES);
  }

  /**
   * Submit commands followed by CMD_SYNC and wait for completion. Caller
   * holds cmdqLock. Pending kernel-memory writes (tables, CDs, STEs and the
   * commands themselves) go to guest RAM in one batch before CMDQ_PROD.
   */
  private async submit(cmds: Command[]): Promise<IssuedInvalidation[]> {
    const issued: IssuedInvalidation[] = [];
    const room = (1 << this.cmdq.log2) - 1;
    const all = [...cmds];
    do {
      const chunk = all.splice(0, room - 1);
      chunk.push(cmd.sync());
      let prod = this.cmdq.ptr;
      for (const c of chunk) {
        const words = encodeCommand(c);
        this.kmem.writeWords(this.cmdEntry(prod), words);
        prod = qInc(prod, this.cmdq.log2);
        issued.push({ kind: `CMD_${c.name}`, words: [...words], text: tlbiText(c) });
      }
      await this.ram(this.kmem.drain());
      await this.w32(SMMU_REG.CMDQ_PROD, prod);
      this.cmdq.ptr = prod;
      await this.waitCons(prod);
    } while (all.length > 0);
    return issued;
  }

  /** Poll CMDQ_CONS until it reaches `prod`, handling command errors as Linux does (§7.1). */
  private async waitCons(prod: number): Promise<void> {
    const log2 = this.cmdq.log2;
    let failure: ErrnoError | undefined;
    for (let i = 0; i < 2000; i++) {
      const cons = await this.r32(SMMU_REG.CMDQ_CONS);
      const err = getNum([BigInt(cons)], CMDQ_CONS.ERR);
      if (err !== CERROR.NONE) {
        const at = this.cmdEntry(cons);
        const words = this.kmem.readWords(at, 2);
        const d = decodeCommand(words);
        const name = d.ok ? `CMD_${d.cmd.name}` : `opcode ${hex(getNum(words, { qw: 0, hi: 7, lo: 0 }))}`;
        const errName = err === CERROR.ILL ? "CERROR_ILL" : err === CERROR.ABT ? "CERROR_ABT" : err === CERROR.ATC_INV_SYNC ? "CERROR_ATC_INV_SYNC" : `CERROR ${err}`;
        this.cmdqErrors.push({ error: err, words });
        this.cb.log({ source: "driver", kind: errName, raw: words, text: `CMDQ error ${errName} at ${name}` });
        failure ??= new ErrnoError(err === CERROR.ATC_INV_SYNC ? "ETIMEDOUT" : "EIO", `${errName} at ${name}`);
        // Linux: an illegal command is replaced by CMD_SYNC; the others are retried / skipped by the SMMU.
        if (err === CERROR.ILL) {
          this.kmem.writeWords(at, encodeCommand(cmd.sync()));
          await this.ram(this.kmem.drain());
        }
        const gerror = await this.r32(SMMU_REG.GERROR);
        await this.w32(SMMU_REG.GERRORN, gerror);
        continue;
      }
      if (qPtr(cons, log2) === qPtr(prod, log2)) {
        if (failure) throw failure;
        return;
      }
      await sleep(i < 10 ? 0 : 2);
    }
    throw new ErrnoError("ETIMEDOUT", "CMD_SYNC timed out");
  }

  // ---- interrupts: event queue, PRI queue, global errors ----------------

  async handleIrq(line: IrqLine): Promise<void> {
    if (line === "evtq") await this.evtqLock.run(() => this.drainEvtq());
    else if (line === "priq") await this.priqLock.run(() => this.drainPriq());
    else if (line === "gerror") await this.cmdqLock.run(() => this.handleGerror());
  }

  /** Read the entries between our consumer index and PROD (at most two batches' worth, wrapping). */
  private async readQueue(q: Queue, prodReg: number, entryBytes: number): Promise<bigint[][]> {
    const n = qCount(prodReg, q.ptr, q.log2);
    if (n === 0) return [];
    const start = qIndex(q.ptr, q.log2);
    const size = 1 << q.log2;
    const first = Math.min(n, size - start);
    const ops: GuestRamOp[] = [{ kind: "read", gpa: q.base + BigInt(start * entryBytes), length: first * entryBytes }];
    if (n > first) ops.push({ kind: "read", gpa: q.base, length: (n - first) * entryBytes });
    const data = await this.port.ram.batch(ops);
    const words = data.flatMap((d) => bytesToWords(d));
    const per = entryBytes / 8;
    return Array.from({ length: n }, (_, i) => words.slice(i * per, i * per + per));
  }

  private async drainEvtq(): Promise<void> {
    const prod = await this.r32(SMMU_REG.EVENTQ_PROD);
    const ovflg = getNum([BigInt(prod)], EVENTQ_PROD.OVFLG);
    const ovack = getNum([BigInt(this.evtq.ptr)], EVENTQ_CONS.OVACKFLG);
    for (const w of await this.readQueue(this.evtq, prod, EVT_BYTES)) {
      const e = decodeEvent(w);
      if (e.type === "UNKNOWN") {
        this.cb.log({ source: "veventq", kind: `event ${hex(e.EventID)}`, raw: w, text: `unknown event ${hex(e.EventID)}` });
        continue;
      }
      const parts = [`${e.type}`, `vSID ${hex(e.StreamID)}`];
      if (e.SSV) parts.push(`SSID ${e.SubstreamID}`);
      if (e.InputAddr !== undefined) parts.push(`input ${hex(e.InputAddr)}`);
      if (e.RnW !== undefined) parts.push(e.RnW ? "read" : "write");
      if (e.PnU) parts.push("priv");
      if (e.S2 !== undefined) parts.push(`S2=${e.S2 ? 1 : 0}`);
      if (e.CLASS !== undefined) parts.push(`CLASS=${["CD", "TT", "IN"][e.CLASS] ?? e.CLASS}`);
      if (e.S2 && e.IPA !== undefined) parts.push(`IPA ${hex(e.IPA)}`);
      this.cb.log({
        source: "veventq",
        kind: e.type,
        virtId: e.StreamID,
        ...(e.SSV ? { pasid: e.SubstreamID } : {}),
        ...(e.InputAddr !== undefined ? { addr: e.InputAddr } : {}),
        raw: w,
        text: `arm-smmu-v3: event ${parts.join(" ")}`,
      });
    }
    if (ovflg !== ovack) {
      this.cb.log({ source: "lost-events", kind: "EVTQ overflow", text: "arm-smmu-v3: event queue overflow detected; events were lost" });
    }
    this.evtq.ptr = qPtr(prod, this.evtq.log2) | (ovflg << 31);
    await this.w32(SMMU_REG.EVENTQ_CONS, this.evtq.ptr);
  }

  private async drainPriq(): Promise<void> {
    const q = this.priq;
    if (!q) return;
    const prod = await this.r32(SMMU_REG.PRIQ_PROD);
    const ovflg = getNum([BigInt(prod)], PRIQ_PROD.OVFLG);
    const ovack = getNum([BigInt(q.ptr)], PRIQ_CONS.OVACKFLG);
    const groups: PageRequestRecord[][] = [];
    for (const w of await this.readQueue(q, prod, PRI_BYTES)) {
      const e = decodePriEntry(w);
      if (isPriStopMarker(e)) {
        this.cb.log({ source: "page-request", kind: "stop marker", virtId: e.StreamID, pasid: e.SubstreamID, raw: w, text: `PRI stop marker vSID ${hex(e.StreamID)} SSID ${e.SubstreamID}` });
        continue;
      }
      const key = `${e.StreamID}/${e.SSV ? e.SubstreamID : "-"}/${e.PRGIndex}`;
      let g = this.partialGroups.get(key);
      if (!g) this.partialGroups.set(key, (g = []));
      g.push({
        virtId: e.StreamID,
        ...(e.SSV ? { pasid: e.SubstreamID } : {}),
        addr: e.Addr,
        read: e.Read,
        write: e.Write,
        exec: e.Exec,
        priv: e.Priv,
        prgi: e.PRGIndex,
        last: e.Last,
      });
      if (e.Last) {
        this.partialGroups.delete(key);
        groups.push(g);
      }
    }
    if (ovflg !== ovack) this.cb.log({ source: "lost-events", kind: "PRIQ overflow", text: "arm-smmu-v3: PRI queue overflow; page requests were lost" });
    q.ptr = qPtr(prod, q.log2) | (ovflg << 31);
    await this.w32(SMMU_REG.PRIQ_CONS, q.ptr);
    for (const g of groups) this.cb.pageRequests(g);
  }

  private async handleGerror(): Promise<void> {
    const gerror = await this.r32(SMMU_REG.GERROR);
    const gerrorn = await this.r32(SMMU_REG.GERRORN);
    const active = (gerror ^ gerrorn) >>> 0;
    if (active === 0) return;
    const names = Object.entries(GERROR)
      .filter(([, f]) => get([BigInt(active)], f) !== 0n)
      .map(([n]) => n);
    this.cb.log({ source: "driver", kind: "GERROR", text: `arm-smmu-v3: global error ${names.join(", ")}` });
    // CMDQ_ERR is handled (and acknowledged) by the submitter waiting for CMD_SYNC.
    if (active & ~1) await this.w32(SMMU_REG.GERRORN, (gerrorn ^ (active & ~1)) >>> 0);
  }
}
