// The host-driver recipe end to end: a nested PASID entry from
// iommu_hwpt_vtd_s1, DMA through it, a guest invalidation turned into
// PIOTLB + PASID device-TLB + wait, acknowledged by the device's ATC.

import { describe, expect, it } from "vitest";
import { AtcCache } from "../cache/atc.js";
import { PERM_RW, type StageConfig } from "../translation.js";
import { devtlbDesc, IOMMU_VTD_S1, nestedPasidFields, pasidCacheDesc, piotlbDesc, waitDesc } from "./driver.js";
import { decodeInvDesc } from "./invdesc.js";
import { RIG, VtdRig } from "./testing.js";
import type { AtcInvalidationRequest } from "./vtd.js";

const RID = 0x0310;

describe("host driver recipe", () => {
  it("nested PASID entry from iommu_hwpt_vtd_s1, then invalidate through the queue", () => {
    const sent: AtcInvalidationRequest[] = [];
    const atc = new AtcCache();
    const rig = new VtdRig({
      ports: {
        atcInvalidate: (r) => {
          sent.push(r);
          atc.invalidate({ ...(r.pasid !== undefined ? { pasid: r.pasid } : {}), range: { start: r.base, size: r.size } });
        },
      },
    });
    const ss = rig.guestSecondStage(2);
    const g = rig.guest();
    const fsRoot = g.alloc.alloc(0x1000) as bigint;
    const fs: StageConfig = { ...rig.firstStage(4), root: fsRoot };
    rig.map(fs, 0x7000_0000n, 0x0030_0000n, 0x4000n, { perms: PERM_RW }, g.mem, g.alloc, 12);

    const f = nestedPasidFields({ flags: IOMMU_VTD_S1.SRE | IOMMU_VTD_S1.WPE, pgtbl_addr: fsRoot, addr_width: 48, __reserved: 0 }, { ssptptr: ss.root, aw: 2 }, 42, {
      fs5lp: true,
      pwsnp: true,
    });
    if (!f.ok) throw new Error(f.error);
    expect(f.fields).toMatchObject({ PGTT: 3, SRE: 1, WPE: 1, EAFE: 0, FLPM: 0, DID: 42, AW: 2, PWSNP: 1 });
    rig.tables.setContext(RID, { DTE: 1 });
    rig.tables.setPasidEntry(RID, 5, f.fields);
    rig.submit(pasidCacheDesc(42, 5), waitDesc(RIG.STATUS, 1));

    expect(rig.vtd.translate(RID, 5, 0x7000_1008n, { kind: "write", priv: true })).toMatchObject({ ok: true, output: RIG.GUEST_BASE + 0x0030_1008n });
    const c = rig.vtd.atsTranslate(RID, 5, 0x7000_2000n);
    atc.insert({ pasid: 5, untranslated: 0x7000_2000n, sizeShift: 12, translated: c.translatedAddr, r: c.r, w: c.w, exe: c.exe, priv: c.priv, global: c.global });

    // Guest: iommu_hwpt_vtd_s1_invalidate { addr 0x7000_1000, npages 2 } →
    const pi = piotlbDesc(42, 5, 0x7000_1000n, 2n, true);
    expect(decodeInvDesc(pi, true)).toMatchObject({ ok: true, desc: { type: "pasid-iotlb", g: 3, am: 2, ih: true, addr: 0x7000_0000n } });
    rig.submit(pi, devtlbDesc(RID, 5, 0x7000_0000n, 0x4000n), waitDesc(RIG.STATUS, 2, { fence: true }));
    expect(sent.map((s) => [s.pasid, s.base, s.size])).toEqual([[5, 0x7000_0000n, 0x4000n]]);
    expect(atc.size).toBe(0);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 1n });
    rig.vtd.atcInvalidationDone(sent[0]?.tag as number, RID);
    expect(rig.mem.read64(RIG.STATUS)).toEqual({ ok: true, value: 2n });
    expect(rig.vtd.translate(RID, 5, 0x7000_1008n, { kind: "read" })).toMatchObject({ via: "walk" });
    expect(piotlbDesc(42, 5, 0n, 0xffff_ffff_ffff_ffffn)[0]).toBe(0x6n | (2n << 4n) | (42n << 16n) | (5n << 32n));
    expect(decodeInvDesc(devtlbDesc(RID, undefined, 0n, 0n, true), true)).toMatchObject({ ok: true, desc: { type: "device-tlb", s: true } });
  });
  it("refuses what Linux refuses", () => {
    const parent = { ssptptr: 0x1000n, aw: 2 };
    expect(nestedPasidFields({ flags: 8n, pgtbl_addr: 0n, addr_width: 48, __reserved: 0 }, parent, 1, { fs5lp: true })).toEqual({ ok: false, error: "unsupported flags" });
    expect(nestedPasidFields({ flags: 0n, pgtbl_addr: 0n, addr_width: 57, __reserved: 0 }, parent, 1, { fs5lp: false })).toMatchObject({ ok: false });
    expect(nestedPasidFields({ flags: 0n, pgtbl_addr: 0n, addr_width: 39, __reserved: 0 }, parent, 1, { fs5lp: true })).toMatchObject({ ok: false });
  });
});
