// uAPI conformance over real gRPC against a host-iommufd process, modelled on
// the kernel's iommufd selftests: for each RPC the success path and the
// errnos the kernel documents, object lifetime (EBUSY, ENOENT), automatic
// IOVA, copy, unmap edges, nest-parent rules, PASID attach rules,
// invalidation partial progress, vEVENTQ overflow with LOST_EVENTS.
import { DmaOpKind, DmaStatus } from "@iommufd/proto/bus";
import {
  HwptAllocFlags,
  HwptDataType,
  HwptInvalidateDataType,
  IoasMapFlags,
  MmapFlags,
  MmapProt,
  OptionId,
  OptionOps,
  ViommuType,
  VeventqType,
  DeviceAttachFlags,
  HwInfoType,
  HwCapabilities,
} from "@iommufd/proto/iommufd";
import { createClient } from "@iommufd/kit";
import { Iommufd } from "@iommufd/proto/iommufd";
import { TestTopology, type UapiSession, errno, failure, openSession } from "@iommufd/testkit";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";

const PAGE = 4096n;
const U64_MAX = (1n << 64n) - 1n;
const RW = IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE;
const FIXED = RW | IoasMapFlags.FIXED_IOVA;

let topo: TestTopology;
let addr: string;
const sessions: UapiSession[] = [];

async function session(opts?: Parameters<typeof openSession>[1]): Promise<UapiSession> {
  const s = await openSession(addr, opts);
  sessions.push(s);
  return s;
}

/** A session with `pages` of anonymous user memory. */
async function withMemory(pages = 64n, opts?: Parameters<typeof openSession>[1]) {
  const s = await session(opts);
  const { addr: va } = await s.io.mmap({ length: pages * PAGE, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
  return { s, va };
}

let ridSeq = 0x200;
async function testDevice(s: UapiSession, iommuId: string, caps: { pasid?: number; ats?: boolean; pri?: boolean } = {}) {
  const rid = (ridSeq += 8);
  await s.admin.createTestDevice({ iommuId, name: `t${rid.toString(16)}`, rid, maxPasidLog2: caps.pasid ?? 0, ats: caps.ats ?? false, pri: caps.pri ?? false });
  const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
  return { rid, devId: outDevid };
}

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd", args: ["--iommu", "smmu0=smmuv3,dmar0=vtd"] }]);
  addr = topo.get("host-iommufd").address;
}, 60_000);

afterEach(async () => {
  await Promise.all(sessions.splice(0).map((s) => s.close()));
});

afterAll(async () => {
  await topo?.stop();
});

describe("sessions", () => {
  it("refuses calls without, or with an unknown or closed, session token (EBADF)", async () => {
    const s = await session();
    const bare = createClient(Iommufd, addr);
    expect(await errno(bare.rpc.ioasAlloc({}))).toBe("EBADF");
    const forged = createClient(Iommufd, addr, { metadata: { "iommufd-session": "not-a-token" } });
    expect(await errno(forged.rpc.ioasAlloc({}))).toBe("EBADF");
    const stale = createClient(Iommufd, addr, { metadata: { "iommufd-session": s.token } });
    expect((await stale.rpc.ioasAlloc({})).outIoasId).toBe(1);
    await s.close();
    expect(await errno(stale.rpc.ioasAlloc({}))).toBe("EBADF");
    for (const c of [bare, forged, stale]) c.close();
  });

  it("destroys everything when the lease runs out", async () => {
    const s = await session({ leaseMs: 300 });
    await s.io.ioasAlloc({});
    const before = await s.admin.dumpObjects({ sessionIds: [s.sessionId] });
    expect(before.sessions[0]?.objects.length).toBe(1);
    await new Promise((r) => setTimeout(r, 900));
    expect(await errno(s.admin.dumpObjects({ sessionIds: [s.sessionId] }))).toBe("ENOENT");
    expect(await errno(s.io.ioasAlloc({}))).toBe("EBADF");
  });

  it("keeps objects of one session invisible to another (ENOENT)", async () => {
    const a = await session();
    const b = await session();
    const { outIoasId } = await a.io.ioasAlloc({});
    expect(await errno(b.io.destroy({ id: outIoasId }))).toBe("ENOENT");
    expect(await errno(b.io.ioasIovaRanges({ ioasId: outIoasId, numIovas: 4 }))).toBe("ENOENT");
  });
});

describe("object table", () => {
  it("hands out the lowest free ID from 1 and reuses destroyed IDs", async () => {
    const s = await session();
    const ids = [];
    for (let i = 0; i < 3; i++) ids.push((await s.io.ioasAlloc({})).outIoasId);
    expect(ids).toEqual([1, 2, 3]);
    await s.io.destroy({ id: 2 });
    expect((await s.io.ioasAlloc({})).outIoasId).toBe(2);
    expect(await errno(s.io.destroy({ id: 0 }))).toBe("ENOENT");
    expect(await errno(s.io.destroy({ id: 99 }))).toBe("ENOENT");
  });
});

describe("IOAS", () => {
  it("IOAS_ALLOC: flags → EOPNOTSUPP", async () => {
    const s = await session();
    expect(await errno(s.io.ioasAlloc({ flags: 1 }))).toBe("EOPNOTSUPP");
  });

  it("IOAS_MAP: the kernel's check order", async () => {
    const { s, va } = await withMemory();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const map = (r: { flags?: number; ioasId?: number; reserved?: number; iova?: bigint; length?: bigint }) => s.io.ioasMap({ ioasId, flags: FIXED, userVa: va, length: PAGE, iova: 0x10000n, ...r });
    expect(await errno(map({ flags: 1 << 5 }))).toBe("EOPNOTSUPP");
    expect(await errno(map({ reserved: 1 }))).toBe("EOPNOTSUPP");
    expect(await errno(map({ iova: U64_MAX }))).toBe("EOVERFLOW");
    expect(await errno(map({ length: U64_MAX }))).toBe("EOVERFLOW");
    expect(await errno(map({ flags: IoasMapFlags.FIXED_IOVA }))).toBe("EINVAL");
    expect(await errno(map({ ioasId: 99 }))).toBe("ENOENT");
    expect(await errno(map({ length: 0n }))).toBe("EINVAL");
    expect((await map({})).iova).toBe(0x10000n);
    expect(await errno(map({}))).toBe("EEXIST");
    expect(await errno(map({ iova: 0x10000n - PAGE, length: 2n * PAGE }))).toBe("EEXIST");
  });

  it("IOAS_MAP: automatic IOVA is aligned to the length and never 0", async () => {
    const { s, va } = await withMemory();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    for (const pages of [1n, 2n, 4n, 16n]) {
      const { iova } = await s.io.ioasMap({ ioasId, flags: RW, userVa: va, length: pages * PAGE });
      expect(iova).not.toBe(0n);
      expect(iova % (pages * PAGE)).toBe(0n);
    }
  });

  it("IOAS_UNMAP: partial area and nothing mapped → ENOENT, unmap-all of nothing is fine", async () => {
    const { s, va } = await withMemory();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    expect((await s.io.ioasUnmap({ ioasId, iova: 0n, length: U64_MAX })).length).toBe(0n);
    expect(await errno(s.io.ioasUnmap({ ioasId, iova: 0x10000n, length: PAGE }))).toBe("ENOENT");
    await s.io.ioasMap({ ioasId, flags: FIXED, userVa: va, length: 4n * PAGE, iova: 0x10000n });
    expect(await errno(s.io.ioasUnmap({ ioasId, iova: 0x10000n, length: PAGE }))).toBe("ENOENT");
    expect(await errno(s.io.ioasUnmap({ ioasId, iova: 0x10000n, length: 0n }))).toBe("EINVAL");
    expect(await errno(s.io.ioasUnmap({ ioasId, iova: U64_MAX, length: PAGE }))).toBe("EOVERFLOW");
    expect((await s.io.ioasUnmap({ ioasId, iova: 0n, length: U64_MAX })).length).toBe(4n * PAGE);
  });

  it("IOAS_IOVA_RANGES: EMSGSIZE carries the total and the alignment back", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const r = await s.io.ioasIovaRanges({ ioasId, numIovas: 1 });
    expect(r.allowedIovas).toEqual([expect.objectContaining({ start: 0n, last: U64_MAX })]);
    expect(r.outIovaAlignment).toBe(1n);
    expect(await errno(s.io.ioasIovaRanges({ ioasId, numIovas: 1, reserved: 1 }))).toBe("EOPNOTSUPP");
    const dev = await testDevice(s, "dmar0");
    await s.io.deviceAttach({ devId: dev.devId, ptId: ioasId });
    const e = await failure(s.io.ioasIovaRanges({ ioasId, numIovas: 0 }));
    expect(e.errno).toBe("EMSGSIZE");
    const out = e.response as { numIovas: number; outIovaAlignment: bigint };
    expect(out.numIovas).toBeGreaterThan(1);
    expect(out.outIovaAlignment).toBe(PAGE);
  });

  it("IOAS_ALLOW_IOVAS: bad ranges and reserved collisions", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    expect(await errno(s.io.ioasAllowIovas({ ioasId, numIovas: 1, allowedIovas: [{ start: 5n, last: 5n }] }))).toBe("EINVAL");
    expect(await errno(s.io.ioasAllowIovas({ ioasId, numIovas: 2, allowedIovas: [{ start: 0n, last: 0x1fffn }] }))).toBe("EFAULT");
    await s.io.ioasAllowIovas({ ioasId, numIovas: 1, allowedIovas: [{ start: 0xfee0_0000n, last: 0xfeef_ffffn }] });
    // The VT-d device's interrupt window is reserved on attach: it collides with the allowed range.
    const dev = await testDevice(s, "dmar0");
    expect(await errno(s.io.deviceAttach({ devId: dev.devId, ptId: ioasId }))).toBe("EADDRINUSE");
  });

  it("IOAS_COPY: shares pinned pages (accounted once) and checks the source", async () => {
    const { s, va } = await withMemory();
    const { outIoasId: src } = await s.io.ioasAlloc({});
    const { outIoasId: dst } = await s.io.ioasAlloc({});
    const dev = await testDevice(s, "dmar0");
    await s.io.deviceAttach({ devId: dev.devId, ptId: src });
    await s.io.ioasMap({ ioasId: src, flags: FIXED, userVa: va, length: 8n * PAGE, iova: 0x100000n });
    const pinned = async () => (await s.admin.dumpObjects({ sessionIds: [s.sessionId] })).sessions[0]?.pinnedBytes;
    expect(await pinned()).toBe(8n * PAGE);
    const dev2 = await testDevice(s, "dmar0");
    await s.io.deviceAttach({ devId: dev2.devId, ptId: dst });
    const { dstIova } = await s.io.ioasCopy({ flags: RW, srcIoasId: src, dstIoasId: dst, srcIova: 0x102000n, length: 2n * PAGE });
    expect(dstIova % (2n * PAGE)).toBe(0n);
    expect(await pinned()).toBe(8n * PAGE);
    expect(await errno(s.io.ioasCopy({ flags: RW, srcIoasId: src, dstIoasId: dst, srcIova: 0x200000n, length: PAGE }))).toBe("ENOENT");
    expect(await errno(s.io.ioasCopy({ flags: RW, srcIoasId: src, dstIoasId: 99, srcIova: 0x100000n, length: PAGE }))).toBe("ENOENT");
    expect(await errno(s.io.ioasCopy({ flags: 0, srcIoasId: src, dstIoasId: dst, srcIova: 0x100000n, length: PAGE }))).toBe("EINVAL");
  });

  it("IOAS_MAP_FILE: memfd ranges, bad fd → EBADF, beyond the file → EINVAL", async () => {
    const s = await session();
    const { fd } = await s.io.memfdCreate({ name: "ram", size: 16n * PAGE });
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    expect((await s.io.ioasMapFile({ ioasId, flags: FIXED, fd, start: 0n, length: 16n * PAGE, iova: 0n })).iova).toBe(0n);
    expect(await errno(s.io.ioasMapFile({ ioasId, flags: RW, fd: 77, start: 0n, length: PAGE }))).toBe("EBADF");
    expect(await errno(s.io.ioasMapFile({ ioasId, flags: RW, fd, start: 8n * PAGE, length: 16n * PAGE }))).toBe("EINVAL");
  });

  it("OPTION: RLIMIT_MODE and HUGE_PAGES", async () => {
    const s = await session();
    expect((await s.io.option({ optionId: OptionId.RLIMIT_MODE, op: OptionOps.GET })).val64).toBe(0n);
    expect(await errno(s.io.option({ optionId: OptionId.RLIMIT_MODE, op: OptionOps.SET, val64: 1n }))).toBe("EPERM");
    expect(await errno(s.io.option({ optionId: 9, op: OptionOps.GET }))).toBe("EOPNOTSUPP");
    const root = await session({ capSysResource: true });
    expect((await root.io.option({ optionId: OptionId.RLIMIT_MODE, op: OptionOps.SET, val64: 1n })).val64).toBe(1n);
    const { outIoasId } = await root.io.ioasAlloc({});
    expect(await errno(root.io.option({ optionId: OptionId.RLIMIT_MODE, op: OptionOps.SET, val64: 0n }))).toBe("EBUSY");
    expect((await root.io.option({ optionId: OptionId.HUGE_PAGES, op: OptionOps.GET, objectId: outIoasId })).val64).toBe(1n);
    await root.io.option({ optionId: OptionId.HUGE_PAGES, op: OptionOps.SET, objectId: outIoasId, val64: 0n });
    expect((await root.io.ioasIovaRanges({ ioasId: outIoasId, numIovas: 4 })).outIovaAlignment).toBe(PAGE);
    expect(await errno(root.io.option({ optionId: OptionId.HUGE_PAGES, op: OptionOps.GET, objectId: 0 }))).toBe("ENOENT");
  });
});

describe("devices and HWPTs", () => {
  for (const iommu of ["smmu0", "dmar0"]) {
    it(`${iommu}: bind, attach to an IOAS (auto HWPT), replace, detach; DEVICE is never destroyable`, async () => {
      const s = await session();
      const { outIoasId: ioasId } = await s.io.ioasAlloc({});
      const dev = await testDevice(s, iommu);
      expect(await errno(s.io.destroy({ id: dev.devId }))).toBe("EBUSY");
      const { ptId: auto } = await s.io.deviceAttach({ devId: dev.devId, ptId: ioasId });
      expect(auto).toBeGreaterThan(ioasId);
      expect(await errno(s.io.destroy({ id: ioasId }))).toBe("EBUSY");
      expect(await errno(s.io.destroy({ id: auto }))).toBe("EBUSY");
      // replace onto a manual HWPT: the auto one goes away
      const { outHwptId } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId });
      expect((await s.io.deviceAttach({ devId: dev.devId, ptId: outHwptId })).ptId).toBe(outHwptId);
      expect(await errno(s.io.destroy({ id: auto }))).toBe("ENOENT");
      await s.io.deviceDetach({ devId: dev.devId });
      await s.io.destroy({ id: outHwptId });
      await s.io.destroy({ id: ioasId });
      await s.io.deviceUnbind({ devId: dev.devId });
      expect(await errno(s.io.deviceAttach({ devId: dev.devId, ptId: ioasId }))).toBe("ENOENT");
    });
  }

  it("refuses a device bound by another session (EINVAL) and an unknown device (ENOENT)", async () => {
    const a = await session();
    const b = await session();
    const dev = await testDevice(a, "smmu0");
    expect(await errno(b.io.deviceBind({ device: { case: "rid", value: dev.rid } }))).toBe("EINVAL");
    expect(await errno(b.io.deviceBind({ device: { case: "name", value: "no-such-device" } }))).toBe("ENOENT");
  });

  it("HWPT_ALLOC: generic checks, pt_id lookups give EINVAL, nest-parent rules", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const dev = await testDevice(s, "dmar0");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, reserved: 1 }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, dataType: HwptDataType.VTD_S1 }))).toBe("EINVAL");
    expect(await errno(s.io.hwptAlloc({ devId: 99, ptId: ioasId }))).toBe("ENOENT");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: 99 }))).toBe("EINVAL");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: dev.devId }))).toBe("EINVAL");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, flags: 0x8000_0000 }))).toBe("EOPNOTSUPP");
    const { ptId: auto } = await s.io.deviceAttach({ devId: dev.devId, ptId: ioasId });
    const vtdS1 = { case: "vtdS1" as const, value: { flags: 0n, pgtblAddr: 0x1000n, addrWidth: 48, reserved: 0 } };
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: auto, dataType: HwptDataType.VTD_S1, dataLen: 24, data: vtdS1 }))).toBe("EINVAL");
    const { outHwptId: plain } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId });
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: plain, dataType: HwptDataType.VTD_S1, dataLen: 24, data: vtdS1 }))).toBe("EINVAL");
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: parent }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: parent, flags: HwptAllocFlags.NEST_PARENT, dataType: HwptDataType.VTD_S1, dataLen: 24, data: vtdS1 }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.hwptAlloc({ devId: dev.devId, ptId: parent, dataType: HwptDataType.VTD_S1, dataLen: 24 }))).toBe("EFAULT");
    const { outHwptId: nested } = await s.io.hwptAlloc({ devId: dev.devId, ptId: parent, dataType: HwptDataType.VTD_S1, dataLen: 24, data: vtdS1 });
    expect(await errno(s.io.destroy({ id: parent }))).toBe("EBUSY");
    await s.io.destroy({ id: nested });
    await s.io.destroy({ id: parent });
  });

  it("PASID attach rules (§5.4)", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const dev = await testDevice(s, "dmar0", { pasid: 8 });
    const nopasid = await testDevice(s, "dmar0");
    const pasidAttach = (devId: number, ptId: number, pasid: number) => s.io.deviceAttach({ devId, ptId, flags: DeviceAttachFlags.PASID, pasid });
    expect(await errno(pasidAttach(dev.devId, ioasId, 1))).toBe("EINVAL");
    const { outHwptId: plain } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId });
    expect(await errno(pasidAttach(dev.devId, plain, 1))).toBe("EINVAL");
    const { outHwptId: compat } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, flags: HwptAllocFlags.PASID });
    expect(await errno(pasidAttach(nopasid.devId, compat, 1))).toBe("EINVAL");
    expect(await errno(pasidAttach(dev.devId, compat, 1 << 8))).toBe("EINVAL");
    await pasidAttach(dev.devId, compat, 1);
    expect(await errno(s.io.deviceAttach({ devId: dev.devId, ptId: plain }))).toBe("EINVAL");
    await s.io.deviceAttach({ devId: dev.devId, ptId: compat });
  });

  it("vIOMMU and vDEVICE rules; cross-instance refusals", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const smmu = await testDevice(s, "smmu0");
    const vtd = await testDevice(s, "dmar0");
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    const { outHwptId: plain } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: ioasId });
    const alloc = (r: { flags?: number; type?: number; devId?: number; hwptId?: number }) => s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: smmu.devId, hwptId: parent, ...r });
    expect(await errno(alloc({ flags: 1 }))).toBe("EOPNOTSUPP");
    expect(await errno(alloc({ type: ViommuType.DEFAULT }))).toBe("EOPNOTSUPP");
    expect(await errno(alloc({ devId: 99 }))).toBe("ENOENT");
    expect(await errno(alloc({ hwptId: ioasId }))).toBe("ENOENT");
    expect(await errno(alloc({ hwptId: plain }))).toBe("EINVAL");
    expect(await errno(alloc({ devId: vtd.devId }))).toBe("EOPNOTSUPP");
    const { outViommuId: viommu } = await alloc({});
    expect(await errno(s.io.destroy({ id: parent }))).toBe("EBUSY");
    expect(await errno(s.io.vdeviceAlloc({ viommuId: viommu, devId: vtd.devId, virtId: 1n }))).toBe("EINVAL");
    const { outVdeviceId } = await s.io.vdeviceAlloc({ viommuId: viommu, devId: smmu.devId, virtId: 0x18n });
    expect(await errno(s.io.vdeviceAlloc({ viommuId: viommu, devId: smmu.devId, virtId: 0x19n }))).toBe("EEXIST");
    expect(await errno(s.io.destroy({ id: viommu }))).toBe("EBUSY");
    // HW queues: neither driver has them (the kernel's answer for such drivers)
    expect(await errno(s.io.hwQueueAlloc({ viommuId: viommu, type: 1, length: PAGE }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.hwQueueAlloc({ viommuId: viommu, type: 1, length: 0n }))).toBe("EINVAL");
    // vEVENTQ: one per type, depth > 0; the fd holds a reference
    expect(await errno(s.io.veventqAlloc({ viommuId: viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 0 }))).toBe("EINVAL");
    const q = await s.io.veventqAlloc({ viommuId: viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 4 });
    expect(await errno(s.io.veventqAlloc({ viommuId: viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 4 }))).toBe("EEXIST");
    expect(await errno(s.io.destroy({ id: q.outVeventqId }))).toBe("EBUSY");
    await s.io.close({ fd: q.outVeventqFd });
    await s.io.destroy({ id: q.outVeventqId });
    await s.io.destroy({ id: outVdeviceId });
    await s.io.destroy({ id: viommu });
    // invalidation on a paging HWPT → EINVAL, missing → ENOENT, reserved → EOPNOTSUPP
    expect(await errno(s.io.hwptInvalidate({ hwptId: parent, dataType: HwptInvalidateDataType.ARM_SMMUV3 }))).toBe("EINVAL");
    expect(await errno(s.io.hwptInvalidate({ hwptId: 99 }))).toBe("ENOENT");
    expect(await errno(s.io.hwptInvalidate({ hwptId: parent, reserved: 1 }))).toBe("EOPNOTSUPP");
  });

  it("HWPT_INVALIDATE on a vIOMMU writes back entry_num on a bad command", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const smmu = await testDevice(s, "smmu0");
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    const { outViommuId } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: smmu.devId, hwptId: parent });
    const tlbiNhAll = { entry: { case: "armSmmuv3" as const, value: { cmd: [0x10n, 0n] } } };
    const cfgiSte = { entry: { case: "armSmmuv3" as const, value: { cmd: [0x03n, 0n] } } };
    const ok = await s.io.hwptInvalidate({ hwptId: outViommuId, dataType: HwptInvalidateDataType.ARM_SMMUV3, entryLen: 16, entryNum: 2, entries: [tlbiNhAll, tlbiNhAll] });
    expect(ok.entryNum).toBe(2);
    const e = await failure(
      s.io.hwptInvalidate({ hwptId: outViommuId, dataType: HwptInvalidateDataType.ARM_SMMUV3, entryLen: 16, entryNum: 3, entries: [tlbiNhAll, tlbiNhAll, cfgiSte] }),
    );
    expect(e.errno).toBe("EIO");
    expect((e.response as { entryNum: number }).entryNum).toBe(2);
    // The vIOMMU driver copies the whole array first: a short array faults before any entry is handled.
    const short = await failure(
      s.io.hwptInvalidate({ hwptId: outViommuId, dataType: HwptInvalidateDataType.ARM_SMMUV3, entryLen: 16, entryNum: 3, entries: [tlbiNhAll] }),
    );
    expect(short.errno).toBe("EFAULT");
    expect((short.response as { entryNum: number }).entryNum).toBe(0);
  });

  it("SMMUv3 nested HWPTs: no PASID flag; an abort vSTE attaches without a vDEVICE, a translating one needs it", async () => {
    const s = await session();
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const smmu = await testDevice(s, "smmu0");
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    const { outViommuId: viommu } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: smmu.devId, hwptId: parent });
    const vste = (w0: bigint) => ({ dataType: HwptDataType.ARM_SMMUV3, dataLen: 16, data: { case: "armSmmuv3" as const, value: { ste: [w0, 0n] } } });
    expect(await errno(s.io.hwptAlloc({ devId: smmu.devId, ptId: viommu, flags: HwptAllocFlags.PASID, ...vste(1n) }))).toBe("EOPNOTSUPP");
    const { outHwptId: abort } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: viommu, ...vste(1n) }); // V=1, Config=abort
    await s.io.deviceAttach({ devId: smmu.devId, ptId: abort });
    const { outHwptId: s1 } = await s.io.hwptAlloc({ devId: smmu.devId, ptId: viommu, ...vste(1n | (0b101n << 1n) | 0x100000n) });
    expect(await errno(s.io.deviceAttach({ devId: smmu.devId, ptId: s1 }))).toBe("ENOENT");
    await s.io.vdeviceAlloc({ viommuId: viommu, devId: smmu.devId, virtId: 0x20n });
    expect((await s.io.deviceAttach({ devId: smmu.devId, ptId: s1 })).ptId).toBe(s1);
  });

  it("GET_HW_INFO: vendor blob, lengths and capabilities", async () => {
    const s = await session();
    const smmu = await testDevice(s, "smmu0", { pasid: 20, ats: true });
    const vtd = await testDevice(s, "dmar0");
    const a = await s.io.getHwInfo({ devId: smmu.devId, dataLen: 64 });
    expect(a.outDataType).toBe(HwInfoType.ARM_SMMUV3);
    expect(a.dataLen).toBe(40);
    expect(a.data.length).toBe(64);
    expect(a.outMaxPasidLog2).toBe(20);
    const b = await s.io.getHwInfo({ devId: vtd.devId, dataLen: 8 });
    expect(b.outDataType).toBe(HwInfoType.INTEL_VTD);
    expect(b.dataLen).toBe(24);
    expect(b.outCapabilities & BigInt(HwCapabilities.PCI_ATS_NOT_SUPPORTED)).not.toBe(0n);
    expect(await errno(s.io.getHwInfo({ devId: vtd.devId, flags: 2 }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.getHwInfo({ devId: 99 }))).toBe("ENOENT");
  });

  it("vEVENTQ and FAULT objects: fd references and reads with ESPIPE rules", async () => {
    const s = await session({ delivery: "read" });
    const f = await s.io.faultQueueAlloc({});
    expect(await errno(s.io.faultQueueAlloc({ flags: 1 }))).toBe("EOPNOTSUPP");
    expect(await errno(s.io.destroy({ id: f.outFaultId }))).toBe("EBUSY");
    expect(await errno(s.io.faultRead({ fd: f.outFaultFd, count: 41 }))).toBe("ESPIPE");
    expect(await errno(s.io.faultRead({ fd: f.outFaultFd, count: 40, pos: 1n }))).toBe("ESPIPE");
    expect((await s.io.faultRead({ fd: f.outFaultFd, count: 400 })).count).toBe(0);
    expect(await errno(s.io.faultWrite({ fd: f.outFaultFd, responses: [{ cookie: 7, code: 0 }] }))).toBe("EINVAL");
    await s.io.close({ fd: f.outFaultFd });
    await s.io.destroy({ id: f.outFaultId });
  });

  for (const iommu of ["smmu0", "dmar0"]) {
    it(`${iommu}: dirty tracking — enable, DMA writes, bitmap from the hardware dirty bits, NO_CLEAR, clear`, async () => {
      const { s, va } = await withMemory(64n);
      const { outIoasId: ioasId } = await s.io.ioasAlloc({});
      const dev = await testDevice(s, iommu);
      await s.io.ioasMap({ ioasId, flags: FIXED, userVa: va, length: 16n * PAGE, iova: 0x100000n });
      const { outHwptId: hwpt } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, flags: HwptAllocFlags.DIRTY_TRACKING });
      await s.io.deviceAttach({ devId: dev.devId, ptId: hwpt });
      expect(await errno(s.io.hwptSetDirtyTracking({ hwptId: hwpt, flags: 2 }))).toBe("EOPNOTSUPP");
      expect(await errno(s.io.hwptSetDirtyTracking({ hwptId: ioasId, flags: 1 }))).toBe("ENOENT");
      await s.io.hwptSetDirtyTracking({ hwptId: hwpt, flags: 1 });
      const bitmap = (flags = 0) => s.io.hwptGetDirtyBitmap({ hwptId: hwpt, flags, iova: 0x100000n, length: 16n * PAGE, pageSize: PAGE });
      expect([...(await bitmap()).data]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
      const w = await s.admin.testDeviceDma({ rid: dev.rid, ops: [2n, 9n].map((p) => ({ kind: DmaOpKind.WRITE, addr: 0x100000n + p * PAGE + 8n, data: new Uint8Array([1]) })) });
      expect(w.results.map((r) => r.status)).toEqual([DmaStatus.OK, DmaStatus.OK]);
      await s.admin.testDeviceDma({ rid: dev.rid, ops: [{ kind: DmaOpKind.READ, addr: 0x100000n + 5n * PAGE, length: 8 }] });
      const expected = [0b0000_0100, 0b0000_0010, 0, 0, 0, 0, 0, 0]; // pages 2 and 9 written, page 5 only read
      expect([...(await bitmap(1)).data]).toEqual(expected); // NO_CLEAR
      expect([...(await bitmap()).data]).toEqual(expected);
      expect([...(await bitmap()).data]).toEqual([0, 0, 0, 0, 0, 0, 0, 0]);
      expect(await errno(s.io.hwptGetDirtyBitmap({ hwptId: hwpt, iova: 0x100000n, length: 16n * PAGE, pageSize: 0n }))).toBe("EINVAL");
      expect(await errno(s.io.hwptGetDirtyBitmap({ hwptId: hwpt, iova: 0x100800n, length: 16n * PAGE, pageSize: PAGE }))).toBe("EINVAL");
      expect(await errno(s.io.hwptGetDirtyBitmap({ hwptId: hwpt, flags: 2, iova: 0x100000n, length: PAGE, pageSize: PAGE }))).toBe("EOPNOTSUPP");
    });
  }

  it("vEVENTQ overflow: depth-limited queue, LOST_EVENTS marker, sequence numbers (read delivery)", async () => {
    const { s, va } = await withMemory(64n, { delivery: "read" });
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    await s.io.ioasMap({ ioasId, flags: FIXED, userVa: va, length: 64n * PAGE, iova: 0n });
    const dev = await testDevice(s, "smmu0");
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: dev.devId, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    const { outViommuId: viommu } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: dev.devId, hwptId: parent });
    await s.io.vdeviceAlloc({ viommuId: viommu, devId: dev.devId, virtId: 0x42n });
    const q = await s.io.veventqAlloc({ viommuId: viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 2 });
    // vSTE: stage-1 translate with a CD table at GPA 0x10000 that is all zeros: every DMA is C_BAD_CD (reported to the guest).
    const ste = [1n | (0b101n << 1n) | 0x10000n, 0n];
    const { outHwptId: nested } = await s.io.hwptAlloc({ devId: dev.devId, ptId: viommu, dataType: HwptDataType.ARM_SMMUV3, dataLen: 16, data: { case: "armSmmuv3", value: { ste } } });
    await s.io.deviceAttach({ devId: dev.devId, ptId: nested });
    const dma = () => s.admin.testDeviceDma({ rid: dev.rid, ops: [{ kind: DmaOpKind.READ, addr: 0x1000n, length: 8 }] });
    for (let i = 0; i < 4; i++) expect((await dma()).results[0]?.status).not.toBe(DmaStatus.OK);
    expect(await errno(s.io.veventqRead({ fd: q.outVeventqFd, count: 40, pos: 1n }))).toBe("ESPIPE");
    const r = await s.io.veventqRead({ fd: q.outVeventqFd, count: 4096 });
    // two events fit; each of the other two was dropped and (re)placed the one LOST_EVENTS marker
    // with a fresh sequence number (§8), so the marker carries 3
    expect(r.events.map((e) => [e.flags, e.sequence])).toEqual([
      [0, 0],
      [0, 1],
      [1, 3],
    ]);
    expect(r.count).toBe(2 * 40 + 8);
    const w0 = (r.events[0]?.payload.value as { evt: bigint[] }).evt[0] as bigint;
    expect(Number(w0 & 0xffn)).toBe(0x0a); // C_BAD_CD
    expect(w0 >> 32n).toBe(0x42n); // the virtual SID
    // after reading, a new event follows the marker's sequence number
    await dma();
    const next = await s.io.veventqRead({ fd: q.outVeventqFd, count: 4096 });
    expect(next.events.map((e) => [e.flags, e.sequence])).toEqual([[0, 4]]);
  });
});

