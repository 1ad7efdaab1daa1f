// `events`: follow what the running topology reports, live: vEVENTQ records
// and IOPF (FAULT queue) records of every session, page requests and page
// group responses of every device, decoded one per line, with sequence gaps
// reported as lost events; --host-log also follows the host's log.
import { createReadStream, existsSync, statSync, watch } from "node:fs";
import { join } from "node:path";
import type { Command } from "commander";
import { DEFAULT_STATE, readState } from "../state.js";

interface EventsOptions {
  nats?: string;
  state: string;
  duration?: string;
  hostLog?: boolean;
  logDir: string;
}

export function eventsCommand(program: Command): void {
  program
    .command("events")
    .description("follow vEVENTQ, FAULT (IOPF) and PRI traffic of the running topology live, reporting sequence gaps as lost events")
    .option("--nats <url>", "NATS server (default: from the running `up`)")
    .option("--state <file>", "state file of `up`", DEFAULT_STATE)
    .option("--duration <s>", "stop after this many seconds (default: until Ctrl-C)")
    .option("--host-log", "also follow the host's log file")
    .option("--log-dir <dir>", "where `up` writes process logs", join(DEFAULT_STATE, "../logs"))
    .action(async (o: EventsOptions) => {
      await events(o);
    });
}

const hex = (v: bigint | number) => `0x${v.toString(16)}`;

async function events(o: EventsOptions): Promise<void> {
  const { Bus, createLogger } = await import("@iommufd/kit");
  const { IopfRecordSchema, PageGroupResponseSchema, PageRequestSchema, VeventRecordSchema, PrgResponseCode } = await import("@iommufd/proto/bus");
  const url = o.nats ?? readState(o.state)?.natsUrl;
  if (!url) throw new Error("no NATS URL: start a topology with `up` or pass --nats");
  const bus = await Bus.connect({ url, name: "cli-events", log: createLogger("cli", "silent") });
  const out = (s: string) => process.stdout.write(`${new Date().toISOString().slice(11, 23)} ${s}\n`);
  const lastSeq = new Map<string, bigint>();
  /** Consumers detect gaps and surface them (DESIGN §6). */
  const gap = (stream: string, seq: bigint, wrap = false) => {
    const prev = lastSeq.get(stream);
    lastSeq.set(stream, seq);
    if (prev === undefined) return;
    const expect = wrap ? (prev + 1n) & 0x7fff_ffffn : prev + 1n;
    if (seq !== expect) out(`LOST ${stream}: expected seq ${expect}, got ${seq} (${seq > expect ? seq - expect : "?"} lost)`);
  };
  bus.subscribe("iommu.v1.s.*.veventq.*", VeventRecordSchema, (r, ctx) => {
    gap(ctx.subject, BigInt(r.sequence), true);
    if (r.flags & 1) {
      out(`vEVENTQ ${r.sessionId}/${r.veventqId} seq ${r.sequence}: LOST_EVENTS (the queue overflowed)`);
      return;
    }
    const w0 = r.payload[0] ?? 0n;
    out(`vEVENTQ ${r.sessionId}/${r.veventqId} seq ${r.sequence}: event 0x${(w0 & 0xffn).toString(16)} vSID ${hex(w0 >> 32n)} input ${hex(r.payload[2] ?? 0n)}`);
  });
  bus.subscribe("iommu.v1.s.*.fault.*", IopfRecordSchema, (r, ctx) => {
    if (ctx.subject.endsWith(".resp")) return;
    gap(ctx.subject, r.seq);
    out(`FAULT ${r.sessionId}/${r.faultId} seq ${r.seq}: dev ${r.devId}${r.flags & 1 ? ` pasid ${r.pasid}` : ""} addr ${hex(r.addr)} perm ${r.perm} group ${r.grpid}${r.flags & 2 ? " (last)" : ""} cookie ${r.cookie}`);
  });
  bus.subscribe("iommu.v1.dev.*.pri", PageRequestSchema, (r, ctx) => {
    gap(ctx.subject, r.seq);
    out(`PRI rid ${hex(r.rid)} seq ${r.seq}: page request${r.pasidValid ? ` pasid ${r.pasid}` : ""} addr ${hex(r.addr)} ${r.r ? "R" : ""}${r.w ? "W" : ""}${r.x ? "X" : ""} group ${r.prgIndex}${r.last ? " (last)" : ""}`);
  });
  bus.subscribe("iommu.v1.dev.*.pri-resp", PageGroupResponseSchema, (r, ctx) => {
    gap(ctx.subject, r.seq);
    out(`PRI rid ${hex(r.rid)} seq ${r.seq}: page group response group ${r.prgIndex}: ${PrgResponseCode[r.responseCode] ?? r.responseCode}`);
  });
  if (o.hostLog) followLog(join(o.logDir, "host.log"), (line) => out(`host ${line}`));
  out(`following events on ${url}${o.duration ? ` for ${o.duration} s` : " (Ctrl-C stops)"}`);
  await new Promise<void>((resolve) => {
    if (o.duration) setTimeout(resolve, Number(o.duration) * 1000);
    process.once("SIGINT", () => resolve());
  });
  await bus.close();
}

/** Print lines appended to `file` from now on. */
function followLog(file: string, line: (s: string) => void): void {
  if (!existsSync(file)) {
    line(`(no log at ${file})`);
    return;
  }
  let pos = statSync(file).size;
  let buf = "";
  watch(file, () => {
    const size = statSync(file).size;
    if (size <= pos) return;
    createReadStream(file, { start: pos, end: size - 1 }).on("data", (d) => {
      buf += d.toString();
      let nl = buf.indexOf("\n");
      while (nl >= 0) {
        line(buf.slice(0, nl));
        buf = buf.slice(nl + 1);
        nl = buf.indexOf("\n");
      }
    });
    pos = size;
  });
}
