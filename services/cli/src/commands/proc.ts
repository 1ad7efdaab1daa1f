// `proc`: process faults on the topology a running `up` serves (DESIGN §8):
// kill -9, pause (SIGSTOP), resume (SIGCONT), restart — by process name,
// "nats" included. The request goes to `up` over its control socket; `up`
// reports each exit in its log.
import type { Command } from "commander";
import { control, DEFAULT_STATE, pidAlive, readState } from "../state.js";

const ACTIONS = {
  kill: "kill -9 the process (the launcher reports it; it is not restarted)",
  pause: "SIGSTOP: the process stays, but answers nothing",
  resume: "SIGCONT a paused process",
  restart: "stop (SIGTERM, or kill -9 with --kill) and start again on the same gRPC port, then wait until healthy",
} as const;

export function procCommand(program: Command): void {
  const proc = program.command("proc").description("process faults on the running topology: kill -9, pause, resume, restart a process by name");
  for (const [op, help] of Object.entries(ACTIONS) as [keyof typeof ACTIONS, string][]) {
    const c = proc
      .command(`${op} <name>`)
      .description(help)
      .option("--state <file>", "state file written by `up`", DEFAULT_STATE);
    if (op === "restart") c.option("--kill", "kill -9 instead of SIGTERM");
    c.action(async (name: string, o: { state: string; kill?: boolean }) => {
      const st = readState(o.state);
      if (!st || !pidAlive(st.pid)) throw new Error("no topology is up (start one with `npm run cli -- up`)");
      const reply = await control(st.socket, op === "restart" ? { op, name, kill: o.kill === true } : { op, name });
      if (!reply.ok) throw new Error(reply.error);
      const p = reply.processes.find((x) => x.name === name);
      console.log(`${name}: ${p ? `${p.state}, pid ${p.pid}${p.address ? `, gRPC ${p.address}` : ""}${p.exit ? `, exit ${p.exit.signal ?? p.exit.code} (${p.exit.reason})` : ""}` : "done"}`);
    });
  }
}
