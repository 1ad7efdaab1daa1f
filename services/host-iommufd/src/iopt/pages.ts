// The memory behind IOAS areas (the kernel's iopt_pages): a user VA range or a
// file range, resolved to file pages and pinned only while some area using it
// needs pinning (its IOAS has a domain). IOAS_COPY shares one Pages between
// areas, so a page is pinned — and accounted — once however often it is mapped.
import { ErrnoError } from "@iommufd/kit";
import type { MemFile } from "../mm/memfile.js";
import { PAGE, type PageRun, putFile, type UserMm } from "../mm/user-mm.js";

export type PagesSource = { kind: "user"; va: bigint } | { kind: "file"; file: MemFile; offset: bigint };

export class Pages {
  /** Areas referencing this object. */
  refs = 0;
  /** Areas that need the pages pinned. */
  private pinUsers = 0;
  private runs?: PageRun[];

  constructor(
    readonly mm: UserMm,
    readonly src: PagesSource,
    /** bytes, from the start of the source */
    readonly length: bigint,
  ) {
    if (src.kind === "file") src.file.refs++;
  }

  /** Offset of the source start inside its first page (sub-page offset of user_va / file start). */
  get pageOffset(): bigint {
    return (this.src.kind === "user" ? this.src.va : this.src.offset) & (PAGE - 1n);
  }

  private resolve(): PageRun[] {
    if (this.src.kind === "user") return this.mm.resolve(this.src.va, this.length);
    const first = this.src.offset / PAGE;
    const last = (this.src.offset + this.length - 1n) / PAGE;
    if ((last + 1n) * PAGE > this.src.file.size + PAGE - 1n) throw new ErrnoError("EINVAL", "range beyond end of file");
    return [{ file: this.src.file, page: Number(first), count: Number(last - first + 1n) }];
  }

  get pinned(): boolean {
    return this.pinUsers > 0;
  }

  /** One more area needs the pages: resolve and pin on the first (EFAULT, ENOMEM). */
  pin(): void {
    if (this.pinUsers === 0) {
      const runs = this.resolve();
      this.mm.pin(runs);
      this.runs = runs;
    }
    this.pinUsers++;
  }

  unpin(): void {
    if (this.pinUsers === 0) throw new Error("unpin of unpinned pages");
    if (--this.pinUsers === 0 && this.runs) {
      this.mm.unpin(this.runs);
      this.runs = undefined;
    }
  }

  /** Host frame number of the page holding byte `offset` (pages must be pinned). */
  pfnAt(offset: bigint): number {
    if (!this.runs) throw new Error("pfnAt on unpinned pages");
    let page = Number((this.pageOffset + offset) / PAGE);
    for (const r of this.runs) {
      if (page < r.count) return r.file.frame(r.page + page);
      page -= r.count;
    }
    throw new Error(`offset ${offset} beyond pages`);
  }

  get(): this {
    this.refs++;
    return this;
  }

  put(): void {
    if (--this.refs === 0 && this.src.kind === "file") putFile(this.src.file);
  }
}
