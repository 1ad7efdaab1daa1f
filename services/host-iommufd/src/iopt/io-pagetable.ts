// The IOVA layer of one IOAS (the kernel's io_pagetable): areas (mapped
// ranges, whole-area unmap only), reserved ranges with their owners, the
// allowed list, iova_alignment, automatic IOVA allocation, and the domains
// (HWPT_PAGINGs) that mirror every area. Checks follow the kernel's order
// (reference/iommufd-uapi.md §3.5–3.8, §4). Every operation is all or
// nothing: a failure part-way undoes what was done.

import { check, ErrnoError } from "@iommufd/kit";
import { BTree } from "../btree.js";
import type { FailNth } from "../core/fail-nth.js";
import { PAGE, type UserMm } from "../mm/user-mm.js";
import { Pages, type PagesSource } from "./pages.js";

export const ULONG_MAX = (1n << 64n) - 1n;
const HUGE_PAGE = 0x20_0000n;
const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

export interface Prot {
  read: boolean;
  write: boolean;
}

export interface IovaRange {
  start: bigint;
  last: bigint;
}

/** A piece of an existing Pages (IOAS_COPY shares pages instead of pinning them again). */
export interface SharedPiece {
  pages: Pages;
  offset: bigint;
  length: bigint;
}

export interface Area {
  iova: bigint;
  last: bigint;
  pages: Pages;
  /** byte offset into `pages` of this area's first byte */
  offset: bigint;
  prot: Prot;
  /** internal pins (HW queue backing): unmap → EBUSY while > 0 */
  locks: number;
}

/** What the IOVA layer needs from a domain (a HWPT_PAGING's page table). */
export interface IoptDomain {
  /** Smallest page the domain maps: raises the IOAS's iova_alignment. */
  readonly pgsizeMin: bigint;
  /** IOVAs the domain can translate; the rest is reserved while it is attached. */
  readonly aperture: IovaRange;
  /** Map [iova, iova+length) to the frames given by pfnAt(byte offset). All or nothing. */
  map(iova: bigint, length: bigint, pfnAt: (offset: bigint) => number, prot: Prot): void;
  unmap(iova: bigint, length: bigint): void;
}

function roundupPow2(n: bigint): bigint {
  let p = 1n;
  while (p < n) p <<= 1n;
  return p;
}

function lowestSetBit(n: bigint): bigint {
  return n & -n;
}

export class IoPagetable {
  readonly areas = new BTree<bigint, Area>(undefined, cmp);
  private readonly reserved = new BTree<bigint, IovaRange & { owner: object }>(undefined, cmp);
  private allowed: IovaRange[] = [];
  readonly domains: IoptDomain[] = [];
  disableLargePages = false;
  /** Bytes currently mapped. */
  mappedBytes = 0n;

  constructor(
    readonly mm: UserMm,
    private readonly failNth: FailNth,
  ) {}

  get iovaAlignment(): bigint {
    let a = 1n;
    for (const d of this.domains) if (d.pgsizeMin > a) a = d.pgsizeMin;
    if (this.disableLargePages && a < PAGE) a = PAGE;
    return a;
  }

  private needsPin(): boolean {
    return this.domains.length > 0;
  }

  // ---- interval helpers ------------------------------------------------

  /** First area intersecting [start, last], if any. */
  private firstArea(start: bigint, last: bigint): Area | undefined {
    const before = this.areas.getPairOrNextLower(start);
    if (before && before[1].last >= start) return before[1];
    const after = this.areas.getPairOrNextHigher(start);
    return after && after[1].iova <= last ? after[1] : undefined;
  }

  private areasIn(start: bigint, last: bigint): Area[] {
    const out: Area[] = [];
    const first = this.firstArea(start, last);
    if (!first) return out;
    this.areas.forRange(first.iova, last, true, (_k, a) => {
      out.push(a);
    });
    return out;
  }

  /** Reserved ranges may overlap each other (several owners); the set is small, so scan it. */
  private reservedHit(start: bigint, last: bigint): boolean {
    for (const r of this.reserved.values()) {
      if (r.start > last) return false;
      if (r.last >= start) return true;
    }
    return false;
  }

  private allowedHit(start: bigint, last: bigint): boolean {
    return this.allowed.some((r) => r.start <= last && r.last >= start);
  }

  // ---- IOMMU_IOAS_IOVA_RANGES / ALLOW_IOVAS / reservations --------------

  /** The holes of the reserved set over [0, ULONG_MAX] (allowed ranges do not narrow it). */
  iovaRanges(): IovaRange[] {
    const merged: IovaRange[] = [];
    for (const r of this.reserved.valuesArray()) {
      const lastM = merged[merged.length - 1];
      if (lastM && r.start <= lastM.last + 1n) {
        if (r.last > lastM.last) lastM.last = r.last;
      } else merged.push({ start: r.start, last: r.last });
    }
    const holes: IovaRange[] = [];
    let cur = 0n;
    for (const r of merged) {
      if (r.start > cur) holes.push({ start: cur, last: r.start - 1n });
      cur = r.last + 1n;
    }
    if (cur <= ULONG_MAX) holes.push({ start: cur, last: ULONG_MAX });
    return holes;
  }

  setAllowed(ranges: IovaRange[]): void {
    const sorted = [...ranges].sort((a, b) => cmp(a.start, b.start));
    for (const [i, r] of sorted.entries()) {
      check(r.start < r.last, "EINVAL", `allowed range [0x${r.start.toString(16)}, 0x${r.last.toString(16)}] is empty or inverted`);
      const prev = sorted[i - 1];
      check(!prev || prev.last < r.start, "EINVAL", "allowed ranges overlap");
    }
    for (const r of sorted) {
      if (this.reservedHit(r.start, r.last)) throw new ErrnoError("EADDRINUSE", "allowed range intersects a reserved range");
    }
    this.allowed = sorted;
  }

  /** Reserve [start, last] for `owner` (a domain aperture, a device's regions): EADDRINUSE on a mapped or allowed IOVA. */
  addReserved(start: bigint, last: bigint, owner: object): void {
    if (this.firstArea(start, last)) throw new ErrnoError("EADDRINUSE", "reserved range intersects a mapped area");
    if (this.allowedHit(start, last)) throw new ErrnoError("EADDRINUSE", "reserved range intersects an allowed range");
    // several owners may reserve the same start: key by start and keep distinct entries
    let key = start;
    while (this.reserved.has(key)) key++;
    this.reserved.set(key, { start, last, owner });
  }

  removeReserved(owner: object): void {
    for (const [k, r] of this.reserved.toArray()) if (r.owner === owner) this.reserved.delete(k);
  }

  // ---- IOMMU_IOAS_MAP / MAP_FILE / COPY -------------------------------

  /** Automatic IOVA (§4.2): first hole that fits, lowest address, never 0. */
  private allocIova(length: bigint, srcAddr: bigint): bigint {
    check(length !== 0n && length < ULONG_MAX / 2n, "EOVERFLOW", "length too large for automatic IOVA");
    let align = roundupPow2(length);
    if (srcAddr !== 0n) {
      const low = lowestSetBit(srcAddr);
      if (low < align) align = low;
    }
    const cap = this.disableLargePages ? PAGE : HUGE_PAGE;
    if (align > cap) align = cap;
    check(align >= this.iovaAlignment, "EINVAL", "source address alignment is below the IOAS iova_alignment");
    const subPage = srcAddr & (PAGE - 1n);
    const windows = this.allowed.length > 0 ? this.allowed : [{ start: PAGE, last: ULONG_MAX - PAGE }];
    const blockers = [...this.reserved.valuesArray()];
    for (const w of windows) {
      let cand = this.alignCandidate(w.start, align, subPage);
      for (;;) {
        if (cand === 0n) cand = this.alignCandidate(1n, align, subPage);
        const last = cand + length - 1n;
        if (last > w.last) break;
        const area = this.firstArea(cand, last);
        const res = blockers.find((r) => r.start <= last && r.last >= cand);
        if (!area && !res) return cand;
        const next = (area ? area.last : 0n) > (res ? res.last : 0n) ? (area as Area).last : (res as IovaRange).last;
        cand = this.alignCandidate(next + 1n, align, subPage);
      }
    }
    throw new ErrnoError("ENOSPC", "no free IOVA range fits");
  }

  private alignCandidate(from: bigint, align: bigint, subPage: bigint): bigint {
    if (subPage !== 0n) {
      const base = (from - subPage + PAGE - 1n) & ~(PAGE - 1n);
      const c = base + subPage;
      return c < from ? c + PAGE : c;
    }
    return (from + align - 1n) & ~(align - 1n);
  }

  /** Steps 5–9 of IOMMU_IOAS_MAP: check the range and choose (or check) the IOVA. */
  private place(length: bigint, opts: { iova?: bigint; srcAddr: bigint }): bigint {
    check(opts.srcAddr + length <= ULONG_MAX, "EOVERFLOW", "source address + length overflows");
    check(length !== 0n, "EINVAL", "length is 0");
    const align = this.iovaAlignment;
    check(length % align === 0n, "EINVAL", `length is not a multiple of iova_alignment ${align}`);
    let iova: bigint;
    if (opts.iova !== undefined) {
      iova = opts.iova;
      check(iova % align === 0n, "EINVAL", `iova is not aligned to iova_alignment ${align}`);
      check(iova + length - 1n <= ULONG_MAX, "EOVERFLOW", "iova + length overflows");
      if (this.reservedHit(iova, iova + length - 1n)) throw new ErrnoError("EINVAL", "iova range intersects a reserved range");
      if (this.firstArea(iova, iova + length - 1n)) throw new ErrnoError("EEXIST", "iova range is already mapped");
    } else {
      iova = this.allocIova(length, opts.srcAddr);
    }
    check((opts.srcAddr & (PAGE - 1n)) % align === 0n, "EINVAL", "source sub-page offset is not aligned to iova_alignment");
    return iova;
  }

  /** IOMMU_IOAS_MAP / MAP_FILE (steps 5–10): map `length` bytes of a new source. */
  map(src: PagesSource, length: bigint, opts: { iova?: bigint; prot: Prot; srcAddr: bigint }): bigint {
    const iova = this.place(length, opts);
    this.insert(iova, [{ pages: new Pages(this.mm, src, length), offset: 0n, length }], opts.prot);
    return iova;
  }

  /** IOMMU_IOAS_COPY destination: map the source pieces back to back, sharing their pages. */
  mapShared(pieces: SharedPiece[], opts: { iova?: bigint; prot: Prot; srcAddr: bigint }): bigint {
    const length = pieces.reduce((n, p) => n + p.length, 0n);
    const iova = this.place(length, opts);
    this.insert(iova, pieces, opts.prot);
    return iova;
  }

  /** One area per piece, each pinned and mapped into every domain; all or nothing. */
  private insert(iova: bigint, pieces: SharedPiece[], prot: Prot): void {
    const added: Area[] = [];
    let at = iova;
    try {
      for (const p of pieces) {
        this.failNth.point("iopt_map: alloc area");
        const area: Area = { iova: at, last: at + p.length - 1n, pages: p.pages.get(), offset: p.offset, prot, locks: 0 };
        try {
          this.fillArea(area);
        } catch (e) {
          p.pages.put();
          throw e;
        }
        this.areas.set(at, area);
        this.mappedBytes += p.length;
        added.push(area);
        at += p.length;
      }
    } catch (e) {
      for (const a of added) this.removeArea(a);
      throw e;
    }
  }

  /** Pin (when domains exist) and map an area into every domain; undone on failure. */
  private fillArea(area: Area): void {
    if (!this.needsPin()) return;
    this.failNth.point("iopt_map: pin pages");
    area.pages.pin();
    const done: IoptDomain[] = [];
    try {
      for (const d of this.domains) {
        this.failNth.point("iopt_map: map into domain");
        this.mapInto(d, area);
        done.push(d);
      }
    } catch (e) {
      for (const d of done) d.unmap(area.iova, area.last - area.iova + 1n);
      area.pages.unpin();
      throw e;
    }
  }

  private mapInto(d: IoptDomain, area: Area): void {
    d.map(area.iova, area.last - area.iova + 1n, (off) => area.pages.pfnAt(area.offset + off), area.prot);
  }

  /**
   * IOAS_COPY source side: the areas fully covering [iova, iova+length) contiguously (else ENOENT).
   * Returns the pieces to map at the destination, sharing their Pages.
   */
  copySource(iova: bigint, length: bigint): SharedPiece[] {
    check(length !== 0n, "EINVAL", "length is 0");
    const last = iova + length - 1n;
    const pieces: SharedPiece[] = [];
    let cur = iova;
    for (const a of this.areasIn(iova, last)) {
      if (a.iova > cur) break;
      const end = a.last < last ? a.last : last;
      pieces.push({ pages: a.pages, offset: a.offset + (cur - a.iova), length: end - cur + 1n });
      cur = end + 1n;
      if (cur > last) return pieces;
    }
    throw new ErrnoError("ENOENT", "source range is not fully mapped");
  }

  // ---- IOMMU_IOAS_UNMAP -------------------------------------------------

  /** Unmap whole areas inside [iova, iova+length); partial area or nothing → ENOENT; locked → EBUSY. */
  unmap(iova: bigint, length: bigint): bigint {
    check(length !== 0n, "EINVAL", "length is 0");
    check(iova + length - 1n <= ULONG_MAX, "EOVERFLOW", "iova + length overflows");
    const last = iova + length - 1n;
    const hit = this.areasIn(iova, last);
    if (hit.length === 0) throw new ErrnoError("ENOENT", "nothing is mapped in the range");
    for (const a of hit) {
      if (a.iova < iova || a.last > last) throw new ErrnoError("ENOENT", `area [0x${a.iova.toString(16)}, 0x${a.last.toString(16)}] is only partly inside the range`);
      if (a.locks > 0) throw new ErrnoError("EBUSY", "area is locked by an internal pin (HW queue)");
    }
    return hit.reduce((sum, a) => sum + this.removeArea(a), 0n);
  }

  /** Unmap everything (iova 0, length U64_MAX): never ENOENT. */
  unmapAll(): bigint {
    const all = this.areas.valuesArray();
    for (const a of all) if (a.locks > 0) throw new ErrnoError("EBUSY", "an area is locked by an internal pin (HW queue)");
    return all.reduce((sum, a) => sum + this.removeArea(a), 0n);
  }

  private removeArea(a: Area): bigint {
    const len = a.last - a.iova + 1n;
    for (const d of this.domains) d.unmap(a.iova, len);
    if (this.needsPin()) a.pages.unpin();
    a.pages.put();
    this.areas.delete(a.iova);
    this.mappedBytes -= len;
    return len;
  }

  // ---- domains -----------------------------------------------------------

  /**
   * Attach a domain: reserve outside its aperture, check alignment, pin (first domain) and map every area.
   * All or nothing.
   */
  addDomain(d: IoptDomain): void {
    check(d.pgsizeMin <= PAGE, "EINVAL", "domain page size is above PAGE_SIZE");
    const newAlign = d.pgsizeMin > this.iovaAlignment ? d.pgsizeMin : this.iovaAlignment;
    for (const a of this.areas.valuesArray()) {
      const misaligned = a.iova % newAlign !== 0n || (a.last + 1n) % newAlign !== 0n;
      if (misaligned) throw new ErrnoError("EADDRINUSE", "an existing area is not aligned to the domain's page size");
    }
    const owner = d as object;
    const ap = d.aperture;
    try {
      if (ap.start > 0n) this.addReserved(0n, ap.start - 1n, owner);
      if (ap.last < ULONG_MAX) this.addReserved(ap.last + 1n, ULONG_MAX, owner);
    } catch (e) {
      this.removeReserved(owner);
      throw e;
    }
    const first = this.domains.length === 0;
    const done: Area[] = [];
    const pinned: Area[] = [];
    try {
      for (const a of this.areas.valuesArray()) {
        if (first) {
          this.failNth.point("iopt_add_domain: pin");
          a.pages.pin();
          pinned.push(a);
        }
        this.failNth.point("iopt_add_domain: map");
        this.mapInto(d, a);
        done.push(a);
      }
    } catch (e) {
      for (const a of done) d.unmap(a.iova, a.last - a.iova + 1n);
      for (const a of pinned) a.pages.unpin();
      this.removeReserved(owner);
      throw e;
    }
    this.domains.push(d);
  }

  /** Detach a domain: unmap everything from it, drop its reservations, unpin after the last domain. */
  removeDomain(d: IoptDomain): void {
    const i = this.domains.indexOf(d);
    if (i < 0) return;
    this.domains.splice(i, 1);
    for (const a of this.areas.valuesArray()) {
      d.unmap(a.iova, a.last - a.iova + 1n);
      if (this.domains.length === 0) a.pages.unpin();
    }
    this.removeReserved(d as object);
  }

  /** HUGE_PAGES=0: PAGE_SIZE granularity; existing misaligned areas → EADDRINUSE. */
  setDisableLargePages(disable: boolean): void {
    if (disable && !this.disableLargePages) {
      for (const a of this.areas.valuesArray()) {
        if (a.iova % PAGE !== 0n || (a.last + 1n) % PAGE !== 0n) throw new ErrnoError("EADDRINUSE", "an area is not PAGE_SIZE aligned");
      }
    }
    this.disableLargePages = disable;
  }

  /** Release everything (IOAS destroyed): areas are unmapped; domains were removed before. */
  destroy(): void {
    for (const a of this.areas.valuesArray()) this.removeArea(a);
  }
}
