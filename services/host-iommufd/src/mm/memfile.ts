// A memfd-like file: pages allocated from host memory on first use, kept in a
// chunked table of frame numbers (8 bytes a page), with a pin count per page
// (2 bytes a page) so IOAS_COPY and several domains pin a page only once.
import { ErrnoError } from "@iommufd/kit";
import type { HostMemory } from "./phys.js";

const CHUNK = 512;

export class MemFile {
  private readonly pfns = new Map<number, Float64Array>();
  private readonly pins = new Map<number, Uint16Array>();
  /** Pages with a frame. */
  populated = 0;
  /** Open references: fds and mappings. */
  refs = 1;

  constructor(
    readonly host: HostMemory,
    public size: bigint,
    readonly name = "memfd",
    readonly writable = true,
  ) {}

  get pages(): number {
    return Number((this.size + 4095n) >> 12n);
  }

  private chunk(page: number, create: boolean): [Float64Array, Uint16Array] | undefined {
    const c = Math.floor(page / CHUNK);
    let p = this.pfns.get(c);
    if (!p) {
      if (!create) return undefined;
      p = new Float64Array(CHUNK);
      this.pfns.set(c, p);
      this.pins.set(c, new Uint16Array(CHUNK));
    }
    return [p, this.pins.get(c) as Uint16Array];
  }

  /** The frame behind page `page`, allocating it on first use. */
  frame(page: number): number {
    if (page < 0 || page >= this.pages) throw new ErrnoError("EFAULT", `page ${page} beyond end of ${this.name}`);
    const [p] = this.chunk(page, true) as [Float64Array, Uint16Array];
    const i = page % CHUNK;
    if (p[i] === 0) {
      p[i] = this.host.allocPfn();
      this.populated++;
    }
    return p[i] as number;
  }

  /** Frame without allocating (0 = not populated). */
  peek(page: number): number {
    return this.chunk(page, false)?.[0][page % CHUNK] ?? 0;
  }

  /** Pin a page; returns true when it was not pinned before (so it is accounted now). */
  pin(page: number): boolean {
    this.frame(page);
    const [, pins] = this.chunk(page, true) as [Float64Array, Uint16Array];
    const i = page % CHUNK;
    if (pins[i] === 0xffff) throw new ErrnoError("ENOMEM", "pin count overflow");
    return pins[i]++ === 0;
  }

  /** Unpin a page; returns true when this was its last pin. */
  unpin(page: number): boolean {
    const c = this.chunk(page, false);
    if (!c || c[1][page % CHUNK] === 0) throw new Error(`unpin of unpinned page ${page} of ${this.name}`);
    return --c[1][page % CHUNK] === 0;
  }

  pinCount(page: number): number {
    return this.chunk(page, false)?.[1][page % CHUNK] ?? 0;
  }

  /** Drop every frame (last reference gone). Pinned pages are a bug at this point. */
  free(): void {
    for (const [c, p] of this.pfns) {
      const pins = this.pins.get(c) as Uint16Array;
      for (let i = 0; i < CHUNK; i++) {
        if ((pins[i] as number) > 0) throw new Error(`${this.name}: freeing pinned page ${c * CHUNK + i}`);
        if (p[i]) this.host.freePfn(p[i] as number);
      }
    }
    this.pfns.clear();
    this.pins.clear();
    this.populated = 0;
  }
}
