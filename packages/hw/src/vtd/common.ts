// The VT-d model's view of the common translation path: the walker and the
// caches, as the narrow interfaces the Vtd class calls. commonWalker and
// VtdCacheSet bind them to walk/ and cache/ (the Vtd defaults). This is the
// VT-d adapter over the common code: VT-d's invalidation granularities (DID,
// DID+PASID, page ranges with AM, IH) expressed on the common Iotlb, and the
// context / PASID caches as two common ConfigCaches.

import { ConfigCache } from "../cache/config-cache.js";
import { Iotlb } from "../cache/iotlb.js";
import type { InvalidationRange } from "../cache/ranges.js";
import type { PhysicalMemory } from "../memory.js";
import type { AccessRequest, CacheTags, PermSet, TranslationConfig, TranslationOk, TranslationResult, WalkOptions } from "../translation.js";
import { translate } from "../walk/walk.js";
import type { CachedContext, CachedPasidEntry } from "./vtd.js";

export interface VtdWalker {
  walk(mem: PhysicalMemory, cfg: TranslationConfig, input: bigint, access: AccessRequest, opts?: WalkOptions): TranslationResult;
}

/** The common walker (walk/walk.ts translate). */
export const commonWalker: VtdWalker = { walk: translate };

/** What an IOTLB hit gives back. */
export interface VtdIotlbHit {
  readonly outputBase: bigint;
  readonly pageShift: number;
  /** Effective permissions (stage 1 ∩ stage 2). */
  readonly perms: PermSet;
  readonly global: boolean;
  readonly writeNeedsWalk: boolean;
}

export interface VtdIotlb {
  lookup(tags: CacheTags, input: bigint): VtdIotlbHit | undefined;
  insert(cfg: TranslationConfig, r: TranslationOk): void;
  /** IOTLB descriptor G=1 / SRTP. */
  invalidateAll(): void;
  /** IOTLB descriptor G=2: every entry tagged with the DID, any PASID. */
  invalidateDomain(did: number): void;
  /**
   * IOTLB descriptor G=3 (page-selective by DID): entries of the DID whose
   * input overlaps the range (second-stage entries: their GPA), and nested
   * entries whose GPA overlaps it (the second-stage mapping under them
   * changed). `ih` = leaf-only hint (no walk caches: no effect).
   */
  invalidateDomainRange(did: number, range: InvalidationRange, ih: boolean): void;
  /** PASID-based IOTLB G=2: entries of (DID, PASID). */
  invalidatePasid(did: number, pasid: number): void;
  /** PASID-based IOTLB G=3: entries of (DID, PASID) overlapping the range. */
  invalidatePasidRange(did: number, pasid: number, range: InvalidationRange, ih: boolean): void;
  readonly size: number;
}

export interface VtdContextCache {
  lookup(rid: number): CachedContext | undefined;
  insert(rid: number, v: CachedContext): void;
  invalidate(pred: (rid: number) => boolean): void;
  readonly size: number;
}

export interface VtdPasidCache {
  lookup(rid: number, pasid: number): CachedPasidEntry | undefined;
  insert(rid: number, pasid: number, v: CachedPasidEntry): void;
  invalidate(pred: (e: CachedPasidEntry) => boolean): void;
  readonly size: number;
}

export interface VtdCaches {
  readonly iotlb: VtdIotlb;
  readonly context: VtdContextCache;
  readonly pasid: VtdPasidCache;
  /** SRTP with CAP.ESRTPS: every DMA-remapping cache. */
  invalidateAll(): void;
}

/** VT-d granularities on the common Iotlb. */
export class VtdIotlbAdapter implements VtdIotlb {
  constructor(readonly iotlb: Iotlb) {}

  get size(): number {
    return this.iotlb.size;
  }

  lookup(tags: CacheTags, input: bigint): VtdIotlbHit | undefined {
    const e = this.iotlb.lookup(tags.s1Tag, tags.s2Tag, input);
    if (!e) return undefined;
    return { outputBase: e.output, pageShift: e.pageShift, perms: e.perms & e.parentPerms, global: e.global, writeNeedsWalk: e.writeNeedsWalk };
  }

  insert(cfg: TranslationConfig, r: TranslationOk): void {
    this.iotlb.insert(cfg, r);
  }

  invalidateAll(): void {
    this.iotlb.invalidateAll();
  }

  invalidateDomain(did: number): void {
    this.iotlb.invalidateDomain(did);
  }

  invalidateDomainRange(did: number, range: InvalidationRange, ih: boolean): void {
    // Nested entries depend on the second-stage mapping of their GPA: drop
    // the PASIDs whose cached GPA pages overlap the range.
    const end = range.start + range.size;
    const pasids = new Set<number>();
    for (const e of this.iotlb.entries()) {
      if (e.kind !== "nested" || e.s2Tag !== did || e.ipa === undefined) continue;
      const eEnd = e.ipa + (1n << BigInt(e.pageShift));
      if (e.ipa < end && eEnd > range.start) pasids.add(e.s1Tag);
    }
    for (const p of pasids) this.iotlb.invalidateS1Tag(p, did);
    this.iotlb.invalidateDomainPages(did, range, ih);
  }

  invalidatePasid(did: number, pasid: number): void {
    this.iotlb.invalidatePasid(did, pasid);
  }

  invalidatePasidRange(did: number, pasid: number, range: InvalidationRange, ih: boolean): void {
    this.iotlb.invalidatePasidPages(did, pasid, range, ih);
  }
}

const PASID_SPAN = 2 ** 20;

export interface VtdCacheOptions {
  readonly iotlbCapacity?: number;
  readonly contextCapacity?: number;
  readonly pasidCapacity?: number;
}

/** Context cache, PASID cache and IOTLB on the common ConfigCache / Iotlb. */
export class VtdCacheSet implements VtdCaches {
  readonly iotlbCache: Iotlb;
  readonly contextCache: ConfigCache<number, CachedContext>;
  readonly pasidCache: ConfigCache<number, CachedPasidEntry>;
  readonly iotlb: VtdIotlbAdapter;
  readonly context: VtdContextCache;
  readonly pasid: VtdPasidCache;

  constructor(opts: VtdCacheOptions = {}) {
    this.iotlbCache = new Iotlb({ capacity: opts.iotlbCapacity ?? 4096 });
    this.contextCache = new ConfigCache({ capacity: opts.contextCapacity ?? 256 });
    this.pasidCache = new ConfigCache({ capacity: opts.pasidCapacity ?? 1024 });
    this.iotlb = new VtdIotlbAdapter(this.iotlbCache);
    const cc = this.contextCache;
    const pc = this.pasidCache;
    this.context = {
      lookup: (rid) => cc.get(rid),
      insert: (rid, v) => cc.set(rid, v),
      invalidate: (pred) => {
        cc.invalidateWhere((rid) => pred(rid));
      },
      get size() {
        return cc.size;
      },
    };
    this.pasid = {
      lookup: (rid, pasid) => pc.get(rid * PASID_SPAN + pasid),
      insert: (rid, pasid, v) => pc.set(rid * PASID_SPAN + pasid, v),
      invalidate: (pred) => {
        pc.invalidateWhere((_k, v) => pred(v));
      },
      get size() {
        return pc.size;
      },
    };
  }

  invalidateAll(): void {
    this.iotlbCache.invalidateAll();
    this.contextCache.invalidateAll();
    this.pasidCache.invalidateAll();
  }
}
