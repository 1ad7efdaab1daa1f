// The generic machinery of iommufd objects (the kernel's main.c): the object
// base class with its "users" count, and the per-session object table.
// IDs are allocated lowest-free-first from 1 within 31 bits; a new object's ID
// is reserved first and published only when the whole call succeeded
// (reserve-then-publish), so a failed call never leaves an object behind.
import { ErrnoError } from "@iommufd/kit";

export const OBJ_TYPES = [
  "IOAS",
  "DEVICE",
  "HWPT_PAGING",
  "HWPT_NESTED",
  "FAULT",
  "VIOMMU",
  "VDEVICE",
  "VEVENTQ",
  "HW_QUEUE",
] as const;
export type ObjType = (typeof OBJ_TYPES)[number];

const ID_LIMIT = 0x7fff_ffff;

export abstract class IommufdObject {
  abstract readonly type: ObjType;
  id = 0;
  /** References: the table's own (1 while published) plus one per holder; DESTROY needs exactly 1. */
  users = 1;
  /** Set while DESTROY or close tears the object down, so lookups fail with ENOENT. */
  dying = false;

  /** Release every reference this object holds on others (called once, on destroy or abort). */
  abstract release(): void;

  /** Attributes for the admin object dump. */
  describe(): Record<string, string | number | boolean | bigint> {
    return {};
  }
}

type Slot = { kind: "reserved" } | { kind: "object"; obj: IommufdObject } | { kind: "tombstone" };

export class ObjectTable {
  private readonly slots = new Map<number, Slot>();
  /** Freed IDs below `next`, kept sorted so the lowest is reused first. */
  private readonly free: number[] = [];
  private next = 1;

  /** Reserve the lowest free ID (not yet visible to lookups). */
  reserve(): number {
    let id: number;
    if (this.free.length > 0) id = this.free.shift() as number;
    else {
      if (this.next > ID_LIMIT) throw new ErrnoError("ENOSPC", "object IDs exhausted");
      id = this.next++;
    }
    this.slots.set(id, { kind: "reserved" });
    return id;
  }

  /** Make a reserved ID visible. */
  publish(id: number, obj: IommufdObject): void {
    const s = this.slots.get(id);
    if (s?.kind !== "reserved") throw new Error(`publish of unreserved id ${id}`);
    obj.id = id;
    this.slots.set(id, { kind: "object", obj });
  }

  /** Give back a reserved ID whose call failed. */
  unreserve(id: number): void {
    if (this.slots.get(id)?.kind !== "reserved") return;
    this.slots.delete(id);
    this.release(id);
  }

  private release(id: number): void {
    // insert keeping `free` sorted
    let lo = 0;
    let hi = this.free.length;
    while (lo < hi) {
      const mid = (lo + hi) >> 1;
      if ((this.free[mid] as number) < id) lo = mid + 1;
      else hi = mid;
    }
    this.free.splice(lo, 0, id);
  }

  /** Typed lookup (iommufd_get_object): a missing ID, a wrong type or a dying object → ENOENT. */
  get<T extends IommufdObject>(id: number, ...types: ObjType[]): T {
    const s = this.slots.get(id);
    if (s?.kind !== "object" || s.obj.dying || (types.length > 0 && !types.includes(s.obj.type))) {
      throw new ErrnoError("ENOENT", `no ${types.length ? types.join("/") : "object"} with id ${id}`);
    }
    return s.obj as T;
  }

  /** Lookup without throwing. */
  find(id: number): IommufdObject | undefined {
    const s = this.slots.get(id);
    return s?.kind === "object" && !s.obj.dying ? s.obj : undefined;
  }

  /** IOMMU_DESTROY: only when the table holds the last reference (else EBUSY). */
  destroy(id: number): void {
    const obj = this.get(id);
    if (obj.users !== 1) throw new ErrnoError("EBUSY", `${obj.type} ${id} is still in use (${obj.users - 1} references)`);
    this.remove(obj);
  }

  /** Remove a published object and release what it holds (no users check: the caller owns that decision). */
  remove(obj: IommufdObject, opts: { tombstone?: boolean } = {}): void {
    obj.dying = true;
    if (opts.tombstone) this.slots.set(obj.id, { kind: "tombstone" });
    else {
      this.slots.delete(obj.id);
      this.release(obj.id);
    }
    obj.users = 0;
    obj.release();
  }

  /** Every live object (for dumps and close). */
  objects(): IommufdObject[] {
    const out: IommufdObject[] = [];
    for (const s of this.slots.values()) if (s.kind === "object" && !s.obj.dying) out.push(s.obj);
    return out;
  }

  get size(): number {
    return this.objects().length;
  }

  /**
   * Closing the fd: destroy objects whose only reference is the table's,
   * leaves first, until nothing is left; tombstones are dropped. Objects still
   * referenced from outside the session (never expected) are forced last.
   */
  destroyAll(): void {
    for (;;) {
      const live = this.objects();
      if (live.length === 0) break;
      const leaves = live.filter((o) => o.users === 1);
      for (const o of leaves.length > 0 ? leaves : live) if (!o.dying) this.remove(o);
    }
    this.slots.clear();
    this.free.length = 0;
    this.next = 1;
  }
}
