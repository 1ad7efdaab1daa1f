// Cross-process with a device-sim: nats-server, host-iommufd, device-sim
// (one PCIe endpoint with PASID, ATS + ATC, PRI) and a guest-viommu VM, each
// its own process, for both virtual IOMMUs. The guest starts a VERIFY
// workload on the device through device.v1 (the device writes a pattern
// through the guest-built stage 1 over host stage 2 and reads it back); the
// device caches translations in its ATC via ATS and the guest's unmap
// invalidates them (CMD_ATC_INV / device-TLB → the host's atc-inv) so the
// next access faults; SVA with PRI through the device's own ATS/PRI path.
import { createClient } from "@iommufd/kit";
import { DmaStatus } from "@iommufd/proto/bus";
import { Device, DmaKind, WorkloadKind, WorkloadState } from "@iommufd/proto/device";
import { Guest, SessionState } from "@iommufd/proto/guest";
import { TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const RID = 0x18;

describe.each([
  { vendor: "smmuv3", iommu: "smmu0", vid: 0x10 },
  { vendor: "vtd", iommu: "dmar0", vid: 0x0300 },
] as const)("guest-viommu ($vendor) with a device-sim endpoint", ({ vendor, iommu, vid }) => {
  let topo: TestTopology;
  let guest: ReturnType<typeof createClient<typeof Guest>>;
  let dev: ReturnType<typeof createClient<typeof Device>>;

  beforeAll(async () => {
    topo = await TestTopology.start([
      { kind: "host-iommufd", args: ["--iommu", `${iommu}=${vendor}`] },
      { kind: "device-sim", name: "dev1", args: ["--endpoint", `name=ep0,rid=0x${RID.toString(16)},iommu=${iommu},pasid=8,ats=1,atc=64,pri=1,prq=32`] },
    ]);
    const devsim = topo.get("dev1").address;
    await topo.add({
      kind: "guest-viommu",
      name: "vm1",
      args: ["--vendor", vendor, "--memory", "32M", "--host", topo.get("host-iommufd").address, "--device", `rid=0x${RID.toString(16)},vid=${vid},devsim=${devsim}`],
    });
    guest = createClient(Guest, topo.get("vm1").address);
    dev = createClient(Device, devsim);
    const deadline = Date.now() + 30_000;
    for (;;) {
      const info = await guest.rpc.info({}).catch(() => undefined);
      const devs = await guest.rpc.listDevices({}).catch(() => undefined);
      if (info?.sessionState === SessionState.OPEN && devs?.devices.length) break;
      if (Date.now() > deadline) throw new Error(`VM did not boot:\n${topo.get("vm1").lines.slice(-30).join("\n")}`);
      await new Promise((r) => setTimeout(r, 200));
    }
  }, 120_000);

  afterAll(async () => {
    guest?.close();
    dev?.close();
    await topo?.stop();
  });

  it("runs a VERIFY workload started by the guest on a buffer it mapped", async () => {
    const w = await guest.rpc.startWorkload({ spec: { rid: RID, kind: WorkloadKind.VERIFY, length: 64n * 1024n, opSize: 4096, useAts: true }, mapProt: 3 });
    expect(w.iova).toBeGreaterThan(0n);
    let st = (await dev.rpc.getWorkload({ workloadId: w.workloadId })).status;
    for (let i = 0; i < 100 && st?.state === WorkloadState.RUNNING; i++) {
      await new Promise((r) => setTimeout(r, 100));
      st = (await dev.rpc.getWorkload({ workloadId: w.workloadId })).status;
    }
    expect(st?.state).toBe(WorkloadState.DONE);
    expect(st?.faults).toBe(0n);
    expect(st?.verifyMismatches).toBe(0n);
    expect(st?.bytes).toBeGreaterThanOrEqual(2n * 64n * 1024n);
    // The pattern the device wrote is in guest RAM behind the IOVA.
    const ram = await guest.rpc.readMemory({ target: { case: "gpa", value: w.gpa }, length: 64 });
    const viaDevice = await dev.rpc.dma({ rid: RID, kind: DmaKind.READ, iova: w.iova, length: 64n });
    expect(Buffer.from(ram.data)).toEqual(Buffer.from(viaDevice.data));
  });

  it("ATS: a cached translation is invalidated by the guest's unmap, so the next access faults", async () => {
    const m = await guest.rpc.map({ rid: RID, length: 8192n, prot: 3 });
    const first = await dev.rpc.dma({ rid: RID, kind: DmaKind.WRITE, iova: m.iova, data: new Uint8Array([1, 2, 3, 4]), useAts: true });
    expect(first.status).toBe(DmaStatus.OK);
    const again = await dev.rpc.dma({ rid: RID, kind: DmaKind.READ, iova: m.iova, length: 4n, useAts: true });
    expect(again.atcHits).toBeGreaterThan(0);
    const before = (await dev.rpc.stats({ rid: RID })).endpoints[0]?.atcInvalidations ?? 0n;
    const u = await guest.rpc.unmap({ rid: RID, iova: m.iova, length: 8192n });
    expect(u.hwptInvalidateCalls).toBe(1);
    const after = (await dev.rpc.stats({ rid: RID })).endpoints[0]?.atcInvalidations ?? 0n;
    expect(after).toBeGreaterThan(before);
    const stale = await dev.rpc.dma({ rid: RID, kind: DmaKind.READ, iova: m.iova, length: 4n, useAts: true });
    expect(stale.status).not.toBe(DmaStatus.OK);
  });

  it("SVA with PRI: the device's own ATS miss → page request → the guest faults the page in → the retry succeeds", async () => {
    const b = await guest.rpc.bindProcess({ rid: RID });
    const { va } = await guest.rpc.processMmap({ pid: b.pid, length: 4n * 4096n, prot: 3 });
    const data = new TextEncoder().encode(`${vendor}: written after a page request`);
    const r = await dev.rpc.dma({ rid: RID, pasid: b.pasid, kind: DmaKind.WRITE, iova: va + 4096n, data, useAts: true });
    expect(r.status).toBe(DmaStatus.OK);
    expect(r.pageRequests).toBeGreaterThan(0);
    expect(r.retries).toBeGreaterThan(0);
    const seen = await guest.rpc.readMemory({ target: { case: "process", value: { pid: b.pid, va: va + 4096n } }, length: data.length });
    expect(Buffer.from(seen.data)).toEqual(Buffer.from(data));
    const stats = await guest.rpc.stats({});
    expect(stats.pageRequests).toBeGreaterThan(0n);
    expect(stats.pageResponses).toBeGreaterThan(0n);
  });
});
