// Section 5, bookkeeping bytes per mapped page. The host exposes no process
// memory figure (Admin.Metrics has sessions, objects, pinned bytes, data
// plane and IOMMU counters; prom-client's process metrics are not
// registered), so this measures in a process of its own, with the host's own
// classes: services/host-iommufd's IoPagetable (the IOAS's IOVA layer: areas,
// iopt_pages, pinning) over its UserMm / MemFile / HostMemory. The domain is
// a null IoptDomain (its map/unmap keep nothing), so what is counted is
// exactly the bookkeeping beyond the page tables: areas, Pages, the file's
// frame table and pin counts, the user mapping, the frame allocator.
//
// Run by scripts/bench.ts as `node --expose-gc --import tsx scale-mem.ts '<json>'`;
// prints one JSON object (ScaleMemOutput) on stdout.
import { FailNth } from "../../services/host-iommufd/src/core/fail-nth.js";
import { IoPagetable, type IoptDomain } from "../../services/host-iommufd/src/iopt/io-pagetable.js";
import { HostMemory } from "../../services/host-iommufd/src/mm/phys.js";
import { PAGE, UserMm } from "../../services/host-iommufd/src/mm/user-mm.js";

export interface ScaleMemCase {
  name: string;
  pages: number;
  maps: number;
  seconds: number;
  bytesPerPage: number;
  heapBytes: number;
}

export interface ScaleMemOutput {
  cases: ScaleMemCase[];
}

const gc = (globalThis as { gc?: () => void }).gc;
if (!gc) {
  process.stderr.write("scale-mem: run with node --expose-gc\n");
  process.exit(2);
}

function used(): number {
  for (let i = 0; i < 3; i++) gc?.();
  const m = process.memoryUsage();
  return m.heapUsed + m.external;
}

const nullDomain: IoptDomain = {
  pgsizeMin: PAGE,
  aperture: { start: 0n, last: (1n << 48n) - 1n },
  map() {},
  unmap() {},
};

const RW = { read: true, write: true };
const IOVA_BASE = 0x1_0000_0000n;

/** Map `pages` 4 KiB pages into one IOAS as `maps` equal IOAS_MAPs of user memory; bytes retained per page. */
function run(name: string, pages: number, maps: number, deadline: number): ScaleMemCase {
  const host = new HostMemory(48);
  const mm = new UserMm(host, pages + 16);
  const iopt = new IoPagetable(mm, new FailNth());
  iopt.addDomain(nullDomain); // a domain: maps pin their pages, as with a device attached
  const length = BigInt(pages) * PAGE;
  const va = mm.mmap(undefined, length, {});
  const per = BigInt(pages / maps) * PAGE;
  const before = used();
  const t0 = process.hrtime.bigint();
  let done = 0;
  for (let i = 0; i < maps; i++) {
    const off = BigInt(i) * per;
    iopt.map({ kind: "user", va: va + off }, per, { iova: IOVA_BASE + off, prot: RW, srcAddr: va + off });
    done++;
    if ((i & 1023) === 0 && Date.now() > deadline) break;
  }
  const seconds = Number(process.hrtime.bigint() - t0) / 1e9;
  const after = used();
  const mapped = (done * pages) / maps;
  if (mm.locked !== mapped) throw new Error(`scale-mem: ${mm.locked} pages pinned, expected ${mapped}`);
  const out = { name, pages: mapped, maps: done, seconds, bytesPerPage: (after - before) / mapped, heapBytes: after - before };
  iopt.destroy();
  return out;
}

const opts = JSON.parse(process.argv[2] ?? "{}") as { pages?: number; singlePageMaps?: number; timeLimitMs?: number };
const pages = opts.pages ?? 1 << 20;
const deadline = Date.now() + (opts.timeLimitMs ?? 60_000);
const cases: ScaleMemCase[] = [run("one IOAS_MAP of 1M pages (4 GiB)", pages, 1, deadline)];
const singles = opts.singlePageMaps ?? pages;
if (singles > 0) cases.push(run(`${singles.toLocaleString("en-US")} IOAS_MAPs of one page each`, singles, singles, deadline));
const out: ScaleMemOutput = { cases };
process.stdout.write(`${JSON.stringify(out)}\n`);
