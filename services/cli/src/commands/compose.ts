// `compose`: write deploy/compose.yaml, deploy/Dockerfile and its
// .dockerignore from the topology description, or (--check) compare the
// committed files with what the generator writes and validate compose.yaml
// against the compose-spec schema.
import { join, relative, resolve } from "node:path";
import type { Command } from "commander";
import { REPO_ROOT } from "../state.js";

export const DEPLOY_DIR = join(REPO_ROOT, "deploy");

/** How a description is named in the generated headers: relative to the repository, or the embedded default. */
export function sourceName(file?: string): string {
  if (!file) return "(embedded default)";
  const rel = relative(REPO_ROOT, resolve(file));
  return rel && !rel.startsWith("..") ? rel : resolve(file);
}

export function composeCommand(program: Command): void {
  program
    .command("compose")
    .description("generate deploy/compose.yaml and deploy/Dockerfile from the topology description, or check the committed ones")
    .option("-t, --topology <file>", "topology description (YAML); default: the embedded default topology")
    .option("-o, --out <dir>", "where the files go", DEPLOY_DIR)
    .option("--check", "do not write: fail (exit 1) if the files differ from the generator's or compose.yaml breaks the compose-spec schema")
    .action(async (o: { topology?: string; out: string; check?: boolean }) => {
      const { checkDeploy, composeDocument, generateDeploy, loadTopology, validateCompose, writeDeploy } = await import("@iommufd/topology");
      const t = loadTopology(o.topology);
      const files = generateDeploy(t, sourceName(o.topology));
      const problems = validateCompose(composeDocument(t));
      if (problems.length > 0) throw new Error(`generated compose.yaml breaks the compose-spec schema:\n  ${problems.join("\n  ")}`);
      if (o.check) {
        const stale = checkDeploy(o.out, files);
        if (stale.length > 0) {
          console.error(`out of date in ${o.out}: ${stale.join(", ")}; run \`npm run cli -- compose${o.topology ? ` --topology ${o.topology}` : ""}\``);
          process.exitCode = 1;
          return;
        }
        console.log(`${o.out}: ${Object.keys(files).join(", ")} match the description; compose.yaml is valid compose-spec`);
        return;
      }
      for (const f of writeDeploy(o.out, files)) console.log(`wrote ${relative(process.cwd(), f) || f}`);
    });
}
