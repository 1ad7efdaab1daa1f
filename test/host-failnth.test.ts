// fail-nth sweep (the kernel's iommufd_fail_nth): for each scenario and every
// N until the call succeeds, the Nth fault point fails, and the session's
// objects and pinned-page accounting must be exactly what they were before
// the call — nothing leaked, nothing half-made.
import { DmaOpKind } from "@iommufd/proto/bus";
import { HwptAllocFlags, HwptDataType, IoasMapFlags, MmapFlags, MmapProt, ViommuType } from "@iommufd/proto/iommufd";
import { TestTopology, type UapiSession, errno, openSession } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const PAGE = 4096n;
const FIXED = IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA;
let topo: TestTopology;
let addr: string;
let rid = 0x400;

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }]);
  addr = topo.get("host-iommufd").address;
}, 60_000);

afterAll(async () => {
  await topo?.stop();
});

async function snapshot(s: UapiSession) {
  const d = (await s.admin.dumpObjects({ sessionIds: [s.sessionId] })).sessions[0];
  return {
    pinned: d?.pinnedBytes,
    objects: d?.objects.map((o) => ({ id: o.id, type: o.type, users: o.users, attrs: o.attributes.map((a) => `${a.key}=${a.value}`).sort() })),
  };
}

interface Ctx {
  s: UapiSession;
  va: bigint;
  ioas: number;
  dev: number;
  rid: number;
}

async function base(iommuId: string, attach: boolean): Promise<Ctx> {
  const s = await openSession(addr, { clientName: "failnth" });
  const { addr: va } = await s.io.mmap({ length: 256n * PAGE, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
  const { outIoasId: ioas } = await s.io.ioasAlloc({});
  const r = (rid += 8);
  await s.admin.createTestDevice({ iommuId, name: `fn${r.toString(16)}`, rid: r, maxPasidLog2: 8 });
  const { outDevid: dev } = await s.io.deviceBind({ device: { case: "rid", value: r } });
  await s.io.ioasMap({ ioasId: ioas, flags: FIXED, userVa: va, length: 32n * PAGE, iova: 0x100000n });
  if (attach) await s.io.deviceAttach({ devId: dev, ptId: ioas });
  return { s, va, ioas, dev, rid: r };
}

/** Run `op` with fail-nth armed at N = 1, 2, ... until it succeeds; check the state after each failure. */
async function sweep(ctx: Ctx, op: (c: Ctx) => Promise<unknown>): Promise<number> {
  const { s } = ctx;
  for (let n = 1; n < 200; n++) {
    const before = await snapshot(s);
    await s.admin.setFailNth({ sessionId: s.sessionId, nth: BigInt(n) });
    const r = await errno(op(ctx));
    const st = await s.admin.getFailNth({ sessionId: s.sessionId });
    await s.admin.setFailNth({ sessionId: s.sessionId, nth: 0n });
    if (r === "ok") {
      expect(st.injected).toBe(false);
      return n;
    }
    expect(st.injected, `N=${n}: ${r} without an injected failure`).toBe(true);
    expect(r).toBe("ENOMEM");
    expect(await snapshot(s), `state after failing point ${n} (${st.injectedPoint})`).toEqual(before);
  }
  throw new Error("the sweep never got through");
}

describe("fail-nth sweeps", () => {
  for (const iommu of ["smmu0", "dmar0"]) {
    it(`${iommu}: IOAS_MAP into an attached domain`, async () => {
      const ctx = await base(iommu, true);
      const n = await sweep(ctx, (c) => c.s.io.ioasMap({ ioasId: c.ioas, flags: FIXED, userVa: c.va + 64n * PAGE, length: 16n * PAGE, iova: 0x400000n }));
      expect(n).toBeGreaterThan(2);
      // the mapping works for DMA after the sweep
      const w = await ctx.s.admin.testDeviceDma({ rid: ctx.rid, ops: [{ kind: DmaOpKind.WRITE, addr: 0x400000n, data: new Uint8Array([1, 2, 3]) }] });
      expect(w.results[0]?.done).toBe(3);
      await ctx.s.close();
    });

    it(`${iommu}: attach to an IOAS (automatic domain)`, async () => {
      const ctx = await base(iommu, false);
      expect(await sweep(ctx, (c) => c.s.io.deviceAttach({ devId: c.dev, ptId: c.ioas }))).toBeGreaterThan(2);
      await ctx.s.close();
    });

    it(`${iommu}: HWPT_ALLOC nest parent over an IOAS with mappings`, async () => {
      const ctx = await base(iommu, false);
      expect(await sweep(ctx, (c) => c.s.io.hwptAlloc({ devId: c.dev, ptId: c.ioas, flags: HwptAllocFlags.NEST_PARENT }))).toBeGreaterThan(2);
      await ctx.s.close();
    });

    it(`${iommu}: IOAS_COPY between two attached IOASes`, async () => {
      const ctx = await base(iommu, true);
      const { outIoasId: dst } = await ctx.s.io.ioasAlloc({});
      const r2 = (rid += 8);
      await ctx.s.admin.createTestDevice({ iommuId: iommu, name: `fn${r2.toString(16)}`, rid: r2 });
      const { outDevid } = await ctx.s.io.deviceBind({ device: { case: "rid", value: r2 } });
      await ctx.s.io.deviceAttach({ devId: outDevid, ptId: dst });
      expect(
        await sweep(ctx, (c) => c.s.io.ioasCopy({ flags: FIXED, srcIoasId: c.ioas, dstIoasId: dst, srcIova: 0x100000n, dstIova: 0x200000n, length: 8n * PAGE })),
      ).toBeGreaterThan(1);
      await ctx.s.close();
    });
  }

  it("smmu0: vIOMMU, vDEVICE and nested HWPT", async () => {
    const ctx = await base("smmu0", false);
    const { outHwptId: parent } = await ctx.s.io.hwptAlloc({ devId: ctx.dev, ptId: ctx.ioas, flags: HwptAllocFlags.NEST_PARENT });
    expect(await sweep(ctx, (c) => c.s.io.viommuAlloc({ type: ViommuType.ARM_SMMUV3, devId: c.dev, hwptId: parent }))).toBeGreaterThan(1);
    const dump = await snapshot(ctx.s);
    const viommu = dump.objects?.find((o) => o.type === 7)?.id as number;
    expect(await sweep(ctx, (c) => c.s.io.vdeviceAlloc({ viommuId: viommu, devId: c.dev, virtId: 0x18n }))).toBeGreaterThan(1);
    const abortSte = { case: "armSmmuv3" as const, value: { ste: [0x1n, 0n] } };
    expect(
      await sweep(ctx, (c) => c.s.io.hwptAlloc({ devId: c.dev, ptId: viommu, dataType: HwptDataType.ARM_SMMUV3, dataLen: 16, data: abortSte })),
    ).toBeGreaterThan(1);
    await ctx.s.close();
  });
});
