// Guest RAM as the guest kernel (and the VMM on its behalf) sees it:
// batched scatter/gather at guest physical addresses. A batch resolves only
// once every write in it is visible to the hardware (DESIGN §3): code that
// must order a table write before a register write or an invalidation
// awaits the batch first. Over the wire this is bus.v1.GuestMemBatch at the
// session's user VAs (vmm/ram.ts); in-process (tests) it is ByteMapRam.
import { PAGE_SIZE, SparseMemory, bytesToWords, wordsToBytes } from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";

/** One access of a batch. */
export type GuestRamOp = { kind: "read"; gpa: bigint; length: number } | { kind: "write"; gpa: bigint; data: Uint8Array };

/** A contiguous range of guest physical memory that is RAM. */
export interface RamRegion {
  readonly gpa: bigint;
  readonly size: bigint;
}

export interface GuestRam {
  /** The RAM ranges of the guest physical address space. */
  readonly regions: readonly RamRegion[];
  /**
   * Run the ops in order; resolves with the data of each read (an empty
   * array for writes) when every write is visible to the hardware. Any
   * failing op rejects the whole batch with its errno (EFAULT outside RAM).
   */
  batch(ops: readonly GuestRamOp[]): Promise<Uint8Array[]>;
}

/** Is [gpa, gpa + length) inside one RAM region? */
export function inRam(regions: readonly RamRegion[], gpa: bigint, length: bigint): boolean {
  return regions.some((r) => gpa >= r.gpa && gpa + length <= r.gpa + r.size);
}

export async function ramRead(ram: GuestRam, gpa: bigint, length: number): Promise<Uint8Array> {
  const [d] = await ram.batch([{ kind: "read", gpa, length }]);
  return d as Uint8Array;
}

export async function ramWrite(ram: GuestRam, gpa: bigint, data: Uint8Array): Promise<void> {
  await ram.batch([{ kind: "write", gpa, data }]);
}

export async function ramReadWords(ram: GuestRam, gpa: bigint, count: number): Promise<bigint[]> {
  return bytesToWords(await ramRead(ram, gpa, count * 8));
}

export async function ramWriteWords(ram: GuestRam, gpa: bigint, words: readonly bigint[]): Promise<void> {
  await ramWrite(ram, gpa, wordsToBytes(words));
}

/** Write op of 64-bit words (for building batches). */
export function wordsOp(gpa: bigint, words: readonly bigint[]): GuestRamOp {
  return { kind: "write", gpa, data: wordsToBytes(words) };
}

/** Counters every GuestRam implementation keeps (Stats.mem_batches / mem_bytes). */
export interface RamCounters {
  batches: number;
  bytes: number;
}

/**
 * Guest RAM in this process, on a sparse byte map (packages/hw SparseMemory,
 * addressed by GPA). The guest/VMM interface tests use it with no host; the
 * hardware models of packages/hw can walk `mem` directly to check what the
 * guest wrote.
 */
export class ByteMapRam implements GuestRam {
  readonly mem = new SparseMemory(52);
  readonly counters: RamCounters = { batches: 0, bytes: 0 };
  /** Every batch, in order (tests check ordering). */
  readonly log: GuestRamOp[][] = [];
  keepLog = false;

  constructor(readonly regions: readonly RamRegion[]) {}

  async batch(ops: readonly GuestRamOp[]): Promise<Uint8Array[]> {
    this.counters.batches++;
    if (this.keepLog) this.log.push([...ops]);
    const out: Uint8Array[] = [];
    for (const op of ops) {
      const len = op.kind === "read" ? op.length : op.data.length;
      this.counters.bytes += len;
      if (!inRam(this.regions, op.gpa, BigInt(len))) throw new ErrnoError("EFAULT", `GPA 0x${op.gpa.toString(16)}+${len} is not RAM`);
      if (op.kind === "read") {
        const r = this.mem.read(op.gpa, op.length);
        if (!r.ok) throw new ErrnoError("EFAULT", `read at 0x${op.gpa.toString(16)}`);
        out.push(r.value);
      } else {
        const r = this.mem.write(op.gpa, op.data);
        if (!r.ok) throw new ErrnoError("EFAULT", `write at 0x${op.gpa.toString(16)}`);
        out.push(new Uint8Array(0));
      }
    }
    return out;
  }
}

export { PAGE_SIZE };
