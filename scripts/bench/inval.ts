// Section 4: invalidation round trips to a device ATC, and vEVENTQ delivery.
//
//   HwptInvalidate: the device-sim "invnested" endpoint (ATS) sits behind a
//     nested SMMUv3 configuration (guest CD and stage 1 written into guest
//     RAM over the bus, vSTE with EATS, as test/host-nested.test.ts builds
//     it). Each round the device first caches translations (a device.v1 Dma
//     with use_ats), then the vIOMMU invalidation [TLBI_NH_ASID, ATC_INV all]
//     is timed: the RPC returns after the trailing CMD_SYNC, i.e. after the
//     host's atc-inv request to the device was completed, so the RPC time is
//     an upper bound of "issued → every ATC acknowledged".
//   IoasUnmap: the "invplain" endpoint (ATS) attached to a paging domain;
//     each round maps a page, the device caches it through ATS, and the
//     unmap is timed (it returns after iotlb_sync, the ATC_INV included).
//   vEVENTQ: the bench registers itself as a bus device behind a nested
//     SMMUv3 configuration and sends a DMA to an IOVA the guest never
//     mapped; timed from sending the DmaBatch to the VeventRecord arriving on
//     NATS (an upper bound of fault → delivery: it includes the device → host
//     hop).
// Baselines in the same rounds: a grpc-js echo of the same sizes plus a NATS
// round trip (the transport an invalidation needs at least), and a NATS
// round trip for the vEVENT.
import { create, toBinary } from "@bufbuild/protobuf";
import {
  PERM_RW,
  STE_CONFIG,
  STE_EATS,
  SimplePageAllocator,
  armStage1Config,
  cmd,
  encodeCd,
  encodeCommand,
  encodeSte,
  mapRange,
} from "@iommufd/hw";
import { subjects } from "@iommufd/kit";
import {
  DmaBatchResultSchema,
  DmaBatchSchema,
  DmaOpKind,
  DmaStatus,
  VeventRecordSchema,
} from "@iommufd/proto/bus";
import { DmaKind } from "@iommufd/proto/device";
import {
  HwptAllocFlags,
  HwptDataType,
  HwptInvalidateDataType,
  HwptInvalidateRequestSchema,
  HwptInvalidateResponseSchema,
  IoasMapFlags,
  IoasUnmapRequestSchema,
  IoasUnmapResponseSchema,
  MmapFlags,
  MmapProt,
  VeventqType,
  ViommuType,
} from "@iommufd/proto/iommufd";
import { GuestRam, type UapiSession } from "@iommufd/testkit";
import { type BenchRow, judge, type Progress, Samples, usSince } from "./common.js";
import { type BenchSystem, RID } from "./system.js";

const MiB = 1n << 20n;
const GUEST_RAM = 16n * MiB;
const GUEST_IOVA = 0x4000_0000n;
const UNMAPPED_IOVA = 0x5000_0000n;
const RW = IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE;

/** A VM's memory and a nested SMMUv3 configuration for `rid` (host-nested.test.ts's recipe), with ATS asked in the vSTE. */
async function nestedVm(sys: BenchSystem, s: UapiSession, rid: number, vsid: bigint) {
  const { fd } = await s.io.memfdCreate({ name: `guest-ram-${rid.toString(16)}`, size: GUEST_RAM });
  const { addr: va } = await s.io.mmap({ length: GUEST_RAM, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.SHARED, fd });
  const { outIoasId: ioas } = await s.io.ioasAlloc({});
  await s.io.ioasMapFile({ ioasId: ioas, flags: RW | IoasMapFlags.FIXED_IOVA, fd, start: 0n, length: GUEST_RAM, iova: 0n });
  const { outDevid: dev } = await s.io.deviceBind({ device: { case: "rid", value: rid } });
  const { outHwptId: parent } = await s.io.hwptAlloc({ devId: dev, ptId: ioas, flags: HwptAllocFlags.NEST_PARENT });
  const { outViommuId: viommu } = await s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: dev, hwptId: parent });
  await s.io.vdeviceAlloc({ viommuId: viommu, devId: dev, virtId: vsid });
  const ram = new GuestRam(sys.bus, s.sessionId, va);
  const alloc = new SimplePageAllocator(ram, 0x100000n, 0x100000n);
  const cdTable = alloc.alloc(4096) as bigint;
  const ttb0 = alloc.alloc(4096) as bigint;
  const s1 = armStage1Config({ granuleShift: 12, tsz: 16, ttb: ttb0, outputBits: 48 });
  if (!s1.ok) throw new Error(s1.error);
  const m = mapRange(ram, s1.stage, GUEST_IOVA, 0x200000n, 0x10000n, { perms: PERM_RW }, { alloc, maxPageShift: 12 });
  if (!m.ok) throw new Error(`guest stage 1: ${m.error}`);
  encodeCd({ V: 1, T0SZ: 16, TG0: 0, IPS: 5, EPD1: 1, AA64: 1, R: 1, A: 1, ASID: 1, TTB0: ttb0 }).forEach((w, i) => ram.write64(cdTable + BigInt(i * 8), w));
  await ram.flush();
  const ste = encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: cdTable, EATS: STE_EATS.TRANS });
  const { outHwptId: nested } = await s.io.hwptAlloc({
    devId: dev,
    ptId: viommu,
    dataType: HwptDataType.ARM_SMMUV3,
    dataLen: 16,
    data: { case: "armSmmuv3", value: { ste: [ste[0] as bigint, ste[1] as bigint] } },
  });
  await s.io.deviceAttach({ devId: dev, ptId: nested });
  return { dev, viommu };
}

export interface InvalOptions {
  iterations: number;
  timeLimitMs: number;
}

export async function invalidationSection(sys: BenchSystem, progress: Progress, o: InvalOptions): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const s = await sys.session("bench-inval");
  try {
    // ---- HwptInvalidate with ATC_INV -----------------------------------------
    const vsid = 0x18n;
    const { viommu } = await nestedVm(sys, s, RID.invNested, vsid);
    const prime = async (rid: number, iova: bigint, length: bigint) => {
      const r = await sys.device.rpc.dma({ rid, kind: DmaKind.READ, iova, length, useAts: true });
      if (r.status !== DmaStatus.OK) throw new Error(`ATS DMA at 0x${iova.toString(16)} for rid 0x${rid.toString(16)}: ${DmaStatus[r.status]} ${r.fault?.detail ?? ""}`);
    };
    const invReq = {
      hwptId: viommu,
      dataType: HwptInvalidateDataType.ARM_SMMUV3,
      entryLen: 16,
      entryNum: 2,
      entries: [
        { entry: { case: "armSmmuv3" as const, value: { cmd: encodeCommand(cmd.tlbi("TLBI_NH_ASID", { ASID: 1 })) } } },
        { entry: { case: "armSmmuv3" as const, value: { cmd: encodeCommand(cmd.atcInv(Number(vsid), 0n, 52)) } } },
      ],
    };
    const invSizes = [toBinary(HwptInvalidateRequestSchema, create(HwptInvalidateRequestSchema, invReq)).length, toBinary(HwptInvalidateResponseSchema, create(HwptInvalidateResponseSchema, { entryNum: 2 })).length];
    const statsOf = async (rid: number) => (await sys.device.rpc.stats({ rid })).endpoints[0];
    progress.step("nested SMMUv3 with an ATS device-sim endpoint");

    const baseline = async (sizes: number[], into: Samples) => {
      const t = process.hrtime.bigint();
      await sys.echo(sizes[0] as number, sizes[1] as number, s.token);
      await sys.ping();
      into.add(usSince(t));
    };
    const measure = async (name: string, rid: number, round: (record: Samples) => Promise<void>, sizes: number[]) => {
      const lat = new Samples();
      const base = new Samples();
      const ignore = new Samples();
      for (let i = 0; i < 10; i++) {
        await round(ignore);
        await baseline(sizes, ignore);
      }
      const inv0 = (await statsOf(rid))?.atcInvalidations ?? 0n;
      const deadline = Date.now() + o.timeLimitMs;
      for (let i = 0; i < o.iterations && Date.now() < deadline; i++) {
        await round(lat);
        await baseline(sizes, base);
      }
      const invs = ((await statsOf(rid))?.atcInvalidations ?? 0n) - inv0;
      if (invs < BigInt(lat.n)) throw new Error(`${name}: the device saw ${invs} ATC invalidations in ${lat.n} rounds`);
      return judge({
        section: "invalidation",
        name,
        figure: { value: lat.p99 / 1000, p50: lat.p50 / 1000, p99: lat.p99 / 1000, unit: "ms" },
        baseline: { name: "grpc echo + NATS round trip", value: base.p50 / 1000, p50: base.p50 / 1000, p99: base.p99 / 1000, unit: "ms" },
        ratio: lat.p50 / base.p50,
        target: { on: "value", op: "<=", limit: 5 },
        note: `${lat.n} rounds; target on p99; the device counted ${invs} ATC invalidations`,
      });
    };

    rows.push(
      await measure(
        "HwptInvalidate [TLBI_NH_ASID, ATC_INV] → every ATC acked (RPC time)",
        RID.invNested,
        async (rec) => {
          await prime(RID.invNested, GUEST_IOVA, 0x4000n);
          const t = process.hrtime.bigint();
          await s.io.hwptInvalidate(invReq);
          rec.add(usSince(t));
        },
        invSizes,
      ),
    );
    progress.step("HwptInvalidate round trips");

    // ---- IoasUnmap with ATC_INV ---------------------------------------------------
    const { addr: va } = await s.io.mmap({ length: 16n * 4096n, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
    const { outIoasId: ioas } = await s.io.ioasAlloc({});
    const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: RID.invPlain } });
    await s.io.deviceAttach({ devId: outDevid, ptId: ioas });
    const page = 0x2000_0000n;
    const unmapSizes = [
      toBinary(IoasUnmapRequestSchema, create(IoasUnmapRequestSchema, { ioasId: ioas, iova: page, length: 4096n })).length,
      toBinary(IoasUnmapResponseSchema, create(IoasUnmapResponseSchema, { length: 4096n })).length,
    ];
    rows.push(
      await measure(
        "IoasUnmap 4 KiB (ATS device attached) → every ATC acked (RPC time)",
        RID.invPlain,
        async (rec) => {
          await s.io.ioasMap({ ioasId: ioas, flags: RW | IoasMapFlags.FIXED_IOVA, userVa: va, length: 4096n, iova: page });
          await prime(RID.invPlain, page, 4096n);
          const t = process.hrtime.bigint();
          await s.io.ioasUnmap({ ioasId: ioas, iova: page, length: 4096n });
          rec.add(usSince(t));
        },
        unmapSizes,
      ),
    );
    progress.step("IoasUnmap round trips");

    // ---- vEVENTQ delivery -----------------------------------------------------------
    const rid = RID.busDevice;
    await sys.registerBusDevice(rid, "bench-bus-device");
    try {
      const vm = await nestedVm(sys, s, rid, 0x20n);
      const q = await s.io.veventqAlloc({ viommuId: vm.viommu, type: VeventqType.ARM_SMMUV3, veventqDepth: 1024 });
      let waiter: ((seq: number) => void) | undefined;
      const sub = sys.bus.subscribe(subjects.veventq(s.sessionId, q.outVeventqId), VeventRecordSchema, (rec) => waiter?.(rec.sequence));
      await sys.bus.flush();
      const lat = new Samples();
      const base = new Samples();
      const ignore = new Samples();
      let lost = 0;
      let seq = 1n;
      const round = async (into: Samples) => {
        const t = process.hrtime.bigint();
        const arrived = new Promise<boolean>((resolve) => {
          const timer = setTimeout(() => resolve(false), 2000);
          waiter = () => {
            clearTimeout(timer);
            resolve(true);
          };
        });
        const reply = await sys.bus.request(subjects.dma(rid), DmaBatchSchema, { rid, seq: ++seq, ops: [{ kind: DmaOpKind.READ, addr: UNMAPPED_IOVA, length: 8 }] }, DmaBatchResultSchema);
        if (reply.results[0]?.status !== DmaStatus.FAULT) throw new Error(`vEVENT bench: DMA to an unmapped IOVA did not fault (${DmaStatus[reply.results[0]?.status ?? 0]})`);
        if (await arrived) into.add(usSince(t));
        else lost++;
        waiter = undefined;
        const tb = process.hrtime.bigint();
        await sys.ping();
        (into === ignore ? ignore : base).add(usSince(tb));
      };
      for (let i = 0; i < 10; i++) await round(ignore);
      const deadline = Date.now() + o.timeLimitMs;
      for (let i = 0; i < o.iterations && Date.now() < deadline; i++) await round(lat);
      sub.unsubscribe();
      rows.push(
        judge({
          section: "invalidation",
          name: "vEVENTQ: DMA fault → VeventRecord on NATS (from sending the DMA)",
          figure: { value: lat.p99 / 1000, p50: lat.p50 / 1000, p99: lat.p99 / 1000, unit: "ms" },
          baseline: { name: "NATS round trip", value: base.p50 / 1000, p50: base.p50 / 1000, p99: base.p99 / 1000, unit: "ms" },
          ratio: lat.p50 / base.p50,
          target: { on: "value", op: "<=", limit: 5 },
          note: `${lat.n} events; ${lost} not delivered within 2 s; target on p99`,
        }),
      );
      progress.step("vEVENTQ deliveries");
    } finally {
      await sys.unregisterBusDevice(rid);
    }
  } finally {
    await s.close();
  }
  return rows;
}
