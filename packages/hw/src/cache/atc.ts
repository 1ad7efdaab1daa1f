// The device-side Address Translation Cache (PCIe ATS). Entries are what ATS
// Translation Completions returned: (PASID or none, untranslated range) →
// translated address with R/W/Exe/Priv/Global/N/U. Sizes are any power of two
// ≥ 4 KB (ATS S encoding). Bounded LRU (one entry evicted per insert at
// capacity); invalidation by range (with or without PASID, Global), by PASID
// and global; counters. Pure: the device-sim process owns one per function.
//
// Invalidation semantics (PCIe ATS; Linux arm-smmu-v3.c "ATS and PASID"
// comment): an Invalidate Request WITHOUT a PASID prefix invalidates every
// entry in the range, including those requested with a PASID; WITH a PASID it
// invalidates that PASID's entries, plus entries marked Global of any PASID
// when the Global Invalidate bit is set.

import type { CacheStats } from "./iotlb.js";
import type { InvalidationRange } from "./ranges.js";

export interface AtcEntry {
  /** PASID the translation was requested with; undefined = no PASID prefix. */
  readonly pasid: number | undefined;
  /** Untranslated base (aligned to size). */
  readonly untranslated: bigint;
  /** log2 of the range size (≥ 12). */
  readonly sizeShift: number;
  /** Translated base. */
  readonly translated: bigint;
  readonly r: boolean;
  readonly w: boolean;
  readonly exe: boolean;
  readonly priv: boolean;
  readonly global: boolean;
  /** N: non-snooped accesses. */
  readonly noSnoop?: boolean;
  /** U: untranslated access only (do not use the translation). */
  readonly untranslatedOnly?: boolean;
}

interface Node {
  e: AtcEntry;
  tag: number;
  key: number;
}

const VPN_BITS = 45;

export class AtcCache {
  readonly capacity: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, inserts: 0, evictions: 0, invalidations: 0, invalidated: 0 };
  /** tag (pasid + 1, 0 = none) → key → node; the order of `lru` is least recently used first. */
  private readonly byTag = new Map<number, Map<number, Node>>();
  private readonly lru = new Map<Node, true>();
  private readonly shiftCounts = new Map<number, number>();
  private shifts: number[] = [];

  constructor(opts: { capacity?: number } = {}) {
    this.capacity = opts.capacity ?? 64;
    if (this.capacity < 1) throw new RangeError("ATC capacity must be ≥ 1");
  }

  get size(): number {
    return this.lru.size;
  }

  private static keyOf(addr: bigint, sizeShift: number): number {
    const vpn = Number(BigInt.asUintN(VPN_BITS, addr >> 12n));
    return Math.floor(vpn / 2 ** (sizeShift - 12)) * 64 + sizeShift;
  }

  /** The entry translating `addr` for `pasid` (undefined = request without PASID). */
  lookup(pasid: number | undefined, addr: bigint): AtcEntry | undefined {
    const inner = this.byTag.get(pasid === undefined ? 0 : pasid + 1);
    if (inner) {
      for (const s of this.shifts) {
        const n = inner.get(AtcCache.keyOf(addr, s));
        if (n) {
          this.lru.delete(n);
          this.lru.set(n, true);
          this.stats.hits++;
          return n.e;
        }
      }
    }
    this.stats.misses++;
    return undefined;
  }

  /** Translate with the cached entry: the translated address, or undefined on a miss. */
  translate(pasid: number | undefined, addr: bigint): { entry: AtcEntry; address: bigint } | undefined {
    const e = this.lookup(pasid, addr);
    if (!e) return undefined;
    return { entry: e, address: e.translated + (addr & ((1n << BigInt(e.sizeShift)) - 1n)) };
  }

  insert(entry: AtcEntry): void {
    if (entry.sizeShift < 12 || entry.sizeShift > 63) throw new RangeError(`ATC size 2^${entry.sizeShift}`);
    const m = (1n << BigInt(entry.sizeShift)) - 1n;
    const e: AtcEntry = { ...entry, untranslated: entry.untranslated & ~m, translated: entry.translated & ~m };
    const tag = e.pasid === undefined ? 0 : e.pasid + 1;
    const key = AtcCache.keyOf(e.untranslated, e.sizeShift);
    let inner = this.byTag.get(tag);
    const old = inner?.get(key);
    if (old) this.remove(old);
    else if (this.lru.size >= this.capacity) {
      const oldest = this.lru.keys().next();
      if (!oldest.done) {
        this.remove(oldest.value);
        this.stats.evictions++;
      }
    }
    inner = this.byTag.get(tag);
    if (!inner) {
      inner = new Map();
      this.byTag.set(tag, inner);
    }
    const n: Node = { e, tag, key };
    inner.set(key, n);
    this.lru.set(n, true);
    const c = this.shiftCounts.get(e.sizeShift) ?? 0;
    this.shiftCounts.set(e.sizeShift, c + 1);
    if (c === 0) this.shifts = [...this.shifts, e.sizeShift].sort((a, b) => a - b);
    this.stats.inserts++;
  }

  private remove(n: Node): void {
    this.lru.delete(n);
    const inner = this.byTag.get(n.tag);
    if (inner) {
      inner.delete(n.key);
      if (inner.size === 0) this.byTag.delete(n.tag);
    }
    const c = (this.shiftCounts.get(n.e.sizeShift) ?? 1) - 1;
    this.shiftCounts.set(n.e.sizeShift, c);
    if (c === 0) this.shifts = this.shifts.filter((s) => s !== n.e.sizeShift);
  }

  /**
   * Invalidate Request: `pasid` undefined = no PASID prefix (all entries in
   * the range, any PASID); with a PASID, that PASID's entries and, if
   * `global`, Global entries of every PASID. `range` undefined = everything.
   */
  invalidate(p: { pasid?: number; range?: InvalidationRange; global?: boolean } = {}): number {
    this.stats.invalidations++;
    let removed = 0;
    const start = p.range?.start ?? 0n;
    const end = p.range ? start + p.range.size : 0n;
    for (const n of [...this.lru.keys()]) {
      const e = n.e;
      if (p.pasid !== undefined && e.pasid !== p.pasid && !(p.global && e.global)) continue;
      if (p.range) {
        const eEnd = e.untranslated + (1n << BigInt(e.sizeShift));
        if (e.untranslated >= end || eEnd <= start) continue;
      }
      this.remove(n);
      removed++;
    }
    this.stats.invalidated += removed;
    return removed;
  }

  /** Every entry of one PASID (any address). */
  invalidatePasid(pasid: number): number {
    return this.invalidate({ pasid });
  }

  invalidateAll(): number {
    return this.invalidate({});
  }

  /** Entries, least recently used first. */
  *entries(): IterableIterator<AtcEntry> {
    for (const n of this.lru.keys()) yield n.e;
  }
}
