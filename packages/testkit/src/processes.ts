// Starts nats-server and the services as real child processes on free ports,
// waits until each is healthy, and tears everything down — on stop(), on
// test failure, and (SIGKILL) when the test process exits for any reason.
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkHealth, type NatsServerProcess, startNatsServer } from "@iommufd/kit";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

/** The service entry points, by the name used in topologies. */
export const ENTRIES = {
  "host-iommufd": "services/host-iommufd/src/main.ts",
  "guest-viommu": "services/guest-viommu/src/main.ts",
  "device-sim": "services/device-sim/src/main.ts",
} as const;

export type ServiceKind = keyof typeof ENTRIES;

export interface ProcSpec {
  kind: ServiceKind;
  /** Process name (defaults to the kind). */
  name?: string;
  args?: string[];
  env?: Record<string, string>;
}

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of live) c.kill("SIGKILL");
});

export class ServiceProcess {
  readonly lines: string[] = [];
  grpcPort = 0;
  private exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly spec: ProcSpec,
    readonly child: ChildProcess,
    logFile?: WriteStream,
  ) {
    live.add(child);
    this.exited = new Promise((res) =>
      child.once("exit", (code) => {
        live.delete(child);
        logFile?.end();
        res(code);
      }),
    );
    let buf = "";
    const onData = (d: Buffer) => {
      logFile?.write(d);
      buf += d.toString();
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        this.lines.push(buf.slice(0, nl));
        if (this.lines.length > 2000) this.lines.shift();
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
      }
    };
    child.stdout?.on("data", onData);
    child.stderr?.on("data", onData);
  }

  get pid(): number {
    return this.child.pid ?? -1;
  }

  get address(): string {
    return `127.0.0.1:${this.grpcPort}`;
  }

  get running(): boolean {
    return this.child.exitCode === null && this.child.signalCode === null;
  }

  /** Parsed JSON log records (pino) seen so far. */
  records(): Record<string, unknown>[] {
    return this.lines.flatMap((l) => {
      try {
        return [JSON.parse(l) as Record<string, unknown>];
      } catch {
        return [];
      }
    });
  }

  /** Wait for the "ready" log line and a SERVING health answer. */
  async waitReady(timeoutMs: number): Promise<void> {
    const deadline = Date.now() + timeoutMs;
    while (Date.now() < deadline) {
      if (!this.running) throw new Error(`${this.name} exited early (code ${this.child.exitCode}):\n${this.lines.slice(-30).join("\n")}`);
      const ready = this.records().find((r) => r.msg === "ready");
      if (ready) {
        this.grpcPort = Number(ready.grpcPort);
        if ((await checkHealth(this.address).catch(() => "")) === "SERVING") return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${this.name} not ready within ${timeoutMs} ms:\n${this.lines.slice(-30).join("\n")}`);
  }

  signal(sig: NodeJS.Signals): void {
    this.child.kill(sig);
  }

  /** SIGTERM, then SIGKILL after `graceMs`. Resolves with the exit code (null if killed). */
  async stop(graceMs = 5000): Promise<number | null> {
    if (!this.running) return this.exited;
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  wait(): Promise<number | null> {
    return this.exited;
  }
}

export interface StartOptions {
  /** Use this NATS URL instead of starting a nats-server. */
  natsUrl?: string;
  /** Write each process's output to <logDir>/<name>.log. */
  logDir?: string;
  readyTimeoutMs?: number;
  logLevel?: string;
}

/** Spawn one service process (tsx runs the TypeScript entry directly). */
export function spawnService(spec: ProcSpec, natsUrl: string, opts: StartOptions = {}): ServiceProcess {
  const name = spec.name ?? spec.kind;
  const args = [
    "--import",
    "tsx",
    join(REPO_ROOT, ENTRIES[spec.kind]),
    "--name",
    name,
    "--nats-url",
    natsUrl,
    "--grpc-port",
    "0",
    "--log-level",
    opts.logLevel ?? "info",
    ...(spec.args ?? []),
  ];
  const child = spawn(process.execPath, args, {
    cwd: REPO_ROOT,
    env: { ...process.env, ...spec.env, NATS_URL: natsUrl },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let logFile: WriteStream | undefined;
  if (opts.logDir) {
    mkdirSync(opts.logDir, { recursive: true });
    logFile = createWriteStream(join(opts.logDir, `${name}.log`));
  }
  return new ServiceProcess(name, spec, child, logFile);
}

export class TestTopology {
  private constructor(
    readonly natsUrl: string,
    readonly nats: NatsServerProcess | undefined,
    readonly procs: Map<string, ServiceProcess>,
    private readonly opts: StartOptions,
  ) {}

  static async start(specs: ProcSpec[], opts: StartOptions = {}): Promise<TestTopology> {
    const nats = opts.natsUrl ? undefined : await startNatsServer();
    const natsUrl = opts.natsUrl ?? (nats as NatsServerProcess).url;
    const topo = new TestTopology(natsUrl, nats, new Map(), opts);
    try {
      for (const s of specs) await topo.add(s);
    } catch (e) {
      await topo.stop();
      throw e;
    }
    return topo;
  }

  /** Start one more process and wait until it is ready. */
  async add(spec: ProcSpec): Promise<ServiceProcess> {
    const p = spawnService(spec, this.natsUrl, this.opts);
    this.procs.set(p.name, p);
    await p.waitReady(this.opts.readyTimeoutMs ?? 30_000);
    return p;
  }

  get(name: string): ServiceProcess {
    const p = this.procs.get(name);
    if (!p) throw new Error(`no process ${name}`);
    return p;
  }

  /** Restart a process under the same name (a new pid and gRPC port). */
  async restart(name: string): Promise<ServiceProcess> {
    const old = this.get(name);
    await old.stop();
    return this.add(old.spec);
  }

  async stop(): Promise<void> {
    await Promise.all([...this.procs.values()].map((p) => p.stop()));
    await this.nats?.stop();
  }
}
