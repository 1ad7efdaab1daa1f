// A programmed VT-d unit for tests and tools: host memory, root/context/
// PASID tables, an invalidation queue and a page request queue, enabled the
// way the Linux intel driver enables a unit (RTADDR + SRTP, IQA + QIE, PQA,
// TE). Also a guest-physical view of host memory for building a guest's
// first-stage tables behind a linear second stage. Pure; not part of the
// model itself.

import { wordsToBytes } from "../bits.js";
import { mapRange, SimplePageAllocator } from "../format/map.js";
import { vtdFirstStageConfig, vtdSecondStageConfig } from "../format/vtd.js";
import { type MemResult, type PhysicalMemory, SparseMemory } from "../memory.js";
import { type MapProt, PERM_RW, type StageConfig } from "../translation.js";
import { IQA_FIELDS, VTD_REG, type VtdCapabilities } from "./regs.js";
import { VtdTableBuilder } from "./tables.js";
import { Vtd, type VtdPorts } from "./vtd.js";

/** Guest-physical addresses [0, size) seen through a linear offset into host memory. */
export class OffsetMemory implements PhysicalMemory {
  readonly paBits: number;
  constructor(
    readonly host: PhysicalMemory,
    readonly offset: bigint,
    paBits = 52,
  ) {
    this.paBits = paBits;
  }
  read(addr: bigint, length: number): MemResult<Uint8Array> {
    return this.host.read(addr + this.offset, length);
  }
  write(addr: bigint, data: Uint8Array): MemResult<void> {
    return this.host.write(addr + this.offset, data);
  }
  read64(addr: bigint): MemResult<bigint> {
    return this.host.read64(addr + this.offset);
  }
  write64(addr: bigint, value: bigint): MemResult<void> {
    return this.host.write64(addr + this.offset, value);
  }
  cas64(addr: bigint, expected: bigint, value: bigint): MemResult<bigint> {
    return this.host.cas64(addr + this.offset, expected, value);
  }
}

export interface VtdRigOptions {
  readonly caps?: Partial<VtdCapabilities>;
  readonly ports?: VtdPorts;
  /** 256-bit descriptors (IQA.DW = 1, the scalable-mode default). */
  readonly dw?: boolean;
  /** Leave GCMD.TE clear. */
  readonly noTranslate?: boolean;
}

/** Host memory map of the rig. */
export const RIG = {
  /** Host page-table and structure pool. */
  TABLES: 0x0100_0000n,
  TABLES_SIZE: 0x0f00_0000n,
  IQ: 0x0010_0000n,
  PRQ: 0x0020_0000n,
  STATUS: 0x0030_0000n,
  /** Guest RAM: GPA 0 ↔ HPA GUEST_BASE. */
  GUEST_BASE: 0x1_0000_0000n,
  GUEST_SIZE: 0x0100_0000n,
} as const;

export class VtdRig {
  readonly mem = new SparseMemory(52);
  readonly alloc = new SimplePageAllocator(this.mem, RIG.TABLES, RIG.TABLES_SIZE);
  readonly tables: VtdTableBuilder;
  readonly vtd: Vtd;
  readonly dw: boolean;
  private gcmd = 0n;

  constructor(opts: VtdRigOptions = {}) {
    this.tables = new VtdTableBuilder(this.mem, this.alloc);
    this.vtd = new Vtd(this.mem, { ...(opts.caps ? { caps: opts.caps } : {}), ...(opts.ports ? { ports: opts.ports } : {}) });
    this.dw = opts.dw ?? true;
    const v = this.vtd;
    v.writeReg(VTD_REG.RTADDR, this.tables.rta | (1n << 10n)); // TTM = 01b scalable
    v.writeReg(VTD_REG.GCMD, this.gcmd | (1n << 30n), 4); // SRTP (one-shot)
    v.writeReg(VTD_REG.IQA, RIG.IQ | (this.dw ? 1n << BigInt(IQA_FIELDS.DW.lo) : 0n)); // QS = 0: one page
    this.command(26); // QIE
    v.writeReg(VTD_REG.PQA, RIG.PRQ); // PQS = 0: 128 descriptors
    if (!opts.noTranslate) this.command(31); // TE
  }

  /** Set a level-sensitive GCMD bit the way Linux does (gcmd |= bit; write gcmd). */
  command(bit: number): void {
    this.gcmd |= 1n << BigInt(bit);
    this.vtd.writeReg(VTD_REG.GCMD, this.gcmd, 4);
  }

  /** Queue descriptors at IQT and ring the tail. */
  submit(...descs: bigint[][]): void {
    const width = this.dw ? 32 : 16;
    let tail = this.vtd.readReg(VTD_REG.IQT);
    for (const d of descs) {
      const words = this.dw ? d.slice(0, 4) : d.slice(0, 2);
      while (words.length < width / 8) words.push(0n);
      this.mem.write(RIG.IQ + tail, wordsToBytes(words));
      tail = (tail + BigInt(width)) % 0x1000n;
    }
    this.vtd.writeReg(VTD_REG.IQT, tail);
  }

  /** Host second-stage tables: AW (1/2/3 → 3/4/5 levels), with a fresh root. */
  secondStage(aw = 2, haw = 52): StageConfig {
    const root = this.alloc.alloc(0x1000) as bigint;
    const r = vtdSecondStageConfig({ aw, ssptptr: root, haw, large2M: true, large1G: true });
    if (!r.ok) throw new Error(r.error);
    return r.stage;
  }

  /** First-stage tables in host memory (PGTT = 001b). */
  firstStage(levels: 4 | 5 = 4, opts: { sre?: boolean; wpe?: boolean; nxe?: boolean } = {}): StageConfig {
    const root = this.alloc.alloc(0x1000) as bigint;
    const r = vtdFirstStageConfig({ levels, fsptptr: root, haw: 52, large1G: true, ...opts });
    if (!r.ok) throw new Error(r.error);
    return r.stage;
  }

  map(stage: StageConfig, iova: bigint, pa: bigint, size: bigint, prot: MapProt, mem: PhysicalMemory = this.mem, alloc = this.alloc, maxPageShift?: number): void {
    const r = mapRange(mem, stage, iova, pa, size, prot, { alloc, ...(maxPageShift !== undefined ? { maxPageShift } : {}) });
    if (!r.ok) throw new Error(`map failed: ${r.error} at 0x${r.at.toString(16)}`);
  }

  /** Guest RAM view (GPA space) and an allocator inside guest RAM for guest page tables. */
  guest(): { mem: OffsetMemory; alloc: SimplePageAllocator } {
    const mem = new OffsetMemory(this.mem, RIG.GUEST_BASE);
    return { mem, alloc: new SimplePageAllocator(mem, 0x0080_0000n, 0x0080_0000n) };
  }

  /** A second stage mapping all of guest RAM GPA → HPA with 4 KiB pages (so single pages can be changed). */
  guestSecondStage(aw = 2): StageConfig {
    const ss = this.secondStage(aw);
    this.map(ss, 0n, RIG.GUEST_BASE, RIG.GUEST_SIZE, { perms: PERM_RW }, this.mem, this.alloc, 12);
    return ss;
  }
}
