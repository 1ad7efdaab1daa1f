// Microbenchmarks of the common translation path, pure: the caller passes a
// clock (performance.now from a bench script outside packages/hw). Measures
// ns per IOTLB hit, per cold single-stage walk and per cold nested 4×4 walk
// (Arm 4K and VT-d 4-level), with descriptor reads per walk from
// SparseMemory.stats. Not called from tests.

import { Iotlb } from "./cache/iotlb.js";
import { armStage1Config, armStage2Config } from "./format/arm.js";
import { mapRange, SimplePageAllocator } from "./format/map.js";
import { vtdFirstStageConfig, vtdSecondStageConfig } from "./format/vtd.js";
import { SparseMemory } from "./memory.js";
import {
  PERM_RW,
  READ,
  type StageConfig,
  type StageConfigResult,
  type TranslationConfig,
  type TranslationResult,
} from "./translation.js";
import { stage2View } from "./walk/views.js";
import { translate } from "./walk/walk.js";

export interface HwBenchRow {
  readonly name: string;
  /** ns per operation in the fastest batch: the cost with the least interference from the rest of the machine. */
  readonly nsPerOp: number;
  /** ns per operation in the median batch. */
  readonly nsMedian: number;
  /** Descriptor reads per operation (walks); 0 for cache hits. */
  readonly readsPerWalk: number;
  readonly ops: number;
}

export interface HwBenchOptions {
  /** IOTLB hits measured (default 1,000,000). */
  readonly hits?: number;
  /** Walks measured per walk benchmark (default 50,000). */
  readonly walks?: number;
  /** Distinct pages walked round-robin (default 4096). */
  readonly pages?: number;
  /** Warm-up fraction run before timing (default 0.2). */
  readonly warmup?: number;
  /** Each measurement is split into this many timed batches (default 20). */
  readonly batches?: number;
}

function must(r: StageConfigResult): StageConfig {
  if (!r.ok) throw new Error(`bench setup: ${r.error}`);
  return r.stage;
}

const DATA_IPA = 0x4000_0000n;
const VA_BASE = 0x7f12_3400_0000n;

/** A translation setup for benchmarks: memory with the tables, the config, and mapped input addresses. */
export interface BenchScenario {
  mem: SparseMemory;
  cfg: TranslationConfig;
  addrs: bigint[];
}
type Scenario = BenchScenario;

/** Host memory + stage 2 (guest RAM 64 MB at IPA 0x4000_0000) + guest stage 1 mapping `pages` pages. */
export function nestedBenchScenario(vendor: "arm" | "vtd", pages: number): BenchScenario {
  const mem = new SparseMemory(48);
  const halloc = new SimplePageAllocator(mem, 0x1000_0000n, 0x1000_0000n);
  const s2root = halloc.alloc(4096) as bigint;
  const s2 =
    vendor === "arm"
      ? must(armStage2Config({ granuleShift: 12, s2t0sz: 16, sl0: 2, outputBits: 48, s2ttb: s2root }))
      : must(vtdSecondStageConfig({ aw: 2, ssptptr: s2root, haw: 48 }));
  const ram = 0x400_0000n;
  const r = mapRange(mem, s2, DATA_IPA, 0x1_0000_0000n, ram, { perms: PERM_RW }, { alloc: halloc, blocks: false });
  if (!r.ok) throw new Error(`bench setup: ${r.error}`);
  const gview = stage2View(mem, s2);
  const galloc = new SimplePageAllocator(gview, DATA_IPA, 0x100_0000n);
  const ttb = galloc.alloc(4096) as bigint;
  const s1 =
    vendor === "arm"
      ? must(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb }))
      : must(vtdFirstStageConfig({ levels: 4, fsptptr: ttb, haw: 48, sre: true }));
  const addrs: bigint[] = [];
  for (let i = 0; i < pages; i++) {
    const va = VA_BASE + BigInt(i) * 0x1000n;
    const ipa = DATA_IPA + 0x100_0000n + BigInt(i % 8192) * 0x1000n;
    const m = mapRange(gview, s1, va, ipa, 0x1000n, { perms: PERM_RW }, { alloc: galloc });
    if (!m.ok) throw new Error(`bench setup: ${m.error}`);
    addrs.push(va + 0x80n);
  }
  return { mem, cfg: { mode: "nested", s1, s2, s1Tag: 1, s2Tag: 1 }, addrs };
}

/** Single-stage variant: the same stage 1 built directly in host memory. */
export function singleBenchScenario(vendor: "arm" | "vtd", pages: number): BenchScenario {
  const mem = new SparseMemory(48);
  const alloc = new SimplePageAllocator(mem, 0x1000_0000n, 0x1000_0000n);
  const ttb = alloc.alloc(4096) as bigint;
  const s1 =
    vendor === "arm"
      ? must(armStage1Config({ granuleShift: 12, tsz: 16, outputBits: 48, ttb }))
      : must(vtdFirstStageConfig({ levels: 4, fsptptr: ttb, haw: 48, sre: true }));
  const addrs: bigint[] = [];
  for (let i = 0; i < pages; i++) {
    const va = VA_BASE + BigInt(i) * 0x1000n;
    const m = mapRange(mem, s1, va, 0x2_0000_0000n + BigInt(i) * 0x1000n, 0x1000n, { perms: PERM_RW }, { alloc });
    if (!m.ok) throw new Error(`bench setup: ${m.error}`);
    addrs.push(va + 0x80n);
  }
  return { mem, cfg: { mode: "s1", s1, s1Tag: 1, s2Tag: -1 }, addrs };
}

/**
 * Run `body(from, count)` over `ops` operations in `batches` timed batches
 * after a warm-up of `warm` operations; ns per operation of the fastest and
 * of the median batch, and how many operations ran in all. On a shared machine interference only adds time, so
 * the fastest batch is the cost of the code; the median shows the spread.
 */
export function timeBatches(
  now: () => number,
  ops: number,
  warm: number,
  batches: number,
  body: (from: number, count: number) => void,
): { min: number; median: number; ran: number } {
  body(0, warm);
  const per = Math.max(1, Math.floor(ops / batches));
  const ns: number[] = [];
  for (let b = 0; b < batches; b++) {
    const t0 = now();
    body(b * per, per);
    ns.push(((now() - t0) * 1e6) / per);
  }
  ns.sort((x, y) => x - y);
  // ran: every operation body did, warm-up included (per-operation counters divide by it).
  return { min: ns[0] as number, median: ns[Math.floor(ns.length / 2)] as number, ran: warm + per * batches };
}

function timeWalks(name: string, s: Scenario, o: Required<HwBenchOptions>, now: () => number): HwBenchRow {
  const n = s.addrs.length;
  let sink: TranslationResult | undefined;
  const walk = (from: number, count: number) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) sink = translate(s.mem, s.cfg, s.addrs[j] as bigint, READ);
  };
  const reads0 = s.mem.stats.reads;
  const t = timeBatches(now, o.walks, Math.floor(o.walks * o.warmup), o.batches, walk);
  if (sink !== undefined && !sink.ok) throw new Error(`bench walk faulted: ${sink.kind}`);
  return { name, nsPerOp: t.min, nsMedian: t.median, readsPerWalk: (s.mem.stats.reads - reads0) / t.ran, ops: o.walks };
}

/**
 * Run the microbenchmarks. `now` returns milliseconds (performance.now).
 * Returns one row per benchmark.
 */
export function runHwBench(now: () => number, opts: HwBenchOptions = {}): HwBenchRow[] {
  const o: Required<HwBenchOptions> = {
    hits: opts.hits ?? 1_000_000,
    walks: opts.walks ?? 50_000,
    pages: opts.pages ?? 4096,
    warmup: opts.warmup ?? 0.2,
    batches: opts.batches ?? 20,
  };
  const rows: HwBenchRow[] = [];
  const hitRow = (name: string, body: (from: number, count: number) => void) => {
    const t = timeBatches(now, o.hits, Math.floor(o.hits * o.warmup), o.batches, body);
    rows.push({ name, nsPerOp: t.min, nsMedian: t.median, readsPerWalk: 0, ops: o.hits });
  };

  // IOTLB hits: fill from real nested walks, then look up round-robin
  // (a wrapping index, not `i % n`: an integer division would cost as much as a hit).
  const arm = nestedBenchScenario("arm", o.pages);
  const iotlb = new Iotlb({ capacity: Math.max(4096, o.pages) });
  for (const a of arm.addrs) {
    const r = translate(arm.mem, arm.cfg, a, READ);
    if (r.ok) iotlb.insert(arm.cfg, r);
  }
  const n = arm.addrs.length;
  const nums = arm.addrs.map((a) => Number(a));
  let found = 0;
  hitRow("iotlb lookup hit (number address)", (from, count) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) if (iotlb.lookupNumber(1, 1, nums[j] as number)) found++;
  });
  hitRow("iotlb lookup hit (bigint address)", (from, count) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) if (iotlb.lookup(1, 1, arm.addrs[j] as bigint)) found++;
  });
  hitRow("iotlb translate hit (bigint in/out, permission check)", (from, count) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) if (iotlb.translate(1, 1, arm.addrs[j] as bigint, READ)?.ok) found++;
  });
  if (found === 0) throw new Error("bench: no IOTLB hits");

  // Reference point for the machine's speed: a plain Map<number> hit.
  const ref = new Map<number, number>();
  for (let i = 0; i < n; i++) ref.set(nums[i] as number, i);
  let acc = 0;
  hitRow("reference: Map<number>.get hit", (from, count) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) acc += ref.get(nums[j] as number) as number;
  });
  if (acc < 0) throw new Error("bench: reference map");

  rows.push(timeWalks("walk arm s1 4K 4-level (cold)", singleBenchScenario("arm", o.pages), o, now));
  rows.push(timeWalks("walk vtd fs 4-level (cold)", singleBenchScenario("vtd", o.pages), o, now));
  rows.push(timeWalks("nested arm 4K 4x4 (cold)", arm, o, now));
  rows.push(timeWalks("nested vtd 4-level 4x4 (cold)", nestedBenchScenario("vtd", o.pages), o, now));
  return rows;
}
