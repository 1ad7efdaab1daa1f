// `up`: start a topology with the local launcher in the foreground, with
// readable prefixed logs; Ctrl-C (or `down`, which sends SIGTERM) stops it.
import { join, relative } from "node:path";
import type { LogLevel } from "@iommufd/kit";
import type { Launcher, LauncherEvent } from "@iommufd/topology";
import type { Command } from "commander";
import { progress } from "../progress.js";
import { sourceName } from "./compose.js";
import {
  type ControlReply,
  type ControlRequest,
  DEFAULT_STATE,
  pidAlive,
  REPO_ROOT,
  readState,
  removeState,
  serveControl,
  socketPathFor,
  type UpState,
  writeState,
} from "../state.js";

interface UpOptions {
  topology?: string;
  fixedPorts?: boolean;
  logLevel?: LogLevel;
  logDir?: string;
  logs: boolean;
  state: string;
  readyTimeout: string;
}

export function upCommand(program: Command): void {
  program
    .command("up")
    .description("start a topology as local processes (nats-server, host, device-sims, guests) in the foreground; Ctrl-C or `down` stops it")
    .option("-t, --topology <file>", "topology description (YAML); default: the embedded default topology")
    .option("--fixed-ports", "use the description's nats.port and grpc_port values (as compose does) instead of free ports")
    .option("--log-level <level>", "log level of processes whose description sets none")
    .option("--log-dir <dir>", "raw log of each process in <dir>/<name>.log", join(REPO_ROOT, ".tmp/up/logs"))
    .option("--no-logs", "do not print the processes' logs (the launcher's own lines still print)")
    .option("--state <file>", "state file other commands read", DEFAULT_STATE)
    .option("--ready-timeout <ms>", "how long each process may take to become healthy", "30000")
    .addHelpText("after", "\nThe state file and its control socket (beside it) let `down`, `status`, `proc` and `fault` find this topology.")
    .action(async (o: UpOptions) => {
      await up(o);
    });
}

async function up(o: UpOptions): Promise<void> {
  const prev = readState(o.state);
  if (prev && pidAlive(prev.pid)) throw new Error(`a topology is already up (pid ${prev.pid}, ${o.state}); run \`down\` first`);
  const { Launcher, loadTopology } = await import("@iommufd/topology");
  const topology = loadTopology(o.topology);
  const source = sourceName(o.topology);
  const color = process.stdout.isTTY === true;
  const total = ("url" in topology.nats ? 0 : 1) + 1 + topology.devices.length + topology.guests.length;
  const bar = progress(`starting ${topology.name}`, total);

  let launcher: Launcher;
  const socket = socketPathFor(o.state);
  let starting = true;
  // During start-up lines go above the progress bar; after it, straight to stdout.
  let out = (line: string) => bar.log(line);
  const onEvent = (e: LauncherEvent) => {
    if (starting && e.type === "ready") bar.tick(1, e.name);
  };

  const t0 = Date.now();
  try {
    launcher = await Launcher.start(topology, {
      ports: o.fixedPorts ? "topology" : "auto",
      logLevel: o.logLevel,
      logDir: o.logDir,
      output: (line) => out(line),
      processLogs: o.logs,
      color,
      readyTimeoutMs: Number(o.readyTimeout),
      onEvent,
    });
  } finally {
    starting = false;
    bar.stop();
    out = (line: string) => void process.stdout.write(`${line}\n`);
  }
  const l = launcher;
  const state: UpState = {
    version: 1,
    pid: process.pid,
    topology: topology.name,
    source,
    natsUrl: l.natsUrl,
    socket,
    startedAt: new Date().toISOString(),
    updatedAt: "",
    processes: [],
  };
  const save = () => {
    state.updatedAt = new Date().toISOString();
    state.natsUrl = l.natsUrl;
    state.processes = l.status().map((p) => ({ ...p, ...(p.grpcPort ? { address: `127.0.0.1:${p.grpcPort}` } : {}) }));
    writeState(o.state, state);
  };
  save();
  l.on("event", save);

  const handle = async (req: ControlRequest): Promise<ControlReply> => {
    switch (req.op) {
      case "status":
        break;
      case "kill":
        await l.kill(req.name);
        break;
      case "pause":
        l.pause(req.name);
        break;
      case "resume":
        l.resume(req.name);
        break;
      case "restart":
        await l.restart(req.name, { kill: req.kill });
        break;
      default:
        return { ok: false, error: `unknown op ${(req as { op: string }).op}` };
    }
    save();
    return { ok: true, processes: readState(o.state)?.processes ?? [] };
  };
  const server = await serveControl(socket, handle);

  l.say(`topology "${topology.name}" up in ${Date.now() - t0} ms: NATS ${l.natsUrl}`);
  for (const p of l.status()) if (p.grpcPort) l.say(`  ${p.name.padEnd(12)} ${p.kind.padEnd(13)} pid ${String(p.pid).padEnd(7)} gRPC 127.0.0.1:${p.grpcPort}`);
  l.say(`state in ${relative(process.cwd(), o.state) || o.state}; Ctrl-C or \`npm run cli -- down\` stops it`);

  let stopping = false;
  const stop = async (sig: string) => {
    if (stopping) return;
    stopping = true;
    l.say(`${sig}: stopping the topology`);
    const bar2 = progress("stopping", 1);
    server.close();
    l.off("event", save);
    await l.stop();
    bar2.tick();
    bar2.stop();
    removeState(o.state);
    l.say("stopped");
    process.exit(0);
  };
  process.on("SIGINT", () => void stop("SIGINT"));
  process.on("SIGTERM", () => void stop("SIGTERM"));
  process.on("SIGHUP", () => void stop("SIGHUP"));
  // Stay in the foreground until a signal arrives.
  await new Promise(() => {});
}
