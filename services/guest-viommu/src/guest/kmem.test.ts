import { ErrnoError } from "@iommufd/kit";
import { describe, expect, it } from "vitest";
import { KernelMemory, PhysAllocator, TableAllocator } from "./kmem.js";
import { EventLog } from "./log.js";
import { IoPgtable } from "./pgtable.js";
import { ByteMapRam } from "./ram.js";

const regions = [{ gpa: 0x4000_0000n, size: 16n << 20n }];

describe("PhysAllocator", () => {
  it("hands out naturally aligned fresh ranges, then reuses freed ones (not fresh)", () => {
    const a = new PhysAllocator(regions);
    const p = a.alloc(4096) as { gpa: bigint; fresh: boolean };
    expect(p.fresh).toBe(true);
    expect(p.gpa).toBe(0x4010_0000n); // above the reserved low 1 MiB
    const big = a.alloc(16384) as { gpa: bigint };
    expect(big.gpa % 16384n).toBe(0n);
    a.freeRange(p.gpa, 4096);
    const again = a.alloc(4096) as { gpa: bigint; fresh: boolean };
    expect(again).toMatchObject({ gpa: p.gpa, fresh: false });
    expect(a.alloc(1n << 30n)).toBeUndefined();
  });
});

describe("KernelMemory", () => {
  it("writes back only the words that changed, reused pages whole and first, newest-dirtied pages before older ones", () => {
    const k = new KernelMemory();
    k.own(0x1000n, 4096n, true);
    k.own(0x2000n, 4096n, true);
    k.own(0x3000n, 4096n, false); // reused: must be zeroed in RAM
    k.writeWords(0x1008n, [1n]); // parent page dirtied first
    k.writeWords(0x2010n, [2n, 3n]); // child page dirtied next
    k.writeWords(0x3040n, [4n]);
    const ops = k.drain();
    expect(ops.map((o) => o.kind === "write" && [o.gpa, o.data.length])).toEqual([
      [0x3000n, 4096],
      [0x2010n, 16],
      [0x1008n, 8],
    ]);
    expect(k.drain()).toEqual([]);
    expect(k.pendingWords).toBe(0);
  });

  it("refuses pages it does not own (a guest kernel bug, not hidden)", () => {
    const k = new KernelMemory();
    expect(k.read64(0x5000n).ok).toBe(false);
    expect(() => k.writeWords(0x5000n, [1n])).toThrow(ErrnoError);
  });

  it("backs packages/hw page tables; freed tables wait for reclaim()", async () => {
    const phys = new PhysAllocator(regions);
    const k = new KernelMemory();
    const t = new TableAllocator(phys, k);
    const pt = new IoPgtable("arm-s1", t);
    pt.map(0x1000_0000n, 0x4020_0000n, 0x2000n, 0x3f);
    expect(pt.lookup(0x1000_1008n)?.gpa).toBe(0x4020_1008n);
    const ram = new ByteMapRam(regions);
    await ram.batch(k.drain());
    expect(pt.unmap(0x1000_0000n, 0x2000n)).toBe(0x2000n);
    expect(pt.lookup(0x1000_0000n)).toBeUndefined();
    expect(t.freedSinceReclaim).toBe(0);
    pt.map(0x2000_0000n, 0x4020_0000n, 0x1000n, 0x3f);
    pt.unmap(0n, 1n << 47n);
    expect(t.freedSinceReclaim).toBeGreaterThan(0);
    t.reclaim();
    expect(t.freedSinceReclaim).toBe(0);
  });
});

describe("EventLog", () => {
  it("numbers entries from 1 without gaps, reads from a cursor, waits, and reports what the ring dropped", async () => {
    const log = new EventLog(3);
    for (let i = 0; i < 5; i++) log.append({ source: "driver", kind: "k", text: `e${i}` });
    const r = await log.read(1n);
    expect(r.lost).toBe(2n);
    expect(r.events.map((e) => e.seq)).toEqual([3n, 4n, 5n]);
    expect(r.nextSeq).toBe(6n);
    const waiting = log.read(6n, 0, 1000);
    log.append({ source: "session", kind: "x", text: "later" });
    expect((await waiting).events.map((e) => e.text)).toEqual(["later"]);
    expect((await log.read(7n, 0, 10)).events).toEqual([]);
  });
});
