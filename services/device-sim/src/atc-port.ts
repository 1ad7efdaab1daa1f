// An endpoint's ATC as the bus sees it: the hw AtcCache (packages/hw, the
// cache itself: lookup, LRU, PCIe invalidation semantics) plus what the
// invalidation completion depends on:
//
//  - uses: every translated DMA piece built from a cached or fresh
//    translation registers a use (PASID, untranslated range) until its batch
//    reply arrives;
//  - ATS records: every translation request from the moment it is sent until
//    the access that asked for it has consumed (or dropped) the completion.
//
// An Invalidate Request removes the matching ATC entries, poisons matching
// ATS records (their completions are never cached or used, the access asks
// again), and its completion waits for the matching uses. So when the
// Invalidate Completion leaves, no matching entry is cached, no DMA that used
// one is in flight, and no translation that was in flight when the request
// arrived will be used (PCIe ATS "Invalidate Completion" semantics; the
// itag_vector contract of bus.v1.AtcInvalidateCompletion).
import { type AtcEntry, AtcCache, type InvalidationRange } from "@iommufd/hw";
import type { AtsTranslationCompletion } from "@iommufd/proto/bus";

/** One Invalidate Request, decoded: `pasid` undefined = no PASID prefix (every PASID). */
export interface AtcInvalidation {
  pasid: number | undefined;
  /** undefined = the whole address space. */
  range: InvalidationRange | undefined;
  global: boolean;
}

/** A translated DMA in flight that used a translation of [start, end) for `pasid`. */
export interface AtcUse {
  readonly pasid: number | undefined;
  readonly start: bigint;
  readonly end: bigint;
  readonly global: boolean;
  /** Invalidations waiting for this use (created only when one has to wait). */
  waiters?: (() => void)[];
}

/** A translation request from send until consumed; see the file comment. */
export interface AtsRecord {
  readonly pasid: number | undefined;
  /** Requested (page-aligned) address. */
  readonly page: bigint;
  /** Bytes the request covers before the completion tells the size. */
  readonly unit: bigint;
  completion?: AtsTranslationCompletion;
  /** The request failed as a whole (errno, timeout). */
  error?: unknown;
  /** An invalidation overlapped it: never cache or use its completion. */
  poisoned: boolean;
  /** Accesses holding it. */
  refs: number;
  /** Settles when the completion (or error) is in (set by the requester right after beginAts). */
  ready: Promise<void>;
}

function overlaps(inv: AtcInvalidation, pasid: number | undefined, start: bigint, end: bigint, global: boolean): boolean {
  // PCIe ATS: no PASID prefix → every entry in the range, whatever its PASID;
  // with a PASID → that PASID's entries, plus Global ones when Global Invalidate is set.
  if (inv.pasid !== undefined && pasid !== inv.pasid && !(inv.global && global)) return false;
  if (!inv.range) return true;
  const iStart = inv.range.start;
  const iEnd = iStart + inv.range.size;
  return start < iEnd && end > iStart;
}

/** Range of a completion (size_log2 ≥ 64 = everything). */
export function completionRange(page: bigint, c: AtsTranslationCompletion): { start: bigint; end: bigint } {
  if (c.sizeLog2 >= 64) return { start: 0n, end: 1n << 64n };
  const size = 1n << BigInt(Math.max(12, c.sizeLog2));
  const start = page & ~(size - 1n);
  return { start, end: start + size };
}

export interface AtcEntryDump {
  entry: AtcEntry;
  hits: number;
}

export class DeviceAtc {
  readonly cache: AtcCache;
  private readonly entryHits = new WeakMap<AtcEntry, number>();
  private readonly uses = new Set<AtcUse>();
  private readonly records = new Set<AtsRecord>();

  constructor(capacity: number) {
    this.cache = new AtcCache({ capacity });
  }

  /** The cached entry for (pasid, addr), counting a hit on it. */
  lookup(pasid: number | undefined, addr: bigint): AtcEntry | undefined {
    const e = this.cache.lookup(pasid, addr);
    if (e) this.entryHits.set(e, (this.entryHits.get(e) ?? 0) + 1);
    return e;
  }

  /** Cache a completion (callers checked it is usable and not poisoned). */
  insert(pasid: number | undefined, page: bigint, c: AtsTranslationCompletion): void {
    if (c.sizeLog2 > 63) return; // a whole-space translation does not fit the cache's key; used once, not cached
    this.cache.insert({
      pasid,
      untranslated: page,
      sizeShift: Math.max(12, c.sizeLog2),
      translated: c.translatedAddr,
      r: c.r,
      w: c.w,
      exe: c.exe,
      priv: c.priv,
      global: c.global,
      noSnoop: c.n,
      untranslatedOnly: c.u,
    });
  }

  /** Register a translated DMA that uses [start, end) of `pasid`'s translations; endUse() when its reply is in. */
  beginUse(pasid: number | undefined, start: bigint, end: bigint, global: boolean): AtcUse {
    const use: AtcUse = { pasid, start, end, global };
    this.uses.add(use);
    return use;
  }

  endUse(use: AtcUse): void {
    if (!this.uses.delete(use)) return;
    if (use.waiters) for (const w of use.waiters) w();
  }

  /** Track a translation request from now until release(). */
  beginAts(pasid: number | undefined, page: bigint, unit: bigint): AtsRecord {
    const rec: AtsRecord = { pasid, page, unit, poisoned: false, refs: 1, ready: Promise.resolve() };
    this.records.add(rec);
    return rec;
  }

  releaseAts(rec: AtsRecord): void {
    rec.refs--;
    if (rec.refs <= 0) this.records.delete(rec);
  }

  /** Uses in flight now. */
  get usesInFlight(): number {
    return this.uses.size;
  }

  /**
   * Apply Invalidate Requests: drop matching entries and poison matching
   * translation requests now; the promise settles once every matching use
   * registered before this call has completed.
   */
  invalidate(invs: AtcInvalidation[]): { removed: number; waitFor: Promise<void> } {
    let removed = 0;
    const waits: Promise<void>[] = [];
    for (const inv of invs) {
      removed += this.cache.invalidate({ pasid: inv.pasid, range: inv.range, global: inv.global });
      for (const rec of this.records) {
        if (rec.poisoned) continue;
        const r = rec.completion ? completionRange(rec.page, rec.completion) : { start: rec.page, end: rec.page + rec.unit };
        if (overlaps(inv, rec.pasid, r.start, r.end, rec.completion?.global ?? false)) rec.poisoned = true;
      }
      for (const u of this.uses) {
        if (overlaps(inv, u.pasid, u.start, u.end, u.global)) waits.push(new Promise<void>((r) => (u.waiters ??= []).push(r)));
      }
    }
    return { removed, waitFor: Promise.all(waits).then(() => undefined) };
  }

  /** Forget everything (the host forgot the device): entries gone, in-flight requests poisoned. */
  flush(): void {
    this.cache.invalidateAll();
    for (const rec of this.records) rec.poisoned = true;
  }

  dump(): AtcEntryDump[] {
    return [...this.cache.entries()].map((entry) => ({ entry, hits: this.entryHits.get(entry) ?? 0 }));
  }
}
