// Host physical memory: the bytes (a sparse memory from packages/hw, which the
// IOMMU models walk directly) and a page-frame allocator. A frame costs
// nothing until something writes to it; frames for IOMMU structures and for
// pinned user pages come from the same allocator.
import { PAGE_SHIFT, PAGE_SIZE, SparseMemory } from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";

export class HostMemory {
  readonly mem: SparseMemory;
  private nextPfn: number;
  private readonly freePfns: number[] = [];
  private readonly limitPfn: number;
  inUse = 0;

  /** `paBits` physical address width; the first 1 MiB is never handed out (PFN 0 means "none"). */
  constructor(paBits = 48) {
    this.mem = new SparseMemory(paBits);
    this.nextPfn = 0x100;
    this.limitPfn = 2 ** (paBits - PAGE_SHIFT);
  }

  allocPfn(): number {
    const pfn = this.freePfns.pop() ?? this.nextPfn++;
    if (pfn >= this.limitPfn) throw new ErrnoError("ENOMEM", "host physical memory exhausted");
    this.inUse++;
    return pfn;
  }

  /** Free a frame; its bytes are discarded so the next owner reads zeros. */
  freePfn(pfn: number): void {
    this.mem.discard(BigInt(pfn) << BigInt(PAGE_SHIFT), BigInt(PAGE_SIZE));
    this.freePfns.push(pfn);
    this.inUse--;
  }

  /** A zeroed page for an IOMMU structure (page tables, queues); returns its physical address. */
  allocPage(): bigint {
    return BigInt(this.allocPfn()) << BigInt(PAGE_SHIFT);
  }

  freePage(pa: bigint): void {
    this.freePfn(Number(pa >> BigInt(PAGE_SHIFT)));
  }
}
