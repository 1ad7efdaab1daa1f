// The access path of an endpoint: one device access (read or write of a
// buffer at an IOVA, with an optional PASID) becomes bus operations.
//
//   untranslated (no ATS, or use_ats off): one AT=00b op per piece; the
//     host's IOMMU translates it and reports faults.
//   ATS: look the range up in the ATC; hits become AT=10b (translated) ops
//     with no round trip; misses go out as ATS translation requests, batched
//     with everything else asked at the same time; usable completions are
//     cached and used. A completion with R = W = 0 (or lacking the needed
//     permission) is "not present": with PRI the engine sends a page request
//     group for those pages, waits for the page group response and, on
//     Success, translates again once; Invalid Request / Response Failure /
//     timeout, or a second miss, end the access with a fault reported to the
//     caller. Without PRI (or PRI disabled) those pages go untranslated, so
//     the host's IOMMU faults them and the fault comes back from the host.
//     UR means ATS is not permitted for the stream: untranslated requests.
//
// Ops of one access are pushed into the engine's Batcher in one go, so they
// share DmaBatches with each other and with concurrent accesses; the Batcher
// keeps several batches in flight. Every translated op holds an ATC "use"
// until the replies of all ops of its access have arrived (atc-port.ts: what an Invalidate Completion
// waits for). Nothing between the final ATC/completion check and the use
// registration awaits, so no invalidation can slip in between.
import { create } from "@bufbuild/protobuf";
import { ErrnoError } from "@iommufd/kit";
import {
  AtsCompletionStatus,
  type AtsTranslationCompletion,
  DmaOpKind,
  type DmaOpResult,
  DmaStatus,
  FaultKind,
  FaultRoute,
  PcieAddressType,
  type TranslationFault,
  TranslationFaultSchema,
} from "@iommufd/proto/bus";
import { type AtcUse, type AtsRecord, completionRange } from "./atc-port.js";
import { Batcher } from "./batcher.js";
import type { DmaItem, Endpoint } from "./endpoint.js";
import type { PageWant, PriOutcome } from "./pri.js";

export type AccessKind = "read" | "write";

/** One device access. */
export interface Access {
  kind: AccessKind;
  iova: bigint;
  /** Bytes (for writes, data.length). */
  length: number;
  data?: Uint8Array;
  /** PASID prefix; undefined = none. */
  pasid?: number;
  priv?: boolean;
  exec?: boolean;
}

export interface AccessResult {
  /** OK, or the status of the first piece that did not complete. */
  status: DmaStatus;
  /** Reads: the bytes read (the first `done` bytes). */
  data: Uint8Array;
  /** Bytes completed before the access stopped. */
  done: number;
  fault?: TranslationFault;
  atcHits: number;
  atcMisses: number;
  pageRequests: number;
  retries: number;
}

/** A run of the access with one address type. */
interface Piece {
  off: number;
  len: number;
  at: PcieAddressType;
  addr: bigint;
  uses: AtcUse[];
}

/** Where the access stops (a fault decided on the device side, or a Completer Abort from ATS). */
interface Terminal {
  off: number;
  status: DmaStatus;
  fault?: TranslationFault;
}

interface Built {
  pieces: Piece[];
  needAts: bigint[];
  needPri: PageWant[];
  terminal?: Terminal;
}

/** Largest single DmaOp (pieces are split to it). */
export const MAX_OP_BYTES = 256 * 1024;
/** Translation rounds before unresolved pages go untranslated (invalidation storms). */
const MAX_ROUNDS = 6;
const EMPTY = new Uint8Array(0);
const NO_HELD = new Map<bigint, AtsRecord>();

function permits(p: { r: boolean; w: boolean; exe: boolean; priv: boolean }, a: Access): boolean {
  if (a.kind === "write") {
    if (!p.w) return false;
  } else if (!p.r || (a.exec && !p.exe)) return false;
  return !(a.priv && !p.priv);
}

function concat(parts: Uint8Array[], total: number): Uint8Array {
  // A plain Uint8Array view (bytes decoded from the bus may be Node Buffers).
  if (parts.length === 1) return new Uint8Array(parts[0].buffer, parts[0].byteOffset, parts[0].byteLength);
  const out = new Uint8Array(total);
  let o = 0;
  for (const p of parts) {
    out.set(p, o);
    o += p.length;
  }
  return out;
}

function priFault(a: Access, addr: bigint, c: AtsTranslationCompletion, outcome: PriOutcome): TranslationFault {
  const f = c.fault ? create(TranslationFaultSchema, c.fault) : create(TranslationFaultSchema, { level: -1 });
  if (f.kind === FaultKind.UNSPECIFIED) f.kind = c.r || c.w ? FaultKind.PERMISSION : FaultKind.TRANSLATION;
  f.inputAddress = addr;
  f.write = a.kind === "write";
  f.exec = !!a.exec;
  f.priv = !!a.priv;
  f.route = FaultRoute.IOPF;
  f.detail =
    outcome === "success"
      ? "page still not present after a page group response with Success (retried once)"
      : `page request group ended: ${outcome}${c.fault?.detail ? `; ATS: ${c.fault.detail}` : ""}`;
  return f;
}

export class DmaEngine {
  readonly batcher: Batcher<DmaItem, DmaOpResult>;

  constructor(
    private readonly ep: Endpoint,
    private readonly want: { maxItems: number; maxInFlight: number },
  ) {
    this.batcher = new Batcher<DmaItem, DmaOpResult>({
      maxItems: Math.min(want.maxItems, ep.maxBatch),
      maxBytes: ep.maxBatchBytes,
      maxInFlight: want.maxInFlight,
      sizeOf: (i) => 48 + Math.max(i.op.data?.length ?? 0, i.op.length ?? 0),
      send: (items) => ep.sendDmaBatch(items),
    });
  }

  /** Perform one access; a whole-request failure (ENOTCONN, ETIMEDOUT, …) rejects with ErrnoError. */
  async access(a: Access, useAts: boolean): Promise<AccessResult> {
    this.batcher.configure({ maxItems: Math.min(this.want.maxItems, this.ep.maxBatch), maxBytes: this.ep.maxBatchBytes });
    const res: AccessResult = { status: DmaStatus.OK, data: EMPTY, done: 0, atcHits: 0, atcMisses: 0, pageRequests: 0, retries: 0 };
    if (a.length === 0) return res;
    for (let attempt = 0; ; attempt++) {
      try {
        await this.once(a, useAts, res);
        break;
      } catch (e) {
        // The host forgot the device (it restarted): register again and redo the access once, from the ATC lookup on.
        if (attempt === 0 && e instanceof ErrnoError && e.errno === "ENODEV") {
          await this.ep.whenRegistered();
          continue;
        }
        throw e;
      }
    }
    if (res.status === DmaStatus.FAULT) this.ep.counters.faults++;
    return res;
  }

  private async once(a: Access, useAts: boolean, res: AccessResult): Promise<void> {
    const whole = (at: PcieAddressType): Piece[] => [{ off: 0, len: a.length, at, addr: a.iova, uses: [] }];
    if (this.ep.misbehaviour.forgeTranslatedAddresses) {
      // Misbehaviour: AT=10b with the untranslated address, no ATS asked.
      return this.send(a, whole(PcieAddressType.TRANSLATED), undefined, res);
    }
    if (!useAts || !this.ep.atc) return this.send(a, whole(PcieAddressType.UNTRANSLATED), undefined, res);
    // Fast path: everything hits the ATC (no await between the lookups and the send).
    const first = this.build(a, NO_HELD, { countStats: true, fallback: false }, res);
    if (first.needAts.length === 0 && first.needPri.length === 0) return this.send(a, first.pieces, first.terminal, res);
    this.releaseUses(first.pieces);
    const b = await this.translate(a, res);
    return this.send(a, b.pieces, b.terminal, res);
  }

  private releaseUses(pieces: Piece[]): void {
    const atc = this.ep.atc;
    if (!atc) return;
    for (const p of pieces) for (const u of p.uses) atc.endUse(u);
  }

  /** Resolve the access into pieces through ATC, ATS and PRI (see the file comment); the first ATC pass was counted already. */
  private async translate(a: Access, res: AccessResult): Promise<Built> {
    const ep = this.ep;
    const atc = ep.atc as NonNullable<Endpoint["atc"]>;
    const held = new Map<bigint, AtsRecord>();
    let priOutcome: PriOutcome | undefined;
    try {
      for (let round = 0; ; round++) {
        const b = this.build(a, held, { countStats: false, priOutcome, fallback: round >= MAX_ROUNDS - 1 }, res);
        if (b.needAts.length === 0 && b.needPri.length === 0) return b;
        this.releaseUses(b.pieces);
        if (b.needAts.length > 0) {
          // Each record is held (one ref) until the finally below, or until replaced by a newer request for its page.
          const recs = ep.requestTranslations(
            b.needAts.map((page) => ({ pasid: a.pasid, page, noWrite: a.kind === "read", priv: !!a.priv, exec: !!a.exec })),
          );
          recs.forEach((r, i) => {
            const old = held.get(b.needAts[i]);
            if (old) atc.releaseAts(old);
            held.set(b.needAts[i], r);
          });
          await Promise.all(recs.map((r) => r.ready));
          // Right after the await (no invalidation can run in between): cache what is usable and unpoisoned.
          for (const r of recs) {
            const c = r.completion;
            if (r.poisoned || !c || c.status !== AtsCompletionStatus.SUCCESS || (!c.r && !c.w)) continue;
            atc.insert(a.pasid, r.page, c);
          }
          continue;
        }
        // Pages not present: one page request group round trip, then translate again once.
        const pri = ep.pri as NonNullable<Endpoint["pri"]>;
        res.pageRequests += b.needPri.length;
        priOutcome = await pri.request(b.needPri);
        if (priOutcome === "reset") throw new ErrnoError("ENODEV", "registration changed while waiting for a page group response");
        if (priOutcome === "success") {
          res.retries++;
          ep.counters.retries++;
          for (const p of b.needPri) {
            const page = p.addr & ~(ep.stuBytes - 1n);
            const rec = held.get(page);
            if (rec) atc.releaseAts(rec);
            held.delete(page);
          }
        }
      }
    } finally {
      for (const r of held.values()) atc.releaseAts(r);
    }
  }

  /**
   * One synchronous pass over the access: ATC hits and fresh completions
   * become pieces (registering their uses); the rest is listed as needing
   * ATS or PRI. `priOutcome` set = PRI was already used: a page still not
   * present is the access's fault. `fallback` = send unresolved pages
   * untranslated.
   */
  private build(
    a: Access,
    held: Map<bigint, AtsRecord>,
    o: { countStats: boolean; priOutcome?: PriOutcome; fallback: boolean },
    res: AccessResult,
  ): Built {
    const ep = this.ep;
    const atc = ep.atc as NonNullable<Endpoint["atc"]>;
    const unit = ep.stuBytes;
    const pri = ep.pri;
    const priUsable = !!pri && pri.enabled && (pri.allocation > 0 || ep.misbehaviour.exceedPriCredits);
    const out: Built = { pieces: [], needAts: [], needPri: [] };
    const len = BigInt(a.length);
    const add = (off: bigint, n: bigint, at: PcieAddressType, addr: bigint, use?: AtcUse) => {
      const last = out.pieces[out.pieces.length - 1];
      const o2 = Number(off);
      // Merge with the previous piece when the bus addresses continue (fewer ops per batch).
      if (last && last.at === at && last.off + last.len === o2 && last.addr + BigInt(last.len) === addr && last.len + Number(n) <= MAX_OP_BYTES) {
        last.len += Number(n);
        if (use) last.uses.push(use);
        return;
      }
      out.pieces.push({ off: o2, len: Number(n), at, addr, uses: use ? [use] : [] });
    };
    let off = 0n;
    while (off < len) {
      const addr = a.iova + off;
      const page = addr & ~(unit - 1n);
      const rec = held.get(page);
      if (rec?.error && !rec.poisoned) throw rec.error;
      const c = rec && !rec.poisoned ? rec.completion : undefined;
      if (!c) {
        const e = atc.lookup(a.pasid, addr);
        if (e && (e.untranslatedOnly || permits(e, a))) {
          if (o.countStats) {
            res.atcHits++;
            ep.counters.atcHits++;
          }
          const eEnd = e.untranslated + (1n << BigInt(e.sizeShift));
          const n = eEnd - addr < len - off ? eEnd - addr : len - off;
          if (e.untranslatedOnly) add(off, n, PcieAddressType.UNTRANSLATED, addr);
          // Use taken here; dropped by send() once every op of the access has its reply, or by releaseUses() if this pass is discarded.
          else add(off, n, PcieAddressType.TRANSLATED, e.translated + (addr - e.untranslated), atc.beginUse(a.pasid, addr, addr + n, e.global));
          off += n;
          continue;
        }
        if (o.countStats) {
          res.atcMisses++;
          ep.counters.atcMisses++;
        }
      }
      const unitEnd = page + unit;
      let n = unitEnd - addr < len - off ? unitEnd - addr : len - off;
      if (!c) {
        if (o.fallback) add(off, n, PcieAddressType.UNTRANSLATED, addr);
        else out.needAts.push(page);
        off += n;
        continue;
      }
      if (c.status === AtsCompletionStatus.UR || c.u) {
        // ATS not permitted for the stream, or "untranslated access only".
        add(off, n, PcieAddressType.UNTRANSLATED, addr);
      } else if (c.status !== AtsCompletionStatus.SUCCESS) {
        out.terminal = { off: Number(off), status: DmaStatus.CA };
        break;
      } else if (permits(c, a)) {
        const r = completionRange(page, c);
        const tBase = c.translatedAddr & ~(r.end - r.start - 1n);
        n = r.end - addr < len - off ? r.end - addr : len - off;
        // Use taken here; dropped as above.
        add(off, n, PcieAddressType.TRANSLATED, tBase + (addr - r.start), atc.beginUse(a.pasid, addr, addr + n, c.global));
      } else if (o.priOutcome !== undefined) {
        out.terminal = { off: Number(off), status: DmaStatus.FAULT, fault: priFault(a, addr, c, o.priOutcome) };
        break;
      } else if (priUsable) {
        out.needPri.push({ addr: page, pasid: a.pasid, r: a.kind === "read", w: a.kind === "write", x: !!a.exec, priv: !!a.priv });
      } else {
        // No PRI: the IOMMU sees an untranslated request, faults it and reports it (host log / vEVENTQ).
        add(off, n, PcieAddressType.UNTRANSLATED, addr);
      }
      off += n;
    }
    return out;
  }

  /** Push the pieces (split to MAX_OP_BYTES, or less under a small NATS max_payload) in one go and fold the results. */
  private async send(a: Access, pieces: Piece[], terminal: Terminal | undefined, res: AccessResult): Promise<void> {
    const ops: { off: number; len: number; p: Promise<DmaOpResult> }[] = [];
    const gen = this.ep.gen;
    const read = a.kind === "read";
    const maxOp = Math.min(MAX_OP_BYTES, this.ep.maxBatchBytes);
    for (const pc of pieces) {
      const parts: { off: number; len: number; addr: bigint }[] = [];
      for (let o = 0; o < pc.len; o += maxOp) parts.push({ off: pc.off + o, len: Math.min(maxOp, pc.len - o), addr: pc.addr + BigInt(o) });
      const pushed = parts.map((pt) =>
        this.batcher.push({
          op: {
            kind: read ? DmaOpKind.READ : DmaOpKind.WRITE,
            addr: pt.addr,
            pasid: a.pasid ?? 0,
            pasidValid: a.pasid !== undefined,
            at: pc.at,
            priv: !!a.priv,
            exec: read && !!a.exec,
            length: pt.len,
            data: read ? EMPTY : (a.data as Uint8Array).subarray(pt.off, pt.off + pt.len),
          },
          gen,
        }),
      );
      parts.forEach((pt, i) => ops.push({ off: pt.off, len: pt.len, p: pushed[i] }));
    }
    const settled = await Promise.allSettled(ops.map((o) => o.p));
    // The translations stay in use until every op of the access has its reply (or failed).
    this.releaseUses(pieces);
    const failed = settled.find((s) => s.status === "rejected");
    if (failed) throw (failed as PromiseRejectedResult).reason;
    const chunks: Uint8Array[] = [];
    let done = 0;
    res.status = DmaStatus.OK;
    res.fault = undefined;
    let stopped = false;
    for (let i = 0; i < ops.length; i++) {
      const r = (settled[i] as PromiseFulfilledResult<DmaOpResult>).value;
      if (r.status === DmaStatus.OK) {
        done += ops[i].len;
        if (read) chunks.push(r.data);
        continue;
      }
      res.status = r.status === DmaStatus.UNSPECIFIED ? DmaStatus.UR : r.status;
      res.fault = r.fault;
      done += r.done;
      stopped = true;
      break;
    }
    if (!stopped && terminal) {
      res.status = terminal.status;
      res.fault = terminal.fault;
    }
    res.done = done;
    res.data = read ? concat(chunks, chunks.reduce((s, c) => s + c.length, 0)) : EMPTY;
  }
}
