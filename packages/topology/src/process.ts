// One service process as a child of this one: spawned with tsx
// (`node --import tsx <entry>`), its output kept (last 2000 lines), copied
// to a log file and handed line by line to a listener; ready once it logged
// "ready" and its gRPC health answers SERVING. Process faults: any signal,
// pause (SIGSTOP) / resume (SIGCONT), and stop = SIGTERM, then SIGKILL
// after a grace period. Every live child is SIGKILLed when this process
// exits, for any reason.
import { type ChildProcess, spawn } from "node:child_process";
import { createWriteStream, mkdirSync, type WriteStream } from "node:fs";
import { dirname, isAbsolute, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import { checkHealth } from "@iommufd/kit";

export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

const live = new Set<ChildProcess>();
process.once("exit", () => {
  for (const c of live) {
    if (c.exitCode === null && c.signalCode === null) {
      c.kill("SIGCONT");
      c.kill("SIGKILL");
    }
  }
});

export type ProcessState = "starting" | "running" | "paused" | "exited";

export interface SpawnOptions {
  name: string;
  /** Entry point, absolute or relative to the repository root. */
  entry: string;
  args: string[];
  env?: Record<string, string | undefined>;
  /** Write the raw output here. */
  logFile?: string;
  /** Append to logFile instead of truncating it (restarts). */
  appendLog?: boolean;
  /** Each output line as it arrives. */
  onLine?: (line: string) => void;
}

export class ServiceProcess<S = unknown> {
  readonly lines: string[] = [];
  grpcPort = 0;
  /** Set by pause() / resume(). */
  paused = false;
  /** Set once it has been asked to stop (an exit after that is expected). */
  stopping = false;
  private readyRecord: Record<string, unknown> | undefined;
  private readonly exited: Promise<number | null>;

  constructor(
    readonly name: string,
    readonly spec: S,
    readonly child: ChildProcess,
    logFile?: WriteStream,
    onLine?: (line: string) => void,
  ) {
    live.add(child);
    this.exited = new Promise((res) =>
      child.once("exit", (code) => {
        live.delete(child);
        this.paused = false;
        logFile?.end();
        res(code);
      }),
    );
    const reader = () => {
      let buf = "";
      return (d: Buffer) => {
        logFile?.write(d);
        buf += d.toString();
        let nl = buf.indexOf("\n");
        while (nl >= 0) {
          const line = buf.slice(0, nl);
          buf = buf.slice(nl + 1);
          this.lines.push(line);
          if (this.lines.length > 2000) this.lines.shift();
          if (!this.readyRecord && line.includes('"msg":"ready"')) {
            try {
              this.readyRecord = JSON.parse(line) as Record<string, unknown>;
            } catch {
              /* not JSON after all */
            }
          }
          onLine?.(line);
          nl = buf.indexOf("\n");
        }
      };
    };
    child.stdout?.on("data", reader());
    child.stderr?.on("data", reader());
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

  get state(): ProcessState {
    if (!this.running) return "exited";
    if (this.paused) return "paused";
    return this.readyRecord ? "running" : "starting";
  }

  /** How it ended: exit code or signal; undefined while running. */
  get exit(): { code: number | null; signal: NodeJS.Signals | null } | undefined {
    return this.running ? undefined : { code: this.child.exitCode, signal: this.child.signalCode };
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
      if (!this.running) throw new Error(`${this.name} exited early (code ${this.child.exitCode}, signal ${this.child.signalCode}):\n${this.lines.slice(-30).join("\n")}`);
      if (this.readyRecord) {
        this.grpcPort = Number(this.readyRecord.grpcPort);
        if ((await checkHealth(this.address, "", 1000).catch(() => "")) === "SERVING") return;
      }
      await new Promise((r) => setTimeout(r, 50));
    }
    throw new Error(`${this.name} not ready within ${timeoutMs} ms:\n${this.lines.slice(-30).join("\n")}`);
  }

  signal(sig: NodeJS.Signals): void {
    if (!this.running) return;
    this.child.kill(sig);
    if (sig === "SIGSTOP") this.paused = true;
    if (sig === "SIGCONT") this.paused = false;
  }

  /** SIGSTOP: the process stays, answers nothing (TCP connections stay open). */
  pause(): void {
    this.signal("SIGSTOP");
  }

  /** SIGCONT. */
  resume(): void {
    this.signal("SIGCONT");
  }

  /** SIGTERM (after SIGCONT if paused, or the signal would wait), then SIGKILL after `graceMs`. Resolves with the exit code (null if killed). */
  async stop(graceMs = 5000): Promise<number | null> {
    this.stopping = true;
    if (!this.running) return this.exited;
    if (this.paused) this.resume();
    this.child.kill("SIGTERM");
    const t = setTimeout(() => this.child.kill("SIGKILL"), graceMs);
    const code = await this.exited;
    clearTimeout(t);
    return code;
  }

  /** kill -9: no clean-up in the process at all. */
  async kill(): Promise<void> {
    if (!this.running) return;
    this.child.kill("SIGKILL");
    await this.exited;
  }

  wait(): Promise<number | null> {
    return this.exited;
  }
}

/** Spawn a service entry with tsx. */
export function spawnProcess<S>(spec: S, opts: SpawnOptions): ServiceProcess<S> {
  const entry = isAbsolute(opts.entry) ? opts.entry : join(REPO_ROOT, opts.entry);
  const child = spawn(process.execPath, ["--import", "tsx", entry, ...opts.args], {
    cwd: REPO_ROOT,
    env: { ...process.env, ...opts.env },
    stdio: ["ignore", "pipe", "pipe"],
  });
  let logFile: WriteStream | undefined;
  if (opts.logFile) {
    mkdirSync(dirname(opts.logFile), { recursive: true });
    logFile = createWriteStream(opts.logFile, { flags: opts.appendLog ? "a" : "w" });
  }
  return new ServiceProcess(opts.name, spec, child, logFile, opts.onLine);
}
