// Translation through the model: each format, each PGTT, nested, pass-through,
// every fault reason the model produces with its record fields, FPD, fault
// recording overflow, ATS, explain.

import { describe, expect, it } from "vitest";
import { VTD_SECOND_STAGE } from "../format/vtd.js";
import { PERM_R, PERM_RW, PERM_W, Perm, type StageConfig } from "../translation.js";
import { walkStage } from "../walk/walk.js";
import { PGTT } from "./entries.js";
import { VTD_FR } from "./fault-reasons.js";
import { decodeFaultRecord, FAULT_REQ_TYPE } from "./fault-record.js";
import { VTD_REG } from "./regs.js";
import { RIG, VtdRig } from "./testing.js";
import type { VtdTranslateFault, VtdTranslateResult } from "./vtd.js";

const RID = 0x0310; // 03:02.0
const USER_RW = PERM_RW;
const SUP_RW = Perm.PR | Perm.PW;

function ok(r: VtdTranslateResult): bigint {
  if (!r.ok) throw new Error(`fault ${r.reasonName}`);
  return r.output;
}
function fault(r: VtdTranslateResult): VtdTranslateFault {
  if (r.ok) throw new Error(`translated to 0x${r.output.toString(16)}`);
  return r;
}

/** First-stage-only PASID with a 4- or 5-level table mapping VA 0x4000_0000 → HPA 0x8000_0000. */
function fsRig(levels: 4 | 5 = 4, pe: Record<string, number> = {}) {
  const rig = new VtdRig();
  const fs = rig.firstStage(levels, { nxe: pe.NXE === 1, wpe: pe.WPE === 1, sre: pe.SRE === 1 });
  rig.map(fs, 0x4000_0000n, 0x8000_0000n, 0x2000n, { perms: USER_RW }, rig.mem, rig.alloc, 12);
  rig.map(fs, 0x4001_0000n, 0x8001_0000n, 0x1000n, { perms: PERM_R }, rig.mem, rig.alloc, 12);
  rig.map(fs, 0x4002_0000n, 0x8002_0000n, 0x1000n, { perms: SUP_RW }, rig.mem, rig.alloc, 12);
  rig.tables.setContext(RID, { RID_PASID: 0 });
  rig.tables.setPasidEntry(RID, 7, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs.root, FLPM: levels === 5 ? 1 : 0, DID: 3, ...pe });
  return { rig, fs };
}

/** Nested: guest FS in guest RAM (GPA) over a host SS mapping guest RAM with 4 KiB pages. */
function nestedRig(pe: Record<string, number> = {}) {
  const rig = new VtdRig();
  const ss = rig.guestSecondStage(2);
  const g = rig.guest();
  const fsRoot = g.alloc.alloc(0x1000) as bigint;
  const fs: StageConfig = { ...rig.firstStage(4), root: fsRoot, outputBits: 48 };
  // VA 0x7000_0000 → GPA 0x0020_0000 (guest data page), 2 pages.
  rig.map(fs, 0x7000_0000n, 0x0020_0000n, 0x2000n, { perms: USER_RW }, g.mem, g.alloc, 12);
  rig.tables.setContext(RID);
  rig.tables.setPasidEntry(RID, 9, { PGTT: PGTT.NESTED, AW: 2, SSPTPTR: ss.root, FSPTPTR: fsRoot, DID: 20, SRE: 1, ...pe });
  return { rig, ss, fs, g };
}

/** Rewrite the host SS leaf for a GPA page. */
function setSsLeaf(rig: VtdRig, ss: StageConfig, gpa: bigint, perms: number): void {
  const w = walkStage(rig.mem, ss, gpa, { kind: "read", privileged: true, probe: true });
  if (!w.ok || !w.s2) throw new Error("ss walk");
  rig.mem.write64(w.s2.descAddr, VTD_SECOND_STAGE.encodeLeaf(RIG.GUEST_BASE + (gpa & ~0xfffn), 3, { perms }));
}

describe("first-stage translation (PGTT = 001b)", () => {
  it("4-level: translates, caches in the IOTLB tagged (PASID, DID), sets A/D", () => {
    const { rig } = fsRig(4);
    const v = rig.vtd;
    expect(ok(v.translate(RID, 7, 0x4000_0123n, { kind: "read" }))).toBe(0x8000_0123n);
    expect(v.counters.iotlb).toEqual({ hit: 0, miss: 1 });
    expect(v.counters.contextCache).toEqual({ hit: 0, miss: 1 });
    expect(v.counters.pasidCache).toEqual({ hit: 0, miss: 1 });
    const again = v.translate(RID, 7, 0x4000_0456n, { kind: "read" });
    expect(again).toMatchObject({ ok: true, output: 0x8000_0456n, via: "iotlb", did: 3, pasid: 7, pgtt: PGTT.FIRST_STAGE });
    expect(v.counters.iotlb).toEqual({ hit: 1, miss: 1 });
    expect(v.counters.contextCache.hit).toBe(1);
    expect(v.counters.pasidCache.hit).toBe(1);
    expect(ok(v.translate(RID, 7, 0x4000_1008n, { kind: "write" }))).toBe(0x8000_1008n);
    expect(v.counters.translations).toBe(3);
  });

  it("5-level (FLPM = 01b) walks five levels", () => {
    const { rig } = fsRig(5);
    rig.vtd.recordWalkReads = true;
    const r = rig.vtd.translate(RID, 7, 0x4000_0010n, { kind: "read" });
    expect(r).toMatchObject({ ok: true, output: 0x8000_0010n, via: "walk" });
    if (r.ok) expect(r.walk?.descReads?.length).toBe(5);
  });

  it("requests without PASID use RID_PASID", () => {
    const { rig, fs } = fsRig(4);
    rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs.root, DID: 3 });
    expect(ok(rig.vtd.translate(RID, undefined, 0x4000_0040n, { kind: "write" }))).toBe(0x8000_0040n);
  });

  it("faults 0x71 / 0x85 / 0x81 / 0x80 / 0x72 / 0x82 with the record fields", () => {
    const { rig } = fsRig(4, { NXE: 1, SRE: 1, ERE: 1 });
    const v = rig.vtd;
    const notPresent = fault(v.translate(RID, 7, 0x5000_0000n, { kind: "read" }));
    expect(notPresent.reason).toBe(VTD_FR.SM_FS_P);
    expect(notPresent.record).toEqual({ reason: 0x71, sid: RID, addr: 0x5000_0000n, pasid: 7, priv: false, exe: false, type: FAULT_REQ_TYPE.READ, at: 0 });
    expect(fault(v.translate(RID, 7, 0x4001_0000n, { kind: "write" })).reason).toBe(VTD_FR.SM_WRITE);
    // Supervisor-only page (U/S = 0) from a user request.
    const us = fault(v.translate(RID, 7, 0x4002_0000n, { kind: "read" }));
    expect(us.reason).toBe(VTD_FR.SM_US);
    expect(ok(v.translate(RID, 7, 0x4002_0000n, { kind: "read", priv: true }))).toBe(0x8002_0000n);
    expect(fault(v.translate(RID, 7, 0x0000_8000_0000_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_NON_CANONICAL);
    // Execute with XD set: 0x82 (NXE = 1).
    const pteXd = setXd(rig, 0x4000_0000n);
    expect(pteXd).toBe(true);
    const x = fault(v.translate(RID, 7, 0x4000_0000n, { kind: "exec", priv: true }));
    expect(x.reason).toBe(VTD_FR.SM_EXECUTE);
    expect(x.record).toMatchObject({ exe: true, priv: true, pasid: 7 });
  });

  it("XD with NXE = 0 is a reserved bit (0x72); memory errors 0x73 (root) / 0x70", () => {
    const { rig, fs } = fsRig(4);
    setXd(rig, 0x4000_0000n);
    expect(fault(rig.vtd.translate(RID, 7, 0x4000_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_FS_RSVD);
    rig.mem.addAbortRange(fs.root, 0x1000n);
    expect(fault(rig.vtd.translate(RID, 7, 0x4000_1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_FS_ROOT_ACCESS);
    rig.mem.clearAbortRanges();
    const w = walkStage(rig.mem, fs, 0x4000_1000n, { kind: "read", privileged: false, probe: true }, { recordReads: true });
    if (!w.ok) throw new Error("walk");
    rig.mem.addAbortRange(w.descReads?.[2] as bigint, 8n);
    expect(fault(rig.vtd.translate(RID, 7, 0x4000_1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_FS_ACCESS);
  });

  it("PASID-entry request checks: SRE = 0 → 0x5D, ERE = 0 → 0x5C", () => {
    const { rig } = fsRig(4);
    const s = fault(rig.vtd.translate(RID, 7, 0x4000_0000n, { kind: "read", priv: true }));
    expect(s.reason).toBe(VTD_FR.SM_PTE_SRE);
    expect(s.record.priv).toBe(true);
    expect(fault(rig.vtd.translate(RID, 7, 0x4000_0000n, { kind: "exec" })).reason).toBe(VTD_FR.SM_PTE_ERE);
  });

  it("output in the interrupt range → 0x87", () => {
    const { rig, fs } = fsRig(4);
    rig.map(fs, 0x4100_0000n, 0xfee0_0000n, 0x1000n, { perms: USER_RW }, rig.mem, rig.alloc, 12);
    expect(fault(rig.vtd.translate(RID, 7, 0x4100_0000n, { kind: "write" })).reason).toBe(VTD_FR.SM_INTERRUPT_ADDR);
  });
});

function setXd(rig: VtdRig, va: bigint): boolean {
  // Find the FS leaf via explain and set bit 63.
  const { explain } = rig.vtd.explain(RID, 7, va, { kind: "read" });
  const leaf = explain.steps.filter((s) => s.updated === undefined).at(-1);
  if (!leaf) return false;
  rig.mem.write64(leaf.descAddr, leaf.value | (1n << 63n));
  rig.submit(piotlbAll(3, 7));
  return true;
}

function piotlbAll(did: number, pasid: number): bigint[] {
  return [0x6n | (2n << 4n) | (BigInt(did) << 16n) | (BigInt(pasid) << 32n), 0n, 0n, 0n];
}

describe("second-stage translation (PGTT = 010b)", () => {
  function ssRig(aw: number) {
    const rig = new VtdRig();
    const ss = rig.secondStage(aw);
    rig.map(ss, 0x1_0000_0000n, 0x2_0000_0000n, 0x40_0000n, { perms: PERM_RW });
    rig.map(ss, 0x3000_0000n, 0x3000_0000n, 0x1000n, { perms: PERM_R }, rig.mem, rig.alloc, 12);
    rig.map(ss, 0x3000_1000n, 0x3000_1000n, 0x1000n, { perms: PERM_W }, rig.mem, rig.alloc, 12);
    rig.tables.setContext(RID, { RID_PASID: 0 });
    rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.SECOND_STAGE, AW: aw, SSPTPTR: ss.root, DID: 5 });
    return { rig, ss };
  }
  it("4-level with 2 MiB superpages; not PASID-tagged", () => {
    const { rig } = ssRig(2);
    rig.vtd.recordWalkReads = true;
    const r = rig.vtd.translate(RID, undefined, 0x1_0023_4567n, { kind: "write" });
    expect(r).toMatchObject({ ok: true, output: 0x2_0023_4567n, pageShift: 21, did: 5 });
    if (r.ok) expect(r.walk?.descReads?.length).toBe(3);
    const entries = [...(rig.vtd.caches as import("./common.js").VtdCacheSet).iotlbCache.entries()];
    expect(entries.map((e) => [e.s1Tag, e.s2Tag, e.pageShift])).toEqual([[-1, 5, 21]]);
  });
  it("3-level (AW = 1)", () => {
    const { rig } = ssRig(1);
    rig.vtd.recordWalkReads = true;
    const r = rig.vtd.translate(RID, undefined, 0x1_0000_0008n, { kind: "read" });
    expect(r).toMatchObject({ ok: true, output: 0x2_0000_0008n });
    if (r.ok) expect(r.walk?.descReads?.length).toBe(2);
    expect(fault(rig.vtd.translate(RID, undefined, 1n << 40n, { kind: "read" })).reason).toBe(VTD_FR.SM_INPUT_BEYOND_MAX);
  });
  it("faults 0x79 / 0x85 / 0x86 / 0x7A / 0x7B / 0x78 / 0x84", () => {
    const { rig, ss } = ssRig(2);
    const v = rig.vtd;
    expect(fault(v.translate(RID, undefined, 0x5000_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_SS_NOT_PRESENT);
    const w = fault(v.translate(RID, undefined, 0x3000_0000n, { kind: "write" }));
    expect(w.reason).toBe(VTD_FR.SM_WRITE);
    expect(w.record).toEqual({ reason: 0x85, sid: RID, addr: 0x3000_0000n, priv: false, exe: false, type: FAULT_REQ_TYPE.WRITE, at: 0 });
    expect(fault(v.translate(RID, undefined, 0x3000_1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_READ);
    // PS = 1 on the PDE turns it into a 2 MiB page whose address (a 4 KiB table) is misaligned: reserved bits.
    const leaf = walkStage(rig.mem, ss, 0x3000_0000n, { kind: "read", privileged: true, probe: true }, { recordReads: true });
    if (!leaf.ok || !leaf.s2) throw new Error("walk");
    const pde = leaf.descReads?.[2] as bigint;
    const pdeVal = rig.mem.read64(pde);
    if (!pdeVal.ok) throw new Error("read");
    rig.mem.write64(pde, pdeVal.value | (1n << 7n));
    expect(fault(v.translate(RID, undefined, 0x3000_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_SS_RSVD);
    rig.mem.write64(pde, pdeVal.value);
    rig.mem.addAbortRange(ss.root, 0x1000n);
    expect(fault(v.translate(RID, undefined, 0x3000_1000n, { kind: "write" })).reason).toBe(VTD_FR.SM_SSPTPTR_INV);
    rig.mem.clearAbortRanges();
    rig.mem.addAbortRange(leaf.descReads?.[1] as bigint, 8n);
    expect(fault(v.translate(RID, undefined, 0x3000_1000n, { kind: "write" })).reason).toBe(VTD_FR.SM_SS_ACCESS);
  });
  it("output beyond HAW → 0x84", () => {
    const rig = new VtdRig({ caps: { haw: 39 } });
    const ss = rig.secondStage(1, 39);
    // Hand-write a leaf whose address is above 2^39 (map() refuses it).
    rig.map(ss, 0x1000n, 0x1000n, 0x1000n, { perms: PERM_RW }, rig.mem, rig.alloc, 12);
    const leaf = walkStage(rig.mem, ss, 0x1000n, { kind: "read", privileged: true, probe: true });
    if (!leaf.ok || !leaf.s2) throw new Error("walk");
    rig.mem.write64(leaf.s2.descAddr, (1n << 40n) | 3n);
    rig.tables.setContext(RID);
    rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.SECOND_STAGE, AW: 1, SSPTPTR: ss.root, DID: 5 });
    expect(fault(rig.vtd.translate(RID, undefined, 0x1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_OUTPUT_BEYOND_MAX);
  });
});

describe("nested translation (PGTT = 011b)", () => {
  it("translates VA → GPA → HPA with 24 reads cold, then hits the IOTLB", () => {
    const { rig } = nestedRig();
    rig.vtd.recordWalkReads = true;
    const r = rig.vtd.translate(RID, 9, 0x7000_0123n, { kind: "write" });
    expect(r).toMatchObject({ ok: true, output: RIG.GUEST_BASE + 0x0020_0123n, did: 20, pasid: 9, pgtt: PGTT.NESTED, pageShift: 12 });
    if (r.ok) {
      expect(r.walk?.ipa).toBe(0x0020_0123n);
      // 4 FS reads + 5 SS walks of 4 reads; the cold walk also writes back A/D
      // bits whose SS write checks are extra reads.
      expect(r.walk?.descReads?.length).toBeGreaterThanOrEqual(24);
    }
    const r2 = rig.vtd.translate(RID, 9, 0x7000_0fffn, { kind: "write" });
    expect(r2).toMatchObject({ ok: true, output: RIG.GUEST_BASE + 0x0020_0fffn, via: "iotlb" });
  });

  it("read-only cold walk: exactly (4+1)(4+1)-1 = 24 descriptor reads", () => {
    const { rig, g, fs } = nestedRig();
    // Pre-set A bits so no write-back happens: map with accessed leaves and walk once to set table A bits.
    rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "read" });
    rig.submit(piotlbAll(20, 9));
    rig.vtd.recordWalkReads = true;
    const r = rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "read" });
    expect(r.ok && r.walk?.descReads?.length).toBe(24);
    expect(fs.root).toBeLessThan(0x100_0000n);
    expect(g.mem.offset).toBe(RIG.GUEST_BASE);
  });

  it("FS structure faults through the second stage: 0x74 / 0x75 / 0x76 / 0x77", () => {
    {
      // FS root GPA beyond the 48-bit second-stage width.
      const { rig, ss } = nestedRig();
      rig.tables.setPasidEntry(RID, 9, { PGTT: PGTT.NESTED, AW: 2, SSPTPTR: ss.root, FSPTPTR: 1n << 50n, DID: 20 });
      const f = fault(rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "read" }));
      expect(f.reason).toBe(VTD_FR.SM_NESTED_FS_ADDR);
      expect(f.record).toMatchObject({ sid: RID, pasid: 9, addr: 0x7000_0000n });
    }
    {
      // FS root page mapped write-only in the SS → 0x75.
      const { rig, ss, fs } = nestedRig();
      setSsLeaf(rig, ss, fs.root, PERM_W);
      expect(fault(rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_NESTED_FS_ROOT_READ);
    }
    {
      // A lower FS table page write-only in the SS → 0x76.
      const { rig, ss } = nestedRig();
      const { explain } = rig.vtd.explain(RID, 9, 0x7000_0000n, { kind: "read" });
      const pdIpa = explain.steps.find((s) => s.stage === 1 && s.level === 2)?.descIpa as bigint;
      rig.submit(piotlbAll(20, 9));
      setSsLeaf(rig, ss, pdIpa, PERM_W);
      expect(fault(rig.vtd.translate(RID, 9, 0x7000_1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_NESTED_FS_READ);
    }
    {
      // FS leaf table page read-only in the SS: the D-bit update needs write → 0x77.
      const { rig, ss, fs, g } = nestedRig();
      // A writable-clean leaf (D = 0): the first write must set D in guest memory.
      rig.map(fs, 0x7000_2000n, 0x0020_2000n, 0x1000n, { perms: USER_RW, dirtyTracking: true }, g.mem, g.alloc, 12);
      const { explain } = rig.vtd.explain(RID, 9, 0x7000_2000n, { kind: "read" });
      const pteIpa = explain.steps.find((s) => s.stage === 1 && s.level === 3)?.descIpa as bigint;
      setSsLeaf(rig, ss, pteIpa, PERM_R);
      rig.submit(piotlbAll(20, 9));
      expect(ok(rig.vtd.translate(RID, 9, 0x7000_2000n, { kind: "read" }))).toBe(RIG.GUEST_BASE + 0x0020_2000n);
      expect(fault(rig.vtd.translate(RID, 9, 0x7000_2000n, { kind: "write" })).reason).toBe(VTD_FR.SM_NESTED_FS_WRITE);
    }
  });

  it("final GPA faults: 0x79 (not mapped), 0x85 / 0x86 (SS permission)", () => {
    const { rig, ss, fs, g } = nestedRig();
    rig.map(fs, 0x7100_0000n, 0x00ff_0000n + 0x0100_0000n, 0x1000n, { perms: USER_RW }, g.mem, g.alloc, 12);
    expect(fault(rig.vtd.translate(RID, 9, 0x7100_0000n, { kind: "read" })).reason).toBe(VTD_FR.SM_SS_NOT_PRESENT);
    setSsLeaf(rig, ss, 0x0020_0000n, PERM_R);
    expect(fault(rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "write" })).reason).toBe(VTD_FR.SM_WRITE);
    setSsLeaf(rig, ss, 0x0020_1000n, PERM_W);
    expect(fault(rig.vtd.translate(RID, 9, 0x7000_1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_READ);
  });

  it("explain lists every structure and descriptor read of both stages", () => {
    const { rig } = nestedRig();
    rig.vtd.translate(RID, 9, 0x7000_0000n, { kind: "read" });
    rig.submit(piotlbAll(20, 9));
    const { result, explain } = rig.vtd.explain(RID, 9, 0x7000_0000n, { kind: "read" });
    expect(result.ok).toBe(true);
    expect(explain.structures.map((s) => s.what)).toEqual(["root-entry", "context-entry", "pasid-dir-entry", "pasid-entry"]);
    expect(explain.steps.length).toBe(24);
    expect(explain.steps.filter((s) => s.stage === 1).length).toBe(4);
    expect(explain.steps.filter((s) => s.purpose === "table").length).toBe(16);
    expect(explain.steps.filter((s) => s.purpose === "output").length).toBe(4);
    expect(explain.config?.mode).toBe("nested");
  });
});

describe("pass-through (PGTT = 100b) and disabled translation", () => {
  it("output = input; beyond HAW → 0x83", () => {
    const rig = new VtdRig({ caps: { haw: 46 } });
    rig.tables.setContext(RID);
    rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.PASS_THROUGH, DID: 1 });
    expect(ok(rig.vtd.translate(RID, undefined, 0x1234_5678n, { kind: "write" }))).toBe(0x1234_5678n);
    expect(fault(rig.vtd.translate(RID, undefined, 1n << 47n, { kind: "read" })).reason).toBe(VTD_FR.SM_INPUT_BEYOND_MAX);
  });
  it("GSTS.TES = 0: DMA is not remapped", () => {
    const rig = new VtdRig({ noTranslate: true });
    expect(rig.vtd.translate(RID, undefined, 0x1234n, { kind: "read" })).toMatchObject({ ok: true, output: 0x1234n, via: "bypass" });
  });
});

describe("root / context / PASID structure faults", () => {
  it("each reason, recorded in FRCD with FSTS.PPF/FRI and a fault event", () => {
    const events: number[] = [];
    const rig = new VtdRig({ ports: { faultEvent: (m) => events.push(m.data) } });
    const v = rig.vtd;
    v.writeReg(VTD_REG.FEDATA, 0x55n, 4);
    v.writeReg(VTD_REG.FECTL, 0n, 4); // unmask
    expect(fault(v.translate(0x0500, 1, 0x1000n, { kind: "read" })).reason).toBe(VTD_FR.SM_ROOT_P);
    expect(events).toEqual([0x55]);
    const fsts = v.readReg(VTD_REG.FSTS, 4);
    expect(fsts & 2n).toBe(2n); // PPF
    expect((fsts >> 8n) & 0xffn).toBe(0n); // FRI
    const frcd = [v.readReg(0x400), v.readReg(0x408)];
    expect(decodeFaultRecord(frcd)).toEqual({ reason: 0x39, sid: 0x0500, addr: 0x1000n, pasid: 1, priv: false, exe: false, type: 1, at: 0, f: true });
    // Software clears F (RW1C); PPF follows.
    v.writeReg(0x408, 1n << 63n);
    expect(v.readReg(VTD_REG.FSTS, 4) & 2n).toBe(0n);

    rig.tables.setContext(RID, { P: 0 });
    expect(fault(v.translate(RID, undefined, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_CTX_P);
    rig.submit([0x1n | (1n << 4n), 0n, 0n, 0n]); // context-cache global
    rig.tables.setContext(RID, { P: 1, PASIDE: 0 });
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_CTX_PASIDE);
    rig.submit([0x1n | (1n << 4n), 0n, 0n, 0n]);
    rig.tables.setContext(RID, { P: 1, PASIDE: 1, PDTS: 0 });
    expect(fault(v.translate(RID, 0x2000, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_CTX_PDTS);
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" }, { translated: true })).reason).toBe(VTD_FR.SM_CTX_DTE);
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_PDE_P);
    rig.tables.pasidEntryAddr(RID, 4);
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_PTE_P);
    rig.tables.setPasidEntry(RID, 4, { PGTT: 6 });
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_PTE_INV);
    rig.tables.setPasidEntry(RID, 4, { PGTT: PGTT.PASS_THROUGH, RSVD2: 1 });
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_PTE_RSVD);
    rig.mem.addAbortRange(rig.tables.rta, 0x1000n);
    rig.submit([0x1n | (1n << 4n), 0n, 0n, 0n]);
    expect(fault(v.translate(RID, 4, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_ROOT_ACCESS);
    expect(v.counters.faults).toMatchObject({ SM_ROOT_P: 1, SM_CTX_P: 1, SM_CTX_PASIDE: 1, SM_CTX_PDTS: 1, SM_CTX_DTE: 1, SM_PDE_P: 1, SM_PTE_P: 1, SM_PTE_INV: 1, SM_PTE_RSVD: 1, SM_ROOT_ACCESS: 1 });
  });

  it("TTM = legacy: requests with PASID → 0x31", () => {
    const rig = new VtdRig();
    rig.vtd.writeReg(VTD_REG.RTADDR, rig.tables.rta);
    rig.vtd.writeReg(VTD_REG.GCMD, (1n << 30n) | (1n << 31n) | (1n << 26n), 4);
    expect(fault(rig.vtd.translate(RID, 3, 0n, { kind: "read" })).reason).toBe(VTD_FR.SM_TTM_LEGACY_PASID);
  });

  it("FPD suppresses recording at the context, directory and PASID-entry level", () => {
    const rig = new VtdRig();
    rig.tables.setContext(RID, { FPD: 1 });
    const f = fault(rig.vtd.translate(RID, 3, 0n, { kind: "read" }));
    expect(f.reason).toBe(VTD_FR.SM_PDE_P);
    expect(f.recorded).toBe("suppressed");
    const rig2 = new VtdRig();
    rig2.tables.setPasidEntry(RID, 3, { FPD: 1, PGTT: PGTT.SECOND_STAGE, AW: 2, SSPTPTR: rig2.secondStage(2).root, DID: 1 });
    const f2 = fault(rig2.vtd.translate(RID, 3, 0x1000n, { kind: "read" }));
    expect(f2).toMatchObject({ reason: VTD_FR.SM_SS_NOT_PRESENT, recorded: "suppressed" });
    expect(rig2.vtd.readReg(VTD_REG.FSTS, 4)).toBe(0n);
    expect(rig2.vtd.counters.faultsSuppressed).toBe(1);
  });

  it("fault recording overflow sets PFO; nothing is recorded until it is cleared", () => {
    const rig = new VtdRig({ caps: { nfr: 2 } });
    const v = rig.vtd;
    expect(fault(v.translate(0x0100, undefined, 0x1000n, { kind: "read" })).recorded).toBe("recorded");
    expect(fault(v.translate(0x0200, undefined, 0x2000n, { kind: "write" })).recorded).toBe("recorded");
    expect(fault(v.translate(0x0300, undefined, 0x3000n, { kind: "read" })).recorded).toBe("overflow");
    expect(v.readReg(VTD_REG.FSTS, 4) & 3n).toBe(3n); // PFO | PPF
    expect(decodeFaultRecord([v.readReg(0x410), v.readReg(0x418)])).toMatchObject({ sid: 0x0200, type: FAULT_REQ_TYPE.WRITE, addr: 0x2000n });
    // Clear both records and PFO.
    v.writeReg(0x408, 1n << 63n);
    v.writeReg(0x418, 1n << 63n);
    v.writeReg(VTD_REG.FSTS, 1n, 4);
    expect(v.readReg(VTD_REG.FSTS, 4)).toBe(0n);
    expect(fault(v.translate(0x0400, undefined, 0x4000n, { kind: "read" })).recorded).toBe("recorded");
    expect(v.readReg(VTD_REG.FSTS, 4)).toBe(2n); // PPF, FRI = 0 (wrapped)
    expect(v.counters.faultOverflows).toBe(1);
  });
});

describe("ATS translation requests", () => {
  it("returns a completion shaped like PCIe (size via S, R/W/Exe/Priv)", () => {
    const { rig } = fsRig(4);
    rig.tables.setContext(RID, { DTE: 1 });
    rig.submit([0x1n | (1n << 4n), 0n, 0n, 0n]);
    const c = rig.vtd.atsTranslate(RID, 7, 0x4000_0123n);
    expect(c).toEqual({ status: "SC", translatedAddr: 0x8000_0000n, s: false, size: 0x1000n, r: true, w: true, exe: false, priv: false, global: false, n: false, u: false });
    const ro = rig.vtd.atsTranslate(RID, 7, 0x4001_0000n);
    expect(ro).toMatchObject({ r: true, w: false });
    const miss = rig.vtd.atsTranslate(RID, 7, 0x5000_0000n);
    expect(miss).toMatchObject({ status: "SC", r: false, w: false, reason: VTD_FR.SM_FS_P });
    // Walk faults are not recorded for translation requests.
    expect(rig.vtd.readReg(VTD_REG.FSTS, 4)).toBe(0n);
    // Translated request with DTE = 1 passes through.
    expect(rig.vtd.translate(RID, 7, 0x8000_0000n, { kind: "write" }, { translated: true })).toMatchObject({ ok: true, output: 0x8000_0000n });
  });
  it("2 MiB mapping → S = 1 completion; DTE = 0 → UR with 0x44 recorded", () => {
    const rig = new VtdRig();
    const ss = rig.secondStage(2);
    rig.map(ss, 0x20_0000n, 0x4020_0000n, 0x20_0000n, { perms: PERM_RW });
    rig.tables.setContext(RID, { DTE: 1 });
    rig.tables.setPasidEntry(RID, 0, { PGTT: PGTT.SECOND_STAGE, AW: 2, SSPTPTR: ss.root, DID: 2 });
    expect(rig.vtd.atsTranslate(RID, undefined, 0x20_1000n)).toMatchObject({ status: "SC", translatedAddr: 0x402f_f000n, s: true, size: 0x20_0000n, r: true, w: true });
    rig.tables.setContext(0x0320, { DTE: 0 });
    const ur = rig.vtd.atsTranslate(0x0320, undefined, 0x1000n);
    expect(ur).toMatchObject({ status: "UR", reason: VTD_FR.SM_CTX_DTE });
    expect(decodeFaultRecord([rig.vtd.readReg(0x400), rig.vtd.readReg(0x408)])).toMatchObject({ reason: 0x44, sid: 0x0320, at: 1 });
  });
});

describe("ATS and dirty state", () => {
  it("a writable completion without NW sets the FS D bit; with NW it does not", () => {
    const rig = new VtdRig();
    const fs = rig.firstStage(4);
    rig.map(fs, 0x4000_0000n, 0x8000_0000n, 0x2000n, { perms: USER_RW, dirtyTracking: true }, rig.mem, rig.alloc, 12);
    rig.tables.setContext(RID, { DTE: 1 });
    rig.tables.setPasidEntry(RID, 1, { PGTT: PGTT.FIRST_STAGE, FSPTPTR: fs.root, DID: 3 });
    const leafOf = (va: bigint) => {
      const w = walkStage(rig.mem, fs, va, { kind: "read", privileged: false, probe: true });
      if (!w.ok || !w.s1) throw new Error("walk");
      return w.s1.desc;
    };
    expect(leafOf(0x4000_0000n) & (1n << 6n)).toBe(0n);
    expect(rig.vtd.atsTranslate(RID, 1, 0x4000_0000n, { noWrite: true })).toMatchObject({ r: true, w: true });
    expect(leafOf(0x4000_0000n) & (1n << 6n)).toBe(0n);
    expect(rig.vtd.atsTranslate(RID, 1, 0x4000_1000n)).toMatchObject({ r: true, w: true, translatedAddr: 0x8000_1000n });
    expect(leafOf(0x4000_1000n) & (1n << 6n)).toBe(1n << 6n);
  });
});
