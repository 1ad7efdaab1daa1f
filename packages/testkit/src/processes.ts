// Starts nats-server and the services as real child processes on free ports,
// waits until each is healthy, and tears everything down — on stop(), on
// test failure, and (SIGKILL) when the test process exits for any reason.
import { join } from "node:path";
import { type NatsServerProcess, startNatsServer } from "@iommufd/kit";
import { ENTRIES, REPO_ROOT, type ServiceKind, ServiceProcess as Proc, spawnProcess } from "@iommufd/topology";

// The process machinery lives in @iommufd/topology (the launcher uses it too).
export { ENTRIES, REPO_ROOT, type ServiceKind };

export interface ProcSpec {
  kind: ServiceKind;
  /** Process name (defaults to the kind). */
  name?: string;
  args?: string[];
  env?: Record<string, string>;
}

/** A service process started for a test (@iommufd/topology's ServiceProcess). */
export const ServiceProcess = Proc;
export type ServiceProcess = Proc<ProcSpec>;

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
  const args = ["--name", name, "--nats-url", natsUrl, "--grpc-port", "0", "--log-level", opts.logLevel ?? "info", ...(spec.args ?? [])];
  return spawnProcess(spec, {
    name,
    entry: ENTRIES[spec.kind],
    args,
    env: { ...spec.env, NATS_URL: natsUrl },
    logFile: opts.logDir ? join(opts.logDir, `${name}.log`) : undefined,
  });
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
