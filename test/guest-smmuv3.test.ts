// Cross-process, virtual SMMUv3: nats-server, host-iommufd and a
// guest-viommu VM as separate processes. The device is a host Admin test
// device (no device-sim process): DMA goes through the guest-built stage 1
// over the host's stage 2 with the data checked on both sides; after the
// guest unmaps, the device's next DMA faults and the guest's event queue
// shows the fault with the virtual StreamID; SVA with PRI: the device asks
// for an unmapped page of a guest process, the guest faults it in and
// answers, and the device's retry succeeds.
import { createClient } from "@iommufd/kit";
import { DmaOpKind, DmaStatus, FaultRoute, PrgResponseCode } from "@iommufd/proto/bus";
import { Guest, GuestEventSource, type GuestEvent, SessionState } from "@iommufd/proto/guest";
import { Admin } from "@iommufd/proto/iommufd";
import { TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const RID = 0x18;
const VSID = 0x10;
let topo: TestTopology;
let admin: ReturnType<typeof createClient<typeof Admin>>;
let guest: ReturnType<typeof createClient<typeof Guest>>;
let logCursor = 1n;

/** Wait until the VM has booted (its device listed), showing the guest's log if it does not. */
export async function vmRunning(g: ReturnType<typeof createClient<typeof Guest>>, t: TestTopology, name: string, timeoutMs = 30_000): Promise<void> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const info = await g.rpc.info({}).catch(() => undefined);
    const devs = await g.rpc.listDevices({}).catch(() => undefined);
    if (info?.sessionState === SessionState.OPEN && devs && devs.devices.length > 0) return;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`VM ${name} did not boot:\n${t.get(name).lines.slice(-40).join("\n")}`);
}

async function waitEvent(pred: (e: GuestEvent) => boolean, timeoutMs = 10_000): Promise<GuestEvent> {
  const deadline = Date.now() + timeoutMs;
  while (Date.now() < deadline) {
    const r = await guest.rpc.readEventLog({ fromSeq: logCursor, waitMs: 500 });
    for (const e of r.events) if (pred(e)) return e;
    logCursor = r.nextSeq;
  }
  throw new Error("guest event not seen");
}

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd", args: ["--iommu", "smmu0=smmuv3"] }]);
  const host = topo.get("host-iommufd");
  admin = createClient(Admin, host.address);
  await admin.rpc.createTestDevice({ iommuId: "smmu0", name: "tdev0", rid: RID, maxPasidLog2: 8, ats: true, pri: true, priOutstandingCapacity: 32 });
  await topo.add({
    kind: "guest-viommu",
    name: "vm1",
    args: ["--vendor", "smmuv3", "--memory", "32M", "--host", host.address, "--device", `name=tdev0,vid=${VSID}`],
  });
  guest = createClient(Guest, topo.get("vm1").address);
  await vmRunning(guest, topo, "vm1");
}, 90_000);

afterAll(async () => {
  guest?.close();
  admin?.close();
  await topo?.stop();
});

describe("guest-viommu (SMMUv3) against a real host", () => {
  it("shows the VM and its device with a nested HWPT on the vIOMMU", async () => {
    const info = await guest.rpc.info({});
    expect(info.viommuId).toBeGreaterThan(0);
    expect(info.s2HwptId).toBeGreaterThan(0);
    const [d] = (await guest.rpc.listDevices({})).devices;
    expect(d).toMatchObject({ rid: RID, virtId: BigInt(VSID), name: "tdev0", atsEnabled: true, priEnabled: true });
    expect(d?.hwptId).toBeGreaterThan(0);
    expect(d?.vdeviceId).toBeGreaterThan(0);
  });

  it("DMA through guest stage 1 over host stage 2, data checked; unmap → the next DMA faults and the guest sees it with the vSID", async () => {
    const len = 4n * 4096n;
    const m = await guest.rpc.map({ rid: RID, length: len, prot: 3 });
    const pattern = new Uint8Array(Number(len)).map((_, i) => (i * 7 + 3) & 0xff);
    await guest.rpc.writeMemory({ target: { case: "gpa", value: m.gpa }, data: pattern });
    // Device reads what the guest wrote.
    const rd = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: m.iova, length: Number(len) }] });
    expect(rd.results[0]?.status).toBe(DmaStatus.OK);
    expect(Buffer.from(rd.results[0]?.data ?? new Uint8Array())).toEqual(Buffer.from(pattern));
    // Device writes; the guest reads it at the GPA behind the IOVA.
    const msg = new TextEncoder().encode("hello from the device, via nested translation");
    const wr = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: m.iova + 4096n + 100n, data: msg }] });
    expect(wr.results[0]?.status).toBe(DmaStatus.OK);
    const back = await guest.rpc.readMemory({ target: { case: "gpa", value: m.gpa + 4096n + 100n }, length: msg.length });
    expect(Buffer.from(back.data)).toEqual(Buffer.from(msg));

    const u = await guest.rpc.unmap({ rid: RID, iova: m.iova, length: len });
    expect(u.length).toBe(len);
    expect(u.hwptInvalidateCalls).toBe(1);
    expect(u.invalidations.map((i) => i.kind)).toContain("CMD_TLBI_NH_VA");
    expect(u.invalidations.map((i) => i.kind)).toContain("CMD_ATC_INV");

    const after = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.READ, addr: m.iova + 8n, length: 8 }] });
    expect(after.results[0]?.status).toBe(DmaStatus.FAULT);
    expect(after.results[0]?.fault).toMatchObject({ route: FaultRoute.VEVENTQ, vendorName: "F_TRANSLATION", stage: 1, inputAddress: m.iova + 8n });
    const ev = await waitEvent((e) => e.source === GuestEventSource.VEVENTQ && e.kind === "F_TRANSLATION");
    expect(ev.virtId).toBe(BigInt(VSID));
    expect(ev.rid).toBe(RID);
    expect(ev.addr).toBe(m.iova + 8n);
    const stats = await guest.rpc.stats({});
    expect(stats.vevents).toBeGreaterThan(0n);
  });

  it("SVA with PRI: a page request for an unmapped page of a guest process is faulted in and the retry succeeds", async () => {
    const b = await guest.rpc.bindProcess({ rid: RID });
    expect(b.pasid).toBeGreaterThan(0);
    const { va } = await guest.rpc.processMmap({ pid: b.pid, length: 4n * 4096n, prot: 3 });
    const target = va + 2n * 4096n;
    const data = new TextEncoder().encode("written by the device into a page PRI brought in");
    // First attempt: not mapped → fault (a PRI-capable device would now send a page request).
    const first = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: target, pasid: b.pasid, pasidValid: true, data }] });
    expect(first.results[0]?.status).toBe(DmaStatus.FAULT);
    await admin.rpc.testDevicePri({ rid: RID, requests: [{ rid: RID, pasid: b.pasid, pasidValid: true, addr: target, r: true, w: true, prgIndex: 5, last: true }] });
    let resp: { responseCode: PrgResponseCode; prgIndex: number } | undefined;
    for (let i = 0; i < 20 && !resp; i++) resp = (await admin.rpc.testDeviceInbox({ rid: RID, waitMs: 500 })).pageGroupResponses[0];
    expect(resp).toMatchObject({ prgIndex: 5, responseCode: PrgResponseCode.SUCCESS });
    const retry = await admin.rpc.testDeviceDma({ rid: RID, ops: [{ kind: DmaOpKind.WRITE, addr: target, pasid: b.pasid, pasidValid: true, data }] });
    expect(retry.results[0]?.status).toBe(DmaStatus.OK);
    const seen = await guest.rpc.readMemory({ target: { case: "process", value: { pid: b.pid, va: target } }, length: data.length });
    expect(Buffer.from(seen.data)).toEqual(Buffer.from(data));
    await waitEvent((e) => e.source === GuestEventSource.PAGE_REQUEST && e.kind === "page response SUCCESS");
    // A request outside any VMA is answered Invalid Request.
    await admin.rpc.testDevicePri({ rid: RID, requests: [{ rid: RID, pasid: b.pasid, pasidValid: true, addr: 0x1000n, r: true, prgIndex: 6, last: true }] });
    let bad: { responseCode: PrgResponseCode } | undefined;
    for (let i = 0; i < 20 && !bad; i++) bad = (await admin.rpc.testDeviceInbox({ rid: RID, waitMs: 500 })).pageGroupResponses.find((p) => p.prgIndex === 6);
    expect(bad?.responseCode).toBe(PrgResponseCode.INVALID_REQUEST);
    await guest.rpc.unbindProcess({ rid: RID, pasid: b.pasid });
  });
});
