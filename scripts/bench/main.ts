// The benchmark suite (npm run bench): five sections, each figure measured
// beside its baseline in the same run, ratios against the targets. Prints a
// table per section, writes bench-results/bench.json, bench.svg (chart) and
// bench.md (the table as markdown). Everything runs on 127.0.0.1 with a
// nats-server and service processes of its own, stopped on exit.
import { mkdirSync, writeFileSync } from "node:fs";
import { cpus, loadavg, totalmem } from "node:os";
import { join } from "node:path";
import { REPO_ROOT } from "@iommufd/testkit";
import { type BenchRow, markdownTable, Progress, rowCells, SECTION_TITLES, type SectionId, TABLE_HEADER, textTable } from "./common.js";
import { dmaSection } from "./dma.js";
import { hardwareSection } from "./hw.js";
import { invalidationSection } from "./inval.js";
import { manyDevices, millionPages } from "./scale.js";
import { chartSvg } from "./svg.js";
import { BenchSystem } from "./system.js";
import { uapiSection } from "./uapi.js";

const ALL: SectionId[] = ["hardware", "uapi", "dma", "invalidation", "scale"];
const WATCHDOG_MS = 15 * 60_000;

interface Args {
  quick: boolean;
  only: Set<SectionId>;
  out: string;
}

function parseArgs(argv: string[]): Args {
  const a: Args = { quick: false, only: new Set(ALL), out: join(REPO_ROOT, "bench-results") };
  for (let i = 0; i < argv.length; i++) {
    const v = argv[i];
    if (v === "--quick") a.quick = true;
    else if (v === "--only") {
      const list = (argv[++i] ?? "").split(",").filter(Boolean) as SectionId[];
      for (const s of list) if (!ALL.includes(s)) throw new Error(`--only: unknown section ${s} (${ALL.join(", ")})`);
      a.only = new Set(list);
    } else if (v === "--out") a.out = argv[++i] ?? a.out;
    else if (v === "--help" || v === "-h") {
      process.stdout.write(
        "usage: npm run bench [-- --quick] [--only hardware,uapi,dma,invalidation,scale] [--out dir]\n" +
          "  --quick  short runs (a smoke test of the suite; numbers are noisier)\n",
      );
      process.exit(0);
    } else throw new Error(`unknown argument ${v}`);
  }
  return a;
}

function printSection(id: SectionId, rows: BenchRow[]): void {
  process.stdout.write(`\n== ${SECTION_TITLES[id]} ==\n`);
  process.stdout.write(`${textTable(TABLE_HEADER, rows.map(rowCells))}\n`);
  const notes = rows.filter((r) => r.note);
  if (notes.length > 0) process.stdout.write(`${notes.map((r) => `  · ${r.name}: ${r.note}`).join("\n")}\n`);
}

export async function main(argv: string[]): Promise<number> {
  const args = parseArgs(argv);
  const q = args.quick;
  const t0 = Date.now();
  const loads: number[] = [];
  const sampler = setInterval(() => loads.push(loadavg()[0] as number), 2000);
  sampler.unref();
  loads.push(loadavg()[0] as number);
  const machine = { nproc: cpus().length, cpu: cpus()[0]?.model ?? "unknown", memGiB: Math.round(totalmem() / 2 ** 30), node: process.version, loadAtStart: loadavg() };
  process.stdout.write(`iommufd-nested-emu benchmarks — ${machine.nproc} × ${machine.cpu}, ${machine.memGiB} GiB, Node ${machine.node}, load ${machine.loadAtStart.map((l) => l.toFixed(2)).join(" ")}${q ? " (--quick)" : ""}\n`);
  process.stdout.write("Sections 2–5 use real processes (nats-server, host-iommufd and device-sim under tsx, as deployed); section 1 runs packages/hw bundled by esbuild under plain node.\n");

  const rows: BenchRow[] = [];
  const sections: Partial<Record<SectionId, BenchRow[]>> = {};
  const add = (id: SectionId, rs: BenchRow[]) => {
    sections[id] = [...(sections[id] ?? []), ...rs];
    rows.push(...rs);
  };
  let hwRaw: unknown;
  let iotlbRows: BenchRow[] = [];

  let sys: BenchSystem | undefined;
  const abort = (why: string, code: number) => {
    process.stderr.write(`\n${why}: stopping the bench processes…\n`);
    void (sys?.stop() ?? Promise.resolve()).finally(() => process.exit(code));
  };
  const onSignal = () => abort("interrupted", 130);
  process.once("SIGINT", onSignal);
  process.once("SIGTERM", onSignal);
  // Every loop is bounded by counts and time limits; this is the backstop if a process stops answering.
  const watchdog = setTimeout(() => abort(`the run exceeded ${WATCHDOG_MS / 60_000} minutes`, 2), WATCHDOG_MS);
  watchdog.unref();

  if (args.only.has("hardware") || args.only.has("scale")) {
    const repeats = q ? 1 : 5;
    const p = new Progress("hardware", repeats);
    const hw = await hardwareSection(p, repeats, {
      hits: q ? 100_000 : 300_000,
      walks: q ? 5_000 : 100_000,
      pages: 4096,
      iotlbCapacity: 1024,
      iotlbAccesses: q ? 20_000 : 100_000,
    }).finally(() => p.stop());
    hwRaw = hw.raw;
    iotlbRows = hw.iotlb;
    if (args.only.has("hardware")) {
      add("hardware", hw.hardware);
      printSection("hardware", hw.hardware);
    }
  }

  const needSystem = ["uapi", "dma", "invalidation", "scale"].some((s) => args.only.has(s as SectionId));
  try {
    if (needSystem) {
      process.stderr.write("starting nats-server, host-iommufd, device-sim (67 endpoints) and the baseline peer…\n");
      sys = await BenchSystem.start(join(REPO_ROOT, ".tmp", "bench-logs"));
      process.stderr.write(`  up in ${((Date.now() - t0) / 1000).toFixed(0)} s (logs in .tmp/bench-logs)\n`);
    }
    /** Run one system section; a failure becomes a row, and the processes are checked before the next. */
    const section = async (id: SectionId, steps: number, run: (s: BenchSystem, p: Progress) => Promise<BenchRow[]>) => {
      if (!sys || !args.only.has(id)) return;
      const restarted = await sys.ensureHealthy();
      if (restarted.length > 0) process.stderr.write(`  restarted ${restarted.join(", ")} (not answering after the previous section)\n`);
      const p = new Progress(id, steps);
      let rs: BenchRow[];
      try {
        rs = await run(sys, p);
      } catch (e) {
        const msg = e instanceof Error ? e.message : String(e);
        process.stderr.write(`\nsection ${id} failed: ${msg}\n`);
        rs = [{ section: id, name: "section did not complete", figure: { value: Number.NaN, unit: "" }, met: false, note: msg.split("\n")[0] }];
      } finally {
        p.stop();
      }
      add(id, rs);
      printSection(id, sections[id] ?? rs);
    };
    await section("uapi", 3, (s, p) => uapiSection(s, p, { iterations: q ? 100 : 1000, timeLimitMs: q ? 10_000 : 45_000 }));
    const sizes = [64, 4096, 65536];
    await section("dma", 2 + sizes.length, (s, p) => dmaSection(s, p, { sizes, durationMs: q ? 400 : 3600, warmupMs: q ? 150 : 400, globalWarmupMs: q ? 1000 : 4000, rounds: q ? 2 : 3, batch: 64, inFlight: 8 }));
    await section("invalidation", 4, (s, p) => invalidationSection(s, p, { iterations: q ? 50 : 500, timeLimitMs: q ? 10_000 : 30_000 }));
    if (args.only.has("scale")) add("scale", iotlbRows);
    await section("scale", 6, async (s, p) => [
      ...(await manyDevices(s, p, { durationMs: q ? 1000 : 3000, warmupMs: q ? 300 : 1000 })),
      ...(await millionPages(s, p, { pages: 1 << 20, singlePageMaps: q ? 65_536 : 1 << 20, timeLimitMs: q ? 20_000 : 45_000 })),
    ]);
  } finally {
    process.off("SIGINT", onSignal);
    process.off("SIGTERM", onSignal);
    await sys?.stop();
    clearInterval(sampler);
    clearTimeout(watchdog);
  }

  loads.push(loadavg()[0] as number);
  const seconds = (Date.now() - t0) / 1000;
  const load = { min: Math.min(...loads), max: Math.max(...loads), mean: loads.reduce((a, b) => a + b, 0) / loads.length, samples: loads.length };
  const missed = rows.filter((r) => r.met === false);
  const met = rows.filter((r) => r.met === true);
  process.stdout.write(`\n== summary ==\n${met.length} targets met, ${missed.length} missed${missed.length ? `: ${missed.map((r) => `${r.section}/${r.name}`).join("; ")}` : ""}\n`);
  process.stdout.write(
    `ran ${seconds.toFixed(0)} s; 1-minute load average during the run ${load.min.toFixed(2)}–${load.max.toFixed(2)} (mean ${load.mean.toFixed(2)}) on ${machine.nproc} CPUs — this includes the bench's own processes; other work on the machine adds to it.\n`,
  );

  mkdirSync(args.out, { recursive: true });
  const when = new Date().toISOString();
  writeFileSync(join(args.out, "bench.json"), `${JSON.stringify({ when, machine, load, seconds, quick: q, rows, hwRuns: hwRaw }, null, 2)}\n`);
  const subtitle = `${when.slice(0, 16).replace("T", " ")} UTC — ${machine.nproc} × ${machine.cpu}, load ${load.min.toFixed(1)}–${load.max.toFixed(1)}${q ? ", --quick" : ""}`;
  writeFileSync(join(args.out, "bench.svg"), chartSvg(rows, "iommufd-nested-emu benchmarks: ratios vs targets", subtitle));
  writeFileSync(join(args.out, "bench.md"), `${markdownTable(rows)}\n`);
  process.stdout.write(`wrote ${join(args.out, "bench.json")}, bench.svg, bench.md\n`);
  return 0;
}
