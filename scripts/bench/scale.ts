// Section 5 (system parts): 64 device-sim endpoints doing DMA at once
// through the real host, and 1M 4 KiB pages mapped into one IOAS of the real
// host (with an attached test device, so every page is pinned and mapped
// into the domain's page table), beside the bookkeeping measurement of
// scale-mem.ts (the host's IoPagetable/UserMm in a process of its own; the
// host exposes no process memory figure) and the IOTLB working set (hw.ts).
import { spawn } from "node:child_process";
import { dirname, join } from "node:path";
import { fileURLToPath } from "node:url";
import { WorkloadKind } from "@iommufd/proto/device";
import { IoasMapFlags, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import { REPO_ROOT } from "@iommufd/testkit";
import { type BenchRow, judge, type Progress, sleep } from "./common.js";
import { ioasWithDevices } from "./devices.js";
import type { ScaleMemOutput } from "./scale-mem.js";
import { type BenchSystem, SCALE_DEVICES, scaleRid } from "./system.js";

const HERE = dirname(fileURLToPath(import.meta.url));
const SLICE = 256n * 1024n;
const IOVA = 0x1000_0000n;

export async function manyDevices(sys: BenchSystem, progress: Progress, o: { durationMs: number; warmupMs: number }): Promise<BenchRow[]> {
  const s = await sys.session("bench-scale-devices");
  try {
    const rids = Array.from({ length: SCALE_DEVICES }, (_, i) => scaleRid(i));
    await ioasWithDevices(s, rids, IOVA, SLICE * BigInt(SCALE_DEVICES));
    progress.step(`${SCALE_DEVICES} endpoints bound and attached to one IOAS`);
    const spec = (i: number, ms: number) => ({
      rid: scaleRid(i),
      kind: WorkloadKind.STREAM_READ,
      iova: IOVA + SLICE * BigInt(i),
      length: SLICE,
      opSize: 4096,
      durationMs: ms,
      batchOps: 16,
      inFlight: 2,
      seed: 1n,
    });
    // Steady state: start the workloads (all at once), let them run, then
    // read the endpoints' op counters twice `windowMs` apart while all run.
    const opsByRid = async () => {
      const t = process.hrtime.bigint();
      const { endpoints } = await sys.device.rpc.stats({});
      const mid = (Number(t) + Number(process.hrtime.bigint())) / 2e9;
      return { at: mid, ops: new Map(endpoints.map((e) => [e.rid, Number(e.dmaOps)])) };
    };
    const steady = async (devs: number[]) => {
      const ids = await Promise.all(devs.map(async (i) => (await sys.device.rpc.startWorkload({ spec: spec(i, o.warmupMs + o.durationMs + 5000) })).workloadId));
      const stopAll = async () => (await Promise.all(ids.map((workloadId) => sys.device.rpc.stopWorkload({ workloadId })))).map((r) => r.status);
      let a: Awaited<ReturnType<typeof opsByRid>>;
      let b: typeof a;
      try {
        await sleep(o.warmupMs);
        a = await opsByRid();
        await sleep(o.durationMs);
        b = await opsByRid();
      } catch (e) {
        await stopAll().catch(() => undefined);
        throw e;
      }
      const bad = (await stopAll()).filter((st) => st && (st.faults > 0n || st.errors > 0n));
      if (bad.length > 0) throw new Error(`${bad.length} scale workloads had faults/errors: ${bad[0]?.error}`);
      const per = devs.map((i) => (b.ops.get(scaleRid(i)) ?? 0) - (a.ops.get(scaleRid(i)) ?? 0));
      return { rate: per.reduce((x, y) => x + y, 0) / (b.at - a.at), per, seconds: b.at - a.at };
    };
    const single = await steady([0]);
    progress.step("one device");
    const all = await steady(Array.from({ length: SCALE_DEVICES }, (_, i) => i));
    progress.step(`${SCALE_DEVICES} devices at once`);
    const idle = all.per.filter((n) => n === 0).length;
    return [
      judge({
        section: "scale",
        name: `${SCALE_DEVICES} devices DMA at once (4 KiB reads, batch 16 × 2 each), aggregate`,
        figure: { value: all.rate, unit: "ops/s" },
        baseline: { name: "one device, same shape", value: single.rate, unit: "ops/s" },
        ratio: all.rate / single.rate,
        note: `steady state over ${all.seconds.toFixed(2)} s with all ${SCALE_DEVICES} running; per device ${Math.min(...all.per)}–${Math.max(...all.per)} ops in the window${idle ? `, ${idle} devices starved` : ""}`,
      }),
    ];
  } finally {
    await s.close();
  }
}

function runScaleMem(opts: { pages: number; singlePageMaps: number; timeLimitMs: number }): Promise<ScaleMemOutput> {
  return new Promise((resolve, reject) => {
    const child = spawn(process.execPath, ["--expose-gc", "--import", "tsx", join(HERE, "scale-mem.ts"), JSON.stringify(opts)], {
      cwd: REPO_ROOT,
      stdio: ["ignore", "pipe", "inherit"],
    });
    const killOnExit = () => child.kill("SIGKILL");
    process.once("exit", killOnExit);
    let out = "";
    child.stdout.on("data", (d: Buffer) => (out += d.toString()));
    child.once("exit", (code) => {
      process.off("exit", killOnExit);
      if (code !== 0) return reject(new Error(`scale-mem exited with ${code}`));
      try {
        resolve(JSON.parse(out) as ScaleMemOutput);
      } catch (e) {
        reject(e);
      }
    });
  });
}

export async function millionPages(sys: BenchSystem, progress: Progress, o: { pages: number; singlePageMaps: number; timeLimitMs: number }): Promise<BenchRow[]> {
  const rows: BenchRow[] = [];
  const length = BigInt(o.pages) * 4096n;
  const s = await sys.session("bench-scale-map");
  let hostMapS: number;
  let hostUnmapS: number;
  try {
    const { addr: va } = await s.io.mmap({ length, prot: MmapProt.READ | MmapProt.WRITE, flags: MmapFlags.PRIVATE | MmapFlags.ANONYMOUS });
    const { outIoasId: ioasId } = await s.io.ioasAlloc({});
    await s.admin.createTestDevice({ iommuId: "smmu0", name: "bench-scale-map", rid: 0x0b00 });
    const { outDevid } = await s.io.deviceBind({ device: { case: "rid", value: 0x0b00 } });
    await s.io.deviceAttach({ devId: outDevid, ptId: ioasId });
    let t = process.hrtime.bigint();
    await s.io.ioasMap(
      { ioasId, flags: IoasMapFlags.READABLE | IoasMapFlags.WRITEABLE | IoasMapFlags.FIXED_IOVA, userVa: va, length, iova: 0x1_0000_0000n },
      { deadlineMs: 300_000 },
    );
    hostMapS = Number(process.hrtime.bigint() - t) / 1e9;
    const pinned = (await s.admin.dumpObjects({ sessionIds: [s.sessionId] })).sessions[0]?.pinnedBytes ?? 0n;
    if (pinned !== length) throw new Error(`1M-page map: ${pinned} bytes pinned, expected ${length}`);
    t = process.hrtime.bigint();
    await s.io.ioasUnmap({ ioasId, iova: 0x1_0000_0000n, length }, { deadlineMs: 300_000 });
    hostUnmapS = Number(process.hrtime.bigint() - t) / 1e9;
    progress.step(`real host: ${o.pages.toLocaleString("en-US")} pages mapped and unmapped`);
  } finally {
    await s.close();
  }
  const mem = await runScaleMem(o);
  progress.step("bookkeeping measured in-process (IoPagetable + UserMm)");
  const big = mem.cases[0];
  const singles = mem.cases[1];
  if (!big) throw new Error("scale-mem: no result");
  rows.push(
    judge({
      section: "scale",
      name: `map ${o.pages.toLocaleString("en-US")} 4 KiB pages (one IoasMap, real host, device attached)`,
      figure: { value: hostMapS, unit: "s" },
      baseline: { name: "same map, in-process IoPagetable, no page table", value: big.seconds, unit: "s" },
      ratio: hostMapS / big.seconds,
      note: `${((hostMapS * 1e9) / o.pages).toFixed(0)} ns/page; unmap ${hostUnmapS.toFixed(2)} s`,
    }),
  );
  rows.push(
    judge({
      section: "scale",
      name: "bookkeeping per mapped page beyond the page tables (one 4 GiB IoasMap)",
      figure: { value: big.bytesPerPage, unit: "B/page" },
      baseline: { name: "one 8-byte PTE", value: 8, unit: "B/page" },
      ratio: big.bytesPerPage / 8,
      target: { on: "value", op: "<=", limit: 64 },
      note: "measured in-process: the host exposes no process memory figure",
    }),
  );
  if (singles) {
    rows.push(
      judge({
        section: "scale",
        name: `bookkeeping per mapped page, ${singles.maps.toLocaleString("en-US")} one-page IoasMaps`,
        figure: { value: singles.bytesPerPage, unit: "B/page" },
        baseline: { name: "one 8-byte PTE", value: 8, unit: "B/page" },
        ratio: singles.bytesPerPage / 8,
        target: { on: "value", op: "<=", limit: 64 },
        note: `worst case: an area per page; ${(singles.seconds * 1e6 / singles.maps).toFixed(1)} µs per map in-process`,
      }),
    );
  }
  return rows;
}
