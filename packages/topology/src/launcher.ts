// The local launcher: a topology as child processes of this one. Start
// order is the dependency order (nats-server, host, device-sims, guests;
// processes whose dependencies are ready start together), each waited for
// until healthy; stop is the reverse. Output is one readable line per log
// record, prefixed with the process name. Process faults by name (DESIGN
// §8): kill -9, pause (SIGSTOP) / resume (SIGCONT), restart (same gRPC
// port, so peers find it again), including "nats" itself.
import { EventEmitter } from "node:events";
import { spawn } from "node:child_process";
import { join, resolve } from "node:path";
import { type LogLevel, type NatsServerProcess, startNatsServer } from "@iommufd/kit";
import { formatLogLine, prefixFor } from "./logfmt.js";
import { type PlanContext, type ProcessPlan, planProcesses, processArgs } from "./plan.js";
import { REPO_ROOT, type ServiceProcess, spawnProcess } from "./process.js";
import type { Topology } from "./schema.js";

export const NATS_NAME = "nats";

export interface LauncherOptions {
  /** "topology": the description's ports; "auto" (default): free ports, so several topologies and tests can run at once. */
  ports?: "topology" | "auto";
  /** Log level for processes whose description sets none. */
  logLevel?: LogLevel;
  /** Raw output of each process in <logDir>/<name>.log. */
  logDir?: string;
  /** Readable, prefixed output lines (`[host] 12:00:00.000 INFO  ready grpcPort=50051`). */
  output?: (line: string) => void;
  /** ANSI colors in `output`. */
  color?: boolean;
  /** Pass the processes' own log lines to `output` (default true; the launcher's lines always go). */
  processLogs?: boolean;
  /** Every launcher event, from the first (also those before start() resolves). */
  onEvent?: (e: LauncherEvent) => void;
  readyTimeoutMs?: number;
  /** SIGTERM → SIGKILL grace period on stop. */
  graceMs?: number;
  /**
   * Pass a mapped flag (plan.ts) only if the service's --help lists it, and
   * report the others, while services are still adding their flags.
   * Default true; false passes every mapped flag.
   */
  probeFlags?: boolean;
  /** Extra environment for every process. */
  env?: Record<string, string>;
  /** Run another entry point for a kind (a bundled build, a stub), absolute or relative to the repository root. */
  entries?: Partial<Record<ProcessPlan["kind"], string>>;
}

export type ExitReason = "stopped" | "killed" | "crashed";

export type LauncherEvent =
  | { type: "starting"; name: string; pid: number }
  | { type: "ready"; name: string; pid: number; grpcPort: number; ms: number }
  | { type: "exit"; name: string; pid: number; code: number | null; signal: string | null; reason: ExitReason }
  | { type: "paused" | "resumed" | "restarting"; name: string; pid: number }
  | { type: "flags-skipped"; name: string; flags: string[] };

export interface ProcessStatus {
  name: string;
  kind: ProcessPlan["kind"] | "nats-server";
  pid: number;
  state: "starting" | "running" | "paused" | "exited";
  grpcPort?: number;
  natsUrl?: string;
  restarts: number;
  exit?: { code: number | null; signal: string | null; reason: ExitReason };
}

const flagProbes = new Map<string, Promise<Set<string> | undefined>>();

/** The long flags a service's --help lists (undefined if --help failed: then every mapped flag is passed). */
export function serviceFlags(entry: string): Promise<Set<string> | undefined> {
  let p = flagProbes.get(entry);
  if (!p) {
    p = new Promise((done) => {
      const child = spawn(process.execPath, ["--import", "tsx", resolve(REPO_ROOT, entry), "--help"], { cwd: REPO_ROOT, stdio: ["ignore", "pipe", "ignore"] });
      let out = "";
      child.stdout.on("data", (d: Buffer) => (out += d.toString()));
      child.once("error", () => done(undefined));
      child.once("exit", (code) => done(code === 0 ? new Set(out.match(/--[a-z][a-z0-9-]*/g) ?? []) : undefined));
    });
    flagProbes.set(entry, p);
  }
  return p;
}

interface Managed {
  plan: ProcessPlan;
  proc?: ServiceProcess<ProcessPlan>;
  restarts: number;
  /** Set before a signal the launcher sends, to name the exit. */
  reason?: ExitReason;
  lastExit?: ProcessStatus["exit"];
}

export class Launcher extends EventEmitter<{ event: [LauncherEvent] }> {
  natsUrl = "";
  nats: NatsServerProcess | undefined;
  private natsRestarts = 0;
  private natsPaused = false;
  /** nats-server is being stopped on purpose (restart). */
  private natsStopping = false;
  private readonly managed = new Map<string, Managed>();
  private readonly width: number;
  /** Per entry point: the flags its --help lists (probed once, while earlier processes start). */
  private readonly accepted = new Map<string, Promise<Set<string> | undefined>>();
  private stopped = false;

  private constructor(
    readonly topology: Topology,
    private readonly opts: LauncherOptions,
  ) {
    super();
    for (const plan of planProcesses(topology)) {
      const entry = opts.entries?.[plan.kind];
      this.managed.set(plan.name, { plan: entry ? { ...plan, entry } : plan, restarts: 0 });
    }
    this.width = Math.max(NATS_NAME.length, "launcher".length, ...[...this.managed.keys()].map((n) => n.length));
  }

  /** Start the whole topology; on any failure everything started is stopped and the error is thrown. */
  static async start(topology: Topology, opts: LauncherOptions = {}): Promise<Launcher> {
    const l = new Launcher(topology, opts);
    try {
      await l.startAll();
    } catch (e) {
      await l.stop();
      throw e;
    }
    return l;
  }

  /** The processes in start order (nats first). */
  get names(): string[] {
    return [NATS_NAME, ...this.managed.keys()];
  }

  /** A running service process by name. */
  get(name: string): ServiceProcess<ProcessPlan> {
    const m = this.managed.get(name);
    if (!m?.proc) throw new Error(`no process "${name}" (have: ${this.names.join(", ")})`);
    return m.proc;
  }

  status(): ProcessStatus[] {
    const nats: ProcessStatus = {
      name: NATS_NAME,
      kind: "nats-server",
      pid: this.nats?.pid ?? -1,
      state: !this.nats ? "exited" : this.nats.child.exitCode !== null || this.nats.child.signalCode !== null ? "exited" : this.natsPaused ? "paused" : "running",
      natsUrl: this.natsUrl,
      restarts: this.natsRestarts,
    };
    return [
      ...(this.nats || !("url" in this.topology.nats) ? [nats] : []),
      ...[...this.managed.values()].map((m) => ({
        name: m.plan.name,
        kind: m.plan.kind,
        pid: m.proc?.pid ?? -1,
        state: m.proc?.state ?? "exited",
        grpcPort: m.proc?.grpcPort || undefined,
        restarts: m.restarts,
        ...(m.lastExit && !m.proc?.running ? { exit: m.lastExit } : {}),
      })),
    ];
  }

  /** A line from the launcher itself. */
  say(text: string): void {
    this.opts.output?.(`${prefixFor("launcher", 7, this.width, this.opts.color)}${text}`);
  }

  private emitEvent(e: LauncherEvent): void {
    this.opts.onEvent?.(e);
    this.emit("event", e);
  }

  private async startNats(port?: number): Promise<void> {
    const n = this.topology.nats;
    if ("url" in n) {
      this.natsUrl = n.url;
      this.say(`using the NATS server at ${n.url}`);
      return;
    }
    this.nats = await startNatsServer({ port: port ?? (this.opts.ports === "topology" ? n.port : undefined) });
    this.natsUrl = this.nats.url;
    const nats = this.nats;
    nats.child.once("exit", (code, signal) => {
      if (this.nats !== nats) return;
      const reason = this.stopped || this.natsStopping ? "stopped" : signal === "SIGKILL" ? "killed" : "crashed";
      if (reason !== "stopped") this.say(`nats-server (pid ${nats.pid}) exited: ${signal ?? `code ${code}`} (${reason})`);
      this.emitEvent({ type: "exit", name: NATS_NAME, pid: nats.pid, code, signal, reason });
    });
    this.say(`nats-server ready at ${this.natsUrl} (pid ${this.nats.pid})`);
    this.emitEvent({ type: "ready", name: NATS_NAME, pid: nats.pid, grpcPort: 0, ms: 0 });
  }

  private context(): PlanContext {
    return {
      natsUrl: this.natsUrl,
      grpcHost: "127.0.0.1",
      grpcPort: (name) => {
        const m = this.managed.get(name);
        // A restarted process keeps its port, so peers holding its address find it again.
        if (m?.proc?.grpcPort) return m.proc.grpcPort;
        return this.opts.ports === "topology" ? (m?.plan.spec.grpcPort ?? 0) : 0;
      },
      grpcAddress: (name) => `127.0.0.1:${this.managed.get(name)?.proc?.grpcPort ?? 0}`,
      logLevel: this.opts.logLevel,
    };
  }

  private async startAll(): Promise<void> {
    if (this.opts.probeFlags !== false) for (const m of this.managed.values()) if (!this.accepted.has(m.plan.entry)) this.accepted.set(m.plan.entry, serviceFlags(m.plan.entry));
    await this.startNats();
    // Waves: every process whose dependencies are up starts together.
    const up = new Set<string>();
    while (up.size < this.managed.size) {
      const wave = [...this.managed.values()].filter((m) => !up.has(m.plan.name) && m.plan.dependsOn.every((d) => up.has(d)));
      if (wave.length === 0) throw new Error("dependency cycle in the topology");
      await Promise.all(wave.map((m) => this.startOne(m)));
      for (const m of wave) up.add(m.plan.name);
    }
  }

  private async startOne(m: Managed): Promise<ServiceProcess<ProcessPlan>> {
    const plan = m.plan;
    const accepts = await this.accepted.get(plan.entry);
    const { args, skipped } = processArgs(plan, this.context(), this.topology, accepts ? (f) => accepts.has(f) : undefined);
    if (skipped.length > 0 && m.restarts === 0) {
      this.say(`${plan.name}: this ${plan.kind} does not take ${skipped.join(", ")} yet; not passed (see its --help)`);
      this.emitEvent({ type: "flags-skipped", name: plan.name, flags: skipped });
    }
    const index = [...this.managed.keys()].indexOf(plan.name);
    const prefix = prefixFor(plan.name, index, this.width, this.opts.color);
    const output = this.opts.processLogs === false ? undefined : this.opts.output;
    const t0 = Date.now();
    const proc = spawnProcess(plan, {
      name: plan.name,
      entry: plan.entry,
      args,
      env: { ...this.opts.env, ...plan.spec.env },
      logFile: this.opts.logDir ? join(this.opts.logDir, `${plan.name}.log`) : undefined,
      appendLog: m.restarts > 0,
      onLine: output ? (line) => output(`${prefix}${formatLogLine(line, this.opts.color)}`) : undefined,
    });
    m.proc = proc;
    m.reason = undefined;
    this.emitEvent({ type: "starting", name: plan.name, pid: proc.pid });
    void proc.wait().then(() => {
      const exit = proc.exit ?? { code: null, signal: null };
      const reason: ExitReason = m.reason ?? (proc.stopping ? "stopped" : "crashed");
      m.lastExit = { ...exit, reason };
      if (reason !== "stopped") this.say(`${plan.name} (pid ${proc.pid}) exited: ${exit.signal ?? `code ${exit.code}`} (${reason})`);
      this.emitEvent({ type: "exit", name: plan.name, pid: proc.pid, code: exit.code, signal: exit.signal, reason });
    });
    await proc.waitReady(this.opts.readyTimeoutMs ?? 30_000);
    this.emitEvent({ type: "ready", name: plan.name, pid: proc.pid, grpcPort: proc.grpcPort, ms: Date.now() - t0 });
    this.say(`${plan.name} ready: pid ${proc.pid}, gRPC 127.0.0.1:${proc.grpcPort} (${Date.now() - t0} ms)`);
    return proc;
  }

  private managedOf(name: string): Managed {
    const m = this.managed.get(name);
    if (!m) throw new Error(`no process "${name}" (have: ${this.names.join(", ")})`);
    return m;
  }

  /** kill -9 a process by name (the launcher reports the exit; it does not restart it). */
  async kill(name: string): Promise<void> {
    if (name === NATS_NAME) {
      this.nats?.child.kill("SIGKILL");
      if (this.nats && this.nats.child.exitCode === null && this.nats.child.signalCode === null) await new Promise((r) => this.nats?.child.once("exit", r));
      this.natsPaused = false;
      return;
    }
    const m = this.managedOf(name);
    if (!m.proc?.running) return;
    m.reason = "killed";
    await m.proc.kill();
  }

  /** SIGSTOP a process by name. */
  pause(name: string): void {
    if (name === NATS_NAME) {
      this.nats?.child.kill("SIGSTOP");
      this.natsPaused = true;
      this.emitEvent({ type: "paused", name, pid: this.nats?.pid ?? -1 });
      this.say(`nats-server paused (SIGSTOP)`);
      return;
    }
    const p = this.get(name);
    p.pause();
    this.emitEvent({ type: "paused", name, pid: p.pid });
    this.say(`${name} (pid ${p.pid}) paused (SIGSTOP)`);
  }

  /** SIGCONT a paused process by name. */
  resume(name: string): void {
    if (name === NATS_NAME) {
      this.nats?.child.kill("SIGCONT");
      this.natsPaused = false;
      this.emitEvent({ type: "resumed", name, pid: this.nats?.pid ?? -1 });
      this.say(`nats-server resumed (SIGCONT)`);
      return;
    }
    const p = this.get(name);
    p.resume();
    this.emitEvent({ type: "resumed", name, pid: p.pid });
    this.say(`${name} (pid ${p.pid}) resumed (SIGCONT)`);
  }

  /**
   * Restart a process by name, running or not: stop it (SIGTERM, or kill -9
   * with `kill`), start it again on the same gRPC port, wait until healthy.
   */
  async restart(name: string, opts: { kill?: boolean } = {}): Promise<void> {
    if (name === NATS_NAME) {
      const old = this.nats;
      if (!old) throw new Error("nats-server is external: the launcher cannot restart it");
      this.emitEvent({ type: "restarting", name, pid: old.pid });
      this.natsStopping = !opts.kill;
      if (opts.kill) await this.kill(NATS_NAME);
      else await old.stop();
      this.natsStopping = false;
      this.natsRestarts++;
      this.natsPaused = false;
      await this.startNats(old.port);
      return;
    }
    const m = this.managedOf(name);
    this.emitEvent({ type: "restarting", name, pid: m.proc?.pid ?? -1 });
    this.say(`restarting ${name}`);
    if (m.proc?.running) {
      if (opts.kill) await this.kill(name);
      else await m.proc.stop(this.opts.graceMs);
    }
    m.restarts++;
    await this.startOne(m);
  }

  /** Stop everything, in reverse dependency order (SIGTERM, SIGKILL after the grace period). */
  async stop(): Promise<void> {
    this.stopped = true;
    const order = [...this.managed.values()].reverse();
    // Reverse waves: a process stops once nothing that depends on it runs.
    const stoppedNames = new Set<string>();
    while (stoppedNames.size < order.length) {
      const wave = order.filter(
        (m) => !stoppedNames.has(m.plan.name) && order.every((o) => stoppedNames.has(o.plan.name) || !o.plan.dependsOn.includes(m.plan.name)),
      );
      await Promise.all(wave.map((m) => m.proc?.stop(this.opts.graceMs)));
      for (const m of wave) stoppedNames.add(m.plan.name);
    }
    if (this.natsPaused) this.nats?.child.kill("SIGCONT");
    await this.nats?.stop();
  }
}
