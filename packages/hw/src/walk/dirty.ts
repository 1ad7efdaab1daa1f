// Dirty-state harvest over any format (iommufd HWPT_GET_DIRTY_BITMAP /
// HWPT_SET_DIRTY_TRACKING on the host side): which leaves hardware marked
// dirty, optionally cleaning them with compare-and-swap so a concurrent
// hardware update is never lost. Same leaf iteration as map/unmap.
//
// Dirty means (format.hw.dirty):
// - "dbm" (Arm, io-pgtable iopte_writeable_dirty): DBM set and the write bit
//   in its writable state (S1 AP[2] = 0, S2 S2AP[1] = 1); cleaning puts the
//   write bit back to read-only (S1 AP[2] = 1, S2 S2AP[1] = 0), DBM kept.
// - "bit" (VT-d): the D bit; cleaning clears it.

import { forEachLeaf } from "../format/map.js";
import type { PhysicalMemory } from "../memory.js";
import type { PageTableFormat, StageConfig } from "../translation.js";

/** Is this leaf descriptor dirty? */
export function isLeafDirty(format: PageTableFormat, desc: bigint): boolean {
  const d = format.hw.dirty;
  if (d.style === "bit") return (desc & d.bit) !== 0n;
  if ((desc & d.dbm) === 0n) return false;
  const wbit = (desc & d.writeBit) !== 0n;
  return d.writeBitMeansWritable ? wbit : !wbit;
}

/** The leaf descriptor with its dirty state cleared (writable-clean). */
export function cleanLeaf(format: PageTableFormat, desc: bigint): bigint {
  const d = format.hw.dirty;
  if (d.style === "bit") return desc & ~d.bit;
  return d.writeBitMeansWritable ? desc & ~d.writeBit : desc | d.writeBit;
}

export interface HarvestOptions {
  /** Clean each dirty leaf after reporting it (default true, as GET_DIRTY_BITMAP without NO_CLEAR). */
  readonly clear?: boolean;
}

/**
 * Report every dirty leaf mapping in [iova, iova+size) as (iova, bytes), in
 * input order, cleaning it unless `clear` is false. Returns the number of
 * dirty leaves, or the address of a memory error.
 */
export function harvestDirty(
  mem: PhysicalMemory,
  stage: StageConfig,
  iova: bigint,
  size: bigint,
  onDirty: (iova: bigint, bytes: bigint) => void,
  opts: HarvestOptions = {},
): { ok: true; dirty: number } | { ok: false; at: bigint } {
  const fmt = stage.format;
  const clear = opts.clear !== false;
  let dirty = 0;
  let failed: bigint | undefined;
  const r = forEachLeaf(mem, stage, iova, size, (leaf) => {
    if (failed !== undefined || !isLeafDirty(fmt, leaf.desc)) return;
    dirty++;
    onDirty(leaf.iova, 1n << BigInt(leaf.pageShift));
    if (!clear) return;
    // Retry if hardware changed the descriptor between the read and the swap.
    let cur = leaf.desc;
    for (let i = 0; i < 8; i++) {
      const c = mem.cas64(leaf.descAddr, cur, cleanLeaf(fmt, cur));
      if (!c.ok) {
        failed = leaf.descAddr;
        return;
      }
      if (c.value === cur) return;
      cur = c.value;
    }
  });
  if (!r.ok) return r;
  if (failed !== undefined) return { ok: false, at: failed };
  return { ok: true, dirty };
}
