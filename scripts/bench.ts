// `npm run bench`: the benchmark suite (separate from the tests). Checks that
// setup has run (generated protobuf code, a nats-server) and runs
// `bash scripts/setup.sh` first when it has not, then loads the suite
// (scripts/bench/main.ts) — dynamically, since it imports generated code.
// Flags: --quick, --only <sections>, --out <dir> (see --help).
import { spawnSync } from "node:child_process";
import { existsSync } from "node:fs";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";

const root = join(dirname(fileURLToPath(import.meta.url)), "..");
if (!existsSync(join(root, "packages/proto/src/gen/iommufd/v1/iommufd_pb.ts"))) {
  process.stderr.write("bench: generated protobuf code is missing; running scripts/setup.sh first…\n");
  const r = spawnSync("bash", [join(root, "scripts/setup.sh")], { stdio: "inherit", cwd: root });
  if (r.status !== 0) process.exit(r.status ?? 1);
}

const { main } = await import("./bench/main.js");
try {
  process.exitCode = await main(process.argv.slice(2));
} catch (e) {
  process.stderr.write(`bench failed: ${e instanceof Error ? (e.stack ?? e.message) : String(e)}\n`);
  process.exitCode = 1;
}
