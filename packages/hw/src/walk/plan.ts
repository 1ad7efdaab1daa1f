// A StageConfig's walk constants, computed once per config (cached in a
// WeakMap) so the walker's level loop reads numbers and small tables instead
// of calling into the format: the root as a number (Number(bigint) costs tens
// of ns), level shifts, output-address masks, the StageConfig's switches (A/D
// rules, SRE) and the format's decode and permission functions tabulated over
// the few descriptor bits they read. The walker reads nothing else of the
// config or the format on the hot path: both have a different shape per
// vendor and stage, so their loads and calls are polymorphic once Arm and
// VT-d are walked in one process (the host, the bench).
//
// The tables are filled by calling the format's own functions, so they agree
// with them by construction as long as a format's DescBits name every bit its
// function reads (plan.test.ts checks this on random descriptors).

import { Desc, type DescBits, type DescType, type PageTableFormat, type PermSet, type StageConfig } from "../translation.js";

const D_BLOCK = Desc.BLOCK;
const D_RESERVED = Desc.RESERVED;
/** POW2[n] = 2^n for n in 0..64 (exact doubles), to keep Math.pow off the hot path. */
export const POW2: readonly number[] = Array.from({ length: 65 }, (_, n) => 2 ** n);
/** Permission sets are 6-bit masks (translation.ts Perm). */
const PERM_SETS = 64;

/** The smallest DescBits covering both: one table keyed by them can hold two functions. */
function unionBits(a: DescBits, b: DescBits): DescBits {
  const span = (s1: number, n1: number, s2: number, n2: number): [number, number] => {
    if (n1 === 0) return [s2, n2];
    if (n2 === 0) return [s1, n1];
    const from = Math.min(s1, s2);
    return [from, Math.max(s1 + n1, s2 + n2) - from];
  };
  const [loShift, loBits] = span(a.loShift, a.loBits, b.loShift, b.loBits);
  const [hiShift, hiBits] = span(a.hiShift, a.hiBits, b.hiShift, b.hiBits);
  return { loShift, loBits, hiShift, hiBits };
}

/** Bits of a level-table entry: the descriptor type, then (TABLE_LIMIT_SHIFT up) the table's permission limit. */
export const TYPE_MASK = 7;
export const TABLE_LIMIT_SHIFT = 3;

/** Lo-word mask clearing address bits below `shift` (< 32). */
function loMaskAbove(shift: number): number {
  return ~((1 << shift) - 1) >>> 0;
}

/** A function of a descriptor (and level), tabulated over the descriptor bits it reads, for levels -1..3. */
export class DescTable {
  private readonly loShift: number;
  private readonly loMask: number;
  private readonly loBits: number;
  private readonly hiShift: number;
  private readonly hiMask: number;
  /** log2 of the entries per level. */
  private readonly keyBits: number;
  private readonly table: number[] = [];

  constructor(bits: DescBits, f: (lo: number, hi: number, level: number) => number) {
    this.loShift = bits.loShift;
    this.loBits = bits.loBits;
    this.loMask = (1 << bits.loBits) - 1;
    this.hiShift = bits.hiShift;
    this.hiMask = (1 << bits.hiBits) - 1;
    this.keyBits = bits.loBits + bits.hiBits;
    for (let level = -1; level <= 3; level++) {
      for (let k = 0; k < 1 << this.keyBits; k++) {
        const lo = ((k & this.loMask) << this.loShift) >>> 0;
        const hi = ((k >>> this.loBits) << this.hiShift) >>> 0;
        this.table.push(f(lo, hi, level));
      }
    }
  }

  at(lo: number, hi: number, level: number): number {
    const key = ((lo >>> this.loShift) & this.loMask) | (((hi >>> this.hiShift) & this.hiMask) << this.loBits);
    return this.table[((level + 1) << this.keyBits) | key] as number;
  }
}

export class StagePlan {
  /** A leaf's permissions under the table limits: finalPerms(leafPermsW(desc) & limit). */
  leafPermsUnder(lo: number, hi: number, level: number, limit: PermSet): PermSet {
    return this.finalPerms[this.leafPerms.at(lo, hi, level) & limit] as PermSet;
  }

  /** A leaf's low word after a hardware dirty update: DBM flips the write bit to its writable state; else D is set. */
  dirtiedLo(lo: number): number {
    if (!this.dbm) return (lo | this.dirtyLo) >>> 0;
    return (this.writeBitMeansWritable ? lo | this.writeLo : lo & ~this.writeLo) >>> 0;
  }

  /** The high word likewise. */
  dirtiedHi(hi: number): number {
    if (!this.dbm) return (hi | this.dirtyHi) >>> 0;
    return (this.writeBitMeansWritable ? hi | this.writeHi : hi & ~this.writeHi) >>> 0;
  }

  /**
   * What the walker needs of a descriptor at a level, in one lookup: its type
   * (decodeW: bits & 7, RESERVED for a block with reserved address bits set)
   * and, for a table, its permission limit (tableLimitW: bits >>> 3).
   */
  decodeLevel(lo: number, hi: number, level: number): number {
    const d = this.levelTable.at(lo, hi, level);
    return (d & TYPE_MASK) === D_BLOCK && (lo & (this.blockRsv[level + 1] as number)) !== 0 ? (d & ~TYPE_MASK) | D_RESERVED : d;
  }

  decodeW(lo: number, hi: number, level: number): DescType {
    return (this.decodeLevel(lo, hi, level) & TYPE_MASK) as DescType;
  }

  tableLimitW(lo: number, hi: number, level: number): PermSet {
    return this.levelTable.at(lo, hi, level) >>> TABLE_LIMIT_SHIFT;
  }

  /** The format, for what the tables do not cover (output layouts that are not a plain field, isGlobalW). */
  readonly format: PageTableFormat;
  readonly root: number;
  readonly start: number;
  /** 2^inputBits. */
  readonly inputLimit: number;
  readonly bitsPerLevel: number;
  /** A start level or width the builders would have refused (a hand-built StageConfig): walks fault. */
  readonly badGeometry: boolean;
  /** VT-d first stage with SRE=0: supervisor requests are blocked. */
  readonly blocksPrivileged: boolean;
  readonly execNeedsRead: boolean;
  // Hardware A/D rules (format.hw.words under the StageConfig's switches).
  readonly aLo: number;
  readonly aHi: number;
  /** The extended-accessed bit set with A (low word; 0 without EAFE). */
  readonly eaLo: number;
  readonly dirtyLo: number;
  readonly dirtyHi: number;
  readonly writeLo: number;
  readonly writeHi: number;
  /** HA: hardware sets the access flag. */
  readonly ha: boolean;
  /** An unset access flag faults (no HA, no AFFD, and the format faults on it). */
  readonly afFaults: boolean;
  /** HD: hardware sets dirty state; dbm: Arm DBM style, else a dirty bit. */
  readonly hd: boolean;
  readonly dbm: boolean;
  readonly writeBitMeansWritable: boolean;
  /** levelShift(level) at index level + 1. */
  readonly shifts: number[] = [];
  /** Lo-word address mask of a block at index level + 1; -1 = ask the format. */
  readonly blockLo: number[] = [];
  /** Lo-word address mask of a next-table or page address. */
  readonly granuleLo: number;
  /** High-word address mask, or -1 when the format's output layout is not a plain field. */
  readonly hiMask: number;
  /**
   * decodeW (without the reserved block address bits, which blockRsv at index
   * level + 1 holds) | tableLimitW << 3, over the bits either reads: a table
   * level costs one lookup.
   */
  readonly levelTable: DescTable;
  readonly blockRsv: number[] = [];
  /** leafPermsW. */
  readonly leafPerms: DescTable;
  /** finalPerms over every permission set. */
  readonly finalPerms: PermSet[] = [];
  readonly setTableA: boolean;
  readonly oaLimit: number;
  /** Index bits at the start level (concatenated stage-2 tables included). */
  readonly startBits: number;

  constructor(st: StageConfig) {
    const fmt = st.format;
    const hw = fmt.hw;
    this.format = fmt;
    this.root = Number(st.root);
    this.start = st.startLevel;
    this.inputLimit = POW2[st.inputBits] as number;
    this.bitsPerLevel = fmt.bitsPerLevel;
    this.blocksPrivileged = fmt.family === "vtd-first-stage" && st.sre === false;
    this.execNeedsRead = fmt.execNeedsRead;
    ({ accessLo: this.aLo, accessHi: this.aHi, dirtyLo: this.dirtyLo, dirtyHi: this.dirtyHi, writeLo: this.writeLo, writeHi: this.writeHi } = hw.words);
    this.eaLo = st.eafe === true && hw.extendedAccessBit !== undefined ? Number(hw.extendedAccessBit & 0xffffffffn) : 0;
    this.ha = st.ha === true;
    this.afFaults = hw.accessFault && st.affd !== true;
    this.hd = st.hd === true;
    this.dbm = hw.dirty.style === "dbm";
    this.writeBitMeansWritable = hw.dirty.style === "dbm" && hw.dirty.writeBitMeansWritable;
    for (let l = -1; l <= 3; l++) {
      const sh = fmt.levelShift(l);
      this.shifts.push(sh);
      this.blockLo.push(sh < 32 ? loMaskAbove(sh) : -1);
      this.blockRsv.push(fmt.blockReservedLo(l));
    }
    this.levelTable = new DescTable(
      unionBits(fmt.decodeBits, fmt.tableLimitBits),
      (lo, hi, level) => fmt.decodeW(lo, hi, level, st) | (fmt.tableLimitW(lo, hi, level, st) << TABLE_LIMIT_SHIFT),
    );
    this.granuleLo = loMaskAbove(fmt.granuleShift);
    this.hiMask = fmt.addressHiMask ?? -1;
    this.leafPerms = new DescTable(fmt.leafPermBits, (lo, hi, level) => fmt.leafPermsW(lo, hi, level, st));
    for (let p = 0; p < PERM_SETS; p++) this.finalPerms.push(fmt.finalPerms(p, st));
    this.setTableA = fmt.hw.accessInTables && st.ha === true;
    this.oaLimit = POW2[st.outputBits] as number;
    this.startBits = st.inputBits - fmt.levelShift(st.startLevel);
    this.badGeometry = this.start < -1 || this.start > 3 || this.startBits < 1 || this.startBits > fmt.bitsPerLevel + 4;
  }
}

const plans = new WeakMap<StageConfig, StagePlan>();

/** The plan of a StageConfig (built on first use; configs are immutable). */
export function planOf(st: StageConfig): StagePlan {
  let p = plans.get(st);
  if (p === undefined) {
    p = new StagePlan(st);
    plans.set(st, p);
  }
  return p;
}
