// The topology description (DESIGN §9): one YAML document that drives both
// the local launcher and deploy/compose.yaml. This file owns its schema
// (zod), the cross-reference checks, and the normalized TypeScript shape
// the rest of the package reads. Field names follow the proto and PCIe
// names (max_pasid_log2, atc_entries, outstanding_capacity) in snake_case,
// as compose files are written.
import { LOG_LEVELS, type LogLevel } from "@iommufd/kit";
import { z } from "zod";

export const VENDORS = ["smmuv3", "vtd"] as const;
export type Vendor = (typeof VENDORS)[number];

/** Process names are NATS subject tokens and compose service names. */
const processName = z.string().regex(/^[a-z0-9][a-z0-9-]*$/, "expected lower-case letters, digits and dashes (a process name)");
const port = z.number().int().min(1).max(65535);
const grpcPort = z.number().int().min(0).max(65535);
const extraArgs = z.array(z.string()).default([]);
const env = z.record(z.string(), z.string()).default({});
const logLevel = z.enum(LOG_LEVELS).optional();

/** A PCI requester ID: "bb:dd.f" (hex bus, device 0–1f, function 0–7) or a number 0–0xffff. */
export function parseRid(v: string | number): number | undefined {
  if (typeof v === "number") return Number.isInteger(v) && v >= 0 && v <= 0xffff ? v : undefined;
  const m = /^([0-9a-fA-F]{1,2}):([0-9a-fA-F]{1,2})\.([0-7])$/.exec(v.trim());
  if (m) {
    const dev = Number.parseInt(m[2] as string, 16);
    return dev <= 0x1f ? (Number.parseInt(m[1] as string, 16) << 8) | (dev << 3) | Number(m[3]) : undefined;
  }
  if (/^0x[0-9a-fA-F]{1,4}$/.test(v.trim())) return Number.parseInt(v.trim().slice(2), 16);
  return undefined;
}

/** The BDF spelling of a requester ID: 0x0018 → "00:03.0". */
export function formatRid(rid: number): string {
  const h = (n: number) => n.toString(16).padStart(2, "0");
  return `${h(rid >> 8)}:${h((rid >> 3) & 0x1f)}.${rid & 7}`;
}

const SIZE_UNITS: Record<string, bigint> = { "": 1n, B: 1n, K: 1n << 10n, KiB: 1n << 10n, M: 1n << 20n, MiB: 1n << 20n, G: 1n << 30n, GiB: 1n << 30n, T: 1n << 40n, TiB: 1n << 40n };

/** "1GiB", "512MiB", "4096" → bytes. */
export function parseSize(v: string | number): bigint | undefined {
  if (typeof v === "number") return Number.isSafeInteger(v) && v >= 0 ? BigInt(v) : undefined;
  const m = /^(\d+)\s*([A-Za-z]*)$/.exec(v.trim());
  const unit = m ? SIZE_UNITS[m[2] as string] : undefined;
  return m && unit !== undefined ? BigInt(m[1] as string) * unit : undefined;
}

const rid = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const r = parseRid(v);
  if (r === undefined) {
    ctx.addIssue({ code: "custom", message: `expected a requester ID "bb:dd.f" or a number 0..0xffff, got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  return r;
});

const memory = z.union([z.string(), z.number()]).transform((v, ctx) => {
  const b = parseSize(v);
  if (b === undefined || b === 0n || b % 4096n !== 0n) {
    ctx.addIssue({ code: "custom", message: `expected a size that is a non-zero multiple of 4 KiB ("1GiB", "512MiB"), got ${JSON.stringify(v)}` });
    return z.NEVER;
  }
  return b;
});

const iommu = z.strictObject({
  /** Instance name ("smmu0", "dmar0"): devices name it, Inventory shows it. */
  id: processName,
  vendor: z.enum(VENDORS),
});

const endpoint = z.strictObject({
  /** Unique within its device-sim; the host knows it as "<device-sim>/<name>". */
  name: processName,
  rid,
  /** The host IOMMU instance it sits behind. */
  iommu: z.string(),
  /** PASID capability Max PASID Width; 0 = no PASID capability. */
  max_pasid_log2: z.number().int().min(0).max(20).default(0),
  /** ATS capability, with the device's ATC size in entries. */
  ats: z.strictObject({ atc_entries: z.number().int().min(1).max(65536) }).optional(),
  /** PRI capability, with its Outstanding Page Request Capacity (credits). */
  pri: z.strictObject({ outstanding_capacity: z.number().int().min(1).max(65535) }).optional(),
});

const common = {
  grpc_port: grpcPort.optional(),
  log_level: logLevel,
  /** Extra flags for this process, passed verbatim after the mapped ones. */
  args: extraArgs,
  env,
};

export const topologySchema = z.strictObject({
  version: z.literal(1).default(1),
  /** Names the compose project and the launcher's state. */
  name: processName.default("iommufd"),
  nats: z
    .union([z.strictObject({ port: port.default(4222) }), z.strictObject({ url: z.string().regex(/^(nats|tls|ws|wss):\/\/\S+$/, "expected a nats:// URL") })])
    .default({ port: 4222 }),
  host: z.strictObject({
    name: processName.default("host"),
    iommus: z.array(iommu).min(1, "expected at least one IOMMU instance"),
    ...common,
  }),
  devices: z.array(z.strictObject({ name: processName, endpoints: z.array(endpoint).min(1, "expected at least one endpoint"), ...common })).default([]),
  guests: z
    .array(
      z.strictObject({
        name: processName,
        vendor: z.enum(VENDORS),
        memory,
        /** Assigned host devices, by host device name "<device-sim>/<endpoint>". */
        devices: z.array(z.string()).default([]),
        ...common,
      }),
    )
    .default([]),
});

export type TopologyInput = z.input<typeof topologySchema>;
type Parsed = z.output<typeof topologySchema>;

// ---------------------------------------------------------------------------
// The normalized shape

export interface ProcessCommon {
  name: string;
  /** Fixed gRPC port from the description (0 = any free port). */
  grpcPort: number;
  logLevel?: LogLevel;
  args: string[];
  env: Record<string, string>;
}

export interface IommuInstance {
  id: string;
  vendor: Vendor;
}

export interface Endpoint {
  name: string;
  /** Host device name: "<device-sim>/<endpoint>". */
  hostName: string;
  rid: number;
  iommu: string;
  maxPasidLog2: number;
  /** ATC size in entries; undefined = no ATS. */
  atcEntries?: number;
  /** Outstanding Page Request Capacity; undefined = no PRI. */
  priCredits?: number;
}

export interface HostSpec extends ProcessCommon {
  kind: "host-iommufd";
  iommus: IommuInstance[];
}

export interface DeviceSimSpec extends ProcessCommon {
  kind: "device-sim";
  endpoints: Endpoint[];
}

export interface GuestSpec extends ProcessCommon {
  kind: "guest-viommu";
  vendor: Vendor;
  memoryBytes: bigint;
  /** Host device names. */
  devices: string[];
}

export type ProcessSpecOf = HostSpec | DeviceSimSpec | GuestSpec;

export interface Topology {
  name: string;
  nats: { port: number } | { url: string };
  host: HostSpec;
  devices: DeviceSimSpec[];
  guests: GuestSpec[];
}

/** Default gRPC ports when the description gives none: host 50051, then one each in order. */
const DEFAULT_PORT_BASE = 50051;

/** Cross-reference checks, each issue at the YAML path it is about. */
function crossCheck(t: Parsed, ctx: z.RefinementCtx): void {
  const issue = (path: (string | number)[], message: string) => ctx.addIssue({ code: "custom", path, message });
  const procs: [string, (string | number)[]][] = [
    [t.host.name, ["host", "name"]],
    ...t.devices.map((d, i): [string, (string | number)[]] => [d.name, ["devices", i, "name"]]),
    ...t.guests.map((g, i): [string, (string | number)[]] => [g.name, ["guests", i, "name"]]),
  ];
  const seenNames = new Set<string>(["nats"]);
  for (const [n, path] of procs) {
    if (seenNames.has(n)) issue(path, n === "nats" ? `"nats" is the NATS server's name` : `duplicate process name "${n}"`);
    seenNames.add(n);
  }
  const iommus = new Map<string, Vendor>();
  t.host.iommus.forEach((u, i) => {
    if (iommus.has(u.id)) issue(["host", "iommus", i, "id"], `duplicate IOMMU id "${u.id}"`);
    iommus.set(u.id, u.vendor);
  });
  const endpoints = new Map<string, { iommu: string }>();
  const rids = new Map<number, string>();
  t.devices.forEach((d, di) => {
    const names = new Set<string>();
    d.endpoints.forEach((e, ei) => {
      const at = ["devices", di, "endpoints", ei];
      if (names.has(e.name)) issue([...at, "name"], `duplicate endpoint name "${e.name}" in ${d.name}`);
      names.add(e.name);
      if (!iommus.has(e.iommu)) issue([...at, "iommu"], `no IOMMU "${e.iommu}" on the host (have: ${[...iommus.keys()].join(", ")})`);
      const other = rids.get(e.rid);
      if (other) issue([...at, "rid"], `requester ID ${formatRid(e.rid)} is already used by ${other}`);
      rids.set(e.rid, `${d.name}/${e.name}`);
      if (e.pri && !e.ats) issue([...at, "pri"], "PRI needs ATS (give ats.atc_entries)");
      endpoints.set(`${d.name}/${e.name}`, { iommu: e.iommu });
    });
  });
  const assigned = new Map<string, string>();
  t.guests.forEach((g, gi) => {
    g.devices.forEach((ref, ri) => {
      const at = ["guests", gi, "devices", ri];
      const ep = endpoints.get(ref);
      if (!ep) {
        issue(at, `no endpoint "${ref}" (have: ${[...endpoints.keys()].join(", ") || "none"}; write "<device-sim>/<endpoint>")`);
        return;
      }
      const owner = assigned.get(ref);
      if (owner) issue(at, `${ref} is already assigned to ${owner}`);
      assigned.set(ref, g.name);
      const v = iommus.get(ep.iommu);
      if (v && v !== g.vendor) issue(at, `${ref} is behind ${ep.iommu} (${v}), but ${g.name} is a ${g.vendor} guest: nesting needs the same IOMMU architecture`);
    });
  });
  const ports = new Map<number, string>();
  if ("port" in t.nats) ports.set(t.nats.port, "nats.port");
  const portPaths: [number | undefined, (string | number)[]][] = [
    [t.host.grpc_port, ["host", "grpc_port"]],
    ...t.devices.map((d, i): [number | undefined, (string | number)[]] => [d.grpc_port, ["devices", i, "grpc_port"]]),
    ...t.guests.map((g, i): [number | undefined, (string | number)[]] => [g.grpc_port, ["guests", i, "grpc_port"]]),
  ];
  for (const [p, path] of portPaths) {
    if (!p) continue;
    const other = ports.get(p);
    if (other) issue(path, `port ${p} is already used by ${other}`);
    ports.set(p, path.join("."));
  }
}

export const checkedTopologySchema = topologySchema.superRefine(crossCheck);

/** Turn a parsed, checked description into the normalized shape (default ports filled in). */
export function normalize(t: Parsed): Topology {
  let next = DEFAULT_PORT_BASE;
  const taken = new Set([t.host.grpc_port, ...t.devices.map((d) => d.grpc_port), ...t.guests.map((g) => g.grpc_port)].filter((p) => p));
  const pick = (p: number | undefined) => {
    if (p !== undefined) return p;
    while (taken.has(next)) next++;
    taken.add(next);
    return next++;
  };
  const common = (p: { name: string; grpc_port?: number; log_level?: LogLevel; args: string[]; env: Record<string, string> }): ProcessCommon => ({
    name: p.name,
    grpcPort: pick(p.grpc_port),
    ...(p.log_level ? { logLevel: p.log_level } : {}),
    args: p.args,
    env: p.env,
  });
  return {
    name: t.name,
    nats: t.nats,
    host: { kind: "host-iommufd", ...common(t.host), iommus: t.host.iommus },
    devices: t.devices.map((d) => ({
      kind: "device-sim",
      ...common(d),
      endpoints: d.endpoints.map((e) => ({
        name: e.name,
        hostName: `${d.name}/${e.name}`,
        rid: e.rid,
        iommu: e.iommu,
        maxPasidLog2: e.max_pasid_log2,
        ...(e.ats ? { atcEntries: e.ats.atc_entries } : {}),
        ...(e.pri ? { priCredits: e.pri.outstanding_capacity } : {}),
      })),
    })),
    guests: t.guests.map((g) => ({ kind: "guest-viommu", ...common(g), vendor: g.vendor, memoryBytes: g.memory, devices: g.devices })),
  };
}
