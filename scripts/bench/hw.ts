// Section 1 (hardware) and the IOTLB working-set part of section 5: bundles
// scripts/bench/hw-runner.ts with packages/hw through esbuild into a temp
// file and runs it under plain `node` (no tsx transform in the measured
// code), `repeats` times; each figure is the median over the runs of each
// run's fastest batch, and each run measures a figure and its baseline back
// to back. Issue 3's targets: IOTLB hit ≤ 50 ns, cold nested 4×4 walk ≤ 1 µs.
import { spawn } from "node:child_process";
import { mkdtempSync, rmSync } from "node:fs";
import { tmpdir } from "node:os";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { build } from "esbuild";
import { type BenchRow, judge, median, type Progress } from "./common.js";
import type { HwRunnerOptions, HwRunnerOutput, IotlbWorkingSetRow } from "./hw-runner.js";

const HERE = dirname(fileURLToPath(import.meta.url));

/** Architectural descriptor reads for a 4-level walk and a 4×4 nested walk. */
const ARCH_READS: Record<string, number> = {
  "walk arm s1 4K 4-level (cold)": 4,
  "walk vtd fs 4-level (cold)": 4,
  "nested arm 4K 4x4 (cold)": 24,
  "nested vtd 4-level 4x4 (cold)": 24,
};
/** Issue 3's time targets (ns per operation). */
const TARGET_NS: Record<string, number> = {
  "iotlb lookup hit (number address)": 50,
  "nested arm 4K 4x4 (cold)": 1000,
  "nested vtd 4-level 4x4 (cold)": 1000,
};
const NAIVE_OF: Record<string, string> = {
  "walk arm s1 4K 4-level (cold)": "naive walk arm s1 4K 4-level",
  "walk vtd fs 4-level (cold)": "naive walk vtd fs 4-level",
  "nested arm 4K 4x4 (cold)": "naive nested arm 4K 4x4",
  "nested vtd 4-level 4x4 (cold)": "naive nested vtd 4-level 4x4",
};

export async function bundleHwRunner(): Promise<{ file: string; dir: string }> {
  const dir = mkdtempSync(join(tmpdir(), "iommufd-bench-hw-"));
  const file = join(dir, "hw-runner.mjs");
  await build({
    entryPoints: [join(HERE, "hw-runner.ts")],
    bundle: true,
    format: "esm",
    platform: "node",
    target: "node20",
    outfile: file,
    logLevel: "warning",
  });
  return { file, dir };
}

function runOnce(file: string, opts: HwRunnerOptions): Promise<HwRunnerOutput> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, [file, JSON.stringify(opts)], { stdio: ["ignore", "pipe", "inherit"] });
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("error", reject);
    child.once("exit", (code) => {
      process.off("exit", killOnExit);
      if (code !== 0) return reject(new Error(`hw runner exited with ${code}`));
      try {
        resolve(JSON.parse(out) as HwRunnerOutput);
      } catch (e) {
        reject(e);
      }
    });
  });
}

export interface HwSectionResult {
  hardware: BenchRow[];
  iotlb: BenchRow[];
  raw: HwRunnerOutput[];
}

export async function hardwareSection(progress: Progress, repeats: number, opts: HwRunnerOptions): Promise<HwSectionResult> {
  const { file, dir } = await bundleHwRunner();
  const runs: HwRunnerOutput[] = [];
  try {
    for (let i = 0; i < repeats; i++) {
      runs.push(await runOnce(file, opts));
      progress.step(`run ${i + 1}/${repeats} (bundled, plain node)`);
    }
  } finally {
    rmSync(dir, { recursive: true, force: true });
  }
  const nsOf = (r: HwRunnerOutput, name: string) => [...r.rows, ...r.naive].find((x) => x.name === name)?.nsPerOp ?? Number.NaN;
  const ns = (name: string) => median(runs.map((r) => nsOf(r, name)));
  /** Median over the runs of each run's own figure ÷ baseline (both measured in that run). */
  const ratioOf = (name: string, base: string) => median(runs.map((r) => nsOf(r, name) / nsOf(r, base)));
  const reads = (name: string) => median(runs.map((r) => r.rows.find((x) => x.name === name)?.readsPerWalk ?? Number.NaN));
  const mapNs = ns("reference: Map<number>.get hit");
  const hardware: BenchRow[] = [];
  const target = (name: string) => (TARGET_NS[name] === undefined ? undefined : { on: "value" as const, op: "<=" as const, limit: TARGET_NS[name] as number });
  for (const name of ["iotlb lookup hit (number address)", "iotlb lookup hit (bigint address)", "iotlb translate hit (bigint in/out, permission check)"]) {
    const v = ns(name);
    hardware.push(
      judge({
        section: "hardware",
        name,
        figure: { value: v, unit: "ns/op" },
        baseline: { name: "Map<number>.get hit", value: mapNs, unit: "ns/op" },
        ratio: ratioOf(name, "reference: Map<number>.get hit"),
        target: target(name),
      }),
    );
  }
  for (const [name, arch] of Object.entries(ARCH_READS)) {
    const v = ns(name);
    const naive = ns(NAIVE_OF[name] as string);
    // The same code's figure differs from process to process on this VM (memory placement), so show the spread.
    const perRun = runs.map((r) => nsOf(r, name));
    hardware.push(
      judge({
        section: "hardware",
        name,
        figure: { value: v, unit: "ns/walk" },
        baseline: { name: "naive walker, same tables", value: naive, unit: "ns/walk" },
        ratio: ratioOf(name, NAIVE_OF[name] as string),
        target: target(name),
        note: `runs (one process each): ${Math.round(Math.min(...perRun))}–${Math.round(Math.max(...perRun))} ns/walk`,
      }),
    );
    const r = reads(name);
    hardware.push(
      judge({
        section: "hardware",
        name: `${name}: memory reads per walk`,
        figure: { value: r, unit: "reads" },
        baseline: { name: "architectural", value: arch, unit: "reads" },
        ratio: r / arch,
        target: { on: "ratio", op: "<=", limit: 1 },
      }),
    );
  }
  const iotlb: BenchRow[] = [];
  const ws = (name: string): IotlbWorkingSetRow[] => runs.map((r) => r.iotlb.find((x) => x.name === name) as IotlbWorkingSetRow);
  for (const name of ["random over 2x capacity", "random over 4x capacity"]) {
    const rs = ws(name);
    const hit = median(rs.map((r) => r.hitRate));
    const ideal = rs[0]?.idealHitRate ?? Number.NaN;
    iotlb.push(
      judge({
        section: "scale",
        name: `IOTLB (capacity ${rs[0]?.capacity}) hit rate, ${name}`,
        figure: { value: hit * 100, unit: "% hits" },
        baseline: { name: "ideal (capacity ÷ working set)", value: ideal * 100, unit: "% hits" },
        ratio: hit / ideal,
        note: `${fmtInt(median(rs.map((r) => r.evictions)))} evictions in ${fmtInt(rs[0]?.accesses ?? 0)} accesses`,
      }),
    );
  }
  const all = runs.flatMap((r) => r.iotlb);
  const maxEv = Math.max(...all.map((r) => r.maxEvictionsPerInsert));
  const minSize = Math.min(...all.map((r) => r.minSizeAfterFull));
  const cap = all[0]?.capacity ?? 0;
  iotlb.push(
    judge({
      section: "scale",
      name: "IOTLB evictions per insert at capacity (max over all runs)",
      figure: { value: maxEv, unit: "entries" },
      baseline: { name: "one at a time", value: 1, unit: "entries" },
      ratio: maxEv / 1,
      target: { on: "ratio", op: "<=", limit: 1 },
      note: `smallest size after first fill: ${minSize} of ${cap} (a flush-all would drop it to ~0)`,
    }),
  );
  const cyc = ws("cyclic sweep over 2x capacity");
  iotlb.push(
    judge({
      section: "scale",
      name: "IOTLB hit rate, cyclic sweep over 2x capacity",
      figure: { value: median(cyc.map((r) => r.hitRate)) * 100, unit: "% hits" },
      note: "CLOCK (second chance), like LRU: a cyclic sweep larger than the cache never hits",
    }),
  );
  return { hardware, iotlb, raw: runs };
}

function fmtInt(n: number): string {
  return Math.round(n).toLocaleString("en-US");
}
