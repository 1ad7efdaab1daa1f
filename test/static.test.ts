// Static checks as tests, so they count in the summary: the proto module lints
// clean, the code lints clean, the whole tree type-checks, and packages/hw is
// pure (no Node built-ins, no timers, no I/O) — checked two independent ways.
import { execFile } from "node:child_process";
import { promisify } from "node:util";
import { REPO_ROOT } from "@iommufd/testkit";
import { build } from "esbuild";
import { describe, expect, it } from "vitest";

const run = promisify(execFile);
const bin = (name: string) => `${REPO_ROOT}/node_modules/.bin/${name}`;

async function exitOf(cmd: string, args: string[]): Promise<{ code: number; out: string }> {
  try {
    const r = await run(cmd, args, { cwd: REPO_ROOT, maxBuffer: 64 << 20 });
    return { code: 0, out: r.stdout + r.stderr };
  } catch (e) {
    const er = e as { code?: number; stdout?: string; stderr?: string };
    return { code: typeof er.code === "number" ? er.code : 1, out: `${er.stdout ?? ""}${er.stderr ?? ""}` };
  }
}

describe("static checks", () => {
  it("buf lint is clean", { timeout: 120_000 }, async () => {
    const r = await exitOf(bin("buf"), ["lint"]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  });

  it("eslint is clean", { timeout: 240_000 }, async () => {
    const r = await exitOf(bin("eslint"), ["--max-warnings=0", "."]);
    expect(r.code, r.out).toBe(0);
  });

  it("the whole tree type-checks (strict)", { timeout: 240_000 }, async () => {
    const r = await exitOf(bin("tsc"), ["-p", "tsconfig.json", "--noEmit"]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  });

  it("packages/hw type-checks with no Node types (no built-ins, no timers)", { timeout: 240_000 }, async () => {
    const r = await exitOf(bin("tsc"), ["-p", "packages/hw/tsconfig.json", "--noEmit"]);
    expect(r.out).toBe("");
    expect(r.code).toBe(0);
  });

  it("packages/hw bundles for a neutral platform with no Node built-ins", async () => {
    const imported: string[] = [];
    await build({
      entryPoints: [`${REPO_ROOT}/packages/hw/src/index.ts`],
      bundle: true,
      write: false,
      platform: "neutral",
      logLevel: "silent",
      plugins: [
        {
          name: "forbid-builtins",
          setup(b) {
            b.onResolve({ filter: /^(node:|[a-z_]+$)/ }, (args) => {
              imported.push(args.path);
              return { path: args.path, external: true };
            });
          },
        },
      ],
    });
    expect(imported).toEqual([]);
  });
});
