// A minimal driver-side helper that programs an SMMUv3 the way Linux's
// arm-smmu-v3 driver does: queues and the stream table in memory, then
// base / cfg / prod / cons registers and CR0. Used by tests, the walk tool
// and any host code that wants a ready-made programming sequence. It talks
// to the model only through MMIO and memory, like a real driver.

import { type PageAllocator } from "../format/map.js";
import type { PhysicalMemory } from "../memory.js";
import { bytesToWords, get, getNum, pack, wordsToBytes } from "../bits.js";
import { type Command, encodeCommand } from "./commands.js";
import { EVT_BYTES, type EventRecord, decodeEvent } from "./events.js";
import { PRI_BYTES, type PriEntry, decodePriEntry } from "./pri.js";
import { qEmpty, qFull, qInc, qIndex } from "./queue.js";
import {
  CR0,
  EVENTQ_CONS,
  EVENTQ_PROD,
  PRIQ_CONS,
  PRIQ_PROD,
  Q_BASE,
  SMMU_REG,
  STRTAB_BASE,
  STRTAB_BASE_CFG,
  STRTAB_FMT,
} from "./regs.js";
import type { SmmuV3 } from "./smmu.js";
import { L1STD, STE_BYTES, encodeL1Std } from "./ste.js";

export interface QueueLayout {
  readonly base: bigint;
  readonly log2size: number;
}

export interface StreamTableLayout {
  readonly base: bigint;
  /** log2 of the number of StreamIDs covered. */
  readonly log2size: number;
  readonly format: "linear" | "2-level";
  /** 2-level only: SPLIT (6, 8 or 10; Linux uses 8). */
  readonly split?: number;
}

export interface DriverLayout {
  readonly strtab: StreamTableLayout;
  readonly cmdq: QueueLayout;
  readonly eventq: QueueLayout;
  readonly priq?: QueueLayout;
  /** CR0.ATSCHK. */
  readonly atschk?: boolean;
}

export class SmmuDriver {
  private layout: DriverLayout | undefined;
  /** Shadow of the command queue producer index. */
  private cmdProd = 0;

  constructor(
    readonly smmu: SmmuV3,
    readonly mem: PhysicalMemory,
    /** Allocator for level-2 stream tables (2-level format). */
    readonly alloc?: PageAllocator,
  ) {}

  /** Program queues and the stream table, then enable (SMMUEN, EVENTQEN, CMDQEN, PRIQEN). */
  init(layout: DriverLayout): void {
    this.layout = layout;
    const s = this.smmu;
    const st = layout.strtab;
    s.write(SMMU_REG.STRTAB_BASE, pack(STRTAB_BASE, 1, { ADDR: st.base >> 6n, RA: 1 })[0] as bigint, 8);
    s.write(
      SMMU_REG.STRTAB_BASE_CFG,
      pack(STRTAB_BASE_CFG, 1, {
        LOG2SIZE: st.log2size,
        SPLIT: st.format === "2-level" ? (st.split ?? 8) : 0,
        FMT: st.format === "2-level" ? STRTAB_FMT.TWO_LEVEL : STRTAB_FMT.LINEAR,
      })[0] as bigint,
    );
    const qbase = (q: QueueLayout) => pack(Q_BASE, 1, { ADDR: q.base >> 5n, LOG2SIZE: q.log2size, RWA: 1 })[0] as bigint;
    s.write(SMMU_REG.CMDQ_BASE, qbase(layout.cmdq), 8);
    s.write(SMMU_REG.CMDQ_PROD, 0);
    s.write(SMMU_REG.CMDQ_CONS, 0);
    this.cmdProd = 0;
    s.write(SMMU_REG.EVENTQ_BASE, qbase(layout.eventq), 8);
    s.write(SMMU_REG.EVENTQ_PROD, 0);
    s.write(SMMU_REG.EVENTQ_CONS, 0);
    if (layout.priq) {
      s.write(SMMU_REG.PRIQ_BASE, qbase(layout.priq), 8);
      s.write(SMMU_REG.PRIQ_PROD, 0);
      s.write(SMMU_REG.PRIQ_CONS, 0);
    }
    let cr0 = pack(CR0, 1, {
      CMDQEN: 1,
      EVENTQEN: 1,
      PRIQEN: layout.priq ? 1 : 0,
      ATSCHK: layout.atschk ? 1 : 0,
    })[0] as bigint;
    s.write(SMMU_REG.CR0, cr0);
    // Linux invalidates all configuration and TLBs before enabling translation.
    this.submit({ name: "CFGI_STE_RANGE", StreamID: 0, Range: 31 }, { name: "TLBI_NSNH_ALL", VMID: 0, ASID: 0, Addr: 0n, Leaf: false, TG: 0, TTL: 0, NUM: 0, SCALE: 0 }, SYNC);
    cr0 |= pack(CR0, 1, { SMMUEN: 1 })[0] as bigint;
    s.write(SMMU_REG.CR0, cr0);
  }

  private get l(): DriverLayout {
    if (!this.layout) throw new Error("SmmuDriver.init() first");
    return this.layout;
  }

  /**
   * Address of the STE for a StreamID. For a 2-level table the level-2 array
   * (2^SPLIT STEs) is allocated and its L1 descriptor written on first use.
   */
  steAddr(sid: number): bigint {
    const st = this.l.strtab;
    if (st.format === "linear") return st.base + BigInt(sid) * BigInt(STE_BYTES);
    const split = st.split ?? 8;
    const l1Addr = st.base + BigInt(sid >>> split) * 8n;
    const r = this.mem.read64(l1Addr);
    let desc = r.ok ? r.value : 0n;
    if (getNum([desc], L1STD.Span) === 0) {
      const bytes = (1 << split) * STE_BYTES;
      const l2 = this.alloc?.alloc(bytes);
      if (l2 === undefined) throw new Error("no allocator / memory for a level-2 stream table");
      desc = encodeL1Std(l2, split + 1);
      this.mem.write64(l1Addr, desc);
    }
    const l2 = get([desc], L1STD.L2Ptr) << 6n;
    return l2 + BigInt(sid & ((1 << split) - 1)) * BigInt(STE_BYTES);
  }

  /** Write an STE (qw0 last, as software must when making an STE valid) and invalidate it. */
  installSte(sid: number, words: readonly bigint[]): void {
    const addr = this.steAddr(sid);
    for (let i = words.length - 1; i >= 0; i--) this.mem.write64(addr + BigInt(i * 8), words[i] as bigint);
    this.submit({ name: "CFGI_STE", StreamID: sid, Leaf: true }, SYNC);
  }

  /** Write raw words at an address (CDs, L1CD tables). */
  writeWords(addr: bigint, words: readonly bigint[]): void {
    this.mem.write(addr, wordsToBytes(words));
  }

  /**
   * Append commands to the command queue and publish them with one CMDQ_PROD
   * write (which makes the model consume them). Throws if the queue is full.
   */
  submit(...cmds: (Command | readonly [bigint, bigint])[]): void {
    const q = this.l.cmdq;
    for (const c of cmds) {
      const cons = Number(this.smmu.read(SMMU_REG.CMDQ_CONS));
      if (qFull(this.cmdProd, cons, q.log2size)) throw new Error("command queue full");
      const words = Array.isArray(c) ? (c as readonly [bigint, bigint]) : encodeCommand(c as Command);
      this.mem.write(q.base + BigInt(qIndex(this.cmdProd, q.log2size) * 16), wordsToBytes(words));
      this.cmdProd = qInc(this.cmdProd, q.log2size);
    }
    this.smmu.write(SMMU_REG.CMDQ_PROD, this.cmdProd);
  }

  /** Read and consume every record in the event queue; acknowledges an overflow. */
  drainEvents(): { events: EventRecord[]; raw: bigint[][]; overflow: boolean } {
    const q = this.l.eventq;
    const prod = Number(this.smmu.read(SMMU_REG.EVENTQ_PROD));
    let cons = Number(this.smmu.read(SMMU_REG.EVENTQ_CONS));
    const events: EventRecord[] = [];
    const raw: bigint[][] = [];
    while (!qEmpty(prod, cons, q.log2size)) {
      const r = this.mem.read(q.base + BigInt(qIndex(cons, q.log2size) * EVT_BYTES), EVT_BYTES);
      if (r.ok) {
        const w = bytesToWords(r.value);
        raw.push(w);
        const d = decodeEvent(w);
        if (d.type !== "UNKNOWN") events.push(d as EventRecord);
      }
      cons = qInc(cons, q.log2size);
    }
    const ovf = getNum([BigInt(prod >>> 0)], EVENTQ_PROD.OVFLG);
    const overflow = ovf !== getNum([BigInt(cons >>> 0)], EVENTQ_CONS.OVACKFLG);
    // Acknowledge: copy OVFLG into OVACKFLG.
    cons = ((cons & 0x7fff_ffff) | (ovf << 31)) >>> 0;
    this.smmu.write(SMMU_REG.EVENTQ_CONS, cons);
    return { events, raw, overflow };
  }

  /** Read and consume every PRI queue entry; acknowledges an overflow. */
  drainPri(): { requests: PriEntry[]; overflow: boolean } {
    const q = this.l.priq;
    if (!q) return { requests: [], overflow: false };
    const prod = Number(this.smmu.read(SMMU_REG.PRIQ_PROD));
    let cons = Number(this.smmu.read(SMMU_REG.PRIQ_CONS));
    const requests: PriEntry[] = [];
    while (!qEmpty(prod, cons, q.log2size)) {
      const r = this.mem.read(q.base + BigInt(qIndex(cons, q.log2size) * PRI_BYTES), PRI_BYTES);
      if (r.ok) requests.push(decodePriEntry(bytesToWords(r.value)));
      cons = qInc(cons, q.log2size);
    }
    const ovf = getNum([BigInt(prod >>> 0)], PRIQ_PROD.OVFLG);
    const overflow = ovf !== getNum([BigInt(cons >>> 0)], PRIQ_CONS.OVACKFLG);
    cons = ((cons & 0x7fff_ffff) | (ovf << 31)) >>> 0;
    this.smmu.write(SMMU_REG.PRIQ_CONS, cons);
    return { requests, overflow };
  }
}

const SYNC: Command = { name: "SYNC", CS: 0, MSH: 0, MSIAttr: 0, MSIData: 0, MSIAddr: 0n };
