// From a topology to processes: which entry point, which flags, which
// dependencies. The launcher and the compose generator both use this, so a
// process gets the same flags on a laptop and in a container; only the
// addresses differ (PlanContext).
//
// The flag contract (each service parses these; `args:` in the description
// come after them, verbatim):
//   every service   --name <name> --nats-url <url> --grpc-host <host>
//                   --grpc-port <port> --log-level <level>     (packages/kit config.ts)
//   host-iommufd    --iommu <id>=<vendor>          one per IOMMU instance
//   device-sim      --endpoint <key=value,...>      one per endpoint, in
//                     device-sim's own spec syntax (services/device-sim
//                     config.ts): name, rid (bb:dd.f), iommu, pasid (Max
//                     PASID Width), ats=1 + atc (ATC entries), pri=1 + prq
//                     (Outstanding Page Request Capacity)
//   guest-viommu    --vendor <smmuv3|vtd> --memory <bytes>
//                   --host <host:port>              the host's gRPC address
//                   --device name=<device-sim>/<endpoint>,vid=<virtual ID>,devsim=<host:port>
//                                                   one per assigned device; the virtual
//                                                   SID/RID is the endpoint's RID
import type { DeviceSimSpec, Endpoint, GuestSpec, HostSpec, ProcessSpecOf, Topology } from "./schema.js";
import { formatRid } from "./schema.js";

/** The service entry points (relative to the repository root), by kind. */
export const ENTRIES = {
  "host-iommufd": "services/host-iommufd/src/main.ts",
  "guest-viommu": "services/guest-viommu/src/main.ts",
  "device-sim": "services/device-sim/src/main.ts",
} as const;

export type ServiceKind = keyof typeof ENTRIES;

/** Addresses, which differ between the launcher and compose. */
export interface PlanContext {
  natsUrl: string;
  /** Address each process serves gRPC on. */
  grpcHost: string;
  /** The gRPC port a process is started with (0 = any free port). */
  grpcPort(name: string): number;
  /** How other processes reach a process's gRPC server ("host:50051"). */
  grpcAddress(name: string): string;
  /** Log level for processes whose description sets none. */
  logLevel?: string;
}

export interface ProcessPlan {
  name: string;
  kind: ServiceKind;
  entry: string;
  /** Processes that must be healthy first (nats is implicit). */
  dependsOn: string[];
  spec: ProcessSpecOf;
}

/** One endpoint as device-sim's --endpoint value (its own key=value spec syntax). */
export function formatEndpointFlag(e: Omit<Endpoint, "hostName">): string {
  const kv: [string, string | number][] = [
    ["name", e.name],
    ["rid", formatRid(e.rid)],
    ["iommu", e.iommu],
    ["pasid", e.maxPasidLog2],
  ];
  if (e.atcEntries !== undefined) kv.push(["ats", 1], ["atc", e.atcEntries]);
  if (e.priCredits !== undefined) kv.push(["pri", 1], ["prq", e.priCredits]);
  return kv.map(([k, v]) => `${k}=${v}`).join(",");
}

/** The processes of a topology in start order: host, device-sims, guests. */
export function planProcesses(t: Topology): ProcessPlan[] {
  const owner = new Map<string, string>();
  for (const d of t.devices) for (const e of d.endpoints) owner.set(e.hostName, d.name);
  const plan = (spec: ProcessSpecOf, dependsOn: string[]): ProcessPlan => ({ name: spec.name, kind: spec.kind, entry: ENTRIES[spec.kind], dependsOn, spec });
  return [
    plan(t.host, []),
    ...t.devices.map((d) => plan(d, [t.host.name])),
    ...t.guests.map((g) => plan(g, [t.host.name, ...new Set(g.devices.map((ref) => owner.get(ref) as string))])),
  ];
}

/** The mapped flags of one process (structured fields and common flags), as [flag, value] pairs. */
export function mappedFlags(p: ProcessPlan, ctx: PlanContext, t: Topology): [string, string][] {
  const s = p.spec;
  const flags: [string, string][] = [
    ["--name", s.name],
    ["--nats-url", ctx.natsUrl],
    ["--grpc-host", ctx.grpcHost],
    ["--grpc-port", String(ctx.grpcPort(s.name))],
    ["--log-level", s.logLevel ?? ctx.logLevel ?? "info"],
  ];
  switch (s.kind) {
    case "host-iommufd":
      for (const u of (s as HostSpec).iommus) flags.push(["--iommu", `${u.id}=${u.vendor}`]);
      break;
    case "device-sim":
      for (const e of (s as DeviceSimSpec).endpoints) flags.push(["--endpoint", formatEndpointFlag(e)]);
      break;
    case "guest-viommu": {
      const g = s as GuestSpec;
      flags.push(["--vendor", g.vendor], ["--memory", String(g.memoryBytes)], ["--host", ctx.grpcAddress(t.host.name)]);
      for (const ref of g.devices) {
        const [sim, ep] = ref.split("/");
        const rid = t.devices.find((d) => d.name === sim)?.endpoints.find((e) => e.name === ep)?.rid ?? 0;
        flags.push(["--device", `name=${ref},vid=0x${rid.toString(16)},devsim=${ctx.grpcAddress(sim as string)}`]);
      }
      break;
    }
  }
  return flags;
}

/** The full argument list after the entry point: mapped flags then the description's `args`. */
export function processArgs(p: ProcessPlan, ctx: PlanContext, t: Topology, accepts?: (flag: string) => boolean): { args: string[]; skipped: string[] } {
  const args: string[] = [];
  const skipped: string[] = [];
  for (const [f, v] of mappedFlags(p, ctx, t)) {
    if (accepts && !accepts(f)) {
      if (!skipped.includes(f)) skipped.push(f);
      continue;
    }
    args.push(f, v);
  }
  return { args: [...args, ...p.spec.args], skipped };
}
