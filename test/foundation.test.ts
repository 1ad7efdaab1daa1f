// Cross-process: nats-server and the three services as separate processes.
// Each answers health over gRPC and a ping over NATS; the host serves the
// Iommufd service by reflection (buf curl, no code of ours) and errnos cross
// the process boundary; SIGTERM stops each cleanly.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { Bus, checkHealth, createClient, createLogger, ErrnoError, subjects } from "@iommufd/kit";
import { PingSchema, PongSchema } from "@iommufd/proto/bus";
import { Iommufd } from "@iommufd/proto/iommufd";
import { REPO_ROOT, TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
let topo: TestTopology;
let bus: Bus;

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }, { kind: "guest-viommu", name: "vm1" }, { kind: "device-sim", name: "dev1" }]);
  bus = await Bus.connect({ url: topo.natsUrl, name: "test", log: createLogger("test", "silent") });
}, 90_000);

afterAll(async () => {
  await bus?.close();
  await topo?.stop();
});

describe("foundation topology", () => {
  it("runs each party as its own process, each healthy over gRPC", async () => {
    const pids = new Set([...topo.procs.values()].map((p) => p.pid));
    expect(pids.size).toBe(3);
    expect(pids.has(process.pid)).toBe(false);
    for (const p of topo.procs.values()) expect(await checkHealth(p.address)).toBe("SERVING");
  });

  it("answers request/reply over NATS from every process", async () => {
    for (const name of ["host-iommufd", "vm1", "dev1"]) {
      const payload = new TextEncoder().encode(`hello ${name}`);
      const pong = await bus.request(subjects.ping(name), PingSchema, { seq: 42n, payload }, PongSchema);
      expect(pong.process).toBe(name);
      expect(pong.seq).toBe(42n);
      expect(new TextDecoder().decode(pong.payload)).toBe(`hello ${name}`);
    }
  });

  it("carries an errno across processes with name, number and status code", async () => {
    const c = createClient(Iommufd, topo.get("host-iommufd").address);
    const e = (await c.rpc.destroy({ id: 1 }).catch((x: unknown) => x)) as ErrnoError;
    expect(e).toBeInstanceOf(ErrnoError);
    expect(e.errno).toBe("EBADF");
    expect(e.number).toBe(9);
    c.close();
  });

  it("lists and calls the Iommufd service with buf curl by reflection", { timeout: 60_000 }, async () => {
    const url = `http://${topo.get("host-iommufd").address}`;
    const buf = `${REPO_ROOT}/node_modules/.bin/buf`;
    const list = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "--list-methods", url]);
    expect(list.stdout).toContain("iommufd.v1.Iommufd/IoasMap");
    expect(list.stdout).toContain("iommufd.v1.Iommufd/HwptAlloc");
    const open = await run(buf, ["curl", "--protocol", "grpc", "--http2-prior-knowledge", "-d", '{"clientName":"buf-curl"}', `${url}/iommufd.v1.Iommufd/OpenSession`]);
    const session = JSON.parse(open.stdout) as { session: string; sessionId: string };
    expect(session.sessionId).toMatch(/^s\d+$/);
    const alloc = await run(buf, [
      "curl",
      "--protocol",
      "grpc",
      "--http2-prior-knowledge",
      "-H",
      `iommufd-session: ${session.session}`,
      "-d",
      "{}",
      `${url}/iommufd.v1.Iommufd/IoasAlloc`,
    ]);
    expect(JSON.parse(alloc.stdout)).toEqual({ outIoasId: 1 });
  });

  it("stops every process cleanly on SIGTERM", async () => {
    for (const p of [...topo.procs.values()]) {
      expect(await p.stop()).toBe(0);
      expect(p.records().some((r) => r.msg === "stopped")).toBe(true);
    }
  });
});
