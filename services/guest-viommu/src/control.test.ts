// The guest.v1 control service on an in-process VM (guest kernel + VMM +
// recording fake host): every RPC's happy path and errnos, and the VM's
// lifecycle (ENOTCONN before boot, rebuild after the session is lost).
import { create } from "@bufbuild/protobuf";
import { type CallContext, ErrnoError } from "@iommufd/kit";
import {
  BindProcessRequestSchema,
  GuestEventSource,
  GuestIommuVendor,
  InfoRequestSchema,
  ListDevicesRequestSchema,
  MapRequestSchema,
  ProcessMmapRequestSchema,
  ReadEventLogRequestSchema,
  ReadMemoryRequestSchema,
  SessionState,
  StartWorkloadRequestSchema,
  StatsRequestSchema,
  TouchProcessRequestSchema,
  UnbindProcessRequestSchema,
  UnmapRequestSchema,
  WriteMemoryRequestSchema,
} from "@iommufd/proto/guest";
import { WorkloadKind } from "@iommufd/proto/device";
import { afterEach, describe, expect, it } from "vitest";
import { guestService } from "./control.js";
import { ByteMapRam } from "./guest/ram.js";
import { FakeHost } from "./testing/fake-host.js";
import { Vm } from "./vm.js";

const ctx = {} as CallContext;
const RID = 0x18;
let vm: Vm | undefined;

afterEach(async () => {
  await vm?.stop();
  vm = undefined;
});

function makeVm(host: FakeHost) {
  vm = new Vm({
    vmName: "vm1",
    vendor: "smmuv3",
    memory: 32n << 20n,
    devices: [{ name: "nic0", vid: 0x10, devsim: "127.0.0.1:1" }],
    retryMs: { min: 20, max: 50 },
    connect: () => ({ client: host.client, inventory: host.inventory, events: host.events, ramFactory: ({ regions }) => new ByteMapRam(regions) }),
  });
  return vm;
}

const errnoOf = async (f: () => unknown) => {
  try {
    await f();
    return "ok";
  } catch (e) {
    return e instanceof ErrnoError ? e.errno : String(e);
  }
};

describe("guest.v1 control service", () => {
  it("serves every RPC of a running VM", async () => {
    const host = new FakeHost([{ name: "nic0", rid: RID, iommuId: "smmu0", vendor: "smmuv3", maxPasidLog2: 8, ats: true, pri: true }]);
    const v = makeVm(host);
    const started: unknown[] = [];
    const svc = guestService(v, { deviceClient: () => ({ startWorkload: async (req) => (started.push(req), { $typeName: "device.v1.StartWorkloadResponse", workloadId: "w1" }) }) });
    expect(await errnoOf(() => svc.listDevices?.(create(ListDevicesRequestSchema, {}), ctx))).toBe("ENOTCONN");
    v.start();
    await v.whenRunning(5000);

    const info = await svc.info?.(create(InfoRequestSchema, {}), ctx);
    expect(info).toMatchObject({ vmName: "vm1", vendor: GuestIommuVendor.SMMUV3, sessionState: SessionState.OPEN, sessionId: "s1", ramBytes: 32n << 20n });
    expect(info?.viommuId).toBeGreaterThan(0);

    const devs = await svc.listDevices?.(create(ListDevicesRequestSchema, {}), ctx);
    expect(devs?.devices?.[0]).toMatchObject({ rid: RID, virtId: 0x10n, name: "nic0", atsEnabled: true, priEnabled: true, maxPasidLog2: 8 });
    expect(devs?.devices?.[0]?.hwptId).toBeGreaterThan(0);

    const m = await svc.map?.(create(MapRequestSchema, { rid: RID, length: 3n * 4096n, prot: 3 }), ctx);
    expect(m?.length).toBe(3n * 4096n);
    expect(await errnoOf(() => svc.map?.(create(MapRequestSchema, { rid: RID, length: 4096n, prot: 0 }), ctx))).toBe("EINVAL");
    expect(await errnoOf(() => svc.map?.(create(MapRequestSchema, { rid: 0x99, length: 4096n, prot: 1 }), ctx))).toBe("ENOENT");
    expect(await errnoOf(() => svc.map?.(create(MapRequestSchema, { rid: RID, length: 4096n, prot: 1, iova: m?.iova }), ctx))).toBe("EEXIST");
    const u = await svc.unmap?.(create(UnmapRequestSchema, { rid: RID, iova: m?.iova ?? 0n, length: 3n * 4096n }), ctx);
    expect(u?.hwptInvalidateCalls).toBe(1);
    expect(u?.invalidations?.map((i) => i.kind)).toEqual(expect.arrayContaining(["CMD_TLBI_NH_VA", "CMD_ATC_INV", "CMD_SYNC"]));
    expect(await errnoOf(() => svc.unmap?.(create(UnmapRequestSchema, { rid: RID, iova: m?.iova ?? 0n, length: 4096n }), ctx))).toBe("ENOENT");

    const b = await svc.bindProcess?.(create(BindProcessRequestSchema, { rid: RID }), ctx);
    expect(b?.pasid).toBeGreaterThan(0);
    expect(await errnoOf(() => svc.bindProcess?.(create(BindProcessRequestSchema, { rid: RID, pid: 9999 }), ctx))).toBe("ESRCH");
    expect(await errnoOf(() => svc.bindProcess?.(create(BindProcessRequestSchema, { rid: RID, pid: b?.pid, pasid: b?.pasid }), ctx))).toBe("EBUSY");
    const pid = b?.pid ?? 0;
    const mm = await svc.processMmap?.(create(ProcessMmapRequestSchema, { pid, length: 2n * 4096n, prot: 3 }), ctx);
    const va = mm?.va ?? 0n;
    expect(await errnoOf(() => svc.processMmap?.(create(ProcessMmapRequestSchema, { pid, va, length: 4096n, prot: 3 }), ctx))).toBe("EEXIST");
    expect(await errnoOf(() => svc.readMemory?.(create(ReadMemoryRequestSchema, { target: { case: "process", value: { pid, va } }, length: 4 }), ctx))).toBe("EFAULT");
    const t = await svc.touchProcess?.(create(TouchProcessRequestSchema, { pid, va, length: 2n * 4096n, write: true }), ctx);
    expect(t?.pagesPopulated).toBe(2n);
    expect(await errnoOf(() => svc.touchProcess?.(create(TouchProcessRequestSchema, { pid, va: va + 0x10_0000n, length: 1n }), ctx))).toBe("EFAULT");
    const data = new TextEncoder().encode("across a page boundary");
    await svc.writeMemory?.(create(WriteMemoryRequestSchema, { target: { case: "process", value: { pid, va: va + 4090n } }, data }), ctx);
    const rd = await svc.readMemory?.(create(ReadMemoryRequestSchema, { target: { case: "process", value: { pid, va: va + 4090n } }, length: data.length }), ctx);
    expect(Buffer.from(rd?.data ?? new Uint8Array())).toEqual(Buffer.from(data));
    const un = await svc.unbindProcess?.(create(UnbindProcessRequestSchema, { rid: RID, pasid: b?.pasid ?? 0 }), ctx);
    expect(un?.invalidations?.map((i) => i.kind)).toEqual(expect.arrayContaining(["CMD_CFGI_CD", "CMD_TLBI_NH_ASID"]));
    expect(await errnoOf(() => svc.unbindProcess?.(create(UnbindProcessRequestSchema, { rid: RID, pasid: b?.pasid ?? 0 }), ctx))).toBe("ENOENT");

    const w = await svc.startWorkload?.(create(StartWorkloadRequestSchema, { spec: { rid: RID, kind: WorkloadKind.VERIFY, length: 8192n, opSize: 512 }, mapProt: 3 }), ctx);
    expect(w).toMatchObject({ workloadId: "w1", deviceSimAddress: "127.0.0.1:1" });
    expect(w?.iova).toBeGreaterThan(0n);
    expect((started[0] as { spec: { iova: bigint; rid: number } }).spec).toMatchObject({ iova: w?.iova, rid: RID });

    const log = await svc.readEventLog?.(create(ReadEventLogRequestSchema, { fromSeq: 1n }), ctx);
    expect(log?.events?.some((e) => e.kind === "probe" && e.source === GuestEventSource.DRIVER)).toBe(true);
    expect(log?.events?.find((e) => e.kind === "attach")?.rid).toBe(RID);
    const again = await svc.readEventLog?.(create(ReadEventLogRequestSchema, { fromSeq: log?.nextSeq ?? 0n, waitMs: 10 }), ctx);
    expect(again?.events).toEqual([]);

    const st = await svc.stats?.(create(StatsRequestSchema, {}), ctx);
    expect(st?.maps).toBeGreaterThanOrEqual(2n);
    expect(st?.unmaps).toBe(1n);
    expect(st?.hwptInvalidateCalls).toBeGreaterThanOrEqual(3n);
    expect(st?.hostCalls).toBeGreaterThan(10n);
    expect(st?.memBatches).toBeGreaterThan(0n);
  });

  it("rebuilds the VM on a new session when the old one is lost", async () => {
    const host = new FakeHost([{ name: "nic0", rid: RID, iommuId: "smmu0", vendor: "smmuv3", maxPasidLog2: 0, ats: false, pri: false }]);
    host.leaseMs = 300;
    const v = makeVm(host);
    v.start();
    await v.whenRunning(5000);
    const opens = host.of("openSession").length;
    host.failNext("keepAlive", "EBADF");
    await expect.poll(() => v.rebuilds, { timeout: 5000 }).toBe(1);
    await v.whenRunning(5000);
    expect(host.of("openSession").length).toBe(opens + 1);
    const kinds = v.log.entries().map((e) => e.kind);
    expect(kinds).toContain("session lost");
    expect(kinds).toContain("rebuilt");
    const svc = guestService(v);
    expect((await svc.info?.(create(InfoRequestSchema, {}), ctx))?.rebuilds).toBe(1n);
  });
});
