// The IOVA layer against the kernel's rules (reference/iommufd-uapi.md §3.3–3.8, §4).
import { ErrnoError } from "@iommufd/kit";
import { describe, expect, it } from "vitest";
import { FailNth } from "../core/fail-nth.js";
import { HostMemory } from "../mm/phys.js";
import { UserMm } from "../mm/user-mm.js";
import { type IoptDomain, IoPagetable, type Prot, ULONG_MAX } from "./io-pagetable.js";

const RW: Prot = { read: true, write: true };
const PAGE = 4096n;

function setup(lockLimit = 1 << 20) {
  const host = new HostMemory(40);
  const mm = new UserMm(host, lockLimit);
  const fail = new FailNth();
  const iopt = new IoPagetable(mm, fail);
  const va = mm.mmap(undefined, 64n * PAGE, {});
  return { host, mm, fail, iopt, va };
}

function errnoOf(fn: () => unknown): string {
  try {
    fn();
  } catch (e) {
    if (e instanceof ErrnoError) return e.errno;
    throw e;
  }
  return "ok";
}

/** A domain that records its mappings page by page. */
class RecordingDomain implements IoptDomain {
  readonly pages = new Map<bigint, number>();
  constructor(
    readonly pgsizeMin = PAGE,
    readonly aperture = { start: 0n, last: (1n << 48n) - 1n },
  ) {}
  map(iova: bigint, length: bigint, pfnAt: (off: bigint) => number): void {
    for (let off = 0n; off < length; off += PAGE) this.pages.set(iova + off, pfnAt(off));
  }
  unmap(iova: bigint, length: bigint): void {
    for (let off = 0n; off < length; off += PAGE) this.pages.delete(iova + off);
  }
}

describe("IoPagetable", () => {
  it("reports the whole space as one range with alignment 1 when empty", () => {
    const { iopt } = setup();
    expect(iopt.iovaRanges()).toEqual([{ start: 0n, last: ULONG_MAX }]);
    expect(iopt.iovaAlignment).toBe(1n);
  });

  it("maps lazily without domains (even a bogus VA) and unmaps whole areas", () => {
    const { iopt } = setup();
    expect(iopt.map({ kind: "user", va: 1n << 31n }, PAGE, { iova: 0n, prot: RW, srcAddr: 1n << 31n })).toBe(0n);
    expect(iopt.unmap(0n, PAGE)).toBe(PAGE);
    expect(errnoOf(() => iopt.unmap(0n, PAGE))).toBe("ENOENT");
  });

  it("refuses overlapping fixed maps (EEXIST), reserved ranges (EINVAL) and misalignment", () => {
    const { iopt, va } = setup();
    iopt.map({ kind: "user", va }, 4n * PAGE, { iova: 0x10000n, prot: RW, srcAddr: va });
    expect(errnoOf(() => iopt.map({ kind: "user", va }, PAGE, { iova: 0x12000n, prot: RW, srcAddr: va }))).toBe("EEXIST");
    iopt.addReserved(0x100000n, 0x1fffffn, {});
    expect(errnoOf(() => iopt.map({ kind: "user", va }, PAGE, { iova: 0x100000n, prot: RW, srcAddr: va }))).toBe("EINVAL");
    expect(iopt.iovaRanges()).toEqual([
      { start: 0n, last: 0xfffffn },
      { start: 0x200000n, last: ULONG_MAX },
    ]);
    expect(errnoOf(() => iopt.map({ kind: "user", va }, 0n, { iova: 0n, prot: RW, srcAddr: va }))).toBe("EINVAL");
  });

  it("never splits an area: partial unmap is ENOENT, covering several areas unmaps all", () => {
    const { iopt, va } = setup();
    iopt.map({ kind: "user", va }, 2n * PAGE, { iova: 0x10000n, prot: RW, srcAddr: va });
    iopt.map({ kind: "user", va }, 2n * PAGE, { iova: 0x12000n, prot: RW, srcAddr: va });
    expect(errnoOf(() => iopt.unmap(0x10000n, PAGE))).toBe("ENOENT");
    expect(errnoOf(() => iopt.unmap(0x11000n, 2n * PAGE))).toBe("ENOENT");
    expect(iopt.unmap(0x10000n, 4n * PAGE)).toBe(4n * PAGE);
    expect(iopt.unmapAll()).toBe(0n);
  });

  it("allocates IOVAs first-fit, aligned to the length, never at 0, and keeps the sub-page offset", () => {
    const { iopt, va } = setup();
    const a = iopt.map({ kind: "user", va }, 4n * PAGE, { prot: RW, srcAddr: 0n });
    expect(a).toBe(4n * PAGE); // [PAGE_SIZE...] window, aligned to 16 KiB
    const b = iopt.map({ kind: "user", va }, 2n * PAGE, { prot: RW, srcAddr: 0n });
    expect(b % (2n * PAGE)).toBe(0n);
    expect(b).not.toBe(a);
    const c = iopt.map({ kind: "user", va: va + 0x800n }, 0x800n, { prot: RW, srcAddr: va + 0x800n });
    expect(c % PAGE).toBe(0x800n);
  });

  it("keeps automatic IOVAs inside the allowed ranges; ENOSPC when nothing fits", () => {
    const { iopt, va } = setup();
    iopt.setAllowed([{ start: 0x40000n, last: 0x43fffn }]);
    expect(iopt.map({ kind: "user", va }, 2n * PAGE, { prot: RW, srcAddr: 0n })).toBe(0x40000n);
    expect(iopt.map({ kind: "user", va }, 2n * PAGE, { prot: RW, srcAddr: 0n })).toBe(0x42000n);
    expect(errnoOf(() => iopt.map({ kind: "user", va }, PAGE, { prot: RW, srcAddr: 0n }))).toBe("ENOSPC");
  });

  it("validates allowed lists: single-byte or overlapping → EINVAL, over a reservation → EADDRINUSE", () => {
    const { iopt } = setup();
    expect(errnoOf(() => iopt.setAllowed([{ start: 5n, last: 5n }]))).toBe("EINVAL");
    expect(errnoOf(() => iopt.setAllowed([{ start: 0n, last: 10n }, { start: 10n, last: 20n }]))).toBe("EINVAL");
    iopt.addReserved(0x1000n, 0x1fffn, {});
    expect(errnoOf(() => iopt.setAllowed([{ start: 0n, last: 0x1000n }]))).toBe("EADDRINUSE");
    iopt.setAllowed([{ start: 0x2000n, last: 0x2fffn }]);
    expect(errnoOf(() => iopt.addReserved(0x2800n, 0x28ffn, {}))).toBe("EADDRINUSE");
  });

  it("pins on the first domain, maps every area into it, and pins a page once across copies", () => {
    const { iopt, mm, va } = setup();
    iopt.map({ kind: "user", va }, 4n * PAGE, { iova: 0x10000n, prot: RW, srcAddr: va });
    expect(mm.locked).toBe(0);
    const d = new RecordingDomain();
    iopt.addDomain(d);
    expect(mm.locked).toBe(4);
    expect(d.pages.size).toBe(4);
    const pieces = iopt.copySource(0x11000n, 2n * PAGE);
    const dst = iopt.mapShared(pieces, { iova: 0x80000n, prot: RW, srcAddr: 0x11000n });
    expect(mm.locked).toBe(4); // shared pages are not pinned twice
    expect(d.pages.get(dst)).toBe(d.pages.get(0x11000n));
    iopt.removeDomain(d);
    expect(mm.locked).toBe(0);
    expect(d.pages.size).toBe(0);
  });

  it("fails a pin beyond the memlock limit with ENOMEM and leaves nothing behind", () => {
    const { iopt, mm, va } = setup(3);
    const d = new RecordingDomain();
    iopt.addDomain(d);
    expect(errnoOf(() => iopt.map({ kind: "user", va }, 4n * PAGE, { iova: 0n, prot: RW, srcAddr: va }))).toBe("ENOMEM");
    expect(mm.locked).toBe(0);
    expect(iopt.areas.size).toBe(0);
    expect(d.pages.size).toBe(0);
  });

  it("faults (EFAULT) on unmapped user memory once pinning is needed", () => {
    const { iopt } = setup();
    iopt.addDomain(new RecordingDomain());
    expect(errnoOf(() => iopt.map({ kind: "user", va: 1n << 31n }, PAGE, { iova: 0n, prot: RW, srcAddr: 1n << 31n }))).toBe("EFAULT");
  });

  it("reserves outside a domain's aperture and refuses it over mapped areas", () => {
    const { iopt, va } = setup();
    iopt.map({ kind: "user", va }, PAGE, { iova: 0x1_0000_0000n, prot: RW, srcAddr: va });
    expect(errnoOf(() => iopt.addDomain(new RecordingDomain(PAGE, { start: 0n, last: 0xffff_ffffn })))).toBe("EADDRINUSE");
    iopt.unmapAll();
    iopt.addDomain(new RecordingDomain(PAGE, { start: 0n, last: 0xffff_ffffn }));
    expect(iopt.iovaRanges()).toEqual([{ start: 0n, last: 0xffff_ffffn }]);
    expect(iopt.iovaAlignment).toBe(PAGE);
  });

  it("unwinds every fail-nth point of a map with domains", () => {
    for (let n = 1; ; n++) {
      const { iopt, mm, fail, va } = setup();
      const d1 = new RecordingDomain();
      const d2 = new RecordingDomain();
      iopt.addDomain(d1);
      iopt.addDomain(d2);
      fail.arm(n);
      const r = errnoOf(() => iopt.map({ kind: "user", va }, 8n * PAGE, { iova: 0n, prot: RW, srcAddr: va }));
      if (r === "ok") {
        expect(fail.hits).toBeLessThan(n);
        expect(mm.locked).toBe(8);
        break;
      }
      expect(r).toBe("ENOMEM");
      expect(iopt.areas.size).toBe(0);
      expect(mm.locked).toBe(0);
      expect(d1.pages.size + d2.pages.size).toBe(0);
    }
  });
});
