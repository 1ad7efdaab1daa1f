// Finding and starting a real nats-server. Order: NATS_URL when given (use it,
// start nothing); else the binary from NATS_SERVER_BIN, PATH or /usr/sbin;
// when missing, install Debian's nats-server package if running as root, else
// stop with a message that says exactly what to install.
import { type ChildProcess, spawn, spawnSync } from "node:child_process";
import { accessSync, constants, mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { delimiter, join } from "node:path";

const CANDIDATES = ["/usr/sbin/nats-server", "/usr/bin/nats-server", "/usr/local/bin/nats-server"];

function executable(p: string): boolean {
  try {
    accessSync(p, constants.X_OK);
    return true;
  } catch {
    return false;
  }
}

export function findNatsServer(env: NodeJS.ProcessEnv = process.env): string | undefined {
  if (env.NATS_SERVER_BIN) return executable(env.NATS_SERVER_BIN) ? env.NATS_SERVER_BIN : undefined;
  for (const dir of (env.PATH ?? "").split(delimiter)) {
    if (dir && executable(join(dir, "nats-server"))) return join(dir, "nats-server");
  }
  return CANDIDATES.find(executable);
}

export const INSTALL_HINT =
  "nats-server was not found. Install it with `sudo apt-get install nats-server` (Debian/Ubuntu), " +
  "or set NATS_SERVER_BIN to its path, or set NATS_URL to a running server.";

/** Find nats-server, installing Debian's package when running as root. Throws with INSTALL_HINT otherwise. */
export function ensureNatsServer(log: (msg: string) => void = (m) => process.stderr.write(`${m}\n`)): string {
  const found = findNatsServer();
  if (found) return found;
  if (process.getuid?.() !== 0 || !executable("/usr/bin/apt-get")) throw new Error(INSTALL_HINT);
  log("nats-server not found: installing Debian's nats-server package (apt-get)…");
  const env = { ...process.env, DEBIAN_FRONTEND: "noninteractive" };
  for (const args of [["update", "-qq"], ["install", "-y", "-qq", "nats-server"]]) {
    const r = spawnSync("apt-get", args, { stdio: ["ignore", "inherit", "inherit"], env });
    if (r.status !== 0) throw new Error(`apt-get ${args.join(" ")} failed (exit ${r.status}). ${INSTALL_HINT}`);
  }
  const installed = findNatsServer();
  if (!installed) throw new Error(`nats-server still not found after installing. ${INSTALL_HINT}`);
  return installed;
}

export interface NatsServerProcess {
  readonly url: string;
  readonly port: number;
  readonly pid: number;
  readonly child: ChildProcess;
  stop(): Promise<void>;
}

/** Start nats-server on 127.0.0.1 and a free port (it picks one: -p -1) or the given one; resolves once it is ready. */
export async function startNatsServer(opts: { jetstream?: boolean; timeoutMs?: number; port?: number } = {}): Promise<NatsServerProcess> {
  const bin = ensureNatsServer();
  const storeDir = opts.jetstream ? mkdtempSync(join(tmpdir(), "nats-js-")) : undefined;
  const args = ["-a", "127.0.0.1", "-p", String(opts.port || -1), "-m", "0"];
  if (storeDir) args.push("-js", "-sd", storeDir);
  const child = spawn(bin, args, { stdio: ["ignore", "pipe", "pipe"] });
  const killOnExit = () => child.kill("SIGKILL");
  process.once("exit", killOnExit);

  const port = await new Promise<number>((resolve, reject) => {
    let log = "";
    let found: number | undefined;
    const timer = setTimeout(() => reject(new Error(`nats-server did not become ready:\n${log}`)), opts.timeoutMs ?? 10_000);
    const onData = (d: Buffer) => {
      log += d.toString();
      const m = /Listening for client connections on [^\s]*:(\d+)/.exec(log);
      if (m) found = Number(m[1]);
      if (found && log.includes("Server is ready")) {
        clearTimeout(timer);
        child.stderr?.off("data", onData);
        child.stdout?.off("data", onData);
        resolve(found);
      }
    };
    child.stderr?.on("data", onData);
    child.stdout?.on("data", onData);
    child.once("exit", (code) => {
      clearTimeout(timer);
      reject(new Error(`nats-server exited (${code}) before it was ready:\n${log}`));
    });
  });
  // Keep draining its output so the pipe never blocks it.
  child.stderr?.resume();
  child.stdout?.resume();

  return {
    url: `nats://127.0.0.1:${port}`,
    port,
    pid: child.pid ?? -1,
    child,
    stop: () =>
      new Promise<void>((resolve) => {
        process.off("exit", killOnExit);
        const done = () => {
          if (storeDir) rmSync(storeDir, { recursive: true, force: true });
          resolve();
        };
        if (child.exitCode !== null || child.signalCode !== null) return done();
        const force = setTimeout(() => child.kill("SIGKILL"), 3000);
        child.once("exit", () => {
          clearTimeout(force);
          done();
        });
        child.kill("SIGTERM");
      }),
  };
}
