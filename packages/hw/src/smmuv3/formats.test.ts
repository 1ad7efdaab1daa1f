// Layout tests for the SMMUv3 field tables: registers, commands, events,
// PRI entries, queue pointer arithmetic. Expected words are written out by
// hand from the spec's bit positions.

import { describe, expect, it } from "vitest";
import { get } from "../bits.js";
import { SparseMemory } from "../memory.js";
import {
  ATC_INV_SIZE_ALL,
  CMD_OP,
  atcInvRange,
  classifyViommuCommand,
  cmd,
  decodeCommand,
  encodeCommand,
  rewriteViommuCommand,
} from "./commands.js";
import { EVT_CLASS, decodeEvent, encodeEvent, isGuestEvent } from "./events.js";
import { decodePriEntry, encodePriEntry, isPriStopMarker } from "./pri.js";
import { qCount, qEmpty, qFull, qInc, qIndex, qWrap, queueGeometry } from "./queue.js";
import { DEFAULT_SMMU_FEATURES, IDR0, IDR1, IDR3, IDR5, buildIdRegisters, oasBits } from "./regs.js";
import { STE, encodeSte } from "./ste.js";
import { CD, encodeCd } from "./cd.js";

describe("ID registers", () => {
  it("advertise the default feature set at the spec's bit positions", () => {
    const id = buildIdRegisters(DEFAULT_SMMU_FEATURES);
    const w0 = [BigInt(id.IDR0)];
    expect(get(w0, IDR0.S1P)).toBe(1n);
    expect(get(w0, IDR0.S2P)).toBe(1n);
    expect(get(w0, IDR0.TTF)).toBe(2n);
    expect(get(w0, IDR0.HTTU)).toBe(2n);
    expect(get(w0, IDR0.ATS)).toBe(1n);
    expect(get(w0, IDR0.PRI)).toBe(1n);
    expect(get(w0, IDR0.ST_LEVEL)).toBe(1n);
    expect(get(w0, IDR0.CD2L)).toBe(1n);
    expect(get(w0, IDR0.ASID16)).toBe(1n);
    expect(get(w0, IDR0.VMID16)).toBe(1n);
    // Raw value check for a few bits: S2P bit0, S1P bit1, TTF=2 at [3:2], HTTU=2 at [7:6].
    expect(id.IDR0 & 0xff).toBe(0b1001_1011);
    expect(get([BigInt(id.IDR1)], IDR1.SSIDSIZE)).toBe(20n);
    expect(get([BigInt(id.IDR1)], IDR1.SIDSIZE)).toBe(16n);
    expect(get([BigInt(id.IDR3)], IDR3.RIL)).toBe(1n);
    expect(id.IDR3 & (1 << 10)).toBe(1 << 10);
    expect(get([BigInt(id.IDR5)], IDR5.OAS)).toBe(5n);
    expect(id.IDR5 & 0x7f).toBe(0x75);
    expect(oasBits(5)).toBe(48);
    expect(oasBits(6)).toBe(52);
  });

  it("drops PRI when ATS is not advertised, and nesting bits when stage 2 is off", () => {
    const id = buildIdRegisters({ ...DEFAULT_SMMU_FEATURES, ats: false, stage2: false });
    const w0 = [BigInt(id.IDR0)];
    expect(get(w0, IDR0.PRI)).toBe(0n);
    expect(get(w0, IDR0.S2P)).toBe(0n);
    expect(get(w0, IDR0.Hyp)).toBe(0n);
    expect(get(w0, IDR0.VMID16)).toBe(0n);
  });
});

describe("STE / CD field tables", () => {
  it("place Config, S1ContextPtr, S2VMID and S2TTB where Linux does", () => {
    const w = encodeSte({ V: 1, Config: 0b111, S1ContextPtr: 0x8000_1040n, S1CDMax: 3, S2VMID: 0x1234, S2TTB: 0x4_0000_0000n });
    // qw0: V | Config<<1 | ptr | S1CDMax<<59
    expect(w[0]).toBe(1n | (7n << 1n) | 0x8000_1040n | (3n << 59n));
    expect(w[2]).toBe(0x1234n);
    expect(w[3]).toBe(0x4_0000_0000n);
    expect(get(w, STE.S2TTB) << 4n).toBe(0x4_0000_0000n);
  });

  it("place CD.V at bit 31, ASID at [63:48] and TTB0 in qw1", () => {
    const w = encodeCd({ V: 1, T0SZ: 16, ASID: 0xbeef, TTB0: 0x1234_5000n, AA64: 1, R: 1, A: 1 });
    expect(w[0]).toBe((1n << 31n) | 16n | (0xbeefn << 48n) | (1n << 41n) | (1n << 45n) | (1n << 46n));
    expect(w[1]).toBe(0x1234_5000n);
    expect(get(w, CD.ASID)).toBe(0xbeefn);
  });
});

describe("commands", () => {
  it("round-trip every command the Linux driver issues", () => {
    const cmds = [
      cmd.cfgiSte(0x1234),
      cmd.cfgiAll(),
      cmd.cfgiCd(7, 5),
      cmd.cfgiCdAll(7),
      cmd.tlbi("TLBI_NH_VA", { VMID: 3, ASID: 9, Addr: 0x7f_0000_3000n, Leaf: true, TG: 1, TTL: 3, NUM: 4, SCALE: 2 }),
      cmd.tlbi("TLBI_S2_IPA", { VMID: 3, Addr: 0x8000_0000n }),
      cmd.tlbi("TLBI_NSNH_ALL"),
      cmd.atcInv(0x10, 0x4000n, 2, 1),
      cmd.priResp(0x10, 0x1ff, 2, 4),
      cmd.resume(0x10, 0xabc, 1),
      cmd.sync(),
    ];
    for (const c of cmds) {
      const r = decodeCommand(encodeCommand(c), DEFAULT_SMMU_FEATURES);
      expect(r).toEqual({ ok: true, cmd: c });
    }
  });

  it("encode TLBI fields at Linux's positions", () => {
    const [w0, w1] = encodeCommand(
      cmd.tlbi("TLBI_NH_VA", { VMID: 3, ASID: 9, Addr: 0x7f_0000_3000n, Leaf: true, TG: 1, TTL: 3, NUM: 4, SCALE: 2 }),
    );
    expect(w0).toBe(0x12n | (4n << 12n) | (2n << 20n) | (3n << 32n) | (9n << 48n));
    expect(w1).toBe(1n | (3n << 8n) | (1n << 10n) | 0x7f_0000_3000n);
  });

  it("reject unknown, EL3 and reserved encodings as CERROR_ILL", () => {
    expect(decodeCommand([0x7fn, 0n]).ok).toBe(false);
    expect(decodeCommand([BigInt(CMD_OP.TLBI_EL3_ALL), 0n]).ok).toBe(false);
    expect(decodeCommand([BigInt(CMD_OP.SYNC) | (3n << 12n), 0n]).ok).toBe(false);
    expect(decodeCommand([BigInt(CMD_OP.PRI_RESP), 3n << 12n]).ok).toBe(false);
    expect(decodeCommand(encodeCommand(cmd.atcInv(1, 0n, 0)), { ...DEFAULT_SMMU_FEATURES, ats: false }).ok).toBe(false);
    expect(
      decodeCommand(encodeCommand(cmd.tlbi("TLBI_S2_IPA", { TG: 1 })), { ...DEFAULT_SMMU_FEATURES, rangeInvalidation: false })
        .ok,
    ).toBe(false);
  });

  it("compute ATC_INV spans", () => {
    expect(atcInvRange({ Addr: 0x13_5000n, Size: 2 })).toEqual({ start: 0x13_4000n, size: 0x4000n });
    expect(atcInvRange({ Addr: 0n, Size: ATC_INV_SIZE_ALL }).size).toBe(1n << 64n);
  });

  it("classify vIOMMU invalidations exactly as iommufd accepts them", () => {
    const accepted = ["TLBI_NSNH_ALL", "TLBI_NH_VA", "TLBI_NH_VAA", "TLBI_NH_ALL", "TLBI_NH_ASID", "ATC_INV", "CFGI_CD", "CFGI_CD_ALL"];
    for (const [name, op] of Object.entries(CMD_OP)) {
      const r = classifyViommuCommand([BigInt(op), 0n]);
      expect(r.ok, name).toBe(accepted.includes(name));
      if (!r.ok) expect(r.errno).toBe("EIO");
    }
  });

  it("rewrite guest commands: VMID forced, NSNH_ALL → NH_ALL, vSID → SID", () => {
    const nsnh = rewriteViommuCommand([BigInt(CMD_OP.TLBI_NSNH_ALL), 0xffffn], { vmid: 7, vsidToSid: () => undefined });
    expect(nsnh).toEqual({ ok: true, words: [BigInt(CMD_OP.TLBI_NH_ALL) | (7n << 32n), 0n] });
    const va = encodeCommand(cmd.tlbi("TLBI_NH_VA", { VMID: 99, ASID: 5, Addr: 0x1000n }));
    const r = rewriteViommuCommand(va, { vmid: 7, vsidToSid: () => undefined });
    expect(r.ok && r.words[0]).toBe(BigInt(CMD_OP.TLBI_NH_VA) | (7n << 32n) | (5n << 48n));
    const cd = encodeCommand(cmd.cfgiCd(0x10, 3));
    const r2 = rewriteViommuCommand(cd, { vmid: 7, vsidToSid: (v) => (v === 0x10 ? 0x2340 : undefined) });
    expect(r2.ok && decodeCommand(r2.words)).toEqual({ ok: true, cmd: cmd.cfgiCd(0x2340, 3) });
    expect(rewriteViommuCommand(encodeCommand(cmd.cfgiCd(0x11, 3)), { vmid: 7, vsidToSid: () => undefined })).toEqual({
      ok: false,
      errno: "EIO",
    });
    expect(rewriteViommuCommand(encodeCommand(cmd.cfgiSte(1)), { vmid: 7, vsidToSid: () => 1 })).toEqual({
      ok: false,
      errno: "EIO",
    });
  });
});

describe("event records", () => {
  it("encode a stage-2 translation fault with CLASS, IPA and InputAddr", () => {
    const w = encodeEvent({
      type: "F_TRANSLATION",
      StreamID: 0x42,
      SSV: true,
      SubstreamID: 5,
      RnW: true,
      PnU: false,
      InD: false,
      S2: true,
      CLASS: EVT_CLASS.TT,
      InputAddr: 0xdead_b000n,
      IPA: 0x8000_2008n,
      Stall: false,
    });
    expect(w[0]).toBe(0x10n | (1n << 11n) | (5n << 12n) | (0x42n << 32n));
    expect(w[1]).toBe((1n << 35n) | (1n << 39n) | (1n << 40n));
    expect(w[2]).toBe(0xdead_b000n);
    expect(w[3]).toBe(0x8000_2000n);
    expect(decodeEvent(w)).toEqual({
      type: "F_TRANSLATION",
      StreamID: 0x42,
      SSV: true,
      SubstreamID: 5,
      Stall: false,
      STAG: 0,
      PnU: false,
      InD: false,
      RnW: true,
      S2: true,
      CLASS: 1,
      InputAddr: 0xdead_b000n,
      IPA: 0x8000_2000n,
    });
  });

  it("encode fetch aborts with FetchAddr[55:3]", () => {
    const w = encodeEvent({ type: "F_STE_FETCH", StreamID: 9, SSV: false, FetchAddr: 0x1234_5678n });
    expect(w[0]).toBe(0x03n | (9n << 32n));
    expect(w[3]).toBe(0x1234_5678n);
    expect(decodeEvent(w)).toEqual({ type: "F_STE_FETCH", StreamID: 9, SSV: false, SubstreamID: 0, FetchAddr: 0x1234_5678n });
  });

  it("route only stage-1, non-stall faults of the forwarded types to a guest", () => {
    expect(isGuestEvent({ type: "F_TRANSLATION", StreamID: 1, S2: false })).toBe(true);
    expect(isGuestEvent({ type: "F_TRANSLATION", StreamID: 1, S2: true })).toBe(false);
    expect(isGuestEvent({ type: "F_WALK_EABT", StreamID: 1 })).toBe(false);
    expect(isGuestEvent({ type: "C_BAD_CD", StreamID: 1 })).toBe(true);
  });
});

describe("PRI entries", () => {
  it("round-trip a page request", () => {
    const r = {
      StreamID: 0x1234,
      SSV: true,
      SubstreamID: 0xabcde,
      Priv: false,
      Exec: false,
      Read: true,
      Write: true,
      Last: true,
      PRGIndex: 0x1a5,
      Addr: 0x7fff_f000n,
    };
    const w = encodePriEntry(r);
    expect(w[0]).toBe(0x1234n | (0xabcden << 32n) | (1n << 60n) | (1n << 61n) | (1n << 62n) | (1n << 63n));
    expect(w[1]).toBe(0x1a5n | 0x7fff_f000n);
    expect(decodePriEntry(w)).toEqual(r);
    expect(isPriStopMarker({ ...r, Read: false, Write: false })).toBe(true);
  });
});

describe("queue pointers", () => {
  it("track wrap, full and empty", () => {
    const log2 = 2; // 4 entries
    let prod = 0;
    const cons = 0;
    expect(qEmpty(prod, cons, log2)).toBe(true);
    for (let i = 0; i < 4; i++) prod = qInc(prod, log2);
    expect(qIndex(prod, log2)).toBe(0);
    expect(qWrap(prod, log2)).toBe(1);
    expect(qFull(prod, cons, log2)).toBe(true);
    expect(qCount(prod, cons, log2)).toBe(4);
    // Bits above the wrap flag are kept (e.g. OVFLG at 31).
    expect(qInc(0x8000_0007, log2) >>> 0).toBe(0x8000_0000);
  });

  it("align the base to the queue size", () => {
    const g = queueGeometry(0x1_0000_1020n | 3n, 16, 19);
    expect(g.log2size).toBe(3);
    expect(g.base).toBe(0x1_0000_1000n);
    const mem = new SparseMemory(48);
    expect(mem.paBits).toBe(48);
  });
});
