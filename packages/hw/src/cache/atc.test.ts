// Device ATC (ATS) and the generic config cache; ATS / AM range encodings.

import { describe, expect, it } from "vitest";
import { type AtcEntry, AtcCache } from "./atc.js";
import { ConfigCache } from "./config-cache.js";
import { atsRangeDecode, atsRangeEncode, vtdAmFor, vtdAmRange } from "./ranges.js";

function atc(p: Partial<AtcEntry> & { untranslated: bigint }): AtcEntry {
  return { pasid: undefined, sizeShift: 12, translated: 0x9000_0000n + p.untranslated, r: true, w: true, exe: false, priv: false, global: false, ...p };
}

describe("ATS size encoding", () => {
  it("S=0 is 4 KB; S=1 sizes from the lowest 0 bit at or above bit 12", () => {
    expect(atsRangeDecode(0x1234_5fffn, false)).toEqual({ start: 0x1234_5000n, size: 0x1000n });
    expect(atsRangeDecode(0x1234_4000n, true)).toEqual({ start: 0x1234_4000n, size: 0x2000n });
    expect(atsRangeDecode(0x1234_5000n, true)).toEqual({ start: 0x1234_4000n, size: 0x4000n });
    expect(atsRangeDecode(0x0000_7000n, true)).toEqual({ start: 0n, size: 0x1_0000n });
    expect(atsRangeDecode(0x7fff_ffff_ffff_f000n, true)).toEqual({ start: 0n, size: 1n << 64n });
    for (const [start, size] of [[0x40_0000n, 0x2000n], [0x40_0000n, 0x20_0000n], [0x1_0000_0000n, 1n << 32n], [0x3000n, 0x1000n]] as const) {
      const e = atsRangeEncode(start, size);
      expect(atsRangeDecode(e.addr, e.s)).toEqual({ start, size });
    }
  });

  it("VT-d AM: smallest aligned power-of-two page range covering a request", () => {
    expect(vtdAmFor(0x3000n, 0x1000n)).toEqual({ addr: 0x3000n, am: 0 });
    expect(vtdAmFor(0x3000n, 0x2000n)).toEqual({ addr: 0n, am: 3 });
    expect(vtdAmRange(0x40_1000n, 9)).toEqual({ start: 0x40_0000n, size: 0x20_0000n });
  });
});

describe("ATC", () => {
  it("caches translations of any power-of-two size per PASID and counts hits/misses", () => {
    const c = new AtcCache();
    c.insert(atc({ untranslated: 0x1000n }));
    c.insert(atc({ untranslated: 0x20_0000n, sizeShift: 21, translated: 0x4000_0000n }));
    c.insert(atc({ untranslated: 0x1000n, pasid: 5, translated: 0x5000n }));
    expect(c.translate(undefined, 0x1abcn)?.address).toBe(0x9000_1abcn);
    expect(c.translate(5, 0x1abcn)?.address).toBe(0x5abcn);
    expect(c.translate(undefined, 0x3f_fff0n)?.address).toBe(0x401f_fff0n);
    expect(c.lookup(6, 0x1000n)).toBeUndefined();
    expect(c.lookup(undefined, 0x2000n)).toBeUndefined();
    expect(c.stats).toMatchObject({ hits: 3, misses: 2, inserts: 3 });
    expect(() => c.insert(atc({ untranslated: 0n, sizeShift: 11 }))).toThrow(RangeError);
  });

  it("bounded LRU: one eviction per insert at capacity", () => {
    const c = new AtcCache({ capacity: 3 });
    for (let i = 0n; i < 3n; i++) c.insert(atc({ untranslated: i << 12n }));
    c.lookup(undefined, 0n);
    c.insert(atc({ untranslated: 0x10_0000n }));
    expect(c.size).toBe(3);
    expect(c.stats.evictions).toBe(1);
    expect(c.lookup(undefined, 0x1000n)).toBeUndefined();
    expect(c.lookup(undefined, 0n)).toBeDefined();
  });

  it("invalidation without PASID hits every PASID in the range; with PASID only that one (plus Global)", () => {
    const fill = () => {
      const c = new AtcCache();
      c.insert(atc({ untranslated: 0x1000n }));
      c.insert(atc({ untranslated: 0x1000n, pasid: 1 }));
      c.insert(atc({ untranslated: 0x1000n, pasid: 2, global: true }));
      c.insert(atc({ untranslated: 0x2000n, pasid: 1 }));
      c.insert(atc({ untranslated: 0x40_0000n, pasid: 1, sizeShift: 21 }));
      return c;
    };
    let c = fill();
    expect(c.invalidate({ range: { start: 0x1000n, size: 0x1000n } })).toBe(3);
    expect(c.lookup(1, 0x2000n)).toBeDefined();
    c = fill();
    expect(c.invalidate({ pasid: 1, range: { start: 0x1000n, size: 0x1000n } })).toBe(1);
    expect(c.lookup(2, 0x1000n)).toBeDefined();
    c = fill();
    expect(c.invalidate({ pasid: 1, range: { start: 0x1000n, size: 0x1000n }, global: true })).toBe(2);
    expect(c.lookup(undefined, 0x1000n)).toBeDefined();
    c = fill();
    // An invalidation inside a 2 MB entry removes it; the range end is exclusive.
    expect(c.invalidate({ pasid: 1, range: atsRangeDecode(0x5f_f000n, false) })).toBe(1);
    expect(c.invalidate({ range: { start: 0n, size: 0x1000n } })).toBe(0);
    c = fill();
    expect(c.invalidatePasid(1)).toBe(3);
    expect(c.invalidateAll()).toBe(2);
    expect(c.size).toBe(0);
    expect(c.stats).toMatchObject({ invalidations: 2, invalidated: 5 });
  });
});

describe("config cache", () => {
  it("bounded LRU with counters, predicate and key invalidation", () => {
    const c = new ConfigCache<string, { sid: number; ssid: number }>({ capacity: 3 });
    c.set("1:0", { sid: 1, ssid: 0 });
    c.set("1:1", { sid: 1, ssid: 1 });
    c.set("2:0", { sid: 2, ssid: 0 });
    expect(c.get("1:0")).toEqual({ sid: 1, ssid: 0 });
    c.set("3:0", { sid: 3, ssid: 0 }); // evicts "1:1", the least recently used
    expect(c.peek("1:1")).toBeUndefined();
    expect(c.stats).toMatchObject({ hits: 1, misses: 0, inserts: 4, evictions: 1 });
    expect(c.invalidateWhere((_k, v) => v.ssid === 0 && v.sid < 3)).toBe(2);
    expect([...c.entries()].map(([k]) => k)).toEqual(["3:0"]);
    expect(c.invalidateKey("3:0")).toBe(1);
    expect(c.invalidateKey("3:0")).toBe(0);
    let loads = 0;
    const load = (k: string) => {
      loads++;
      return k === "none" ? undefined : { sid: 9, ssid: 9 };
    };
    expect(c.getOrLoad("9:9", load)).toEqual({ sid: 9, ssid: 9 });
    expect(c.getOrLoad("9:9", load)).toEqual({ sid: 9, ssid: 9 });
    expect(c.getOrLoad("none", load)).toBeUndefined();
    expect(loads).toBe(2);
    expect(c.invalidateAll()).toBe(1);
    expect(c.stats.invalidations).toBe(4);
  });
});
