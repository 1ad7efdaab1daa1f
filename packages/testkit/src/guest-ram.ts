// A test client's view of a VM's guest RAM: page tables are built locally
// (packages/hw map helpers over a GPA-addressed memory) and the touched
// pages are written into the VM's real guest RAM on the host over the bus
// (iommu.v1.s.<session>.mem, at user VA = guest RAM mapping + GPA).
import { type MemResult, type PhysicalMemory, SparseMemory } from "@iommufd/hw";
import { type Bus, subjects } from "@iommufd/kit";
import { GuestMemBatchResultSchema, GuestMemBatchSchema, GuestMemOpKind } from "@iommufd/proto/bus";

export class GuestRam implements PhysicalMemory {
  readonly local: SparseMemory;
  private readonly dirty = new Set<bigint>();
  private seq = 0n;

  constructor(
    readonly bus: Bus,
    readonly sessionId: string,
    /** user VA where guest RAM (GPA 0) is mapped in the session */
    readonly userVa: bigint,
    paBits = 48,
  ) {
    this.local = new SparseMemory(paBits);
  }

  get paBits(): number {
    return this.local.paBits;
  }

  private touch(addr: bigint, length: number): void {
    for (let p = addr >> 12n; p <= (addr + BigInt(length) - 1n) >> 12n; p++) this.dirty.add(p);
  }

  read(addr: bigint, length: number): MemResult<Uint8Array> {
    return this.local.read(addr, length);
  }
  write(addr: bigint, data: Uint8Array): MemResult<void> {
    this.touch(addr, data.length);
    return this.local.write(addr, data);
  }
  read64(addr: bigint): MemResult<bigint> {
    return this.local.read64(addr);
  }
  write64(addr: bigint, value: bigint): MemResult<void> {
    this.touch(addr, 8);
    return this.local.write64(addr, value);
  }
  cas64(addr: bigint, expected: bigint, value: bigint): MemResult<bigint> {
    this.touch(addr, 8);
    return this.local.cas64(addr, expected, value);
  }

  /** Write every touched page to the VM's guest RAM; resolves once the host made them visible. */
  async flush(): Promise<void> {
    const ops = [...this.dirty].map((pfn) => {
      const r = this.local.read(pfn << 12n, 4096);
      return { kind: GuestMemOpKind.WRITE, userVa: this.userVa + (pfn << 12n), data: r.ok ? r.value : new Uint8Array(4096) };
    });
    this.dirty.clear();
    if (ops.length === 0) return;
    const res = await this.bus.request(subjects.mem(this.sessionId), GuestMemBatchSchema, { sessionId: this.sessionId, seq: ++this.seq, ops }, GuestMemBatchResultSchema);
    const bad = res.results.findIndex((r) => r.errno !== 0);
    if (bad >= 0) throw new Error(`guest RAM write ${bad} failed: errno ${res.results[bad]?.errno}`);
  }

  /** Read guest RAM as the host holds it (not the local copy). */
  async readRemote(gpa: bigint, length: number): Promise<Uint8Array> {
    const res = await this.bus.request(
      subjects.mem(this.sessionId),
      GuestMemBatchSchema,
      { sessionId: this.sessionId, seq: ++this.seq, ops: [{ kind: GuestMemOpKind.READ, userVa: this.userVa + gpa, length }] },
      GuestMemBatchResultSchema,
    );
    const r = res.results[0];
    if (!r || r.errno !== 0) throw new Error(`guest RAM read failed: errno ${r?.errno}`);
    return r.data;
  }
}
