// Cross-process: the local launcher starts a small topology (nats-server,
// host, one device-sim) from a description, in dependency order, each
// healthy; prints one readable prefixed line per log record; and does
// process faults by name — kill -9 (reported), restart (healthy again on
// the same port), SIGSTOP/SIGCONT — then stops everything cleanly.
import { mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { Bus, checkHealth, createLogger, ErrnoError, subjects } from "@iommufd/kit";
import { PingSchema, PongSchema } from "@iommufd/proto/bus";
import { Launcher, type LauncherEvent, parseTopology } from "@iommufd/topology";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const SMALL = `
name: small
host:
  iommus: [{ id: smmu0, vendor: smmuv3 }]
devices:
  - name: dev0
    endpoints:
      - { name: ep0, rid: "00:03.0", iommu: smmu0, max_pasid_log2: 8, ats: { atc_entries: 16 } }
`;

const logDir = mkdtempSync(join(tmpdir(), "launcher-"));
const output: string[] = [];
const events: LauncherEvent[] = [];
let launcher: Launcher;
let bus: Bus;

const ping = (name: string, timeoutMs = 2000) => bus.request(subjects.ping(name), PingSchema, { seq: 1n }, PongSchema, { timeoutMs });

beforeAll(async () => {
  launcher = await Launcher.start(parseTopology(SMALL), { ports: "auto", logDir, output: (l) => output.push(l), graceMs: 3000 });
  launcher.on("event", (e) => events.push(e));
  bus = await Bus.connect({ url: launcher.natsUrl, name: "launcher-test", log: createLogger("test", "silent") });
}, 60_000);

afterAll(async () => {
  await bus?.close();
  await launcher?.stop();
  rmSync(logDir, { recursive: true, force: true });
});

describe("launcher", () => {
  it("starts nats, then the host, then the device-sim, each healthy", async () => {
    expect(launcher.names).toEqual(["nats", "host", "dev0"]);
    const st = launcher.status();
    expect(st.map((s) => [s.name, s.state])).toEqual([
      ["nats", "running"],
      ["host", "running"],
      ["dev0", "running"],
    ]);
    for (const name of ["host", "dev0"]) {
      expect(await checkHealth(launcher.get(name).address)).toBe("SERVING");
      expect((await ping(name)).process).toBe(name);
    }
    const ready = (n: string) => output.findIndex((l) => l.startsWith(`[launcher]`) && l.includes(`${n} ready`));
    expect(ready("host")).toBeGreaterThanOrEqual(0);
    expect(ready("host")).toBeLessThan(ready("dev0"));
  });

  it("prints one readable line per log record, prefixed with the process name", () => {
    const line = output.find((l) => l.startsWith("[host]") && / INFO +ready /.test(l));
    expect(line).toMatch(/^\[host\] +\d\d:\d\d:\d\d\.\d\d\d INFO {2}ready grpcPort=\d+ /);
    expect(output.some((l) => l.startsWith("[host]") && l.includes('"level"'))).toBe(false);
    expect(readFileSync(join(logDir, "host.log"), "utf8")).toContain('"msg":"ready"');
  });

  it("reports a kill -9 and restarts the process healthy on the same port", async () => {
    const old = launcher.get("dev0");
    const port = old.grpcPort;
    await launcher.kill("dev0");
    await expect.poll(() => events.find((e) => e.type === "exit" && e.name === "dev0")).toMatchObject({ signal: "SIGKILL", reason: "killed", pid: old.pid });
    expect(launcher.status().find((s) => s.name === "dev0")).toMatchObject({ state: "exited", exit: { signal: "SIGKILL", reason: "killed" } });
    expect(output.some((l) => l.startsWith("[launcher]") && l.includes(`dev0 (pid ${old.pid}) exited: SIGKILL (killed)`))).toBe(true);
    expect(((await ping("dev0", 300).catch((e: unknown) => e)) as ErrnoError).errno).toMatch(/ENOTCONN|ETIMEDOUT/);

    await launcher.restart("dev0");
    const fresh = launcher.get("dev0");
    expect(fresh.pid).not.toBe(old.pid);
    expect(fresh.grpcPort).toBe(port);
    expect(await checkHealth(fresh.address)).toBe("SERVING");
    expect((await ping("dev0")).process).toBe("dev0");
    expect(launcher.status().find((s) => s.name === "dev0")).toMatchObject({ state: "running", restarts: 1 });
  });

  it("pauses (SIGSTOP) and resumes (SIGCONT) a process", async () => {
    launcher.pause("host");
    expect(launcher.status().find((s) => s.name === "host")?.state).toBe("paused");
    const e = (await ping("host", 400).catch((x: unknown) => x)) as ErrnoError;
    expect(e).toBeInstanceOf(ErrnoError);
    expect(e.errno).toBe("ETIMEDOUT");
    await expect(checkHealth(launcher.get("host").address, "", 400)).rejects.toThrow();
    launcher.resume("host");
    expect(launcher.status().find((s) => s.name === "host")?.state).toBe("running");
    expect((await ping("host")).process).toBe("host");
    expect(await checkHealth(launcher.get("host").address)).toBe("SERVING");
  });

  it("stops everything cleanly, services with exit code 0", async () => {
    const procs = ["host", "dev0"].map((n) => launcher.get(n));
    await bus.close();
    await launcher.stop();
    for (const p of procs) {
      expect(p.exit).toEqual({ code: 0, signal: null });
      expect(p.records().some((r) => r.msg === "stopped")).toBe(true);
    }
    expect(launcher.status().every((s) => s.state === "exited")).toBe(true);
  });
});
