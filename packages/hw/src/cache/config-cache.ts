// A bounded configuration cache: decoded STEs / CDs (SMMUv3), context and
// PASID entries (VT-d), DTEs (AMD). Keyed by any primitive the device model
// chooses (e.g. `sid`, `${sid}:${ssid}`, a packed number); values are the
// decoded structures. LRU eviction of one entry at capacity (never a flush);
// invalidation by key, by predicate over (key, value), or all; counters.

import type { CacheStats } from "./iotlb.js";

export interface ConfigCacheOptions {
  /** Maximum number of entries (default 1024). */
  readonly capacity?: number;
}

export class ConfigCache<K extends string | number | bigint, V> {
  readonly capacity: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, inserts: 0, evictions: 0, invalidations: 0, invalidated: 0 };
  // A Map keeps insertion order: re-inserting on a hit makes it the most recently used (last).
  private readonly map = new Map<K, V>();

  constructor(opts: ConfigCacheOptions = {}) {
    this.capacity = opts.capacity ?? 1024;
    if (this.capacity < 1) throw new RangeError("config cache capacity must be ≥ 1");
  }

  get size(): number {
    return this.map.size;
  }

  get(key: K): V | undefined {
    const v = this.map.get(key);
    if (v === undefined) {
      this.stats.misses++;
      return undefined;
    }
    this.map.delete(key);
    this.map.set(key, v);
    this.stats.hits++;
    return v;
  }

  /** Look without touching LRU order or counters. */
  peek(key: K): V | undefined {
    return this.map.get(key);
  }

  set(key: K, value: V): void {
    if (this.map.has(key)) this.map.delete(key);
    else if (this.map.size >= this.capacity) {
      const oldest = this.map.keys().next();
      if (!oldest.done) {
        this.map.delete(oldest.value);
        this.stats.evictions++;
      }
    }
    this.map.set(key, value);
    this.stats.inserts++;
  }

  /** get, or compute with `load` and cache it unless it returns undefined. */
  getOrLoad(key: K, load: (key: K) => V | undefined): V | undefined {
    const v = this.get(key);
    if (v !== undefined) return v;
    const nv = load(key);
    if (nv !== undefined) this.set(key, nv);
    return nv;
  }

  invalidateKey(key: K): number {
    this.stats.invalidations++;
    const removed = this.map.delete(key) ? 1 : 0;
    this.stats.invalidated += removed;
    return removed;
  }

  /** Remove every entry for which `pred` holds (CFGI_STE_RANGE, CFGI_CD_ALL, PASID-cache DID-selective...). */
  invalidateWhere(pred: (key: K, value: V) => boolean): number {
    this.stats.invalidations++;
    let removed = 0;
    for (const [k, v] of [...this.map]) {
      if (pred(k, v)) {
        this.map.delete(k);
        removed++;
      }
    }
    this.stats.invalidated += removed;
    return removed;
  }

  invalidateAll(): number {
    this.stats.invalidations++;
    const removed = this.map.size;
    this.map.clear();
    this.stats.invalidated += removed;
    return removed;
  }

  /** Entries, least recently used first. */
  entries(): IterableIterator<[K, V]> {
    return this.map.entries();
  }
}
