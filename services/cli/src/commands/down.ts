// `down`: stop the topology a running `up` serves — SIGTERM to `up` (what
// Ctrl-C does: it stops every process in reverse dependency order), then
// wait for it to exit. A stale state file (its `up` died, say by kill -9)
// is cleaned up, with any of its processes still alive.
import { readFileSync } from "node:fs";
import type { Command } from "commander";
import { progress } from "../progress.js";
import { DEFAULT_STATE, pidAlive, readState, removeState, type UpState } from "../state.js";

/** Only signal a pid that is still the process the state file recorded (pids are reused). */
function sameProcess(pid: number, kind: string): boolean {
  try {
    const cmd = readFileSync(`/proc/${pid}/cmdline`, "utf8");
    return kind === "nats-server" ? cmd.includes("nats-server") : cmd.includes(`${kind}/src/main.ts`);
  } catch {
    return pidAlive(pid);
  }
}

export function downCommand(program: Command): void {
  program
    .command("down")
    .description("stop the topology started by `up` (SIGTERM to `up`, which stops every process), and wait until it is gone")
    .option("--state <file>", "state file written by `up`", DEFAULT_STATE)
    .option("--timeout <ms>", "how long to wait for `up` to finish", "30000")
    .action(async (o: { state: string; timeout: string }) => {
      const st = readState(o.state);
      if (!st) {
        console.log(`nothing is up (no ${o.state})`);
        return;
      }
      if (!pidAlive(st.pid)) {
        cleanStale(st, o.state);
        return;
      }
      const bar = progress(`stopping ${st.topology}`, 1);
      process.kill(st.pid, "SIGTERM");
      const deadline = Date.now() + Number(o.timeout);
      while (pidAlive(st.pid) && Date.now() < deadline) await new Promise((r) => setTimeout(r, 100));
      bar.tick();
      bar.stop();
      if (pidAlive(st.pid)) throw new Error(`\`up\` (pid ${st.pid}) is still running after ${o.timeout} ms`);
      console.log(`topology "${st.topology}" stopped (up pid ${st.pid})`);
    });
}

function cleanStale(st: UpState, file: string): void {
  const left = st.processes.filter((p) => p.pid > 0 && pidAlive(p.pid) && sameProcess(p.pid, p.kind));
  for (const p of left) {
    process.kill(p.pid, "SIGCONT");
    process.kill(p.pid, "SIGTERM");
  }
  removeState(file);
  console.log(
    `\`up\` (pid ${st.pid}) was not running; removed its state${left.length ? ` and sent SIGTERM to what was left: ${left.map((p) => `${p.name} (${p.pid})`).join(", ")}` : ""}`,
  );
}
