// The SMMUv3 model end to end: registers, nested translation, every command's
// effect on the caches, ATC invalidation and SYNC ordering, command errors,
// event / PRI queues, ATS, HTTU, stall / resume, translated traffic.

import { describe, expect, it } from "vitest";
import { get, wordsToBytes } from "../bits.js";
import { forEachLeaf } from "../format/map.js";
import { PERM_R, PERM_RW } from "../translation.js";
import { type Command, RESUME_ACTION, SYNC_CS, cmd, encodeCommand } from "./commands.js";
import { EVT_CLASS } from "./events.js";
import { CMDQ_CONS, CR0, DEFAULT_SMMU_FEATURES, GBPA, GERROR, SMMU_REG } from "./regs.js";
import { SmmuDriver } from "./driver.js";
import { SmmuV3 } from "./smmu.js";
import { STE_CONFIG, STE_STRW, encodeSte } from "./ste.js";
import { BED, cdFor, makeBed, makeS1, makeS2, nestedStream, s1Stream, s2SteFields, s2Stream } from "./testbed.js";

const tlbi = cmd.tlbi;

describe("registers", () => {
  it("ID registers, CR0ACK, GBPA update, 64-bit halves and the Page 0 aliases", () => {
    const bed = makeBed();
    const s = bed.smmu;
    expect(Number(s.read(SMMU_REG.IDR0))).toBe(s.idRegs.IDR0);
    expect(Number(s.read(SMMU_REG.IDR5))).toBe(s.idRegs.IDR5);
    const cr0 = Number(s.read(SMMU_REG.CR0));
    expect(get([BigInt(cr0)], CR0.SMMUEN)).toBe(1n);
    expect(Number(s.read(SMMU_REG.CR0ACK))).toBe(cr0);
    s.write(SMMU_REG.GBPA, 1 << 20); // ABORT without UPDATE: ignored
    expect(Number(s.read(SMMU_REG.GBPA))).toBe(0);
    s.write(SMMU_REG.GBPA, (1 << 31) | (1 << 20));
    expect(get([s.read(SMMU_REG.GBPA)], GBPA.ABORT)).toBe(1n);
    expect(get([s.read(SMMU_REG.GBPA)], GBPA.UPDATE)).toBe(0n);
    s.write(SMMU_REG.STRTAB_BASE + 4, 0x1234);
    // The upper half (RA and ADDR[55:32]) is replaced by the 32-bit write.
    expect(s.read(SMMU_REG.STRTAB_BASE, 8)).toBe((0x1234n << 32n) | BED.STRTAB);
    expect(s.read(0xa8)).toBe(s.read(SMMU_REG.EVENTQ_PROD));
  });

  it("SMMUEN = 0 follows GBPA: bypass, or abort without an event", () => {
    const bed = makeBed();
    bed.smmu.write(SMMU_REG.CR0, Number(bed.smmu.read(SMMU_REG.CR0)) & ~1);
    expect(bed.smmu.translate(1, undefined, 0x1000n, "read")).toMatchObject({ ok: true, pa: 0x1000n });
    bed.smmu.write(SMMU_REG.GBPA, (1 << 31) | (1 << 20));
    expect(bed.smmu.translate(1, undefined, 0x1000n, "read").ok).toBe(false);
    expect(bed.events).toEqual([]);
  });
});

describe("nested translation end to end", () => {
  for (const [s1g, shuffle] of [
    [12, false],
    [12, true],
    [16, true],
    [14, true],
  ] as const) {
    it(`guest S1 ${1 << (s1g - 10)}K over host S2 4K${shuffle ? " (non-contiguous S2 pages)" : ""}`, () => {
      const bed = makeBed();
      const { s1 } = nestedStream(bed, 0x42, 9, 3, { s1Granule: s1g, shuffle });
      const page = 1n << BigInt(s1g);
      // Guest maps IOVA → IPA inside guest RAM.
      s1.map(0x4000_0000n, 0x0080_0000n, page, PERM_RW);
      const r = bed.smmu.translate(0x42, undefined, 0x4000_0000n + 0x123n, "write", { recordReads: true });
      expect(r.ok).toBe(true);
      if (!r.ok) return;
      const ipa = 0x0080_0123n;
      const ramPages = 0x0100_0000n / 4096n;
      const pa = shuffle
        ? BED.GUEST_RAM_PA + (ramPages - 1n - (ipa >> 12n)) * 4096n + (ipa & 0xfffn)
        : BED.GUEST_RAM_PA + ipa;
      expect(r.ipa).toBe(ipa);
      expect(r.pa).toBe(pa);
      expect(r.pageShift).toBe(12);
      expect(r.cached).toBe(false);
      if (s1g === 12) {
        // Cold walk: 4-level S1 × 3-level S2 (40-bit IPA, level 1 start) = 4 + 5 × 3 reads.
        expect(r.walk?.descReads?.length).toBe(19);
      }
      const again = bed.smmu.translate(0x42, undefined, 0x4000_0000n + 0x456n, "read");
      expect(again).toMatchObject({ ok: true, cached: true, pa: pa - 0x123n + 0x456n });
      expect(bed.smmu.iotlb.stats.hits).toBe(1);
      const st = bed.smmu.stats();
      expect(st.counters.translations).toBe(2);
      expect(st.iotlb).toMatchObject({ hits: 1, misses: 1, size: 1 });
      // STE: loaded once (miss), then hit; the CD likewise.
      expect(st.steCache).toMatchObject({ hits: 1, misses: 1 });
      expect(st.cdCache).toMatchObject({ hits: 1, misses: 1 });
    });
  }

  it("nested with SubstreamIDs: a linear guest CD table (S1CDMax = 2)", () => {
    const bed = makeBed();
    const { guestMem, guestAlloc, cdTable, s2 } = nestedStream(bed, 0x43, 9, 3, { s1CdMax: 2, ste: { S1DSS: 2 } });
    const s1b = makeS1(guestMem, guestAlloc, { outputBits: 40 });
    s1b.map(0x1000n, 0x0090_0000n, 0x1000n, PERM_RW);
    // The guest writes CD 3 of its table (in guest RAM) with ASID 44.
    guestMem.write(cdTable + 3n * 64n, wordsToBytes(cdFor(s1b, 44, { IPS: 2 })));
    const r = bed.smmu.translate(0x43, 3, 0x1010n, "read");
    expect(r).toMatchObject({ ok: true, pa: BED.GUEST_RAM_PA + 0x0090_0010n, ipa: 0x0090_0010n });
    expect(s2.stage.startLevel).toBe(1);
    // ASID 44 tags the IOTLB entry, VMID 9.
    expect([...bed.smmu.iotlb.entries()].map((e) => [e.s1Tag, e.s2Tag, e.kind])).toEqual([[44, 9, "nested"]]);
  });
});

/** Populate the IOTLB by translating each address. */
function warm(bed: ReturnType<typeof makeBed>, sid: number, addrs: bigint[], ssid?: number) {
  for (const a of addrs) expect(bed.smmu.translate(sid, ssid, a, "read").ok).toBe(true);
}

function cachedIovas(bed: ReturnType<typeof makeBed>, s1Tag?: number): bigint[] {
  return [...bed.smmu.iotlb.entries()]
    .filter((e) => s1Tag === undefined || e.s1Tag === s1Tag)
    .map((e) => e.iova)
    .sort((a, b) => (a < b ? -1 : 1));
}

describe("TLB invalidation commands", () => {
  const pages = Array.from({ length: 8 }, (_, i) => 0x10_0000n + BigInt(i) * 0x1000n);

  function twoAsids() {
    const bed = makeBed();
    const a = s1Stream(bed, 1, 5, { ste: { S2VMID: 2 } });
    const b = s1Stream(bed, 2, 6, { ste: { S2VMID: 2 } });
    a.s1.map(0x10_0000n, 0x4000_0000n, 0x8000n, PERM_RW);
    b.s1.map(0x10_0000n, 0x4100_0000n, 0x8000n, PERM_RW);
    warm(bed, 1, pages);
    warm(bed, 2, pages);
    expect(bed.smmu.iotlb.size).toBe(16);
    return bed;
  }

  it("TLBI_NH_VA with a range (TG/NUM/SCALE) removes exactly the pages in range", () => {
    const bed = twoAsids();
    // 4K granule, (NUM + 1) << SCALE = 2 << 1 = 4 pages from 0x102000.
    bed.drv.submit(tlbi("TLBI_NH_VA", { VMID: 2, ASID: 5, Addr: 0x10_2000n, TG: 1, NUM: 1, SCALE: 1, Leaf: true }), cmd.sync());
    expect(cachedIovas(bed, 5)).toEqual([0x10_0000n, 0x10_1000n, 0x10_6000n, 0x10_7000n]);
    expect(cachedIovas(bed, 6)).toHaveLength(8);
  });

  it("TLBI_NH_VA edges: TG = 0 is one entry; a TTL level hint that matches nothing removes nothing", () => {
    const bed = twoAsids();
    bed.drv.submit(tlbi("TLBI_NH_VA", { VMID: 2, ASID: 5, Addr: 0x10_3000n }), cmd.sync());
    expect(cachedIovas(bed, 5)).not.toContain(0x10_3000n);
    expect(cachedIovas(bed, 5)).toHaveLength(7);
    bed.drv.submit(tlbi("TLBI_NH_VA", { VMID: 2, ASID: 5, Addr: 0x10_0000n, TG: 1, TTL: 2, NUM: 7, Leaf: true }), cmd.sync());
    expect(cachedIovas(bed, 5)).toHaveLength(7);
    // Range ending exactly at 0x104000 leaves 0x104000.
    bed.drv.submit(tlbi("TLBI_NH_VA", { VMID: 2, ASID: 5, Addr: 0x10_0000n, TG: 1, NUM: 3 }), cmd.sync());
    expect(cachedIovas(bed, 5)).toEqual([0x10_4000n, 0x10_5000n, 0x10_6000n, 0x10_7000n]);
    // Wrong VMID: nothing.
    bed.drv.submit(tlbi("TLBI_NH_VA", { VMID: 3, ASID: 5, Addr: 0x10_4000n }), cmd.sync());
    expect(cachedIovas(bed, 5)).toHaveLength(4);
  });

  it("TLBI_NH_VAA hits every ASID; TLBI_NH_ASID one ASID; TLBI_NH_ALL the VMID", () => {
    const bed = twoAsids();
    bed.drv.submit(tlbi("TLBI_NH_VAA", { VMID: 2, Addr: 0x10_7000n }), cmd.sync());
    expect(bed.smmu.iotlb.size).toBe(14);
    bed.drv.submit(tlbi("TLBI_NH_ASID", { VMID: 2, ASID: 6 }), cmd.sync());
    expect(cachedIovas(bed, 6)).toEqual([]);
    expect(cachedIovas(bed, 5)).toHaveLength(7);
    bed.drv.submit(tlbi("TLBI_NH_ALL", { VMID: 2 }), cmd.sync());
    expect(bed.smmu.iotlb.size).toBe(0);
    // After invalidation the next access walks again.
    expect(bed.smmu.translate(1, undefined, 0x10_0000n, "read")).toMatchObject({ ok: true, cached: false });
  });

  it("TLBI_S2_IPA removes S2-only entries in range, not nested ones; S12_VMALL removes both; NSNH_ALL everything", () => {
    const bed = makeBed();
    const { s2 } = s2Stream(bed, 3, 4);
    s2.map(0x20_0000n, 0x4200_0000n, 0x4000n, PERM_RW);
    warm(bed, 3, [0x20_0000n, 0x20_1000n, 0x20_2000n, 0x20_3000n]);
    const { s1 } = nestedStream(bed, 4, 4, 1);
    s1.map(0x30_0000n, 0x0080_0000n, 0x1000n, PERM_RW);
    warm(bed, 4, [0x30_0000n]);
    const other = s2Stream(bed, 5, 8);
    other.s2.map(0x20_0000n, 0x4300_0000n, 0x1000n, PERM_RW);
    warm(bed, 5, [0x20_0000n]);
    const kinds = () => [...bed.smmu.iotlb.entries()].map((e) => `${e.kind}:${e.s2Tag}:${e.iova.toString(16)}`).sort();
    bed.drv.submit(tlbi("TLBI_S2_IPA", { VMID: 4, Addr: 0x20_1000n, TG: 1, NUM: 1 }), cmd.sync());
    expect(kinds()).toEqual(["nested:4:300000", "s2:4:200000", "s2:4:203000", "s2:8:200000"]);
    bed.drv.submit(tlbi("TLBI_S12_VMALL", { VMID: 4 }), cmd.sync());
    expect(kinds()).toEqual(["s2:8:200000"]);
    bed.drv.submit(tlbi("TLBI_NSNH_ALL"), cmd.sync());
    expect(kinds()).toEqual([]);
  });

  it("TLBI_EL2_* target EL2 StreamWorld entries, which TLBI_NSNH_ALL keeps", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 6, 0, { ste: { STRW: STE_STRW.EL2 } });
    s1.map(0x10_0000n, 0x4400_0000n, 0x2000n, PERM_RW);
    warm(bed, 6, [0x10_0000n, 0x10_1000n]);
    bed.drv.submit(tlbi("TLBI_NSNH_ALL"), cmd.sync());
    expect(bed.smmu.iotlb.size).toBe(2);
    bed.drv.submit(tlbi("TLBI_EL2_VA", { Addr: 0x10_1000n }), cmd.sync());
    expect(bed.smmu.iotlb.size).toBe(1);
    bed.drv.submit(tlbi("TLBI_EL2_ALL"), cmd.sync());
    expect(bed.smmu.iotlb.size).toBe(0);
  });
});

describe("configuration invalidation commands", () => {
  it("CFGI_STE: a changed STE is ignored until invalidated", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 1, 5);
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_RW);
    expect(bed.smmu.translate(1, undefined, 0x10_0000n, "read")).toMatchObject({ pa: 0x4000_0000n });
    // Rewrite the STE as bypass behind the SMMU's back.
    const addr = bed.drv.steAddr(1);
    bed.mem.write64(addr, encodeSte({ V: 1, Config: STE_CONFIG.BYPASS })[0] as bigint);
    bed.smmu.iotlb.invalidateAll();
    expect(bed.smmu.translate(1, undefined, 0x10_0000n, "read")).toMatchObject({ pa: 0x4000_0000n });
    expect(bed.smmu.steCache.stats.hits).toBeGreaterThan(0);
    bed.drv.submit(cmd.cfgiSte(1), cmd.sync());
    expect(bed.smmu.steCache.peek(1)).toBeUndefined();
    expect(bed.smmu.translate(1, undefined, 0x10_0000n, "read")).toMatchObject({ pa: 0x10_0000n });
  });

  it("CFGI_STE_RANGE covers 2^(Range+1) StreamIDs; Range = 31 is CFGI_ALL", () => {
    const bed = makeBed();
    for (let sid = 0; sid < 8; sid++) bed.drv.installSte(sid, encodeSte({ V: 1, Config: STE_CONFIG.BYPASS }));
    for (let sid = 0; sid < 8; sid++) bed.smmu.translate(sid, undefined, 0n, "read");
    bed.drv.submit({ name: "CFGI_STE_RANGE", StreamID: 5, Range: 1 }, cmd.sync());
    const cached = () => [0, 1, 2, 3, 4, 5, 6, 7].filter((s) => bed.smmu.steCache.peek(s) !== undefined);
    expect(cached()).toEqual([0, 1, 2, 3]);
    bed.drv.submit(cmd.cfgiAll(), cmd.sync());
    expect(cached()).toEqual([]);
  });

  it("CFGI_CD and CFGI_CD_ALL drop decoded CDs (a new ASID is then used)", () => {
    const bed = makeBed();
    const { s1, cdAddr } = s1Stream(bed, 2, 5);
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_RW);
    bed.smmu.translate(2, undefined, 0x10_0000n, "read");
    expect(bed.smmu.cdCache.peek("2:0")?.asid).toBe(5);
    // Change the ASID in memory.
    const w0 = bed.mem.read64(cdAddr);
    bed.mem.write64(cdAddr, ((w0.ok ? w0.value : 0n) & 0xffff_ffff_ffffn) | (7n << 48n));
    bed.smmu.translate(2, undefined, 0x10_0000n, "read");
    expect(bed.smmu.cdCache.peek("2:0")?.asid).toBe(5);
    bed.drv.submit(cmd.cfgiCd(2, 0), cmd.sync());
    expect(bed.smmu.cdCache.peek("2:0")).toBeUndefined();
    bed.smmu.translate(2, undefined, 0x10_0000n, "read");
    expect(bed.smmu.cdCache.peek("2:0")?.asid).toBe(7);
    expect([...bed.smmu.iotlb.entries()].map((e) => e.s1Tag).sort()).toEqual([5, 7]);
    bed.drv.submit(cmd.cfgiCdAll(2), cmd.sync());
    expect(bed.smmu.cdCache.size).toBe(0);
    // CFGI_STE also drops that stream's CDs.
    bed.smmu.translate(2, undefined, 0x10_0000n, "read");
    bed.drv.submit(cmd.cfgiSte(2), cmd.sync());
    expect(bed.smmu.cdCache.size).toBe(0);
  });

  it("PREFETCH_CONFIG loads the config cache without events", () => {
    const bed = makeBed();
    s1Stream(bed, 3, 5);
    bed.drv.submit({ name: "PREFETCH_CONFIG", StreamID: 3, SSV: false, SubstreamID: 0 }, cmd.sync());
    expect(bed.smmu.steCache.peek(3)).toBeDefined();
    expect(bed.smmu.cdCache.peek("3:0")).toBeDefined();
    bed.drv.submit({ name: "PREFETCH_CONFIG", StreamID: 99, SSV: false, SubstreamID: 0 }, cmd.sync());
    expect(bed.events).toEqual([]);
    expect(bed.smmu.counters.commandsByOpcode.PREFETCH_CONFIG).toBe(2);
  });
});

describe("ATC invalidation and CMD_SYNC", () => {
  it("forwards ATC_INV and completes SYNC only after the acknowledgement", () => {
    const bed = makeBed();
    const consOf = () => Number(bed.smmu.read(SMMU_REG.CMDQ_CONS)) & 0xff;
    bed.drv.submit(cmd.atcInv(0x10, 0x13_5000n, 2, 4), cmd.sync(), cmd.cfgiSte(1));
    expect(bed.atc).toHaveLength(1);
    const req = bed.atc[0];
    expect(req).toMatchObject({ StreamID: 0x10, SSV: true, SubstreamID: 4, range: { start: 0x13_4000n, size: 0x4000n } });
    // PCIe Invalidate Request: 16 KiB at 0x134000 → S = 1, bit 12 set, bit 13 clear.
    expect(req?.pcie).toEqual({ addr: 0x13_5000n, s: true });
    expect(bed.smmu.cmdqState).toBe("wait-sync");
    // init() consumed 3 commands; ATC_INV consumed; CONS stops at the SYNC.
    expect(consOf()).toBe(4);
    const syncsBefore = bed.syncs.length;
    const r = bed.smmu.ackAtcInvalidation(req?.id as number);
    expect(r?.state).toBe("idle");
    expect(r?.consumed).toBe(2);
    expect(bed.syncs.length).toBe(syncsBefore + 1);
    expect(consOf()).toBe(6);
  });

  it("a device acknowledging inside onAtcInvalidate (re-entrant) lets the SYNC complete once", () => {
    const bed = makeBed();
    const seen: number[] = [];
    const s = new SmmuV3({
      memory: bed.mem,
      ports: {
        onAtcInvalidate: (r) => {
          seen.push(r.id);
          s.ackAtcInvalidation(r.id);
        },
        onSyncComplete: () => seen.push(-1),
      },
    });
    const drv = new SmmuDriver(s, bed.mem, bed.alloc);
    drv.init({ ...bed.layout, cmdq: { base: 0x0300_0000n, log2size: 4 } });
    seen.length = 0;
    drv.submit(cmd.atcInv(1, 0n, 0), cmd.atcInv(2, 0n, 0), cmd.sync());
    expect(seen).toEqual([1, 2, -1]);
    expect(s.cmdqState).toBe("idle");
    expect(s.counters.atcInvalidationsIssued).toBe(2);
  });

  it("SYNC without outstanding ATC invalidations completes at once; CS = SIG_IRQ writes MSIData", () => {
    const bed = makeBed();
    bed.drv.submit({ name: "SYNC", CS: SYNC_CS.IRQ, MSH: 0, MSIAttr: 0, MSIData: 0xcafe, MSIAddr: 0x300_0000n });
    const m = bed.mem.read(0x300_0000n, 4);
    expect(m.ok && new DataView(m.value.buffer).getUint32(0, true)).toBe(0xcafe);
    expect(bed.smmu.cmdqState).toBe("idle");
  });

  it("an ATC invalidation timeout fails the SYNC with CERROR_ATC_INV_SYNC; acknowledging GERROR retries it", () => {
    const bed = makeBed();
    bed.drv.submit(cmd.atcInv(0x10, 0n, 52), cmd.sync());
    const req = bed.atc[0];
    expect(req?.range.size).toBe(1n << 64n);
    const r = bed.smmu.ackAtcInvalidation(req?.id as number, false);
    expect(r?.state).toBe("error");
    expect(r?.error?.cerror).toBe(3);
    expect(bed.smmu.cmdqErrorName).toBe("ATC_INV_SYNC");
    const gerror = Number(bed.smmu.read(SMMU_REG.GERROR));
    expect(gerror & 1).toBe(1);
    bed.smmu.write(SMMU_REG.GERRORN, gerror);
    expect(bed.smmu.cmdqState).toBe("idle");
    expect(bed.smmu.counters.atcInvalidationsFailed).toBe(1);
  });

  it("an illegal command sets CONS.ERR = CERROR_ILL and GERROR.CMDQ_ERR and stops until acknowledged", () => {
    const bed = makeBed();
    const cons0 = Number(bed.smmu.read(SMMU_REG.CMDQ_CONS)) & 0xff;
    bed.drv.submit([0x7fn, 0n], cmd.cfgiSte(1), cmd.sync());
    const cons = Number(bed.smmu.read(SMMU_REG.CMDQ_CONS));
    expect(cons & 0xff).toBe(cons0);
    expect(Number(get([BigInt(cons)], CMDQ_CONS.ERR))).toBe(1);
    const gerror = Number(bed.smmu.read(SMMU_REG.GERROR));
    expect(get([BigInt(gerror)], GERROR.CMDQ_ERR)).toBe(1n);
    expect(bed.smmu.cmdqState).toBe("error");
    // More PROD writes do not restart it.
    bed.drv.submit(cmd.sync());
    expect(Number(bed.smmu.read(SMMU_REG.CMDQ_CONS)) & 0xff).toBe(cons0);
    // Linux: replace the bad command with a SYNC, then acknowledge through GERRORN.
    const [w0, w1] = encodeCommand(cmd.sync());
    bed.mem.write64(BED.CMDQ + BigInt(cons0) * 16n, w0);
    bed.mem.write64(BED.CMDQ + BigInt(cons0) * 16n + 8n, w1);
    bed.smmu.write(SMMU_REG.GERRORN, gerror);
    expect(bed.smmu.cmdqState).toBe("idle");
    expect(Number(bed.smmu.read(SMMU_REG.CMDQ_CONS)) & 0xff).toBe(cons0 + 4);
    expect(bed.smmu.counters.commandErrors).toBe(1);
  });

  it("counts commands by opcode", () => {
    const bed = makeBed();
    bed.drv.submit(cmd.cfgiSte(1), cmd.cfgiSte(2), tlbi("TLBI_NH_ASID", { ASID: 1 }), cmd.sync());
    expect(bed.smmu.counters.commandsByOpcode).toMatchObject({ CFGI_STE: 2, TLBI_NH_ASID: 1, SYNC: 2, TLBI_NSNH_ALL: 1 });
  });
});

describe("event queue", () => {
  it("overflow sets EVENTQ_PROD.OVFLG and drops the record; acknowledging resumes recording", () => {
    const bed = makeBed({ eventqLog2: 1 }); // 2 entries
    for (let i = 0; i < 3; i++) bed.smmu.translate(100 + i, undefined, 0n, "read"); // V = 0 STEs → C_BAD_STE
    expect(Number(bed.smmu.read(SMMU_REG.EVENTQ_PROD)) >>> 31).toBe(1);
    expect(bed.smmu.counters.eventqOverflows).toBe(1);
    const d = bed.drv.drainEvents();
    expect(d.overflow).toBe(true);
    expect(d.events.map((e) => e.StreamID)).toEqual([100, 101]);
    bed.smmu.translate(103, undefined, 0n, "read");
    const d2 = bed.drv.drainEvents();
    expect(d2.overflow).toBe(false);
    expect(d2.events.map((e) => e.StreamID)).toEqual([103]);
    // onEvent saw all four, with queued = false for the dropped one.
    expect(bed.events.map((e) => e.StreamID)).toEqual([100, 101, 102, 103]);
  });
});

describe("other events", () => {
  it("F_UUT for a SubstreamID wider than 20 bits (even with SMMUEN = 0)", () => {
    const bed = makeBed();
    bed.smmu.write(SMMU_REG.CR0, Number(bed.smmu.read(SMMU_REG.CR0)) & ~1);
    const r = bed.smmu.translate(3, 1 << 20, 0x4000n, "write");
    expect(r.ok).toBe(false);
    expect(bed.drv.drainEvents().events).toEqual([
      { type: "F_UUT", StreamID: 3, SSV: true, SubstreamID: 0, PnU: false, InD: false, RnW: false, InputAddr: 0x4000n },
    ]);
  });

  it("E_PAGE_REQUEST hints round-trip through the event queue", () => {
    const bed = makeBed();
    bed.smmu.pageRequestHint(5, 2, 0x1234_5678n, 16, PERM_R);
    expect(bed.drv.drainEvents().events).toEqual([
      {
        type: "E_PAGE_REQUEST",
        StreamID: 5,
        SSV: true,
        SubstreamID: 2,
        Span: 16,
        pR: true,
        pW: false,
        pX: false,
        uR: true,
        uW: false,
        uX: false,
        InputAddr: 0x1234_5000n,
      },
    ]);
  });
});

describe("PRI queue", () => {
  const req = (i: number, last: boolean) => ({
    StreamID: 0x20,
    SSV: true,
    SubstreamID: 7,
    Priv: false,
    Exec: false,
    Read: true,
    Write: true,
    Last: last,
    PRGIndex: 0x11,
    Addr: 0x5000_0000n + BigInt(i) * 0x1000n,
  });

  it("queues page requests and forwards CMD_PRI_RESP to the device", () => {
    const bed = makeBed();
    expect(bed.smmu.pageRequest(req(0, false)).queued).toBe(true);
    expect(bed.smmu.pageRequest(req(1, true)).queued).toBe(true);
    const { requests, overflow } = bed.drv.drainPri();
    expect(overflow).toBe(false);
    expect(requests).toEqual([req(0, false), req(1, true)]);
    bed.drv.submit(cmd.priResp(0x20, 0x11, 2, 7), cmd.sync());
    bed.drv.submit(cmd.priResp(0x20, 0x12, 0, 7), cmd.priResp(0x20, 0x13, 1), cmd.sync());
    expect(bed.priResponses).toEqual([
      { StreamID: 0x20, SSV: true, SubstreamID: 7, PRGIndex: 0x11, Resp: 2, pcieCode: 0, auto: false },
      { StreamID: 0x20, SSV: true, SubstreamID: 7, PRGIndex: 0x12, Resp: 0, pcieCode: 1, auto: false },
      { StreamID: 0x20, SSV: false, SubstreamID: 0, PRGIndex: 0x13, Resp: 1, pcieCode: 0xf, auto: false },
    ]);
  });

  it("overflow sets PRIQ_PROD.OVFLG, discards, and auto-responds Success to the last request of a group", () => {
    const bed = makeBed({ priqLog2: 1 });
    bed.smmu.pageRequest(req(0, false));
    bed.smmu.pageRequest(req(1, false));
    const third = bed.smmu.pageRequest(req(2, true));
    expect(third.queued).toBe(false);
    expect(third.autoResponse).toEqual({ StreamID: 0x20, SSV: true, SubstreamID: 7, PRGIndex: 0x11, Resp: 2, pcieCode: 0, auto: true });
    expect(Number(bed.smmu.read(SMMU_REG.PRIQ_PROD)) >>> 31).toBe(1);
    const d = bed.drv.drainPri();
    expect(d.overflow).toBe(true);
    expect(d.requests).toHaveLength(2);
    expect(bed.smmu.pageRequest(req(3, true)).queued).toBe(true);
    expect(bed.smmu.counters.priOverflows).toBe(1);
  });
});

describe("ATS translation requests", () => {
  it("returns translated address, size and R/W, honouring STE.EATS", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 0x30, 5, { ste: { EATS: 1 } });
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_R);
    s1.map(0x20_0000n, 0x4020_0000n, 0x20_0000n, PERM_RW); // 2 MiB block
    expect(bed.smmu.atsTranslate(0x30, undefined, 0x10_0000n, { write: true })).toMatchObject({
      status: "success",
      translatedAddress: 0x4000_0000n,
      sizeShift: 12,
      R: true,
      W: false,
      S: false,
    });
    const big = bed.smmu.atsTranslate(0x30, undefined, 0x20_1000n, { write: true });
    expect(big).toMatchObject({ status: "success", translatedAddress: 0x4020_0000n, sizeShift: 21, R: true, W: true, S: true });
    // 2 MiB in the S encoding: bits [19:12] set, bit 20 clear.
    expect(big.status === "success" && big.addrField).toBe(0x4020_0000n | 0xf_f000n);
    // Unmapped: Success with R = W = 0 at the STU size, no event.
    expect(bed.smmu.atsTranslate(0x30, undefined, 0x50_0000n, { write: false })).toMatchObject({
      status: "success",
      R: false,
      W: false,
      sizeShift: 12,
    });
    expect(bed.events).toEqual([]);
  });

  it("UR with F_BAD_ATS_TREQ when EATS = 0 or the stream bypasses; UR without event for abort; CA on a bad STE", () => {
    const bed = makeBed();
    s1Stream(bed, 0x31, 5);
    expect(bed.smmu.atsTranslate(0x31, undefined, 0x1000n, { write: false }).status).toBe("UR");
    expect(bed.events.map((e) => e.type)).toEqual(["F_BAD_ATS_TREQ"]);
    bed.drv.installSte(0x32, encodeSte({ V: 1, Config: STE_CONFIG.BYPASS, EATS: 1 }));
    expect(bed.smmu.atsTranslate(0x32, undefined, 0x1000n, { write: false }).status).toBe("UR");
    bed.drv.installSte(0x33, encodeSte({ V: 1, Config: STE_CONFIG.ABORT }));
    expect(bed.smmu.atsTranslate(0x33, undefined, 0x1000n, { write: false }).status).toBe("UR");
    expect(bed.events).toHaveLength(2);
    expect(bed.smmu.atsTranslate(0x34, undefined, 0x1000n, { write: false })).toMatchObject({
      status: "CA",
      fault: { config: "C_BAD_STE" },
    });
    expect(bed.events).toHaveLength(2); // configuration errors of TRs are not recorded
  });

  it("nested ATS returns the final PA; execute needs read and a PASID", () => {
    const bed = makeBed();
    const { s1 } = nestedStream(bed, 0x35, 9, 3, { ste: { EATS: 1, S1CDMax: 1, S1DSS: 2 } });
    s1.map(0x10_0000n, 0x0080_0000n, 0x1000n, PERM_RW);
    const r = bed.smmu.atsTranslate(0x35, undefined, 0x10_0000n, { write: false, exec: true });
    expect(r).toMatchObject({ status: "success", translatedAddress: BED.GUEST_RAM_PA + 0x0080_0000n, R: true, W: false, Exe: false });
  });

  it("ATS-translated transactions: pass with ATSCHK = 0; F_TRANSL_FORBIDDEN with ATSCHK = 1 and EATS = 0", () => {
    const bed = makeBed();
    s1Stream(bed, 0x36, 5);
    expect(bed.smmu.translatedTransaction(0x36, 0x4000_0000n, "write")).toMatchObject({ ok: true, pa: 0x4000_0000n });
    const chk = makeBed({ atschk: true });
    s1Stream(chk, 0x36, 5);
    const r = chk.smmu.translatedTransaction(0x36, 0x4000_0000n, "write");
    expect(r.ok).toBe(false);
    expect(chk.drv.drainEvents().events).toEqual([
      { type: "F_TRANSL_FORBIDDEN", StreamID: 0x36, RnW: false, InputAddr: 0x4000_0000n },
    ]);
    s1Stream(chk, 0x37, 5, { ste: { EATS: 1 } });
    expect(chk.smmu.translatedTransaction(0x37, 0x4000_0000n, "write").ok).toBe(true);
  });
});

describe("HTTU (hardware access and dirty state)", () => {
  it("stage 1 HA/HD: a write marks a writable-clean (DBM) page dirty; reads set AF", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 0x40, 5, { cd: { HA: 1, HD: 1 } });
    s1.map(0x10_0000n, 0x4000_0000n, 0x2000n, PERM_RW, { dirtyTracking: true, accessed: false });
    const leaves = () => {
      const out: bigint[] = [];
      forEachLeaf(bed.mem, s1.stage, 0x10_0000n, 0x2000n, (l) => out.push(l.desc));
      return out;
    };
    const [d0] = leaves();
    expect(d0 !== undefined && (d0 >> 51n) & 1n).toBe(1n); // DBM
    expect(d0 !== undefined && (d0 >> 7n) & 1n).toBe(1n); // AP[2] = read-only: clean
    expect(d0 !== undefined && (d0 >> 10n) & 1n).toBe(0n); // AF = 0
    expect(bed.smmu.translate(0x40, undefined, 0x10_0000n, "read").ok).toBe(true);
    const [r0] = leaves();
    expect(r0 !== undefined && (r0 >> 10n) & 1n).toBe(1n); // AF set by the read
    expect(r0 !== undefined && (r0 >> 7n) & 1n).toBe(1n); // still clean
    // The read cached the page; a write must walk again to set dirty.
    const w = bed.smmu.translate(0x40, undefined, 0x10_0000n, "write");
    expect(w).toMatchObject({ ok: true, cached: false, pa: 0x4000_0000n });
    const [w0, w1] = leaves();
    expect(w0 !== undefined && (w0 >> 7n) & 1n).toBe(0n); // AP[2] cleared: dirty
    expect(w1 !== undefined && (w1 >> 7n) & 1n).toBe(1n); // the other page stays clean
  });

  it("stage 2 S2HA/S2HD in a nested stream: the guest's write dirties the host S2 leaf (dirty tracking)", () => {
    const bed = makeBed();
    const s2 = makeS2(bed.mem, bed.alloc, { ias: 40 });
    const s1 = makeS1(bed.mem, bed.alloc, { outputBits: 40 });
    // Stage 1 tables in host memory but reached through IPA = PA identity mapping for the table pool.
    s2.map(BED.POOL, BED.POOL, 0x10_0000n, PERM_RW);
    s2.map(0x0080_0000n, 0x4000_0000n, 0x1000n, PERM_RW, { dirtyTracking: true });
    s1.map(0x10_0000n, 0x0080_0000n, 0x1000n, PERM_RW);
    const cd = bed.alloc.alloc(4096) as bigint;
    bed.drv.writeWords(cd, cdFor(s1, 5, { IPS: 2 }));
    bed.drv.installSte(
      0x41,
      encodeSte({ V: 1, Config: STE_CONFIG.NESTED, S1ContextPtr: cd, ...s2SteFields(s2, 4), S2HA: 1, S2HD: 1 }),
    );
    const s2leaf = () => {
      let d = 0n;
      forEachLeaf(bed.mem, s2.stage, 0x0080_0000n, 0x1000n, (l) => (d = l.desc));
      return d;
    };
    expect((s2leaf() >> 7n) & 1n).toBe(0n); // S2AP[1] = 0: writable-clean
    expect(bed.smmu.translate(0x41, undefined, 0x10_0000n, "read").ok).toBe(true);
    expect((s2leaf() >> 7n) & 1n).toBe(0n);
    expect(bed.smmu.translate(0x41, undefined, 0x10_0000n, "write")).toMatchObject({ ok: true, pa: 0x4000_0000n });
    expect((s2leaf() >> 7n) & 1n).toBe(1n); // dirty
  });

  it("an ATS request for write permission sets the dirty state", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 0x42, 5, { cd: { HA: 1, HD: 1 }, ste: { EATS: 1 } });
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_RW, { dirtyTracking: true });
    const r = bed.smmu.atsTranslate(0x42, undefined, 0x10_0000n, { write: true });
    expect(r).toMatchObject({ status: "success", R: true, W: true });
    let d = 0n;
    forEachLeaf(bed.mem, s1.stage, 0x10_0000n, 0x1000n, (l) => (d = l.desc));
    expect((d >> 7n) & 1n).toBe(0n);
  });
});

describe("stall and resume", () => {
  it("CD.S = 1 stalls a stage-1 fault (Stall = 1, STAG); CMD_RESUME retry re-runs the translation", () => {
    const bed = makeBed();
    const { s1 } = s1Stream(bed, 0x50, 5, { cd: { S: 1 } });
    const r = bed.smmu.translate(0x50, undefined, 0x10_0000n, "read");
    expect(r).toMatchObject({ ok: false, stalled: 1, recorded: true });
    expect(bed.drv.drainEvents().events).toEqual([
      expect.objectContaining({ type: "F_TRANSLATION", Stall: true, STAG: 1, S2: false, CLASS: EVT_CLASS.IN }),
    ]);
    expect(bed.smmu.stalledTransactions).toEqual([{ StreamID: 0x50, STAG: 1, iova: 0x10_0000n }]);
    s1.map(0x10_0000n, 0x4000_0000n, 0x1000n, PERM_RW);
    bed.drv.submit(cmd.resume(0x50, 1, RESUME_ACTION.RETRY), cmd.sync());
    expect(bed.stalls).toEqual([
      { StreamID: 0x50, STAG: 1, action: "retry", result: expect.objectContaining({ ok: true, pa: 0x4000_0000n }) },
    ]);
    expect(bed.smmu.stalledTransactions).toEqual([]);
  });

  it("STE.S1STALLD = 1 terminates instead; CMD_STALL_TERM terminates a stream's stalls", () => {
    const bed = makeBed();
    s1Stream(bed, 0x51, 5, { cd: { S: 1 }, ste: { S1STALLD: 1 } });
    expect(bed.smmu.translate(0x51, undefined, 0x10_0000n, "read")).toMatchObject({ ok: false, recorded: true });
    expect(bed.smmu.stalledTransactions).toEqual([]);
    s1Stream(bed, 0x52, 5, { cd: { S: 1 } });
    bed.smmu.translate(0x52, undefined, 0x10_0000n, "read");
    bed.smmu.translate(0x52, undefined, 0x20_0000n, "read");
    bed.drv.submit({ name: "STALL_TERM", StreamID: 0x52 } as Command, cmd.sync());
    expect(bed.stalls.map((s) => s.action)).toEqual(["terminate", "terminate"]);
  });
});

describe("features", () => {
  it("without stage 2 the model rejects stage-2 commands as illegal", () => {
    const bed = makeBed({ features: { stage2: false } });
    bed.drv.submit(tlbi("TLBI_S12_VMALL", { VMID: 1 }));
    expect(bed.smmu.cmdqState).toBe("error");
    expect(DEFAULT_SMMU_FEATURES.stage2).toBe(true);
  });
});
