// deploy/ from the topology description (DESIGN §9): compose.yaml (one
// service per process, nats first, healthchecks on grpc.health.v1 and on
// the NATS INFO banner, depends_on with condition: service_healthy), the
// Dockerfile of the one image every service runs, and its .dockerignore.
// The processes get exactly the flags the local launcher gives them
// (plan.ts); only the addresses differ. `checkDeploy` is the CI check that
// the committed files are what the generator writes.
import { readFileSync, writeFileSync } from "node:fs";
import { join } from "node:path";
import { Document, isPair, isScalar, isSeq, visit } from "yaml";
import { type PlanContext, type ProcessPlan, planProcesses, processArgs } from "./plan.js";
import type { Topology } from "./schema.js";

export const IMAGE = "iommufd-nested-emu:dev";
export const NATS_SERVICE = "nats";
/** The container-internal NATS port (the description's nats.port is the published one). */
const NATS_PORT = 4222;

export interface DeployFiles {
  "compose.yaml": string;
  Dockerfile: string;
  "Dockerfile.dockerignore": string;
}

const HEALTH_TIMING = { interval: "2s", timeout: "3s", retries: 20, start_period: "5s" };

function header(source: string, what: string): string {
  return [
    `# GENERATED from the topology description ${source} by \`npm run cli -- compose\`.`,
    `# Do not edit: change the description and generate again; \`npm run cli -- compose --check\``,
    `# (and the test suite) fails when this file and the generator disagree.`,
    `# ${what}`,
    "",
  ].join("\n");
}

function composeContext(t: Topology): PlanContext {
  const port = (name: string) => {
    const p = planProcesses(t).find((x) => x.name === name)?.spec.grpcPort ?? 0;
    if (!p) throw new Error(`compose needs a fixed grpc_port for ${name}`);
    return p;
  };
  return {
    natsUrl: `nats://${NATS_SERVICE}:${NATS_PORT}`,
    grpcHost: "0.0.0.0",
    grpcPort: port,
    grpcAddress: (name) => `${name}:${port(name)}`,
  };
}

const build = () => ({ context: "..", dockerfile: "deploy/Dockerfile" });

function service(p: ProcessPlan, t: Topology, ctx: PlanContext): Record<string, unknown> {
  const port = ctx.grpcPort(p.name);
  const env = p.spec.env;
  return {
    image: IMAGE,
    build: build(),
    init: true,
    command: ["node", "--import", "tsx", p.entry, ...processArgs(p, ctx, t).args],
    ...(Object.keys(env).length > 0 ? { environment: { ...env } } : {}),
    ports: [`127.0.0.1:${port}:${port}`],
    depends_on: Object.fromEntries([NATS_SERVICE, ...p.dependsOn].map((d) => [d, { condition: "service_healthy" }])),
    healthcheck: { test: ["CMD", "node", "deploy/healthcheck.mjs", "grpc", `127.0.0.1:${port}`], ...HEALTH_TIMING },
    stop_grace_period: "10s",
  };
}

/** The compose document (as data). */
export function composeDocument(t: Topology): Record<string, unknown> {
  const ctx = composeContext(t);
  const published = "port" in t.nats ? t.nats.port : NATS_PORT;
  const services: Record<string, unknown> = {
    [NATS_SERVICE]: {
      image: IMAGE,
      build: build(),
      init: true,
      command: ["nats-server", "-a", "0.0.0.0", "-p", String(NATS_PORT)],
      ports: [`127.0.0.1:${published}:${NATS_PORT}`],
      healthcheck: { test: ["CMD", "node", "deploy/healthcheck.mjs", "nats", `127.0.0.1:${NATS_PORT}`], ...HEALTH_TIMING },
    },
  };
  for (const p of planProcesses(t)) services[p.name] = service(p, t, ctx);
  return { services };
}

/** YAML text; short lists (healthcheck tests, ports) in flow style, one line each. */
function toYaml(doc: Record<string, unknown>): string {
  const d = new Document(doc, { aliasDuplicateObjects: false });
  visit(d, {
    Pair(_, pair) {
      if (isPair(pair) && isScalar(pair.key) && ["test", "ports"].includes(String(pair.key.value)) && isSeq(pair.value)) pair.value.flow = true;
    },
  });
  return d.toString({ lineWidth: 0 });
}

/** The three files, as text. */
export function generateDeploy(t: Topology, source: string): DeployFiles {
  if ("url" in t.nats) throw new Error("compose runs its own nats-server: give nats.port, not nats.url, in the description");
  const compose =
    header(source, `Topology "${t.name}": nats, ${planProcesses(t).map((p) => p.name).join(", ")}. Run from deploy/: docker compose up --build`) +
    toYaml(composeDocument(t));
  const ports = [("port" in t.nats ? t.nats.port : NATS_PORT), ...planProcesses(t).map((p) => p.spec.grpcPort)];
  const dockerfile = `${header(source, "One image for every process: Node 20, the workspace with its dependencies and generated protobuf code, and Debian's nats-server (2.9, as the tests use).")}FROM node:20-bookworm-slim
RUN apt-get update \\
 && apt-get install -y --no-install-recommends nats-server \\
 && rm -rf /var/lib/apt/lists/*
WORKDIR /app
COPY . .
RUN npm ci --no-audit --no-fund && npm run gen
EXPOSE ${[...new Set(ports)].join(" ")}
CMD ["node", "--import", "tsx", "services/cli/src/main.ts", "--help"]
`;
  const dockerignore = `${header(source, "The build context is the repository root; keep host-only files out of the image.")}node_modules
**/node_modules
.git
.tmp
packages/proto/src/gen
bench-results
coverage
*.log
`;
  return { "compose.yaml": compose, Dockerfile: dockerfile, "Dockerfile.dockerignore": dockerignore };
}

/** Write the files into `dir`. */
export function writeDeploy(dir: string, files: DeployFiles): string[] {
  return Object.entries(files).map(([name, text]) => {
    writeFileSync(join(dir, name), text);
    return join(dir, name);
  });
}

/** Names of the files in `dir` that differ from `files` (missing counts as different). */
export function checkDeploy(dir: string, files: DeployFiles): string[] {
  return Object.entries(files)
    .filter(([name, text]) => {
      try {
        return readFileSync(join(dir, name), "utf8") !== text;
      } catch {
        return true;
      }
    })
    .map(([name]) => name);
}
