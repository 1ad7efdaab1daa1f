// device-sim against the real host, no guest: a test client plays the VMM
// (session, guest RAM in an IOAS, HWPTs) and drives the device through its
// device/v1 control service. DMA through stage-2-only and nested
// configurations, the ATC hit path, ATC invalidation on unmap, a PRI round
// trip whose retry succeeds, and a misbehaving device contained.
import { PERM_RW, SimplePageAllocator, mapRange, vtdFirstStageConfig } from "@iommufd/hw";
import { Bus, createClient, createLogger, subjects } from "@iommufd/kit";
import { DmaStatus, type IopfRecord, IopfRecordSchema, PageResponseSchema } from "@iommufd/proto/bus";
import { Device, DmaKind } from "@iommufd/proto/device";
import { HwptAllocFlags, HwptDataType, HwptInvalidateDataType, IoasMapFlags, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import { GuestRam, TestTopology, openSession } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MiB = 1n << 20n;
const FIXED = IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA;
const ENDPOINTS = {
  smmu: { rid: 0x0018, iommu: "smmu0" },
  vtd: { rid: 0x0020, iommu: "dmar0" },
  bad: { rid: 0x0028, iommu: "dmar0" },
};
let topo: TestTopology;
let bus: Bus;
let dev: ReturnType<typeof createClient<typeof Device>>["rpc"];

beforeAll(async () => {
  const args = Object.entries(ENDPOINTS).flatMap(([name, e]) => ["--endpoint", `name=${name},rid=0x${e.rid.toString(16)},iommu=${e.iommu},pasid=8,ats=1,atc=64,pri=1,prq=16`]);
  topo = await TestTopology.start([{ kind: "host-iommufd" }, { kind: "device-sim", name: "devsim", args }], { logDir: ".tmp/logs/device-host" });
  bus = await Bus.connect({ url: topo.natsUrl, name: "test-vmm", log: createLogger("test", "silent") });
  dev = createClient(Device, topo.get("devsim").address).rpc;
  // endpoints register asynchronously: wait until the host lists them
  const admin = (await openSession(topo.get("host-iommufd").address)).admin;
  for (let i = 0; i < 100; i++) {
    const inv = await admin.inventory({});
    if (Object.values(ENDPOINTS).every((e) => inv.devices.some((d) => d.rid === e.rid))) break;
    await new Promise((r) => setTimeout(r, 100));
  }
}, 90_000);

afterAll(async () => {
  await bus?.close();
  await topo?.stop();
});

/** A VM's memory: 16 MiB memfd at GPA 0 in an IOAS, plus a separate 64 KiB area at 0x1000000 for unmap tests. */
async function vm(rid: number) {
  const s = await openSession(topo.get("host-iommufd").address);
  const { fd } = await s.io.memfdCreate({ size: 17n * MiB });
  const { addr: va } = await s.io.mmap({ length: 17n * MiB, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.SHARED, fd });
  const { outIoasId: ioas } = await s.io.ioasAlloc({});
  await s.io.ioasMapFile({ ioasId: ioas, flags: FIXED, fd, start: 0n, length: 16n * MiB, iova: 0n });
  await s.io.ioasMapFile({ ioasId: ioas, flags: FIXED, fd, start: 16n * MiB, length: 0x10000n, iova: 16n * MiB });
  const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
  return { s, ioas, devId: outDevid, ram: new GuestRam(bus, s.sessionId, va) };
}

const payload = new TextEncoder().encode("device-sim through the real host");
const stats = async (rid: number) => (await dev.stats({ rid })).endpoints[0];

describe("device-sim with the real host", () => {
  for (const kind of ["smmu", "vtd"] as const) {
    const { rid } = ENDPOINTS[kind];
    it(`${kind}: stage-2-only DMA, the ATC hit path, ATC invalidation on unmap`, { timeout: 60_000 }, async () => {
      const { s, ioas, devId, ram } = await vm(rid);
      const { outHwptId } = await s.io.hwptAlloc({ devId, ptId: ioas, flags: HwptAllocFlags.NEST_PARENT });
      await s.io.deviceAttach({ devId, ptId: outHwptId });

      const w = await dev.dma({ rid, kind: DmaKind.WRITE, iova: 0x10000n, data: payload });
      expect(w.status).toBe(DmaStatus.OK);
      expect(await ram.readRemote(0x10000n, payload.length)).toEqual(payload);
      const r = await dev.dma({ rid, kind: DmaKind.READ, iova: 0x10000n, length: BigInt(payload.length) });
      expect(r.data).toEqual(payload);

      // ATS: the first access asks for a translation; the next ones hit the device's ATC.
      const base = 16n * MiB;
      await dev.dma({ rid, kind: DmaKind.WRITE, iova: base, data: payload, useAts: true });
      const before = await stats(rid);
      for (let i = 0; i < 20; i++) {
        const x = await dev.dma({ rid, kind: DmaKind.READ, iova: base, length: BigInt(payload.length), useAts: true });
        expect(x.data).toEqual(payload);
      }
      const after = await stats(rid);
      expect(after?.atsRequests).toBe(before?.atsRequests);
      expect(Number((after?.atcHits ?? 0n) - (before?.atcHits ?? 0n))).toBeGreaterThanOrEqual(20);

      // Unmapping invalidates the device's ATC before the unmap returns; the next access faults.
      const inv = (await stats(rid))?.atcInvalidations ?? 0n;
      await s.io.ioasUnmap({ ioasId: ioas, iova: base, length: 0x10000n });
      expect((await stats(rid))?.atcInvalidations).toBeGreaterThan(inv);
      expect((await dev.atcDump({ rid })).entries.some((e) => e.untranslatedAddr === base)).toBe(false);
      const gone = await dev.dma({ rid, kind: DmaKind.READ, iova: base, length: 8n, useAts: true });
      expect(gone.status).not.toBe(DmaStatus.OK);
      await s.close();
    });
  }

  it("vtd: nested with PRI — the device faults, the VMM maps the page and answers, the retry succeeds", { timeout: 60_000 }, async () => {
    const { rid } = ENDPOINTS.vtd;
    const { s, ioas, devId, ram } = await vm(rid);
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId, ptId: ioas, flags: HwptAllocFlags.NEST_PARENT });
    const alloc = new SimplePageAllocator(ram, 0x100000n, 0x100000n);
    const root = alloc.alloc(4096) as bigint;
    const fs = vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 48 });
    if (!fs.ok) throw new Error(fs.error);
    mapRange(ram, fs.stage, 0x4000_0000n, 0x200000n, 0x1000n, { perms: PERM_RW }, { alloc, maxPageShift: 12 });
    await ram.flush();
    const { outFaultId: faultId } = await s.io.faultQueueAlloc({});
    const { outHwptId: nested } = await s.io.hwptAlloc({
      devId,
      ptId: parent,
      flags: HwptAllocFlags.FAULT_ID_VALID,
      faultId,
      dataType: HwptDataType.VTD_S1,
      dataLen: 24,
      data: { case: "vtdS1", value: { flags: 0n, pgtblAddr: root, addrWidth: 48, reserved: 0 } },
    });
    await s.io.deviceAttach({ devId, ptId: nested });
    expect((await dev.dma({ rid, kind: DmaKind.WRITE, iova: 0x4000_0000n, data: payload, useAts: true })).status).toBe(DmaStatus.OK);

    // The VMM side: on the page request, map the page in the guest's first stage, invalidate, answer SUCCESS.
    const handled = new Promise<IopfRecord>((resolve) => {
      const sub = bus.subscribe(subjects.fault(s.sessionId, faultId), IopfRecordSchema, async (rec) => {
        sub.unsubscribe();
        mapRange(ram, fs.stage, rec.addr & ~0xfffn, 0x300000n, 0x1000n, { perms: PERM_RW }, { alloc, maxPageShift: 12 });
        await ram.flush();
        await s.io.hwptInvalidate({
          hwptId: nested,
          dataType: HwptInvalidateDataType.VTD_S1,
          entryLen: 24,
          entryNum: 1,
          entries: [{ entry: { case: "vtdS1", value: { addr: rec.addr & ~0xfffn, npages: 1n, flags: 0, reserved: 0 } } }],
        });
        bus.publish(subjects.faultResp(s.sessionId, faultId), PageResponseSchema, { sessionId: s.sessionId, faultId, seq: 1n, cookie: rec.cookie, code: 0 });
        resolve(rec);
      });
    });
    const w = await dev.dma({ rid, kind: DmaKind.WRITE, iova: 0x4000_5000n, data: payload, useAts: true });
    const rec = await handled;
    expect(rec.devId).toBe(devId);
    expect(rec.addr & ~0xfffn).toBe(0x4000_5000n);
    expect(w.status).toBe(DmaStatus.OK);
    expect(w.pageRequests).toBeGreaterThanOrEqual(1);
    expect(w.retries).toBeGreaterThanOrEqual(1);
    expect(await ram.readRemote(0x300000n, payload.length)).toEqual(payload);
    await s.close();
  });

  it("a device that drops ATC invalidations is contained: the unmap completes, its ATS is cut off", { timeout: 60_000 }, async () => {
    const { rid } = ENDPOINTS.bad;
    const { s, ioas, devId } = await vm(rid);
    await s.admin.setTunables({ tunables: { atcInvalidationTimeoutMs: 300 } });
    await s.io.deviceAttach({ devId, ptId: ioas });
    const base = 16n * MiB;
    expect((await dev.dma({ rid, kind: DmaKind.WRITE, iova: base, data: payload, useAts: true })).status).toBe(DmaStatus.OK);
    await dev.setMisbehaviour({ rid, misbehaviour: { dropAtcInvalidations: true } });
    const { length } = await s.io.ioasUnmap({ ioasId: ioas, iova: base, length: 0x10000n });
    expect(length).toBe(0x10000n);
    // Its ATC still holds the stale translation; the host refuses translated requests from it.
    expect((await dev.atcDump({ rid })).entries.length).toBeGreaterThan(0);
    const stale = await dev.dma({ rid, kind: DmaKind.READ, iova: base, length: 8n, useAts: true });
    expect(stale.status).toBe(DmaStatus.UR);
    expect(stale.data.length).toBe(0);
    const metrics = (await s.admin.metrics({})).text;
    expect(metrics).toMatch(/iommufd_dataplane_total\{[^}]*counter="atcTimeouts"[^}]*\} [1-9]/);
    await dev.setMisbehaviour({ rid, misbehaviour: {} });
    await s.close();
  });
});
