// device-sim configuration: which endpoints this process hosts and how its
// engines behave. Endpoints come from repeatable `--endpoint <spec>` flags
// (or DEVSIM_ENDPOINTS, specs separated by ';') and/or a JSON file given by
// `--config <path>` (or DEVSIM_CONFIG). Both use the same keys, parsed and
// checked by one function, so a spec and a file entry mean the same thing.
//
//   --endpoint name=ep0,rid=0x0018,pasid=20,ats=1,atc=256,pri=1,prq=32,batch=64
//
//   { "endpoints": [ { "name": "ep0", "rid": "00:03.0", "pasid": 20, "ats": true,
//                      "atc": 256, "pri": true, "prq": 32, "batch": 64 } ] }
import { readFileSync } from "node:fs";
import { type Command, Option } from "commander";
import { z } from "zod";

/** One simulated PCIe function and the capabilities it advertises (bus.v1.DeviceRegister). */
export interface EndpointConfig {
  /** Name within the process; registered as "<process>/<name>". */
  name: string;
  /** Requester ID, bus << 8 | devfn. */
  rid: number;
  /** IOMMU instance wanted; "" = the host's topology decides. */
  iommuId: string;
  /** PASID capability Max PASID Width; 0 = no PASID capability. */
  maxPasidLog2: number;
  pasidExec: boolean;
  pasidPriv: boolean;
  /** ATS capability (and a device ATC). */
  ats: boolean;
  /** ATC capacity in entries. */
  atcEntries: number;
  /** ATS Invalidate Queue Depth (0 means 32). */
  atsInvalidateQueueDepth: number;
  atsGlobalInvalidate: boolean;
  /** PRI capability. */
  pri: boolean;
  /** Outstanding Page Request Capacity. */
  priOutstandingCapacity: number;
  /** Largest DmaBatch / AtsRequest this endpoint sends (ops). */
  maxBatch: number;
  /** Requests (batches) in flight per engine. */
  inFlight: number;
}

export class ConfigError extends Error {
  override name = "ConfigError";
}

/** The keys of a spec / file entry, with their help. Order is the help order. */
export const ENDPOINT_KEYS = {
  name: "endpoint name, unique in the process (default ep<rid as 4 hex digits>)",
  rid: "requester ID: 0x0018, 00:03.0 (bus:dev.fn) or decimal (required)",
  iommu: "IOMMU instance to sit behind (default: the host decides)",
  pasid: "Max PASID Width, 0..20 (0 = no PASID capability; default 0)",
  "pasid-exec": "PASID Execute Permission supported (needs pasid > 0)",
  "pasid-priv": "PASID Privileged Mode supported (needs pasid > 0)",
  ats: "ATS capability and a device ATC (default 0)",
  atc: "ATC capacity in entries, 1..65536 (needs ats; default 64)",
  "inv-depth": "ATS Invalidate Queue Depth 0..31, 0 means 32 (needs ats)",
  "global-inv": "ATS Global Invalidate supported (needs ats)",
  pri: "PRI capability (needs ats; default 0)",
  prq: "Outstanding Page Request Capacity, 1..65535 (needs pri; default 32)",
  batch: "max ops per DmaBatch / AtsRequest, 1..4096 (default 64; the host may grant less)",
  inflight: "batches in flight per engine, 1..256 (default 8)",
} as const;

type Key = keyof typeof ENDPOINT_KEYS;

const NAME_RE = /^[A-Za-z0-9][A-Za-z0-9_.-]*$/;

function isKey(k: string): k is Key {
  return Object.hasOwn(ENDPOINT_KEYS, k);
}

function parseBool(key: string, v: string): boolean {
  const s = v.trim().toLowerCase();
  if (["1", "true", "yes", "on", ""].includes(s)) return true;
  if (["0", "false", "no", "off"].includes(s)) return false;
  throw new ConfigError(`${key}: "${v}" is not a boolean (1/0, true/false, yes/no, on/off)`);
}

function parseInt(key: string, v: string, min: number, max: number): number {
  const s = v.trim();
  const n = /^0x[0-9a-f]+$/i.test(s) ? Number.parseInt(s.slice(2), 16) : /^\d+$/.test(s) ? Number(s) : Number.NaN;
  if (!Number.isSafeInteger(n) || n < min || n > max) throw new ConfigError(`${key}: "${v}" is not an integer in ${min}..${max}`);
  return n;
}

/** A requester ID: 0x-prefixed hex, bus:dev.fn (hex, as lspci prints it), or decimal. */
export function parseRid(v: string): number {
  const s = v.trim();
  const bdf = /^([0-9a-f]{1,2}):([0-9a-f]{1,2})\.([0-7])$/i.exec(s);
  if (bdf) {
    const bus = Number.parseInt(bdf[1], 16);
    const dev = Number.parseInt(bdf[2], 16);
    if (dev > 31) throw new ConfigError(`rid: device ${dev} in "${v}" is above 31`);
    return (bus << 8) | (dev << 3) | Number(bdf[3]);
  }
  return parseInt("rid", s, 0, 0xffff);
}

/** Build and check one endpoint from key=value pairs (a spec or a file entry). */
export function endpointFromPairs(pairs: [string, string][]): EndpointConfig {
  const seen = new Map<Key, string>();
  for (const [rawKey, value] of pairs) {
    const key = rawKey.trim().toLowerCase().replace(/_/g, "-");
    if (key === "stu")
      throw new ConfigError("stu: the Smallest Translation Unit is programmed by the host (DeviceRegisterReply.stu); the device does not choose it");
    if (!isKey(key)) throw new ConfigError(`unknown key "${rawKey}" (known: ${Object.keys(ENDPOINT_KEYS).join(", ")})`);
    if (seen.has(key)) throw new ConfigError(`${key} given twice`);
    seen.set(key, value);
  }
  const get = (k: Key) => seen.get(k);
  const bool = (k: Key, d: boolean) => (seen.has(k) ? parseBool(k, get(k) as string) : d);
  const int = (k: Key, min: number, max: number, d: number) => (seen.has(k) ? parseInt(k, get(k) as string, min, max) : d);

  const ridStr = get("rid");
  if (ridStr === undefined) throw new ConfigError("rid is required");
  const rid = parseRid(ridStr);
  const name = get("name")?.trim() ?? `ep${rid.toString(16).padStart(4, "0")}`;
  if (!NAME_RE.test(name)) throw new ConfigError(`name: "${name}" must be letters, digits, '_', '.', '-' (starting with a letter or digit)`);
  const cfg: EndpointConfig = {
    name,
    rid,
    iommuId: get("iommu")?.trim() ?? "",
    maxPasidLog2: int("pasid", 0, 20, 0),
    pasidExec: bool("pasid-exec", false),
    pasidPriv: bool("pasid-priv", false),
    ats: bool("ats", false),
    atcEntries: int("atc", 1, 65536, 64),
    atsInvalidateQueueDepth: int("inv-depth", 0, 31, 0),
    atsGlobalInvalidate: bool("global-inv", false),
    pri: bool("pri", false),
    priOutstandingCapacity: int("prq", 1, 65535, 32),
    maxBatch: int("batch", 1, 4096, 64),
    inFlight: int("inflight", 1, 256, 8),
  };
  if ((cfg.pasidExec || cfg.pasidPriv) && cfg.maxPasidLog2 === 0) throw new ConfigError("pasid-exec / pasid-priv need a PASID capability (pasid > 0)");
  if (!cfg.ats) {
    for (const k of ["atc", "inv-depth", "global-inv", "pri"] as const) {
      if (seen.has(k) && !(k === "pri" && !cfg.pri)) throw new ConfigError(`${k} needs ats=1 (PRI and the ATC are part of ATS)`);
    }
  }
  if (seen.has("prq") && !cfg.pri) throw new ConfigError("prq needs pri=1");
  return cfg;
}

/** Parse one `--endpoint` spec: comma-separated key=value (a bare key means key=1). */
export function parseEndpointSpec(spec: string): EndpointConfig {
  const parts = spec
    .split(",")
    .map((p) => p.trim())
    .filter((p) => p.length > 0);
  if (parts.length === 0) throw new ConfigError("empty endpoint spec");
  const pairs = parts.map((p): [string, string] => {
    const eq = p.indexOf("=");
    return eq < 0 ? [p, "1"] : [p.slice(0, eq), p.slice(eq + 1)];
  });
  try {
    return endpointFromPairs(pairs);
  } catch (e) {
    throw new ConfigError(`endpoint "${spec}": ${(e as Error).message}`);
  }
}

/** Parse a JSON config file: { "endpoints": [ { key: value, … } ] } with the spec keys. */
export function parseConfigFile(text: string): EndpointConfig[] {
  let doc: unknown;
  try {
    doc = JSON.parse(text);
  } catch (e) {
    throw new ConfigError(`not JSON: ${(e as Error).message}`);
  }
  if (typeof doc !== "object" || doc === null || Array.isArray(doc)) throw new ConfigError('expected an object { "endpoints": [...] }');
  const extra = Object.keys(doc).filter((k) => k !== "endpoints");
  if (extra.length > 0) throw new ConfigError(`unknown top-level key(s): ${extra.join(", ")}`);
  const list = (doc as { endpoints?: unknown }).endpoints;
  if (!Array.isArray(list)) throw new ConfigError('"endpoints" must be an array');
  return list.map((entry, i) => {
    if (typeof entry !== "object" || entry === null || Array.isArray(entry)) throw new ConfigError(`endpoints[${i}] must be an object`);
    const pairs = Object.entries(entry).map(([k, v]): [string, string] => {
      if (typeof v === "boolean") return [k, v ? "1" : "0"];
      if (typeof v === "number" || typeof v === "string") return [k, String(v)];
      throw new ConfigError(`endpoints[${i}].${k}: expected a string, number or boolean`);
    });
    try {
      return endpointFromPairs(pairs);
    } catch (e) {
      throw new ConfigError(`endpoints[${i}]: ${(e as Error).message}`);
    }
  });
}

/** Names and RIDs must be unique in a process. */
export function checkUnique(eps: EndpointConfig[]): void {
  const names = new Set<string>();
  const rids = new Set<number>();
  for (const e of eps) {
    if (names.has(e.name)) throw new ConfigError(`endpoint name "${e.name}" used twice`);
    if (rids.has(e.rid)) throw new ConfigError(`rid 0x${e.rid.toString(16).padStart(4, "0")} used twice`);
    names.add(e.name);
    rids.add(e.rid);
  }
}

// ---- the process's flags -------------------------------------------------

export const HELP_AFTER = `
Endpoint spec (--endpoint, repeatable; DEVSIM_ENDPOINTS takes specs separated by ';'):
  comma-separated key=value, a bare key meaning key=1. Keys:
${Object.entries(ENDPOINT_KEYS)
  .map(([k, h]) => `    ${k.padEnd(11)} ${h}`)
  .join("\n")}
  The ATS Smallest Translation Unit and the PRI allocation are granted by the host
  at registration, not configured here.

Config file (--config, DEVSIM_CONFIG): JSON { "endpoints": [ {<same keys>}, ... ] }
  with numbers/booleans or strings as values; its endpoints come after the --endpoint ones.

Examples:
  device-sim --endpoint name=ep0,rid=0x0018,pasid=20,ats=1,atc=256,pri=1,prq=32,batch=64
  device-sim --endpoint rid=00:04.0 --endpoint rid=00:05.0,ats,atc=16
  device-sim --config devsim.json
`;

/** The flags of device-sim (besides the kit's common ones). */
export function deviceSimOptions(cmd: Command): Command {
  return cmd
    .addOption(
      new Option("--endpoint <spec>", "an endpoint to host (repeatable; see below)")
        .env("DEVSIM_ENDPOINTS")
        .argParser((v: string, prev: string[] | undefined) => [...(prev ?? []), ...v.split(";").filter((s) => s.trim() !== "")])
        .default([]),
    )
    .addOption(new Option("--config <path>", "JSON file with more endpoints (see below)").env("DEVSIM_CONFIG"))
    .addOption(new Option("--request-timeout-ms <ms>", "timeout of each bus request (DMA, ATS, register)").env("DEVSIM_REQUEST_TIMEOUT_MS").default("5000"))
    .addOption(new Option("--pri-timeout-ms <ms>", "how long to wait for a page group response").env("DEVSIM_PRI_TIMEOUT_MS").default("5000"))
    .addOption(new Option("--no-unregister", "do not unregister the endpoints from the host on shutdown").env("DEVSIM_NO_UNREGISTER"))
    .addHelpText("after", HELP_AFTER);
}

function endpointsFromFlags(specs: string[], ctx: z.RefinementCtx): EndpointConfig[] {
  const out: EndpointConfig[] = [];
  specs.forEach((s) => {
    try {
      out.push(parseEndpointSpec(s));
    } catch (e) {
      ctx.addIssue({ code: "custom", message: (e as Error).message });
    }
  });
  return out;
}

function endpointsFromFile(path: string | undefined, ctx: z.RefinementCtx): EndpointConfig[] {
  if (path === undefined) return [];
  try {
    return parseConfigFile(readFileSync(path, "utf8"));
  } catch (e) {
    ctx.addIssue({ code: "custom", message: `${path}: ${(e as Error).message}` });
    return [];
  }
}

/** zod schema of device-sim's flags (merged with the kit's common schema by runService). */
export const deviceSimSchema = z.object({
  endpoint: z.array(z.string()).default([]).transform(endpointsFromFlags),
  config: z.string().min(1).optional().transform(endpointsFromFile),
  requestTimeoutMs: z.coerce.number().int().min(10).max(600_000),
  priTimeoutMs: z.coerce.number().int().min(10).max(600_000),
  unregister: z.boolean().default(true),
});

export type DeviceSimFlags = z.infer<typeof deviceSimSchema>;

/** Every endpoint of the process (flags first, then the file), checked for uniqueness. */
export function allEndpoints(flags: Pick<DeviceSimFlags, "endpoint" | "config">): EndpointConfig[] {
  const eps = [...flags.endpoint, ...flags.config];
  checkUnique(eps);
  return eps;
}
