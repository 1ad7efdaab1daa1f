// The IOTLB: translations keyed like hardware keys them, for SMMUv3 and VT-d.
//
// Key = (s1Tag, s2Tag, input page, granule, level):
//   s1Tag = Arm ASID / VT-d PASID, −1 for S2-only entries;
//   s2Tag = Arm VMID / VT-d DID (−1 when there is none).
// Entries hold the combined nested result with BOTH stages' permissions
// (perms = stage 1, parentPerms = stage 2), so a write hit that stage 1 allows
// and stage 2 does not faults as a stage-2 permission fault (§5.4), and
// S2-only entries (perms = parentPerms). Only leaf translations are cached
// (no walk caches), so "leaf-only" invalidations equal plain ones here.
//
// Bounded, evicting ONE entry per insert at capacity (never a flush-all), by
// second chance (CLOCK), the pseudo-LRU family hardware TLBs use: a hit only
// sets the entry's reference bit; at capacity the oldest entry is evicted
// unless referenced, in which case its bit is cleared and it moves to the
// young end. The hit path allocates nothing, writes one field and uses no
// bigint arithmetic for inputs below 2^53: an open-addressing hash table
// (linear probing, backward-shift deletion, load ≤ 1/2) keyed by (tag pair,
// page number at the entry's size split in 32-bit halves, shape code),
// probing the few (granule, level) shapes that are present, smallest first.
//
// Global (Arm nG = 0) entries are stored under the ASID that walked them:
// sharing them across ASIDs is an optimisation hardware may skip, and an
// ASID invalidation that also removes them over-invalidates, which the
// architecture allows.

import {
  type AccessRequest,
  PERM_ALL,
  type PermSet,
  type TranslationConfig,
  type TranslationFault,
  type TranslationOk,
  permits,
} from "../translation.js";
import type { InvalidationRange } from "./ranges.js";

/** A cached translation (read-only view). */
export interface IotlbEntry {
  readonly s1Tag: number;
  readonly s2Tag: number;
  /** Input page base. */
  readonly iova: bigint;
  readonly pageShift: number;
  readonly granuleShift: number;
  readonly level: number;
  /** Output page base (PA). */
  readonly output: bigint;
  /** Nested entries: IPA page base (stage-1 output) for stage-2 fault reports. */
  readonly ipa: bigint | undefined;
  /** Stage-1 permissions (the only stage's for single-stage entries). */
  readonly perms: PermSet;
  /** Stage-2 permissions (PERM_ALL when there is no stage 2; = perms for S2-only). */
  readonly parentPerms: PermSet;
  readonly kind: "s1" | "s2" | "nested";
  readonly global: boolean;
  /** A write must walk (to set dirty) instead of hitting. */
  readonly writeNeedsWalk: boolean;
  readonly execNeedsRead: boolean;
}

export interface CacheStats {
  hits: number;
  misses: number;
  inserts: number;
  evictions: number;
  /** Invalidation operations performed. */
  invalidations: number;
  /** Entries removed by invalidations. */
  invalidated: number;
}

class Node implements IotlbEntry {
  prev: Node | null = null;
  next: Node | null = null;
  /** Slot in the hash table. */
  slot = -1;
  /** CLOCK reference bit: set by a hit, cleared when the entry gets its second chance. */
  referenced = false;
  constructor(
    readonly tagKey: number,
    /** Page number at the entry's size, low and high 32-bit halves. */
    readonly pnLo: number,
    readonly pnHi: number,
    readonly shape: number,
    readonly s1Tag: number,
    readonly s2Tag: number,
    readonly iova: bigint,
    readonly pageShift: number,
    readonly granuleShift: number,
    readonly level: number,
    readonly output: bigint,
    readonly ipa: bigint | undefined,
    readonly perms: PermSet,
    readonly parentPerms: PermSet,
    readonly kind: "s1" | "s2" | "nested",
    readonly global: boolean,
    readonly writeNeedsWalk: boolean,
    readonly execNeedsRead: boolean,
  ) {
    this.iovaNum = Number(iova);
    this.outNum = Number(output);
    this.ipaNum = ipa === undefined ? -1 : Number(ipa);
  }
  /** The page bases as numbers (exact: input pages below 2^53 take the number path; PAs/IPAs are below 2^52). */
  readonly iovaNum: number;
  readonly outNum: number;
  readonly ipaNum: number;
}

// Local snapshot of imported bindings (module-namespace getters under tsx/vite stay off the hit path).
const allowed = permits;

const TAG_SPAN = 131072; // 2^17 > 65536 + 1 (VMID16 / DID16); s1Tag up to 2^20 (PASID) keeps keys < 2^38
const VPN_BITS = 45; // input pages of up to 57-bit addresses (VT-d 5-level, Arm TTB1 aliases stay distinct)
const MAX_EXACT = 2 ** 53;

/** 4K page number of an input address, as a number (fast for inputs below 2^53). */
function vpnOf(iova: bigint): number {
  const n = Number(iova);
  if (n >= 0 && n < MAX_EXACT) return Math.floor(n / 4096);
  return Number(BigInt.asUintN(VPN_BITS, iova >> 12n));
}

function tagKeyOf(s1Tag: number, s2Tag: number): number {
  return (s1Tag + 1) * TAG_SPAN + (s2Tag + 1);
}

/** Slot hash of (tag, page number halves, shape); `mask` = table size − 1. */
function hashOf(tagKey: number, pnLo: number, pnHi: number, shape: number, mask: number): number {
  let h = Math.imul(pnLo ^ shape, 0x9e3779b1);
  h = Math.imul(h ^ (h >>> 15) ^ pnHi, 0x85ebca77);
  h = Math.imul(h ^ (h >>> 13) ^ (tagKey | 0) ^ ((tagKey / 4294967296) | 0), 0xc2b2ae3d);
  return (h ^ (h >>> 16)) & mask;
}

/** Shape code = granule index × 5 + (level + 1); page shift follows from it. */
function shapeOf(granuleShift: number, level: number): number {
  const gi = granuleShift === 12 ? 0 : granuleShift === 14 ? 1 : 2;
  return gi * 5 + (level + 1);
}

interface Shape {
  readonly code: number;
  readonly pageShift: number;
  /** 2^(pageShift − 12) as a float divisor of the 4K page number. */
  readonly div: number;
  count: number;
}

export interface IotlbOptions {
  /** Maximum number of entries (default 4096). */
  readonly capacity?: number;
}

/** Filter on s1Tag used by invalidations: a tag, any, stage-1 entries only (≥ 0), or S2-only (−1). */
type S1Filter = number | "any" | "s1" | "s2only";

export class Iotlb {
  readonly capacity: number;
  readonly stats: CacheStats = { hits: 0, misses: 0, inserts: 0, evictions: 0, invalidations: 0, invalidated: 0 };
  private readonly table: (Node | null)[];
  private readonly mask: number;
  private readonly shapes: Shape[] = [];
  private active: Shape[] = [];
  private head: Node | null = null; // youngest (inserted or given a second chance last)
  private tail: Node | null = null; // oldest: the next eviction candidate
  private count = 0;

  constructor(opts: IotlbOptions = {}) {
    this.capacity = opts.capacity ?? 4096;
    if (this.capacity < 1) throw new RangeError("IOTLB capacity must be ≥ 1");
    let size = 16;
    while (size < this.capacity * 2) size *= 2;
    this.table = new Array<Node | null>(size).fill(null);
    this.mask = size - 1;
    for (let gi = 0; gi < 3; gi++) {
      const g = [12, 14, 16][gi] as number;
      for (let l = -1; l <= 3; l++) {
        const pageShift = g + (3 - l) * (g - 3);
        this.shapes[shapeOf(g, l)] = { code: shapeOf(g, l), pageShift, div: 2 ** (pageShift - 12), count: 0 };
      }
    }
  }

  get size(): number {
    return this.count;
  }

  // ----- age list (CLOCK order) -----

  private unlink(n: Node): void {
    if (n.prev) n.prev.next = n.next;
    else this.head = n.next;
    if (n.next) n.next.prev = n.prev;
    else this.tail = n.prev;
    n.prev = n.next = null;
  }

  private pushFront(n: Node): void {
    n.next = this.head;
    n.prev = null;
    if (this.head) this.head.prev = n;
    this.head = n;
    if (!this.tail) this.tail = n;
  }

  /** Find the node for a key, or undefined. */
  private find(tagKey: number, pnLo: number, pnHi: number, shape: number): Node | undefined {
    const t = this.table;
    const m = this.mask;
    for (let i = hashOf(tagKey, pnLo, pnHi, shape, m); ; i = (i + 1) & m) {
      const n = t[i];
      if (n === null || n === undefined) return undefined;
      if (n.pnLo === pnLo && n.pnHi === pnHi && n.shape === shape && n.tagKey === tagKey) return n;
    }
  }

  private place(n: Node): void {
    const t = this.table;
    const m = this.mask;
    let i = hashOf(n.tagKey, n.pnLo, n.pnHi, n.shape, m);
    while (t[i] !== null) i = (i + 1) & m;
    t[i] = n;
    n.slot = i;
  }

  /** Remove from the hash table with backward-shift deletion (no tombstones). */
  private unplace(n: Node): void {
    const t = this.table;
    const m = this.mask;
    let i = n.slot;
    t[i] = null;
    n.slot = -1;
    for (let j = (i + 1) & m; ; j = (j + 1) & m) {
      const o = t[j];
      if (o === null || o === undefined) return;
      const home = hashOf(o.tagKey, o.pnLo, o.pnHi, o.shape, m);
      // Move o back into the hole if its home is not cyclically within (i, j].
      if (i <= j ? home <= i || home > j : home <= i && home > j) {
        t[i] = o;
        o.slot = i;
        t[j] = null;
        i = j;
      }
    }
  }

  private remove(n: Node): void {
    this.unlink(n);
    this.unplace(n);
    this.count--;
    const sh = this.shapes[n.shape] as Shape;
    if (--sh.count === 0) this.active = this.active.filter((s) => s !== sh);
  }

  // ----- lookup -----

  /**
   * Find the entry translating `iova` for the tags (no permission check).
   * Counts a hit or a miss and sets the entry's reference bit.
   */
  lookup(s1Tag: number, s2Tag: number, iova: bigint): IotlbEntry | undefined {
    return this.lookupVpn(s1Tag, s2Tag, vpnOf(iova));
  }

  /**
   * lookup() for callers that keep input addresses as numbers (exact below
   * 2^53): skips the bigint conversion on the hit path.
   */
  lookupNumber(s1Tag: number, s2Tag: number, iova: number): IotlbEntry | undefined {
    return this.lookupVpn(s1Tag, s2Tag, Math.floor(iova / 4096));
  }

  private lookupVpn(s1Tag: number, s2Tag: number, vpn: number): Node | undefined {
    const tagKey = tagKeyOf(s1Tag, s2Tag);
    const act = this.active;
    for (let i = 0; i < act.length; i++) {
      const sh = act[i] as Shape;
      const pn = Math.floor(vpn / sh.div);
      const n = this.find(tagKey, pn >>> 0, Math.floor(pn / 4294967296), sh.code);
      if (n !== undefined) {
        n.referenced = true;
        this.stats.hits++;
        return n;
      }
    }
    this.stats.misses++;
    return undefined;
  }

  /**
   * Translate from the cache: undefined on a miss (including a write to an
   * entry that needs a walk to set dirty), a TranslationOk on a permitted
   * hit, or a permission fault value: stage 1 if stage-1 permissions refuse,
   * else stage 2 (§5.4).
   */
  translate(s1Tag: number, s2Tag: number, iova: bigint, access: AccessRequest): TranslationOk | TranslationFault | undefined {
    const num = Number(iova);
    const exact = num >= 0 && num < MAX_EXACT;
    const e = exact ? this.lookupVpn(s1Tag, s2Tag, Math.floor(num / 4096)) : (this.lookup(s1Tag, s2Tag, iova) as Node | undefined);
    if (e === undefined) return undefined;
    if (access.kind === "write" && e.writeNeedsWalk && access.probe !== true) {
      // Counted as a hit by lookup; correct it: the caller must walk.
      this.stats.hits--;
      this.stats.misses++;
      return undefined;
    }
    // Offset in the page: number arithmetic when the input is exact as a number.
    const off = exact ? num - e.iovaNum : Number(iova & ((1n << BigInt(e.pageShift)) - 1n));
    const ipa = e.ipaNum < 0 ? undefined : BigInt(e.ipaNum + off);
    if (access.probe !== true) {
      const s1ok = allowed(e.perms, access, e.execNeedsRead);
      if (!s1ok || !allowed(e.parentPerms, access, e.execNeedsRead)) {
        const stage = e.kind === "s2" ? 2 : !s1ok ? 1 : 2;
        return {
          ok: false,
          kind: "permission",
          stage,
          level: e.level,
          input: iova,
          ipa: stage === 2 ? (e.kind === "s2" ? iova : ipa) : undefined,
          cls: "IN",
          access: access.kind,
          privileged: access.privileged,
          perms: stage === 1 ? e.perms : e.parentPerms,
        };
      }
    }
    return {
      ok: true,
      input: iova,
      output: BigInt(e.outNum + off),
      ipa,
      pageShift: e.pageShift,
      level: e.level,
      perms: e.perms & e.parentPerms,
      descReads: EMPTY,
    };
  }

  // ----- insert -----

  /**
   * Cache a walk result for `cfg` (modes s1, s2, nested; bypass/abort are not
   * cached). Returns the entry. At capacity one entry is evicted (CLOCK, see
   * the file header; never a flush).
   */
  insert(cfg: TranslationConfig, r: TranslationOk): IotlbEntry | undefined {
    if (cfg.mode === "abort" || cfg.mode === "bypass") return undefined;
    let s1Tag: number;
    let kind: "s1" | "s2" | "nested";
    let granuleShift: number;
    let perms: PermSet;
    let parentPerms: PermSet;
    let execNeedsRead: boolean;
    if (cfg.mode === "s2") {
      if (!r.s2) return undefined;
      s1Tag = -1;
      kind = "s2";
      granuleShift = cfg.s2.format.granuleShift;
      perms = parentPerms = r.s2.perms;
      execNeedsRead = cfg.s2.format.execNeedsRead;
    } else if (cfg.mode === "s1") {
      if (!r.s1) return undefined;
      s1Tag = cfg.s1Tag;
      kind = "s1";
      granuleShift = cfg.s1.format.granuleShift;
      perms = r.s1.perms;
      parentPerms = PERM_ALL;
      execNeedsRead = cfg.s1.format.execNeedsRead;
    } else {
      if (!r.s1 || !r.s2) return undefined;
      s1Tag = cfg.s1Tag;
      kind = "nested";
      granuleShift =
        r.s1.pageShift <= r.s2.pageShift ? cfg.s1.format.granuleShift : cfg.s2.format.granuleShift;
      perms = r.s1.perms;
      parentPerms = r.s2.perms;
      execNeedsRead = cfg.s1.format.execNeedsRead || cfg.s2.format.execNeedsRead;
    }
    const writeNeedsWalk = (r.s1?.writeNeedsWalk ?? false) || (r.s2?.writeNeedsWalk ?? false);
    const global = kind === "s1" ? (r.s1?.global ?? false) : false;
    return this.insertEntry({
      s1Tag,
      s2Tag: cfg.s2Tag,
      iova: r.input,
      pageShift: r.pageShift,
      granuleShift,
      level: r.level,
      output: r.output,
      ipa: kind === "nested" ? r.ipa : undefined,
      perms,
      parentPerms,
      kind,
      global,
      writeNeedsWalk,
      execNeedsRead,
    });
  }

  /** Insert an entry built by the caller (addresses may be unaligned: they are aligned to pageShift). */
  insertEntry(e: IotlbEntry): IotlbEntry {
    const pageMask = (1n << BigInt(e.pageShift)) - 1n;
    const iova = e.iova & ~pageMask;
    const shape = shapeOf(e.granuleShift, e.level);
    const sh = this.shapes[shape];
    if (sh === undefined || sh.pageShift !== e.pageShift) {
      throw new RangeError(`IOTLB entry with granule ${e.granuleShift} level ${e.level} and size 2^${e.pageShift}`);
    }
    const tagKey = tagKeyOf(e.s1Tag, e.s2Tag);
    const pn = Math.floor(vpnOf(iova) / sh.div);
    const pnLo = pn >>> 0;
    const pnHi = Math.floor(pn / 4294967296);
    const old = this.find(tagKey, pnLo, pnHi, shape);
    if (old) this.remove(old);
    else if (this.count >= this.capacity) this.evictOne();
    const n = new Node(
      tagKey,
      pnLo,
      pnHi,
      shape,
      e.s1Tag,
      e.s2Tag,
      iova,
      e.pageShift,
      e.granuleShift,
      e.level,
      e.output & ~pageMask,
      e.ipa !== undefined ? e.ipa & ~pageMask : undefined,
      e.perms,
      e.parentPerms,
      e.kind,
      e.global,
      e.writeNeedsWalk,
      e.execNeedsRead,
    );
    this.place(n);
    this.pushFront(n);
    this.count++;
    if (sh.count++ === 0) {
      this.active = [...this.active, sh].sort((a, b) => a.pageShift - b.pageShift || a.code - b.code);
    }
    this.stats.inserts++;
    return n;
  }

  /** Second chance: skip (and rejuvenate) referenced entries from the old end, evict the first unreferenced one. */
  private evictOne(): void {
    for (let v = this.tail; v !== null; v = this.tail) {
      if (!v.referenced) {
        this.remove(v);
        this.stats.evictions++;
        return;
      }
      v.referenced = false;
      this.unlink(v);
      this.pushFront(v);
    }
  }

  /** All entries, youngest first (dump, metrics, tests). */
  *entries(): IterableIterator<IotlbEntry> {
    for (let n = this.head; n; n = n.next) yield n;
  }

  // ----- invalidation -----

  private invalidate(s2Tag: number | undefined, s1: S1Filter, range?: InvalidationRange): number {
    this.stats.invalidations++;
    let removed = 0;
    const start = range?.start ?? 0n;
    const end = range ? start + range.size : 0n;
    for (let n = this.head; n !== null; ) {
      const next: Node | null = n.next;
      const match =
        (s2Tag === undefined || n.s2Tag === s2Tag) &&
        (typeof s1 === "number" ? n.s1Tag === s1 : s1 === "s1" ? n.s1Tag >= 0 : s1 === "s2only" ? n.s1Tag === -1 : true) &&
        (range === undefined ||
          ((range.level === undefined || (n.level === range.level && (range.granuleShift === undefined || n.granuleShift === range.granuleShift))) &&
            n.iova < end &&
            n.iova + (1n << BigInt(n.pageShift)) > start));
      if (match) {
        this.remove(n);
        removed++;
      }
      n = next;
    }
    this.stats.invalidated += removed;
    return removed;
  }

  /** Everything (Arm CMD_TLBI_NSNH_ALL / VT-d global IOTLB invalidation). */
  invalidateAll(): number {
    this.stats.invalidations++;
    const removed = this.count;
    this.table.fill(null);
    this.head = this.tail = null;
    this.count = 0;
    for (const sh of this.shapes) if (sh) sh.count = 0;
    this.active = [];
    this.stats.invalidated += removed;
    return removed;
  }

  /** Every entry of a domain tag: Arm CMD_TLBI_S12_VMALL (VMID); VT-d domain-selective IOTLB (DID). */
  invalidateS2Tag(s2Tag: number): number {
    return this.invalidate(s2Tag, "any");
  }

  /** Stage-1 entries of a domain tag (s1Tag ≥ 0): Arm CMD_TLBI_NH_ALL (VMID). */
  invalidateAllS1(s2Tag: number): number {
    return this.invalidate(s2Tag, "s1");
  }

  /** Entries of one address space: Arm CMD_TLBI_NH_ASID (ASID, VMID); VT-d PIOTLB PASID-selective (PASID, DID). */
  invalidateS1Tag(s1Tag: number, s2Tag: number): number {
    return this.invalidate(s2Tag, s1Tag);
  }

  /**
   * Stage-1 entries overlapping a VA range. `s1Tag` undefined = any ASID
   * (CMD_TLBI_NH_VAA). Range from armTlbiRange (TTL level hint honoured: only
   * entries at that level and granule are targeted). `leafOnly` (Arm LEAF,
   * VT-d IH) is accepted; with no walk caches it changes nothing.
   */
  invalidateVa(p: { s2Tag: number; s1Tag?: number; range: InvalidationRange; leafOnly?: boolean }): number {
    return this.invalidate(p.s2Tag, p.s1Tag ?? "s1", p.range);
  }

  /**
   * S2-only entries overlapping an IPA range (Arm CMD_TLBI_S2_IPA). Combined
   * nested entries survive, as in the architecture: software follows with
   * S12_VMALL / NH_ALL.
   */
  invalidateIpa(p: { s2Tag: number; range: InvalidationRange; leafOnly?: boolean }): number {
    return this.invalidate(p.s2Tag, "s2only", p.range);
  }

  /** VT-d domain-selective IOTLB invalidation (DID): every entry of the domain. */
  invalidateDomain(did: number): number {
    return this.invalidate(did, "any");
  }

  /**
   * VT-d page-selective IOTLB invalidation (type 2, DID + ADDR/AM): entries of
   * the domain overlapping the range, whatever their PASID (second-stage and
   * nested entries; Linux relies on this when the S2 parent changes).
   */
  invalidateDomainPages(did: number, range: InvalidationRange, _ih = false): number {
    return this.invalidate(did, "any", range);
  }

  /** VT-d PIOTLB PASID-selective (G=2): entries of (DID, PASID). */
  invalidatePasid(did: number, pasid: number): number {
    return this.invalidate(did, pasid);
  }

  /** VT-d PIOTLB page-selective-within-PASID (G=3): (DID, PASID) entries overlapping ADDR/AM. */
  invalidatePasidPages(did: number, pasid: number, range: InvalidationRange, _ih = false): number {
    return this.invalidate(did, pasid, range);
  }
}

const EMPTY: readonly bigint[] = Object.freeze([]) as readonly bigint[];
