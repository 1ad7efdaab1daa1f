// A guest I/O page table: stage-1 tables the guest builds in its own RAM with
// the packages/hw formats and map helpers (io-pgtable in Linux). SMMUv3
// guests use the Arm VMSAv8-64 stage-1 format (4 KiB granule, 48-bit input,
// as the CD's T0SZ = 16 / TG0 = 4K describe it); VT-d guests the first-stage
// (x86-64 4-level) format. The same tables serve a DMA domain and an SVA
// process (its CPU page table, shared with the IOMMU through a CD / PASID
// entry).
//
// All changes land in KernelMemory; the caller drains them to guest RAM
// (awaiting the batch) before invalidating or telling hardware.
import {
  type MapProt,
  PERM_R,
  PERM_W,
  PERM_X,
  Perm,
  type StageConfig,
  armStage1Config,
  forEachLeaf,
  mapRange,
  unmapRange,
  vtdFirstStageConfig,
  walkStage,
} from "@iommufd/hw";
import { ErrnoError } from "@iommufd/kit";
import type { TableAllocator } from "./kmem.js";

export type PgtableFormat = "arm-s1" | "vtd-fs";

/** Linux IOMMU_* prot bits (guest.v1 DmaProt). */
export const IOMMU_PROT = { READ: 1, WRITE: 2, CACHE: 4, NOEXEC: 8, MMIO: 16, PRIV: 32 } as const;

/** Permissions for a DMA API mapping (Linux io-pgtable: unprivileged access unless IOMMU_PRIV; executable unless NOEXEC). */
export function dmaProtToPerms(prot: number): number {
  let p = 0;
  const priv = (prot & IOMMU_PROT.PRIV) !== 0;
  if (prot & IOMMU_PROT.READ) p |= priv ? Perm.PR : PERM_R;
  if (prot & IOMMU_PROT.WRITE) p |= priv ? Perm.PW : PERM_W;
  if (!(prot & IOMMU_PROT.NOEXEC) && prot & IOMMU_PROT.READ) p |= priv ? Perm.PX : PERM_X;
  return p;
}

/** Permissions of a user page of a process (Linux PROT_READ 1, PROT_WRITE 2, PROT_EXEC 4). */
export function userProtToPerms(prot: number): number {
  let p = 0;
  if (prot & 1) p |= PERM_R;
  if (prot & 2) p |= PERM_W | PERM_R;
  if (prot & 4) p |= PERM_X;
  return p;
}

export class IoPgtable {
  readonly root: bigint;
  readonly stage: StageConfig;

  constructor(
    readonly format: PgtableFormat,
    readonly tables: TableAllocator,
    /** Output (IPA / GPA) size in bits. */
    outputBits = 48,
  ) {
    const root = tables.alloc(4096);
    if (root === undefined) throw new ErrnoError("ENOMEM", "no memory for a page-table root");
    this.root = root;
    const r =
      format === "arm-s1"
        ? armStage1Config({ granuleShift: 12, tsz: 16, outputBits, ttb: root })
        : vtdFirstStageConfig({ levels: 4, fsptptr: root, haw: outputBits });
    if (!r.ok) throw new ErrnoError("EINVAL", `page-table config: ${r.error}`);
    this.stage = r.stage;
  }

  /** Input address bits (48). */
  get inputBits(): number {
    return this.stage.inputBits;
  }

  map(iova: bigint, gpa: bigint, size: bigint, perms: number, opts: Partial<MapProt> = {}): void {
    const r = mapRange(this.tables.kmem, this.stage, iova, gpa, size, { ...opts, perms }, { alloc: this.tables });
    if (r.ok) return;
    // Roll back what was mapped so a failing map changes nothing.
    if (r.mapped > 0n) unmapRange(this.tables.kmem, this.stage, iova, r.mapped, { alloc: this.tables });
    const errno = r.error === "exists" ? "EEXIST" : r.error === "no-memory" ? "ENOMEM" : r.error === "misaligned" || r.error === "out-of-range" ? "EINVAL" : "EFAULT";
    throw new ErrnoError(errno, `map 0x${iova.toString(16)}+0x${size.toString(16)}: ${r.error} at 0x${r.at.toString(16)}`);
  }

  /** Unmap; returns bytes that were mapped. */
  unmap(iova: bigint, size: bigint): bigint {
    const r = unmapRange(this.tables.kmem, this.stage, iova, size, { alloc: this.tables });
    if (!r.ok) throw new ErrnoError(r.error === "no-memory" ? "ENOMEM" : "EINVAL", `unmap 0x${iova.toString(16)}: ${r.error}`);
    return r.unmapped;
  }

  /** Software walk (what the CPU / IOMMU would find): the output address of `iova`, or undefined. */
  lookup(iova: bigint): { gpa: bigint; perms: number } | undefined {
    const r = walkStage(this.tables.kmem, this.stage, iova, { kind: "read", privileged: true, probe: true });
    return r.ok ? { gpa: r.output, perms: r.s1?.perms ?? r.perms } : undefined;
  }

  /** Every mapped leaf in [iova, iova+size). */
  leaves(iova: bigint, size: bigint): { iova: bigint; gpa: bigint; size: bigint }[] {
    const out: { iova: bigint; gpa: bigint; size: bigint }[] = [];
    forEachLeaf(this.tables.kmem, this.stage, iova, size, (l) => out.push({ iova: l.iova, gpa: l.output, size: 1n << BigInt(l.pageShift) }));
    return out;
  }

  /** Free every table (the domain is gone and invalidated). */
  destroy(): void {
    this.unmap(0n, 1n << BigInt(this.inputBits - (this.format === "vtd-fs" ? 1 : 0)));
    this.tables.free(this.root, 4096);
  }
}
