// `status`: every process of the running topology — pid and state (from
// `up`), gRPC health (grpc.health.v1), NATS ping round trip — and, from the
// host's Admin service, its sessions with object counts (DumpObjects) and
// its devices (Inventory, when the host implements it). Without a running
// `up`, the description's fixed ports on 127.0.0.1 are probed instead
// (a compose deployment publishes them there).
import type { Command } from "commander";
import { control, DEFAULT_STATE, pidAlive, readState, type UpProcess } from "../state.js";

interface Row {
  name: string;
  kind: string;
  pid: number | null;
  state: string;
  address: string | null;
  health: string;
  pingMs: number | null;
}

interface HostReport {
  address: string;
  sessions?: { sessionId: string; client: string; objects: Record<string, number>; pinnedBytes: string; leaseRemainingMs: number }[];
  sessionsError?: string;
  devices?: { rid: string; name: string; iommu: string; caps: string[]; boundSession: string }[];
  iommus?: { id: string; vendor: string }[];
  inventoryError?: string;
}

async function timed<T>(p: Promise<T>): Promise<[T, number]> {
  const t = performance.now();
  const v = await p;
  return [v, performance.now() - t];
}

const errText = (e: unknown) => {
  const er = e as { errno?: string; message: string };
  return er.errno ? `${er.errno}: ${er.message}` : er.message;
};

async function hostReport(address: string): Promise<HostReport> {
  const { createClient } = await import("@iommufd/kit");
  const { Admin, IommuVendor, ObjectType } = await import("@iommufd/proto/iommufd");
  const { formatRid } = await import("@iommufd/topology");
  const admin = createClient(Admin, address, { deadlineMs: 3000 });
  const r: HostReport = { address };
  try {
    const dump = await admin.rpc.dumpObjects({});
    r.sessions = dump.sessions.map((s) => {
      const objects: Record<string, number> = {};
      for (const o of s.objects) {
        const t = ObjectType[o.type] ?? String(o.type);
        objects[t] = (objects[t] ?? 0) + 1;
      }
      return { sessionId: s.sessionId, client: s.clientName, objects, pinnedBytes: String(s.pinnedBytes), leaseRemainingMs: s.leaseRemainingMs };
    });
  } catch (e) {
    r.sessionsError = errText(e);
  }
  try {
    const inv = await admin.rpc.inventory({});
    r.iommus = inv.iommus.map((u) => ({ id: u.id, vendor: (IommuVendor[u.vendor] ?? String(u.vendor)).toLowerCase() }));
    r.devices = inv.devices.map((d) => ({
      rid: formatRid(d.rid),
      name: d.name,
      iommu: d.iommuId,
      caps: [d.maxPasidLog2 ? `pasid${d.maxPasidLog2}` : "", d.ats ? "ats" : "", d.pri ? "pri" : ""].filter(Boolean),
      boundSession: d.boundSessionId,
    }));
  } catch (e) {
    r.inventoryError = errText(e);
  }
  admin.close();
  return r;
}

export function statusCommand(program: Command): void {
  program
    .command("status")
    .description("per process: pid, gRPC health, NATS ping; from the host's Admin service: sessions, object counts and devices")
    .option("--state <file>", "state file written by `up`", DEFAULT_STATE)
    .option("-t, --topology <file>", "without a running `up`: probe this description's fixed ports on 127.0.0.1 (default: the embedded one)")
    .option("--json", "print JSON")
    .action(async (o: { state: string; topology?: string; json?: boolean }) => {
      const { Bus, checkHealth, createLogger, subjects } = await import("@iommufd/kit");
      const { PingSchema, PongSchema } = await import("@iommufd/proto/bus");
      const { loadTopology, planProcesses } = await import("@iommufd/topology");
      const st = readState(o.state);
      let procs: UpProcess[];
      let natsUrl: string;
      let header: string;
      if (st && pidAlive(st.pid)) {
        const live = await control(st.socket, { op: "status" }, 5000).catch(() => undefined);
        procs = live?.ok ? live.processes : st.processes;
        natsUrl = st.natsUrl;
        header = `topology "${st.topology}" from ${st.source}, up pid ${st.pid} since ${st.startedAt}, NATS ${natsUrl}`;
      } else {
        const t = loadTopology(o.topology);
        natsUrl = "url" in t.nats ? t.nats.url : `nats://127.0.0.1:${t.nats.port}`;
        procs = [
          { name: "nats", kind: "nats-server", pid: -1, state: "unknown" as never, restarts: 0 },
          ...planProcesses(t).map((p) => ({ name: p.name, kind: p.kind, pid: -1, state: "unknown" as never, restarts: 0, address: `127.0.0.1:${p.spec.grpcPort}` })),
        ];
        header = `no running \`up\`${st ? ` (stale state ${o.state}: run \`down\`)` : ""}; probing topology "${t.name}" at its fixed ports, NATS ${natsUrl}`;
      }
      const bus = await Bus.connect({ url: natsUrl, name: `cli-status-${process.pid}`, log: createLogger("cli", "silent") }).catch(() => undefined);
      const rows: Row[] = [];
      for (const p of procs) {
        const row: Row = { name: p.name, kind: p.kind, pid: p.pid > 0 ? p.pid : null, state: p.state, address: p.address ?? null, health: "-", pingMs: null };
        if (p.kind === "nats-server") {
          if (bus) row.pingMs = await bus.nc.rtt().catch(() => null);
          row.health = bus ? "reachable" : "UNREACHABLE";
        } else if (p.address && p.state !== "exited") {
          row.health = await checkHealth(p.address, "", 1000).catch((e: Error) => `DOWN (${e.message.split(":")[0]})`);
          if (bus) row.pingMs = await timed(bus.request(subjects.ping(p.name), PingSchema, { seq: 1n }, PongSchema, { timeoutMs: 1000 })).then(([, ms]) => ms, () => null);
        }
        rows.push(row);
      }
      await bus?.close();
      const host = procs.find((p) => p.kind === "host-iommufd" && p.address);
      const report = host && rows.find((r) => r.name === host.name)?.health === "SERVING" ? await hostReport(host.address as string) : undefined;
      const healthy = rows.every((r) => r.health === "SERVING" || r.health === "reachable");

      if (o.json) {
        console.log(JSON.stringify({ header, natsUrl, processes: rows, host: report ?? null, healthy }, null, 2));
      } else {
        console.log(header);
        const table = [["process", "kind", "pid", "state", "gRPC", "health", "NATS ping"], ...rows.map((r) => [r.name, r.kind, String(r.pid ?? "-"), r.state, r.address ?? "-", r.health, r.pingMs === null ? "-" : `${r.pingMs.toFixed(2)} ms`])];
        const w = table[0].map((_, i) => Math.max(...table.map((row) => row[i]?.length ?? 0)));
        for (const row of table) console.log(`  ${row.map((c, i) => c.padEnd(w[i] as number)).join("  ")}`.trimEnd());
        if (report) printHost(report);
        else if (host) console.log(`host ${host.name}: not serving, no Admin report`);
      }
      process.exitCode = healthy ? 0 : 1;
    });
}

function printHost(r: HostReport): void {
  if (r.sessions) {
    console.log(`host sessions (Admin.DumpObjects at ${r.address}): ${r.sessions.length}`);
    for (const s of r.sessions) {
      const total = Object.values(s.objects).reduce((a, b) => a + b, 0);
      const by = Object.entries(s.objects).map(([t, n]) => `${t} ${n}`).join(", ");
      console.log(`  ${s.sessionId}  client=${s.client || "-"}  objects=${total}${by ? ` (${by})` : ""}  pinned=${s.pinnedBytes} B  lease=${s.leaseRemainingMs} ms`);
    }
  } else console.log(`host sessions: not available (${r.sessionsError})`);
  if (r.devices) {
    console.log(`host IOMMUs: ${(r.iommus ?? []).map((u) => `${u.id} (${u.vendor})`).join(", ") || "none"}`);
    console.log(`host devices (Admin.Inventory): ${r.devices.length}`);
    for (const d of r.devices) console.log(`  ${d.rid}  ${d.name}  behind ${d.iommu}  ${d.caps.join(" ") || "-"}${d.boundSession ? `  bound to ${d.boundSession}` : ""}`);
  } else console.log(`host devices: not available (Admin.Inventory: ${r.inventoryError})`);
}
