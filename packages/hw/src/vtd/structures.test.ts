import { describe, expect, it } from "vitest";
import { get, pack, unpack } from "../bits.js";
import { SimplePageAllocator } from "../format/map.js";
import { SparseMemory } from "../memory.js";
import {
  decodePasidDirEntry,
  decodeSmContextEntry,
  decodeSmPasidEntry,
  decodeSmRootEntry,
  PGTT,
  SM_PASID_ENTRY,
  type VtdEntryLimits,
} from "./entries.js";
import { VTD_FR, vtdFaultReasonName } from "./fault-reasons.js";
import { decodeFaultRecord, encodeFaultRecord, FAULT_REQ_TYPE, FaultRecorder, FRCD_FIELDS } from "./fault-record.js";
import {
  CC_INV_DESC,
  decodeInvDesc,
  encodeInvDesc,
  INV_DESC_TYPE,
  IOTLB_INV_DESC,
  invDescType,
  PDEVTLB_INV_DESC,
  PGRP_RESP_DESC,
  PIOTLB_INV_DESC,
  WAIT_INV_DESC,
} from "./invdesc.js";
import { fetchContextEntry, fetchPasidEntry } from "./lookup.js";
import { decodePageRequest, encodePageRequest, isStopMarker, PAGE_REQ_DESC } from "./prq.js";
import {
  CAP_FIELDS,
  capRegister,
  DEFAULT_VTD_CAPABILITIES,
  ECAP_FIELDS,
  ecapRegister,
  hwInfoVtd,
  hwInfoVtdBytes,
  supportedAw,
  VTD_IQEI,
} from "./regs.js";
import { encodeSmContextEntry, encodeSmPasidEntry, encodeSmRootEntry, VtdTableBuilder } from "./tables.js";

const LIM: VtdEntryLimits = {
  haw: 52,
  aw: [1, 2, 3],
  pasidBits: 20,
  fs5lp: true,
  nest: true,
  ers: true,
  srs: true,
  eafs: true,
  ssads: true,
  rps: true,
  rprivs: false,
  dt: true,
  prs: true,
};

describe("capability registers", () => {
  const cap = capRegister(DEFAULT_VTD_CAPABILITIES);
  const ecap = ecapRegister(DEFAULT_VTD_CAPABILITIES);
  it("advertises the features at the spec's bit positions", () => {
    expect(ecap & (1n << 43n)).toBe(1n << 43n); // SMTS
    expect(ecap & (1n << 26n)).toBe(1n << 26n); // NEST
    expect(ecap & (1n << 40n)).toBe(1n << 40n); // PASID
    expect(get([ecap], ECAP_FIELDS.PSS)).toBe(19n); // 20-bit PASIDs
    expect(ecap & (1n << 29n)).toBe(1n << 29n); // PRS
    expect(ecap & (1n << 2n)).toBe(1n << 2n); // DT
    expect(ecap & (1n << 1n)).toBe(1n << 1n); // QI
    expect(ecap & (1n << 46n)).toBe(1n << 46n); // SSTS (SLTS)
    expect(ecap & (1n << 47n)).toBe(1n << 47n); // FSTS (FLTS)
    expect(ecap & (1n << 33n)).toBe(1n << 33n); // NWFS
    expect(ecap & (1n << 31n)).toBe(1n << 31n); // SRS
    expect(cap & (1n << 60n)).toBe(1n << 60n); // FL5LP
    expect(cap & (1n << 56n)).toBe(1n << 56n); // FL1GP
    expect((cap >> 34n) & 0xfn).toBe(3n); // SLLPS: 2M + 1G
    expect((cap >> 8n) & 0x1fn).toBe(0b1110n); // SAGAW: 3-, 4-, 5-level
    expect((cap >> 16n) & 0x3fn).toBe(51n); // MGAW = 52 - 1
    expect((cap >> 40n) & 0xffn).toBe(7n); // NFR = 8 - 1
    expect(((cap >> 24n) & 0x3ffn) * 16n).toBe(0x400n); // FRO
    expect(((ecap >> 8n) & 0x3ffn) * 16n).toBe(0x500n); // IRO
    expect(cap & (1n << 39n)).toBe(1n << 39n); // PSI
    expect(get([cap], CAP_FIELDS.MAMV)).toBe(18n);
    expect(supportedAw(cap)).toEqual([1, 2, 3]);
  });
  it("exact values for the default unit", () => {
    expect(cap).toBe(0x91d2_078c_4073_0e06n);
    expect(ecap).toBe(0x0013_ef9e_e400_50c7n);
  });
  it("drops features that are turned off", () => {
    const c = { ...DEFAULT_VTD_CAPABILITIES, nest: false, fs5lp: false, prs: false, sagawLevels: [4] as (3 | 4 | 5)[] };
    expect(capRegister(c) & (1n << 60n)).toBe(0n);
    expect(ecapRegister(c) & (1n << 26n)).toBe(0n);
    expect(ecapRegister(c) & (1n << 29n)).toBe(0n);
    expect(supportedAw(capRegister(c))).toEqual([2]);
  });
  it("iommu_hw_info_vtd carries cap and ecap in the kernel layout", () => {
    const b = hwInfoVtdBytes(hwInfoVtd(cap, ecap, 1));
    const v = new DataView(b.buffer);
    expect(b.length).toBe(24);
    expect(v.getUint32(0, true)).toBe(1);
    expect(v.getUint32(4, true)).toBe(0);
    expect(v.getBigUint64(8, true)).toBe(cap);
    expect(v.getBigUint64(16, true)).toBe(ecap);
  });
});

describe("root and context entries", () => {
  it("root entry halves select the context table by devfn", () => {
    const w = encodeSmRootEntry({ lctp: 0x5000n, uctp: 0x9000n });
    expect(w).toEqual([0x5001n, 0x9001n]);
    expect(decodeSmRootEntry(w, 0x10, 52)).toEqual({ ok: true, entry: { present: true, ctp: 0x5000n } });
    expect(decodeSmRootEntry(w, 0x90, 52)).toEqual({ ok: true, entry: { present: true, ctp: 0x9000n } });
    expect(decodeSmRootEntry(encodeSmRootEntry({ lctp: 0x5000n }), 0x90, 52)).toEqual({ ok: false, reason: VTD_FR.SM_ROOT_P, fpd: false });
    expect(decodeSmRootEntry([0x5001n | 0x2n, 0n], 0, 52)).toMatchObject({ ok: false, reason: VTD_FR.SM_ROOT_RSVD });
  });

  it("context entry fields and validation", () => {
    const w = encodeSmContextEntry({ P: 1, FPD: 1, DTE: 1, PASIDE: 1, PRE: 1, PDTS: 3, PASIDDIRPTR: 0x123000n, RID_PASID: 5 });
    expect(w[0]).toBe(0x123000n | (3n << 9n) | 0x1fn);
    expect(w[1]).toBe(5n);
    const d = decodeSmContextEntry(w, LIM);
    expect(d).toMatchObject({ ok: true, entry: { fpd: true, dte: true, paside: true, pre: true, pdts: 3, pasidDirPtr: 0x123000n, ridPasid: 5 } });
    expect(decodeSmContextEntry(encodeSmContextEntry({ P: 0 }), LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_P });
    expect(decodeSmContextEntry([(w[0] as bigint) | (1n << 5n), 0n, 0n, 0n], LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_RSVD });
    expect(decodeSmContextEntry([w[0] as bigint, 0n, 1n, 0n], LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_RSVD });
    // RID_PRIV is reserved without ECAP.RPRIVS; RID_PASID non-zero needs ECAP.RPS.
    expect(decodeSmContextEntry(encodeSmContextEntry({ P: 1, RID_PRIV: 1 }), LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_RSVD });
    expect(decodeSmContextEntry(encodeSmContextEntry({ P: 1, RID_PASID: 1 }), { ...LIM, rps: false })).toMatchObject({
      ok: false,
      reason: VTD_FR.SM_CTX_RID_PASID,
    });
    // DTE / PRE set on a unit without device-TLB / page requests: reserved.
    expect(decodeSmContextEntry(encodeSmContextEntry({ P: 1, DTE: 1 }), { ...LIM, dt: false })).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_RSVD });
  });

  it("PASID directory entry", () => {
    expect(decodePasidDirEntry(0x7000n | 1n, 52, false)).toEqual({ ok: true, entry: { fpd: false, table: 0x7000n } });
    expect(decodePasidDirEntry(0x7000n | 3n, 52, false)).toEqual({ ok: true, entry: { fpd: true, table: 0x7000n } });
    expect(decodePasidDirEntry(0x7000n, 52, true)).toEqual({ ok: false, reason: VTD_FR.SM_PDE_P, fpd: true });
    expect(decodePasidDirEntry(0x7000n | 1n | 4n, 52, false)).toMatchObject({ ok: false, reason: VTD_FR.SM_PDE_RSVD });
  });
});

describe("PASID table entry", () => {
  const nested = encodeSmPasidEntry({
    P: 1,
    AW: 2,
    PGTT: PGTT.NESTED,
    SSADE: 1,
    SSPTPTR: 0x40000n,
    DID: 42,
    PWSNP: 1,
    PGSNP: 1,
    SRE: 1,
    FLPM: 1,
    WPE: 1,
    EAFE: 1,
    FSPTPTR: 0x8000_0000n,
  });
  it("field positions match the spec (and Linux pasid.h setters)", () => {
    expect(nested[0]).toBe(0x40000n | (1n << 9n) | (3n << 6n) | (2n << 2n) | 1n);
    expect(nested[1]).toBe(42n | (1n << 23n) | (1n << 24n));
    expect(nested[2]).toBe(0x8000_0000n | (1n << 7n) | (1n << 4n) | (1n << 2n) | 1n);
    expect(nested.slice(3)).toEqual([0n, 0n, 0n, 0n, 0n]);
    const f = unpack(SM_PASID_ENTRY, nested);
    expect(f.PGTT).toBe(3n);
    expect(f.DID).toBe(42n);
  });
  it("decodes every field", () => {
    expect(decodeSmPasidEntry(nested, LIM, false)).toMatchObject({
      ok: true,
      entry: { pgtt: PGTT.NESTED, aw: 2, did: 42, ssade: true, ssptptr: 0x40000n, fsptptr: 0x8000_0000n, sre: true, wpe: true, eafe: true, flpm: 1, pwsnp: true, pgsnp: true, fpd: false },
    });
  });
  it("validation produces the scalable-mode reasons", () => {
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 0 }), LIM, true)).toEqual({ ok: false, reason: VTD_FR.SM_PTE_P, fpd: true });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: 0 }), LIM, false)).toMatchObject({ reason: VTD_FR.SM_PTE_INV });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: 5 }), LIM, false)).toMatchObject({ reason: VTD_FR.SM_PTE_INV });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: PGTT.SECOND_STAGE, AW: 4, SSPTPTR: 0x1000n }), LIM, false)).toMatchObject({
      reason: VTD_FR.SM_PTE_INV,
    });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: PGTT.NESTED, AW: 2 }), { ...LIM, nest: false }, false)).toMatchObject({
      reason: VTD_FR.SM_PTE_INV,
    });
    const rsvd = [...nested];
    rsvd[3] = 1n;
    expect(decodeSmPasidEntry(rsvd, LIM, false)).toMatchObject({ reason: VTD_FR.SM_PTE_RSVD });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: PGTT.FIRST_STAGE, FLPM: 1 }), { ...LIM, fs5lp: false }, false)).toMatchObject({
      reason: VTD_FR.SM_PTE_RSVD,
    });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: PGTT.FIRST_STAGE, FLPM: 2 }), LIM, false)).toMatchObject({
      reason: VTD_FR.SM_PTE_RSVD,
    });
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, PGTT: PGTT.SECOND_STAGE, AW: 2, SSPTPTR: 1n << 52n }), { ...LIM, haw: 46 }, false)).toMatchObject({
      reason: VTD_FR.SM_SSPTPTR_INV,
    });
    // FPD on the entry itself suppresses its own validation faults too.
    expect(decodeSmPasidEntry(encodeSmPasidEntry({ P: 1, FPD: 1, PGTT: 7 }), LIM, false)).toEqual({ ok: false, reason: VTD_FR.SM_PTE_INV, fpd: true });
  });
});

describe("structure fetch", () => {
  it("walks root → context → PASID dir → PASID entry and reports each read", () => {
    const mem = new SparseMemory(52);
    const t = new VtdTableBuilder(mem, new SimplePageAllocator(mem, 0x100000n, 0x1000000n));
    t.setContext(0x0310, { RID_PASID: 0 });
    const peAddr = t.setPasidEntry(0x0310, 0x1234, { PGTT: PGTT.SECOND_STAGE, AW: 2, SSPTPTR: 0x7000n, DID: 9 });
    const reads: string[] = [];
    const c = fetchContextEntry(mem, t.rta, 0x0310, LIM, (r) => reads.push(`${r.what}@${r.addr.toString(16)}`));
    expect(c.ok).toBe(true);
    if (!c.ok) return;
    const p = fetchPasidEntry(mem, c.ctx, 0x1234, LIM, (r) => reads.push(`${r.what}@${r.addr.toString(16)}`));
    expect(p).toMatchObject({ ok: true, pe: { did: 9, pgtt: PGTT.SECOND_STAGE } });
    expect(reads).toEqual([
      `root-entry@${(t.rta + 3n * 16n).toString(16)}`,
      `context-entry@${t.contextEntryAddr(0x0310).toString(16)}`,
      `pasid-dir-entry@${(c.ctx.pasidDirPtr + BigInt((0x1234 >> 6) * 8)).toString(16)}`,
      `pasid-entry@${peAddr.toString(16)}`,
    ]);
  });
  it("maps each missing or unreadable structure to its reason", () => {
    const mem = new SparseMemory(52);
    const t = new VtdTableBuilder(mem, new SimplePageAllocator(mem, 0x100000n, 0x1000000n));
    expect(fetchContextEntry(mem, t.rta, 0x0100, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_ROOT_P });
    t.setContext(0x0100, { P: 0 });
    expect(fetchContextEntry(mem, t.rta, 0x0100, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_P });
    mem.addAbortRange(t.rta, 0x1000n);
    expect(fetchContextEntry(mem, t.rta, 0x0100, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_ROOT_ACCESS });
    mem.clearAbortRanges();
    mem.addAbortRange(t.contextEntryAddr(0x0100), 32n);
    expect(fetchContextEntry(mem, t.rta, 0x0100, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_CTX_ACCESS });
    mem.clearAbortRanges();
    t.setContext(0x0100, { P: 1, PDTS: 0, FPD: 1 });
    const c = fetchContextEntry(mem, t.rta, 0x0100, LIM);
    if (!c.ok) throw new Error("context");
    expect(fetchPasidEntry(mem, c.ctx, 128 * 64, LIM)).toEqual({ ok: false, reason: VTD_FR.SM_CTX_PDTS, fpd: true });
    expect(fetchPasidEntry(mem, c.ctx, 5, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_PDE_P, fpd: true });
    const peAddr = t.pasidEntryAddr(0x0100, 5);
    expect(fetchPasidEntry(mem, c.ctx, 5, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_PTE_P });
    mem.addAbortRange(peAddr, 64n);
    expect(fetchPasidEntry(mem, c.ctx, 5, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_PTE_ACCESS });
    mem.clearAbortRanges();
    mem.addAbortRange(c.ctx.pasidDirPtr, 8n);
    expect(fetchPasidEntry(mem, c.ctx, 5, LIM)).toMatchObject({ ok: false, reason: VTD_FR.SM_PDE_ACCESS });
  });
});

describe("invalidation descriptors", () => {
  it("type encoding uses qw0[3:0] and qw0[11:9]", () => {
    const d = encodeInvDesc(INV_DESC_TYPE.PAGE_GROUP_RESPONSE, PGRP_RESP_DESC, { RC: 1 });
    expect(invDescType(d)).toBe(9);
    expect(d[0]).toBe(0x9n | (1n << 12n));
    const hi = [(0x10n << 5n) | 0x1n, 0n, 0n, 0n]; // type 0x11
    expect(invDescType(hi)).toBe(0x11);
    expect(decodeInvDesc(hi, true)).toEqual({ ok: false, iqei: VTD_IQEI.INVALID_TYPE });
  });
  it("decodes every type with its fields (Linux QI_* layouts)", () => {
    expect(decodeInvDesc(encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: 3, DID: 7, SID: 0x0310, FM: 0 }), true)).toEqual({
      ok: true,
      desc: { type: "context-cache", g: 3, did: 7, sid: 0x0310, fm: 0 },
    });
    const iotlb = encodeInvDesc(INV_DESC_TYPE.IOTLB, IOTLB_INV_DESC, { G: 3, DID: 5, DR: 1, DW: 1, AM: 2, IH: 1, ADDR: 0x1234n });
    expect(iotlb[0]).toBe(0x2n | (3n << 4n) | (1n << 6n) | (1n << 7n) | (5n << 16n));
    expect(iotlb[1]).toBe((0x1234n << 12n) | (1n << 6n) | 2n);
    expect(decodeInvDesc(iotlb, true)).toEqual({ ok: true, desc: { type: "iotlb", g: 3, did: 5, dr: true, dw: true, am: 2, ih: true, addr: 0x1234000n } });
    expect(decodeInvDesc(encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: 2, DID: 5, PASID: 0xabcde }), true)).toMatchObject({
      ok: true,
      desc: { type: "pasid-iotlb", g: 2, did: 5, pasid: 0xabcde },
    });
    const pdev = encodeInvDesc(INV_DESC_TYPE.PASID_DEVICE_TLB, PDEVTLB_INV_DESC, {
      MIP: 3,
      SID: 0x0310,
      PASID: 17,
      PFSID_LO: 0x5,
      PFSID_HI: 0x123,
      S: 1,
      ADDR: 0x40001n,
    });
    expect(decodeInvDesc(pdev, true)).toEqual({
      ok: true,
      desc: { type: "pasid-device-tlb", sid: 0x0310, pfsid: 0x1235, mip: 3, pasid: 17, global: false, s: true, addr: 0x40001000n },
    });
    const wait = encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, { SW: 1, IF: 1, FN: 1, SDATA: 0xdeadbeef, SADDR: 0x5000n >> 2n });
    expect(decodeInvDesc(wait, true)).toEqual({ ok: true, desc: { type: "wait", if: true, sw: true, fn: true, pd: false, sdata: 0xdeadbeef, saddr: 0x5000n } });
  });
  it("reserved bits and bad granularities are IQE with IQEI 4", () => {
    const cc = encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: 1 });
    expect(decodeInvDesc([cc[0] as bigint, 1n, 0n, 0n], true)).toEqual({ ok: false, iqei: VTD_IQEI.RESERVED_FIELD });
    expect(decodeInvDesc(encodeInvDesc(INV_DESC_TYPE.CONTEXT_CACHE, CC_INV_DESC, { G: 0 }), true)).toEqual({ ok: false, iqei: VTD_IQEI.RESERVED_FIELD });
    expect(decodeInvDesc(encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: 0 }), true)).toEqual({ ok: false, iqei: VTD_IQEI.RESERVED_FIELD });
    const w = encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, { SW: 1 });
    w[3] = 1n;
    expect(decodeInvDesc(w, true)).toEqual({ ok: false, iqei: VTD_IQEI.RESERVED_FIELD });
    // Page group response private data is allowed in qw2/qw3.
    const pg = encodeInvDesc(INV_DESC_TYPE.PAGE_GROUP_RESPONSE, PGRP_RESP_DESC, { PDP: 1, RID: 0x0310, PRGI: 5, LPIG: 1 });
    pg[2] = 0x1111n;
    pg[3] = 0x2222n;
    expect(decodeInvDesc(pg, true)).toMatchObject({ ok: true, desc: { type: "page-group-response", rid: 0x0310, prgi: 5, lpig: true, privateData: [0x1111n, 0x2222n] } });
  });
});

describe("fault records", () => {
  it("encodes the 128-bit record at the documented positions", () => {
    const w = encodeFaultRecord({ reason: 0x76, sid: 0x0310, addr: 0x1234_5000n, pasid: 0x1f, priv: true, exe: false, type: FAULT_REQ_TYPE.READ, at: 0 });
    expect(w[0]).toBe(0x1234_5000n);
    expect(w[1]).toBe((1n << 63n) | (1n << 62n) | (0x1fn << 40n) | (0x76n << 32n) | (1n << 31n) | (1n << 29n) | 0x0310n);
    expect(decodeFaultRecord(w)).toEqual({ reason: 0x76, sid: 0x0310, addr: 0x1234_5000n, pasid: 0x1f, priv: true, exe: false, type: 1, at: 0, f: true });
    const pr = encodeFaultRecord({ reason: 0x47, sid: 1, addr: 0n, priv: false, exe: true, type: FAULT_REQ_TYPE.PAGE_REQUEST, at: 0 });
    expect(get(pr, FRCD_FIELDS.T2)).toBe(1n);
    expect(get(pr, FRCD_FIELDS.T1)).toBe(0n);
    expect(get(pr, FRCD_FIELDS.EXE)).toBe(1n);
    expect(get(pr, FRCD_FIELDS.PP)).toBe(0n);
  });
  it("recorder wraps, overflows into PFO and latches FRI", () => {
    const r = new FaultRecorder(2);
    const rec = (reason: number) => ({ reason: reason as 0x71, sid: 1, addr: 0n, priv: false, exe: false, type: 1, at: 0 });
    expect(r.record(rec(0x71))).toBe("recorded");
    expect(r.fri).toBe(0);
    expect(r.record(rec(0x72))).toBe("recorded");
    expect(r.ppf).toBe(true);
    expect(r.record(rec(0x73))).toBe("overflow");
    expect(r.pfo).toBe(true);
    r.writeHigh(0, 1n << 63n);
    // PFO still set: nothing is recorded until software clears it.
    expect(r.record(rec(0x74))).toBe("overflow");
    r.pfo = false;
    expect(r.record(rec(0x75))).toBe("recorded");
    expect(decodeFaultRecord(r.records[0] as bigint[]).reason).toBe(0x75);
  });
  it("reason names", () => {
    expect(vtdFaultReasonName(0x74)).toBe("SM_NESTED_FS_ADDR");
    expect(vtdFaultReasonName(0x5d)).toBe("SM_PTE_SRE");
    expect(vtdFaultReasonName(0xee)).toBe("0xee");
  });
});

describe("page request descriptors", () => {
  it("round-trips with Linux page_req_dsc positions", () => {
    const req = { rid: 0x0310, pasid: 0x55, addr: 0x7f00_1000n, read: true, write: true, exec: false, priv: true, prgi: 0x1a3, lpig: true };
    const w = encodePageRequest(req);
    expect(w[0]).toBe(0x1n | (1n << 8n) | (0x0310n << 16n) | (0x55n << 32n) | (1n << 53n));
    expect(w[1]).toBe(0x7f00_1000n | (0x1a3n << 3n) | 0b111n);
    expect(decodePageRequest(w)).toEqual(req);
    expect(get(w, PAGE_REQ_DESC.PRGI)).toBe(0x1a3n);
    expect(isStopMarker({ ...req, read: false, write: false })).toBe(true);
    expect(isStopMarker(req)).toBe(false);
  });
});

describe("pack helpers used by the builder", () => {
  it("PASID entry pack is the same as the field table", () => {
    expect(encodeSmPasidEntry({ P: 1, DID: 3 })).toEqual(pack(SM_PASID_ENTRY, 8, { P: 1, DID: 3 }));
  });
});
