// The endpoint against a fake host on a real nats-server, in one process:
// registration, DMA, batching, ATC/ATS, invalidation, PRI, misbehaviour,
// sequence numbers and workloads, asserting what crosses the bus.
import { create } from "@bufbuild/protobuf";
import { Bus, type CallContext, createLogger, ErrnoError, type NatsServerProcess, startNatsServer, subjects } from "@iommufd/kit";
import { AtcInvalidateCompletionSchema, AtcInvalidateSchema, DmaStatus, FaultKind, FaultRoute, PcieAddressType, PrgResponseCode } from "@iommufd/proto/bus";
import {
  AtcDumpRequestSchema,
  DmaKind,
  DmaRequestSchema,
  GetWorkloadRequestSchema,
  ListEndpointsRequestSchema,
  SetMisbehaviourRequestSchema,
  StartWorkloadRequestSchema,
  StatsRequestSchema,
  StopWorkloadRequestSchema,
  WorkloadKind,
  WorkloadState,
} from "@iommufd/proto/device";
import { afterAll, afterEach, beforeAll, describe, expect, it } from "vitest";
import { parseEndpointSpec } from "./config.js";
import { deviceService } from "./control.js";
import { DeviceSim } from "./sim.js";
import { FakeHost } from "./testing/fake-host.js";

let nats: NatsServerProcess;
const cleanups: (() => Promise<void>)[] = [];

beforeAll(async () => {
  nats = await startNatsServer();
});

afterEach(async () => {
  for (const c of cleanups.splice(0).reverse()) await c();
});

afterAll(async () => {
  await nats?.stop();
});

const RID = 0x18;
const IOVA = 0x10_0000n;
const PA = 0x4_0000n;
const ctx = {} as CallContext;
const enc = (s: string) => new TextEncoder().encode(s);

async function startHost(opts: Partial<Parameters<typeof FakeHost.start>[0]> = {}): Promise<FakeHost> {
  const host = await FakeHost.start({ natsUrl: nats.url, ...opts });
  cleanups.push(() => host.stop());
  return host;
}

async function startSim(specs: string[], opts: { requestTimeoutMs?: number; priTimeoutMs?: number; name?: string } = {}) {
  const name = opts.name ?? "devsim-t";
  const bus = await Bus.connect({ url: nats.url, name, log: createLogger(name, "silent") });
  const sim = new DeviceSim({
    bus,
    processName: name,
    log: createLogger(name, "silent"),
    endpoints: specs.map((s) => parseEndpointSpec(s)),
    requestTimeoutMs: opts.requestTimeoutMs ?? 2000,
    priTimeoutMs: opts.priTimeoutMs ?? 2000,
  });
  sim.start();
  cleanups.push(async () => {
    await sim.stop();
    await bus.close();
  });
  return { sim, bus, svc: deviceService(sim) };
}

/** Host + one registered endpoint with `size` bytes mapped at IOVA → PA. */
async function setup(spec: string, hostOpts: Partial<Parameters<typeof FakeHost.start>[0]> = {}, size = 64 * 4096) {
  const host = await startHost(hostOpts);
  const s = await startSim([spec]);
  const ep = s.sim.endpoint(RID);
  await ep.whenRegistered();
  host.map(RID, IOVA, PA, size);
  return { host, ...s, ep };
}

describe("registration", () => {
  it("retries until a host answers, with the capabilities of the spec", async () => {
    const { sim } = await startSim(["name=ep0,rid=0x0018,pasid=20,ats=1,atc=256,pri=1,prq=32,batch=64"]);
    const ep = sim.endpoint(RID);
    expect(ep.registered).toBe(false);
    await expect.poll(() => ep.counters.registerFailures, { timeout: 2000, interval: 5 }).toBeGreaterThanOrEqual(1); // no responder yet
    const host = await startHost({ stu: 1, maxBatch: 32, priAllocation: 16 });
    await ep.whenRegistered(3000);
    const reg = host.registration(RID);
    expect(reg).toMatchObject({ rid: RID, name: "devsim-t/ep0", process: "devsim-t", maxPasidLog2: 20, ats: true, atcEntries: 256, pri: true, priOutstandingCapacity: 32, maxBatch: 64 });
    expect(ep.grant).toMatchObject({ iommuId: "fake0", stu: 1, priAllocation: 16, maxBatch: 32, hostEpoch: host.epoch });
    expect(ep.maxBatch).toBe(32);
  });

  it("registers again after a HostUp with a new epoch, and not on a repeated HostUp", async () => {
    const host = await startHost();
    const { sim } = await startSim(["rid=0x18", "rid=0x20"]);
    const [a, b] = [sim.endpoint(0x18), sim.endpoint(0x20)];
    await Promise.all([a.whenRegistered(), b.whenRegistered()]);
    await host.waitFor(() => host.counts.registers === 2);
    await host.publishHostUp(); // same epoch: a repeat
    await host.restart(); // new epoch + HostUp
    for (const ep of [a, b]) await expect.poll(() => ep.grant?.hostEpoch, { timeout: 3000, interval: 5 }).toBe(host.epoch);
    expect(host.counts.registers).toBe(4);
    expect(a.counters.registrations).toBe(2);
    expect(b.registered).toBe(true);
  });

  it("registers again on an ENODEV reply and redoes the DMA once", async () => {
    const { host, ep } = await setup("rid=0x18");
    await host.restart({ announce: false, keepMappings: true }); // the host forgot the device, no HostUp
    const r = await ep.dma.access({ kind: "write", iova: IOVA, length: 4, data: enc("abcd") }, false);
    expect(r.status).toBe(DmaStatus.OK);
    expect(host.read(PA, 4)).toEqual(enc("abcd"));
    expect(host.isRegistered(RID)).toBe(true);
    expect(ep.counters.registrations).toBe(2);
  });

  it("fails DMA with ENOTCONN when no host is there", async () => {
    const { sim } = await startSim(["rid=0x18"], { requestTimeoutMs: 200 });
    const e = await sim
      .endpoint(RID)
      .dma.access({ kind: "read", iova: IOVA, length: 4 }, false)
      .catch((x: unknown) => x);
    expect(e).toBeInstanceOf(ErrnoError);
    expect((e as ErrnoError).errno).toBe("ENOTCONN");
  });

  it("unregisters on stop", async () => {
    const host = await startHost();
    const { sim, bus } = await startSim(["rid=0x18"]);
    await sim.endpoint(RID).whenRegistered();
    await sim.stop();
    await bus.close();
    expect(host.counts.unregisters).toBe(1);
    expect(host.isRegistered(RID)).toBe(false);
  });
});

describe("DMA", () => {
  it("writes and reads back through the host's mapping, across pages, with a PASID", async () => {
    const host = await startHost();
    const { sim } = await startSim(["rid=0x18,pasid=8"]);
    const ep = sim.endpoint(RID);
    await ep.whenRegistered();
    host.map(RID, IOVA, PA, 4 * 4096, {}, 5);
    const data = Uint8Array.from({ length: 10_000 }, (_, i) => (i * 7) & 0xff);
    const w = await ep.dma.access({ kind: "write", iova: IOVA + 100n, length: data.length, data, pasid: 5 }, false);
    expect(w).toMatchObject({ status: DmaStatus.OK, done: 10_000 });
    expect(host.read(PA + 100n, data.length)).toEqual(data);
    const r = await ep.dma.access({ kind: "read", iova: IOVA + 100n, length: data.length, pasid: 5 }, false);
    expect(r.data).toEqual(data);
    const op = host.log.dma[0].ops[0];
    expect(op).toMatchObject({ pasid: 5, pasidValid: true, at: PcieAddressType.UNTRANSLATED });
    // Without the PASID there is no mapping: the host faults it.
    const f = await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, false);
    expect(f.status).toBe(DmaStatus.FAULT);
    expect(f.fault?.kind).toBe(FaultKind.TRANSLATION);
  });

  it("batches many ops in one DmaBatch and pipelines batches", async () => {
    const { host, ep } = await setup("rid=0x18,batch=32,inflight=4");
    const n = 256;
    const rs = await Promise.all(Array.from({ length: n }, (_, i) => ep.dma.access({ kind: "read", iova: IOVA + BigInt(i * 64), length: 64 }, false)));
    expect(rs.every((r) => r.status === DmaStatus.OK)).toBe(true);
    expect(host.counts.dmaOps).toBe(n);
    expect(host.counts.dmaBatches).toBe(n / 32);
    expect(Math.max(...host.log.dma.map((b) => b.ops.length))).toBe(32);
    expect(ep.dma.batcher.stats.peakInFlight).toBe(4);
    expect(host.seqErrors).toBe(0);
    expect(host.log.dma.map((b) => b.seq)).toEqual(Array.from({ length: n / 32 }, (_, i) => BigInt(i + 1)));
  });

  it("respects the max_batch the host granted", async () => {
    const { host, ep } = await setup("rid=0x18,batch=64", { maxBatch: 8 });
    await Promise.all(Array.from({ length: 40 }, (_, i) => ep.dma.access({ kind: "read", iova: IOVA + BigInt(i * 8), length: 8 }, false)));
    expect(Math.max(...host.log.dma.map((b) => b.ops.length))).toBe(8);
    expect(host.counts.dmaBatches).toBe(5);
  });
});

describe("ATS and the ATC", () => {
  it("after warm-up, accesses hit the ATC: no ATS requests, TRANSLATED ops only", async () => {
    const { host, ep } = await setup("rid=0x18,ats,atc=64");
    // Warm-up: one ATS batch for all 16 pages.
    const warm = await ep.dma.access({ kind: "read", iova: IOVA, length: 16 * 4096 }, true);
    expect(warm.status).toBe(DmaStatus.OK);
    expect(warm.atcMisses).toBe(16);
    expect(host.counts.atsRequests).toBe(1);
    expect(host.counts.atsTranslations).toBe(16);
    const ats0 = host.counts.atsRequests;
    const tr0 = host.counts.translatedOps;
    const n = 200;
    const data = enc("xy");
    const rs = await Promise.all(
      Array.from({ length: n }, (_, i) => ep.dma.access({ kind: "write", iova: IOVA + BigInt((i * 300) % (16 * 4096 - 2)), length: 2, data }, true)),
    );
    expect(rs.every((r) => r.status === DmaStatus.OK && r.atcHits === 1 && r.atcMisses === 0)).toBe(true);
    expect(host.counts.atsRequests).toBe(ats0);
    expect(host.counts.translatedOps - tr0).toBe(n);
    const lastOps = host.log.dma[host.log.dma.length - 1].ops;
    const last = lastOps[lastOps.length - 1];
    expect(last.at).toBe(PcieAddressType.TRANSLATED);
    expect(last.addr).toBe(PA + (BigInt((n - 1) * 300) % (16n * 4096n - 2n)));
    expect(host.read(last.addr, 2)).toEqual(data);
    expect(ep.counters.atcHits).toBe(n);
  });

  it("merges contiguous translations into one op and shares ATS requests of concurrent accesses", async () => {
    const { host, ep } = await setup("rid=0x18,ats,atc=64");
    await Promise.all([
      ep.dma.access({ kind: "read", iova: IOVA, length: 8192 }, true),
      ep.dma.access({ kind: "read", iova: IOVA + 4096n, length: 8 }, true),
    ]);
    expect(host.counts.atsTranslations).toBe(2); // page 1 was asked once
    const r = await ep.dma.access({ kind: "read", iova: IOVA, length: 8192 }, true);
    expect(r.atcHits).toBe(2);
    const ops = host.log.dma[host.log.dma.length - 1].ops;
    expect(ops.map((o) => [o.at, o.addr, o.length])).toEqual([[PcieAddressType.TRANSLATED, PA, 8192]]);
  });

  it("falls back to untranslated requests when ATS answers UR", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    host.atsUr.add(RID);
    const r = await ep.dma.access({ kind: "read", iova: IOVA, length: 16 }, true);
    expect(r.status).toBe(DmaStatus.OK);
    expect(host.log.dma[0].ops[0].at).toBe(PcieAddressType.UNTRANSLATED);
    expect(ep.counters.atsFailures).toBe(1);
  });

  it("an invalidation drops matching entries and completes with every ITag", async () => {
    const { host, ep, svc } = await setup("rid=0x18,ats,atc=64,pasid=8", {}, 8 * 4096);
    host.map(RID, IOVA, PA, 8 * 4096, {}, 3);
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 * 4096 }, true);
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 * 4096, pasid: 3 }, true);
    expect(ep.atc?.cache.size).toBe(16);
    // PASID 3, pages 0..1 (8 KiB at IOVA) and no-PASID page 4.
    const c = await host.invalidateAtc(RID, [
      { itag: 0, pasid: 3, pasidValid: true, addr: IOVA, sizeLog2: 13 },
      { itag: 5, addr: IOVA + 4n * 4096n, sizeLog2: 12 },
    ]);
    expect(c).toMatchObject({ rid: RID, seq: 1n, itagVector: 0b100001 });
    const dump = await svc.atcDump(create(AtcDumpRequestSchema, { rid: RID }), ctx);
    const has = (pasid: number | undefined, page: number) =>
      (dump.entries ?? []).some((e) => e.untranslatedAddr === IOVA + BigInt(page) * 4096n && (pasid === undefined ? !e.pasidValid : e.pasidValid && e.pasid === pasid));
    expect(has(3, 0) || has(3, 1)).toBe(false);
    expect(has(3, 2)).toBe(true);
    expect(has(undefined, 0)).toBe(true); // PASID-scoped invalidation leaves non-PASID entries
    expect(has(undefined, 4) || has(3, 4)).toBe(false); // no PASID prefix: every PASID
    expect(dump.entries?.length).toBe(16 - 2 - 2);
    expect(ep.counters.atcInvalidations).toBe(2);
    // The next access to an invalidated page asks ATS again.
    const ats0 = host.counts.atsTranslations;
    const r = await ep.dma.access({ kind: "read", iova: IOVA, length: 8, pasid: 3 }, true);
    expect(r.atcMisses).toBe(1);
    expect(host.counts.atsTranslations).toBe(ats0 + 1);
  });

  it("an invalidation of the whole space (size_log2 64) empties the ATC", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 4 * 4096 }, true);
    expect(ep.atc?.cache.size).toBe(4);
    expect((await host.invalidateAtc(RID, [{ itag: 31, addr: 0n, sizeLog2: 64 }])).itagVector >>> 0).toBe(0x8000_0000);
    expect(ep.atc?.cache.size).toBe(0);
  });

  it("the completion waits for in-flight translated DMA that used the entry", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, true);
    let release!: () => void;
    const held = new Promise<void>((r) => (release = r));
    let dmaArrived!: () => void;
    const arrived = new Promise<void>((r) => (dmaArrived = r));
    host.dmaGate = async () => {
      dmaArrived();
      await held;
    };
    const order: string[] = [];
    const dma = ep.dma.access({ kind: "write", iova: IOVA, length: 4, data: enc("wxyz") }, true).then((r) => {
      order.push("dma");
      return r;
    });
    await arrived;
    const inv = host.invalidateAtc(RID, [{ itag: 1, addr: IOVA, sizeLog2: 12 }]).then((c) => {
      order.push("completion");
      return c;
    });
    // The entry is gone at once; the completion is not sent while the DMA is in flight.
    await expect.poll(() => ep.atc?.cache.size, { timeout: 2000, interval: 5 }).toBe(0);
    await new Promise((r) => setTimeout(r, 50));
    expect(order).toEqual([]);
    host.dmaGate = undefined;
    release();
    expect((await inv).itagVector).toBe(2);
    expect((await dma).status).toBe(DmaStatus.OK);
    expect(order).toEqual(["dma", "completion"]);
  });

  it("an invalidation while a translation is in flight keeps that completion out of the ATC", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    // The first translation is answered only after an invalidation of its page has completed at the device.
    let first = true;
    host.atsGate = async () => {
      if (!first) return;
      first = false;
      const c = await host.invalidateAtc(RID, [{ itag: 4, addr: IOVA, sizeLog2: 12 }]);
      expect(c.itagVector).toBe(16);
    };
    const r = await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, true);
    expect(r.status).toBe(DmaStatus.OK);
    // The poisoned completion was not used: the page was asked again, and only the second answer is cached.
    expect(host.counts.atsTranslations).toBe(2);
    expect(host.log.ats.map((a) => a.seq)).toEqual([1n, 2n]);
    expect(ep.atc?.cache.size).toBe(1);
    expect(host.log.dma[0].ops[0]).toMatchObject({ at: PcieAddressType.TRANSLATED, addr: PA });
  });
});

describe("PRI", () => {
  it("page requests for missing pages, then a retry that succeeds", async () => {
    const { host, ep } = await setup("rid=0x18,ats,pri,prq=8,pasid=8");
    const want = 0x80_0000n;
    host.onPageRequestGroup = (rid, group) => {
      for (const p of group) host.map(rid, p.addr, 0x20_0000n + (p.addr - want), 4096, {}, p.pasidValid ? p.pasid : undefined);
      return PrgResponseCode.SUCCESS;
    };
    const data = new Uint8Array(3 * 4096).fill(0x5a);
    const r = await ep.dma.access({ kind: "write", iova: want, length: data.length, data, pasid: 2 }, true);
    expect(r).toMatchObject({ status: DmaStatus.OK, done: data.length, pageRequests: 3, retries: 1 });
    expect(host.read(0x20_0000n, data.length)).toEqual(data);
    expect(host.log.pri.map((p) => [p.prgIndex === host.log.pri[0].prgIndex, p.last, p.w, p.r, p.pasid, p.pasidValid])).toEqual([
      [true, false, true, false, 2, true],
      [true, false, true, false, 2, true],
      [true, true, true, false, 2, true],
    ]);
    expect(host.log.pri.map((p) => p.seq)).toEqual([1n, 2n, 3n]);
    expect(ep.pri?.counters.prgSuccess).toBe(1);
    expect(ep.pri?.outstanding).toBe(0);
    expect(host.creditViolations).toBe(0);
  });

  it("Invalid Request: the fault goes to the caller, no retry", async () => {
    const { host, ep } = await setup("rid=0x18,ats,pri");
    host.onPageRequestGroup = () => PrgResponseCode.INVALID_REQUEST;
    const r = await ep.dma.access({ kind: "read", iova: IOVA + 64n * 4096n, length: 8 }, true);
    expect(r.status).toBe(DmaStatus.FAULT);
    expect(r.fault).toMatchObject({ kind: FaultKind.TRANSLATION, route: FaultRoute.IOPF, inputAddress: IOVA + 64n * 4096n, write: false });
    expect(r.retries).toBe(0);
    expect(r.pageRequests).toBe(1);
    expect(ep.counters.faults).toBe(1);
    // Pages before the fault were done.
    const part = await ep.dma.access({ kind: "read", iova: IOVA + 63n * 4096n, length: 8192 }, true);
    expect(part).toMatchObject({ status: DmaStatus.FAULT, done: 4096 });
  });

  it("Response Failure disables PRI until the endpoint registers again", async () => {
    const { host, ep } = await setup("rid=0x18,ats,pri");
    host.onPageRequestGroup = () => PrgResponseCode.RESPONSE_FAILURE;
    const r = await ep.dma.access({ kind: "read", iova: 0x900_0000n, length: 8 }, true);
    expect(r.status).toBe(DmaStatus.FAULT);
    expect(ep.pri?.enabled).toBe(false);
    const pr0 = host.counts.pageRequests;
    const again = await ep.dma.access({ kind: "read", iova: 0x900_0000n, length: 8 }, true);
    expect(again.status).toBe(DmaStatus.FAULT); // untranslated now, faulted by the host
    expect(host.counts.pageRequests).toBe(pr0);
    expect(host.log.dma[host.log.dma.length - 1].ops[0].at).toBe(PcieAddressType.UNTRANSLATED);
    await host.restart({ keepMappings: true });
    await expect.poll(() => ep.grant?.hostEpoch, { timeout: 3000, interval: 5 }).toBe(host.epoch);
    expect(ep.pri?.enabled).toBe(true);
  });

  it("still not present after Success: a fault after one retry", async () => {
    const { host, ep } = await setup("rid=0x18,ats,pri");
    host.onPageRequestGroup = () => PrgResponseCode.SUCCESS; // lies: maps nothing
    const r = await ep.dma.access({ kind: "read", iova: 0x900_0000n, length: 8 }, true);
    expect(r).toMatchObject({ status: DmaStatus.FAULT, retries: 1, pageRequests: 1 });
    expect(r.fault?.detail).toMatch(/retried once/);
  });

  it("keeps page requests within the allocation", async () => {
    const { host, ep } = await setup("rid=0x18,ats,pri,prq=8", { priAllocation: 2 });
    expect(ep.pri?.allocation).toBe(2);
    host.onPageRequestGroup = async (rid, group) => {
      await new Promise((r) => setTimeout(r, 5));
      for (const p of group) host.map(rid, p.addr, 0x30_0000n + (p.addr & 0xf_ffffn), 4096);
      return PrgResponseCode.SUCCESS;
    };
    const r = await ep.dma.access({ kind: "read", iova: 0xa0_0000n, length: 7 * 4096 }, true);
    expect(r.status).toBe(DmaStatus.OK);
    expect(host.counts.pageRequests).toBe(7);
    expect(host.priMaxOutstanding.get(RID)).toBe(2);
    expect(host.creditViolations).toBe(0);
  });

  it("without PRI, a missing page is sent untranslated and the host's fault is reported", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    const r = await ep.dma.access({ kind: "write", iova: 0x900_0000n, length: 8, data: new Uint8Array(8) }, true);
    expect(r.status).toBe(DmaStatus.FAULT);
    expect(r.fault).toMatchObject({ kind: FaultKind.TRANSLATION, inputAddress: 0x900_0000n, write: true });
    expect(host.counts.pageRequests).toBe(0);
    expect(host.log.dma[0].ops[0].at).toBe(PcieAddressType.UNTRANSLATED);
  });

  it("a lost page group response times out into a fault, and a late one counts as unexpected", async () => {
    const host = await startHost();
    const { sim } = await startSim(["rid=0x18,ats,pri"], { priTimeoutMs: 100 });
    const ep = sim.endpoint(RID);
    await ep.whenRegistered();
    host.onPageRequestGroup = () => undefined; // never answers
    const r = await ep.dma.access({ kind: "read", iova: 0x900_0000n, length: 8 }, true);
    expect(r.status).toBe(DmaStatus.FAULT);
    expect(r.fault?.detail).toMatch(/timeout/);
    expect(ep.pri?.outstanding).toBe(0);
    host.respondPri(RID, host.log.pri[0].prgIndex, PrgResponseCode.SUCCESS, 1);
    await host.bus.flush();
    await expect.poll(() => ep.pri?.counters.unexpectedResponses, { timeout: 2000, interval: 10 }).toBe(1);
  });
});

describe("misbehaviour the host can see", () => {
  it("drop_atc_invalidations: no completion, the host's sync times out", async () => {
    const { host, ep, svc } = await setup("rid=0x18,ats");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, true);
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { dropAtcInvalidations: true } }), ctx);
    const e = await host.invalidateAtc(RID, [{ itag: 0, addr: IOVA, sizeLog2: 12 }], 300).catch((x: unknown) => x);
    expect((e as ErrnoError).errno).toBe("ETIMEDOUT");
    expect(ep.atc?.cache.size).toBe(1);
    expect(ep.counters.atcInvalidateDropped).toBe(1);
  });

  it("ignore_atc_invalidations: completes but keeps using the stale translation", async () => {
    const { host, ep, svc } = await setup("rid=0x18,ats");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, true);
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { ignoreAtcInvalidations: true } }), ctx);
    // The host moves the page and invalidates; the device says done but still writes the old PA.
    host.unmap(RID, IOVA, 4096);
    host.map(RID, IOVA, 0x8_0000n, 4096);
    expect((await host.invalidateAtc(RID, [{ itag: 2, addr: IOVA, sizeLog2: 12 }])).itagVector).toBe(4);
    await ep.dma.access({ kind: "write", iova: IOVA, length: 4, data: enc("OLD!") }, true);
    const op = host.log.dma[host.log.dma.length - 1].ops[0];
    expect(op).toMatchObject({ at: PcieAddressType.TRANSLATED, addr: PA });
    expect(host.read(PA, 4)).toEqual(enc("OLD!"));
    expect(host.read(0x8_0000n, 4)).toEqual(new Uint8Array(4));
  });

  it("atc_completion_delay_ms delays the completion", async () => {
    const { host, svc } = await setup("rid=0x18,ats");
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { atcCompletionDelayMs: 150 } }), ctx);
    const t0 = Date.now();
    await host.invalidateAtc(RID, [{ itag: 0, addr: IOVA, sizeLog2: 12 }]);
    expect(Date.now() - t0).toBeGreaterThanOrEqual(145);
  });

  it("exceed_pri_credits: more page requests outstanding than allocated", async () => {
    const { host, ep, svc } = await setup("rid=0x18,ats,pri,prq=8", { priAllocation: 2 });
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { exceedPriCredits: true } }), ctx);
    host.onPageRequestGroup = (rid, g) => {
      for (const p of g) host.map(rid, p.addr, 0x30_0000n + (p.addr & 0xf_ffffn), 4096);
      return PrgResponseCode.SUCCESS;
    };
    const r = await ep.dma.access({ kind: "read", iova: 0xa0_0000n, length: 6 * 4096 }, true);
    expect(r.status).toBe(DmaStatus.OK);
    expect(host.priMaxOutstanding.get(RID)).toBe(6);
    expect(host.creditViolations).toBe(4);
  });

  it("forge_translated_addresses: AT=10b with the IOVA; refused where translated requests are not allowed", async () => {
    const { host, ep, svc } = await setup("rid=0x18,ats", { allowTranslated: false });
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { forgeTranslatedAddresses: true } }), ctx);
    const r = await ep.dma.access({ kind: "read", iova: 0x1000n, length: 8 }, false);
    expect(host.log.dma[0].ops[0]).toMatchObject({ at: PcieAddressType.TRANSLATED, addr: 0x1000n });
    expect(host.counts.atsRequests).toBe(0);
    expect(r.fault?.kind).toBe(FaultKind.TRANSLATION_FORBIDDEN);
  });

  it("dma_outside_mappings: a workload's every 4th access leaves its region and faults at the host", async () => {
    const { host, svc } = await setup("rid=0x18", {}, 16 * 4096);
    await svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { dmaOutsideMappings: true } }), ctx);
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, { spec: { rid: RID, kind: WorkloadKind.STREAM_READ, iova: IOVA, length: 16n * 4096n, opSize: 4096, count: 16n } }),
      ctx,
    );
    const done = await waitWorkload(svc, workloadId);
    expect(done).toMatchObject({ state: WorkloadState.DONE, ops: 16n, faults: 4n });
    const outside = host.log.dma.flatMap((b) => b.ops).filter((o) => o.addr >= IOVA + 16n * 4096n);
    expect(outside.length).toBe(4);
    expect(outside.every((o) => o.addr >= IOVA + 16n * 4096n && o.addr < IOVA + 32n * 4096n)).toBe(true);
  });

  it("refuses misbehaviour the endpoint has no capability for", async () => {
    const { svc } = await setup("rid=0x18");
    const e = await Promise.resolve()
      .then(() => svc.setMisbehaviour(create(SetMisbehaviourRequestSchema, { rid: RID, misbehaviour: { dropAtcInvalidations: true } }), ctx))
      .catch((x: unknown) => x);
    expect((e as ErrnoError).errno).toBe("EOPNOTSUPP");
  });
});

async function startW(svc: ReturnType<typeof deviceService>, req: Parameters<ReturnType<typeof deviceService>["startWorkload"]>[0], c: CallContext): Promise<string> {
  return String((await svc.startWorkload(req, c)).workloadId);
}

async function waitWorkload(svc: ReturnType<typeof deviceService>, workloadId: string) {
  for (;;) {
    const s = (await svc.getWorkload(create(GetWorkloadRequestSchema, { workloadId }), ctx)).status;
    if (s && s.state !== WorkloadState.RUNNING) return s as NonNullable<typeof s> & { ops: bigint; faults: bigint; state: WorkloadState };
    await new Promise((r) => setTimeout(r, 10));
  }
}

describe("sequence numbers", () => {
  it("numbers device streams from 1 and starts again after a new registration", async () => {
    const { host, ep } = await setup("rid=0x18,ats");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, true);
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, false);
    expect(host.log.ats.map((a) => a.seq)).toEqual([1n]);
    expect(host.log.dma.map((d) => d.seq)).toEqual([1n, 2n]);
    await host.restart({ keepMappings: true });
    await host.waitFor(() => host.isRegistered(RID));
    await ep.whenRegistered();
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8 }, false);
    expect(host.log.dma.map((d) => d.seq)).toEqual([1n, 2n, 1n]);
    expect(host.seqErrors).toBe(0);
  });

  it("counts gaps and drops duplicates on host → device streams", async () => {
    const { host, ep, svc, bus } = await setup("rid=0x18,ats,pri");
    // atc-inv: seq 1, then 3 (2 lost); a duplicate of 3 is answered again.
    for (const seq of [1n, 3n, 3n]) {
      const c = await bus.request(subjects.atcInv(RID), AtcInvalidateSchema, { rid: RID, seq, entries: [{ itag: 1, addr: 0n, sizeLog2: 64 }] }, AtcInvalidateCompletionSchema);
      expect(c.seq).toBe(seq);
    }
    // pri-resp: a duplicate response must not be acted on twice.
    host.onPageRequestGroup = (rid, g) => {
      for (const p of g) host.map(rid, p.addr, 0x30_0000n, 4096);
      return PrgResponseCode.SUCCESS;
    };
    await ep.dma.access({ kind: "read", iova: 0xa0_0000n, length: 8 }, true);
    host.respondPri(RID, 99, PrgResponseCode.SUCCESS); // seq 2: an unexpected PRG index, in sequence
    const dup = { rid: RID, seq: 2n, prgIndex: 99, responseCode: PrgResponseCode.SUCCESS };
    bus.publish(subjects.priResp(RID), (await import("@iommufd/proto/bus")).PageGroupResponseSchema, dup);
    await bus.flush();
    await expect.poll(() => ep.tracked.priResp.counters.duplicates, { timeout: 2000, interval: 10 }).toBe(1);
    expect(ep.pri?.counters.unexpectedResponses).toBe(1);
    expect(ep.tracked.atcInv.counters).toMatchObject({ gaps: 1, duplicates: 1, missing: 1n });
    const st = await svc.stats(create(StatsRequestSchema, { rid: RID }), ctx);
    expect(st.endpoints?.[0].sequenceGaps).toBe(1n);
  });
});

describe("workloads", () => {
  it("VERIFY writes a seeded pattern and reads it back end to end", async () => {
    const { host, svc } = await setup("rid=0x18,ats,atc=8", {}, 64 * 4096);
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, {
        spec: { rid: RID, kind: WorkloadKind.VERIFY, iova: IOVA, length: 64n * 4096n, opSize: 8192, batchOps: 8, inFlight: 2, seed: 42n, useAts: true },
      }),
      ctx,
    );
    const s = await waitWorkload(svc, workloadId);
    expect(s).toMatchObject({ state: WorkloadState.DONE, ops: 64n, bytes: 2n * 64n * 4096n, faults: 0n, errors: 0n, verifyMismatches: 0n });
    expect(host.read(PA, 4)).not.toEqual(new Uint8Array(4));
    expect(Math.max(...host.log.dma.map((b) => b.ops.length))).toBeLessThanOrEqual(8);
  });

  it("VERIFY sees corruption on the way", async () => {
    const { host, svc } = await setup("rid=0x18", {}, 16 * 4096);
    // Corrupt one byte in host memory after the write pass, before it is read back.
    let corrupted = false;
    host.dmaGate = (b) => {
      if (!corrupted && b.ops[0].kind === 1) {
        corrupted = true;
        host.mem[Number(PA) + 5000] ^= 0xff;
      }
    };
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, { spec: { rid: RID, kind: WorkloadKind.VERIFY, iova: IOVA, length: 16n * 4096n, opSize: 4096, seed: 7n } }),
      ctx,
    );
    const s = await waitWorkload(svc, workloadId);
    expect(s.verifyMismatches).toBe(1n);
  });

  it("COPY moves the region to dst_iova", async () => {
    const { host, svc } = await setup("rid=0x18", {}, 32 * 4096);
    const src = Uint8Array.from({ length: 16 * 4096 }, (_, i) => (i * 13) & 0xff);
    host.write(PA, src);
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, {
        spec: { rid: RID, kind: WorkloadKind.COPY, iova: IOVA, length: 16n * 4096n, dstIova: IOVA + 16n * 4096n, opSize: 4096 },
      }),
      ctx,
    );
    const s = await waitWorkload(svc, workloadId);
    expect(s).toMatchObject({ state: WorkloadState.DONE, ops: 32n, faults: 0n });
    expect(host.read(PA + 16n * 4096n, src.length)).toEqual(src);
  });

  it("RANDOM and SCATTER_GATHER run to their count in batches", async () => {
    const { host, svc } = await setup("rid=0x18", {}, 64 * 4096);
    const a = await startW(
      svc,
      create(StartWorkloadRequestSchema, {
        spec: { rid: RID, kind: WorkloadKind.RANDOM, iova: IOVA, length: 64n * 4096n, opSize: 512, count: 500n, readPercent: 50, batchOps: 16, inFlight: 4, seed: 1n },
      }),
      ctx,
    );
    const ra = await waitWorkload(svc, a);
    expect(ra).toMatchObject({ state: WorkloadState.DONE, ops: 500n, faults: 0n, errors: 0n });
    const reads = host.log.dma.flatMap((b) => b.ops).filter((o) => o.kind === 1).length;
    expect(reads).toBeGreaterThan(150);
    expect(reads).toBeLessThan(350);
    const batches0 = host.counts.dmaBatches;
    const b = await startW(
      svc,
      create(StartWorkloadRequestSchema, {
        spec: {
          rid: RID,
          kind: WorkloadKind.SCATTER_GATHER,
          segments: [
            { iova: IOVA, length: 1024n },
            { iova: IOVA + 10n * 4096n, length: 4096n },
            { iova: IOVA + 40n * 4096n + 64n, length: 256n },
          ],
          opSize: 256,
          count: 100n,
          batchOps: 25,
          inFlight: 1,
        },
      }),
      ctx,
    );
    const rb = await waitWorkload(svc, b);
    expect(rb).toMatchObject({ state: WorkloadState.DONE, ops: 100n, faults: 0n });
    expect(host.counts.dmaBatches - batches0).toBe(4);
  });

  it("STREAM_WRITE runs until stopped; StopWorkload returns the final status", async () => {
    const { svc, ep } = await setup("rid=0x18", {}, 16 * 4096);
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, { spec: { rid: RID, kind: WorkloadKind.STREAM_WRITE, iova: IOVA, length: 16n * 4096n, opSize: 1024, pattern: enc("ab") } }),
      ctx,
    );
    expect((await svc.listEndpoints(create(ListEndpointsRequestSchema, {}), ctx)).endpoints?.[0].workloadIds).toEqual([workloadId]);
    await expect.poll(() => ep.counters.dmaOps, { timeout: 3000, interval: 10 }).toBeGreaterThan(100);
    const stopped = (await svc.stopWorkload(create(StopWorkloadRequestSchema, { workloadId }), ctx)).status;
    expect(stopped?.state).toBe(WorkloadState.STOPPED);
    expect(stopped?.ops).toBeGreaterThan(100n);
    expect(stopped?.latency?.count).toBe(stopped?.ops);
    expect(ep.workloadIds.size).toBe(0);
  });

  it("stop_on_fault ends the workload FAILED with the first fault", async () => {
    const { svc } = await setup("rid=0x18", {}, 4 * 4096);
    const workloadId = await startW(
      svc,
      create(StartWorkloadRequestSchema, { spec: { rid: RID, kind: WorkloadKind.STREAM_READ, iova: IOVA, length: 8n * 4096n, opSize: 4096, stopOnFault: true } }),
      ctx,
    );
    const s = await waitWorkload(svc, workloadId);
    expect(s.state).toBe(WorkloadState.FAILED);
    expect(s.firstFault?.inputAddress).toBe(IOVA + 4n * 4096n);
    expect(s.error).toMatch(/fault at 0x104000/);
  });
});

describe("control API", () => {
  it("Dma: READ, WRITE, FILL and COPY with counters", async () => {
    const { host, svc } = await setup("rid=0x18,ats,pasid=4", {}, 16 * 4096);
    const dma = (r: Parameters<typeof create<typeof DmaRequestSchema>>[1]) => svc.dma(create(DmaRequestSchema, { rid: RID, ...r }), ctx);
    expect((await dma({ kind: DmaKind.WRITE, iova: IOVA, data: enc("hello world"), useAts: true })).done).toBe(11n);
    const rd = await dma({ kind: DmaKind.READ, iova: IOVA, length: 11n, useAts: true });
    expect(new TextDecoder().decode(rd.data)).toBe("hello world");
    expect(rd).toMatchObject({ status: DmaStatus.OK, atcHits: 1, atcMisses: 0 });
    expect(rd.latencyNs).toBeGreaterThan(0n);
    await dma({ kind: DmaKind.FILL, iova: IOVA + 4096n, length: 10n, pattern: enc("xyz") });
    expect(new TextDecoder().decode(host.read(PA + 4096n, 10))).toBe("xyzxyzxyzx");
    const cp = await dma({ kind: DmaKind.COPY, srcIova: IOVA, iova: IOVA + 8192n, length: 11n });
    expect(cp).toMatchObject({ status: DmaStatus.OK, done: 11n });
    expect(new TextDecoder().decode(host.read(PA + 8192n, 11))).toBe("hello world");
  });

  it.each([
    [{ rid: 0x99, kind: DmaKind.READ, length: 1n }, "ENOENT"],
    [{ kind: DmaKind.UNSPECIFIED, length: 1n }, "EINVAL"],
    [{ kind: DmaKind.READ, length: 0n }, "EINVAL"],
    [{ kind: DmaKind.WRITE }, "EINVAL"],
    [{ kind: DmaKind.READ, iova: (1n << 64n) - 2n, length: 8n }, "EOVERFLOW"],
    [{ kind: DmaKind.READ, length: BigInt(32 << 20) }, "EINVAL"],
    [{ kind: DmaKind.READ, length: 8n, pasid: 16 }, "EINVAL"],
    [{ kind: DmaKind.READ, length: 8n, priv: true }, "EINVAL"],
    [{ kind: DmaKind.READ, length: 8n, pasid: 1, exec: true }, "EOPNOTSUPP"],
    [{ kind: DmaKind.READ, length: 8n, useAts: true }, "EOPNOTSUPP"],
  ])("Dma %o → %s", async (r, errno) => {
    const { svc } = await setup("rid=0x18,pasid=4");
    const e = await Promise.resolve()
      .then(() => svc.dma(create(DmaRequestSchema, { rid: RID, ...r }), ctx))
      .catch((x: unknown) => x);
    expect((e as ErrnoError).errno).toBe(errno);
  });

  it("Stats, ListEndpoints and unknown ids", async () => {
    const { svc, ep } = await setup("rid=0x18,ats,atc=32,pri,prq=4");
    await ep.dma.access({ kind: "read", iova: IOVA, length: 8192 }, true);
    const st = (await svc.stats(create(StatsRequestSchema, {}), ctx)).endpoints?.[0];
    expect(st).toMatchObject({ rid: RID, dmaOps: 1n, dmaBatches: 1n, bytesRead: 8192n, atcMisses: 2n, atsRequests: 2n, faults: 0n });
    expect(st?.latency?.count).toBe(1n);
    const list = (await svc.listEndpoints(create(ListEndpointsRequestSchema, {}), ctx)).endpoints ?? [];
    expect(list[0]).toMatchObject({ rid: RID, name: "ep0018", registered: true, iommuId: "fake0", ats: true, atcEntries: 32, pri: true, priOutstandingAllocation: 4 });
    for (const f of [
      (): unknown => svc.stats(create(StatsRequestSchema, { rid: 5 }), ctx),
      () => svc.getWorkload(create(GetWorkloadRequestSchema, { workloadId: "w999" }), ctx),
      () => svc.atcDump(create(AtcDumpRequestSchema, { rid: 5 }), ctx),
    ]) {
      const e = await Promise.resolve().then(f).catch((x: unknown) => x);
      expect((e as ErrnoError).errno).toBe("ENOENT");
    }
  });
});
