// The SMMUv3 host driver driven directly, as the iommufd core drives it, with
// a fake DriverEnv: host memory from mm/phys.ts, and recorders for the bus
// ports (ATC invalidations, page group responses, host log). Guest tables
// are built with the packages/hw map helpers in "guest RAM" that a nesting
// parent maps (IOVA = GPA), through a GPA → PA view of host memory.
import {
  EVTQ_ENTRY,
  PERM_ALL,
  SMMU_REG,
  STE_CONFIG,
  SimplePageAllocator,
  type StageConfig,
  TranslatedMemory,
  armStage1Config,
  cmd,
  decodeCdFields,
  decodeSteFields,
  encodeCd,
  encodeCommand,
  encodeSte,
  getNum,
  mapRange,
  unmapRange,
  wordsToBytes,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import { describe, expect, it } from "vitest";
import { HostMemory } from "../mm/phys.js";
import type { AtcInvalidation, DriverEnv, IopfSink, NestedDomain, PciDevice } from "./ops.js";
import { type SmmuV3DriverOptions, type SmmuV3PagingDomain, createSmmuV3Driver } from "./smmuv3.js";

const PAGE = 0x1000n;
const READ_U = { kind: "read", privileged: false } as const;
const WRITE_U = { kind: "write", privileged: false } as const;

interface HostLog {
  dev: PciDevice | undefined;
  text: string;
  fields: Record<string, unknown>;
}

function bench(opts: SmmuV3DriverOptions = {}) {
  const memory = new HostMemory(48);
  const atc: AtcInvalidation[] = [];
  const held: (() => void)[] = [];
  const responses: { rid: number; pasid: number | undefined; grpid: number; code: string }[] = [];
  const hostEvents: HostLog[] = [];
  const mode = { atc: "ok" as "ok" | "fail" | "hold" };
  const env: DriverEnv = {
    memory,
    atcInvalidate(req) {
      atc.push(req);
      if (mode.atc === "fail") return Promise.reject(new ErrnoError("ETIMEDOUT", "no Invalidate Completion"));
      if (mode.atc === "hold") return new Promise<void>((resolve) => held.push(resolve));
      return Promise.resolve();
    },
    pageGroupResponse(rid, pasid, grpid, code) {
      responses.push({ rid, pasid, grpid, code });
    },
    hostEvent(dev, text, fields) {
      hostEvents.push({ dev, text, fields });
    },
  };
  const drv = createSmmuV3Driver("smmu0", env, opts);
  const device = (rid: number, o: Partial<PciDevice> = {}): PciDevice => {
    const dev: PciDevice = {
      rid,
      name: `0000:${(rid >> 8).toString(16).padStart(2, "0")}:${((rid >> 3) & 31).toString(16).padStart(2, "0")}.${rid & 7}`,
      iommu: drv,
      maxPasidLog2: 0,
      pasidExec: false,
      pasidPriv: false,
      ats: false,
      pri: false,
      origin: "test",
      reservedRegions: [],
      ...o,
    };
    drv.probeDevice(dev);
    return dev;
  };
  /** Host pages for DMA: n fresh frames. */
  const frames = (n: number) => Array.from({ length: n }, () => memory.allocPfn());
  return { memory, mem: memory.mem, atc, held, responses, hostEvents, mode, env, drv, device, frames };
}
type Bench = ReturnType<typeof bench>;

const NONE = { nestParent: false, dirtyTracking: false, pasid: false };
const PARENT = { nestParent: true, dirtyTracking: false, pasid: false };

/** The installed STE, read the way a debugger would: STRTAB_BASE → L1 descriptor → L2 array. */
function readSte(b: Bench, sid: number): bigint[] {
  const base = b.drv.smmu.read(SMMU_REG.STRTAB_BASE, 8) & 0x00ff_ffff_ffff_ffc0n;
  const l1 = readOk(b.mem.read64(base + BigInt(sid >> 8) * 8n));
  const l2 = l1 & 0x00ff_ffff_ffff_ffc0n;
  return Array.from({ length: 8 }, (_, i) => readOk(b.mem.read64(l2 + BigInt((sid & 0xff) * 64 + i * 8))));
}

function readOk(r: { ok: true; value: bigint } | { ok: false }): bigint {
  if (!r.ok) throw new Error("memory error");
  return r.value;
}

function mapFrames(d: { map: SmmuV3PagingDomain["map"] }, iova: bigint, pfns: number[], prot = { read: true, write: true }) {
  d.map(iova, BigInt(pfns.length) * PAGE, (off) => pfns[Number(off / PAGE)] as number, prot);
}

function pa(pfn: number, off = 0n): bigint {
  return BigInt(pfn) * PAGE + off;
}

const tick = () => new Promise((r) => setTimeout(r, 0));

async function expectErrno(p: Promise<unknown> | (() => unknown), errno: string, handled?: number): Promise<void> {
  let err: unknown;
  try {
    await (typeof p === "function" ? p() : p);
  } catch (e) {
    err = e;
  }
  expect(err).toBeInstanceOf(ErrnoError);
  expect((err as ErrnoError).errno).toBe(errno);
  if (handled !== undefined) expect((err as { handled?: number }).handled).toBe(handled);
}

// ---------------------------------------------------------------------------
// A nested setup: parent S2 maps guest RAM at GPA; the guest's CD table and
// stage-1 tables live in that RAM.

const GUEST_RAM = 0x4000_0000n;
const GUEST_PAGES = 64;
const GUEST_ASID = 7;
const VSID = 0x42n;
const IOVA = 0x1000_0000n;

function nestedSetup(b: Bench, devOpts: Partial<PciDevice> = {}, vsteExtra: Record<string, number | bigint> = {}) {
  const dev = b.device(0x0200, devOpts);
  const parent = b.drv.allocPaging(dev, PARENT, {});
  const ram = b.frames(GUEST_PAGES);
  mapFrames(parent, GUEST_RAM, ram);
  const gpaToPa = (gpa: bigint): bigint | undefined => {
    const i = (gpa - GUEST_RAM) / PAGE;
    return gpa >= GUEST_RAM && i < BigInt(GUEST_PAGES) ? pa(ram[Number(i)] as number, gpa & 0xfffn) : undefined;
  };
  const guestMem = new TranslatedMemory(b.mem, (a) => gpaToPa(a), 48);
  const galloc = new SimplePageAllocator(guestMem, GUEST_RAM, BigInt(GUEST_PAGES) * PAGE);
  const root = galloc.alloc(4096) as bigint;
  const s1r = armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb: root });
  if (!s1r.ok) throw new Error(s1r.error);
  const s1: StageConfig = s1r.stage;
  const cdGpa = galloc.alloc(4096) as bigint;
  const cdWords = (ttb: bigint, extra: Record<string, number> = {}) =>
    encodeCd({ V: 1, T0SZ: 16, TG0: 0, IPS: 5, AA64: 1, R: 1, A: 1, EPD1: 1, ASID: GUEST_ASID, TTB0: ttb, ...extra });
  guestMem.write(cdGpa, wordsToBytes(cdWords(root)));
  /** Guest S1 mapping (EL0-accessible, as Linux maps): IOVA → GPA. */
  const gmap = (iova: bigint, gpa: bigint, size = PAGE) => {
    const r = mapRange(guestMem, s1, iova, gpa, size, { perms: PERM_ALL }, { alloc: galloc });
    if (!r.ok) throw new Error(r.error);
  };
  const gunmap = (iova: bigint, size = PAGE) => unmapRange(guestMem, s1, iova, size, { alloc: galloc });
  const vevents: { type: number; dev: PciDevice; payload: bigint[] }[] = [];
  const viommu = b.drv.allocViommu(dev, 1, parent, { vevent: (type, d, payload) => vevents.push({ type, dev: d, payload }) });
  viommu.vdeviceAdd(dev, VSID);
  const vste = (extra: Record<string, number | bigint> = {}) =>
    wordsToBytes(encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: cdGpa, S1CDMax: 0, ...vsteExtra, ...extra }).slice(0, 2));
  const nested = b.drv.allocNested(dev, parent, viommu, 2, vste(), {});
  const data = [galloc.alloc(4096) as bigint, galloc.alloc(4096) as bigint];
  gmap(IOVA, data[0] as bigint);
  return { dev, parent, ram, gpaToPa, guestMem, galloc, s1, root, cdGpa, cdWords, gmap, gunmap, viommu, vevents, vste, nested, data };
}

/** One vIOMMU invalidation entry (16 bytes) from a command. */
function entry(c: Parameters<typeof encodeCommand>[0]): Uint8Array {
  return wordsToBytes(encodeCommand(c));
}

// ---------------------------------------------------------------------------

describe("SMMUv3 host driver: bring-up and hw_info", () => {
  it("reports the capabilities of an SMMU with nesting, ATS, PRI and HTTU", () => {
    const b = bench();
    expect(b.drv.vendor).toBe("smmuv3");
    expect(b.drv.caps).toEqual({
      dirtyTracking: true,
      nesting: true,
      maxPasidLog2: 20,
      viommuType: 1,
      nestedDataType: 2,
      nestedFlags: 4, // FAULT_ID_VALID only
      hwptInvalidateType: -1,
      viommuInvalidateType: 1,
      veventqType: 1,
      pgsizeMin: 4096n,
      aperture: { start: 0n, last: (1n << 48n) - 1n },
    });
    // SMMUEN, CMDQEN, EVENTQEN, PRIQEN; the 2-level stream table covers 16-bit RIDs.
    expect(Number(b.drv.smmu.read(SMMU_REG.CR0)) & 0xf).toBe(0xf);
    expect(Number(b.drv.smmu.read(SMMU_REG.STRTAB_BASE_CFG))).toBe((1 << 16) | (8 << 6) | 16);
  });

  it("builds iommu_hw_info_arm_smmuv3 with only the fields the kernel exposes", async () => {
    const b = bench();
    const dev = b.device(0x10);
    const info = b.drv.hwInfo(dev);
    expect(info.type).toBe(2);
    expect(info.capabilities).toBe(1n);
    expect(info.data.length).toBe(40);
    const dv = new DataView(info.data.buffer);
    const u32 = (off: number) => dv.getUint32(off, true);
    expect(u32(0)).toBe(0); // flags
    expect(u32(4)).toBe(0); // __reserved
    // IDR0: ST_LEVEL 1 (bit 27), TERM_MODEL (26), STALL_MODEL 0, TTENDIAN 2 (22:21), CD2L (19), ASID16 (12), TTF 2 (3:2).
    // S1P/S2P, HTTU, ATS, PRI, VMID16... are not reported.
    expect(u32(8)).toBe((1 << 27) | (1 << 26) | (2 << 21) | (1 << 19) | (1 << 12) | (2 << 2));
    expect(u32(12)).toBe(16 | (20 << 6)); // IDR1: SIDSIZE 16, SSIDSIZE 20; queue sizes hidden
    expect(u32(16)).toBe(0); // IDR2
    expect(u32(20)).toBe(1 << 10); // IDR3: RIL (HAD and FWB hidden)
    expect(u32(24)).toBe(0); // IDR4
    expect(u32(28)).toBe(0x70); // IDR5: GRAN4K/16K/64K (OAS hidden)
    expect(u32(32)).toBe(0); // IIDR
    expect(u32(36)).toBe(2); // AIDR: SMMUv3.2
    expect(b.drv.hwInfo(dev, 0).type).toBe(2);
    expect(b.drv.hwInfo(dev, 2).type).toBe(2);
    await expectErrno(() => b.drv.hwInfo(dev, 1), "EOPNOTSUPP");
  });

  it("without dirty-state HTTU: no DIRTY_TRACKING capability, dirty domains are EOPNOTSUPP", async () => {
    const b = bench({ features: { httu: 1 } });
    const dev = b.device(0x10);
    expect(b.drv.caps.dirtyTracking).toBe(false);
    expect(b.drv.hwInfo(dev).capabilities).toBe(0n);
    await expectErrno(() => b.drv.allocPaging(dev, { ...NONE, dirtyTracking: true }, {}), "EOPNOTSUPP");
  });
});

describe("blocked DMA", () => {
  it("a probed device aborts until attached, and again after detach", async () => {
    const b = bench();
    const dev = b.device(0x0100);
    const ste = readSte(b, 0x0100);
    expect(ste[0]).toBe(1n); // V = 1, Config = abort
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U)).toMatchObject({
      ok: false,
      reason: "abort",
      recoverable: false,
      fault: { kind: "aborted", route: "none" },
    });

    const d = b.drv.allocPaging(dev, NONE, {});
    mapFrames(d, 0x1000n, b.frames(1));
    await b.drv.attach(dev, undefined, d);
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U).ok).toBe(true);
    await b.drv.attach(dev, undefined, undefined);
    expect(readSte(b, 0x0100)[0]).toBe(1n);
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U)).toMatchObject({ ok: false, reason: "abort" });
    // An abort STE records nothing.
    expect(b.hostEvents).toEqual([]);
  });
});

describe("paging domains", () => {
  it("stage 1: map, attach, translate, unmap with TLBI", async () => {
    const b = bench();
    const dev = b.device(0x0100);
    const d = b.drv.allocPaging(dev, NONE, {});
    expect(d.stage).toBe(1);
    expect(d.aperture).toEqual({ start: 0n, last: (1n << 48n) - 1n });
    const f = b.frames(3);
    mapFrames(d, 0x10_0000n, f.slice(0, 2));
    mapFrames(d, 0x20_0000n, f.slice(2), { read: true, write: false });
    await b.drv.attach(dev, undefined, d);

    // STE: CD table (Config S1, S1DSS SSID0, VMID 0); CD: ASID, TTB0, HA/HD off.
    const ste = decodeSteFields(readSte(b, 0x0100));
    expect(ste.Config).toBe(STE_CONFIG.S1_TRANS);
    expect(ste.S1DSS).toBe(2);
    expect(ste.S1STALLD).toBe(true);
    expect(ste.S2VMID).toBe(0);
    const cd = decodeCdFields(Array.from({ length: 8 }, (_, i) => readOk(b.mem.read64(ste.S1ContextPtr + BigInt(i * 8)))));
    expect(cd.V && cd.AA64 && cd.R && cd.A).toBe(true);
    expect(cd.ASID).toBe(d.tag);
    expect(cd.T0SZ).toBe(16);
    expect(cd.HD).toBe(false);

    // DMA without a PASID is unprivileged: the tables grant EL0 access.
    expect(b.drv.translate(dev, undefined, 0x10_1234n, READ_U)).toEqual({ ok: true, pa: pa(f[1] as number, 0x234n), size: 0xdccn, write: true });
    expect(b.drv.translate(dev, undefined, 0x10_0000n, WRITE_U)).toMatchObject({ ok: true, pa: pa(f[0] as number) });
    expect(b.drv.translate(dev, undefined, 0x20_0008n, READ_U)).toEqual({ ok: true, pa: pa(f[2] as number, 8n), size: 0xff8n, write: false });
    expect(b.drv.translate(dev, undefined, 0x20_0000n, WRITE_U)).toMatchObject({ ok: false, reason: "fault" });

    const before = b.drv.smmu.counters.commandsByOpcode.TLBI_NH_VA ?? 0;
    d.unmap(0x10_0000n, 2n * PAGE);
    await d.iotlbSync();
    expect(b.drv.smmu.counters.commandsByOpcode.TLBI_NH_VA).toBe(before + 1);
    // The cached translation is gone: the access faults (and the host logs the event).
    const t = b.drv.translate(dev, undefined, 0x10_1234n, READ_U);
    expect(t).toMatchObject({ ok: false, reason: "fault", recoverable: false, fault: { kind: "translation", stage: 1, level: 3, route: "host" } });
    expect(b.hostEvents.map((e) => e.text)).toContain("event 0x10 F_TRANSLATION received");
    expect(b.hostEvents.find((e) => e.text.includes("F_TRANSLATION"))?.fields).toMatchObject({ StreamID: 0x0100, InputAddr: "0x101234", S2: false });
  });

  it("map is all or nothing: an existing leaf → EEXIST and nothing of the new range stays", async () => {
    const b = bench();
    const dev = b.device(0x0100);
    const d = b.drv.allocPaging(dev, NONE, {});
    const f = b.frames(4);
    mapFrames(d, 0x3000n, f.slice(0, 1));
    await b.drv.attach(dev, undefined, d);
    await expectErrno(() => mapFrames(d, 0x1000n, f.slice(1)), "EEXIST");
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U).ok).toBe(false);
    expect(b.drv.translate(dev, undefined, 0x3000n, READ_U)).toMatchObject({ ok: true, pa: pa(f[0] as number) });
  });

  it("stage 2 nest parent: VMID, TLBI_S2_IPA + TLBI_NH_ALL on unmap, and ATC_INV of the range for ATS", async () => {
    const b = bench();
    const dev = b.device(0x0300, { ats: true });
    const d = b.drv.allocPaging(dev, PARENT, {});
    expect(d.stage).toBe(2);
    const f = b.frames(2);
    mapFrames(d, 0x8000_0000n, f);
    await b.drv.attach(dev, undefined, d);
    const ste = decodeSteFields(readSte(b, 0x0300));
    expect(ste).toMatchObject({ Config: STE_CONFIG.S2_TRANS, S2VMID: d.tag, S2T0SZ: 16, S2SL0: 2, S2AA64: true, S2R: true, S2FWB: true, EATS: 1 });
    expect(d.tag).toBeGreaterThan(0);
    // Enabling ATS flushed the whole ATC first.
    expect(b.atc).toEqual([{ rid: 0x0300, addr: 0n, size: 1n << 64n, global: true }]);
    expect(b.drv.translatedAllowed(dev)).toBe(true);
    expect(b.drv.translate(dev, undefined, 0x8000_1010n, WRITE_U)).toMatchObject({ ok: true, pa: pa(f[1] as number, 0x10n), write: true });

    const ops = () => ({ ...b.drv.smmu.counters.commandsByOpcode });
    const o = ops();
    b.mode.atc = "hold";
    d.unmap(0x8000_0000n, 2n * PAGE);
    // The IOTLB invalidation took effect synchronously; the ATC one is still in flight.
    expect(b.drv.translate(dev, undefined, 0x8000_1010n, READ_U).ok).toBe(false);
    await tick();
    expect(b.atc[1]).toEqual({ rid: 0x0300, addr: 0x8000_0000n, size: 0x2000n, global: false });
    let synced = false;
    const sync = d.iotlbSync().then(() => (synced = true));
    await tick();
    expect(synced).toBe(false);
    b.held.shift()?.();
    await sync;
    expect(synced).toBe(true);
    const n = ops();
    expect((n.TLBI_S2_IPA ?? 0) - (o.TLBI_S2_IPA ?? 0)).toBe(1);
    expect((n.TLBI_NH_ALL ?? 0) - (o.TLBI_NH_ALL ?? 0)).toBe(1);
    expect((n.ATC_INV ?? 0) - (o.ATC_INV ?? 0)).toBe(1);
  });

  it("an unmap whose ATC invalidation times out: iotlbSync rejects with ETIMEDOUT, once", async () => {
    const b = bench();
    const dev = b.device(0x0301, { ats: true });
    const d = b.drv.allocPaging(dev, NONE, {});
    mapFrames(d, 0x4000n, b.frames(1));
    await b.drv.attach(dev, undefined, d);
    b.mode.atc = "fail";
    d.unmap(0x4000n, PAGE);
    await expectErrno(d.iotlbSync(), "ETIMEDOUT");
    await d.iotlbSync();
    expect(b.hostEvents.map((e) => e.text)).toEqual(["ATC invalidation failed", "CMDQ error: ATC invalidate timeout, retrying CMD_SYNC"]);
    expect(b.drv.smmu.cmdqState).toBe("idle");
  });

  it("NEST_PARENT | PASID is EOPNOTSUPP", async () => {
    const b = bench();
    const dev = b.device(0x10);
    await expectErrno(() => b.drv.allocPaging(dev, { ...PARENT, pasid: true }, {}), "EOPNOTSUPP");
  });

  it("a replaced domain's translations stop: atomic replace from stage 1 to stage 2", async () => {
    const b = bench();
    const dev = b.device(0x0100);
    const s1 = b.drv.allocPaging(dev, NONE, {});
    const s2 = b.drv.allocPaging(dev, PARENT, {});
    const f = b.frames(2);
    mapFrames(s1, 0x1000n, f.slice(0, 1));
    mapFrames(s2, 0x1000n, f.slice(1));
    await b.drv.attach(dev, undefined, s1);
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U)).toMatchObject({ pa: pa(f[0] as number) });
    await b.drv.attach(dev, undefined, s2);
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U)).toMatchObject({ pa: pa(f[1] as number) });
  });
});

describe("PASID attach", () => {
  it("stage-1 domains on PASIDs with a blocked RID; nested → EOPNOTSUPP, stage 2 → EINVAL, RID stage 2 → EBUSY", async () => {
    const b = bench();
    const dev = b.device(0x0400, { maxPasidLog2: 8 });
    const d = b.drv.allocPaging(dev, { ...NONE, pasid: true }, {});
    const f = b.frames(1);
    mapFrames(d, 0x5000n, f);
    await b.drv.attach(dev, 5, d);
    const ste = decodeSteFields(readSte(b, 0x0400));
    expect(ste).toMatchObject({ Config: STE_CONFIG.S1_TRANS, S1CDMax: 8, S1DSS: 0 });
    expect(b.drv.translate(dev, 5, 0x5008n, READ_U)).toMatchObject({ ok: true, pa: pa(f[0] as number, 8n) });
    // Non-PASID traffic terminates (S1DSS = terminate) with F_STREAM_DISABLED in the host log.
    expect(b.drv.translate(dev, undefined, 0x5008n, READ_U)).toMatchObject({ ok: false, reason: "abort" });
    expect(b.hostEvents.map((e) => e.text)).toContain("event 0x06 F_STREAM_DISABLED received");

    const parent = b.drv.allocPaging(dev, PARENT, {});
    await expectErrno(b.drv.attach(dev, 6, parent), "EINVAL");
    await expectErrno(b.drv.attach(dev, undefined, parent), "EBUSY");
    await expectErrno(b.drv.attach(dev, 1 << 8, d), "EINVAL");

    await b.drv.attach(dev, 5, undefined);
    expect(readSte(b, 0x0400)[0]).toBe(1n); // last PASID gone: plain abort STE
    expect(b.drv.translate(dev, 5, 0x5008n, READ_U)).toMatchObject({ ok: false, reason: "abort" });
  });

  it("20-bit PASIDs use a 2-level CD table with 64 KiB leaves", async () => {
    const b = bench();
    const dev = b.device(0x0401, { maxPasidLog2: 20 });
    const d = b.drv.allocPaging(dev, { ...NONE, pasid: true }, {});
    const f = b.frames(1);
    mapFrames(d, 0x5000n, f);
    const rid = b.drv.allocPaging(dev, { ...NONE, pasid: true }, {});
    await b.drv.attach(dev, undefined, rid);
    await b.drv.attach(dev, 0x12345, d);
    const ste = decodeSteFields(readSte(b, 0x0401));
    expect(ste).toMatchObject({ Config: STE_CONFIG.S1_TRANS, S1Fmt: 2, S1CDMax: 20, S1DSS: 2 });
    expect(b.drv.translate(dev, 0x12345, 0x5010n, READ_U)).toMatchObject({ ok: true, pa: pa(f[0] as number, 0x10n) });
    expect(b.drv.translate(dev, 0x12346, 0x5010n, READ_U)).toMatchObject({ ok: false, reason: "abort" }); // C_BAD_CD
    expect(b.drv.translate(dev, undefined, 0x5010n, READ_U)).toMatchObject({ ok: false, reason: "fault" }); // RID: empty domain
  });

  it("a nested domain cannot take a PASID", async () => {
    const b = bench();
    const n = nestedSetup(b, { maxPasidLog2: 8 });
    await expectErrno(b.drv.attach(n.dev, 3, n.nested), "EOPNOTSUPP");
  });
});

describe("nested translation over a vIOMMU", () => {
  it("installs the nested STE and translates IOVA → GPA → PA end to end", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    const ste = decodeSteFields(readSte(b, 0x0200));
    expect(ste).toMatchObject({
      V: true,
      Config: STE_CONFIG.NESTED,
      S1ContextPtr: n.cdGpa,
      S1CDMax: 0,
      MEV: true,
      S2VMID: n.parent.tag,
      S2T0SZ: 16,
      S2SL0: 2,
      S2TG: 0,
      S2PS: 5,
      S2AA64: true,
      S2R: true,
      EATS: 0,
    });
    expect(ste.S2TTB).toBe(readSte(b, 0x0200)[3]);
    const t = b.drv.translate(n.dev, undefined, IOVA + 0x10n, READ_U);
    expect(t).toEqual({ ok: true, pa: (n.gpaToPa(n.data[0] as bigint) as bigint) + 0x10n, size: PAGE - 0x10n, write: true });
  });

  it("a bypass vSTE uses the parent's stage 2 only; an invalid vSTE aborts", async () => {
    const b = bench();
    const n = nestedSetup(b);
    const bypass = b.drv.allocNested(n.dev, n.parent, n.viommu, 2, n.vste({ Config: STE_CONFIG.BYPASS, S1ContextPtr: 0n }), {});
    await b.drv.attach(n.dev, undefined, bypass);
    expect(decodeSteFields(readSte(b, 0x0200)).Config).toBe(STE_CONFIG.S2_TRANS);
    expect(b.drv.translate(n.dev, undefined, GUEST_RAM + 0x2008n, READ_U)).toMatchObject({ ok: true, pa: n.gpaToPa(GUEST_RAM + 0x2008n) });

    const invalid = b.drv.allocNested(n.dev, n.parent, n.viommu, 2, wordsToBytes([0x0fffn << 52n, 0xffff_ffffn]), {});
    await b.drv.attach(n.dev, undefined, invalid);
    expect(readSte(b, 0x0200)[0]).toBe(1n);
    expect(b.drv.translate(n.dev, undefined, GUEST_RAM, READ_U)).toMatchObject({ ok: false, reason: "abort" });
  });

  it("validates the vSTE like arm_smmu_validate_vste", async () => {
    const b = bench();
    const n = nestedSetup(b);
    const alloc = (data: Uint8Array, type = 2) => () => b.drv.allocNested(n.dev, n.parent, n.viommu, type, data, {});
    // SMMUv3 nests only through a vIOMMU.
    await expectErrno(() => b.drv.allocNested(n.dev, n.parent, undefined, 2, n.vste(), {}), "EOPNOTSUPP");
    await expectErrno(alloc(n.vste(), 1), "EOPNOTSUPP");
    await expectErrno(alloc(n.vste().subarray(0, 15)), "EINVAL");
    await expectErrno(alloc(new Uint8Array(24)), "EINVAL");
    await expectErrno(alloc(n.vste({ Config: STE_CONFIG.S2_TRANS })), "EIO");
    await expectErrno(alloc(n.vste({ Config: STE_CONFIG.NESTED })), "EIO");
    await expectErrno(alloc(n.vste({ EATS: 2 })), "EIO");
    await expectErrno(alloc(n.vste({ MEV: 1 })), "EIO"); // qw1 bit outside the allowed set
    await expectErrno(alloc(n.vste({ S1ContextPtr: 1n << 52n })), "EIO"); // qw0 bit 52
    // Allowed: S1DSS, S1CIR/COR/CSH, S1STALLD, EATS 0/1.
    expect(alloc(n.vste({ S1DSS: 1, S1CIR: 1, S1COR: 1, S1CSH: 3, S1STALLD: 1, EATS: 1 }))().kind).toBe("nested");
  });

  it("a translating nested domain needs a vDEVICE (ENOENT); abort/bypass do not", async () => {
    const b = bench();
    const n = nestedSetup(b);
    n.viommu.vdeviceRemove(n.dev);
    await expectErrno(b.drv.attach(n.dev, undefined, n.nested), "ENOENT");
    const bypass = b.drv.allocNested(n.dev, n.parent, n.viommu, 2, n.vste({ Config: STE_CONFIG.BYPASS }), {});
    await b.drv.attach(n.dev, undefined, bypass);
  });
});

describe("vIOMMU invalidation", () => {
  /** Make the guest's IOVA point at data[1] without telling the SMMU: the IOTLB still has data[0]. */
  async function staleSetup(b: Bench) {
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    const old = n.gpaToPa(n.data[0] as bigint) as bigint;
    const fresh = n.gpaToPa(n.data[1] as bigint) as bigint;
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: old });
    n.gunmap(IOVA);
    n.gmap(IOVA, n.data[1] as bigint);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: old });
    return { n, old, fresh };
  }

  const tlbis: [string, Parameters<typeof encodeCommand>[0]][] = [
    ["TLBI_NH_VA", cmd.tlbi("TLBI_NH_VA", { ASID: GUEST_ASID, VMID: 0x999, Addr: IOVA, Leaf: true })],
    ["TLBI_NH_VA (range)", cmd.tlbi("TLBI_NH_VA", { ASID: GUEST_ASID, Addr: IOVA, TG: 1, NUM: 3, SCALE: 0 })],
    ["TLBI_NH_VAA", cmd.tlbi("TLBI_NH_VAA", { Addr: IOVA })],
    ["TLBI_NH_ASID", cmd.tlbi("TLBI_NH_ASID", { ASID: GUEST_ASID })],
    ["TLBI_NH_ALL", cmd.tlbi("TLBI_NH_ALL", { VMID: 0x999 })],
    ["TLBI_NSNH_ALL", cmd.tlbi("TLBI_NSNH_ALL", { Addr: 0xdead_0000n })],
  ];
  for (const [name, c] of tlbis) {
    it(`${name}: the stale translation is gone (VMID forced to the vIOMMU's)`, async () => {
      const b = bench();
      const { n, fresh } = await staleSetup(b);
      await expect(n.viommu.invalidate(1, [entry(c)])).resolves.toBe(1);
      expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ ok: true, pa: fresh });
    });
  }

  it("a TLBI of another ASID leaves the stale entry", async () => {
    const b = bench();
    const { n, old } = await staleSetup(b);
    await n.viommu.invalidate(1, [entry(cmd.tlbi("TLBI_NH_ASID", { ASID: GUEST_ASID + 1 }))]);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: old });
  });

  it("CFGI_CD / CFGI_CD_ALL: the vSID is rewritten to the physical SID and the cached CD goes", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U).ok).toBe(true);
    // The guest points its CD at an empty table (and a new ASID, so the IOTLB cannot answer).
    const empty = n.galloc.alloc(4096) as bigint;
    n.guestMem.write(n.cdGpa, wordsToBytes(n.cdWords(empty, { ASID: 9 })));
    await n.viommu.invalidate(1, [entry(cmd.tlbi("TLBI_NH_ASID", { ASID: GUEST_ASID }))]);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U).ok).toBe(true); // CD still cached
    await n.viommu.invalidate(1, [entry({ name: "CFGI_CD", StreamID: Number(VSID), SSV: false, SubstreamID: 0, Leaf: true })]);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ ok: false, reason: "fault" });

    n.guestMem.write(n.cdGpa, wordsToBytes(n.cdWords(n.root, { ASID: 10 })));
    await n.viommu.invalidate(1, [entry(cmd.cfgiCdAll(Number(VSID)))]);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U).ok).toBe(true);
  });

  it("ATC_INV: forwarded for the physical SID with the guest's range, and awaited", async () => {
    const b = bench();
    const n = nestedSetup(b, { ats: true }, { EATS: 1 });
    await b.drv.attach(n.dev, undefined, n.nested);
    expect(decodeSteFields(readSte(b, 0x0200)).EATS).toBe(1);
    expect(b.drv.translatedAllowed(n.dev)).toBe(true);
    b.atc.length = 0;
    b.mode.atc = "hold";
    let done = false;
    const p = n.viommu.invalidate(1, [entry(cmd.atcInv(Number(VSID), IOVA + 0x1000n, 1))]).then((h) => {
      done = true;
      return h;
    });
    await tick();
    expect(b.atc).toEqual([{ rid: 0x0200, addr: IOVA, size: 0x2000n, global: false }]);
    expect(done).toBe(false); // the SYNC waits for the device's completion
    b.held.shift()?.();
    await expect(p).resolves.toBe(1);
  });

  it("ATC_INV timeout: ETIMEDOUT with the handled count; the queue recovers", async () => {
    const b = bench();
    const n = nestedSetup(b, { ats: true }, { EATS: 1 });
    await b.drv.attach(n.dev, undefined, n.nested);
    b.mode.atc = "fail";
    await expectErrno(
      n.viommu.invalidate(1, [entry(cmd.tlbi("TLBI_NH_ASID", { ASID: GUEST_ASID })), entry(cmd.atcInv(Number(VSID), IOVA, 0))]),
      "ETIMEDOUT",
      1,
    );
    const texts = b.hostEvents.map((e) => e.text);
    expect(texts).toContain("ATC invalidation failed");
    expect(texts).toContain("CMDQ error: ATC invalidate timeout, retrying CMD_SYNC");
    b.mode.atc = "ok";
    await expect(n.viommu.invalidate(1, [entry(cmd.atcInv(Number(VSID), IOVA, 0))])).resolves.toBe(1);
    expect(b.drv.smmu.cmdqState).toBe("idle");
  });

  it("EIO for a rejected opcode, with the commands before it handled", async () => {
    const b = bench();
    const { n, fresh } = await staleSetup(b);
    const ok = entry(cmd.tlbi("TLBI_NH_VA", { ASID: GUEST_ASID, Addr: IOVA }));
    for (const bad of [cmd.cfgiSte(Number(VSID)), cmd.tlbi("TLBI_S2_IPA", { VMID: 1 }), cmd.sync(), cmd.priResp(Number(VSID), 1, 2)]) {
      await expectErrno(n.viommu.invalidate(1, [ok, entry(bad), ok]), "EIO", 1);
    }
    // The first entry was issued.
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: fresh });
    // A vSID without a vDEVICE.
    await expectErrno(n.viommu.invalidate(1, [entry(cmd.cfgiCdAll(0x99))]), "EIO", 0);
  });

  it("an accepted opcode with illegal fields: the SMMU skips it (CERROR_ILL), as under Linux", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    const bad = entry({ name: "ATC_INV", StreamID: Number(VSID), SSV: false, SubstreamID: 0, Global: false, Addr: 0n, Size: 60 });
    await expect(n.viommu.invalidate(1, [bad, entry(cmd.tlbi("TLBI_NSNH_ALL"))])).resolves.toBe(2);
    expect(b.hostEvents.map((e) => e.text)).toContain("CMDQ error: Illegal command, skipping it");
    expect(b.drv.smmu.cmdqState).toBe("idle");
    expect(b.atc).toEqual([]);
  });

  it("commands queue up behind a SYNC waiting for a device and run in order once it answers", async () => {
    const b = bench({ cmdqLog2: 3 }); // 8 entries
    const { n, old, fresh } = await staleSetup(b);
    b.mode.atc = "hold";
    const first = n.viommu.invalidate(1, [entry(cmd.atcInv(Number(VSID), IOVA, 0))]);
    await tick();
    // 20 commands behind the waiting SYNC: more than the queue holds.
    const tlbis = Array.from({ length: 20 }, () => entry(cmd.tlbi("TLBI_NH_VA", { ASID: GUEST_ASID, Addr: IOVA })));
    let second = false;
    const p = n.viommu.invalidate(1, tlbis).then((h) => (second = h === 20));
    await tick();
    expect(second).toBe(false);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: old }); // not run yet
    b.held.shift()?.();
    await expect(first).resolves.toBe(1);
    await p;
    expect(second).toBe(true);
    expect(b.drv.translate(n.dev, undefined, IOVA, READ_U)).toMatchObject({ pa: fresh });
  });

  it("entry rules: data type, empty array, short and long entries", async () => {
    const b = bench();
    const n = nestedSetup(b);
    const nsnh = entry(cmd.tlbi("TLBI_NSNH_ALL"));
    await expectErrno(n.viommu.invalidate(0, [nsnh]), "EINVAL", 0);
    await expectErrno(n.viommu.invalidate(1, []), "EINVAL", 0);
    // Shorter: zero-extended. Longer: the tail must be zero, else E2BIG (before any entry runs).
    await expect(n.viommu.invalidate(1, [nsnh.subarray(0, 8)])).resolves.toBe(1);
    const long = new Uint8Array(24);
    long.set(nsnh);
    await expect(n.viommu.invalidate(1, [long, long])).resolves.toBe(2);
    long[20] = 1;
    await expectErrno(n.viommu.invalidate(1, [nsnh, long]), "E2BIG", 0);
  });
});

describe("events", () => {
  it("a guest stage-1 fault becomes a vEVENT carrying the vSID; nothing in the host log", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    const t = b.drv.translate(n.dev, undefined, IOVA + 0x10_0000n, WRITE_U);
    expect(t).toMatchObject({
      ok: false,
      reason: "fault",
      fault: { kind: "translation", stage: 1, faultClass: "IN", inputAddress: IOVA + 0x10_0000n, vendorCode: 0x10, vendorName: "F_TRANSLATION", route: "veventq" },
    });
    expect(n.vevents).toHaveLength(1);
    const ev = n.vevents[0] as (typeof n.vevents)[number];
    expect(ev.type).toBe(1);
    expect(ev.dev).toBe(n.dev);
    expect(getNum(ev.payload, EVTQ_ENTRY.StreamID)).toBe(Number(VSID));
    expect(getNum(ev.payload, EVTQ_ENTRY.EventID)).toBe(0x10);
    expect(getNum(ev.payload, EVTQ_ENTRY.S2)).toBe(0);
    expect(getNum(ev.payload, EVTQ_ENTRY.RnW)).toBe(0);
    expect(ev.payload[2]).toBe(IOVA + 0x10_0000n);
    expect(b.hostEvents).toEqual([]);
  });

  it("a stage-2 fault goes to the host log only", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    n.gmap(IOVA + PAGE, 0x9000_0000n); // a GPA the parent does not map
    expect(b.drv.translate(n.dev, undefined, IOVA + PAGE, READ_U)).toMatchObject({
      ok: false,
      reason: "fault",
      fault: { kind: "translation", stage: 2, ipa: 0x9000_0000n, faultClass: "IN", vendorName: "F_TRANSLATION", route: "host" },
    });
    expect(n.vevents).toEqual([]);
    const e = b.hostEvents.find((x) => x.text.includes("F_TRANSLATION"));
    expect(e?.dev).toBe(n.dev);
    expect(e?.fields).toMatchObject({ iommu: "smmu0", StreamID: 0x0200, S2: true, IPA: "0x90000000", InputAddr: hex(IOVA + PAGE) });
  });
});

describe("PRI", () => {
  it("page requests go to the domain's fault sink; the response reaches the device", async () => {
    const b = bench();
    const dev = b.device(0x0500, { ats: true, pri: true });
    const got: Parameters<IopfSink["pageRequest"]>[0][] = [];
    const d = b.drv.allocPaging(dev, NONE, { fault: { pageRequest: (r) => got.push(r) } });
    await b.drv.attach(dev, undefined, d);
    // A recoverable fault for a PRI-capable device with a sink.
    expect(b.drv.translate(dev, undefined, 0x7000n, READ_U)).toMatchObject({ ok: false, reason: "fault", recoverable: true });
    b.drv.pageRequest(dev, { addr: 0x7000n, read: true, write: true, exec: false, priv: false, grpid: 3, last: false });
    b.drv.pageRequest(dev, { addr: 0x8000n, read: true, write: false, exec: true, priv: false, grpid: 3, last: true });
    expect(got).toEqual([
      { dev, grpid: 3, addr: 0x7000n, perm: 3, last: false },
      { dev, grpid: 3, addr: 0x8000n, perm: 5, last: true },
    ]);
    expect(b.responses).toEqual([]);
    b.drv.pageResponse(dev, undefined, 3, "success");
    expect(b.responses).toEqual([{ rid: 0x0500, pasid: undefined, grpid: 3, code: "success" }]);
    b.drv.pageResponse(dev, undefined, 4, "invalid");
    expect(b.responses[1]).toEqual({ rid: 0x0500, pasid: undefined, grpid: 4, code: "invalid" });
  });

  it("without a fault sink the group is refused at once (Response Failure)", async () => {
    const b = bench();
    const dev = b.device(0x0500, { ats: true, pri: true, maxPasidLog2: 4 });
    const d = b.drv.allocPaging(dev, NONE, {});
    await b.drv.attach(dev, undefined, d);
    b.drv.pageRequest(dev, { pasid: 2, addr: 0x7000n, read: true, write: false, exec: false, priv: false, grpid: 9, last: false });
    expect(b.responses).toEqual([]);
    b.drv.pageRequest(dev, { pasid: 2, addr: 0x7000n, read: true, write: false, exec: false, priv: false, grpid: 9, last: true });
    expect(b.responses).toEqual([{ rid: 0x0500, pasid: 2, grpid: 9, code: "failure" }]);
  });

  it("PASID page requests of a nested RID go to the nested domain's sink", async () => {
    const b = bench();
    const n = nestedSetup(b, { ats: true, pri: true, maxPasidLog2: 4 });
    const got: Parameters<IopfSink["pageRequest"]>[0][] = [];
    const nested: NestedDomain = b.drv.allocNested(n.dev, n.parent, n.viommu, 2, n.vste(), { fault: { pageRequest: (r) => got.push(r) } });
    await b.drv.attach(n.dev, undefined, nested);
    b.drv.pageRequest(n.dev, { pasid: 3, addr: 0x1234_5000n, read: false, write: true, exec: false, priv: true, grpid: 1, last: true });
    expect(got).toEqual([{ dev: n.dev, pasid: 3, grpid: 1, addr: 0x1234_5000n, perm: 2 | 8, last: true }]);
    b.drv.pageResponse(n.dev, 3, 1, "success");
    expect(b.responses).toEqual([{ rid: 0x0200, pasid: 3, grpid: 1, code: "success" }]);
  });
});

describe("dirty tracking", () => {
  it("stage 2 (nest parent): S2HA/S2HD, harvest and clear, TLBI after clearing", async () => {
    const b = bench();
    const dev = b.device(0x0600);
    const d = b.drv.allocPaging(dev, { ...PARENT, dirtyTracking: true }, {});
    const f = b.frames(4);
    mapFrames(d, 0x10_0000n, f);
    await b.drv.attach(dev, undefined, d);
    expect(decodeSteFields(readSte(b, 0x0600))).toMatchObject({ S2HA: true, S2HD: true });
    const dirty = (noClear = false) => {
      const out: [bigint, bigint][] = [];
      d.readDirty(0x10_0000n, 4n * PAGE, noClear, (iova, len) => out.push([iova, len]));
      return out;
    };
    d.setDirtyTracking(true);
    expect(dirty()).toEqual([]);
    // A read-only access does not dirty; a write does (the leaf was writable-clean).
    expect(b.drv.translate(dev, undefined, 0x10_0000n, READ_U)).toMatchObject({ ok: true, write: false });
    expect(b.drv.translate(dev, undefined, 0x10_1000n, WRITE_U)).toMatchObject({ ok: true, write: true });
    expect(dirty(true)).toEqual([[0x10_1000n, PAGE]]);
    expect(dirty()).toEqual([[0x10_1000n, PAGE]]);
    expect(dirty()).toEqual([]);
    // After the clear the cached writable translation is gone, so a new write is seen again.
    b.drv.translate(dev, undefined, 0x10_1000n, WRITE_U);
    expect(dirty()).toEqual([[0x10_1000n, PAGE]]);
    // Enabling again starts from a clean snapshot.
    b.drv.translate(dev, undefined, 0x10_3000n, WRITE_U);
    d.setDirtyTracking(false);
    d.setDirtyTracking(true);
    expect(dirty()).toEqual([]);
  });

  it("stage 1: CD.HA/HD and dirty pages of the domain", async () => {
    const b = bench();
    const dev = b.device(0x0601);
    const d = b.drv.allocPaging(dev, { ...NONE, dirtyTracking: true }, {});
    expect(d.stage).toBe(1);
    mapFrames(d, 0x2000n, b.frames(2));
    await b.drv.attach(dev, undefined, d);
    d.setDirtyTracking(true);
    b.drv.translate(dev, undefined, 0x3000n, WRITE_U);
    const out: bigint[] = [];
    d.readDirty(0n, 0x10000n, false, (iova) => out.push(iova));
    expect(out).toEqual([0x3000n]);
  });
});

describe("release and ATS", () => {
  it("releaseDevice: abort STE, ATC flush, no more DMA", async () => {
    const b = bench();
    const dev = b.device(0x0700, { ats: true });
    const d = b.drv.allocPaging(dev, NONE, {});
    mapFrames(d, 0x1000n, b.frames(1));
    await b.drv.attach(dev, undefined, d);
    expect(b.drv.atsTranslate(dev, undefined, 0x1000n, READ_U)).toMatchObject({ status: "success", read: true, size: PAGE });
    b.atc.length = 0;
    b.drv.releaseDevice(dev);
    await b.drv.flush();
    expect(readSte(b, 0x0700)[0]).toBe(1n);
    expect(b.atc).toEqual([{ rid: 0x0700, addr: 0n, size: 1n << 64n, global: true }]);
    expect(b.drv.translatedAllowed(dev)).toBe(false);
    expect(b.drv.translate(dev, undefined, 0x1000n, READ_U)).toMatchObject({ ok: false, reason: "abort" });
  });

  it("a device without ATS: translated traffic refused, ATS requests answered UR", async () => {
    const b = bench();
    const dev = b.device(0x0701);
    const d = b.drv.allocPaging(dev, NONE, {});
    mapFrames(d, 0x1000n, b.frames(1));
    await b.drv.attach(dev, undefined, d);
    expect(b.drv.translatedAllowed(dev)).toBe(false);
    expect(b.drv.atsTranslate(dev, undefined, 0x1000n, READ_U).status).toBe("ur");
    expect(decodeSteFields(readSte(b, 0x0701)).EATS).toBe(0);
  });
});

describe("explain and counters", () => {
  it("walks both stages without side effects", async () => {
    const b = bench();
    const n = nestedSetup(b);
    await b.drv.attach(n.dev, undefined, n.nested);
    const x = b.drv.explain(n.dev, undefined, IOVA + 8n, READ_U);
    const paOut = (n.gpaToPa(n.data[0] as bigint) as bigint) + 8n;
    expect(x.result.startsWith(`PA ${hex(paOut)} (IPA ${hex((n.data[0] as bigint) + 8n)}), 0x1000 bytes, `)).toBe(true);
    expect(x.steps.some((s) => s.startsWith("STE @"))).toBe(true);
    expect(x.steps.filter((s) => s.startsWith("S1 ")).length).toBe(4);
    expect(x.steps.filter((s) => s.startsWith("S2 ")).length).toBeGreaterThan(4);
    expect(b.drv.counters().translations).toBe(0); // explain does not go through the live model
    b.drv.translate(n.dev, undefined, IOVA, READ_U);
    expect(b.drv.counters()).toMatchObject({ translations: 1, iotlb_misses: 1 });
  });
});

function hex(v: bigint): string {
  return `0x${v.toString(16)}`;
}
