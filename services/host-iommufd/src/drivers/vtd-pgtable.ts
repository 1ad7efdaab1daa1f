// The second-stage page table of a VT-d paging domain (Linux's VT-d SS
// io-pgtable): the common format/map helpers on the VT-d second-stage
// format, table pages from host memory. map/unmap are all or nothing and
// synchronous; the IOTLB and device-TLB flushes are the driver's (vtd.ts).
// Dirty tracking reads and clears the SS D bit (bit 9) that the unit sets on
// writes when the PASID entry has SSADE = 1.

import {
  forEachLeaf,
  mapRange,
  type MapError,
  PAGE_SHIFT,
  type PageAllocator,
  PERM_R,
  PERM_W,
  type StageConfig,
  unmapRange,
  VTD_SS,
  vtdSecondStageConfig,
} from "@iommufd/hw";
import { ErrnoError, type ErrnoName } from "@iommufd/kit";
import type { Prot } from "../iopt/io-pagetable.js";
import type { HostMemory } from "../mm/phys.js";

const SS_DIRTY = 1n << BigInt(VTD_SS.D);
const PAGE = 1n << BigInt(PAGE_SHIFT);

/** Page-table pages from the host allocator (4 KiB, zeroed). */
export function hostPageAllocator(memory: HostMemory): PageAllocator {
  return {
    alloc(bytes: number): bigint | undefined {
      if (bytes > Number(PAGE)) return undefined;
      try {
        return memory.allocPage();
      } catch {
        return undefined;
      }
    },
    free(addr: bigint): void {
      memory.freePage(addr);
    },
  };
}

const MAP_ERRNO: Record<MapError, ErrnoName> = {
  misaligned: "EINVAL",
  "out-of-range": "EINVAL",
  exists: "EEXIST",
  "no-memory": "ENOMEM",
  "memory-error": "EFAULT",
};

export interface SsGeometry {
  /** PASID-entry AW: 1/2/3 = 3/4/5 levels (39/48/57-bit input). */
  readonly aw: number;
  readonly haw: number;
  readonly large2M: boolean;
  readonly large1G: boolean;
}

export class SecondStageTable {
  readonly stage: StageConfig;
  private readonly alloc: PageAllocator;
  private freed = false;

  constructor(
    private readonly memory: HostMemory,
    readonly geometry: SsGeometry,
  ) {
    this.alloc = hostPageAllocator(memory);
    const root = memory.allocPage();
    const r = vtdSecondStageConfig({ aw: geometry.aw, ssptptr: root, haw: geometry.haw, large2M: geometry.large2M, large1G: geometry.large1G });
    if (!r.ok) {
      memory.freePage(root);
      throw new ErrnoError("EINVAL", `second-stage geometry: ${r.error}`);
    }
    this.stage = r.stage;
  }

  /** SSPTPTR: the root table's host physical address. */
  get root(): bigint {
    return this.stage.root;
  }

  /** Input address width in bits (30 + 9·AW). */
  get inputBits(): number {
    return this.stage.inputBits;
  }

  /**
   * Map [iova, iova+length) to the frames `pfnAt(offset)` gives. Runs of
   * physically contiguous frames are mapped together, so mapRange uses 2 MiB
   * / 1 GiB leaves where IOVA and PA are aligned. All or nothing.
   */
  map(iova: bigint, length: bigint, pfnAt: (offset: bigint) => number, prot: Prot): void {
    const perms = (prot.read ? PERM_R : 0) | (prot.write ? PERM_W : 0);
    let off = 0n;
    while (off < length) {
      const first = pfnAt(off);
      let run = PAGE;
      while (off + run < length && pfnAt(off + run) === first + Number(run >> BigInt(PAGE_SHIFT))) run += PAGE;
      const r = mapRange(this.memory.mem, this.stage, iova + off, BigInt(first) << BigInt(PAGE_SHIFT), run, { perms }, { alloc: this.alloc });
      if (!r.ok) {
        const done = off + r.mapped;
        if (done > 0n) unmapRange(this.memory.mem, this.stage, iova, done, { alloc: this.alloc });
        throw new ErrnoError(MAP_ERRNO[r.error], `second-stage map at 0x${r.at.toString(16)}: ${r.error}`);
      }
      off += run;
    }
  }

  /** Unmap [iova, iova+length); returns the bytes that were mapped. Large leaves are split when cut. */
  unmap(iova: bigint, length: bigint): bigint {
    const r = unmapRange(this.memory.mem, this.stage, iova, length, { alloc: this.alloc });
    if (!r.ok) throw new ErrnoError(r.error === "no-memory" ? "ENOMEM" : "EINVAL", `second-stage unmap at 0x${r.at.toString(16)}: ${r.error}`);
    return r.unmapped;
  }

  /**
   * Visit the leaves overlapping [iova, iova+length) whose D bit is set,
   * clearing it (atomically against the unit's own A/D updates) unless
   * `noClear`. Returns the span of cleared leaves, if any (for the flush).
   */
  harvestDirty(
    iova: bigint,
    length: bigint,
    noClear: boolean,
    dirty: (iova: bigint, length: bigint) => void,
  ): { start: bigint; end: bigint } | undefined {
    const mem = this.memory.mem;
    let span: { start: bigint; end: bigint } | undefined;
    const r = forEachLeaf(mem, this.stage, iova, length, (leaf) => {
      if ((leaf.desc & SS_DIRTY) === 0n) return;
      const size = 1n << BigInt(leaf.pageShift);
      dirty(leaf.iova, size);
      if (noClear) return;
      // test_and_clear_bit: the unit may set A/D concurrently.
      let cur = leaf.desc;
      for (;;) {
        const c = mem.cas64(leaf.descAddr, cur, cur & ~SS_DIRTY);
        if (!c.ok || c.value === cur) break;
        cur = c.value;
      }
      span = span ? { start: span.start < leaf.iova ? span.start : leaf.iova, end: leaf.iova + size } : { start: leaf.iova, end: leaf.iova + size };
    });
    if (!r.ok) throw new ErrnoError("EFAULT", `second-stage table unreadable at 0x${r.at.toString(16)}`);
    return span;
  }

  /** Release every table page (the domain is attached nowhere). */
  destroy(): void {
    if (this.freed) return;
    this.freed = true;
    unmapRange(this.memory.mem, this.stage, 0n, 1n << BigInt(this.stage.inputBits), { alloc: this.alloc });
    this.memory.freePage(this.stage.root);
  }
}
