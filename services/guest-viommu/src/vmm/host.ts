// The VMM's connections to a real host-iommufd: guest RAM over NATS
// (bus.v1 GuestMemBatch at the session's user VAs), the vEVENTQ / FAULT
// streams and page responses over NATS, and the device inventory from the
// host's Admin service.
import { type Bus, ErrnoError, type ServiceClient, errnoName, subjects } from "@iommufd/kit";
import { GuestMemBatchResultSchema, GuestMemBatchSchema, GuestMemOpKind, IopfRecordSchema, PageResponseSchema, VeventRecordSchema } from "@iommufd/proto/bus";
import type { Admin } from "@iommufd/proto/iommufd";
import { type GuestRam, type GuestRamOp, type RamCounters, type RamRegion, inRam } from "../guest/ram.js";
import type { HostEventPort, HostInventory } from "./client.js";

/** Largest payload one GuestMemBatch carries (NATS' default max_payload is 1 MiB). */
const MAX_BATCH_BYTES = 512 * 1024;

/**
 * Guest RAM as the host holds it: GPA → the session's user VA (where the VMM
 * mmapped its RAM memfd), one NATS request per batch. The host replies only
 * when every write is visible to the hardware.
 */
export class BusGuestRam implements GuestRam {
  readonly counters: RamCounters = { batches: 0, bytes: 0 };
  private seq = 0n;

  constructor(
    private readonly bus: Bus,
    readonly sessionId: string,
    readonly userVa: bigint,
    readonly regions: readonly RamRegion[],
    private readonly timeoutMs = 5000,
  ) {}

  private toUserVa(gpa: bigint, length: number): bigint {
    if (!inRam(this.regions, gpa, BigInt(length))) throw new ErrnoError("EFAULT", `GPA 0x${gpa.toString(16)}+${length} is not RAM`);
    let off = 0n;
    for (const r of this.regions) {
      if (gpa >= r.gpa && gpa < r.gpa + r.size) return this.userVa + off + (gpa - r.gpa);
      off += r.size;
    }
    throw new ErrnoError("EFAULT", "no region");
  }

  async batch(ops: readonly GuestRamOp[]): Promise<Uint8Array[]> {
    const out: Uint8Array[] = [];
    let chunk: GuestRamOp[] = [];
    let bytes = 0;
    const send = async () => {
      if (chunk.length === 0) return;
      const req = chunk;
      chunk = [];
      bytes = 0;
      this.counters.batches++;
      const seq = ++this.seq;
      const res = await this.bus.request(
        subjects.mem(this.sessionId),
        GuestMemBatchSchema,
        {
          sessionId: this.sessionId,
          seq,
          ops: req.map((op) =>
            op.kind === "read"
              ? { kind: GuestMemOpKind.READ, userVa: this.toUserVa(op.gpa, op.length), length: op.length }
              : { kind: GuestMemOpKind.WRITE, userVa: this.toUserVa(op.gpa, op.data.length), data: op.data },
          ),
        },
        GuestMemBatchResultSchema,
        { timeoutMs: this.timeoutMs },
      );
      if (res.seq !== seq) throw new ErrnoError("EIO", `guest memory reply for batch ${res.seq}, expected ${seq}`);
      req.forEach((op, i) => {
        const r = res.results[i];
        if (!r) throw new ErrnoError("EIO", "short guest memory reply");
        if (r.errno !== 0) throw new ErrnoError(errnoName(r.errno) ?? "EIO", `guest memory ${op.kind} at GPA 0x${op.gpa.toString(16)} failed`);
        out.push(op.kind === "read" ? r.data : new Uint8Array(0));
      });
    };
    for (const op of ops) {
      const n = op.kind === "read" ? op.length : op.data.length;
      this.counters.bytes += n;
      if (bytes + n > MAX_BATCH_BYTES) await send();
      chunk.push(op);
      bytes += n;
    }
    await send();
    return out;
  }
}

/** vEVENTQ / FAULT records from the host and page responses to it, on NATS (bus.v1 events.proto). */
export function busEventPort(bus: Bus): HostEventPort {
  let seq = 0n;
  return {
    subscribeVeventq(sessionId, veventqId, handler) {
      const sub = bus.subscribe(subjects.veventq(sessionId, veventqId), VeventRecordSchema, (m) => handler(m));
      return () => sub.unsubscribe();
    },
    subscribeFault(sessionId, faultId, handler) {
      const sub = bus.subscribe(subjects.fault(sessionId, faultId), IopfRecordSchema, (m) => handler(m));
      return () => sub.unsubscribe();
    },
    pageResponse(sessionId, faultId, cookie, code) {
      bus.publish(subjects.faultResp(sessionId, faultId), PageResponseSchema, { sessionId, faultId, seq: ++seq, cookie, code });
    },
  };
}

/** Device facts from the host's Admin.Inventory (RID, IOMMU instance, PASID / ATS / PRI). */
export function adminInventory(admin: Pick<ServiceClient<typeof Admin>, "inventory">): HostInventory {
  return {
    async lookup(sel) {
      const inv = await admin.inventory({});
      const d = inv.devices.find((x) => (sel.name !== undefined ? x.name === sel.name : x.rid === sel.rid));
      if (!d) return undefined;
      return { rid: d.rid, name: d.name, iommuId: d.iommuId, maxPasidLog2: d.maxPasidLog2, ats: d.ats, pri: d.pri };
    },
  };
}
