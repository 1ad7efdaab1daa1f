// Memory views: a PhysicalMemory seen through a page translation. Used for a
// guest-physical view of host memory (stage-2 translated: the guest builds
// its stage-1 tables with map at GPAs), and by tests to back one address
// space with scattered, non-contiguous pages (§7 ruling 1).

import { ByteMemory, type MemResult, type PhysicalMemory } from "../memory.js";
import { type StageConfig, READ, WRITE } from "../translation.js";
import { walkStage } from "./walk.js";

/** Translate a page-aligned-or-not address; undefined = not mapped (the access aborts). */
export type AddressTranslator = (addr: bigint, write: boolean) => bigint | undefined;

/**
 * A PhysicalMemory whose addresses go through `translate` page by page
 * (`pageShift`, default 4 KiB) before reaching `backing`. Unmapped pages
 * abort with "external"; the backing memory's own aborts pass through.
 */
export class TranslatedMemory extends ByteMemory {
  private readonly pageSize: bigint;

  constructor(
    readonly backing: PhysicalMemory,
    private readonly translate: AddressTranslator,
    readonly paBits = 52,
    readonly pageShift = 12,
  ) {
    super();
    this.pageSize = 1n << BigInt(pageShift);
  }

  private xlate(addr: bigint, write: boolean): bigint | undefined {
    if (addr < 0n || addr >> BigInt(this.paBits) !== 0n) return undefined;
    return this.translate(addr, write);
  }

  read(addr: bigint, length: number): MemResult<Uint8Array> {
    const out = new Uint8Array(length);
    let done = 0;
    while (done < length) {
      const a = addr + BigInt(done);
      const n = Math.min(length - done, Number(this.pageSize - (a & (this.pageSize - 1n))));
      const pa = this.xlate(a, false);
      if (pa === undefined) return { ok: false, abort: "external", addr: a };
      const r = this.backing.read(pa, n);
      if (!r.ok) return r;
      out.set(r.value, done);
      done += n;
    }
    return { ok: true, value: out };
  }

  write(addr: bigint, data: Uint8Array): MemResult<void> {
    let done = 0;
    while (done < data.length) {
      const a = addr + BigInt(done);
      const n = Math.min(data.length - done, Number(this.pageSize - (a & (this.pageSize - 1n))));
      const pa = this.xlate(a, true);
      if (pa === undefined) return { ok: false, abort: "external", addr: a };
      const r = this.backing.write(pa, data.subarray(done, done + n));
      if (!r.ok) return r;
      done += n;
    }
    return { ok: true, value: undefined };
  }

  override read64(addr: bigint): MemResult<bigint> {
    if ((addr & 7n) !== 0n) return super.read64(addr);
    const pa = this.xlate(addr, false);
    if (pa === undefined) return { ok: false, abort: "external", addr };
    return this.backing.read64(pa);
  }

  override write64(addr: bigint, value: bigint): MemResult<void> {
    const pa = this.xlate(addr, true);
    if (pa === undefined) return { ok: false, abort: "external", addr };
    return this.backing.write64(pa, value);
  }

  override cas64(addr: bigint, expected: bigint, value: bigint): MemResult<bigint> {
    const pa = this.xlate(addr, true);
    if (pa === undefined) return { ok: false, abort: "external", addr };
    return this.backing.cas64(pa, expected, value);
  }
}

/** A constant-offset view: view address A is backing address A + offset. */
export function offsetView(backing: PhysicalMemory, offset: bigint, paBits = 52): TranslatedMemory {
  return new TranslatedMemory(backing, (a) => a + offset, paBits);
}

/**
 * The guest-physical view of host memory through a stage-2 config: every
 * access is translated by a stage-2 walk (read or write permission checked;
 * a fault makes the access abort). Not cached: for building tables and
 * tests, not for the DMA path.
 */
export function stage2View(backing: PhysicalMemory, s2: StageConfig): TranslatedMemory {
  return new TranslatedMemory(
    backing,
    (addr, write) => {
      const r = walkStage(backing, s2, addr, write ? WRITE : READ);
      return r.ok ? r.output : undefined;
    },
    s2.inputBits,
    s2.format.granuleShift,
  );
}
