// Hardware section runner. Not run directly: scripts/bench/hw.ts bundles this
// file (with packages/hw) through esbuild and runs the bundle under plain
// `node`, so the numbers are those of compiled JavaScript, not of tsx's
// on-the-fly transform. Prints one JSON object (HwRunnerOutput) on stdout.
//
// Measures, in one process:
//   - runHwBench (packages/hw/src/bench.ts): IOTLB hits, cold 1-stage and
//     nested 4×4 walks for Arm (SMMUv3) and VT-d, with descriptor reads;
//   - baselines for those walks in the same run: a naive walker that reads
//     the SAME tables in the SAME SparseMemory (read64, valid bit, next-table
//     address — no format descriptors, permissions, A/D or fault values);
//   - an IOTLB working set larger than its capacity: hit rate against the
//     ideal of random replacement (capacity / working set), and whether
//     every insert at capacity evicts exactly one entry (never a flush-all).
import { Iotlb, READ, type SparseMemory, type StageConfig, type TranslationConfig, nestedBenchScenario, runHwBench, singleBenchScenario, timeBatches, translate } from "@iommufd/hw";

export interface HwRunnerOptions {
  hits: number;
  walks: number;
  pages: number;
  iotlbCapacity: number;
  iotlbAccesses: number;
}

export interface NaiveRow {
  name: string;
  nsPerOp: number;
  readsPerWalk: number;
}

export interface IotlbWorkingSetRow {
  name: string;
  capacity: number;
  workingSet: number;
  accesses: number;
  hitRate: number;
  /** Ideal hit rate of random replacement with uniform accesses: capacity / working set. */
  idealHitRate: number;
  inserts: number;
  evictions: number;
  /** Largest number of entries removed by a single insert. */
  maxEvictionsPerInsert: number;
  /** Smallest size seen after the cache first filled (a flush-all would show 0 or 1). */
  minSizeAfterFull: number;
  nsPerAccess: number;
}

export interface HwRunnerOutput {
  rows: ReturnType<typeof runHwBench>;
  naive: NaiveRow[];
  iotlb: IotlbWorkingSetRow[];
}


interface Scenario {
  mem: SparseMemory;
  cfg: TranslationConfig;
  addrs: bigint[];
  s1root: bigint;
  s2root: bigint;
  s1Tag: number;
  s2Tag: number;
}

/** runHwBench's own scenarios, with the roots and tags the naive walker and the IOTLB working set need. */
function scenario(kind: "single" | "nested", vendor: "arm" | "vtd", pages: number): Scenario {
  const s = kind === "nested" ? nestedBenchScenario(vendor, pages) : singleBenchScenario(vendor, pages);
  const cfg = s.cfg as { s1?: StageConfig; s2?: StageConfig; s1Tag: number; s2Tag: number };
  return { ...s, s1root: cfg.s1?.root ?? 0n, s2root: cfg.s2?.root ?? 0n, s1Tag: cfg.s1Tag, s2Tag: cfg.s2Tag };
}

/** Milliseconds, wall clock: every figure is the fastest of several batches, which interference cannot make faster. */
const now = () => performance.now();

// ---- the naive baseline ---------------------------------------------------

const SPLIT = new Uint32Array(2);
const SHIFTS = [39, 30, 21, 12];
const TWO32 = 2 ** 32;

/**
 * Four levels of 9 bits over 4 KiB pages, valid = bit 0 (true of these Arm
 * and VT-d tables alike), next address = bits [51:12]; indices from the
 * input's 32-bit halves, reads through the same read64Split fast path the
 * walker uses. No format descriptors, permissions, A/D or fault values: the
 * cost of the bare descriptor reads, which the walker is compared with.
 */
function naiveWalk(mem: SparseMemory, root: number, input: number): number {
  const lo32 = input >>> 0;
  const hi32 = Math.floor(input / TWO32);
  let table = root;
  for (const sh of SHIFTS) {
    const idx = sh >= 32 ? (hi32 >>> (sh - 32)) & 511 : ((lo32 >>> sh) | (hi32 << (32 - sh))) & 511;
    if (mem.read64Split?.(table + idx * 8, SPLIT) !== undefined) return -1;
    const lo = SPLIT[0] as number;
    if ((lo & 1) === 0) return -1;
    table = ((SPLIT[1] as number) & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
  }
  return table + (lo32 & 4095);
}

/** Stage 1 walked with every table address (and the output) translated by a naive stage-2 walk: 24 reads. */
function naiveNested(mem: SparseMemory, s1root: number, s2root: number, input: number): number {
  const lo32 = input >>> 0;
  const hi32 = Math.floor(input / TWO32);
  let table = s1root;
  for (const sh of SHIFTS) {
    const idx = sh >= 32 ? (hi32 >>> (sh - 32)) & 511 : ((lo32 >>> sh) | (hi32 << (32 - sh))) & 511;
    const pa = naiveWalk(mem, s2root, table + idx * 8);
    if (pa < 0 || mem.read64Split?.(pa, SPLIT) !== undefined) return -1;
    const lo = SPLIT[0] as number;
    if ((lo & 1) === 0) return -1;
    table = ((SPLIT[1] as number) & 0xfffff) * TWO32 + ((lo & 0xfffff000) >>> 0);
  }
  return naiveWalk(mem, s2root, table + (lo32 & 4095));
}

function timeNaive(name: string, s: Scenario, walks: number, nested: boolean): NaiveRow {
  const n = s.addrs.length;
  const s1root = Number(s.s1root);
  const s2root = Number(s.s2root);
  const nums = s.addrs.map(Number);
  let sink = 0;
  const one = (a: number) => (nested ? naiveNested(s.mem, s1root, s2root, a) : naiveWalk(s.mem, s1root, a));
  const reads0 = s.mem.stats.reads;
  const t = timeBatches(now, walks, Math.floor(walks / 5), 20, (from, count) => {
    for (let i = 0, j = from % n; i < count; i++, j = j + 1 === n ? 0 : j + 1) sink = one(nums[j] as number);
  });
  if (sink < 0) throw new Error(`naive ${name}: walk failed`);
  // Check the baseline does the same job: its output equals the real walker's.
  const ref = translate(s.mem, s.cfg, s.addrs[0] as bigint, READ);
  if (!ref.ok || ref.output !== BigInt(one(nums[0] as number))) throw new Error(`naive ${name}: output differs from the walker's`);
  return { name, nsPerOp: t.min, readsPerWalk: (s.mem.stats.reads - reads0) / t.ran };
}

// ---- IOTLB working set ------------------------------------------------------

/** SplitMix32-ish PRNG, deterministic. */
function rng(seed: number): () => number {
  let s = seed >>> 0;
  return () => {
    s = (s + 0x9e3779b9) >>> 0;
    let z = s;
    z = Math.imul(z ^ (z >>> 16), 0x85ebca6b) >>> 0;
    z = Math.imul(z ^ (z >>> 13), 0xc2b2ae35) >>> 0;
    return (z ^ (z >>> 16)) >>> 0;
  };
}

function workingSet(name: string, s: Scenario, capacity: number, ws: number, accesses: number, pattern: "random" | "cyclic"): IotlbWorkingSetRow {
  const tlb = new Iotlb({ capacity });
  const next = rng(12345);
  const tag1 = s.s1Tag;
  const tag2 = s.s2Tag;
  let maxEv = 0;
  let minSize = Number.POSITIVE_INFINITY;
  let full = false;
  let hits = 0;
  const t0 = now();
  for (let i = 0; i < accesses; i++) {
    const a = s.addrs[pattern === "random" ? (next() as number) % ws : i % ws] as bigint;
    if (tlb.lookup(tag1, tag2, a)) {
      hits++;
      continue;
    }
    const r = translate(s.mem, s.cfg, a, READ);
    if (!r.ok) throw new Error(`iotlb working set: walk faulted (${r.kind})`);
    const ev0 = tlb.stats.evictions;
    tlb.insert(s.cfg, r);
    const ev = tlb.stats.evictions - ev0;
    if (ev > maxEv) maxEv = ev;
    if (tlb.size >= capacity) full = true;
    if (full && tlb.size < minSize) minSize = tlb.size;
  }
  const t1 = now();
  return {
    name,
    capacity,
    workingSet: ws,
    accesses,
    hitRate: hits / accesses,
    idealHitRate: pattern === "random" ? Math.min(1, capacity / ws) : 0,
    inserts: tlb.stats.inserts,
    evictions: tlb.stats.evictions,
    maxEvictionsPerInsert: maxEv,
    minSizeAfterFull: Number.isFinite(minSize) ? minSize : 0,
    nsPerAccess: ((t1 - t0) * 1e6) / accesses,
  };
}

function main(): void {
  const opts = JSON.parse(process.argv[2] ?? "{}") as Partial<HwRunnerOptions>;
  const hits = opts.hits ?? 1_000_000;
  const walks = opts.walks ?? 50_000;
  const pages = opts.pages ?? 4096;
  const rows = runHwBench(now, { hits, walks, pages });
  const naive = [
    timeNaive("naive walk arm s1 4K 4-level", scenario("single", "arm", pages), walks, false),
    timeNaive("naive walk vtd fs 4-level", scenario("single", "vtd", pages), walks, false),
    timeNaive("naive nested arm 4K 4x4", scenario("nested", "arm", pages), walks, true),
    timeNaive("naive nested vtd 4-level 4x4", scenario("nested", "vtd", pages), walks, true),
  ];
  const cap = opts.iotlbCapacity ?? 1024;
  const acc = opts.iotlbAccesses ?? 200_000;
  const ws = scenario("nested", "arm", cap * 4);
  const iotlb = [
    workingSet(`random over 2x capacity`, ws, cap, cap * 2, acc, "random"),
    workingSet(`random over 4x capacity`, ws, cap, cap * 4, acc, "random"),
    workingSet(`cyclic sweep over 2x capacity`, ws, cap, cap * 2, acc, "cyclic"),
  ];
  const out: HwRunnerOutput = { rows, naive, iotlb };
  process.stdout.write(`${JSON.stringify(out)}\n`);
}

main();
