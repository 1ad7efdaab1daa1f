// The CLI's explain (text + SVG picture of the walk) and events (live PRI /
// FAULT / vEVENTQ records) against a running host with a test device.
import { type ChildProcess, execFile, spawn } from "node:child_process";
import { existsSync, mkdtempSync, readFileSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { HwptAllocFlags, IoasMapFlags, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import { REPO_ROOT, TestTopology, type UapiSession, openSession } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const MAIN = join(REPO_ROOT, "services/cli/src/main.ts");
const dir = mkdtempSync(join(tmpdir(), "cli-explain-"));
const RID = 0x30;
let topo: TestTopology;
let s: UapiSession;
let events: ChildProcess | undefined;

const cli = (...args: string[]) => run(process.execPath, ["--import", "tsx", MAIN, ...args], { cwd: REPO_ROOT, timeout: 60_000 });

beforeAll(async () => {
  topo = await TestTopology.start([{ kind: "host-iommufd" }]);
  s = await openSession(topo.get("host-iommufd").address);
  await s.admin.createTestDevice({ iommuId: "dmar0", name: "explain0", rid: RID, maxPasidLog2: 8, ats: true, pri: true });
  const { addr: va } = await s.io.mmap({ length: 1n << 20n, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
  const { outIoasId } = await s.io.ioasAlloc({});
  await s.io.ioasMap({ ioasId: outIoasId, flags: IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA, userVa: va, length: 1n << 20n, iova: 0x100000n });
  const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: RID } });
  const { outHwptId } = await s.io.hwptAlloc({ devId: outDevid, ptId: outIoasId, flags: HwptAllocFlags.NEST_PARENT });
  await s.io.deviceAttach({ devId: outDevid, ptId: outHwptId });
}, 60_000);

afterAll(async () => {
  events?.kill("SIGKILL");
  await s?.close();
  await topo?.stop();
  rmSync(dir, { recursive: true, force: true });
});

describe("cli explain and events", () => {
  it("explain prints every step of the walk and draws it as SVG", { timeout: 60_000 }, async () => {
    const svg = join(dir, "walk.svg");
    const r = await cli("explain", "--host", topo.get("host-iommufd").address, "--rid", `0x${RID.toString(16)}`, "--iova", "0x100040", "--access", "write", "--svg", svg);
    const lines = r.stdout.trim().split("\n");
    expect(lines.length).toBeGreaterThan(3);
    expect(r.stdout).toMatch(/context|PASID|root/i);
    expect(existsSync(svg)).toBe(true);
    const pic = readFileSync(svg, "utf8");
    expect(pic).toMatch(/^<svg /);
    expect((pic.match(/<rect /g) ?? []).length).toBeGreaterThan(lines.length - 1);
    // An unmapped IOVA: the walk ends in a fault.
    const miss = await cli("explain", "--host", topo.get("host-iommufd").address, "--rid", `0x${RID.toString(16)}`, "--iova", "0x900000");
    expect(miss.stdout.trim().split("\n").at(-1)).toMatch(/fault|SM_|0x7/i);
  });

  it("events follows page group responses live", { timeout: 60_000 }, async () => {
    let out = "";
    events = spawn(process.execPath, ["--import", "tsx", MAIN, "events", "--nats", topo.natsUrl, "--duration", "20"], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "pipe"] });
    events.stdout?.on("data", (d: Buffer) => (out += d.toString()));
    await expect.poll(() => out.includes("following events"), { timeout: 30_000, interval: 100 }).toBe(true);
    // No fault queue on this HWPT: the host answers the page request INVALID itself.
    await s.admin.testDevicePri({ rid: RID, requests: [{ rid: RID, addr: 0x900000n, r: true, prgIndex: 3, last: true }] });
    await expect.poll(() => out, { timeout: 10_000, interval: 100 }).toMatch(/PRI rid 0x30 seq \d+: page group response group 3: INVALID_REQUEST/);
  });
});
