// device.v1.Device: the control API of a device-sim process, a thin layer
// over DeviceSim. Errors follow device.proto: unknown rid or workload →
// ENOENT, bad argument → EINVAL (arithmetic overflow → EOVERFLOW), a
// capability the endpoint lacks → EOPNOTSUPP, host unreachable → ENOTCONN
// (from the engine: not registered in time, no responder) or ETIMEDOUT.
import type { MessageInitShape } from "@bufbuild/protobuf";
import { ErrnoError, type ServiceImpl } from "@iommufd/kit";
import { DmaStatus } from "@iommufd/proto/bus";
import {
  type AtcEntrySchema,
  type Device,
  type DmaRequest,
  DmaKind,
  type EndpointSchema,
  type EndpointStatsSchema,
  type Misbehaviour,
  type MisbehaviourSchema,
} from "@iommufd/proto/device";
import type { AccessResult } from "./dma.js";
import type { Endpoint, MisbehaviourSettings } from "./endpoint.js";
import type { DeviceSim } from "./sim.js";

/** Largest single Dma RPC (bytes). */
export const MAX_DMA_RPC_BYTES = 16 << 20;
const U64 = 1n << 64n;

function misbehaviourOf(m: MisbehaviourSettings): MessageInitShape<typeof MisbehaviourSchema> {
  return { ...m };
}

export function endpointInfo(ep: Endpoint): MessageInitShape<typeof EndpointSchema> {
  const c = ep.cfg;
  return {
    rid: ep.rid,
    name: c.name,
    iommuId: ep.grant?.iommuId ?? "",
    registered: ep.registered,
    maxPasidLog2: c.maxPasidLog2,
    pasidExec: c.pasidExec,
    pasidPriv: c.pasidPriv,
    ats: c.ats,
    atcEntries: c.ats ? c.atcEntries : 0,
    stu: ep.grant?.stu ?? 0,
    pri: c.pri,
    priOutstandingCapacity: c.pri ? c.priOutstandingCapacity : 0,
    priOutstandingAllocation: ep.pri?.allocation ?? 0,
    maxBatch: ep.maxBatch,
    misbehaviour: misbehaviourOf(ep.misbehaviour),
    workloadIds: [...ep.workloadIds],
  };
}

export function endpointStats(ep: Endpoint): MessageInitShape<typeof EndpointStatsSchema> {
  const c = ep.counters;
  const p = ep.pri?.counters;
  return {
    rid: ep.rid,
    dmaOps: BigInt(c.dmaOps),
    dmaBatches: BigInt(c.dmaBatches),
    bytesRead: BigInt(c.bytesRead),
    bytesWritten: BigInt(c.bytesWritten),
    latency: ep.latency.toProto(),
    atcHits: BigInt(c.atcHits),
    atcMisses: BigInt(c.atcMisses),
    atcEvictions: BigInt(ep.atc?.cache.stats.evictions ?? 0),
    atcInvalidations: BigInt(c.atcInvalidations),
    atsRequests: BigInt(c.atsRequests),
    atsFailures: BigInt(c.atsFailures),
    faults: BigInt(c.faults),
    retries: BigInt(c.retries),
    pageRequests: BigInt(p?.pageRequests ?? 0),
    pageRequestsOutstanding: ep.pri?.outstanding ?? 0,
    prgSuccess: BigInt(p?.prgSuccess ?? 0),
    prgInvalid: BigInt(p?.prgInvalid ?? 0),
    prgFailure: BigInt(p?.prgFailure ?? 0),
    unsupportedRequests: BigInt(c.unsupportedRequests),
    completerAborts: BigInt(c.completerAborts),
    sequenceGaps: BigInt(ep.sequenceGaps),
  };
}

function checkPrefix(ep: Endpoint, pasid: number | undefined, priv: boolean, exec: boolean): void {
  if (pasid !== undefined) {
    if (ep.cfg.maxPasidLog2 === 0) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no PASID capability`);
    if (pasid >= 2 ** ep.cfg.maxPasidLog2) throw new ErrnoError("EINVAL", `pasid ${pasid} ≥ 2^${ep.cfg.maxPasidLog2}`);
  }
  // Privileged and Execute Requested travel in the PASID TLP prefix (hw-formats §4.3).
  if ((priv || exec) && pasid === undefined) throw new ErrnoError("EINVAL", "priv / exec need a pasid (they travel in the PASID prefix)");
  if (priv && !ep.cfg.pasidPriv) throw new ErrnoError("EOPNOTSUPP", `${ep.name} does not support PASID Privileged Mode`);
  if (exec && !ep.cfg.pasidExec) throw new ErrnoError("EOPNOTSUPP", `${ep.name} does not support PASID Execute`);
}

/** Validate a Dma request in the kernel's order: flags/kind → arithmetic → semantics → capability. */
function checkDma(ep: Endpoint, r: DmaRequest): void {
  if (r.kind === DmaKind.UNSPECIFIED || DmaKind[r.kind] === undefined) throw new ErrnoError("EINVAL", `dma kind ${r.kind}`);
  const len = r.kind === DmaKind.WRITE ? BigInt(r.data.length) : r.length;
  if (r.iova + len > U64 || (r.kind === DmaKind.COPY && r.srcIova + len > U64)) throw new ErrnoError("EOVERFLOW", "range wraps the address space");
  if (r.kind === DmaKind.WRITE) {
    if (r.data.length === 0) throw new ErrnoError("EINVAL", "WRITE without data");
    if (r.length !== 0n && r.length !== BigInt(r.data.length)) throw new ErrnoError("EINVAL", "WRITE length differs from data length");
  } else if (r.length === 0n) throw new ErrnoError("EINVAL", `${DmaKind[r.kind]} of 0 bytes`);
  if (len > BigInt(MAX_DMA_RPC_BYTES)) throw new ErrnoError("EINVAL", `length ${len} above ${MAX_DMA_RPC_BYTES}`);
  if (r.exec && r.kind !== DmaKind.READ) throw new ErrnoError("EINVAL", "exec is for reads");
  checkPrefix(ep, r.pasid, r.priv, r.exec);
  if (r.useAts && !ep.cfg.ats) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no ATS capability`);
}

function fillBuffer(pattern: Uint8Array, length: number): Uint8Array {
  const out = new Uint8Array(length);
  if (pattern.length === 0) return out;
  for (let i = 0; i < length; i += pattern.length) out.set(pattern.subarray(0, Math.min(pattern.length, length - i)), i);
  return out;
}

async function doDma(ep: Endpoint, r: DmaRequest) {
  const t0 = process.hrtime.bigint();
  const base = { pasid: r.pasid, priv: r.priv, exec: r.exec };
  let res: AccessResult;
  const stats = { atcHits: 0, atcMisses: 0, pageRequests: 0, retries: 0 };
  const add = (x: AccessResult) => {
    stats.atcHits += x.atcHits;
    stats.atcMisses += x.atcMisses;
    stats.pageRequests += x.pageRequests;
    stats.retries += x.retries;
  };
  switch (r.kind) {
    case DmaKind.READ:
      res = await ep.dma.access({ ...base, kind: "read", iova: r.iova, length: Number(r.length) }, r.useAts);
      break;
    case DmaKind.WRITE:
      res = await ep.dma.access({ ...base, kind: "write", iova: r.iova, length: r.data.length, data: r.data }, r.useAts);
      break;
    case DmaKind.FILL: {
      const data = fillBuffer(r.pattern, Number(r.length));
      res = await ep.dma.access({ ...base, kind: "write", iova: r.iova, length: data.length, data }, r.useAts);
      break;
    }
    default: {
      // COPY: read all of the source first, then write it (correct for overlapping ranges too).
      const src = await ep.dma.access({ ...base, exec: false, kind: "read", iova: r.srcIova, length: Number(r.length) }, r.useAts);
      add(src);
      if (src.status !== DmaStatus.OK) {
        res = { ...src, done: 0, data: new Uint8Array(0) };
        break;
      }
      res = await ep.dma.access({ ...base, exec: false, kind: "write", iova: r.iova, length: src.data.length, data: src.data }, r.useAts);
      res.data = new Uint8Array(0);
    }
  }
  add(res);
  return {
    status: res.status,
    data: r.kind === DmaKind.READ ? res.data : new Uint8Array(0),
    done: BigInt(res.done),
    fault: res.fault,
    ...stats,
    latencyNs: process.hrtime.bigint() - t0,
  };
}

function checkMisbehaviour(ep: Endpoint, m: Misbehaviour | undefined): MisbehaviourSettings {
  const s: MisbehaviourSettings = {
    ignoreAtcInvalidations: m?.ignoreAtcInvalidations ?? false,
    dropAtcInvalidations: m?.dropAtcInvalidations ?? false,
    atcCompletionDelayMs: m?.atcCompletionDelayMs ?? 0,
    exceedPriCredits: m?.exceedPriCredits ?? false,
    dmaOutsideMappings: m?.dmaOutsideMappings ?? false,
    forgeTranslatedAddresses: m?.forgeTranslatedAddresses ?? false,
  };
  if (s.atcCompletionDelayMs > 600_000) throw new ErrnoError("EINVAL", "atc_completion_delay_ms above 600000");
  if ((s.ignoreAtcInvalidations || s.dropAtcInvalidations || s.atcCompletionDelayMs > 0) && !ep.cfg.ats)
    throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no ATS capability (no ATC to misbehave with)`);
  if (s.exceedPriCredits && !ep.cfg.pri) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no PRI capability`);
  return s;
}

/** The device.v1.Device implementation. */
export function deviceService(sim: DeviceSim): ServiceImpl<typeof Device> {
  return {
    listEndpoints: () => ({ endpoints: [...sim.endpoints.values()].map(endpointInfo) }),

    dma: async (r) => {
      const ep = sim.endpoint(r.rid);
      checkDma(ep, r);
      return doDma(ep, r);
    },

    startWorkload: (r) => ({ workloadId: sim.startWorkload(r.spec).id }),

    stopWorkload: async (r) => {
      const w = sim.workload(r.workloadId);
      await w.stop();
      return { status: w.status() };
    },

    getWorkload: (r) => ({ status: sim.workload(r.workloadId).status() }),

    stats: (r) => ({
      endpoints: r.rid === undefined ? [...sim.endpoints.values()].map(endpointStats) : [endpointStats(sim.endpoint(r.rid))],
    }),

    atcDump: (r) => {
      const ep = sim.endpoint(r.rid);
      if (!ep.atc) throw new ErrnoError("EOPNOTSUPP", `${ep.name} has no ATS capability`);
      const entries: MessageInitShape<typeof AtcEntrySchema>[] = ep.atc.dump().map(({ entry: e, hits }) => ({
        pasid: e.pasid ?? 0,
        pasidValid: e.pasid !== undefined,
        untranslatedAddr: e.untranslated,
        translatedAddr: e.translated,
        sizeLog2: e.sizeShift,
        r: e.r,
        w: e.w,
        u: e.untranslatedOnly ?? false,
        n: e.noSnoop ?? false,
        exe: e.exe,
        priv: e.priv,
        global: e.global,
        hits: BigInt(hits),
      }));
      return { entries, capacity: ep.atc.cache.capacity };
    },

    setMisbehaviour: (r) => {
      const ep = sim.endpoint(r.rid);
      ep.misbehaviour = checkMisbehaviour(ep, r.misbehaviour);
      ep.log.warn({ misbehaviour: ep.misbehaviour }, "misbehaviour set");
      return { misbehaviour: misbehaviourOf(ep.misbehaviour) };
    },
  };
}
