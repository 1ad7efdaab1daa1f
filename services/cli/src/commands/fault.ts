// `fault`: message fault rules (drop, delay, duplicate, corrupt) of one
// process, over its control subject iommu.v1.ctl.<process>.faults
// (proto/bus/v1/faults.proto). The process applies them in its bus layer to
// what it sends and receives; `list` shows each rule's hits.
import type { Bus, FaultRuleInit } from "@iommufd/kit";
import type { FaultRule } from "@iommufd/proto/bus";
import { type Command, InvalidArgumentError, Option } from "commander";
import { DEFAULT_STATE, pidAlive, readState } from "../state.js";

/** CLI names of bus.v1.FaultAction and FaultDirection values (faults.proto). */
export const ACTIONS = { drop: 1, delay: 2, duplicate: 3, corrupt: 4 } as const;
export const DIRECTIONS = { both: 0, in: 1, out: 2 } as const;
const DELAY = ACTIONS.delay;

interface BusOptions {
  natsUrl?: string;
  state: string;
  topology?: string;
}

/** The NATS URL: --nats-url, else the running `up`'s, else the description's port on 127.0.0.1. */
async function natsUrlOf(o: BusOptions): Promise<string> {
  if (o.natsUrl) return o.natsUrl;
  const st = readState(o.state);
  if (st && pidAlive(st.pid)) return st.natsUrl;
  const { loadTopology } = await import("@iommufd/topology");
  const t = loadTopology(o.topology);
  return "url" in t.nats ? t.nats.url : `nats://127.0.0.1:${t.nats.port}`;
}

async function withBus<T>(o: BusOptions, fn: (bus: Bus, kit: typeof import("@iommufd/kit")) => Promise<T>): Promise<T> {
  const kit = await import("@iommufd/kit");
  const { Bus, createLogger } = kit;
  const url = await natsUrlOf(o);
  const bus = await Bus.connect({ url, name: `cli-fault-${process.pid}`, log: createLogger("cli", "silent") }).catch((e: Error) => {
    throw new Error(`cannot connect to NATS at ${url}: ${e.message}`);
  });
  try {
    return await fn(bus, kit);
  } finally {
    await bus.close();
  }
}

const int = (what: string) => (v: string) => {
  const n = Number(v);
  if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${what} must be a non-negative integer`);
  return n;
};

function busOptions(cmd: Command): Command {
  return cmd
    .option("--nats-url <url>", "NATS server (default: the running `up`'s, else the description's nats.port)")
    .option("--state <file>", "state file written by `up`", DEFAULT_STATE)
    .option("-t, --topology <file>", "description whose nats.port to use when no `up` runs");
}

function printRules(rules: FaultRule[], json?: boolean): void {
  if (json) {
    console.log(JSON.stringify(rules.map((r) => ({ ...r, $typeName: undefined, hits: String(r.hits), seed: String(r.seed) })), null, 2));
    return;
  }
  if (rules.length === 0) {
    console.log("no rules");
    return;
  }
  const rows = [
    ["id", "subject", "action", "dir", "replies", "skip", "count", "prob", "hits"],
    ...rules.map((r) => [
      r.id,
      r.subject,
      (Object.entries(ACTIONS).find(([, v]) => v === r.action)?.[0] ?? "?") + (r.action === DELAY ? ` ${r.delayMs}ms` : ""),
      Object.entries(DIRECTIONS).find(([, v]) => v === r.direction)?.[0] ?? "?",
      r.replies ? "yes" : "no",
      String(r.skip),
      r.count ? String(r.count) : "∞",
      r.probability === undefined ? "1" : String(r.probability),
      String(r.hits),
    ]),
  ];
  const w = rows[0].map((_, i) => Math.max(...rows.map((row) => row[i]?.length ?? 0)));
  for (const row of rows) console.log(row.map((c, i) => c.padEnd(w[i] as number)).join("  ").trimEnd());
}

export function faultCommand(program: Command): void {
  const fault = program
    .command("fault")
    .description("message fault rules of a process (drop / delay / duplicate / corrupt on NATS subject patterns), applied in its bus layer")
    .addHelpText("after", "\nExamples:\n  fault set host --subject 'iommu.v1.dev.*.ats' --action drop --count 3\n  fault set devsim0 --subject 'iommu.v1.dev.>' --action delay --delay-ms 50 --direction out\n  fault list host\n  fault clear host");

  busOptions(
    fault
      .command("set <process>")
      .description("add a rule (or replace the rule with the same --id); prints the rules in force")
      .requiredOption("-s, --subject <pattern>", "NATS subject pattern (* and > wildcards)")
      .addOption(new Option("-a, --action <action>", "what to do").choices(Object.keys(ACTIONS)).makeOptionMandatory())
      .option("--id <id>", "rule id (default: generated)")
      .option("--delay-ms <ms>", "delay for --action delay", int("--delay-ms"))
      .option("--probability <p>", "chance per matching message, in (0, 1]", (v) => Number(v))
      .option("--count <n>", "apply at most n times (0 = no limit)", int("--count"))
      .option("--skip <n>", "let the first n matching messages through", int("--skip"))
      .addOption(new Option("--direction <dir>", "which messages: received (in), sent (out) or both").choices(Object.keys(DIRECTIONS)).default("both"))
      .option("--replies", "also apply to the replies of matching requests")
      .option("--seed <n>", "seed of the random choices (0 = random)")
      .option("--replace", "remove every other rule first")
      .option("--json", "print JSON"),
  ).action(
    async (
      proc: string,
      o: BusOptions & { subject: string; action: keyof typeof ACTIONS; id?: string; delayMs?: number; probability?: number; count?: number; skip?: number; direction: keyof typeof DIRECTIONS; replies?: boolean; seed?: string; replace?: boolean; json?: boolean },
    ) => {
      const rule: FaultRuleInit = {
        id: o.id ?? "",
        subject: o.subject,
        action: ACTIONS[o.action],
        delayMs: o.delayMs ?? 0,
        count: o.count ?? 0,
        skip: o.skip ?? 0,
        direction: DIRECTIONS[o.direction],
        replies: o.replies === true,
        seed: BigInt(o.seed ?? 0),
        ...(o.probability !== undefined ? { probability: o.probability } : {}),
      };
      printRules(await withBus(o, (bus, kit) => kit.setFaultRules(bus, proc, [rule], o.replace === true)), o.json);
    },
  );

  busOptions(fault.command("list <process>").description("the rules in force, with how many messages each one hit").option("--json", "print JSON")).action(
    async (proc: string, o: BusOptions & { json?: boolean }) => {
      printRules(await withBus(o, (bus, kit) => kit.listFaultRules(bus, proc)), o.json);
    },
  );

  busOptions(fault.command("clear <process> [ids...]").description("remove rules by id (all when none is given)")).action(async (proc: string, ids: string[], o: BusOptions) => {
    const n = await withBus(o, (bus, kit) => kit.clearFaultRules(bus, proc, ids));
    console.log(`${proc}: ${n} rule${n === 1 ? "" : "s"} removed`);
  });
}
