// The physical-memory interface every hardware model walks, and a sparse
// implementation. Memory is byte-addressed, little-endian, 4 KiB pages
// allocated on first write; untouched memory reads as zero. Accesses return
// values, never throw, so a walker can turn an abort into an architectural
// fault (F_WALK_EABT, VT-d fault reasons) instead of crashing.

export const PAGE_SHIFT = 12;
export const PAGE_SIZE = 1 << PAGE_SHIFT;
const PAGE_MASK = BigInt(PAGE_SIZE - 1);

/** Result of a memory access: ok, or an external abort at `addr`. */
export type MemResult<T> = { ok: true; value: T } | { ok: false; abort: "external" | "address-size"; addr: bigint };

export interface PhysicalMemory {
  /** Physical address width in bits (accesses at or above 2^paBits abort). */
  readonly paBits: number;
  read(addr: bigint, length: number): MemResult<Uint8Array>;
  write(addr: bigint, data: Uint8Array): MemResult<void>;
  read64(addr: bigint): MemResult<bigint>;
  write64(addr: bigint, value: bigint): MemResult<void>;
  /**
   * Atomic compare-and-swap of a 64-bit word (hardware A/D updates, HTTU).
   * Returns the value found; the swap happened when it equals `expected`.
   */
  cas64(addr: bigint, expected: bigint, value: bigint): MemResult<bigint>;
  /**
   * Optional fast path for page-table walkers (additive): read the aligned
   * 64-bit word at `addr` (a number below 2^53) into out[0] = bits [31:0] and
   * out[1] = bits [63:32], with the same aborts and accounting as read64.
   * Returns undefined on success, or the failure.
   */
  read64Split?(addr: number, out: Uint32Array): { ok: false; abort: "external" | "address-size"; addr: bigint } | undefined;
}

/**
 * The 64-bit accessors from the byte accessors (little-endian), for memories
 * that only move bytes (overlays, a guest kernel's pages); a memory with a
 * faster word path overrides them.
 */
export abstract class ByteMemory implements PhysicalMemory {
  abstract readonly paBits: number;
  abstract read(addr: bigint, length: number): MemResult<Uint8Array>;
  abstract write(addr: bigint, data: Uint8Array): MemResult<void>;

  read64(addr: bigint): MemResult<bigint> {
    const r = this.read(addr, 8);
    return r.ok ? { ok: true, value: new DataView(r.value.buffer, r.value.byteOffset).getBigUint64(0, true) } : r;
  }

  write64(addr: bigint, value: bigint): MemResult<void> {
    const bytes = new Uint8Array(8);
    new DataView(bytes.buffer).setBigUint64(0, BigInt.asUintN(64, value), true);
    return this.write(addr, bytes);
  }

  /** Read, compare, write: the models are single-threaded, so nothing runs between the three. */
  cas64(addr: bigint, expected: bigint, value: bigint): MemResult<bigint> {
    const cur = this.read64(addr);
    if (!cur.ok) return cur;
    if (cur.value === expected) {
      const w = this.write64(addr, value);
      if (!w.ok) return w;
    }
    return cur;
  }
}

/** Counters every memory keeps, so benchmarks and tests can count walk reads. */
export interface MemoryStats {
  reads: number;
  writes: number;
  pagesAllocated: number;
}

export class SparseMemory extends ByteMemory {
  readonly paBits: number;
  readonly stats: MemoryStats = { reads: 0, writes: 0, pagesAllocated: 0 };
  private readonly pages = new Map<bigint, Uint8Array>();
  /** Number-keyed views of the same pages for read64Split (walker hot path). */
  private readonly views = new Map<number, DataView>();
  /**
   * A 1024-entry direct-mapped cache in front of `views` (walks revisit the
   * same table pages), indexed by PA bits [21:12] folded with [31:22] and
   * tagged with the page's base address, so a hit needs no division and no
   * Map probe.
   */
  private readonly vcBase = new Float64Array(1024).fill(-1);
  private readonly vcView: (DataView | undefined)[] = new Array<DataView | undefined>(1024);
  private readonly aborting: { start: bigint; last: bigint }[] = [];
  private readonly limit: bigint;
  private readonly limitNum: number;
  /** The last address read64Split serves without the general checks: 2^paBits − 8, or −1 while abort ranges exist. */
  private fastLast: number;

  constructor(paBits = 52) {
    super();
    if (paBits < 12 || paBits > 64) throw new RangeError(`paBits ${paBits} out of range`);
    this.paBits = paBits;
    this.limit = 1n << BigInt(paBits);
    this.limitNum = 2 ** paBits;
    this.fastLast = this.limitNum - 8;
  }

  /** Make [start, start+length) abort on every access (tests of external aborts). */
  addAbortRange(start: bigint, length: bigint): void {
    this.aborting.push({ start, last: start + length - 1n });
    this.fastLast = -1;
  }

  clearAbortRanges(): void {
    this.aborting.length = 0;
    this.fastLast = this.limitNum - 8;
  }

  /** Number of 4 KiB pages that hold data. */
  get pageCount(): number {
    return this.pages.size;
  }

  /** Release pages in [start, start+length) so they read as zero again. */
  discard(start: bigint, length: bigint): void {
    const first = start >> BigInt(PAGE_SHIFT);
    const last = (start + length - 1n) >> BigInt(PAGE_SHIFT);
    for (let pfn = first; pfn <= last; pfn++) {
      const pageStart = pfn << BigInt(PAGE_SHIFT);
      if (pageStart >= start && pageStart + BigInt(PAGE_SIZE) <= start + length) {
        if (this.pages.delete(pfn)) {
          this.views.delete(Number(pfn));
          this.vcBase.fill(-1);
          this.stats.pagesAllocated--;
        }
      } else {
        const page = this.pages.get(pfn);
        if (!page) continue;
        const lo = Number((start > pageStart ? start : pageStart) - pageStart);
        const endAddr = start + length < pageStart + BigInt(PAGE_SIZE) ? start + length : pageStart + BigInt(PAGE_SIZE);
        page.fill(0, lo, Number(endAddr - pageStart));
      }
    }
  }

  private check(addr: bigint, length: number): MemResult<void> | undefined {
    if (addr < 0n || addr + BigInt(length) > this.limit) return { ok: false, abort: "address-size", addr };
    for (const r of this.aborting) {
      if (addr <= r.last && addr + BigInt(length) - 1n >= r.start) return { ok: false, abort: "external", addr };
    }
    return undefined;
  }

  private page(pfn: bigint, create: boolean): Uint8Array | undefined {
    let p = this.pages.get(pfn);
    if (!p && create) {
      p = new Uint8Array(PAGE_SIZE);
      this.pages.set(pfn, p);
      this.views.set(Number(pfn), new DataView(p.buffer));
      this.stats.pagesAllocated++;
    }
    return p;
  }

  read(addr: bigint, length: number): MemResult<Uint8Array> {
    const bad = this.check(addr, length);
    if (bad) return bad as MemResult<Uint8Array>;
    this.stats.reads++;
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const a = addr + BigInt(done);
      const off = Number(a & PAGE_MASK);
      const n = Math.min(length - done, PAGE_SIZE - off);
      const p = this.page(a >> BigInt(PAGE_SHIFT), false);
      if (p) out.set(p.subarray(off, off + n), done);
      done += n;
    }
    return { ok: true, value: out };
  }

  write(addr: bigint, data: Uint8Array): MemResult<void> {
    const bad = this.check(addr, data.length);
    if (bad) return bad;
    this.stats.writes++;
    let done = 0;
    while (done < data.length) {
      const a = addr + BigInt(done);
      const off = Number(a & PAGE_MASK);
      const n = Math.min(data.length - done, PAGE_SIZE - off);
      (this.page(a >> BigInt(PAGE_SHIFT), true) as Uint8Array).set(data.subarray(done, done + n), off);
      done += n;
    }
    return { ok: true, value: undefined };
  }

  override read64(addr: bigint): MemResult<bigint> {
    if ((addr & 7n) !== 0n) return super.read64(addr);
    const bad = this.check(addr, 8);
    if (bad) return bad as MemResult<bigint>;
    this.stats.reads++;
    const p = this.page(addr >> BigInt(PAGE_SHIFT), false);
    if (!p) return { ok: true, value: 0n };
    return { ok: true, value: new DataView(p.buffer, p.byteOffset).getBigUint64(Number(addr & PAGE_MASK), true) };
  }

  read64Split(addr: number, out: Uint32Array): { ok: false; abort: "external" | "address-size"; addr: bigint } | undefined {
    // Integer ops only: `%` on doubles above 2^31 is a slow fmod.
    const low = addr >>> 0;
    // One range test covers negative, too-high and abort-range cases (fastLast).
    if (!(addr >= 0 && addr <= this.fastLast) || (low & 7) !== 0) {
      const r = this.read64(BigInt(addr));
      if (!r.ok) return r;
      out[0] = Number(r.value & 0xffffffffn);
      out[1] = Number(r.value >> 32n);
      return undefined;
    }
    this.stats.reads++;
    const off = low & (PAGE_SIZE - 1);
    const base = addr - off;
    const slot = ((low >>> PAGE_SHIFT) ^ (low >>> 22)) & 1023;
    let v: DataView | undefined;
    if (this.vcBase[slot] === base) v = this.vcView[slot];
    else {
      v = this.views.get(base / PAGE_SIZE);
      if (v !== undefined) {
        this.vcBase[slot] = base;
        this.vcView[slot] = v;
      }
    }
    if (v === undefined) {
      out[0] = 0;
      out[1] = 0;
    } else {
      out[0] = v.getUint32(off, true);
      out[1] = v.getUint32(off + 4, true);
    }
    return undefined;
  }
}
