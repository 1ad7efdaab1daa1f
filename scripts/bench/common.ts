// What every benchmark section shares: the result row (a figure, the
// baseline it was measured beside in the same run, their ratio and the
// target), latency statistics, bounded measuring loops, the progress
// indicator and table printing.
import cliProgress from "cli-progress";

export type SectionId = "hardware" | "uapi" | "dma" | "invalidation" | "scale";

export const SECTION_TITLES: Record<SectionId, string> = {
  hardware: "1. hardware (packages/hw bundled by esbuild, plain node; ns/op of the fastest of 20 batches, median of 5 runs)",
  uapi: "2. uAPI latency (real host-iommufd over gRPC) vs raw grpc-js echo",
  dma: "3. DMA through the real host (device-sim over NATS) vs raw NATS",
  invalidation: "4. invalidation round trip and vEVENTQ delivery",
  scale: "5. scale",
};

/** A target: on the ratio (figure ÷ baseline) or on the figure itself. */
export interface Target {
  on: "ratio" | "value";
  op: "<=" | ">=";
  limit: number;
}

export interface Figure {
  value: number;
  unit: string;
  /** Latency rows: quantiles in `unit`. */
  p50?: number;
  p99?: number;
}

export interface BenchRow {
  section: SectionId;
  name: string;
  figure: Figure;
  baseline?: { name: string } & Figure;
  /** figure ÷ baseline, as defined by the section (throughput: higher is better; latency: lower is better). */
  ratio?: number;
  target?: Target;
  /** undefined when there is no target. */
  met?: boolean;
  note?: string;
}

export function judge(row: Omit<BenchRow, "met">): BenchRow {
  if (!row.target) return row;
  const x = row.target.on === "ratio" ? row.ratio : row.figure.value;
  if (x === undefined || !Number.isFinite(x)) return { ...row, met: false };
  return { ...row, met: row.target.op === "<=" ? x <= row.target.limit : x >= row.target.limit };
}

// ---- statistics ---------------------------------------------------------------

export function quantile(sorted: number[], q: number): number {
  if (sorted.length === 0) return Number.NaN;
  const i = Math.min(sorted.length - 1, Math.max(0, Math.ceil(q * sorted.length) - 1));
  return sorted[i] as number;
}

export class Samples {
  readonly xs: number[] = [];
  add(x: number): void {
    this.xs.push(x);
  }
  get n(): number {
    return this.xs.length;
  }
  q(p: number): number {
    return quantile([...this.xs].sort((a, b) => a - b), p);
  }
  get p50(): number {
    return this.q(0.5);
  }
  get p99(): number {
    return this.q(0.99);
  }
}

export function median(xs: number[]): number {
  return quantile([...xs].sort((a, b) => a - b), 0.5);
}

/** Microseconds since `t0` (process.hrtime.bigint). */
export function usSince(t0: bigint): number {
  return Number(process.hrtime.bigint() - t0) / 1000;
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

/**
 * Run `op` `width` at a time for `ms` milliseconds (after `warmupMs` unmeasured);
 * returns ops completed, seconds, per-op latency samples (µs) and failures.
 */
export async function timed(
  ms: number,
  width: number,
  op: (i: number) => Promise<boolean>,
  warmupMs = 0,
): Promise<{ ops: number; seconds: number; lat: Samples; failures: number }> {
  if (warmupMs > 0) await timed(warmupMs, width, op);
  const lat = new Samples();
  let next = 0;
  let ops = 0;
  let failures = 0;
  const t0 = process.hrtime.bigint();
  const end = Date.now() + ms;
  const worker = async () => {
    while (Date.now() < end) {
      const t = process.hrtime.bigint();
      const ok = await op(next++);
      lat.add(usSince(t));
      ops++;
      if (!ok) failures++;
    }
  };
  await Promise.all(Array.from({ length: width }, worker));
  return { ops, seconds: Number(process.hrtime.bigint() - t0) / 1e9, lat, failures };
}

// ---- progress -------------------------------------------------------------

/** A progress bar on stderr (a plain line per step when stderr is not a terminal). */
export class Progress {
  private readonly bar: cliProgress.SingleBar | undefined;
  private done = 0;

  constructor(
    private readonly label: string,
    private readonly total: number,
  ) {
    if (process.stderr.isTTY) {
      this.bar = new cliProgress.SingleBar(
        { stream: process.stderr, format: `${label.padEnd(14)} [{bar}] {value}/{total} {task}`, hideCursor: true, clearOnComplete: false },
        cliProgress.Presets.shades_classic,
      );
      this.bar.start(total, 0, { task: "" });
    }
  }

  step(task: string): void {
    this.done++;
    if (this.bar) this.bar.update(this.done, { task });
    else process.stderr.write(`  [${this.label} ${this.done}/${this.total}] ${task}\n`);
  }

  stop(): void {
    this.bar?.stop();
  }
}

// ---- formatting -------------------------------------------------------------

export function fmtNum(x: number | undefined, digits = 3): string {
  if (x === undefined || Number.isNaN(x)) return "–";
  if (!Number.isFinite(x)) return "∞";
  const a = Math.abs(x);
  if (a >= 1e6) return `${(x / 1e6).toFixed(2)}M`;
  if (a >= 1e4) return `${(x / 1e3).toFixed(1)}k`;
  if (a >= 100) return x.toFixed(0);
  return x.toPrecision(digits);
}

export function fmtFigure(f: Figure): string {
  if (f.p50 !== undefined) return `p50 ${fmtNum(f.p50)} / p99 ${fmtNum(f.p99)} ${f.unit}`;
  return `${fmtNum(f.value)} ${f.unit}`;
}

export function fmtTarget(t: Target | undefined, f?: Figure): string {
  if (!t) return "–";
  const op = t.op === "<=" ? "≤" : "≥";
  if (t.on === "ratio") return `ratio ${op} ${t.limit}×`;
  // Latency rows carry their p99 as the figure's value.
  return `${f?.p99 !== undefined ? "p99 " : ""}${op} ${t.limit} ${f?.unit ?? ""}`.trimEnd();
}

export function fmtMet(r: BenchRow): string {
  return r.met === undefined ? "–" : r.met ? "met" : "MISSED";
}

/** Rows as a fixed-width text table. */
export function textTable(header: string[], rows: string[][]): string {
  const w = header.map((h, i) => Math.max(h.length, ...rows.map((r) => (r[i] ?? "").length)));
  const line = (cells: string[]) => cells.map((c, i) => c.padEnd(w[i] as number)).join("  ").trimEnd();
  return [line(header), w.map((n) => "-".repeat(n)).join("  "), ...rows.map(line)].join("\n");
}

export function rowCells(r: BenchRow): string[] {
  return [
    r.name,
    fmtFigure(r.figure),
    r.baseline ? `${r.baseline.name}: ${fmtFigure(r.baseline)}` : "–",
    r.ratio === undefined ? "–" : `${fmtNum(r.ratio)}×`,
    fmtTarget(r.target, r.figure),
    fmtMet(r),
  ];
}

export const TABLE_HEADER = ["benchmark", "measured", "baseline (same run)", "ratio", "target", ""];

/** Markdown table for the README. */
export function markdownTable(rows: BenchRow[]): string {
  const esc = (s: string) => s.replace(/\|/g, "\\|").replace(/</g, "&lt;").replace(/>/g, "&gt;");
  const out = ["| section | benchmark | measured | baseline (same run) | ratio | target | |", "|---|---|---|---|---|---|---|"];
  for (const r of rows) out.push(`| ${r.section} | ${rowCells(r).map(esc).join(" | ")} |`);
  return out.join("\n");
}
