// How `up` and the other commands talk. `up` writes a state file (default
// .tmp/up/state.json: its pid, the NATS URL, each process's pid, state and
// gRPC address, updated on every launcher event) and listens on a Unix
// socket beside it for process faults (kill, pause, resume, restart) and
// status, one JSON line per request and reply. `down` sends `up` SIGTERM
// (what Ctrl-C does) and waits for it to exit; `status`, `fault` and
// `proc` read the state file and use the socket.
import { existsSync, mkdirSync, readFileSync, renameSync, rmSync, writeFileSync } from "node:fs";
import { connect, createServer, type Server } from "node:net";
import { dirname, join, resolve } from "node:path";
import { fileURLToPath } from "node:url";
import type { ProcessStatus } from "@iommufd/topology";

// Heavy packages (kit, topology, proto, hw) are imported inside each
// command's action, so `--help` and usage errors answer at once.
export const REPO_ROOT = resolve(dirname(fileURLToPath(import.meta.url)), "../../..");

export const DEFAULT_STATE = join(REPO_ROOT, ".tmp/up/state.json");

export interface UpProcess extends ProcessStatus {
  /** gRPC address, when it serves gRPC. */
  address?: string;
}

export interface UpState {
  version: 1;
  /** The `up` process. */
  pid: number;
  topology: string;
  source: string;
  natsUrl: string;
  socket: string;
  startedAt: string;
  updatedAt: string;
  processes: UpProcess[];
}

export type ControlRequest = { op: "status" } | { op: "kill" | "pause" | "resume"; name: string } | { op: "restart"; name: string; kill?: boolean };
export type ControlReply = { ok: true; processes: UpProcess[] } | { ok: false; error: string };

export function socketPathFor(stateFile: string): string {
  return join(dirname(stateFile), "control.sock");
}

export function pidAlive(pid: number): boolean {
  if (!(pid > 0)) return false;
  try {
    process.kill(pid, 0);
    return true;
  } catch (e) {
    return (e as NodeJS.ErrnoException).code === "EPERM";
  }
}

export function writeState(file: string, state: UpState): void {
  mkdirSync(dirname(file), { recursive: true });
  writeFileSync(`${file}.new`, `${JSON.stringify(state, null, 2)}\n`);
  renameSync(`${file}.new`, file); // readers never see half a file
}

export function readState(file: string): UpState | undefined {
  if (!existsSync(file)) return undefined;
  try {
    return JSON.parse(readFileSync(file, "utf8")) as UpState;
  } catch {
    return undefined;
  }
}

export function removeState(file: string): void {
  rmSync(file, { force: true });
  rmSync(socketPathFor(file), { force: true });
}

/** Serve control requests (in `up`). */
export function serveControl(path: string, handle: (req: ControlRequest) => Promise<ControlReply>): Promise<Server> {
  rmSync(path, { force: true });
  const server = createServer((sock) => {
    let buf = "";
    sock.on("data", (d) => {
      buf += d.toString();
      const nl = buf.indexOf("\n");
      if (nl < 0) return;
      const line = buf.slice(0, nl);
      buf = "";
      void (async () => {
        let reply: ControlReply;
        try {
          reply = await handle(JSON.parse(line) as ControlRequest);
        } catch (e) {
          reply = { ok: false, error: (e as Error).message };
        }
        sock.end(`${JSON.stringify(reply)}\n`);
      })();
    });
    sock.on("error", () => {});
  });
  return new Promise((resolve, reject) => {
    server.once("error", reject);
    server.listen(path, () => resolve(server));
  });
}

/** Send one control request to a running `up`. */
export function control(path: string, req: ControlRequest, timeoutMs = 60_000): Promise<ControlReply> {
  return new Promise((resolve, reject) => {
    const sock = connect(path);
    let buf = "";
    const timer = setTimeout(() => {
      sock.destroy();
      reject(new Error(`no answer from \`up\` on ${path} in ${timeoutMs} ms`));
    }, timeoutMs);
    sock.on("connect", () => sock.write(`${JSON.stringify(req)}\n`));
    sock.on("data", (d) => (buf += d.toString()));
    sock.on("end", () => {
      clearTimeout(timer);
      try {
        resolve(JSON.parse(buf) as ControlReply);
      } catch {
        reject(new Error(`bad answer from \`up\`: ${buf}`));
      }
    });
    sock.on("error", (e) => {
      clearTimeout(timer);
      reject(new Error(`cannot reach \`up\` on ${path}: ${e.message} (is the topology up? run \`npm run cli -- up\`)`));
    });
  });
}
