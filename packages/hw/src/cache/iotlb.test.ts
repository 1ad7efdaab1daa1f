// IOTLB keys, permissions on hits, CLOCK eviction without flush-all, every
// invalidation kind, and range-invalidation edges (TTL, SCALE/NUM).

import { describe, expect, it } from "vitest";
import { armStage1Config, armStage2Config } from "../format/arm.js";
import { mapRange, SimplePageAllocator } from "../format/map.js";
import { SparseMemory } from "../memory.js";
import {
  PERM_ALL,
  PERM_R,
  PERM_RW,
  Perm,
  READ,
  type StageConfig,
  type StageConfigResult,
  type TranslationConfig,
  WRITE,
} from "../translation.js";
import { stage2View } from "../walk/views.js";
import { translate } from "../walk/walk.js";
import { type IotlbEntry, Iotlb } from "./iotlb.js";
import { armTlbiEncodeRange, armTlbiRange, vtdAmRange } from "./ranges.js";

function ok(r: StageConfigResult): StageConfig {
  if (!r.ok) throw new Error(r.error);
  return r.stage;
}

/** A hand-made entry: 4K page at `iova`. */
function entry(p: Partial<IotlbEntry> & { iova: bigint }): IotlbEntry {
  return {
    s1Tag: 1,
    s2Tag: 1,
    pageShift: 12,
    granuleShift: 12,
    level: 3,
    output: 0x8000_0000n + p.iova,
    ipa: undefined,
    perms: PERM_ALL,
    parentPerms: PERM_ALL,
    kind: "nested",
    global: false,
    writeNeedsWalk: false,
    execNeedsRead: false,
    ...p,
  };
}

describe("IOTLB keys and lookups", () => {
  it("entries are keyed by (s1Tag, s2Tag, page, granule, level)", () => {
    const t = new Iotlb();
    t.insertEntry(entry({ iova: 0x1000n }));
    t.insertEntry(entry({ iova: 0x1000n, s1Tag: 2, output: 0x2000n }));
    t.insertEntry(entry({ iova: 0x1000n, s2Tag: 2, output: 0x3000n }));
    t.insertEntry(entry({ iova: 0x1000n, s1Tag: -1, kind: "s2", output: 0x4000n }));
    expect(t.size).toBe(4);
    expect(t.lookup(1, 1, 0x1abcn)?.output).toBe(0x8000_1000n);
    expect(t.lookup(2, 1, 0x1abcn)?.output).toBe(0x2000n);
    expect(t.lookup(1, 2, 0x1abcn)?.output).toBe(0x3000n);
    expect(t.lookup(-1, 1, 0x1abcn)?.output).toBe(0x4000n);
    expect(t.lookup(3, 1, 0x1abcn)).toBeUndefined();
    expect(t.lookup(1, 1, 0x2000n)).toBeUndefined();
    expect(t.stats).toMatchObject({ hits: 4, misses: 2, inserts: 4 });
    // Same page, different (granule, level) shapes coexist; a 2 MB block covers its range.
    t.insertEntry(entry({ iova: 0x20_0000n, pageShift: 21, level: 2, output: 0x4000_0000n }));
    t.insertEntry(entry({ iova: 0x10000n, pageShift: 16, granuleShift: 16, level: 3, output: 0x5000_0000n }));
    expect(t.lookup(1, 1, 0x3f_fff8n)?.output).toBe(0x4000_0000n);
    expect(t.lookup(1, 1, 0x1_fff8n)?.output).toBe(0x5000_0000n);
    expect(t.translate(1, 1, 0x3f_fff8n, READ)).toMatchObject({ ok: true, output: 0x401f_fff8n, pageShift: 21, level: 2 });
    expect(t.lookupNumber(1, 1, 0x3f_fff8)?.output).toBe(0x4000_0000n);
    expect(t.lookupNumber(1, 1, 0x1abc)?.output).toBe(0x8000_1000n);
    expect(t.lookupNumber(1, 1, 0x40_0000)).toBeUndefined();
  });

  it("upper-half (TTB1 / canonical) addresses do not alias low ones", () => {
    const t = new Iotlb();
    t.insertEntry(entry({ iova: 0xffff_ffff_ffff_f000n, output: 0x1000n }));
    expect(t.lookup(1, 1, 0x0000_ffff_ffff_f000n)).toBeUndefined();
    expect(t.lookup(1, 1, 0x00ff_ffff_ffff_f000n)).toBeUndefined();
    expect(t.lookup(1, 1, 0xffff_ffff_ffff_f123n)?.output).toBe(0x1000n);
    // translate takes the bigint path for inputs a number cannot hold exactly.
    expect(t.translate(1, 1, 0xffff_ffff_ffff_f123n, READ)).toMatchObject({ ok: true, output: 0x1123n });
    expect(t.translate(1, 1, 0x0000_ffff_ffff_f123n, READ)).toBeUndefined();
  });

  it("refuses an entry whose size does not match its granule and level", () => {
    const t = new Iotlb();
    expect(() => t.insertEntry(entry({ iova: 0n, pageShift: 21, level: 3 }))).toThrow(RangeError);
  });
});

describe("IOTLB permissions on hits (§5.4)", () => {
  it("nested entry with S1 write and S2 read-only: a write hit is a stage-2 permission fault with the IPA", () => {
    const t = new Iotlb();
    t.insertEntry(entry({ iova: 0x5000n, ipa: 0x4_0000n, perms: PERM_RW, parentPerms: PERM_R }));
    expect(t.translate(1, 1, 0x5010n, READ)).toMatchObject({ ok: true, output: 0x8000_5010n, ipa: 0x4_0010n, perms: PERM_R });
    expect(t.translate(1, 1, 0x5010n, WRITE)).toMatchObject({ ok: false, kind: "permission", stage: 2, ipa: 0x4_0010n, perms: PERM_R, cls: "IN" });
  });

  it("S1 refusing first makes it a stage-1 fault", () => {
    const t = new Iotlb();
    t.insertEntry(entry({ iova: 0x5000n, perms: PERM_R, parentPerms: PERM_R }));
    expect(t.translate(1, 1, 0x5000n, WRITE)).toMatchObject({ ok: false, kind: "permission", stage: 1, ipa: undefined });
  });

  it("a write to a writable-clean entry is a miss (the walk must set dirty)", () => {
    const t = new Iotlb();
    t.insertEntry(entry({ iova: 0x5000n, writeNeedsWalk: true }));
    expect(t.translate(1, 1, 0x5000n, WRITE)).toBeUndefined();
    expect(t.translate(1, 1, 0x5000n, READ)?.ok).toBe(true);
    expect(t.stats).toMatchObject({ hits: 1, misses: 1 });
  });

  it("insert from real walks: nested combined entries and S2-only entries", () => {
    const mem = new SparseMemory(48);
    const halloc = new SimplePageAllocator(mem, 0x1000_0000n, 0x100_0000n);
    const s2 = ok(armStage2Config({ granuleShift: 12, s2t0sz: 24, sl0: 1, outputBits: 48, s2ttb: halloc.alloc(8192) as bigint }));
    mapRange(mem, s2, 0n, 0x2000_0000n, 0x20_0000n, { perms: PERM_RW }, { alloc: halloc, blocks: false });
    mapRange(mem, s2, 0x100_0000n, 0x3000_0000n, 0x1000n, { perms: PERM_R }, { alloc: halloc });
    const gview = stage2View(mem, s2);
    const galloc = new SimplePageAllocator(gview, 0x10_0000n, 0x10_0000n);
    const s1 = ok(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: galloc.alloc(4096) as bigint }));
    mapRange(gview, s1, 0x7000n, 0x100_0000n, 0x1000n, { perms: PERM_RW }, { alloc: galloc });
    const cfg: TranslationConfig = { mode: "nested", s1, s2, s1Tag: 4, s2Tag: 8 };
    const r = translate(mem, cfg, 0x7008n, READ);
    if (!r.ok) throw new Error(r.kind);
    const t = new Iotlb();
    const e = t.insert(cfg, r);
    expect(e).toMatchObject({ s1Tag: 4, s2Tag: 8, iova: 0x7000n, output: 0x3000_0000n, ipa: 0x100_0000n, kind: "nested", level: 3 });
    expect((e?.perms ?? 0) & Perm.PW).toBe(Perm.PW);
    expect((e?.parentPerms ?? 0) & Perm.PW).toBe(0);
    expect(t.translate(4, 8, 0x7008n, WRITE)).toMatchObject({ ok: false, stage: 2 });
    const s2only: TranslationConfig = { mode: "s2", s2, s1Tag: -1, s2Tag: 8 };
    const r2 = translate(mem, s2only, 0x1234n, WRITE);
    if (!r2.ok) throw new Error(r2.kind);
    expect(t.insert(s2only, r2)).toMatchObject({ s1Tag: -1, kind: "s2", perms: r2.perms, parentPerms: r2.perms });
    expect(t.insert({ mode: "bypass" }, r2)).toBeUndefined();
  });
});

describe("IOTLB capacity: CLOCK eviction, never flush-all", () => {
  it("evicts exactly one entry per insert at capacity, giving referenced entries a second chance", () => {
    const t = new Iotlb({ capacity: 4 });
    for (let i = 0n; i < 4n; i++) t.insertEntry(entry({ iova: i * 0x1000n }));
    t.lookup(1, 1, 0n); // page 0 is referenced: it survives; page 1, the oldest unreferenced, goes
    t.insertEntry(entry({ iova: 0x10_0000n }));
    expect(t.size).toBe(4);
    expect(t.stats.evictions).toBe(1);
    expect(t.lookup(1, 1, 0x1000n)).toBeUndefined();
    for (const a of [0n, 0x2000n, 0x3000n, 0x10_0000n]) expect(t.lookup(1, 1, a)).toBeDefined();
    for (let i = 0n; i < 100n; i++) t.insertEntry(entry({ iova: 0x100_0000n + i * 0x1000n }));
    expect(t.size).toBe(4);
    expect(t.stats.evictions).toBe(101);
    expect([...t.entries()].map((e) => e.iova)).toEqual([0x106_3000n, 0x106_2000n, 0x106_1000n, 0x106_0000n]);
  });

  it("replacing an existing key does not evict", () => {
    const t = new Iotlb({ capacity: 2 });
    t.insertEntry(entry({ iova: 0n }));
    t.insertEntry(entry({ iova: 0x1000n }));
    t.insertEntry(entry({ iova: 0n, output: 0x42000n }));
    expect(t.stats.evictions).toBe(0);
    expect(t.lookup(1, 1, 0n)?.output).toBe(0x42000n);
    expect(t.size).toBe(2);
  });
});

describe("IOTLB invalidation", () => {
  function populated() {
    const t = new Iotlb();
    // VMID 1: ASIDs 1 and 2, plus S2-only entries; VMID 2: ASID 1.
    for (const s1Tag of [1, 2]) for (let i = 0n; i < 4n; i++) t.insertEntry(entry({ iova: i * 0x1000n, s1Tag }));
    for (let i = 0n; i < 4n; i++) t.insertEntry(entry({ iova: i * 0x1000n, s1Tag: -1, kind: "s2" }));
    for (let i = 0n; i < 4n; i++) t.insertEntry(entry({ iova: i * 0x1000n, s2Tag: 2 }));
    t.insertEntry(entry({ iova: 0x20_0000n, pageShift: 21, level: 2 }));
    return t;
  }
  const tags = (t: Iotlb) => [...t.entries()].map((e) => `${e.s1Tag}/${e.s2Tag}/${e.iova.toString(16)}`).sort();

  it("all", () => {
    const t = populated();
    expect(t.invalidateAll()).toBe(17);
    expect(t.size).toBe(0);
    expect(t.lookup(1, 1, 0n)).toBeUndefined();
    expect(t.stats).toMatchObject({ invalidations: 1, invalidated: 17 });
  });

  it("by S2 tag (S12_VMALL / VT-d DID)", () => {
    const t = populated();
    expect(t.invalidateS2Tag(1)).toBe(13);
    expect(tags(t)).toEqual(["1/2/0", "1/2/1000", "1/2/2000", "1/2/3000"]);
    expect(populated().invalidateDomain(2)).toBe(4);
  });

  it("NH_ALL: stage-1 entries of the VMID, S2-only entries survive", () => {
    const t = populated();
    expect(t.invalidateAllS1(1)).toBe(9);
    expect(t.lookup(-1, 1, 0n)).toBeDefined();
    expect(t.lookup(1, 2, 0n)).toBeDefined();
  });

  it("by ASID within a VMID (NH_ASID) / VT-d DID+PASID", () => {
    const t = populated();
    expect(t.invalidateS1Tag(2, 1)).toBe(4);
    expect(t.lookup(2, 1, 0n)).toBeUndefined();
    expect(t.lookup(1, 1, 0n)).toBeDefined();
    expect(t.lookup(1, 2, 0n)).toBeDefined();
    expect(populated().invalidatePasid(1, 1)).toBe(5);
  });

  it("by VA (NH_VA) and VAA (any ASID), leaf-only accepted", () => {
    const t = populated();
    expect(t.invalidateVa({ s2Tag: 1, s1Tag: 1, range: { start: 0x1000n, size: 1n }, leafOnly: true })).toBe(1);
    expect(t.lookup(1, 1, 0x1000n)).toBeUndefined();
    expect(t.lookup(2, 1, 0x1000n)).toBeDefined();
    expect(t.invalidateVa({ s2Tag: 1, range: { start: 0x2000n, size: 1n } })).toBe(2); // VAA: ASIDs 1 and 2, not S2-only
    expect(t.lookup(-1, 1, 0x2000n)).toBeDefined();
    // A VA inside a 2 MB block invalidates the block.
    expect(t.invalidateVa({ s2Tag: 1, s1Tag: 1, range: { start: 0x3f_f000n, size: 1n } })).toBe(1);
    expect(t.lookup(1, 1, 0x20_0000n)).toBeUndefined();
  });

  it("S2_IPA removes only S2-only entries; combined entries survive", () => {
    const t = populated();
    expect(t.invalidateIpa({ s2Tag: 1, range: { start: 0n, size: 0x2000n } })).toBe(2);
    expect(t.lookup(-1, 1, 0x1000n)).toBeUndefined();
    expect(t.lookup(-1, 1, 0x2000n)).toBeDefined();
    expect(t.lookup(1, 1, 0x1000n)).toBeDefined();
  });

  it("ranges: end is exclusive, SCALE/NUM boundaries, TTL restricts the level", () => {
    const t = populated();
    // TG=4K, NUM=1, SCALE=0 → 2 pages from 0x1000: 0x1000 and 0x2000, not 0x3000 nor 0x0.
    const r = armTlbiRange({ addr: 0x1000n, tg: 1, ttl: 0, num: 1, scale: 0 });
    expect(r).toEqual({ start: 0x1000n, size: 0x2000n, granuleShift: 12, level: undefined });
    expect(t.invalidateVa({ s2Tag: 1, s1Tag: 1, range: r })).toBe(2);
    expect(t.lookup(1, 1, 0n)).toBeDefined();
    expect(t.lookup(1, 1, 0x3000n)).toBeDefined();
    // NUM=31, SCALE=31 (the maximum): (32 × 2^31) pages of 4K = 2^48 bytes.
    expect(armTlbiRange({ addr: 0n, tg: 1, ttl: 0, num: 31, scale: 31 }).size).toBe(1n << 48n);
    // SCALE=9: 512 pages = one 2 MB range; with TTL=3 the 2 MB block (level 2) is kept...
    const t2 = populated();
    expect(t2.invalidateVa({ s2Tag: 1, s1Tag: 1, range: armTlbiRange({ addr: 0x20_0000n, tg: 1, ttl: 3, num: 0, scale: 9 }) })).toBe(0);
    // ...and with TTL=2 it goes.
    expect(t2.invalidateVa({ s2Tag: 1, s1Tag: 1, range: armTlbiRange({ addr: 0x20_0000n, tg: 1, ttl: 2, num: 0, scale: 9 }) })).toBe(1);
    // TTL with the wrong granule matches nothing.
    expect(t2.invalidateVa({ s2Tag: 1, s1Tag: 1, range: armTlbiRange({ addr: 0n, tg: 3, ttl: 3, num: 0, scale: 0 }) })).toBe(0);
  });

  it("VT-d page-selective: DID (any PASID) and DID+PASID with the AM encoding", () => {
    const t = populated();
    // AM=1 at 0x2000: 2 pages 0x2000..0x3fff.
    expect(vtdAmRange(0x2000n, 1)).toEqual({ start: 0x2000n, size: 0x2000n });
    expect(t.invalidatePasidPages(1, 2, vtdAmRange(0x2000n, 1))).toBe(2);
    expect(t.lookup(2, 1, 0x1000n)).toBeDefined();
    // AM=9 covers the 2 MB block and everything of DID 1 in [0, 2M): ASID 1, S2-only, rest of ASID 2.
    expect(t.invalidateDomainPages(1, vtdAmRange(0x0n, 9))).toBe(10);
    expect(t.invalidateDomainPages(1, vtdAmRange(0x20_0000n, 9))).toBe(1);
    expect(t.size).toBe(4);
  });

  it("armTlbiEncodeRange round-trips through armTlbiRange", () => {
    for (const pages of [1n, 2n, 3n, 31n, 32n, 33n, 512n, 1000n, 65536n + 5n]) {
      const cmds = armTlbiEncodeRange(0x40_0000n, pages << 12n, 12);
      let covered = 0n;
      let next = 0x40_0000n;
      for (const c of cmds) {
        expect(c.num).toBeGreaterThanOrEqual(0);
        expect(c.num).toBeLessThanOrEqual(31);
        const r = armTlbiRange(c);
        expect(r.start).toBe(next);
        next += r.size;
        covered += r.size;
      }
      expect(covered).toBe(pages << 12n);
    }
    expect(armTlbiRange({ addr: 0x1234n, tg: 0, ttl: 2, num: 3, scale: 3 })).toEqual({ start: 0x1234n, size: 1n });
    expect(armTlbiRange({ addr: 0x1_2345n, tg: 2, ttl: 1, num: 0, scale: 0 })).toEqual({ start: 0x1_0000n, size: 0x4000n, granuleShift: 14, level: undefined });
  });
});

describe("IOTLB table integrity", () => {
  it("random inserts, lookups and invalidations agree with a reference model", () => {
    const t = new Iotlb({ capacity: 64 });
    // Reference CLOCK: Map order = age (oldest first), with a reference bit per key.
    const ref = new Map<string, { out: bigint; referenced: boolean }>();
    let seed = 12345;
    const rnd = (n: number) => {
      seed = (Math.imul(seed, 1103515245) + 12345) >>> 0;
      return seed % n;
    };
    for (let step = 0; step < 5000; step++) {
      const s1 = rnd(3);
      const s2 = rnd(2);
      const page = BigInt(rnd(200));
      const key = `${s1}/${s2}/${page}`;
      const op = rnd(10);
      if (op < 5) {
        const out = BigInt(step) << 12n;
        t.insertEntry(entry({ iova: page << 12n, s1Tag: s1, s2Tag: s2, output: out }));
        if (!ref.delete(key) && ref.size === 64) {
          for (;;) {
            const [oldest, v] = ref.entries().next().value as [string, { out: bigint; referenced: boolean }];
            ref.delete(oldest);
            if (!v.referenced) break;
            ref.set(oldest, { out: v.out, referenced: false });
          }
        }
        ref.set(key, { out, referenced: false });
      } else if (op < 9) {
        const e = t.lookup(s1, s2, page << 12n);
        const want = ref.get(key);
        expect(e?.output).toBe(want?.out);
        if (want) want.referenced = true;
      } else {
        t.invalidateS1Tag(s1, s2);
        for (const k of [...ref.keys()]) if (k.startsWith(`${s1}/${s2}/`)) ref.delete(k);
      }
      expect(t.size).toBe(ref.size);
    }
  });
});
