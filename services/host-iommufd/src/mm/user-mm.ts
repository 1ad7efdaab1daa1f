// A session's user address space (the VMM process's mm, as the kernel sees
// it): mmap'ed ranges backed by memfd-like files (anonymous memory is an
// unnamed file), and the pinned-page accounting that RLIMIT_MEMLOCK limits.
// Pages are resolved and pinned as file pages, so a page pinned through two
// IOVAs or two domains counts once; a pin holds a reference on the file, so
// pinned pages outlive munmap (as pin_user_pages does).

import { ErrnoError } from "@iommufd/kit";
import { BTree } from "../btree.js";
import { MemFile } from "./memfile.js";
import type { HostMemory } from "./phys.js";

export const PAGE = 4096n;
/** 47-bit user address space; mmap_min_addr 64 KiB. */
export const USER_VA_END = 1n << 47n;
export const MMAP_MIN_ADDR = 0x1_0000n;
const cmp = (a: bigint, b: bigint) => (a < b ? -1 : a > b ? 1 : 0);

export interface Mapping {
  va: bigint;
  length: bigint;
  file: MemFile;
  /** byte offset in the file of `va` */
  offset: bigint;
}

/** A run of pages of one file. */
export interface PageRun {
  file: MemFile;
  /** first page index in the file */
  page: number;
  count: number;
}

export function putFile(f: MemFile): void {
  if (--f.refs === 0) f.free();
}

export class UserMm {
  private readonly maps = new BTree<bigint, Mapping>(undefined, cmp);
  private nextVa = 0x10_0000_0000n;
  /** Pages pinned and accounted (each file page once). */
  locked = 0;

  constructor(
    readonly host: HostMemory,
    /** RLIMIT_MEMLOCK in pages. */
    public lockLimit: number,
  ) {}

  /** mmap of `file` at `offset` (undefined = anonymous); `fixed` places it at `addr`. Length page aligned. */
  mmap(file: MemFile | undefined, length: bigint, opts: { offset?: bigint; addr?: bigint; fixed?: "replace" | "noreplace" }): bigint {
    let va: bigint;
    if (opts.fixed) {
      va = opts.addr ?? 0n;
      if (va % PAGE !== 0n) throw new ErrnoError("EINVAL", "MAP_FIXED address is not page aligned");
      if (va < MMAP_MIN_ADDR) throw new ErrnoError("EPERM", "address below mmap_min_addr");
      if (va + length > USER_VA_END) throw new ErrnoError("ENOMEM", "range beyond the user address space");
      if (opts.fixed === "noreplace" && this.overlapping(va, length).length > 0) {
        throw new ErrnoError("EEXIST", "MAP_FIXED_NOREPLACE over an existing mapping");
      }
      this.munmap(va, length);
    } else {
      // 2 MiB alignment for large mappings, as THP-friendly allocators do
      const align = length >= 0x20_0000n ? 0x20_0000n : PAGE;
      va = (this.nextVa + align - 1n) & ~(align - 1n);
      if (va + length > USER_VA_END) throw new ErrnoError("ENOMEM", "no free user address range");
      this.nextVa = va + length + PAGE; // a guard page between mappings
    }
    const f = file ?? new MemFile(this.host, length, "anon");
    if (file) file.refs++;
    this.maps.set(va, { va, length, file: f, offset: opts.offset ?? 0n });
    return va;
  }

  private overlapping(va: bigint, length: bigint): Mapping[] {
    const out: Mapping[] = [];
    const last = va + length - 1n;
    const before = this.maps.getPairOrNextLower(va);
    const from = before && before[1].va + before[1].length > va ? before[0] : va;
    this.maps.forRange(from, last, true, (_k, m) => {
      if (m.va + m.length > va) out.push(m);
    });
    return out;
  }

  /** munmap: holes are fine; mappings partly inside are trimmed or split. */
  munmap(va: bigint, length: bigint): void {
    const end = va + length;
    for (const m of this.overlapping(va, length)) {
      this.maps.delete(m.va);
      const mEnd = m.va + m.length;
      if (m.va < va) {
        m.file.refs++;
        this.maps.set(m.va, { ...m, length: va - m.va });
      }
      if (mEnd > end) {
        m.file.refs++;
        this.maps.set(end, { va: end, length: mEnd - end, file: m.file, offset: m.offset + (end - m.va) });
      }
      putFile(m.file);
    }
  }

  /** The file pages behind [va, va+length): EFAULT where anything is unmapped or past the end of its file. */
  resolve(va: bigint, length: bigint): PageRun[] {
    const runs: PageRun[] = [];
    let cur = va & ~(PAGE - 1n);
    const end = va + length;
    while (cur < end) {
      const m = this.maps.getPairOrNextLower(cur)?.[1];
      if (!m || cur >= m.va + m.length) throw new ErrnoError("EFAULT", `user address 0x${cur.toString(16)} is not mapped`);
      const stop = end < m.va + m.length ? end : m.va + m.length;
      const page = Number((m.offset + (cur - m.va)) / PAGE);
      const count = Number((stop - cur + PAGE - 1n) / PAGE);
      if (page + count > m.file.pages) throw new ErrnoError("EFAULT", `user address 0x${cur.toString(16)} is past the end of its file`);
      runs.push({ file: m.file, page, count });
      cur += BigInt(count) * PAGE;
    }
    return runs;
  }

  /** Pin every page of `runs`, accounting first pins against the limit; all or nothing. Holds file references. */
  pin(runs: PageRun[]): void {
    const pinned: PageRun[] = [];
    const held: MemFile[] = [];
    try {
      for (const r of runs) {
        r.file.refs++;
        held.push(r.file);
        for (let i = 0; i < r.count; i++) {
          if (r.file.pinCount(r.page + i) === 0 && this.locked >= this.lockLimit) {
            throw new ErrnoError("ENOMEM", `pinned-page limit (${this.lockLimit} pages) reached`);
          }
          if (r.file.pin(r.page + i)) this.locked++;
          pinned.push({ file: r.file, page: r.page + i, count: 1 });
        }
      }
    } catch (e) {
      for (const p of pinned) if (p.file.unpin(p.page)) this.locked--;
      for (const f of held) putFile(f);
      throw e;
    }
  }

  unpin(runs: PageRun[]): void {
    for (const r of runs) {
      for (let i = 0; i < r.count; i++) if (r.file.unpin(r.page + i)) this.locked--;
      putFile(r.file);
    }
  }

  /** Everything goes when the session closes (pins were dropped by the IOASes first). */
  closeAll(): void {
    for (const m of this.maps.valuesArray()) putFile(m.file);
    this.maps.clear();
  }

  /** Read (no data) or write user memory, as the VMM touching its own memory. */
  access(va: bigint, length: number, data?: Uint8Array): Uint8Array {
    const out = new Uint8Array(data ? 0 : length);
    let done = 0;
    for (const r of this.resolve(va, BigInt(length))) {
      for (let i = 0; i < r.count && done < length; i++) {
        const inPage = (va + BigInt(done)) & (PAGE - 1n);
        const n = Math.min(length - done, Number(PAGE - inPage));
        const pa = (BigInt(r.file.frame(r.page + i)) << 12n) + inPage;
        if (data) this.host.mem.write(pa, data.subarray(done, done + n));
        else {
          const res = this.host.mem.read(pa, n);
          if (res.ok) out.set(res.value, done);
        }
        done += n;
      }
    }
    return out;
  }
}
