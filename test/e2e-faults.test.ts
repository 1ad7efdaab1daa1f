// End-to-end process faults on a whole topology (nats, host, device-sim, a
// VM per vendor) under the launcher, with each party's reaction checked:
// - guest death: the VM's session lease expires on the host and everything
//   it owned is released (objects gone, devices unbound);
// - host restart: the host comes back empty; device-sims register their
//   endpoints again; each VM detects its lost session and rebuilds its
//   configuration, and DMA through nested translation works again.
import { createClient } from "@iommufd/kit";
import { Device, DmaKind } from "@iommufd/proto/device";
import { DmaStatus } from "@iommufd/proto/bus";
import { Guest, SessionState } from "@iommufd/proto/guest";
import { Admin } from "@iommufd/proto/iommufd";
import { DEFAULT_TOPOLOGY_YAML, Launcher, parseTopology } from "@iommufd/topology";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

// The default topology with short guest leases, so lease expiry is quick to see.
const YAML = DEFAULT_TOPOLOGY_YAML.replace(/(grpc_port: 5007[12])/g, "$1\n    args: [--lease-ms, \"6000\"]");
let launcher: Launcher;
const lines: string[] = [];

const addr = (name: string) => `127.0.0.1:${launcher.status().find((p) => p.name === name)?.grpcPort}`;
const admin = () => createClient(Admin, addr("host")).rpc;

async function until<T>(what: string, fn: () => Promise<T | undefined>, ms = 30_000): Promise<T> {
  const deadline = Date.now() + ms;
  while (Date.now() < deadline) {
    const v = await fn().catch(() => undefined);
    if (v !== undefined) return v;
    await new Promise((r) => setTimeout(r, 200));
  }
  throw new Error(`timed out waiting for ${what}\n${lines.slice(-30).join("\n")}`);
}

/** The VM is up (at least `rebuilds` rebuilds done): session open and its device attached to a nested HWPT. */
const vmReady = (vm: string, rebuilds = 0) =>
  until(`${vm} ready`, async () => {
    const g = createClient(Guest, addr(vm)).rpc;
    const info = await g.info({});
    const devs = (await g.listDevices({})).devices;
    const up = info.sessionState === SessionState.OPEN && info.rebuilds >= BigInt(rebuilds) && devs.length > 0 && devs.every((d) => d.hwptId > 0);
    return up ? { info, devs } : undefined;
  });

/** Map a page in the VM and DMA it from its device-sim endpoint; returns the DMA status. */
async function dmaThroughVm(vm: string, rid: number): Promise<DmaStatus> {
  const g = createClient(Guest, addr(vm)).rpc;
  const m = await g.map({ rid, length: 4096n, prot: 3 });
  const data = new TextEncoder().encode(`e2e ${vm}`);
  const d = createClient(Device, addr("devsim0")).rpc;
  const w = await d.dma({ rid, kind: DmaKind.WRITE, iova: m.iova, data });
  const back = await g.readMemory({ target: { case: "gpa", value: m.gpa }, length: data.length });
  expect(Buffer.from(back.data).toString()).toBe(`e2e ${vm}`);
  return w.status;
}

beforeAll(async () => {
  launcher = await Launcher.start(parseTopology(YAML, "e2e"), { ports: "auto", output: (l) => lines.push(l), processLogs: true, color: false, readyTimeoutMs: 60_000 });
  await vmReady("vm-smmu");
  await vmReady("vm-vtd");
}, 120_000);

afterAll(async () => {
  await launcher?.stop();
});

describe("process faults, end to end", () => {
  it("host restart: devices register again, each VM rebuilds, DMA works again", { timeout: 120_000 }, async () => {
    await vmReady("vm-smmu");
    expect(await dmaThroughVm("vm-smmu", 0x18)).toBe(DmaStatus.OK);
    const before = (await admin().dumpObjects({})).sessions.length;
    expect(before).toBe(2);
    await launcher.restart("host", { kill: true });
    // The new host starts empty; device-sims see HostUp and register again.
    const inv = await until("endpoints registered again", async () => {
      const i = await admin().inventory({});
      return i.devices.length === 2 ? i : undefined;
    });
    expect(inv.devices.map((d) => d.registeredBy)).toEqual(["devsim0", "devsim0"]);
    // Each VM notices its session is gone and rebuilds on a new one.
    for (const vm of ["vm-smmu", "vm-vtd"]) {
      const { info } = await vmReady(vm, 1);
      expect(info.rebuilds).toBeGreaterThanOrEqual(1n);
    }
    expect((await admin().dumpObjects({})).sessions.length).toBe(2);
    await vmReady("vm-smmu", 1);
    expect(await dmaThroughVm("vm-smmu", 0x18)).toBe(DmaStatus.OK);
    await vmReady("vm-vtd", 1);
    expect(await dmaThroughVm("vm-vtd", 0x20)).toBe(DmaStatus.OK);
  });

  it("guest death: the VM's lease expires and everything it owned is released", { timeout: 90_000 }, async () => {
    const { info } = await vmReady("vm-vtd", 1);
    const sid = info.sessionId;
    expect((await admin().dumpObjects({ sessionIds: [sid] })).sessions[0]?.objects.length ?? 0).toBeGreaterThan(0);
    await launcher.kill("vm-vtd");
    // No KeepAlive any more: after the 6 s lease the host closes the session as closing the fd would.
    await until("the lease to expire", async () => ((await admin().dumpObjects({})).sessions.some((s) => s.sessionId === sid) ? undefined : true), 30_000);
    const inv = await admin().inventory({});
    expect(inv.devices.find((d) => d.rid === 0x20)?.boundSessionId).toBe("");
    expect(inv.devices.find((d) => d.rid === 0x18)?.boundSessionId).not.toBe("");
    // The device can be bound again by a new VM.
    await launcher.restart("vm-vtd");
    await vmReady("vm-vtd");
    expect(await dmaThroughVm("vm-vtd", 0x20)).toBe(DmaStatus.OK);
  });
});
