// Section 2: uAPI latency against the real host-iommufd process, one session,
// one call at a time: IoasMap (one 4 KiB page at a fixed IOVA, so it pins and
// maps into the domain of an attached Admin test device), IoasUnmap of it,
// HwptAlloc (a paging HWPT on that IOAS; destroyed again, untimed) and
// HwptInvalidate (an SMMUv3 vIOMMU, one TLBI_NH_ASID command). Three
// diagnostics split the cost: a stub Admin.GetTunables served by the kit's
// grpc-js server in the peer (the framework: protobuf-es adapter, per-call
// context), the host's Admin.GetTunables (the host process, no session) and
// IoasIovaRanges (a session call: token lookup, session lock, dispatch;
// almost no IOMMU work). Each call is followed by a raw grpc-js echo to the
// peer process with the same request and response sizes (serialized
// protobuf bytes), so both see the same moment of machine load;
// ratio = uAPI p50 ÷ echo p50.
import { create, type DescMessage, type MessageInitShape, toBinary } from "@bufbuild/protobuf";
import { cmd, encodeCommand } from "@iommufd/hw";
import {
  GetTunablesResponseSchema,
  HwptAllocFlags,
  HwptAllocRequestSchema,
  HwptAllocResponseSchema,
  HwptInvalidateDataType,
  HwptInvalidateRequestSchema,
  HwptInvalidateResponseSchema,
  IoasIovaRangesRequestSchema,
  IoasIovaRangesResponseSchema,
  IoasMapFlags,
  IoasMapRequestSchema,
  IoasMapResponseSchema,
  IoasUnmapRequestSchema,
  IoasUnmapResponseSchema,
  MmapFlags,
  MmapProt,
  ViommuType,
} from "@iommufd/proto/iommufd";
import { type BenchRow, judge, type Progress, Samples, usSince } from "./common.js";
import type { BenchSystem } from "./system.js";

const PAGE = 4096n;
const RW = IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE;

function size<D extends DescMessage>(schema: D, msg: MessageInitShape<D>): number {
  return toBinary(schema, create(schema, msg)).length;
}

export async function uapiSection(sys: BenchSystem, progress: Progress, opts: { iterations: number; timeLimitMs: number }): Promise<BenchRow[]> {
  const s = await sys.session("bench-uapi");
  try {
    const { addr: va } = await s.io.mmap({ length: 16n * PAGE, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    const dev = async (rid: number) => {
      await s.admin.createTestDevice({ iommuId: "smmu0", name: `bench-uapi-${rid.toString(16)}`, rid });
      return (await s.io.deviceBind({ device: { case: "rid", value: rid } })).outDevid;
    };
    const devA = await dev(0x0a00);
    const devB = await dev(0x0a08);
    await s.io.deviceAttach({ devId: devA, ptId: ioasId });
    const { outHwptId: parent } = await s.io.hwptAlloc({ devId: devB, ptId: ioasId, flags: HwptAllocFlags.NEST_PARENT });
    const { outViommuId: viommu } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: devB, hwptId: parent });
    progress.step("session, test devices, vIOMMU");

    const iova = 0x10_0000n;
    const mapReq = { ioasId, flags: RW | IoasMapFlags.FIXED_IOVA, userVa: va, length: PAGE, iova };
    const unmapReq = { ioasId, iova, length: PAGE };
    const allocReq = { devId: devA, ptId: ioasId };
    const tlbi = encodeCommand(cmd.tlbi("TLBI_NH_ASID", { ASID: 1 }));
    const invReq = {
      hwptId: viommu,
      dataType: HwptInvalidateDataType.ARM_SMMUV3,
      entryLen: 16,
      entryNum: 1,
      entries: [{ entry: { case: "armSmmuv3" as const, value: { cmd: tlbi } } }],
    };
    const rangesReq = { ioasId, numIovas: 4 };
    const rangesResp = await s.io.ioasIovaRanges(rangesReq);
    const tunables = await sys.admin.rpc.getTunables({});
    const sizes = {
      kit: [0, size(GetTunablesResponseSchema, tunables)],
      tunables: [0, size(GetTunablesResponseSchema, tunables)],
      ranges: [size(IoasIovaRangesRequestSchema, rangesReq), size(IoasIovaRangesResponseSchema, rangesResp)],
      map: [size(IoasMapRequestSchema, mapReq), size(IoasMapResponseSchema, { iova })],
      unmap: [size(IoasUnmapRequestSchema, unmapReq), size(IoasUnmapResponseSchema, { length: PAGE })],
      alloc: [size(HwptAllocRequestSchema, allocReq), size(HwptAllocResponseSchema, { outHwptId: 99 })],
      inv: [size(HwptInvalidateRequestSchema, invReq), size(HwptInvalidateResponseSchema, { entryNum: 1 })],
    } as const;
    type Op = keyof typeof sizes;
    const lat = { kit: new Samples(), tunables: new Samples(), ranges: new Samples(), map: new Samples(), unmap: new Samples(), alloc: new Samples(), inv: new Samples() };
    const echo = { kit: new Samples(), tunables: new Samples(), ranges: new Samples(), map: new Samples(), unmap: new Samples(), alloc: new Samples(), inv: new Samples() };
    const timeEcho = async (op: Op, record: boolean) => {
      const [q, r] = sizes[op];
      const t = process.hrtime.bigint();
      await sys.echo(q, r, op === "kit" || op === "tunables" ? undefined : s.token);
      if (record) echo[op].add(usSince(t));
    };
    const round = async (record: boolean) => {
      let t = process.hrtime.bigint();
      await sys.kitAdmin.rpc.getTunables({});
      if (record) lat.kit.add(usSince(t));
      await timeEcho("kit", record);
      t = process.hrtime.bigint();
      await sys.admin.rpc.getTunables({});
      if (record) lat.tunables.add(usSince(t));
      await timeEcho("tunables", record);
      t = process.hrtime.bigint();
      await s.io.ioasIovaRanges(rangesReq);
      if (record) lat.ranges.add(usSince(t));
      await timeEcho("ranges", record);
      t = process.hrtime.bigint();
      await s.io.ioasMap(mapReq);
      if (record) lat.map.add(usSince(t));
      await timeEcho("map", record);
      t = process.hrtime.bigint();
      await s.io.ioasUnmap(unmapReq);
      if (record) lat.unmap.add(usSince(t));
      await timeEcho("unmap", record);
      t = process.hrtime.bigint();
      const { outHwptId } = await s.io.hwptAlloc(allocReq);
      if (record) lat.alloc.add(usSince(t));
      await timeEcho("alloc", record);
      await s.io.destroy({ id: outHwptId });
      t = process.hrtime.bigint();
      await s.io.hwptInvalidate(invReq);
      if (record) lat.inv.add(usSince(t));
      await timeEcho("inv", record);
    };
    for (let i = 0; i < Math.min(100, opts.iterations / 5); i++) await round(false);
    progress.step("warm-up");
    const deadline = Date.now() + opts.timeLimitMs;
    for (let i = 0; i < opts.iterations && Date.now() < deadline; i++) await round(true);
    progress.step(`${lat.map.n} rounds`);

    const names: Record<Op, string> = {
      kit: "kit gRPC server, stub Admin.GetTunables in the peer (diagnostic: framework only)",
      tunables: "host Admin.GetTunables (diagnostic: host process, no session)",
      ranges: "IoasIovaRanges (diagnostic: session + dispatch, almost no work)",
      map: "IoasMap (4 KiB, pinned + mapped into the domain)",
      unmap: "IoasUnmap (4 KiB, with IOTLB sync)",
      alloc: "HwptAlloc (paging HWPT on the IOAS)",
      inv: "HwptInvalidate (SMMUv3 vIOMMU, 1× TLBI_NH_ASID)",
    };
    return (Object.keys(names) as Op[]).map((op) =>
      judge({
        ...(op === "kit" || op === "tunables" || op === "ranges" ? {} : { target: { on: "ratio" as const, op: "<=" as const, limit: 1.3 } }),
        section: "uapi",
        name: names[op],
        figure: { value: lat[op].p50, p50: lat[op].p50, p99: lat[op].p99, unit: "µs" },
        baseline: { name: `grpc-js echo ${sizes[op][0]}/${sizes[op][1]} B`, value: echo[op].p50, p50: echo[op].p50, p99: echo[op].p99, unit: "µs" },
        ratio: lat[op].p50 / echo[op].p50,
        note: `${lat[op].n} calls; p99 ratio ${(lat[op].p99 / echo[op].p99).toFixed(2)}×`,
      }),
    );
  } finally {
    await s.close();
  }
}
