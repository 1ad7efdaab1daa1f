// The CLI against a real topology, as a person uses it: `up` in the
// background (a small description: nats, host, one device-sim), then
// `status`, `fault` set / list / clear, `proc kill` and `proc restart`,
// and `down`, which stops `up` and everything it started.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { REPO_ROOT } from "@iommufd/topology";
import { afterAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "services/cli/src/main.ts");
const dir = mkdtempSync(join(tmpdir(), "cli-up-"));
let up: ChildProcess | undefined;

async function cli(...args: string[]): Promise<{ code: number; stdout: string; stderr: string }> {
  try {
    const r = await run(process.execPath, ["--import", "tsx", MAIN, ...args], { cwd: REPO_ROOT, timeout: 60_000 });
    return { code: 0, stdout: r.stdout, stderr: r.stderr };
  } catch (e) {
    const er = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof er.code === "number" ? er.code : 1, stdout: er.stdout ?? "", stderr: er.stderr ?? "" };
  }
}

afterAll(() => {
  if (up && up.exitCode === null) up.kill("SIGKILL");
  rmSync(dir, { recursive: true, force: true });
});

describe("cli up / status / fault / proc / down", () => {
  const state = join(dir, "up/state.json");
  const topo = join(dir, "small.yaml");
  const st = ["--state", state];
  let upOut = "";

  it("up starts the topology in the background and writes its state", { timeout: 60_000 }, async () => {
    writeFileSync(
      topo,
      `name: small\nhost:\n  iommus: [{ id: smmu0, vendor: smmuv3 }]\ndevices:\n  - name: dev0\n    endpoints: [{ name: ep0, rid: "00:03.0", iommu: smmu0 }]\n`,
    );
    up = spawn(process.execPath, ["--import", "tsx", MAIN, "up", "--topology", topo, ...st, "--log-dir", join(dir, "logs")], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    up.stdout?.on("data", (d: Buffer) => (upOut += d.toString()));
    up.stderr?.on("data", (d: Buffer) => (upOut += d.toString()));
    await expect.poll(() => upOut.includes("Ctrl-C or"), { timeout: 50_000, interval: 200 }).toBe(true);
    expect(existsSync(state)).toBe(true);
    expect(upOut).toMatch(/^\[host\] +\d\d:\d\d:\d\d\.\d{3} INFO {2}ready grpcPort=/m);
    expect(upOut).toMatch(/^\[launcher\] topology "small" up in \d+ ms/m);
  });

  it("status shows every process healthy, and the host's sessions and devices", async () => {
    const r = await cli("status", ...st, "--json");
    expect(r.code).toBe(0);
    const s = JSON.parse(r.stdout) as { processes: { name: string; health: string; pingMs: number | null; pid: number }[]; host: { sessions?: unknown[]; devices?: { name: string }[]; inventoryError?: string } };
    expect(s.processes.map((p) => [p.name, p.health])).toEqual([
      ["nats", "reachable"],
      ["host", "SERVING"],
      ["dev0", "SERVING"],
    ]);
    expect(s.processes.every((p) => p.pingMs !== null && p.pid > 0)).toBe(true);
    expect(s.host.sessions).toEqual([]);
    if (s.host.devices) expect(s.host.devices.map((d) => d.name)).toContain("dev0/ep0");
    else expect(s.host.inventoryError).toMatch(/ENOTTY/);
  });

  it("fault sets, lists (with hits) and clears message rules on a process", async () => {
    const set = await cli("fault", "set", "dev0", "-s", "iommu.v1.ctl.dev0.ping", "-a", "drop", "--count", "1", "--direction", "in", "--id", "d1", ...st);
    expect(set.code).toBe(0);
    expect(set.stdout).toMatch(/^d1 +iommu\.v1\.ctl\.dev0\.ping +drop +in +no +0 +1 +1 +0$/m);
    const status = await cli("status", ...st);
    expect(status.stdout).toMatch(/^ {2}host +host-iommufd +\d+ +running +127\.0\.0\.1:\d+ +SERVING +[\d.]+ ms$/m);
    expect(status.stdout).toMatch(/^ {2}dev0 +device-sim +\d+ +running +127\.0\.0\.1:\d+ +SERVING +-$/m); // its ping was dropped
    expect(status.code).toBe(0);
    const list = await cli("fault", "list", "dev0", "--json", ...st);
    expect(JSON.parse(list.stdout)).toMatchObject([{ id: "d1", hits: "1" }]);
    expect((await cli("fault", "clear", "dev0", ...st)).stdout).toContain("dev0: 1 rule removed");
  });

  it("proc kill reports the exit; proc restart brings the process back healthy", { timeout: 40_000 }, async () => {
    const kill = await cli("proc", "kill", "dev0", ...st);
    expect(kill.stdout).toMatch(/^dev0: exited, pid \d+, gRPC 127\.0\.0\.1:\d+, exit SIGKILL \(killed\)$/m);
    await expect.poll(() => /\[launcher\] dev0 \(pid \d+\) exited: SIGKILL \(killed\)/.test(upOut)).toBe(true);
    const restart = await cli("proc", "restart", "dev0", ...st);
    expect(restart.stdout).toMatch(/^dev0: running, pid \d+/m);
    const s = JSON.parse((await cli("status", ...st, "--json")).stdout) as { healthy: boolean };
    expect(s.healthy).toBe(true);
  });

  it("down stops `up` and everything it started", { timeout: 40_000 }, async () => {
    const exited = new Promise<number | null>((r) => up?.once("exit", (code) => r(code)));
    const r = await cli("down", ...st);
    expect(r.stdout).toMatch(/topology "small" stopped/);
    expect(await exited).toBe(0);
    expect(existsSync(state)).toBe(false);
    expect(upOut).toMatch(/\[launcher\] SIGTERM: stopping the topology/);
    expect(upOut).toMatch(/\[launcher\] stopped/);
  });
});
