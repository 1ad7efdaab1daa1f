// Guest kernel memory: the physical page allocator, and the kernel's own view
// of the structures it owns in guest RAM (page tables, stream table, CD
// tables, context / PASID tables, the command / invalidation queue).
//
// packages/hw builds page tables through a synchronous PhysicalMemory, but
// guest RAM is remote (a NATS round trip per batch). The guest kernel owns
// these pages — nothing else writes them except hardware A/D updates — so it
// keeps a local copy of each (KernelMemory, as a CPU keeps them in its
// caches), records every 64-bit word it changes, and pushes the changed
// words to guest RAM in one batch (drain) that it awaits before the register
// write or invalidation that depends on them (DESIGN §3 ordering). Only
// changed words are written, so A/D bits the hardware set in other words of
// the same page are never overwritten.
import { ByteMemory, type MemResult, PAGE_SIZE, type PageAllocator } from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import type { GuestRamOp, RamRegion } from "./ram.js";

const PAGE = BigInt(PAGE_SIZE);
const WORDS_PER_PAGE = PAGE_SIZE / 8;

export function pageAlignUp(n: bigint): bigint {
  return (n + PAGE - 1n) & ~(PAGE - 1n);
}

/** One allocation of guest physical memory. `fresh`: never handed out before, so still zero in RAM. */
export interface PhysRange {
  gpa: bigint;
  bytes: bigint;
  fresh: boolean;
}

/**
 * The guest's physical page allocator: bump allocation through the RAM
 * regions (fresh, zero pages: guest RAM is a new memfd) plus free lists by
 * size for reuse (not zero: callers that need zero pages clear them).
 * Allocations are naturally aligned up to `maxAlign`.
 */
export class PhysAllocator {
  private readonly bumps: { next: bigint; end: bigint }[];
  private readonly free = new Map<bigint, bigint[]>();
  used = 0n;

  constructor(regions: readonly RamRegion[], reserveLow = 0x10_0000n) {
    this.bumps = regions.map((r, i) => ({ next: i === 0 ? r.gpa + reserveLow : r.gpa, end: r.gpa + r.size }));
  }

  /** `bytes` is rounded up to pages; aligned to min(size rounded to a power of two, 2 MiB). */
  alloc(bytes: bigint | number): PhysRange | undefined {
    const size = pageAlignUp(BigInt(bytes));
    if (size <= 0n) return undefined;
    let align = PAGE;
    while (align < size && align < 0x20_0000n) align <<= 1n;
    const list = this.free.get(size);
    if (list) {
      const i = list.findIndex((g) => (g & (align - 1n)) === 0n);
      if (i >= 0) {
        const gpa = list.splice(i, 1)[0] as bigint;
        this.used += size;
        return { gpa, bytes: size, fresh: false };
      }
    }
    for (const b of this.bumps) {
      const gpa = (b.next + align - 1n) & ~(align - 1n);
      if (gpa + size > b.end) continue;
      // The skipped alignment gap is reusable.
      if (gpa > b.next) this.release(b.next, gpa - b.next);
      b.next = gpa + size;
      this.used += size;
      return { gpa, bytes: size, fresh: true };
    }
    return undefined;
  }

  /** Return a range (page granular) for reuse. */
  freeRange(gpa: bigint, bytes: bigint | number): void {
    const size = pageAlignUp(BigInt(bytes));
    this.used -= size;
    this.release(gpa, size);
  }

  private release(gpa: bigint, size: bigint): void {
    // Keep free ranges as whole pages of their own size class.
    let list = this.free.get(size);
    if (!list) this.free.set(size, (list = []));
    list.push(gpa);
  }
}

/**
 * The kernel's local copy of the guest-RAM pages it owns, with dirty-word
 * tracking. Accesses to pages it does not own abort (a guest kernel bug, not
 * something to hide).
 */
export class KernelMemory extends ByteMemory {
  readonly paBits = 52;
  private readonly pages = new Map<bigint, Uint8Array>();
  /** Dirty words per page, in the order pages were first dirtied. */
  private readonly dirty = new Map<bigint, Uint8Array>();
  /** Reused pages taken over since the last drain: written whole, first. */
  private readonly zeroFirst = new Set<bigint>();

  /** Take ownership of [gpa, gpa+bytes): zero locally; `fresh` pages are known zero in RAM too. */
  own(gpa: bigint, bytes: bigint, fresh: boolean): void {
    for (let a = gpa & ~(PAGE - 1n); a < gpa + bytes; a += PAGE) {
      const pfn = a >> 12n;
      this.pages.set(pfn, new Uint8Array(PAGE_SIZE));
      this.dirty.delete(pfn);
      if (fresh) this.zeroFirst.delete(pfn);
      else this.zeroFirst.add(pfn);
    }
  }

  /** Give pages back (their pending writes are dropped). */
  disown(gpa: bigint, bytes: bigint): void {
    for (let a = gpa & ~(PAGE - 1n); a < gpa + bytes; a += PAGE) {
      this.pages.delete(a >> 12n);
      this.dirty.delete(a >> 12n);
      this.zeroFirst.delete(a >> 12n);
    }
  }

  owns(gpa: bigint): boolean {
    return this.pages.has(gpa >> 12n);
  }

  /** 64-bit words waiting to be written. */
  get pendingWords(): number {
    let n = this.zeroFirst.size * WORDS_PER_PAGE;
    for (const [pfn, d] of this.dirty) if (!this.zeroFirst.has(pfn)) for (const x of d) n += x;
    return n;
  }

  private abort(addr: bigint): { ok: false; abort: "external"; addr: bigint } {
    return { ok: false, abort: "external", addr };
  }

  read(addr: bigint, length: number): MemResult<Uint8Array> {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const a = addr + BigInt(done);
      const p = this.pages.get(a >> 12n);
      if (!p) return this.abort(a);
      const off = Number(a & (PAGE - 1n));
      const n = Math.min(length - done, PAGE_SIZE - off);
      out.set(p.subarray(off, off + n), done);
      done += n;
    }
    return { ok: true, value: out };
  }

  write(addr: bigint, data: Uint8Array): MemResult<void> {
    // Check ownership first so a failing write changes nothing.
    for (let a = addr & ~(PAGE - 1n); a < addr + BigInt(data.length); a += PAGE) if (!this.pages.has(a >> 12n)) return this.abort(a);
    let done = 0;
    while (done < data.length) {
      const a = addr + BigInt(done);
      const pfn = a >> 12n;
      const p = this.pages.get(pfn) as Uint8Array;
      const off = Number(a & (PAGE - 1n));
      const n = Math.min(data.length - done, PAGE_SIZE - off);
      p.set(data.subarray(done, done + n), off);
      let d = this.dirty.get(pfn);
      if (!d) this.dirty.set(pfn, (d = new Uint8Array(WORDS_PER_PAGE)));
      for (let w = off >> 3; w <= (off + n - 1) >> 3; w++) d[w] = 1;
      done += n;
    }
    return { ok: true, value: undefined };
  }

  /** Write words through, throwing on pages not owned (driver code, where that is a bug). */
  writeWords(addr: bigint, words: readonly bigint[]): void {
    const b = new Uint8Array(words.length * 8);
    const v = new DataView(b.buffer);
    words.forEach((w, i) => v.setBigUint64(i * 8, BigInt.asUintN(64, w), true));
    const r = this.write(addr, b);
    if (!r.ok) throw new ErrnoError("EFAULT", `kernel write to 0x${addr.toString(16)}: page not owned`);
  }

  readWords(addr: bigint, count: number): bigint[] {
    const r = this.read(addr, count * 8);
    if (!r.ok) throw new ErrnoError("EFAULT", `kernel read of 0x${addr.toString(16)}: page not owned`);
    const v = new DataView(r.value.buffer);
    return Array.from({ length: count }, (_, i) => v.getBigUint64(i * 8, true));
  }

  /**
   * The changed words as write ops, clearing the dirty state. Order matters
   * to a hardware walk running while the batch is applied (each op is atomic
   * for the walker, the batch is not): reused pages being taken over go
   * first and whole (so a table is zero before anything links to it), then
   * the other pages from the most recently first-dirtied back (a new table's
   * entries before the parent entry that links it in). Consecutive words of
   * a page are coalesced.
   */
  drain(): GuestRamOp[] {
    const ops: GuestRamOp[] = [];
    for (const pfn of this.zeroFirst) {
      const page = this.pages.get(pfn);
      if (page) ops.push({ kind: "write", gpa: pfn << 12n, data: page.slice() });
    }
    const pfns = [...this.dirty.keys()].filter((p) => !this.zeroFirst.has(p)).reverse();
    for (const pfn of pfns) {
      const d = this.dirty.get(pfn) as Uint8Array;
      const page = this.pages.get(pfn) as Uint8Array;
      let w = 0;
      while (w < WORDS_PER_PAGE) {
        if (!d[w]) {
          w++;
          continue;
        }
        let e = w;
        while (e < WORDS_PER_PAGE && d[e]) e++;
        ops.push({ kind: "write", gpa: (pfn << 12n) + BigInt(w * 8), data: page.slice(w * 8, e * 8) });
        w = e;
      }
    }
    this.dirty.clear();
    this.zeroFirst.clear();
    return ops;
  }
}

/**
 * Page-table pages for packages/hw mapRange / unmapRange: allocated from the
 * guest's physical allocator and owned (zeroed) in KernelMemory. Pages freed
 * while unmapping may still be walked by the IOMMU until the invalidation
 * completes, so frees are held back until `reclaim()` (Linux's gather list).
 */
export class TableAllocator implements PageAllocator {
  private deferred: { gpa: bigint; bytes: bigint }[] = [];
  /** Tables freed since the last reclaim (an unmap that frees tables needs a non-leaf invalidation). */
  freedSinceReclaim = 0;

  constructor(
    readonly phys: PhysAllocator,
    readonly kmem: KernelMemory,
  ) {}

  alloc(bytes: number): bigint | undefined {
    const r = this.phys.alloc(Math.max(bytes, PAGE_SIZE));
    if (!r) return undefined;
    this.kmem.own(r.gpa, r.bytes, r.fresh);
    return r.gpa;
  }

  free(addr: bigint, bytes: number): void {
    this.deferred.push({ gpa: addr, bytes: BigInt(Math.max(bytes, PAGE_SIZE)) });
    this.freedSinceReclaim++;
  }

  /** The invalidation covering the freed tables has completed: really free them. */
  reclaim(): void {
    for (const d of this.deferred) {
      this.kmem.disown(d.gpa, d.bytes);
      this.phys.freeRange(d.gpa, d.bytes);
    }
    this.deferred = [];
    this.freedSinceReclaim = 0;
  }
}
