// The invalidation queue of one VT-d unit, driven as Linux's dmar.c drives it
// (qi_submit_sync, qi_check_fault): 256-bit descriptors written at IQT, each
// batch closed by an invalidation wait descriptor (SW = 1) whose status write
// to host memory is the completion the driver looks for. The Vtd model
// executes a descriptor when it fetches it (writing IQT runs the queue), so
// context/PASID-cache and IOTLB invalidations are done when ringTail
// returns; only device-TLB invalidations complete later, when the device
// answers its PCIe Invalidate Request (the model's ATC port, wired here to
// DriverEnv.atcInvalidate).
//
// Ordering this file guarantees (and vtd.ts documents for its callers):
// - Descriptors execute in submission order; a batch's IOTLB-type work is
//   complete when submit() returns (the unit fetched it: IQH == IQT).
// - A batch's promise resolves when its wait descriptor completes, i.e.
//   after every device-TLB invalidation queued before that wait (this batch's
//   and every earlier batch's: VT-d waits complete in queue order).
// - Waits never set FN (fence): a slow device must not stall the IOTLB
//   flushes of later, synchronous batches.
// - Invalidation Time-out Error (FSTS.ITE): the unit abandons every pending
//   wait. The batch whose device did not answer fails with ETIMEDOUT; every
//   other abandoned batch is posted again (Linux's -EAGAIN restart).
// - Invalidation Queue Error (FSTS.IQE, a malformed descriptor: a driver
//   bug): the bad descriptor is replaced by a no-op wait, IQE cleared, and
//   its batch fails with EIO (qi_check_fault's recovery).

import {
  encodeInvDesc,
  FSTS_FIELDS,
  IQA_FIELDS,
  INV_DESC_TYPE,
  type AtcInvalidationRequest,
  VTD_REG,
  type Vtd,
  WAIT_INV_DESC,
  wordsToBytes,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import type { AtcInvalidation } from "./ops.js";

/** 256-bit descriptors (IQA.DW = 1, scalable mode). */
export const QI_DESC_BYTES = 32;
/** Status slots in the status page (4 bytes each). */
const STATUS_SLOTS = 1024;

const FSTS_IQE = 1n << BigInt(FSTS_FIELDS.IQE.lo);
const FSTS_ICE = 1n << BigInt(FSTS_FIELDS.ICE.lo);
const FSTS_ITE = 1n << BigInt(FSTS_FIELDS.ITE.lo);

/** What the queue needs from the driver: the unit, memory and the bus. */
export interface QiEnv {
  readonly vtd: Vtd;
  readonly write: (addr: bigint, bytes: Uint8Array) => void;
  readonly read32: (addr: bigint) => number;
  readonly atcInvalidate: (req: AtcInvalidation) => Promise<void>;
  readonly log: (text: string, fields: Record<string, unknown>) => void;
}

/** One batch of descriptors and its wait. */
export interface QiBatch {
  /** Resolves when the batch's wait completes; rejects ETIMEDOUT / EIO. */
  readonly promise: Promise<void>;
  /** The unit fetched and executed every descriptor (all but device-TLB completions) before submit returned. */
  readonly executed: boolean;
  /** Device-TLB invalidations in the batch (the promise waits for the devices). */
  readonly deviceTlb: number;
}

interface Pending {
  readonly descs: readonly bigint[][];
  readonly deviceTlb: number;
  seq: number;
  resolve: () => void;
  reject: (e: unknown) => void;
  promise: Promise<void>;
  executed: boolean;
  failed?: ErrnoError;
}

export interface QiCounters {
  batches: number;
  descriptors: number;
  atcRequests: number;
  atcCompletions: number;
  atcTimeouts: number;
  restarts: number;
  iqe: number;
}

export class InvalidationQueue {
  readonly counters: QiCounters = { batches: 0, descriptors: 0, atcRequests: 0, atcCompletions: 0, atcTimeouts: 0, restarts: 0, iqe: 0 };
  /** Queue size in bytes (2^QS pages). */
  readonly bytes: number;
  private tail = 0;
  private seq = 0;
  /** Pending batches in queue order (their waits not yet completed). */
  private readonly pending: Pending[] = [];
  /** Which batch wrote each descriptor slot (to attribute device-TLB requests). */
  private readonly owner: (Pending | undefined)[];
  /** Device-TLB invalidations forwarded and not acknowledged: model tag → batch and request. */
  private readonly live = new Map<number, { batch: Pending | undefined; req: AtcInvalidationRequest }>();

  constructor(
    private readonly env: QiEnv,
    /** Queue base (4 KiB aligned, 2^qs pages). */
    readonly base: bigint,
    readonly qs: number,
    /** The status page (one 32-bit slot per batch). */
    readonly statusPage: bigint,
  ) {
    this.bytes = 4096 << qs;
    this.owner = new Array<Pending | undefined>(this.bytes / QI_DESC_BYTES);
  }

  /** IQA value: base | DW | QS (Linux: `virt_to_phys(qi->desc) | DMA_IQA_DW | qs`). */
  get iqa(): bigint {
    return this.base | (1n << BigInt(IQA_FIELDS.DW.lo)) | BigInt(this.qs);
  }

  /**
   * Queue `descs` followed by a wait (SW = 1) and ring the tail. Everything
   * but device-TLB completions has executed when this returns (`executed`);
   * the promise settles when the wait completes.
   */
  submit(descs: readonly bigint[][]): QiBatch {
    let resolve!: () => void;
    let reject!: (e: unknown) => void;
    const promise = new Promise<void>((res, rej) => {
      resolve = res;
      reject = rej;
    });
    // Callers that do not await (unmap's device-TLB part) observe failures
    // through their own bookkeeping; never leave a rejection unhandled.
    promise.catch(() => undefined);
    const deviceTlb = descs.filter((d) => isDeviceTlb(d)).length;
    const p: Pending = { descs, deviceTlb, seq: 0, resolve, reject, promise, executed: false };
    this.counters.batches++;
    this.post(p);
    return { promise, executed: p.executed, deviceTlb };
  }

  /** Settles when every batch submitted so far has completed or failed. */
  async drain(): Promise<void> {
    await Promise.allSettled(this.pending.map((p) => p.promise));
  }

  /** Batches whose wait has not completed. */
  get pendingCount(): number {
    return this.pending.length;
  }

  /** Device-TLB invalidations forwarded to devices and not yet answered. */
  get outstandingAtc(): number {
    return this.live.size;
  }

  // ---- the model's ATC port ------------------------------------------------

  /**
   * The unit forwards a device-TLB invalidation (called synchronously while
   * it runs the queue). IQH has already moved past the descriptor, which
   * tells which batch it belongs to.
   */
  onAtcInvalidate(req: AtcInvalidationRequest): void {
    const head = Number(this.env.vtd.readReg(VTD_REG.IQH));
    const idx = ((head - QI_DESC_BYTES + this.bytes) % this.bytes) / QI_DESC_BYTES;
    const batch = this.owner[idx];
    this.live.set(req.tag, { batch, req });
    this.counters.atcRequests++;
    const global = req.size >= 1n << 63n;
    const msg: AtcInvalidation = {
      rid: req.sid,
      ...(req.pasid !== undefined ? { pasid: req.pasid } : {}),
      addr: global ? 0n : req.base,
      size: req.size,
      global,
    };
    let p: Promise<void>;
    try {
      p = this.env.atcInvalidate(msg);
    } catch (e) {
      p = Promise.reject(e);
    }
    p.then(
      () => this.atcCompleted(req.tag),
      (e: unknown) => this.atcTimedOut(req.tag, e),
    );
  }

  private atcCompleted(tag: number): void {
    const l = this.live.get(tag);
    if (!l) return; // abandoned by an earlier time-out: the unit forgot the tag
    this.live.delete(tag);
    this.counters.atcCompletions++;
    this.env.vtd.atcInvalidationDone(tag, l.req.sid);
    this.checkFault();
    this.poll();
  }

  private atcTimedOut(tag: number, cause: unknown): void {
    const l = this.live.get(tag);
    if (!l) return;
    this.counters.atcTimeouts++;
    // The unit's time-out: FSTS.ITE, every pending wait abandoned, the queue
    // stops until ITE is cleared. Every forwarded request is forgotten.
    this.env.vtd.atcInvalidationTimeout(tag);
    this.live.clear();
    const vtd = this.env.vtd;
    const itesid = Number((vtd.readReg(VTD_REG.IQERCD) >> 32n) & 0xffffn);
    vtd.writeReg(VTD_REG.FSTS, FSTS_ITE, 4);
    this.env.log("invalidation time-out error (ITE) cleared", {
      sid: itesid,
      pasid: l.req.pasid,
      cause: cause instanceof Error ? cause.message : String(cause),
    });
    const abandoned = this.pending.splice(0);
    for (const p of abandoned) {
      if (p.failed) {
        p.reject(p.failed);
      } else if (p === l.batch) {
        p.reject(new ErrnoError("ETIMEDOUT", `device ${hexRid(l.req.sid)} did not complete its device-TLB invalidation`));
      } else {
        // Abandoned through no fault of its own: post it again.
        this.counters.restarts++;
        this.post(p);
      }
    }
  }

  // ---- queue mechanics -----------------------------------------------------

  private post(p: Pending): void {
    this.seq = this.seq >= 0xffff_fffe ? 1 : this.seq + 1;
    p.seq = this.seq;
    const slot = this.statusSlot(p.seq);
    this.env.write(slot, new Uint8Array(4)); // QI_IN_USE
    this.pending.push(p);
    const wait = encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, { SW: 1, SDATA: p.seq, SADDR: slot >> 2n });
    const all = [...p.descs, wait];
    let ok = true;
    for (const d of all) {
      if ((this.tail + QI_DESC_BYTES) % this.bytes === Number(this.env.vtd.readReg(VTD_REG.IQH))) {
        // Full: let the unit consume what is queued (it runs synchronously).
        this.ringTail();
        if ((this.tail + QI_DESC_BYTES) % this.bytes === Number(this.env.vtd.readReg(VTD_REG.IQH))) {
          ok = false;
          break;
        }
      }
      const words = [...d];
      while (words.length < 4) words.push(0n);
      this.env.write(this.base + BigInt(this.tail), wordsToBytes(words.slice(0, 4)));
      this.owner[this.tail / QI_DESC_BYTES] = p;
      this.tail = (this.tail + QI_DESC_BYTES) % this.bytes;
      this.counters.descriptors++;
    }
    this.ringTail();
    if (!ok) {
      this.fail(p, new ErrnoError("EIO", "invalidation queue stalled"));
      return;
    }
    p.executed = p.failed === undefined && Number(this.env.vtd.readReg(VTD_REG.IQH)) === this.tail;
    this.poll();
  }

  private ringTail(): void {
    this.env.vtd.writeReg(VTD_REG.IQT, BigInt(this.tail));
    this.checkFault();
  }

  private statusSlot(seq: number): bigint {
    return this.statusPage + BigInt((seq % STATUS_SLOTS) * 4);
  }

  /** Complete every batch whose wait wrote its status. */
  private poll(): void {
    for (const p of [...this.pending]) {
      if (this.env.read32(this.statusSlot(p.seq)) !== p.seq) continue;
      this.remove(p);
      if (p.failed) p.reject(p.failed);
      else p.resolve();
    }
  }

  private remove(p: Pending): void {
    const i = this.pending.indexOf(p);
    if (i >= 0) this.pending.splice(i, 1);
  }

  private fail(p: Pending, e: ErrnoError): void {
    this.remove(p);
    p.reject(e);
  }

  /**
   * qi_check_fault for IQE and ICE. IQE: the descriptor at IQH is malformed;
   * overwrite it with a no-op wait, clear IQE (the unit resumes from IQH)
   * and fail its batch with EIO. ICE: a completion the unit did not expect;
   * clear and log.
   */
  private checkFault(): void {
    const vtd = this.env.vtd;
    for (let guard = 0; guard < this.bytes / QI_DESC_BYTES; guard++) {
      const fsts = vtd.readReg(VTD_REG.FSTS, 4);
      if ((fsts & FSTS_ICE) !== 0n) {
        this.env.log("invalidation completion error (ICE)", { iqercd: vtd.readReg(VTD_REG.IQERCD) });
        vtd.writeReg(VTD_REG.FSTS, FSTS_ICE, 4);
      }
      if ((fsts & FSTS_IQE) === 0n) return;
      this.counters.iqe++;
      const head = Number(vtd.readReg(VTD_REG.IQH));
      const bad = this.owner[head / QI_DESC_BYTES];
      this.env.log("invalidation queue error (IQE)", { iqercd: vtd.readReg(VTD_REG.IQERCD), head });
      this.env.write(this.base + BigInt(head), wordsToBytes(encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, {})));
      if (bad && !bad.failed) bad.failed = new ErrnoError("EIO", "invalidation queue error: malformed descriptor");
      vtd.writeReg(VTD_REG.FSTS, FSTS_IQE, 4);
    }
  }
}

function isDeviceTlb(d: readonly bigint[]): boolean {
  const w = d[0] ?? 0n;
  const type = Number((w & 0xfn) | (((w >> 9n) & 7n) << 4n));
  return type === INV_DESC_TYPE.DEVICE_TLB || type === INV_DESC_TYPE.PASID_DEVICE_TLB;
}

function hexRid(rid: number): string {
  const bus = (rid >> 8) & 0xff;
  const dev = (rid >> 3) & 0x1f;
  const fn = rid & 7;
  return `${bus.toString(16).padStart(2, "0")}:${dev.toString(16).padStart(2, "0")}.${fn}`;
}
