// The CLI: --help on every command; `compose --check` on the committed
// deploy/ files; `walk` on a raw memory image. (A whole up … down session
// is in cli-up.test.ts.)
import { execFile } from "node:child_process";
import { mkdtempSync, rmSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { buildProgram, FAULT_ACTIONS, FAULT_DIRECTIONS } from "@iommufd/cli";
import { armFormat, PERM_RW } from "@iommufd/hw";
import { FaultAction, FaultDirection } from "@iommufd/proto/bus";
import { REPO_ROOT } from "@iommufd/topology";
import type { Command } from "commander";
import { afterAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "services/cli/src/main.ts");
const dir = mkdtempSync(join(tmpdir(), "cli-test-"));

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
  rmSync(dir, { recursive: true, force: true });
});

function allCommands(cmd: Command, path: string[] = []): [string, Command][] {
  return cmd.commands.flatMap((c) => [[[...path, c.name()].join(" "), c] as [string, Command], ...allCommands(c, [...path, c.name()])]);
}

describe("cli --help", () => {
  it("every command has a description and help for each option", () => {
    const cmds = allCommands(buildProgram());
    expect(cmds.map(([n]) => n)).toEqual([
      "demo",
      "up",
      "down",
      "status",
      "proc",
      "proc kill",
      "proc pause",
      "proc resume",
      "proc restart",
      "fault",
      "fault set",
      "fault list",
      "fault clear",
      "compose",
      "walk",
      "explain",
      "events",
    ]);
    for (const [name, c] of cmds) {
      expect(c.description(), name).not.toBe("");
      const help = c.helpInformation();
      expect(help, name).toContain(`Usage: iommufd-cli ${name}`);
      for (const o of c.options) expect(o.description, `${name} ${o.flags}`).not.toBe("");
    }
  });

  it("names fault actions and directions with the proto's values", () => {
    expect(FAULT_ACTIONS).toEqual({ drop: FaultAction.DROP, delay: FaultAction.DELAY, duplicate: FaultAction.DUPLICATE, corrupt: FaultAction.CORRUPT });
    expect(FAULT_DIRECTIONS).toEqual({ both: FaultDirection.UNSPECIFIED, in: FaultDirection.INBOUND, out: FaultDirection.OUTBOUND });
  });

  it("prints help from the real entry point, for the program and for a subcommand", async () => {
    const top = await cli("--help");
    expect(top.code).toBe(0);
    for (const c of ["demo", "up", "down", "status", "proc", "fault", "compose", "walk", "explain", "events"]) expect(top.stdout).toContain(`  ${c}`);
    const bad = await cli("fault", "set", "host");
    expect(bad.code).not.toBe(0);
    expect(bad.stderr).toMatch(/required option/);
  });
});

describe("cli compose and walk", () => {
  it("compose --check accepts the committed deploy/ files", async () => {
    const r = await cli("compose", "--check");
    expect(r.stderr).toBe("");
    expect(r.code).toBe(0);
    expect(r.stdout).toMatch(/match the description; compose.yaml is valid compose-spec/);
  });

  it("walk reads a raw memory image and a JSON config, and explains the walk", async () => {
    // Stage 1, 4K granule, 39-bit input (starts at level 1), TTB0 = 0x1000; image file holds 0x1000–0x3fff.
    const fmt = armFormat(1, 12);
    const image = new Uint8Array(0x3000);
    const view = new DataView(image.buffer);
    view.setBigUint64(0x0000, fmt.encodeTable(0x2000n, 1), true); // L1[0] at 0x1000
    view.setBigUint64(0x1000, fmt.encodeTable(0x3000n, 2), true); // L2[0] at 0x2000
    view.setBigUint64(0x2000 + 5 * 8, fmt.encodeLeaf(0x8000_5000n, 3, { perms: PERM_RW }), true); // L3[5] at 0x3028
    writeFileSync(join(dir, "mem.bin"), image);
    writeFileSync(join(dir, "walk.json"), JSON.stringify({ config: { vendor: "smmuv3", kind: "stage", stage: 1, granule: 4096, inputBits: 39, ttb: "0x1000" } }));
    const r = await cli("walk", "--config", join(dir, "walk.json"), "--image", `${join(dir, "mem.bin")}@0x1000`, "--query", "iova=0x5123,access=write", "--query", "iova=0x7000", "--explain");
    expect(r.stderr).toBe("");
    const out = JSON.parse(r.stdout) as { vendor: string; results: { ok: boolean; pa?: string; steps?: unknown[]; fault?: { kind: string } }[] };
    expect(out.vendor).toBe("smmuv3");
    expect(out.results[0]).toMatchObject({ ok: true, pa: "0x80005123" });
    expect(out.results[0]?.steps).toHaveLength(3);
    expect(out.results[1]).toMatchObject({ ok: false, fault: { kind: "translation" } });
  });
});
