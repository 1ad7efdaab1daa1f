// Cross-process, virtual VT-d: nats-server, host-iommufd and a guest-viommu
// VM as separate processes, with a host Admin test device behind a VT-d
// unit. DMA goes through the guest's first stage (shadowed by the VMM as a
// nested HWPT on the nesting parent) over the host's second stage, data
// checked both ways; after the guest unmaps (one HWPT_INVALIDATE with VTD_S1
// entries) the device's next DMA faults; SVA with PRI: a VCMD-allocated
// PASID bound to a guest process, a page request faulted in by the guest,
// the device's retry succeeds.
import { createClient } from "@iommufd/kit";
import { DmaOpKind, DmaStatus, FaultRoute, PrgResponseCode } from "@iommufd/proto/bus";
import { Guest, GuestEventSource, type GuestEvent, SessionState } from "@iommufd/proto/guest";
import { Admin } from "@iommufd/proto/iommufd";
import { TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const RID = 0x28;
const VRID = 0x0300;
let topo: TestTopology;
let admin: ReturnType<typeof createClient<typeof Admin>>;
let guest: ReturnType<typeof createClient<typeof Guest>>;

async function vmRunning(timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const info = await guest.rpc.info({}).catch(() => undefined);
    const devs = await guest.rpc.listDevices({}).catch(() => undefined);
    if (info?.sessionState === SessionState.OPEN && devs && devs.devices.length > 0) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`VM did not boot:\n${topo.get("vm1").lines.slice(-40).join("\n")}`);
}

async function events(pred: (e: GuestEvent) => boolean, waitMs: number): Promise<GuestEvent[]> {
  const deadline = Date.now() + waitMs;
  let from = 1n;
  const out: GuestEvent[] = [];
  while (Date.now() < deadline) {
    const r = await guest.rpc.readEventLog({ fromSeq: from, waitMs: 250 });
    out.push(...r.events.filter(pred));
    if (out.length) return out;
    from = r.nextSeq;
  }
  return out;
}

async function inbox(prgIndex: number): Promise<PrgResponseCode | undefined> {
  for (let i = 0; i < 20; i++) {
    const r = await admin.rpc.testDeviceInbox({ rid: RID, waitMs: 500 });
    const hit = r.pageGroupResponses.find((p) => p.prgIndex === prgIndex);
    if (hit) return hit.responseCode;
  }
  return undefined;
}

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd", args: ["--iommu", "dmar0=vtd"] }]);
  const host = topo.get("host-iommufd");
  admin = createClient(Admin, host.address);
  await admin.rpc.createTestDevice({ iommuId: "dmar0", name: "tdev0", rid: RID, maxPasidLog2: 8, ats: true, pri: true, priOutstandingCapacity: 32 });
  await topo.add({
    kind: "guest-viommu",
    name: "vm1",
    args: ["--vendor", "vtd", "--memory", "32M", "--host", host.address, "--device", `name=tdev0,vid=${VRID}`],
  });
  guest = createClient(Guest, topo.get("vm1").address);
  await vmRunning();
}, 90_000);

afterAll(async () => {
  guest?.close();
  admin?.close();
  await topo?.stop();
});

describe("guest-viommu (VT-d) against a real host", () => {
  it("shows the VM with a nesting parent and the device attached to its shadowed first stage", async () => {
    const info = await guest.rpc.info({});
    expect(info.viommuId).toBe(0);
    expect(info.s2HwptId).toBeGreaterThan(0);
    const [d] = (await guest.rpc.listDevices({})).devices;
    expect(d).toMatchObject({ rid: RID, virtId: BigInt(VRID), atsEnabled: true, priEnabled: true });
    expect(d?.hwptId).toBeGreaterThan(0);
    expect(d?.hwptId).not.toBe(info.s2HwptId);
  });

  it("DMA through guest first stage over host second stage, data checked; unmap → ONE HWPT_INVALIDATE, the next DMA faults", async () => {
    const len = 4n * 4096n;
    const m = await guest.rpc.map({ rid: RID, length: len, prot: 3 });
    const pattern = new Uint8Array(Number(len)).map((_, i) => (i * 13 + 1) & 0xff);
    await guest.rpc.writeMemory({ target: { case: "gpa", value: m.gpa }, data: pattern });
    const rd = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: m.iova, length: Number(len) }] });
    expect(rd.results[0]?.status).toBe(DmaStatus.OK);
    expect(Buffer.from(rd.results[0]?.data ?? new Uint8Array())).toEqual(Buffer.from(pattern));
    const msg = new TextEncoder().encode("device write through a VT-d nested translation");
    const wr = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: m.iova + 2n * 4096n + 7n, data: msg }] });
    expect(wr.results[0]?.status).toBe(DmaStatus.OK);
    const back = await guest.rpc.readMemory({ target: { case: "gpa", value: m.gpa + 2n * 4096n + 7n }, length: msg.length });
    expect(Buffer.from(back.data)).toEqual(Buffer.from(msg));

    const u = await guest.rpc.unmap({ rid: RID, iova: m.iova, length: len });
    expect(u.length).toBe(len);
    expect(u.hwptInvalidateCalls).toBe(1);
    expect(u.invalidations.map((i) => i.kind)).toEqual(["PASID-IOTLB", "DEVICE-TLB", "WAIT"]);
    const after = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: m.iova, length: 8 }] });
    expect(after.results[0]?.status).toBe(DmaStatus.FAULT);
  });

  // The iommufd uAPI has no vEVENTQ type for VT-d (only ARM_SMMUV3 and
  // TEGRA241_CMDQV), so, as with Linux, a non-recoverable DMA fault under a
  // nested VT-d domain goes to the host's fault log and the device, never to
  // the guest: its fault recording registers stay empty. Only recoverable
  // faults (PRI) reach a VT-d guest.
  it("an unmapped-IOVA fault goes to the host log and the device, not to the VT-d guest (no VT-d vEVENTQ in the uAPI)", async () => {
    const m = await guest.rpc.map({ rid: RID, length: 4096n, prot: 3 });
    await guest.rpc.unmap({ rid: RID, iova: m.iova, length: 4096n });
    const r = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: m.iova, length: 8 }] });
    expect(r.results[0]?.status).toBe(DmaStatus.FAULT);
    expect(r.results[0]?.fault?.route).toBe(FaultRoute.HOST);
    const seen = await events((e) => e.source === GuestEventSource.VEVENTQ, 1000);
    expect(seen).toEqual([]);
  });

  it("SVA with PRI: a VCMD-allocated PASID; the guest faults the page in and the device's retry succeeds", async () => {
    const b = await guest.rpc.bindProcess({ rid: RID });
    expect(b.pasid).toBeGreaterThan(0);
    const { va } = await guest.rpc.processMmap({ pid: b.pid, length: 2n * 4096n, prot: 3 });
    const data = new TextEncoder().encode("PRI brought this page in");
    const first = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: va, pasid: b.pasid, pasidValid: true, data }] });
    expect(first.results[0]?.status).toBe(DmaStatus.FAULT);
    await admin.rpc.testDevicePri({ rid: RID, requests: [{ rid: RID, pasid: b.pasid, pasidValid: true, addr: va, r: true, w: true, prgIndex: 9, last: true }] });
    expect(await inbox(9)).toBe(PrgResponseCode.SUCCESS);
    const retry = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: va, pasid: b.pasid, pasidValid: true, data }] });
    expect(retry.results[0]?.status).toBe(DmaStatus.OK);
    const seen = await guest.rpc.readMemory({ target: { case: "process", value: { pid: b.pid, va } }, length: data.length });
    expect(Buffer.from(seen.data)).toEqual(Buffer.from(data));
    await guest.rpc.unbindProcess({ rid: RID, pasid: b.pasid });
    const gone = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: va, pasid: b.pasid, pasidValid: true, length: 8 }] });
    expect(gone.results[0]?.status).not.toBe(DmaStatus.OK);
  });
});
