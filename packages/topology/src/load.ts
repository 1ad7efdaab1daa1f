// Reading a topology description: YAML text → checked, normalized Topology.
// Every problem is reported at its YAML path (`guests[1].vendor`) with the
// line it is on, all at once, in one TopologyError.
import { readFileSync } from "node:fs";
import { isNode, LineCounter, parseDocument } from "yaml";
import type { z } from "zod";
import { DEFAULT_TOPOLOGY_YAML } from "./default.js";
import { checkedTopologySchema, normalize, type Topology } from "./schema.js";

export interface TopologyProblem {
  /** YAML path: `guests[1].vendor`; "" for the document. */
  path: string;
  message: string;
  line?: number;
}

export class TopologyError extends Error {
  constructor(
    readonly source: string,
    readonly problems: TopologyProblem[],
  ) {
    super(`invalid topology ${source}:\n${problems.map((p) => `  ${p.path || "(document)"}${p.line ? ` (line ${p.line})` : ""}: ${p.message}`).join("\n")}`);
    this.name = "TopologyError";
  }
}

/** `["guests", 1, "vendor"]` → `guests[1].vendor`. */
export function yamlPath(path: readonly PropertyKey[]): string {
  let out = "";
  for (const p of path) out += typeof p === "number" ? `[${p}]` : `${out ? "." : ""}${String(p)}`;
  return out;
}

const quoteAll = (vs: readonly unknown[]) => vs.map((v) => JSON.stringify(v)).join(" | ");

/** zod's issue → one readable sentence (zod's own wording is kept where it is already clear). */
function describe(issue: z.core.$ZodIssue, input: unknown): string {
  const got = (() => {
    let v: unknown = input;
    for (const k of issue.path) v = v !== null && typeof v === "object" ? (v as Record<PropertyKey, unknown>)[k as PropertyKey] : undefined;
    return v === undefined ? "nothing" : JSON.stringify(v);
  })();
  switch (issue.code) {
    case "invalid_value":
      return `expected ${quoteAll(issue.values)}, got ${got}`;
    case "invalid_type":
      return `expected ${issue.expected}, got ${got === "nothing" ? "nothing (required)" : got}`;
    case "unrecognized_keys":
      return `unknown key${issue.keys.length > 1 ? "s" : ""} ${issue.keys.map((k) => `"${k}"`).join(", ")}`;
    case "invalid_union":
      return `expected one of the allowed forms, got ${got}${issue.errors.length ? ` (${issue.errors.map((es) => es.map((e) => `${yamlPath(e.path) || "value"}: ${e.message}`).join(", ")).join("; or ")})` : ""}`;
    default:
      return issue.message;
  }
}

/** Parse and check a description; throws TopologyError listing every problem. */
export function parseTopology(text: string, source = "(inline)"): Topology {
  const lines = new LineCounter();
  const doc = parseDocument(text, { lineCounter: lines });
  if (doc.errors.length > 0) {
    throw new TopologyError(
      source,
      doc.errors.map((e) => ({ path: "", message: e.message.split("\n")[0] as string, line: e.linePos?.[0]?.line })),
    );
  }
  const input: unknown = doc.toJS() ?? {};
  const r = checkedTopologySchema.safeParse(input);
  if (r.success) return normalize(r.data);
  const lineOf = (path: readonly PropertyKey[]): number | undefined => {
    for (let n = path.length; n >= 0; n--) {
      const node = doc.getIn(path.slice(0, n) as unknown[], true);
      if (isNode(node) && node.range) return lines.linePos(node.range[0]).line;
    }
    return undefined;
  };
  throw new TopologyError(
    source,
    r.error.issues.map((i) => {
      // An unknown key is about the key itself: point at it.
      const path = i.code === "unrecognized_keys" && i.keys.length === 1 ? [...i.path, i.keys[0] as string] : i.path;
      return { path: yamlPath(path), message: describe(i, input), line: lineOf(path) };
    }),
  );
}

/** Read a description from a file; no file = the embedded default. */
export function loadTopology(file?: string): Topology {
  if (!file) return parseTopology(DEFAULT_TOPOLOGY_YAML, "(default)");
  return parseTopology(readFileSync(file, "utf8"), file);
}
