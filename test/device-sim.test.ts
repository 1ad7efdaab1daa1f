// Cross-process: a real nats-server and a device-sim process (started by the
// test kit), against a fake host in this test process (the host side of the
// device bus over a byte array: @iommufd/device-sim/testing). Everything the
// device does is observed where the host would observe it: on the bus.
import { execFile } from "node:child_process";
import { mkdtempSync, writeFileSync } from "node:fs";
import { tmpdir } from "node:os";
import { join } from "node:path";
import { promisify } from "node:util";
import { FakeHost } from "@iommufd/device-sim/testing";
import { createClient, type ErrnoError, type GrpcClient } from "@iommufd/kit";
import { DmaStatus, FaultKind, FaultRoute, PcieAddressType, PrgResponseCode } from "@iommufd/proto/bus";
import { Device, DmaKind, WorkloadKind, WorkloadState } from "@iommufd/proto/device";
import { REPO_ROOT, type ServiceProcess, TestTopology } from "@iommufd/testkit";
import { afterAll, beforeAll, describe, expect, it } from "vitest";

const run = promisify(execFile);
const EP0 = 0x18; // ATS + PRI + PASID
const EP1 = 0x20; // ATS, no PRI
const EP2 = 0x28; // no ATS (from the config file)
const IOVA = 0x10_0000n;
const PA = 0x4_0000n;
const enc = (s: string) => new TextEncoder().encode(s);

let topo: TestTopology;
let proc: ServiceProcess;
let host: FakeHost;
let dev: GrpcClient<typeof Device>;

beforeAll(async () => {
  const dir = mkdtempSync(join(tmpdir(), "devsim-test-"));
  const file = join(dir, "devsim.json");
  writeFileSync(file, JSON.stringify({ endpoints: [{ name: "plain", rid: "00:05.0", batch: 32 }] }));
  // The device-sim starts first: it must keep retrying its registration until the host is there.
  topo = await TestTopology.start([
    {
      kind: "device-sim",
      name: "devsim-x",
      args: [
        "--endpoint",
        "name=ep0,rid=0x0018,pasid=20,ats=1,atc=256,pri=1,prq=32,batch=64,inflight=4",
        "--endpoint",
        "name=ep1,rid=00:04.0,ats,atc=64",
        "--config",
        file,
        "--request-timeout-ms",
        "2000",
      ],
    },
  ]);
  proc = topo.get("devsim-x");
  host = await FakeHost.start({ natsUrl: topo.natsUrl, name: "fake-host" });
  dev = createClient(Device, proc.address);
  for (const rid of [EP0, EP1, EP2]) host.map(rid, IOVA, PA, 64 * 4096);
  await host.waitFor(() => [EP0, EP1, EP2].every((r) => host.isRegistered(r)), 10_000, "all endpoints registered");
}, 90_000);

afterAll(async () => {
  dev?.close();
  await topo?.stop();
  await host?.stop();
});

async function endpoint(rid: number) {
  const { endpoints } = await dev.rpc.listEndpoints({});
  const ep = endpoints.find((e) => e.rid === rid);
  if (!ep) throw new Error(`no endpoint ${rid}`);
  return ep;
}

async function waitRegistered(rid: number, epoch: bigint): Promise<void> {
  await expect
    .poll(async () => {
      const e = await endpoint(rid);
      return e.registered && host.isRegistered(rid) && host.registration(rid) !== undefined ? epoch : -1n;
    }, { timeout: 5000, interval: 20 })
    .toBe(epoch);
}

async function waitWorkload(id: string) {
  for (;;) {
    const { status } = await dev.rpc.getWorkload({ workloadId: id });
    if (status && status.state !== WorkloadState.RUNNING) return status;
    await new Promise((r) => setTimeout(r, 20));
  }
}

describe("device-sim process", () => {
  it("registered each endpoint (flags and config file) with its capabilities", async () => {
    expect(host.registration(EP0)).toMatchObject({ name: "devsim-x/ep0", process: "devsim-x", maxPasidLog2: 20, ats: true, atcEntries: 256, pri: true, priOutstandingCapacity: 32, maxBatch: 64 });
    expect(host.registration(EP1)).toMatchObject({ name: "devsim-x/ep1", ats: true, pri: false });
    expect(host.registration(EP2)).toMatchObject({ name: "devsim-x/plain", ats: false, maxBatch: 32 });
    await expect.poll(async () => (await endpoint(EP0)).registered, { timeout: 3000, interval: 20 }).toBe(true);
    expect(await endpoint(EP0)).toMatchObject({ iommuId: "fake0", priOutstandingAllocation: 32, maxBatch: 64, atcEntries: 256 });
  });

  it("DMA write/read round trip through the fake host's memory", async () => {
    const data = Uint8Array.from({ length: 6000 }, (_, i) => (i * 31) & 0xff);
    const w = await dev.rpc.dma({ rid: EP2, kind: DmaKind.WRITE, iova: IOVA + 4000n, data });
    expect(w).toMatchObject({ status: DmaStatus.OK, done: 6000n });
    expect(host.read(PA + 4000n, data.length)).toEqual(data);
    const r = await dev.rpc.dma({ rid: EP2, kind: DmaKind.READ, iova: IOVA + 4000n, length: 6000n });
    expect(r.status).toBe(DmaStatus.OK);
    expect(new Uint8Array(r.data)).toEqual(data);
  });

  it("batches: one DmaBatch carries many ops (counted at the host)", async () => {
    const b0 = host.counts.dmaBatches;
    const o0 = host.counts.dmaOps;
    const batches: number[] = [];
    const onDma = (b: { rid: number; ops: unknown[] }) => b.rid === EP2 && batches.push(b.ops.length);
    host.events.on("dma", onDma);
    const { workloadId } = await dev.rpc.startWorkload({
      spec: { rid: EP2, kind: WorkloadKind.STREAM_READ, iova: IOVA, length: 64n * 4096n, opSize: 256, count: 512n, batchOps: 32, inFlight: 2 },
    });
    const s = await waitWorkload(workloadId);
    host.events.off("dma", onDma);
    expect(s).toMatchObject({ state: WorkloadState.DONE, ops: 512n, bytes: 512n * 256n, faults: 0n, errors: 0n });
    expect(host.counts.dmaOps - o0).toBe(512);
    expect(host.counts.dmaBatches - b0).toBe(16);
    expect(batches.every((n) => n === 32)).toBe(true);
  });

  it("ATC hit path: after warm-up, N accesses send 0 ATS requests and go TRANSLATED", async () => {
    const warm = await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA, length: 16n * 4096n, useAts: true });
    expect(warm).toMatchObject({ status: DmaStatus.OK, atcMisses: 16, atcHits: 0 });
    const ats0 = host.counts.atsRequests;
    const translated0 = host.counts.translatedOps;
    const before = (await dev.rpc.stats({ rid: EP1 })).endpoints[0];
    const { workloadId } = await dev.rpc.startWorkload({
      spec: { rid: EP1, kind: WorkloadKind.RANDOM, iova: IOVA, length: 16n * 4096n, opSize: 512, count: 400n, readPercent: 50, useAts: true, seed: 9n },
    });
    const s = await waitWorkload(workloadId);
    expect(s).toMatchObject({ state: WorkloadState.DONE, ops: 400n, faults: 0n, errors: 0n });
    expect(host.counts.atsRequests).toBe(ats0);
    expect(host.counts.translatedOps - translated0).toBe(400);
    const after = (await dev.rpc.stats({ rid: EP1 })).endpoints[0];
    expect(after.atcHits - before.atcHits).toBe(400n);
    expect(after.atcMisses - before.atcMisses).toBe(0n);
    const dump = await dev.rpc.atcDump({ rid: EP1 });
    expect(dump.capacity).toBe(64);
    expect(dump.entries.length).toBe(16);
    expect(dump.entries.reduce((n, e) => n + e.hits, 0n)).toBe(400n);
  });

  it("ATC invalidation drops the matching entries and sends the completion", async () => {
    await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA, length: 4n * 4096n, useAts: true });
    const c = await host.invalidateAtc(EP1, [
      { itag: 3, addr: IOVA, sizeLog2: 13 }, // pages 0-1
      { itag: 9, addr: IOVA + 3n * 4096n, sizeLog2: 12 }, // page 3
    ]);
    expect(c).toMatchObject({ rid: EP1, itagVector: (1 << 3) | (1 << 9) });
    const pages = new Set((await dev.rpc.atcDump({ rid: EP1 })).entries.map((e) => (e.untranslatedAddr - IOVA) / 4096n));
    expect([0n, 1n, 3n].some((p) => pages.has(p))).toBe(false);
    expect(pages.has(2n)).toBe(true);
    const ats0 = host.counts.atsTranslations;
    const r = await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA, length: 8n, useAts: true });
    expect(r).toMatchObject({ status: DmaStatus.OK, atcMisses: 1 });
    expect(host.counts.atsTranslations).toBe(ats0 + 1);
    expect((await dev.rpc.stats({ rid: EP1 })).endpoints[0].atcInvalidations).toBeGreaterThanOrEqual(2n);
  });

  it("PRI: page requests, the page group response, and a retry that succeeds", async () => {
    const target = 0x200_0000n;
    const requests: { addr: bigint; last: boolean; w: boolean }[] = [];
    host.onPageRequestGroup = (rid, group) => {
      for (const p of group) {
        requests.push({ addr: p.addr, last: p.last, w: p.w });
        host.map(rid, p.addr, 0x10_0000n + (p.addr - target), 4096, {}, p.pasidValid ? p.pasid : undefined);
      }
      return PrgResponseCode.SUCCESS;
    };
    const data = new Uint8Array(2 * 4096).fill(0x6b);
    const r = await dev.rpc.dma({ rid: EP0, kind: DmaKind.WRITE, iova: target, data, pasid: 7, useAts: true });
    expect(r).toMatchObject({ status: DmaStatus.OK, done: 8192n, pageRequests: 2, retries: 1 });
    expect(requests).toEqual([
      { addr: target, last: false, w: true },
      { addr: target + 4096n, last: true, w: true },
    ]);
    expect(host.read(0x10_0000n, data.length)).toEqual(data);
    const st = (await dev.rpc.stats({ rid: EP0 })).endpoints[0];
    expect(st).toMatchObject({ pageRequests: 2n, prgSuccess: 1n, retries: 1n, pageRequestsOutstanding: 0 });
    expect(host.creditViolations).toBe(0);
  });

  it("PRI Invalid Request: the fault is reported to the caller", async () => {
    host.onPageRequestGroup = () => PrgResponseCode.INVALID_REQUEST;
    const r = await dev.rpc.dma({ rid: EP0, kind: DmaKind.READ, iova: 0x300_0000n, length: 16n, pasid: 7, useAts: true });
    expect(r).toMatchObject({ status: DmaStatus.FAULT, done: 0n, pageRequests: 1, retries: 0 });
    expect(r.fault).toMatchObject({ kind: FaultKind.TRANSLATION, route: FaultRoute.IOPF, inputAddress: 0x300_0000n });
  });

  it("without PRI the fault comes back from the host", async () => {
    const viaAts = await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: 0x300_0000n, length: 16n, useAts: true });
    expect(viaAts).toMatchObject({ status: DmaStatus.FAULT, pageRequests: 0, atcMisses: 1 });
    expect(viaAts.fault).toMatchObject({ kind: FaultKind.TRANSLATION, inputAddress: 0x300_0000n, write: false });
    const untranslated = await dev.rpc.dma({ rid: EP2, kind: DmaKind.WRITE, iova: IOVA + 64n * 4096n - 4n, data: enc("12345678") });
    expect(untranslated).toMatchObject({ status: DmaStatus.FAULT, done: 4n });
    expect(untranslated.fault?.inputAddress).toBe(IOVA + 64n * 4096n);
    expect((await dev.rpc.stats({ rid: EP2 })).endpoints[0].faults).toBe(1n);
  });

  it("a device that ignores invalidations: no completion, the host's wait times out", async () => {
    await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA + 8n * 4096n, length: 8n, useAts: true });
    const set = await dev.rpc.setMisbehaviour({ rid: EP1, misbehaviour: { dropAtcInvalidations: true } });
    expect(set.misbehaviour?.dropAtcInvalidations).toBe(true);
    const inv0 = (await dev.rpc.stats({ rid: EP1 })).endpoints[0].atcInvalidations;
    const t0 = Date.now();
    const e = (await host.invalidateAtc(EP1, [{ itag: 0, addr: IOVA + 8n * 4096n, sizeLog2: 12 }], 400).catch((x: unknown) => x)) as ErrnoError;
    expect(e.errno).toBe("ETIMEDOUT");
    expect(Date.now() - t0).toBeGreaterThanOrEqual(395);
    // The device received it (and kept the entry).
    expect((await dev.rpc.stats({ rid: EP1 })).endpoints[0].atcInvalidations).toBe(inv0 + 1n);
    expect((await dev.rpc.atcDump({ rid: EP1 })).entries.some((x) => x.untranslatedAddr === IOVA + 8n * 4096n)).toBe(true);
    // Completing without invalidating: the host gets its completion, the stale translation stays in use.
    await dev.rpc.setMisbehaviour({ rid: EP1, misbehaviour: { ignoreAtcInvalidations: true } });
    expect((await host.invalidateAtc(EP1, [{ itag: 1, addr: IOVA + 8n * 4096n, sizeLog2: 12 }])).itagVector).toBe(2);
    const n0 = host.log.dma.length;
    await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA + 8n * 4096n, length: 8n, useAts: true });
    expect(host.log.dma.slice(n0).flatMap((b) => b.ops)[0]).toMatchObject({ at: PcieAddressType.TRANSLATED, addr: PA + 8n * 4096n });
    await dev.rpc.setMisbehaviour({ rid: EP1, misbehaviour: {} });
    expect((await host.invalidateAtc(EP1, [{ itag: 2, addr: IOVA + 8n * 4096n, sizeLog2: 12 }])).itagVector).toBe(4);
  });

  it("registers again after a host restart (HostUp) and DMA works again", async () => {
    const regs0 = host.counts.registers;
    await host.restart({ keepMappings: true });
    for (const rid of [EP0, EP1, EP2]) await waitRegistered(rid, host.epoch);
    expect(host.counts.registers - regs0).toBe(3);
    expect((await endpoint(EP1)).misbehaviour?.ignoreAtcInvalidations).toBe(false);
    // The ATC was flushed (the host forgot its tables): the next access asks ATS again, numbered from 1.
    const ats0 = host.counts.atsRequests;
    const r = await dev.rpc.dma({ rid: EP1, kind: DmaKind.READ, iova: IOVA, length: 8n, useAts: true });
    expect(r).toMatchObject({ status: DmaStatus.OK, atcMisses: 1 });
    expect(host.counts.atsRequests).toBe(ats0 + 1);
    expect(host.log.ats[host.log.ats.length - 1].seq).toBe(1n);
    expect(host.seqErrors).toBe(0);
  });

  it("reports errnos over gRPC", async () => {
    for (const [req, errno] of [
      [{ rid: 0x99, kind: DmaKind.READ, length: 8n }, "ENOENT"],
      [{ rid: EP2, kind: DmaKind.READ, length: 8n, useAts: true }, "EOPNOTSUPP"],
      [{ rid: EP0, kind: DmaKind.READ, length: 0n }, "EINVAL"],
    ] as const) {
      const e = (await dev.rpc.dma(req).catch((x: unknown) => x)) as ErrnoError;
      expect(e.errno).toBe(errno);
    }
    expect(((await dev.rpc.getWorkload({ workloadId: "nope" }).catch((x: unknown) => x)) as ErrnoError).errno).toBe("ENOENT");
  });

  it("stops cleanly on SIGTERM and unplugs its endpoints", async () => {
    const u0 = host.counts.unregisters;
    expect(await proc.stop()).toBe(0);
    expect(host.counts.unregisters - u0).toBe(3);
    expect([EP0, EP1, EP2].some((r) => host.isRegistered(r))).toBe(false);
  });
});

describe("device-sim command line", () => {
  const main = join(REPO_ROOT, "services/device-sim/src/main.ts");

  it("documents the endpoint spec in --help", async () => {
    const { stdout } = await run(process.execPath, ["--import", "tsx", main, "--help"], { cwd: REPO_ROOT });
    expect(stdout).toContain("--endpoint <spec>");
    expect(stdout).toContain("name=ep0,rid=0x0018,pasid=20,ats=1,atc=256,pri=1,prq=32,batch=64");
    expect(stdout).toContain("--config <path>");
  });

  it("exits 2 naming the flag on a bad endpoint spec", async () => {
    const e = (await run(process.execPath, ["--import", "tsx", main, "--endpoint", "rid=0x18,pri=1"], { cwd: REPO_ROOT }).catch((x: unknown) => x)) as {
      code: number;
      stderr: string;
    };
    expect(e.code).toBe(2);
    expect(e.stderr).toMatch(/--endpoint \(env DEVSIM_ENDPOINTS\): .*pri needs ats=1/);
  });
});
