// Cross-process nested translation, host only: a NATS client registers as a
// PCIe device and DMAs through nested configurations whose stage-1 tables a
// test client wrote into guest RAM over the bus — for SMMUv3 (vIOMMU, vSTE,
// guest CD table) and VT-d (nested PASID entry from VTD_S1 data). Each fault
// kind is triggered once; vEVENTQ and FAULT records arrive on NATS with the
// virtual IDs.
import { PERM_R, PERM_RW, SimplePageAllocator, armStage1Config, encodeCd, mapRange, vtdFirstStageConfig } from "@iommufd/hw";
import { Bus, createLogger, subjects } from "@iommufd/kit";
import {
  DeviceRegisterReplySchema,
  DeviceRegisterSchema,
  DmaBatchResultSchema,
  DmaBatchSchema,
  DmaOpKind,
  DmaStatus,
  FaultKind,
  FaultRoute,
  type IopfRecord,
  IopfRecordSchema,
  type PageGroupResponse,
  PageGroupResponseSchema,
  PageRequestSchema,
  PageResponseSchema,
  PrgResponseCode,
  type VeventRecord,
  VeventRecordSchema,
} from "@iommufd/proto/bus";
import { HwptAllocFlags, HwptDataType, IoasMapFlags, MmapFlags, MmapProt, VeventqType, ViommuType } from "@iommufd/proto/iommufd";
import { GuestRam, TestTopology, openSession } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const MiB = 1n << 20n;
const GUEST_RAM = 16n * MiB;
let topo: TestTopology;
let bus: Bus;

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }]);
  bus = await Bus.connect({ url: topo.natsUrl, name: "test-device", log: createLogger("test", "silent") });
}, 60_000);

afterAll(async () => {
  await bus?.close();
  await topo?.stop();
});

/** A VM's memory on the host: memfd guest RAM mapped at IOVA = GPA into an IOAS, and a device registered on the bus. */
async function vm(iommuId: string, rid: number) {
  const s = await openSession(topo.get("host-iommufd").address, { clientName: `vm-${iommuId}` });
  const { fd } = await s.io.memfdCreate({ name: "guest-ram", size: GUEST_RAM });
  const { addr: va } = await s.io.mmap({ length: GUEST_RAM, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.SHARED, fd });
  const { outIoasId: ioas } = await s.io.ioasAlloc({});
  await s.io.ioasMapFile({ ioasId: ioas, flags: IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA, fd, start: 0n, length: GUEST_RAM, iova: 0n });
  const reg = await bus.request(
    subjects.register,
    DeviceRegisterSchema,
    { seq: 1n, rid, name: `bus-dev-${rid.toString(16)}`, process: "test-device", iommuId, maxPasidLog2: 8, pri: true, ats: true, priOutstandingCapacity: 8, maxBatch: 64 },
    DeviceRegisterReplySchema,
  );
  expect(reg.iommuId).toBe(iommuId);
  const { outDevid: dev } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
  const { outHwptId: parent } = await s.io.hwptAlloc({ devId: dev, ptId: ioas, flags: HwptAllocFlags.NEST_PARENT });
  const ram = new GuestRam(bus, s.sessionId, va);
  return { s, ioas, dev, parent, ram, va };
}

async function dma(rid: number, ops: { kind: DmaOpKind; addr: bigint; data?: Uint8Array; length?: number }[]) {
  const r = await bus.request(
    subjects.dma(rid),
    DmaBatchSchema,
    { rid, seq: 1n, ops: ops.map((o) => ({ kind: o.kind, addr: o.addr, data: o.data ?? new Uint8Array(0), length: o.length ?? 0 })) },
    DmaBatchResultSchema,
  );
  return r.results;
}

/** Collect messages published on `subject` until `n` arrived or `ms` passed. */
function collect<T>(subject: string, schema: Parameters<Bus["subscribe"]>[1], n: number, ms = 3000): Promise<T[]> {
  return new Promise((resolve) => {
    const got: T[] = [];
    const sub = bus.subscribe(subject, schema, (m) => {
      got.push(m as T);
      if (got.length >= n) done();
    });
    const timer = setTimeout(done, ms);
    function done() {
      clearTimeout(timer);
      sub.unsubscribe();
      resolve(got);
    }
  });
}

const hello = new TextEncoder().encode("hello, nested world");

describe("nested translation through the host, device on the bus", () => {
  it("VT-d: guest first stage over host second stage, faults, and PRI through the FAULT queue", { timeout: 60_000 }, async () => {
    const rid = 0x0600;
    const { s, dev, parent, ram } = await vm("dmar0", rid);
    // Guest first-stage tables at GPA 0x100000..; data pages at GPA 0x200000 (RW) and 0x300000 (RO).
    const alloc = new SimplePageAllocator(ram, 0x100000n, 0x100000n);
    const root = alloc.alloc(4096) as bigint;
    const fs = vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: 48 });
    if (!fs.ok) throw new Error(fs.error);
    const map = (iova: bigint, gpa: bigint, size: bigint, perms: number) =>
      expect(mapRange(ram, fs.stage, iova, gpa, size, { perms }, { alloc, maxPageShift: 12 }).ok).toBe(true);
    map(0x4000_0000n, 0x200000n, 0x4000n, PERM_RW);
    map(0x4001_0000n, 0x300000n, 0x1000n, PERM_R);
    map(0x4002_0000n, 0x1_0000_0000n, 0x1000n, PERM_RW); // a GPA outside guest RAM: stage 2 faults
    await ram.flush();

    const { outFaultId: faultId } = await s.io.faultQueueAlloc({});
    const { outHwptId: nested } = await s.io.hwptAlloc({
      devId: dev,
      ptId: parent,
      flags: HwptAllocFlags.FAULT_ID_VALID,
      faultId,
      dataType: HwptDataType.VTD_S1,
      dataLen: 24,
      data: { case: "vtdS1", value: { flags: 0n, pgtblAddr: root, addrWidth: 48, reserved: 0 } },
    });
    await s.io.deviceAttach({ devId: dev, ptId: nested });

    const [w] = await dma(rid, [{ kind: DmaOpKind.WRITE, addr: 0x4000_0010n, data: hello }]);
    expect(w?.status).toBe(DmaStatus.OK);
    expect(await ram.readRemote(0x200010n, hello.length)).toEqual(hello);
    const [r] = await dma(rid, [{ kind: DmaOpKind.READ, addr: 0x4000_0010n, length: hello.length }]);
    expect(r?.data).toEqual(hello);

    const [unmapped, readOnly, s2] = await dma(rid, [
      { kind: DmaOpKind.READ, addr: 0x5000_0000n, length: 8 },
      { kind: DmaOpKind.WRITE, addr: 0x4001_0000n, data: hello },
      { kind: DmaOpKind.READ, addr: 0x4002_0000n, length: 8 },
    ]);
    expect(unmapped?.status).toBe(DmaStatus.FAULT);
    expect(unmapped?.fault?.kind).toBe(FaultKind.TRANSLATION);
    expect(unmapped?.fault?.stage).toBe(1);
    expect(readOnly?.status).toBe(DmaStatus.FAULT);
    expect(readOnly?.fault?.kind).toBe(FaultKind.PERMISSION);
    expect(s2?.status).toBe(DmaStatus.FAULT);
    expect(s2?.fault?.stage).toBe(2);

    // PRI: a page request for the unmapped page goes to the FAULT queue with the DEVICE's ID; the response reaches the device.
    const faults = collect<IopfRecord>(subjects.fault(s.sessionId, faultId), IopfRecordSchema, 1);
    const responses = collect<PageGroupResponse>(subjects.priResp(rid), PageGroupResponseSchema, 1);
    bus.publish(subjects.pri(rid), PageRequestSchema, { rid, seq: 1n, addr: 0x5000_0000n, r: true, prgIndex: 7, last: true });
    const [rec] = await faults;
    expect(rec?.devId).toBe(dev);
    expect(rec?.addr).toBe(0x5000_0000n);
    expect(rec?.grpid).toBe(7);
    bus.publish(subjects.faultResp(s.sessionId, faultId), PageResponseSchema, { sessionId: s.sessionId, faultId, seq: 1n, cookie: rec?.cookie ?? 0, code: 0 });
    const [resp] = await responses;
    expect(resp?.prgIndex).toBe(7);
    expect(resp?.responseCode).toBe(PrgResponseCode.SUCCESS);
    await s.close();
  });

  it("SMMUv3: guest CD + stage 1 over host stage 2 via vIOMMU; vEVENTQ records carry the vSID", { timeout: 60_000 }, async () => {
    const rid = 0x0700;
    const vsid = 0x18n;
    const { s, dev, parent, ram } = await vm("smmu0", rid);
    const { outViommuId: viommu } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: dev, hwptId: parent });
    await s.io.vdeviceAlloc({ viommuId: viommu, devId: dev, virtId: vsid });
    const q = await s.io.veventqAlloc({ viommuId: viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 64 });

    const alloc = new SimplePageAllocator(ram, 0x100000n, 0x100000n);
    const cdTable = alloc.alloc(4096) as bigint;
    const ttb0 = alloc.alloc(4096) as bigint;
    const s1 = armStage1Config({ granuleShift: 12, tsz: 16, ttb: ttb0, outputBits: 48 });
    if (!s1.ok) throw new Error(s1.error);
    const map = (iova: bigint, gpa: bigint, size: bigint, perms: number) =>
      expect(mapRange(ram, s1.stage, iova, gpa, size, { perms }, { alloc, maxPageShift: 12 }).ok).toBe(true);
    map(0x4000_0000n, 0x200000n, 0x4000n, PERM_RW);
    map(0x4001_0000n, 0x300000n, 0x1000n, PERM_R);
    map(0x4002_0000n, 0x1_0000_0000n, 0x1000n, PERM_RW);
    // CD 0: 48-bit TTB0, 4K granule, IPS 48 bits, ASID 1, AArch64, access flags set by map.
    const cd = encodeCd({ V: 1, T0SZ: 16, TG0: 0, IPS: 5, EPD1: 1, AA64: 1, R: 1, A: 1, ASID: 1, TTB0: ttb0 });
    cd.forEach((w, i) => ram.write64(cdTable + BigInt(i * 8), w));
    await ram.flush();

    // vSTE: V, Config = S1 translate (0b101), S1ContextPtr = the guest CD table (a GPA), one CD.
    const ste0 = 1n | (0b101n << 1n) | cdTable;
    const { outHwptId: nested } = await s.io.hwptAlloc({
      devId: dev,
      ptId: viommu,
      dataType: HwptDataType.ARM_SMMUV3,
      dataLen: 16,
      data: { case: "armSmmuv3", value: { ste: [ste0, 0n] } },
    });
    await s.io.deviceAttach({ devId: dev, ptId: nested });

    const [w] = await dma(rid, [{ kind: DmaOpKind.WRITE, addr: 0x4000_0020n, data: hello }]);
    expect(w?.status).toBe(DmaStatus.OK);
    expect(await ram.readRemote(0x200020n, hello.length)).toEqual(hello);

    const events = collect<VeventRecord>(subjects.veventq(s.sessionId, q.outVeventqId), VeventRecordSchema, 2);
    const [unmapped, readOnly, s2] = await dma(rid, [
      { kind: DmaOpKind.READ, addr: 0x5000_0000n, length: 8 },
      { kind: DmaOpKind.WRITE, addr: 0x4001_0000n, data: hello },
      { kind: DmaOpKind.READ, addr: 0x4002_0000n, length: 8 },
    ]);
    expect(unmapped?.fault?.kind).toBe(FaultKind.TRANSLATION);
    expect(unmapped?.fault?.route).toBe(FaultRoute.VEVENTQ);
    expect(readOnly?.fault?.kind).toBe(FaultKind.PERMISSION);
    expect(s2?.fault?.stage).toBe(2);
    expect(s2?.fault?.route).toBe(FaultRoute.HOST);
    const recs = await events;
    expect(recs.map((e) => Number((e.payload[0] as bigint) & 0xffn))).toEqual([0x10, 0x13]); // F_TRANSLATION, F_PERMISSION
    for (const e of recs) expect((e.payload[0] as bigint) >> 32n).toBe(vsid);
    expect(recs.map((e) => e.sequence)).toEqual([0, 1]);
    await s.close();
  });
});
