// FAULT (IOPF queue) and VEVENTQ (the kernel's eventq.c): queues with an fd.
// Records are published on NATS as they are queued (session delivery "nats")
// or wait for FaultRead / VeventqRead (delivery "read", for conformance tests
// of depth, LOST_EVENTS, cookies and ESPIPE) and are published as read.
// The fd holds a reference on its object (DESTROY is EBUSY until Close(fd)).
import { ErrnoError, check, subjects } from "@iommufd/kit";
import { IopfRecordSchema, PageResponseSchema, VeventRecordSchema } from "@iommufd/proto/bus";
import { type Iommufd, PageResponseCode, PgfaultFlags, VeventqFlag, VeventqType } from "@iommufd/proto/iommufd";
import type { Subscription } from "nats";
import type { UcmdTable } from "../core/dispatch.js";
import type { Host } from "../core/host.js";
import { IommufdObject } from "../core/object.js";
import type { Session } from "../core/session.js";
import type { IopfSink, PciDevice } from "../drivers/ops.js";
import type { Device } from "./device.js";
import type { Viommu } from "./viommu.js";

const PGFAULT_BYTES = 40;
const RESPONSE_BYTES = 8;
const VEVENT_HEADER_BYTES = 8;
const INT_MAX = 0x7fff_ffff;
const U32_MAX = 0xffff_ffff;

/** Payload bytes of one vEVENT by queue type (no length field in the record). */
export function veventPayloadBytes(type: number): number {
  return type === VeventqType.ARM_SMMUV3 ? 32 : type === VeventqType.TEGRA241_CMDQV ? 16 : 0;
}

interface PageRequestRec {
  pasid?: number;
  addr: bigint;
  perm: number;
  last: boolean;
}

interface FaultGroup {
  device: Device;
  dev: PciDevice;
  pasid?: number;
  grpid: number;
  requests: PageRequestRec[];
  cookie: number;
}

export class Fault extends IommufdObject {
  readonly type = "FAULT" as const;
  /** Groups being assembled (LAST not seen yet), by device + pasid + grpid. */
  private readonly partial = new Map<string, FaultGroup>();
  /** Complete groups not yet read. */
  private readonly queued: FaultGroup[] = [];
  /** Read (cookie assigned), awaiting a response. */
  private readonly outstanding = new Map<number, FaultGroup>();
  private nextCookie = 1;
  private seq = 0n;
  private respSub?: Subscription;
  fd = -1;

  constructor(
    readonly session: Session,
    readonly host: Host,
  ) {
    super();
  }

  /** The sink a HWPT allocated with FAULT_ID_VALID hands to its driver. */
  sink(): IopfSink {
    const session = this.session;
    return {
      pageRequest: (req) => {
        const device = session.objects.objects().find((o) => o.type === "DEVICE" && (o as Device).dev === req.dev) as Device | undefined;
        if (!device || this.dying) {
          req.dev.iommu.pageResponse(req.dev, req.pasid, req.grpid, "invalid");
          return;
        }
        const key = `${device.id}/${req.pasid ?? "-"}/${req.grpid}`;
        let g = this.partial.get(key);
        if (!g) this.partial.set(key, (g = { device, dev: req.dev, pasid: req.pasid, grpid: req.grpid, requests: [], cookie: 0 }));
        g.requests.push({ pasid: req.pasid, addr: req.addr, perm: req.perm, last: req.last });
        if (!req.last) return;
        this.partial.delete(key);
        this.queued.push(g);
        if (session.eventDelivery === "nats") this.deliver(Number.MAX_SAFE_INTEGER);
      },
    };
  }

  private allocCookie(): number {
    for (let i = 0; i < U32_MAX; i++) {
      const c = this.nextCookie;
      this.nextCookie = c >= U32_MAX ? 1 : c + 1;
      if (!this.outstanding.has(c)) return c;
    }
    throw new ErrnoError("ENOSPC", "no free fault cookie");
  }

  private records(g: FaultGroup) {
    return g.requests.map((r) => ({
      flags: (r.pasid !== undefined ? PgfaultFlags.PASID_VALID : 0) | (r.last ? PgfaultFlags.LAST_PAGE : 0),
      devId: g.device.id,
      pasid: r.pasid ?? 0,
      grpid: g.grpid,
      perm: r.perm,
      addr: r.addr,
      length: 0,
      cookie: g.cookie,
    }));
  }

  /** read(): whole groups that fit in `count` bytes; each read group gets a cookie and is published. */
  deliver(count: number) {
    const out: ReturnType<Fault["records"]> = [];
    while (this.queued.length > 0) {
      const g = this.queued[0] as FaultGroup;
      if ((out.length + g.requests.length) * PGFAULT_BYTES > count) break;
      this.queued.shift();
      g.cookie = this.allocCookie();
      this.outstanding.set(g.cookie, g);
      const recs = this.records(g);
      out.push(...recs);
      for (const r of recs) {
        this.host.bus?.publish(subjects.fault(this.session.id, this.id), IopfRecordSchema, {
          sessionId: this.session.id,
          faultId: this.id,
          seq: ++this.seq,
          ...r,
        });
      }
    }
    return out;
  }

  /** write() of one response: unknown code or cookie → EINVAL; completes the whole group. */
  respond(cookie: number, code: number): void {
    check(code === PageResponseCode.SUCCESS || code === PageResponseCode.INVALID, "EINVAL", `response code ${code}`);
    const g = this.outstanding.get(cookie);
    if (!g) throw new ErrnoError("EINVAL", `cookie ${cookie} is not outstanding`);
    this.outstanding.delete(cookie);
    g.dev.iommu.pageResponse(g.dev, g.pasid, g.grpid, code === PageResponseCode.SUCCESS ? "success" : "invalid");
  }

  /** Detach/replace away from a fault HWPT: answer INVALID to every group of that attachment. */
  abortDevice(device: Device, pasid: number): void {
    const match = (g: FaultGroup) => g.device === device && (g.pasid ?? 0) === pasid;
    for (const [k, g] of this.partial) if (match(g)) this.partial.delete(k);
    for (const g of this.queued.filter(match)) {
      this.queued.splice(this.queued.indexOf(g), 1);
      g.dev.iommu.pageResponse(g.dev, g.pasid, g.grpid, "invalid");
    }
    for (const [c, g] of this.outstanding) {
      if (!match(g)) continue;
      this.outstanding.delete(c);
      g.dev.iommu.pageResponse(g.dev, g.pasid, g.grpid, "invalid");
    }
  }

  /** Subscribe to guest responses on NATS (…fault.<id>.resp). */
  listen(): void {
    this.respSub = this.host.bus?.subscribe(subjects.faultResp(this.session.id, this.id), PageResponseSchema, (m) => {
      void this.session
        .serialize(() => this.respond(m.cookie, m.code))
        .catch((e) => this.host.log.warn({ session: this.session.id, fault: this.id, err: String(e) }, "bad page response"));
    });
  }

  release(): void {
    this.respSub?.unsubscribe();
    for (const g of [...this.queued, ...this.outstanding.values()]) g.dev.iommu.pageResponse(g.dev, g.pasid, g.grpid, "invalid");
    this.queued.length = 0;
    this.outstanding.clear();
    this.partial.clear();
  }

  override describe() {
    return { fd: this.fd, queued: this.queued.length, outstanding: this.outstanding.size };
  }
}

interface VeventRec {
  flags: number;
  sequence: number;
  payload: bigint[];
}

export class Veventq extends IommufdObject {
  readonly type = "VEVENTQ" as const;
  private readonly queue: VeventRec[] = [];
  /** Normal events queued (the LOST_EVENTS marker does not count). */
  private numEvents = 0;
  private seq = 0;
  fd = -1;
  /** Events dropped on overflow (also visible as sequence gaps). */
  lost = 0;

  /** Takes a reference on the vIOMMU (dropped in release). */
  constructor(
    readonly session: Session,
    readonly host: Host,
    readonly viommu: Viommu,
    readonly veventqType: number,
    readonly depth: number,
  ) {
    super();
    viommu.users++;
  }

  private nextSeq(): number {
    const s = this.seq;
    this.seq = (this.seq + 1) & INT_MAX;
    return s;
  }

  /** A driver reports an event (§8): drop + LOST_EVENTS marker at the tail when full. */
  report(payload: bigint[]): void {
    const tail = this.queue[this.queue.length - 1];
    const markerAtTail = tail !== undefined && (tail.flags & VeventqFlag.LOST_EVENTS) !== 0;
    if (this.numEvents >= this.depth) {
      this.lost++;
      if (markerAtTail) this.queue.pop();
      this.queue.push({ flags: VeventqFlag.LOST_EVENTS, sequence: this.nextSeq(), payload: [] });
    } else {
      if (markerAtTail) this.queue.pop();
      this.queue.push({ flags: 0, sequence: this.nextSeq(), payload });
      this.numEvents++;
    }
    if (this.session.eventDelivery === "nats") this.deliver(Number.MAX_SAFE_INTEGER);
  }

  /** read(): whole records while header + payload fit in `count`; each is published as it is read. */
  deliver(count: number): VeventRec[] {
    const size = VEVENT_HEADER_BYTES + veventPayloadBytes(this.veventqType);
    const out: VeventRec[] = [];
    let used = 0;
    while (this.queue.length > 0) {
      const r = this.queue[0] as VeventRec;
      const n = r.flags & VeventqFlag.LOST_EVENTS ? VEVENT_HEADER_BYTES : size;
      if (used + n > count) break;
      this.queue.shift();
      if (!(r.flags & VeventqFlag.LOST_EVENTS)) this.numEvents--;
      used += n;
      out.push(r);
      this.host.bus?.publish(subjects.veventq(this.session.id, this.id), VeventRecordSchema, {
        sessionId: this.session.id,
        veventqId: this.id,
        viommuId: this.viommu.id,
        type: this.veventqType,
        sequence: r.sequence,
        flags: r.flags,
        payload: r.payload,
      });
    }
    return out;
  }

  release(): void {
    this.viommu.veventqs.delete(this.veventqType);
    this.viommu.users--;
    this.queue.length = 0;
  }

  override describe() {
    return { viommu_id: this.viommu.id, type: this.veventqType, depth: this.depth, queued: this.numEvents, lost: this.lost, fd: this.fd };
  }
}

function fdObject<T extends Fault | Veventq>(session: Session, fd: number, kind: "fault" | "veventq"): T {
  const e = session.fd(fd);
  if (e.kind !== kind) throw new ErrnoError("EBADF", `fd ${fd} is not a ${kind} fd`);
  return session.objects.get<T>(e.objectId, kind === "fault" ? "FAULT" : "VEVENTQ");
}

/** Give the object an fd that holds a reference until Close(fd). */
function openFd(session: Session, obj: Fault | Veventq, kind: "fault" | "veventq"): number {
  obj.users++;
  obj.fd = session.allocFd({ kind, objectId: obj.id, close: () => obj.users-- });
  return obj.fd;
}

export const eventqHandlers: UcmdTable<typeof Iommufd> = {
  faultQueueAlloc(req, ucmd) {
    check(req.flags === 0, "EOPNOTSUPP", "flags must be 0");
    const fault = ucmd.alloc(new Fault(ucmd.session, ucmd.host));
    ucmd.point("fault: fd");
    const fd = openFd(ucmd.session, fault, "fault");
    fault.listen();
    return { outFaultId: fault.id, outFaultFd: fd };
  },

  veventqAlloc(req, ucmd) {
    check(req.flags === 0 && req.reserved === 0, "EOPNOTSUPP", "flags and reserved must be 0");
    check(req.type !== VeventqType.DEFAULT, "EOPNOTSUPP", "type DEFAULT is reserved");
    check(req.veventqDepth !== 0, "EINVAL", "veventq_depth is 0");
    const viommu = ucmd.session.objects.get<Viommu>(req.viommuId, "VIOMMU");
    if (viommu.veventqs.has(req.type)) throw new ErrnoError("EEXIST", `a vEVENTQ of type ${req.type} exists on this vIOMMU`);
    const q = ucmd.alloc(new Veventq(ucmd.session, ucmd.host, viommu, req.type, req.veventqDepth));
    viommu.veventqs.set(req.type, q);
    ucmd.point("veventq: fd");
    const fd = openFd(ucmd.session, q, "veventq");
    return { outVeventqId: q.id, outVeventqFd: fd };
  },

  faultRead(req, { session }) {
    const fault = fdObject<Fault>(session, req.fd, "fault");
    if (req.pos !== 0n || req.count % PGFAULT_BYTES !== 0) throw new ErrnoError("ESPIPE", "fault reads need pos 0 and a multiple of 40 bytes");
    const faults = fault.deliver(req.count);
    return { count: faults.length * PGFAULT_BYTES, faults };
  },

  faultWrite(req, { session }) {
    const fault = fdObject<Fault>(session, req.fd, "fault");
    const responses = req.raw.length > 0 ? parseResponses(req.raw) : req.responses.map((r) => ({ cookie: r.cookie, code: r.code }));
    const bytes = req.raw.length > 0 ? req.raw.length : responses.length * RESPONSE_BYTES;
    if (req.pos !== 0n || bytes % RESPONSE_BYTES !== 0) throw new ErrnoError("ESPIPE", "fault writes need pos 0 and a multiple of 8 bytes");
    let done = 0;
    for (const r of responses) {
      try {
        fault.respond(r.cookie, r.code);
      } catch (e) {
        if (done === 0) throw e;
        break;
      }
      done++;
    }
    return { count: done * RESPONSE_BYTES };
  },

  veventqRead(req, { session }) {
    const q = fdObject<Veventq>(session, req.fd, "veventq");
    if (req.pos !== 0n) throw new ErrnoError("ESPIPE", "vEVENTQ reads need pos 0");
    const recs = q.deliver(req.count);
    const size = (r: VeventRec) => VEVENT_HEADER_BYTES + (r.flags & VeventqFlag.LOST_EVENTS ? 0 : veventPayloadBytes(q.veventqType));
    return {
      count: recs.reduce((n, r) => n + size(r), 0),
      events: recs.map((r) => ({
        flags: r.flags,
        sequence: r.sequence,
        payload: r.flags & VeventqFlag.LOST_EVENTS ? { case: undefined } : { case: "armSmmuv3" as const, value: { evt: r.payload } },
      })),
    };
  },
};

function parseResponses(raw: Uint8Array): { cookie: number; code: number }[] {
  const v = new DataView(raw.buffer, raw.byteOffset, raw.byteLength);
  const out: { cookie: number; code: number }[] = [];
  for (let off = 0; off + RESPONSE_BYTES <= raw.length; off += RESPONSE_BYTES) out.push({ cookie: v.getUint32(off, true), code: v.getUint32(off + 4, true) });
  return out;
}
