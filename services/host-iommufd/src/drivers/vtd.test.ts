// The VT-d host driver against the Vtd model, with a fake DriverEnv: host
// memory from mm/phys.ts, a controllable ATC bus, recorded page group
// responses and host events. Every expected value is what the hardware must
// produce (host frames, fault reasons, descriptor ranges), never what the
// driver happens to return.

import {
  CAP_FIELDS,
  ECAP_FIELDS,
  get,
  mapRange,
  PERM_RW,
  SimplePageAllocator,
  SM_PASID_ENTRY,
  stage2View,
  unmapRange,
  vtdFirstStageConfig,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import { HwCapabilities, HwInfoType } from "@iommufd/proto/iommufd";
import { describe, expect, it } from "vitest";
import { HostMemory } from "../mm/phys.js";
import type { AtcInvalidation, DriverEnv, IopfSink, PciDevice } from "./ops.js";
import { createVtdDriver, type VtdDriverOptions, type VtdPagingDomain } from "./vtd.js";

const RW = { read: true, write: true };
const READ = { kind: "read", privileged: false } as const;
const WRITE = { kind: "write", privileged: false } as const;
const settle = () => new Promise<void>((r) => setTimeout(r, 0));

interface PendingAtc {
  req: AtcInvalidation;
  resolve: () => void;
  reject: (e: unknown) => void;
}

function rig(opts: { caps?: VtdDriverOptions["caps"] } = {}) {
  const memory = new HostMemory(48);
  const atc: PendingAtc[] = [];
  const atcLog: AtcInvalidation[] = [];
  let autoAck = true;
  const responses: { rid: number; pasid: number | undefined; grpid: number; code: string }[] = [];
  const events: { dev: PciDevice | undefined; text: string; fields: Record<string, unknown> }[] = [];
  const env: DriverEnv = {
    memory,
    atcInvalidate(req) {
      atcLog.push(req);
      if (autoAck) return Promise.resolve();
      return new Promise<void>((resolve, reject) => atc.push({ req, resolve, reject }));
    },
    pageGroupResponse(rid, pasid, grpid, code) {
      responses.push({ rid, pasid, grpid, code });
    },
    hostEvent(dev, text, fields) {
      events.push({ dev, text, fields });
    },
  };
  const drv = createVtdDriver("dmar0", env, opts.caps ? { caps: opts.caps } : {});
  const device = (rid: number, o: Partial<Omit<PciDevice, "rid" | "iommu">> = {}): PciDevice => {
    const dev: PciDevice = {
      rid,
      name: `dev${rid.toString(16)}`,
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
  /** `n` user frames (not necessarily contiguous). */
  const frames = (n: number) => Array.from({ length: n }, () => memory.allocPfn());
  return {
    memory,
    drv,
    env,
    device,
    frames,
    atc,
    atcLog,
    responses,
    events,
    manualAtc() {
      autoAck = false;
    },
  };
}

const pfnsAt = (pfns: number[]) => (off: bigint) => pfns[Number(off >> 12n)] as number;
const paOf = (pfn: number) => BigInt(pfn) << 12n;

/** struct iommu_hwpt_vtd_s1. */
function s1Data(pgtbl: bigint, addrWidth = 48, flags = 0n, reserved = 0): Uint8Array {
  const b = new Uint8Array(24);
  const v = new DataView(b.buffer);
  v.setBigUint64(0, flags, true);
  v.setBigUint64(8, pgtbl, true);
  v.setUint32(16, addrWidth, true);
  v.setUint32(20, reserved, true);
  return b;
}

/** struct iommu_hwpt_vtd_s1_invalidate. */
function inv(addr: bigint, npages: bigint, flags = 0, reserved = 0, len = 24): Uint8Array {
  const b = new Uint8Array(Math.max(len, 24));
  const v = new DataView(b.buffer);
  v.setBigUint64(0, addr, true);
  v.setBigUint64(8, npages, true);
  v.setUint32(16, flags, true);
  v.setUint32(20, reserved, true);
  return b.subarray(0, len);
}

const field = (words: bigint[] | undefined, f: { qw: number; hi: number; lo: number }) => Number(get(words ?? [], f));

async function rejection(p: Promise<unknown>): Promise<ErrnoError & { handled?: number }> {
  try {
    await p;
  } catch (e) {
    expect(e).toBeInstanceOf(ErrnoError);
    return e as ErrnoError & { handled?: number };
  }
  throw new Error("expected a rejection");
}

/**
 * A nest parent mapping guest RAM (GPA 0..0x40000 → scattered host frames)
 * and a guest first stage built in guest RAM through the parent's own
 * second-stage tables: IOVA 0x7000_0000 + i·4K → GPA 0x10000 + i·4K.
 */
function nestedSetup(r: ReturnType<typeof rig>, dev: PciDevice, pasidCompatible = false) {
  const parent = r.drv.allocPaging(dev, { nestParent: true, dirtyTracking: false, pasid: pasidCompatible }, {});
  const guest = r.frames(64);
  parent.map(0n, 0x40000n, pfnsAt(guest), RW);
  const gmem = stage2View(r.memory.mem, parent.table.stage);
  const galloc = new SimplePageAllocator(gmem, 0x30000n, 0x10000n);
  const root = galloc.alloc(4096) as bigint;
  const fs = vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 48 });
  if (!fs.ok) throw new Error(fs.error);
  const map = (iova: bigint, gpa: bigint, size: bigint) => {
    const m = mapRange(gmem, fs.stage, iova, gpa, size, { perms: PERM_RW }, { alloc: galloc, maxPageShift: 12 });
    if (!m.ok) throw new Error(m.error);
  };
  const unmap = (iova: bigint, size: bigint) => unmapRange(gmem, fs.stage, iova, size, { alloc: galloc });
  map(0x7000_0000n, 0x10000n, 0x8000n);
  /** Host PA of a GPA. */
  const hpa = (gpa: bigint) => paOf(guest[Number(gpa >> 12n)] as number) + (gpa & 0xfffn);
  return { parent, root, map, unmap, hpa };
}

describe("VT-d driver: bring-up and GET_HW_INFO", () => {
  it("enables the unit like Linux and reports iommu_hw_info_vtd", () => {
    const r = rig();
    const v = r.drv.vtd;
    const enabled = (1n << 31n) | (1n << 30n) | (1n << 26n); // GSTS: TES | RTPS | QIES
    expect(v.readReg(0x1c, 4) & enabled).toBe(enabled);
    expect(v.readReg(0x20) & ~0xfffn).not.toBe(0n); // RTADDR: a root table
    expect((v.readReg(0x20) >> 10n) & 3n).toBe(1n); // TTM = scalable
    expect(v.readReg(0x90) & (1n << 11n)).toBe(1n << 11n); // IQA.DW: 256-bit descriptors
    expect(r.drv.caps).toMatchObject({ dirtyTracking: true, nesting: true, maxPasidLog2: 20, viommuType: 0, nestedDataType: 1, nestedFlags: 12, hwptInvalidateType: 0, viommuInvalidateType: -1, veventqType: 0, pgsizeMin: 4096n });
    expect(r.drv.caps.aperture).toEqual({ start: 0n, last: (1n << 48n) - 1n }); // HAW = the 48-bit host memory

    const plain = r.device(0x0100);
    const rich = r.device(0x0108, { maxPasidLog2: 20, pasidExec: true, pasidPriv: true, ats: true, pri: true });
    const info = r.drv.hwInfo(plain);
    expect(info.type).toBe(HwInfoType.INTEL_VTD);
    expect(info.data.length).toBe(24);
    const d = new DataView(info.data.buffer, info.data.byteOffset, 24);
    expect(d.getUint32(0, true)).toBe(0); // flags: no SPR17 erratum
    expect(d.getUint32(4, true)).toBe(0);
    const cap = d.getBigUint64(8, true);
    const ecap = d.getBigUint64(16, true);
    expect(cap).toBe(v.readReg(0x08));
    expect(ecap).toBe(v.readReg(0x10));
    expect(get([cap], CAP_FIELDS.MGAW)).toBe(47n);
    expect(get([cap], CAP_FIELDS.FS5LP)).toBe(1n);
    expect(get([ecap], ECAP_FIELDS.NEST)).toBe(1n);
    expect(get([ecap], ECAP_FIELDS.SSADS)).toBe(1n);
    expect(get([ecap], ECAP_FIELDS.PSS)).toBe(19n);
    expect(get([ecap], ECAP_FIELDS.SMTS)).toBe(1n);
    expect(info.capabilities).toBe(BigInt(HwCapabilities.DIRTY_TRACKING | HwCapabilities.PCI_ATS_NOT_SUPPORTED));
    expect(r.drv.hwInfo(rich, HwInfoType.INTEL_VTD).capabilities).toBe(
      BigInt(HwCapabilities.DIRTY_TRACKING | HwCapabilities.PCI_PASID_EXEC | HwCapabilities.PCI_PASID_PRIV),
    );
    expect(r.drv.hwInfo(rich, HwInfoType.NONE).type).toBe(HwInfoType.INTEL_VTD);
    expect(() => r.drv.hwInfo(plain, HwInfoType.ARM_SMMUV3)).toThrow(expect.objectContaining({ errno: "EOPNOTSUPP" }));
    expect(() => r.drv.allocViommu(plain, 1, r.drv.allocPaging(plain, { nestParent: true, dirtyTracking: false, pasid: false }, {}), { vevent: () => undefined })).toThrow(
      expect.objectContaining({ errno: "EOPNOTSUPP" }),
    );
  });

  it("without SSADS there is no dirty tracking", () => {
    const r = rig({ caps: { ssads: false } });
    const dev = r.device(0x0100);
    expect(r.drv.caps.dirtyTracking).toBe(false);
    expect(r.drv.hwInfo(dev).capabilities & BigInt(HwCapabilities.DIRTY_TRACKING)).toBe(0n);
    expect(() => r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: true, pasid: false }, {})).toThrow(expect.objectContaining({ errno: "EOPNOTSUPP" }));
  });
});

describe("VT-d driver: paging domains", () => {
  it("blocks DMA until attach, translates to the frames given, flushes the IOTLB on unmap", async () => {
    const r = rig();
    const dev = r.device(0x0300);
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const pfns = r.frames(4);
    dom.map(0x10_0000n, 0x4000n, pfnsAt(pfns), RW);

    // Probed, not attached: the PASID directory has no table yet → blocked.
    const blocked = r.drv.translate(dev, undefined, 0x10_1000n, READ);
    expect(blocked).toMatchObject({ ok: false, reason: "abort", recoverable: false });
    expect(blocked.ok ? "" : blocked.detail).toContain("SM_PDE_P");

    await r.drv.attach(dev, undefined, dom);
    const pe = r.drv.pasidEntry(dev, undefined);
    expect(field(pe, SM_PASID_ENTRY.PGTT)).toBe(0b010);
    expect(field(pe, SM_PASID_ENTRY.DID)).toBe(dom.did);
    expect(BigInt(field(pe, SM_PASID_ENTRY.SSPTPTR)) << 12n).toBe(dom.table.root);

    expect(r.drv.translate(dev, undefined, 0x10_1008n, READ)).toEqual({ ok: true, pa: paOf(pfns[1] as number) + 8n, size: 0x1000n - 8n, write: true });
    expect(r.drv.translate(dev, undefined, 0x10_3ff0n, WRITE)).toEqual({ ok: true, pa: paOf(pfns[3] as number) + 0xff0n, size: 0x10n, write: true });
    // Cached now: the second translation hits the IOTLB.
    const hits = r.drv.counters().iotlbHits as number;
    r.drv.translate(dev, undefined, 0x10_1000n, READ);
    expect(r.drv.counters().iotlbHits).toBe(hits + 1);

    dom.unmap(0x10_1000n, 0x1000n);
    const after = r.drv.translate(dev, undefined, 0x10_1000n, READ);
    expect(after).toMatchObject({ ok: false, reason: "fault", recoverable: false });
    expect(after.ok ? "" : after.detail).toContain("SM_SS_NOT_PRESENT");
    expect(r.drv.translate(dev, undefined, 0x10_2000n, READ)).toMatchObject({ ok: true, pa: paOf(pfns[2] as number) });

    // The fault records reach the host log with their decoded reason.
    await settle();
    const logged = r.events.filter((e) => e.text.startsWith("DMAR:"));
    expect(logged.map((e) => e.fields.reasonName)).toEqual(["SM_PDE_P", "SM_SS_NOT_PRESENT"]);
    expect(logged[1]?.fields).toMatchObject({ sid: 0x0300, addr: 0x10_1000n, type: "read", reason: 0x79 });
    expect(logged[1]?.dev).toBe(dev);

    // Detach: blocked again, fault on the cleared PASID entry.
    await r.drv.attach(dev, undefined, undefined);
    const det = r.drv.translate(dev, undefined, 0x10_2000n, READ);
    expect(det.ok ? "" : det.detail).toContain("SM_PTE_P");
    dom.free();
  });

  it("uses a 2 MiB leaf when the frames are contiguous and aligned, 4 KiB otherwise", async () => {
    const r = rig();
    const dev = r.device(0x0400);
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    let first = r.memory.allocPfn();
    while (first % 512 !== 0) first = r.memory.allocPfn();
    const big = [first, ...r.frames(511)];
    expect(big[511]).toBe(first + 511);
    dom.map(0x4000_0000n, 0x20_0000n, pfnsAt(big), RW);
    const scattered = r.frames(2);
    dom.map(0x5000_0000n, 0x2000n, (off) => (off === 0n ? (scattered[1] as number) : (scattered[0] as number)), { read: true, write: false });
    await r.drv.attach(dev, undefined, dom);
    expect(r.drv.translate(dev, undefined, 0x4012_3450n, READ)).toEqual({ ok: true, pa: paOf(first) + 0x12_3450n, size: 0x20_0000n - 0x12_3450n, write: true });
    expect(r.drv.translate(dev, undefined, 0x5000_0010n, READ)).toEqual({ ok: true, pa: paOf(scattered[1] as number) + 0x10n, size: 0xff0n, write: false });
    const ro = r.drv.translate(dev, undefined, 0x5000_1000n, WRITE);
    expect(ro.ok ? "" : ro.detail).toContain("SM_WRITE");
    // Unmapping the 2 MiB leaf's range drops its IOTLB entry too.
    dom.unmap(0x4000_0000n, 0x20_0000n);
    expect(r.drv.translate(dev, undefined, 0x4012_3450n, READ)).toMatchObject({ ok: false, reason: "fault" });
  });

  it("map is all or nothing", () => {
    const r = rig();
    const dev = r.device(0x0400);
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const pfns = r.frames(4);
    dom.map(0x3000n, 0x1000n, pfnsAt(pfns), RW);
    // 0x1000..0x4fff collides at 0x3000: nothing of it stays mapped...
    expect(() => dom.map(0x1000n, 0x4000n, pfnsAt(pfns), RW)).toThrow(expect.objectContaining({ errno: "EEXIST" }));
    // ...so 0x1000..0x2fff maps again (EEXIST otherwise), and 0x3000 kept its own frame.
    dom.map(0x1000n, 0x2000n, pfnsAt(r.frames(2)), RW);
    expect(() => dom.map(0x4000n, 0x1000n, pfnsAt(r.frames(1)), RW)).not.toThrow();
    expect(dom.table.unmap(0n, 0x10000n)).toBe(0x4000n);
  });

  it("unmap of an ATS device's domain sends the range to its ATC; iotlbSync and attach wait for it", async () => {
    const r = rig();
    r.manualAtc();
    const dev = r.device(0x0500, { ats: true, maxPasidLog2: 8 });
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, {});
    dom.map(0x20_0000n, 0x4000n, pfnsAt(r.frames(4)), RW);
    await r.drv.attach(dev, undefined, dom);
    await r.drv.attach(dev, 9, dom);
    dom.unmap(0x20_1000n, 0x2000n);
    // The IOTLB part is done already; the ATC part is at the device, once per (RID, PASID).
    expect(r.drv.translate(dev, undefined, 0x20_1000n, READ)).toMatchObject({ ok: false });
    expect(r.atc.map((a) => a.req)).toEqual([
      { rid: 0x0500, addr: 0x20_0000n, size: 0x4000n, global: false },
      { rid: 0x0500, pasid: 9, addr: 0x20_0000n, size: 0x4000n, global: false },
    ]);
    let synced = false;
    const sync = dom.iotlbSync().then(() => (synced = true));
    // A first attach (no old entry to tear down) still waits for them.
    let attachedPasid = false;
    const other = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, {});
    const attP = r.drv.attach(dev, 2, other).then(() => (attachedPasid = true));
    await settle();
    expect([synced, attachedPasid]).toEqual([false, false]);
    r.atc.shift()?.resolve();
    await settle();
    expect([synced, attachedPasid]).toEqual([false, false]);
    r.atc.shift()?.resolve();
    await sync;
    await attP;
    expect(field(r.drv.pasidEntry(dev, 2), SM_PASID_ENTRY.DID)).toBe(other.did);
    // Replacing the RID's domain tears the old entry down: a whole-ATC invalidation (RID form), awaited.
    let replaced = false;
    const att = r.drv.attach(dev, undefined, other).then(() => (replaced = true));
    await settle();
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0500, addr: 0n, size: 1n << 64n, global: true }]);
    expect(replaced).toBe(false);
    r.atc.shift()?.resolve();
    await att;
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.DID)).toBe(other.did);
  });

  it("an ATC time-out fails its own batch; batches of other devices abandoned with it are posted again", async () => {
    const r = rig();
    r.manualAtc();
    const x = r.device(0x0510, { ats: true });
    const y = r.device(0x0518, { ats: true });
    const dx = r.drv.allocPaging(x, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const dy = r.drv.allocPaging(y, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    dx.map(0x1000n, 0x1000n, pfnsAt(r.frames(1)), RW);
    dy.map(0x1000n, 0x1000n, pfnsAt(r.frames(1)), RW);
    await r.drv.attach(x, undefined, dx);
    await r.drv.attach(y, undefined, dy);
    dx.unmap(0x1000n, 0x1000n);
    dy.unmap(0x1000n, 0x1000n);
    expect(r.atc.map((a) => a.req.rid)).toEqual([0x0510, 0x0518]);
    const [ax, ay] = r.atc.splice(0);
    ax?.reject(new ErrnoError("ETIMEDOUT", "no completion"));
    expect((await rejection(dx.iotlbSync())).errno).toBe("ETIMEDOUT");
    // y's batch was abandoned by the unit with x's: it went out again.
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0518, addr: 0x1000n, size: 0x1000n, global: false }]);
    ay?.resolve(); // the completion of the abandoned request is ignored
    let ySynced = false;
    const sy = dy.iotlbSync().then(() => (ySynced = true));
    await settle();
    expect(ySynced).toBe(false);
    r.atc.shift()?.resolve();
    await sy;
    expect(r.drv.counters()).toMatchObject({ atcInvalidationTimeouts: 1, qiRestarts: 1 });
    expect(r.drv.vtd.readReg(0x34, 4) & 0x70n).toBe(0n);
    expect(r.events.some((e) => e.text.includes("ICE"))).toBe(false); // the stale completion never reached the unit
  });

  it("a device that ignores an unmap's ATC invalidation: iotlbSync reports ETIMEDOUT, the queue recovers", async () => {
    const r = rig();
    r.manualAtc();
    const dev = r.device(0x0500, { ats: true });
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    dom.map(0x20_0000n, 0x4000n, pfnsAt(r.frames(4)), RW);
    await r.drv.attach(dev, undefined, dom);
    dom.unmap(0x20_0000n, 0x1000n);
    r.atc.shift()?.reject(new ErrnoError("ETIMEDOUT", "no completion"));
    expect((await rejection(dom.iotlbSync())).errno).toBe("ETIMEDOUT");
    expect(r.events.some((e) => e.text.includes("ITE"))).toBe(true);
    expect(r.drv.counters().atcInvalidationTimeouts).toBe(1);
    // ITE was cleared: the next unmap's invalidation goes out and completes.
    dom.unmap(0x20_1000n, 0x1000n);
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0500, addr: 0x20_1000n, size: 0x1000n, global: false }]);
    r.atc.shift()?.resolve();
    await dom.iotlbSync();
    expect(r.drv.vtd.readReg(0x34, 4) & 0x70n).toBe(0n); // no IQE / ICE / ITE left
  });
});

describe("VT-d driver: dirty tracking", () => {
  it("SSADE follows setDirtyTracking; write DMA sets D; readDirty reports and clears", async () => {
    const r = rig();
    const dev = r.device(0x0600);
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: true, pasid: false }, {});
    const pfns = r.frames(8);
    dom.map(0x100_0000n, 0x8000n, pfnsAt(pfns), RW);
    await r.drv.attach(dev, undefined, dom);
    const collect = (noClear: boolean) => {
      const out: [bigint, bigint][] = [];
      dom.readDirty(0x100_0000n, 0x8000n, noClear, (iova, len) => out.push([iova, len]));
      return out;
    };
    expect(() => collect(false)).toThrow(expect.objectContaining({ errno: "EINVAL" })); // not enabled yet
    r.drv.translate(dev, undefined, 0x100_0000n, WRITE); // SSADE = 0: no D

    dom.setDirtyTracking(true);
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.SSADE)).toBe(1);
    expect(collect(false)).toEqual([]);
    // The pre-enable write was cached without D: the flush on enable forces a walk that sets it now.
    r.drv.translate(dev, undefined, 0x100_0010n, WRITE);
    r.drv.translate(dev, undefined, 0x100_5000n, WRITE);
    r.drv.translate(dev, undefined, 0x100_6000n, READ);
    expect(collect(true)).toEqual([
      [0x100_0000n, 0x1000n],
      [0x100_5000n, 0x1000n],
    ]);
    expect(collect(false)).toHaveLength(2);
    expect(collect(false)).toEqual([]);
    // Cleared and flushed: the next write to the same page dirties it again.
    r.drv.translate(dev, undefined, 0x100_5008n, WRITE);
    expect(collect(false)).toEqual([[0x100_5000n, 0x1000n]]);

    // A device attached while tracking is on gets SSADE in its new entry.
    const dev2 = r.device(0x0608);
    await r.drv.attach(dev2, undefined, dom);
    expect(field(r.drv.pasidEntry(dev2, undefined), SM_PASID_ENTRY.SSADE)).toBe(1);
    r.drv.translate(dev2, undefined, 0x100_2000n, WRITE);
    expect(collect(false)).toEqual([[0x100_2000n, 0x1000n]]);
    await r.drv.attach(dev2, undefined, undefined);

    dom.setDirtyTracking(false);
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.SSADE)).toBe(0);
    r.drv.translate(dev, undefined, 0x100_7000n, WRITE);
    dom.setDirtyTracking(true); // enabling clears any stale state
    expect(collect(false)).toEqual([]);
  });

  it("a nest parent's dirty tracking covers DMA through its nested domains", async () => {
    const r = rig();
    const dev = r.device(0x0610);
    const parent = r.drv.allocPaging(dev, { nestParent: true, dirtyTracking: true, pasid: false }, {});
    const guest = r.frames(64);
    parent.map(0n, 0x40000n, pfnsAt(guest), RW);
    const gmem = stage2View(r.memory.mem, parent.table.stage);
    const galloc = new SimplePageAllocator(gmem, 0x30000n, 0x10000n);
    const root = galloc.alloc(4096) as bigint;
    const fs = vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 48 });
    if (!fs.ok) throw new Error(fs.error);
    expect(mapRange(gmem, fs.stage, 0x7000_0000n, 0x10000n, 0x4000n, { perms: PERM_RW }, { alloc: galloc, maxPageShift: 12 }).ok).toBe(true);
    const nested = r.drv.allocNested(dev, parent, undefined, 1, s1Data(root), {});
    await r.drv.attach(dev, undefined, nested);
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.SSADE)).toBe(0);
    parent.setDirtyTracking(true);
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.SSADE)).toBe(1);
    const out: [bigint, bigint][] = [];
    expect(r.drv.translate(dev, undefined, 0x7000_2008n, WRITE)).toMatchObject({ ok: true, pa: paOf(guest[0x12] as number) + 8n });
    parent.readDirty(0n, 0x40000n, false, (iova, len) => out.push([iova, len]));
    // Only the data page: the guest's tables already carry A (and the leaf D), so the walk wrote nothing to them.
    expect(out).toEqual([[0x12000n, 0x1000n]]);
  });

  it("a dirty-tracking domain attaches to the RID only", async () => {
    const r = rig();
    const dev = r.device(0x0600, { maxPasidLog2: 8 });
    const dom = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: true, pasid: true }, {});
    expect((await rejection(r.drv.attach(dev, 5, dom))).errno).toBe("EINVAL");
  });
});

describe("VT-d driver: nested domains", () => {
  it("translates GPA tables through the parent and honours each invalidation kind", async () => {
    const r = rig();
    const dev = r.device(0x0700);
    const n = nestedSetup(r, dev);
    const nested = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root), {});
    await r.drv.attach(dev, undefined, nested);
    const pe = r.drv.pasidEntry(dev, undefined);
    expect(field(pe, SM_PASID_ENTRY.PGTT)).toBe(0b011);
    expect(field(pe, SM_PASID_ENTRY.DID)).toBe(nested.did);
    expect(nested.did).not.toBe(n.parent.did);
    expect(BigInt(field(pe, SM_PASID_ENTRY.FSPTPTR)) << 12n).toBe(n.root);
    expect(BigInt(field(pe, SM_PASID_ENTRY.SSPTPTR)) << 12n).toBe(n.parent.table.root);

    const xlate = (iova: bigint) => {
      const t = r.drv.translate(dev, undefined, iova, READ);
      return t.ok ? t.pa : t.detail;
    };
    expect(xlate(0x7000_1010n)).toBe(n.hpa(0x11010n));

    // The guest remaps IOVA page 1 to GPA 0x20000: stale until invalidated.
    const remap = (iova: bigint, gpa: bigint) => {
      n.unmap(iova, 0x1000n);
      n.map(iova, gpa, 0x1000n);
    };
    remap(0x7000_1000n, 0x20000n);
    expect(xlate(0x7000_1010n)).toBe(n.hpa(0x11010n));
    expect(await nested.invalidate(0, [inv(0x7000_1000n, 1n)])).toBe(1);
    expect(xlate(0x7000_1010n)).toBe(n.hpa(0x20010n));

    // LEAF flag, multi-page range (not aligned to its size: the cover is).
    xlate(0x7000_2000n);
    xlate(0x7000_3000n);
    remap(0x7000_2000n, 0x21000n);
    remap(0x7000_3000n, 0x22000n);
    expect(await nested.invalidate(0, [inv(0x7000_2000n, 2n, 1)])).toBe(1);
    expect(xlate(0x7000_2000n)).toBe(n.hpa(0x21000n));
    expect(xlate(0x7000_3000n)).toBe(n.hpa(0x22000n));

    // Everything: addr 0, npages U64_MAX.
    xlate(0x7000_4000n);
    remap(0x7000_4000n, 0x23000n);
    expect(await nested.invalidate(0, [inv(0n, (1n << 64n) - 1n)])).toBe(1);
    expect(xlate(0x7000_4000n)).toBe(n.hpa(0x23000n));

    // entry_num 0 is a successful probe.
    expect(await nested.invalidate(0, [])).toBe(0);
  });

  it("stops at the first bad entry and reports how many were handled", async () => {
    const r = rig();
    const dev = r.device(0x0700);
    const n = nestedSetup(r, dev);
    const nested = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root), {});
    await r.drv.attach(dev, undefined, nested);
    const fail = async (dataType: number, entries: Uint8Array[]) => {
      const e = await rejection(nested.invalidate(dataType, entries));
      return [e.errno, e.handled];
    };
    expect(await fail(1, [])).toEqual(["EINVAL", 0]); // data type ≠ VTD_S1, even with no entries
    expect(await fail(0, [inv(0n, 1n), inv(0x1000n, 1n, 2), inv(0n, 1n)])).toEqual(["EOPNOTSUPP", 1]);
    expect(await fail(0, [inv(0n, 1n), inv(0n, 1n), inv(0n, 1n, 0, 7)])).toEqual(["EOPNOTSUPP", 2]);
    expect(await fail(0, [inv(0x1800n, 1n)])).toEqual(["EINVAL", 0]);
    expect(await fail(0, [inv(0n, 1n), inv(0x1000n, (1n << 64n) - 1n)])).toEqual(["EINVAL", 1]);
    expect(await fail(0, [inv(0n, 1n, 0, 0, 16)])).toEqual(["EINVAL", 0]);
    expect(await fail(0, [inv(0n, 1n), inv(0n, 1n, 0, 0, 32)])).toEqual(["EINVAL", 1]);
  });

  it("invalidates the device TLB of an ATS device per PASID and waits for it; a time-out is ETIMEDOUT", async () => {
    const r = rig();
    r.manualAtc();
    const dev = r.device(0x0800, { ats: true, maxPasidLog2: 20 });
    const n = nestedSetup(r, dev, true);
    const nested = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root), {});
    await r.drv.attach(dev, 5, nested);
    expect(r.drv.translate(dev, 5, 0x7000_0000n, READ)).toMatchObject({ ok: true, pa: n.hpa(0x10000n) });
    const ats = r.drv.atsTranslate(dev, 5, 0x7000_0000n, READ);
    expect(ats).toMatchObject({ status: "success", translated: n.hpa(0x10000n), size: 0x1000n, read: true, write: false });
    expect(r.drv.translatedAllowed(dev)).toBe(true);

    let done: number | undefined;
    const p = nested.invalidate(0, [inv(0x7000_0000n, 2n)]).then((h) => (done = h));
    await settle();
    expect(done).toBeUndefined();
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0800, pasid: 5, addr: 0x7000_0000n, size: 0x2000n, global: false }]);
    r.atc.shift()?.resolve();
    await p;
    expect(done).toBe(1);

    // A device that never answers: the entry fails with ETIMEDOUT, nothing handled.
    const q = nested.invalidate(0, [inv(0n, (1n << 64n) - 1n), inv(0n, 1n)]);
    await settle();
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0800, pasid: 5, addr: 0n, size: 1n << 64n, global: true }]);
    r.atc.shift()?.reject(new ErrnoError("ETIMEDOUT", "no completion"));
    const e = await rejection(q);
    expect([e.errno, e.handled]).toEqual(["ETIMEDOUT", 0]);
    // The queue runs again afterwards.
    const again = nested.invalidate(0, [inv(0x7000_0000n, 1n)]);
    await settle();
    r.atc.shift()?.resolve();
    expect(await again).toBe(1);
  });

  it("a parent unmap flushes the nested DID's IOTLB entries and the whole ATC of nested ATS devices", async () => {
    const r = rig();
    r.manualAtc();
    const dev = r.device(0x0900, { ats: true });
    const n = nestedSetup(r, dev);
    const nested = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root), {});
    const att = r.drv.attach(dev, undefined, nested);
    await att;
    expect(r.drv.translate(dev, undefined, 0x7000_2000n, READ)).toMatchObject({ ok: true, pa: n.hpa(0x12000n) });
    // The host unmaps the guest page behind IOVA 0x7000_2000 (GPA 0x12000).
    n.parent.unmap(0x12000n, 0x1000n);
    const t = r.drv.translate(dev, undefined, 0x7000_2000n, READ);
    expect(t.ok ? "" : t.detail).toContain("SM_SS_NOT_PRESENT");
    expect(r.atc.map((a) => a.req)).toEqual([{ rid: 0x0900, addr: 0n, size: 1n << 64n, global: true }]);
    r.atc.shift()?.resolve();
    await n.parent.iotlbSync();
  });

  it("checks iommu_hwpt_vtd_s1 at allocation (type, length, parent) and at attach (content)", async () => {
    const r = rig();
    const dev = r.device(0x0a00, { maxPasidLog2: 8 });
    const n = nestedSetup(r, dev);
    const plain = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const alloc = (parent: VtdPagingDomain, type: number, data: Uint8Array) => () => r.drv.allocNested(dev, parent, undefined, type, data, {});
    expect(alloc(n.parent, 2, s1Data(n.root))).toThrow(expect.objectContaining({ errno: "EOPNOTSUPP" }));
    expect(alloc(plain, 1, s1Data(n.root))).toThrow(expect.objectContaining({ errno: "EINVAL" }));
    expect(alloc(n.parent, 1, s1Data(n.root).subarray(0, 16))).toThrow(expect.objectContaining({ errno: "EINVAL" }));
    expect(alloc(n.parent, 1, new Uint8Array(32))).toThrow(expect.objectContaining({ errno: "EINVAL" }));

    const good = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    good.map(0x1000n, 0x1000n, pfnsAt(r.frames(1)), RW);
    await r.drv.attach(dev, undefined, good);
    for (const data of [s1Data(n.root, 39), s1Data(n.root, 48, 8n), s1Data(n.root, 48, 0n, 1), s1Data(n.root + 0x10n), s1Data(1n << 48n)]) {
      const nested = r.drv.allocNested(dev, n.parent, undefined, 1, data, {}); // accepted at allocation
      expect((await rejection(r.drv.attach(dev, undefined, nested))).errno).toBe("EINVAL");
      // Replace failed: the old domain stays attached and translating.
      expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.DID)).toBe(good.did);
      expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true });
      nested.free();
    }
    // SRE + WPE, 5-level: accepted and programmed (WPE only with SRE).
    const sre = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root, 57, 0b101n), {});
    await r.drv.attach(dev, undefined, sre);
    const pe = r.drv.pasidEntry(dev, undefined);
    expect([field(pe, SM_PASID_ENTRY.SRE), field(pe, SM_PASID_ENTRY.WPE), field(pe, SM_PASID_ENTRY.EAFE), field(pe, SM_PASID_ENTRY.FLPM)]).toEqual([1, 1, 0, 1]);
    const wpeOnly = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root, 48, 0b100n), {});
    await r.drv.attach(dev, undefined, wpeOnly);
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.WPE)).toBe(0);
    // The unit without 5-level first stage refuses 57 at attach.
    const r5 = rig({ caps: { fs5lp: false } });
    const dev5 = r5.device(0x0a00);
    const n5 = nestedSetup(r5, dev5);
    const d5 = r5.drv.allocNested(dev5, n5.parent, undefined, 1, s1Data(n5.root, 57), {});
    expect((await rejection(r5.drv.attach(dev5, undefined, d5))).errno).toBe("EINVAL");
  });
});

describe("VT-d driver: attach", () => {
  it("replace is atomic: the new domain translates at once, a timed-out teardown keeps the old one", async () => {
    const r = rig();
    const dev = r.device(0x0b00, { ats: true });
    const a = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const b = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const [fa, fb] = r.frames(2) as [number, number];
    a.map(0x1000n, 0x1000n, () => fa, RW);
    b.map(0x1000n, 0x1000n, () => fb, RW);
    await r.drv.attach(dev, undefined, a);
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fa) });
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fa) }); // cached
    await r.drv.attach(dev, undefined, b);
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fb) }); // no stale A entry
    expect(r.atcLog.at(-1)).toEqual({ rid: 0x0b00, addr: 0n, size: 1n << 64n, global: true });
    expect(() => a.free()).not.toThrow();
    expect(() => b.free()).toThrow(expect.objectContaining({ errno: "EBUSY" }));

    // The device ignores the teardown's ATC invalidation: ETIMEDOUT, B stays.
    r.manualAtc();
    const c = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    const p = r.drv.attach(dev, undefined, c);
    await settle();
    r.atc.shift()?.reject(new ErrnoError("ETIMEDOUT", "no completion"));
    expect((await rejection(p)).errno).toBe("ETIMEDOUT");
    expect(field(r.drv.pasidEntry(dev, undefined), SM_PASID_ENTRY.DID)).toBe(b.did);
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fb) });
    // Detach never fails: it logs the time-out and blocks DMA.
    const d = r.drv.attach(dev, undefined, undefined);
    await settle();
    r.atc.shift()?.reject(new ErrnoError("ETIMEDOUT", "no completion"));
    await d;
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: false, reason: "abort" });
    expect(r.events.some((e) => e.text.includes("detach failed"))).toBe(true);
  });

  it("PASID attachments are independent of the RID; PASIDs beyond the device's width are refused", async () => {
    const r = rig();
    const dev = r.device(0x0c00, { maxPasidLog2: 10 });
    const a = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, {});
    const b = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, {});
    const [fa, fb] = r.frames(2) as [number, number];
    a.map(0x1000n, 0x1000n, () => fa, RW);
    b.map(0x1000n, 0x1000n, () => fb, RW);
    await r.drv.attach(dev, undefined, a);
    await r.drv.attach(dev, 1000, b);
    expect(r.drv.translate(dev, undefined, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fa) });
    expect(r.drv.translate(dev, 1000, 0x1000n, READ)).toMatchObject({ ok: true, pa: paOf(fb) });
    expect(r.drv.translate(dev, 7, 0x1000n, READ)).toMatchObject({ ok: false, reason: "abort" });
    expect((await rejection(r.drv.attach(dev, 1024, b))).errno).toBe("EINVAL");
    const nopasid = r.device(0x0c08);
    expect((await rejection(r.drv.attach(nopasid, 1, b))).errno).toBe("EINVAL");
    const t = r.drv.translate(nopasid, 1, 0x1000n, READ);
    expect(t.ok ? "" : t.detail).toContain("SM_CTX_PASIDE");
  });

  it("release clears the context entry", async () => {
    const r = rig();
    const dev = r.device(0x0d00);
    const a = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: false }, {});
    a.map(0x1000n, 0x1000n, pfnsAt(r.frames(1)), RW);
    await r.drv.attach(dev, undefined, a);
    const inUse = r.memory.inUse;
    r.drv.releaseDevice(dev);
    const t = r.drv.translate(dev, undefined, 0x1000n, READ);
    expect(t.ok ? "" : t.detail).toContain("SM_CTX_P");
    expect(r.memory.inUse).toBe(inUse - 2); // its PASID directory and PASID table
    a.free();
    expect(() => r.drv.probeDevice(dev)).not.toThrow();
  });
});

describe("VT-d driver: page requests", () => {
  it("drains the PRQ into the domain's fault sink and answers through the invalidation queue", async () => {
    const r = rig();
    const dev = r.device(0x0e00, { maxPasidLog2: 20, ats: true, pri: true });
    const got: Parameters<IopfSink["pageRequest"]>[0][] = [];
    const sink: IopfSink = { pageRequest: (req) => got.push(req) };
    const withSink = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, { fault: sink });
    const noSink = r.drv.allocPaging(dev, { nestParent: false, dirtyTracking: false, pasid: true }, {});
    await r.drv.attach(dev, 3, withSink);
    await r.drv.attach(dev, 4, noSink);

    // An unmapped page on a PRI device is recoverable; the same on a device without PRI is not.
    expect(r.drv.translate(dev, 3, 0x1234_5000n, WRITE)).toMatchObject({ ok: false, reason: "fault", recoverable: true });
    const plain = r.device(0x0e08, { maxPasidLog2: 20 });
    await r.drv.attach(plain, 3, withSink);
    expect(r.drv.translate(plain, 3, 0x1234_5000n, WRITE)).toMatchObject({ ok: false, recoverable: false });

    const req = { pasid: 3, read: true, write: false, exec: false, priv: false, grpid: 7 };
    r.drv.pageRequest(dev, { ...req, addr: 0x1234_5000n, last: false });
    r.drv.pageRequest(dev, { ...req, addr: 0x1234_6000n, write: true, last: true });
    expect(got).toEqual([]); // delivered by the PRQ "IRQ thread"
    await settle();
    expect(got).toEqual([
      { dev, pasid: 3, grpid: 7, addr: 0x1234_5000n, perm: 1, last: false },
      { dev, pasid: 3, grpid: 7, addr: 0x1234_6000n, perm: 3, last: true },
    ]);
    expect(r.drv.vtd.readReg(0xc0)).toBe(r.drv.vtd.readReg(0xc8)); // PQH caught up with PQT
    r.drv.pageResponse(dev, 3, 7, "success");
    expect(r.responses).toEqual([{ rid: 0x0e00, pasid: 3, grpid: 7, code: "success" }]);

    // No sink on PASID 4: the group is answered INVALID at once; a stop marker gets nothing.
    r.drv.pageRequest(dev, { ...req, pasid: 4, grpid: 9, addr: 0x5000n, last: true });
    r.drv.pageRequest(dev, { ...req, pasid: 4, grpid: 10, addr: 0x5000n, read: false, last: true });
    // Linux refuses privileged requests.
    r.drv.pageRequest(dev, { ...req, grpid: 11, addr: 0x6000n, priv: true, last: true });
    await settle();
    expect(r.responses.slice(1)).toEqual([
      { rid: 0x0e00, pasid: 4, grpid: 9, code: "invalid" },
      { rid: 0x0e00, pasid: 3, grpid: 11, code: "invalid" },
    ]);
    expect(got).toHaveLength(2);

    // A device without PRI: the unit itself answers (context PRE = 0).
    r.drv.pageRequest(plain, { ...req, grpid: 12, addr: 0x7000n, last: true });
    expect(r.responses.at(-1)).toEqual({ rid: 0x0e08, pasid: 3, grpid: 12, code: "invalid" });
  });
});

describe("VT-d driver: introspection", () => {
  it("explain walks without side effects; counters come from the unit and the queues", async () => {
    const r = rig();
    const dev = r.device(0x0f00);
    const n = nestedSetup(r, dev);
    const nested = r.drv.allocNested(dev, n.parent, undefined, 1, s1Data(n.root), {});
    await r.drv.attach(dev, undefined, nested);
    const before = r.drv.counters();
    const x = r.drv.explain(dev, undefined, 0x7000_1008n, READ);
    expect(x.result).toContain(`0x${n.hpa(0x11008n).toString(16)}`);
    expect(x.steps.some((s) => s.startsWith("context-entry"))).toBe(true);
    expect(x.steps.some((s) => s.startsWith("pasid-entry"))).toBe(true);
    expect(x.steps.filter((s) => s.startsWith("S1 ")).length).toBe(4);
    const miss = r.drv.explain(dev, undefined, 0x6000_0000n, READ);
    expect(miss.result).toContain("SM_FS_P");
    expect(r.drv.counters().translations).toBe(before.translations);
    await settle();
    expect(r.events.filter((e) => e.text.startsWith("DMAR:"))).toEqual([]);
    expect(r.drv.counters()).toMatchObject({ devices: 1, domainIds: 2 });
  });
});
