// The README's main job as a test: the CLI demo brings up the default
// topology (nats, host, device-sim, a VM per vendor), runs every step, and
// reports each party's view; it exits 0 only when every step passed.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { REPO_ROOT } from "@iommufd/testkit";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);

describe("demo", () => {
  it("runs every step of the main job and prints what each party saw", { timeout: 240_000 }, async () => {
    const r = await run(process.execPath, ["--import", "tsx", "services/cli/src/main.ts", "demo", "--log-dir", ".tmp/test-demo/logs"], {
      cwd: REPO_ROOT,
      maxBuffer: 16 << 20,
      timeout: 230_000,
    });
    const out = r.stdout;
    expect(out).toMatch(/(\d+) of \1 demo steps passed/);
    for (const vm of ["vm-smmu", "vm-vtd"]) {
      expect(out).toContain(`✔ ${vm}: device DMA through guest stage 1 over host stage 2, verified end to end`);
      expect(out).toContain(`✔ ${vm}: SVA with PRI`);
    }
    expect(out).toMatch(/guest event queue: .*F_TRANSLATION vSID 0x18/);
    expect(out).toContain("✔ message fault");
    expect(out).toContain("✔ host fail-nth");
    expect(out).toContain("✔ process fault");
    expect(out).toContain("what each party saw");
  });
});
