// SparseMemory: the general accessors and the walker's read64Split fast path
// agree, across many pages, discards, abort ranges and the address-size limit.
import { describe, expect, it } from "vitest";
import { PAGE_SIZE, SparseMemory } from "./memory.js";

const W = new Uint32Array(2);

/** read64Split as a bigint, or the abort kind. */
function split(mem: SparseMemory, addr: number): bigint | string {
  const r = mem.read64Split(addr, W);
  if (r !== undefined) return r.abort;
  return (BigInt(W[1] as number) << 32n) | BigInt(W[0] as number);
}

function read64(mem: SparseMemory, addr: bigint): bigint | string {
  const r = mem.read64(addr);
  return r.ok ? r.value : r.abort;
}

describe("SparseMemory", () => {
  it("reads zero where nothing was written, through every accessor", () => {
    const mem = new SparseMemory(48);
    expect(read64(mem, 0x1234_5000n)).toBe(0n);
    expect(split(mem, 0x1234_5000)).toBe(0n);
    const r = mem.read(0xfff8n, 16);
    expect(r.ok && [...r.value]).toEqual(new Array(16).fill(0));
    expect(mem.pageCount).toBe(0);
  });

  it("read64Split returns what read64 returns, over many pages", () => {
    const mem = new SparseMemory(48);
    // 200 pages about 2 MiB apart: some share a slot of the fast path's page cache, so entries get replaced.
    const addrs: bigint[] = [];
    for (let i = 0; i < 200; i++) {
      const a = 0x1_0000_0000n + BigInt(i) * 0x1f_3000n + BigInt((i * 8) % PAGE_SIZE);
      const v = (BigInt(i) << 56n) | 0x8000_0000_dead_0000n | BigInt(i);
      expect(mem.write64(a, v).ok).toBe(true);
      addrs.push(a);
    }
    expect(mem.pageCount).toBe(200);
    for (const a of addrs) {
      expect(split(mem, Number(a))).toBe(read64(mem, a));
      expect(split(mem, Number(a) + 8)).toBe(read64(mem, a + 8n));
    }
    // A value with both 32-bit halves at or above 2^31.
    expect(mem.write64(0x2000n, 0xfedc_ba98_8765_4321n).ok).toBe(true);
    expect(split(mem, 0x2000)).toBe(0xfedc_ba98_8765_4321n);
  });

  it("writes across a page boundary land in both pages", () => {
    const mem = new SparseMemory(48);
    expect(mem.write(0x1ffcn, new Uint8Array([1, 2, 3, 4, 5, 6, 7, 8])).ok).toBe(true);
    expect(mem.pageCount).toBe(2);
    expect(read64(mem, 0x1ffcn - 4n)).toBe(0x0403_0201_0000_0000n);
    expect(split(mem, 0x2000)).toBe(0x0807_0605n);
  });

  it("discard releases whole pages and zeroes partial ones; a new page never shows a discarded page's data", () => {
    const mem = new SparseMemory(48);
    expect(mem.write64(0x5000n, 0x1111n).ok).toBe(true);
    expect(mem.write64(0x6008n, 0x2222n).ok).toBe(true);
    expect(split(mem, 0x5000)).toBe(0x1111n); // cached by the fast path
    mem.discard(0x5000n, 0x1010n); // page 0x5000 whole, the first 16 bytes of 0x6000
    expect(mem.pageCount).toBe(1);
    expect(mem.stats.pagesAllocated).toBe(1);
    expect(split(mem, 0x5000)).toBe(0n);
    expect(read64(mem, 0x5000n)).toBe(0n);
    expect(split(mem, 0x6008)).toBe(0n);
    // A page allocated after the discard reads zero except what is written.
    expect(mem.write64(0x9010n, 0x3333n).ok).toBe(true);
    expect(split(mem, 0x9010)).toBe(0x3333n);
    expect(split(mem, 0x9000)).toBe(0n); // where the discarded page held 0x1111
    expect(read64(mem, 0x9000n)).toBe(0n);
    expect(split(mem, 0x5000)).toBe(0n);
  });

  it("abort ranges and the address-size limit fail both paths; clearing the ranges restores the fast path", () => {
    const mem = new SparseMemory(40);
    expect(mem.write64(0x3000n, 7n).ok).toBe(true);
    mem.addAbortRange(0x3000n, 0x10n);
    expect(split(mem, 0x3008)).toBe("external");
    expect(read64(mem, 0x3008n)).toBe("external");
    expect(split(mem, 0x3010)).toBe(0n);
    mem.clearAbortRanges();
    expect(split(mem, 0x3000)).toBe(7n);
    expect(split(mem, 2 ** 40 - 8)).toBe(0n);
    expect(split(mem, 2 ** 40)).toBe("address-size");
    expect(split(mem, -8)).toBe("address-size");
    // Unaligned: served by the general path, same bytes.
    expect(split(mem, 0x2ffc)).toBe(read64(mem, 0x2ffcn));
  });

  it("counts reads through either path", () => {
    const mem = new SparseMemory(48);
    const before = mem.stats.reads;
    split(mem, 0x1000);
    read64(mem, 0x1000n);
    expect(mem.stats.reads - before).toBe(2);
  });
});
