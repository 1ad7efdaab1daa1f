// Invalidation queue (each descriptor's effect on the caches, device-TLB
// forwarding and wait ordering, IQE/ITE/ICE), page request queue and page
// group responses, register behaviour.

import { describe, expect, it } from "vitest";
import { AtcCache } from "../cache/atc.js";
import { atsRangeDecode } from "../cache/ranges.js";
import { PERM_RW } from "../translation.js";
import type { VtdCacheSet } from "./common.js";
import { PGTT } from "./entries.js";
import { VTD_FR } from "./fault-reasons.js";
import {
  CC_INV_DESC,
  DEVTLB_INV_DESC,
  encodeInvDesc,
  INV_DESC_TYPE,
  IOTLB_INV_DESC,
  PC_INV_DESC,
  PDEVTLB_INV_DESC,
  PGRP_RESP_DESC,
  PIOTLB_INV_DESC,
  WAIT_INV_DESC,
} from "./invdesc.js";
import { decodePageRequest, type PageGroupResponse, type PageRequest } from "./prq.js";
import { VTD_IQEI, VTD_REG } from "./regs.js";
import { RIG, VtdRig, type VtdRigOptions } from "./testing.js";
import type { AtcInvalidationRequest } from "./vtd.js";

const RID = 0x0310;

const cc = (v: Parameters<typeof encodeInvDesc<typeof CC_INV_DESC>>[2]) => encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, v);
const pc = (v: Parameters<typeof encodeInvDesc<typeof PC_INV_DESC>>[2]) => encodeInvDesc(INV_DESC_TYPE.PASID_CACHE, PC_INV_DESC, v);
const iotlb = (v: Parameters<typeof encodeInvDesc<typeof IOTLB_INV_DESC>>[2]) => encodeInvDesc(INV_DESC_TYPE.IOTLB, IOTLB_INV_DESC, v);
const piotlb = (v: Parameters<typeof encodeInvDesc<typeof PIOTLB_INV_DESC>>[2]) => encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, v);
const wait = (v: Parameters<typeof encodeInvDesc<typeof WAIT_INV_DESC>>[2]) => encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, v);

/**
 * Two devices: RID with PASIDs 1 and 2 (first-stage, DID 10) and RID_PASID 0
 * (second-stage, DID 10); RID2 with PASID 1 (first-stage, DID 11). Each maps
 * 16 pages at 0x4000_0000.
 */
function world(opts: VtdRigOptions = {}) {
  const rig = new VtdRig(opts);
  const RID2 = 0x0318;
  const fs1 = rig.firstStage(4);
  const fs2 = rig.firstStage(4);
  const ss = rig.secondStage(2);
  rig.map(fs1, 0x4000_0000n, 0x8000_0000n, 0x10000n, { perms: PERM_RW }, rig.mem, rig.alloc, 12);
  rig.map(fs2, 0x4000_0000n, 0x9000_0000n, 0x10000n, { perms: PERM_RW }, rig.mem, rig.alloc, 12);
  rig.map(ss, 0x4000_0000n, 0xa000_0000n, 0x10000n, { perms: PERM_RW }, rig.mem, rig.alloc, 12);
  rig.tables.setContext(RID, { DTE: 1, PRE: 1 });
  rig.tables.setContext(RID2, { DTE: 1 });
  rig.tables.setPasidEntry(RID, 1, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs1.root, DID: 10 });
  rig.tables.setPasidEntry(RID, 2, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs2.root, DID: 10 });
  rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.SECOND_STAGE, AW: 2, SSPTPTR: ss.root, DID: 10 });
  rig.tables.setPasidEntry(RID2, 1, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs1.root, DID: 11 });
  const caches = rig.vtd.caches as VtdCacheSet;
  const warm = () => {
    for (let i = 0n; i < 16n; i++) {
      rig.vtd.translate(RID, 1, 0x4000_0000n + i * 0x1000n, { kind: "read" });
      rig.vtd.translate(RID, 2, 0x4000_0000n + i * 0x1000n, { kind: "read" });
      rig.vtd.translate(RID, undefined, 0x4000_0000n + i * 0x1000n, { kind: "read" });
      rig.vtd.translate(RID2, 1, 0x4000_0000n + i * 0x1000n, { kind: "read" });
    }
  };
  const tags = () => {
    const out: Record<string, number> = {};
    for (const e of caches.iotlbCache.entries()) {
      const k = `${e.s1Tag}/${e.s2Tag}`;
      out[k] = (out[k] ?? 0) + 1;
    }
    return out;
  };
  return { rig, RID2, caches, warm, tags, fs1, ss };
}

describe("IOTLB invalidations", () => {
  it("entries are tagged (PASID, DID); SS-only entries (-1, DID)", () => {
    const { warm, tags } = world();
    warm();
    expect(tags()).toEqual({ "1/10": 16, "2/10": 16, "-1/10": 16, "1/11": 16 });
  });
  it("IOTLB global / domain-selective / page-selective with AM", () => {
    const { rig, warm, tags } = world();
    warm();
    rig.submit(iotlb({ G: 3, DID: 10, AM: 2, ADDR: 0x4000_4000n >> 12n }));
    // 4 pages of every DID-10 entry (any PASID, SS-only too); DID 11 untouched.
    expect(tags()).toEqual({ "1/10": 12, "2/10": 12, "-1/10": 12, "1/11": 16 });
    expect(rig.vtd.translate(RID, 1, 0x4000_4000n, { kind: "read" })).toMatchObject({ via: "walk" });
    expect(rig.vtd.translate(RID, 1, 0x4000_8000n, { kind: "read" })).toMatchObject({ via: "iotlb" });
    rig.submit(iotlb({ G: 2, DID: 11 }));
    expect(tags()["1/11"]).toBeUndefined();
    rig.submit(iotlb({ G: 1 }));
    expect(tags()).toEqual({});
    expect(rig.vtd.counters.descriptors).toEqual({ iotlb: 3 });
  });
  it("PASID-based IOTLB: PASID-selective and page-selective-within-PASID with AM; SS-only entries untouched", () => {
    const { rig, warm, tags } = world();
    warm();
    rig.submit(piotlb({ G: 3, DID: 10, PASID: 1, AM: 3, ADDR: 0x4000_8000n >> 12n }));
    expect(tags()).toEqual({ "1/10": 8, "2/10": 16, "-1/10": 16, "1/11": 16 });
    rig.submit(piotlb({ G: 2, DID: 10, PASID: 2 }));
    expect(tags()).toEqual({ "1/10": 8, "-1/10": 16, "1/11": 16 });
    // Wrong DID: nothing.
    rig.submit(piotlb({ G: 2, DID: 12, PASID: 1 }));
    expect(tags()).toEqual({ "1/10": 8, "-1/10": 16, "1/11": 16 });
  });
  it("a stale IOTLB entry keeps translating until invalidated", () => {
    const { rig, fs1 } = world();
    expect(rig.vtd.translate(RID, 1, 0x4000_0000n, { kind: "read" })).toMatchObject({ output: 0x8000_0000n });
    // Guest remaps the page to 0x8800_0000 in place (same FS leaf).
    const { explain } = rig.vtd.explain(RID, 1, 0x4000_0000n, { kind: "read" });
    const leaf = explain.steps.at(-1);
    if (!leaf) throw new Error("steps");
    rig.mem.write64(leaf.descAddr, (leaf.value & ~0x000f_ffff_ffff_f000n) | 0x8800_0000n);
    expect(rig.vtd.translate(RID, 1, 0x4000_0000n, { kind: "read" })).toMatchObject({ output: 0x8000_0000n, via: "iotlb" });
    rig.submit(piotlb({ G: 3, DID: 10, PASID: 1, AM: 0, ADDR: 0x4000_0000n >> 12n }));
    expect(rig.vtd.translate(RID, 1, 0x4000_0000n, { kind: "read" })).toMatchObject({ output: 0x8800_0000n, via: "walk" });
    expect(fs1.root).toBeGreaterThan(0n);
  });
});

describe("context-cache and PASID-cache invalidations", () => {
  it("context-cache: device-selective (with FM), domain (= global in scalable mode), global", () => {
    const { rig, RID2, caches, warm } = world();
    warm();
    expect(caches.contextCache.size).toBe(2);
    rig.submit(cc({ G: 3, SID: RID2 }));
    expect([...caches.contextCache.entries()].map(([k]) => k)).toEqual([RID]);
    warm();
    // FM = 3 masks SID[2:0]: RID 03:02.0 and RID2 03:03.0 differ in bit 3 → only RID2's function group.
    rig.submit(cc({ G: 3, SID: 0x0319, FM: 3 }));
    expect([...caches.contextCache.entries()].map(([k]) => k)).toEqual([RID]);
    warm();
    rig.submit(cc({ G: 2, DID: 99 }));
    expect(caches.contextCache.size).toBe(0);
    warm();
    rig.submit(cc({ G: 1 }));
    expect(caches.contextCache.size).toBe(0);
  });
  it("a changed context entry is used only after context-cache invalidation", () => {
    const { rig } = world();
    expect(rig.vtd.translate(RID, 1, 0x4000_0000n, { kind: "read" }).ok).toBe(true);
    rig.tables.setContext(RID, { P: 0 });
    expect(rig.vtd.translate(RID, 1, 0x4000_1000n, { kind: "read" }).ok).toBe(true);
    rig.submit(cc({ G: 3, SID: RID }));
    expect(rig.vtd.translate(RID, 1, 0x4000_1000n, { kind: "read" })).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_P });
  });
  it("PASID-cache: PASID-selective, domain-selective, global", () => {
    const { rig, caches, warm } = world();
    warm();
    expect(caches.pasidCache.size).toBe(4);
    rig.submit(pc({ G: 1, DID: 10, PASID: 2 }));
    expect(caches.pasidCache.size).toBe(3);
    rig.submit(pc({ G: 1, DID: 11, PASID: 2 })); // wrong DID for PASID 2
    expect(caches.pasidCache.size).toBe(3);
    rig.submit(pc({ G: 0, DID: 10 }));
    expect([...caches.pasidCache.entries()].map(([, v]) => [v.rid, v.pasid])).toEqual([[0x0318, 1]]);
    rig.submit(pc({ G: 3 }));
    expect(caches.pasidCache.size).toBe(0);
  });
  it("a torn-down PASID entry faults only after the PASID-cache invalidation", () => {
    const { rig } = world();
    rig.vtd.translate(RID, 2, 0x4000_0000n, { kind: "read" });
    rig.tables.setPasidEntry(RID, 2, { P: 0 });
    rig.submit(piotlb({ G: 2, DID: 10, PASID: 2 }));
    expect(rig.vtd.translate(RID, 2, 0x4000_0000n, { kind: "read" }).ok).toBe(true);
    rig.submit(pc({ G: 1, DID: 10, PASID: 2 }));
    expect(rig.vtd.translate(RID, 2, 0x4000_0000n, { kind: "read" })).toMatchObject({ ok: false, reason: VTD_FR.SM_PTE_P });
  });
});

describe("device-TLB invalidation and wait ordering", () => {
  function devtlbWorld() {
    const sent: AtcInvalidationRequest[] = [];
    const atc = new AtcCache();
    const w = world({
      ports: {
        atcInvalidate: (req) => {
          sent.push(req);
          atc.invalidate({ ...(req.pasid !== undefined ? { pasid: req.pasid } : {}), range: { start: req.base, size: req.size }, global: req.global });
        },
      },
    });
    return { ...w, sent, atc };
  }
  const status = (rig: VtdRig) => {
    const r = rig.mem.read64(RIG.STATUS);
    return r.ok ? r.value : -1n;
  };

  it("forwards device-TLB and PASID-based device-TLB invalidations with decoded ranges", () => {
    const { rig, sent, atc } = devtlbWorld();
    atc.insert({ pasid: 1, untranslated: 0x4000_0000n, sizeShift: 12, translated: 0x8000_0000n, r: true, w: true, exe: false, priv: false, global: false });
    atc.insert({ pasid: undefined, untranslated: 0x5000_0000n, sizeShift: 12, translated: 0xa000_0000n, r: true, w: true, exe: false, priv: false, global: false });
    rig.submit(
      encodeInvDesc(INV_DESC_TYPE.PASID_DEVICE_TLB, PDEVTLB_INV_DESC, { SID: RID, PASID: 1, S: 1, ADDR: 0x4000_1000n >> 12n }),
      encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, S: 0, ADDR: 0x5000_0000n >> 12n }),
    );
    expect(sent.map((s) => [s.tag, s.sid, s.pasid, s.base, s.size])).toEqual([
      [1, RID, 1, 0x4000_0000n, 0x4000n],
      [2, RID, undefined, 0x5000_0000n, 0x1000n],
    ]);
    expect(atsRangeDecode(sent[0]?.addr as bigint, true)).toEqual({ start: 0x4000_0000n, size: 0x4000n });
    expect(atc.size).toBe(0);
    expect(rig.vtd.outstandingAtcInvalidations.length).toBe(2);
  });

  it("a wait after device-TLB invalidations writes its status only after every ack; FN fences later descriptors", () => {
    const { rig, sent, warm, tags } = devtlbWorld();
    const events: number[] = [];
    rig.vtd.ports.invalidationEvent = (m) => events.push(m.data);
    rig.vtd.writeReg(VTD_REG.IEDATA, 0x77n, 4);
    rig.vtd.writeReg(VTD_REG.IECTL, 0n, 4);
    warm();
    rig.submit(
      encodeInvDesc(INV_DESC_TYPE.PASID_DEVICE_TLB, PDEVTLB_INV_DESC, { SID: RID, PASID: 1, ADDR: 0x4000_0000n >> 12n }),
      encodeInvDesc(INV_DESC_TYPE.PASID_DEVICE_TLB, PDEVTLB_INV_DESC, { SID: RID, PASID: 2, ADDR: 0x4000_0000n >> 12n }),
      wait({ SW: 1, FN: 1, IF: 1, SDATA: 0x1234, SADDR: RIG.STATUS >> 2n }),
      iotlb({ G: 1 }),
    );
    expect(sent.length).toBe(2);
    expect(status(rig)).toBe(0n);
    expect(rig.vtd.pendingWaitCount).toBe(1);
    // Fenced: the IOTLB flush after the wait has not run.
    expect(Object.keys(tags()).length).toBe(4);
    expect(rig.vtd.readReg(VTD_REG.IQH)).toBe(3n * 32n);
    rig.vtd.atcInvalidationDone(2);
    expect(status(rig)).toBe(0n);
    rig.vtd.atcInvalidationDone(1);
    expect(status(rig)).toBe(0x1234n);
    expect(rig.vtd.readReg(VTD_REG.ICS, 4)).toBe(1n);
    expect(events).toEqual([0x77]);
    expect(tags()).toEqual({});
    expect(rig.vtd.readReg(VTD_REG.IQH)).toBe(4n * 32n);
  });

  it("without FN later descriptors run while the wait is pending; a later wait with nothing new still completes in order", () => {
    const { rig, warm, tags } = devtlbWorld();
    warm();
    rig.submit(
      encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, ADDR: 0n }),
      wait({ SW: 1, SDATA: 1, SADDR: RIG.STATUS >> 2n }),
      iotlb({ G: 1 }),
      wait({ SW: 1, SDATA: 2, SADDR: (RIG.STATUS + 8n) >> 2n }),
    );
    expect(tags()).toEqual({});
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 0n });
    expect(rig.mem.read64(RIG.STATUS + 8n)).toEqual({ ok: true, value: 0n });
    rig.vtd.atcInvalidationDone(1);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 1n });
    expect(rig.mem.read64(RIG.STATUS + 8n)).toEqual({ ok: true, value: 2n });
  });

  it("a device that acknowledges synchronously (inside the port call) completes the wait in order", () => {
    const order: string[] = [];
    const rig: VtdRig = world({
      ports: {
        atcInvalidate: (r) => {
          order.push(`inv${r.tag}`);
          rig.vtd.atcInvalidationDone(r.tag, r.sid);
        },
      },
    }).rig;
    rig.submit(
      encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, ADDR: 0n }),
      wait({ SW: 1, FN: 1, SDATA: 7, SADDR: RIG.STATUS >> 2n }),
      encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, ADDR: 0x1000n >> 12n }),
      wait({ SW: 1, SDATA: 8, SADDR: (RIG.STATUS + 8n) >> 2n }),
    );
    expect(order).toEqual(["inv1", "inv2"]);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 7n });
    expect(rig.mem.read64(RIG.STATUS + 8n)).toEqual({ ok: true, value: 8n });
    expect(rig.vtd.readReg(VTD_REG.IQH)).toBe(rig.vtd.readReg(VTD_REG.IQT));
    expect(rig.vtd.counters.descriptors).toEqual({ "device-tlb": 2, wait: 2 });
  });

  it("a wait with nothing outstanding completes at once", () => {
    const { rig } = world();
    rig.submit(wait({ SW: 1, SDATA: 0xabcd, SADDR: RIG.STATUS >> 2n }));
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 0xabcdn });
    expect(rig.vtd.counters.descriptors).toEqual({ wait: 1 });
  });

  it("timeout → ITE with ITESID; the pending wait is abandoned and the queue stops until ITE is cleared", () => {
    const { rig } = devtlbWorld();
    rig.submit(
      encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, ADDR: 0n }),
      wait({ SW: 1, FN: 1, SDATA: 5, SADDR: RIG.STATUS >> 2n }),
    );
    rig.vtd.atcInvalidationTimeout(1);
    expect(rig.vtd.readReg(VTD_REG.FSTS, 4) & 0x40n).toBe(0x40n);
    expect((rig.vtd.readReg(VTD_REG.IQERCD) >> 32n) & 0xffffn).toBe(BigInt(RID));
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 0n });
    rig.submit(wait({ SW: 1, SDATA: 6, SADDR: RIG.STATUS >> 2n }));
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 0n });
    rig.vtd.writeReg(VTD_REG.FSTS, 0x40n, 4);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 6n });
  });

  it("completion with an unknown tag or another requester → ICE with ICESID", () => {
    const { rig } = devtlbWorld();
    rig.submit(encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: RID, ADDR: 0n }));
    rig.vtd.atcInvalidationDone(1, 0x0400);
    expect(rig.vtd.readReg(VTD_REG.FSTS, 4) & 0x20n).toBe(0x20n);
    expect(rig.vtd.readReg(VTD_REG.IQERCD) >> 48n).toBe(0x400n);
    expect(rig.vtd.outstandingAtcInvalidations.length).toBe(1);
  });
});

describe("invalid descriptors → IQE", () => {
  it("unknown type: IQE, IQEI 3, IQH stays on the bad descriptor, fault event; resumes after software fixes it", () => {
    const events: number[] = [];
    const { rig } = world({ ports: { faultEvent: (m) => events.push(m.data) } });
    rig.vtd.writeReg(VTD_REG.FECTL, 0n, 4);
    rig.submit(wait({ SW: 1, SDATA: 1, SADDR: RIG.STATUS >> 2n }), [0xfn, 0n, 0n, 0n], wait({ SW: 1, SDATA: 2, SADDR: RIG.STATUS >> 2n }));
    expect(rig.vtd.readReg(VTD_REG.FSTS, 4) & 0x10n).toBe(0x10n);
    expect(rig.vtd.readReg(VTD_REG.IQERCD) & 0xfn).toBe(BigInt(VTD_IQEI.INVALID_TYPE));
    expect(rig.vtd.readReg(VTD_REG.IQH)).toBe(32n);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 1n });
    expect(events.length).toBe(1);
    // Software (like Linux qi_check_fault) overwrites the bad descriptor and clears IQE.
    rig.mem.write(RIG.IQ + 32n, new Uint8Array(32));
    rig.mem.write64(RIG.IQ + 32n, wait({ SW: 1, SDATA: 3, SADDR: (RIG.STATUS + 8n) >> 2n })[0] as bigint);
    rig.mem.write64(RIG.IQ + 40n, (RIG.STATUS + 8n) & ~3n);
    rig.vtd.writeReg(VTD_REG.FSTS, 0x10n, 4);
    expect(rig.vtd.readReg(VTD_REG.FSTS, 4)).toBe(0n);
    expect(rig.mem.read64(RIG.STATUS + 8n)).toEqual({ ok: true, value: 3n });
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 2n });
  });
  it("reserved bits → IQEI 4; tail not 256-bit aligned → IQEI 1; fetch error → IQEI 2", () => {
    const { rig } = world();
    rig.submit(iotlb({ G: 1, RSVD2: 1 }));
    expect(rig.vtd.readReg(VTD_REG.IQERCD) & 0xfn).toBe(4n);
    const r2 = new VtdRig();
    r2.vtd.writeReg(VTD_REG.IQT, 0x10n);
    expect(r2.vtd.readReg(VTD_REG.FSTS, 4) & 0x10n).toBe(0x10n);
    expect(r2.vtd.readReg(VTD_REG.IQERCD) & 0xfn).toBe(1n);
    const r3 = new VtdRig();
    r3.mem.addAbortRange(RIG.IQ, 0x1000n);
    r3.vtd.writeReg(VTD_REG.IQT, 0x20n);
    expect(r3.vtd.readReg(VTD_REG.IQERCD) & 0xfn).toBe(2n);
  });
  it("128-bit descriptors (IQA.DW = 0) work the same", () => {
    const { rig, warm, tags } = world({ dw: false });
    warm();
    rig.submit(piotlb({ G: 2, DID: 10, PASID: 1 }), wait({ SW: 1, SDATA: 9, SADDR: RIG.STATUS >> 2n }));
    expect(tags()["1/10"]).toBeUndefined();
    expect(rig.vtd.readReg(VTD_REG.IQH)).toBe(32n);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 9n });
  });
});

describe("page requests and page group responses", () => {
  function prqWorld() {
    const responses: PageGroupResponse[] = [];
    const events: number[] = [];
    const w = world({ ports: { pageResponse: (r) => responses.push(r), pageRequestEvent: (m) => events.push(m.data) } });
    w.rig.vtd.writeReg(VTD_REG.PECTL, 0n, 4);
    return { ...w, responses, events };
  }
  const req = (o: Partial<PageRequest> = {}): PageRequest => ({ rid: RID, pasid: 1, addr: 0x7000_0000n, read: true, write: false, exec: false, priv: false, prgi: 3, lpig: true, ...o });

  it("queues a 32-byte descriptor at PQT, sets PRS.PPR and raises the event", () => {
    const { rig, events } = prqWorld();
    expect(rig.vtd.pageRequest(req({ write: true }))).toEqual({ queued: true });
    expect(rig.vtd.readReg(VTD_REG.PQT)).toBe(32n);
    expect(rig.vtd.readReg(VTD_REG.PRS, 4)).toBe(1n);
    expect(events.length).toBe(1);
    const words = [0n, 8n, 16n, 24n].map((o) => {
      const r = rig.mem.read64(RIG.PRQ + o);
      return r.ok ? r.value : 0n;
    });
    expect(decodePageRequest(words)).toEqual(req({ write: true }));
    // Software consumes it.
    rig.vtd.writeReg(VTD_REG.PQH, 32n);
    rig.vtd.writeReg(VTD_REG.PRS, 1n, 4);
    expect(rig.vtd.readReg(VTD_REG.PRS, 4)).toBe(0n);
  });

  it("overflow sets PRS.PRO and the unit answers the group with Success", () => {
    const { rig, responses } = prqWorld();
    for (let i = 0; i < 127; i++) expect(rig.vtd.pageRequest(req({ prgi: i, lpig: false })).queued).toBe(true);
    expect(rig.vtd.pageRequest(req({ prgi: 200 }))).toEqual({ queued: false, overflow: true });
    expect(rig.vtd.readReg(VTD_REG.PRS, 4)).toBe(3n);
    expect(responses).toEqual([{ rid: RID, pasid: 1, prgi: 200, code: 0, auto: true }]);
    // Stop markers (LPIG, no access) get no response.
    rig.vtd.pageRequest(req({ read: false, write: false, prgi: 201 }));
    expect(responses.length).toBe(1);
    expect(rig.vtd.counters.pageRequestOverflows).toBe(2);
  });

  it("PRE = 0 → fault 0x47 recorded as a page request (T2:T1 = 10b) and Invalid Request", () => {
    const { rig, RID2, responses } = prqWorld();
    expect(rig.vtd.pageRequest(req({ rid: RID2 }))).toEqual({ queued: false, reason: VTD_FR.SM_CTX_PRE });
    expect(responses).toEqual([{ rid: RID2, pasid: 1, prgi: 3, code: 1, auto: true }]);
    const hi = rig.vtd.readReg(0x408);
    expect((hi >> 32n) & 0xffn).toBe(0x47n);
    expect((hi >> 62n) & 1n).toBe(0n); // T1
    expect((hi >> 28n) & 1n).toBe(1n); // T2
  });

  it("page group response descriptors are delivered to the port", () => {
    const { rig, responses } = prqWorld();
    const d = encodeInvDesc(INV_DESC_TYPE.PAGE_GROUP_RESPONSE, PGRP_RESP_DESC, { PP: 1, RC: 0, RID, PASID: 1, LPIG: 1, PRGI: 3, PDP: 1 });
    d[2] = 0xaaaan;
    d[3] = 0xbbbbn;
    rig.submit(d);
    expect(responses).toEqual([{ rid: RID, pasid: 1, prgi: 3, code: 0, auto: false, privateData: [0xaaaan, 0xbbbbn] }]);
    expect(rig.vtd.counters.descriptors).toEqual({ "page-group-response": 1 });
    expect(rig.vtd.counters.pageResponses).toBe(1);
  });
});

describe("registers", () => {
  it("CAP / ECAP / VER read through MMIO, in 64- and 32-bit halves", () => {
    const rig = new VtdRig();
    const v = rig.vtd;
    expect(v.readReg(VTD_REG.CAP)).toBe(v.cap);
    expect(v.readReg(VTD_REG.ECAP)).toBe(v.ecap);
    expect(v.readReg(VTD_REG.ECAP + 4, 4)).toBe(v.ecap >> 32n);
    expect(v.readReg(VTD_REG.VER, 4)).toBe(0x30n);
    expect(v.hwInfo()).toEqual({ flags: 0, __reserved: 0, cap_reg: v.cap, ecap_reg: v.ecap });
  });
  it("GCMD / GSTS: SRTP latches RTADDR, QIE resets IQH, TE", () => {
    const rig = new VtdRig({ noTranslate: true });
    const v = rig.vtd;
    expect(v.readReg(VTD_REG.GSTS, 4)).toBe((1n << 30n) | (1n << 26n)); // RTPS | QIES
    rig.command(31);
    expect(v.readReg(VTD_REG.GSTS, 4)).toBe((1n << 31n) | (1n << 30n) | (1n << 26n));
    expect(v.readReg(VTD_REG.RTADDR)).toBe(rig.tables.rta | (1n << 10n));
    // 32-bit writes to the halves of a 64-bit register.
    v.writeReg(VTD_REG.PQA + 4, 0x1n, 4);
    expect(v.readReg(VTD_REG.PQA)).toBe((1n << 32n) | RIG.PRQ);
  });
  it("masked fault events stay pending (FECTL.IP) and are delivered on unmask", () => {
    const events: number[] = [];
    const rig = new VtdRig({ ports: { faultEvent: (m) => events.push(m.data) } });
    const v = rig.vtd;
    v.translate(0x0600, undefined, 0n, { kind: "read" });
    expect(v.readReg(VTD_REG.FECTL, 4)).toBe((1n << 31n) | (1n << 30n)); // IM | IP
    expect(events).toEqual([]);
    v.writeReg(VTD_REG.FECTL, 0n, 4);
    expect(events).toEqual([0]);
    expect(v.readReg(VTD_REG.FECTL, 4)).toBe(0n);
  });
});
