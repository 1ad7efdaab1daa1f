// Cross-process, the VMM layer alone against a real host-iommufd process
// with no devices: the session, guest RAM as a memfd mapped into an IOAS at
// IOVA = GPA, the fault queue, guest RAM reads and writes over NATS at the
// session's user VAs, the guest driver's probe through that RAM, and the
// session's teardown.
import { Bus, ErrnoError, createClient, createLogger } from "@iommufd/kit";
import { Admin, Iommufd, ObjectType } from "@iommufd/proto/iommufd";
import { TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";
import { BusGuestRam, GuestKernel, RAM_BASE, Vmm, adminInventory, busEventPort } from "@iommufd/guest-viommu";

let topo: TestTopology;
let bus: Bus;
let admin: ReturnType<typeof createClient<typeof Admin>>;

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }]);
  bus = await Bus.connect({ url: topo.natsUrl, name: "vmm-test", log: createLogger("vmm-test", "silent") });
  admin = createClient(Admin, topo.get("host-iommufd").address);
}, 60_000);

afterAll(async () => {
  admin?.close();
  await bus?.close();
  await topo?.stop();
});

describe.each(["smmuv3", "vtd"] as const)("VMM (%s) against a real host, no devices", (vendor) => {
  it("opens a session, maps guest RAM at IOVA = GPA, moves guest RAM over NATS, and closes", async () => {
    let token: string | undefined;
    const io = createClient(Iommufd, topo.get("host-iommufd").address, { metadata: (): Record<string, string> => (token ? { "iommufd-session": token } : {}) });
    let ram: BusGuestRam | undefined;
    const vmm = new Vmm({
      vendor,
      vmName: `vm-${vendor}`,
      memory: 16n << 20n,
      devices: [],
      client: io.rpc,
      setSessionToken: (t) => {
        token = t;
      },
      inventory: adminInventory(admin.rpc),
      events: busEventPort(bus),
      ramFactory: ({ sessionId, userVa, regions }) => (ram = new BusGuestRam(bus, sessionId, userVa, regions)),
    });
    await vmm.start();
    expect(vmm.state).toBe("open");
    expect(vmm.faultId).toBeGreaterThan(0);

    const dump = (await admin.rpc.dumpObjects({ sessionIds: [vmm.sessionId] })).sessions[0];
    expect(dump?.clientName).toBe(`vm-${vendor}`);
    const types = dump?.objects.map((o) => o.type) ?? [];
    expect(types).toEqual([ObjectType.IOAS, ObjectType.FAULT]);
    expect(dump?.fds.map((f) => f.kind)).toEqual(expect.arrayContaining([expect.stringMatching(/memfd/i)]));

    // Guest RAM round trip through the host at the session's user VAs.
    const r = ram as BusGuestRam;
    const base = RAM_BASE[vendor];
    const data = new Uint8Array(8192).map((_, i) => (i * 31) & 0xff);
    await r.batch([{ kind: "write", gpa: base + 0x3000n, data }]);
    const [back] = await r.batch([{ kind: "read", gpa: base + 0x3000n, length: data.length }]);
    expect(Buffer.from(back as Uint8Array)).toEqual(Buffer.from(data));
    await expect(r.batch([{ kind: "read", gpa: base + (16n << 20n), length: 8 }])).rejects.toBeInstanceOf(ErrnoError);

    // The guest driver probes its virtual IOMMU through that RAM (no devices, so no host objects change).
    const before = vmm.counters.hostCalls;
    const kernel = new GuestKernel(vmm.port);
    await kernel.boot();
    expect(kernel.log.entries().some((e) => e.kind === "probe")).toBe(true);
    expect(vmm.counters.hostCalls).toBe(before + 0);
    expect(r.counters.batches).toBeGreaterThan(2);

    await vmm.stop();
    expect(vmm.state).toBe("closed");
    const err = await admin.rpc.dumpObjects({ sessionIds: [vmm.sessionId] }).then(
      (x) => x.sessions.length,
      (e: unknown) => (e instanceof ErrnoError ? e.errno : String(e)),
    );
    expect(err === 0 || err === "ENOENT" || err === "EBADF").toBe(true);
    io.close();
  });
});
