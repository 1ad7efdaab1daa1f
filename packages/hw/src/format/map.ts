// MAP / UNMAP for every PageTableFormat: one generic implementation driven by
// the format's geometry and encoders, as io-pgtable does per format. The guest
// builds its stage-1 tables with map (in its own memory view, at GPAs), the
// host driver builds stage-2 tables with map, hardware only walks.
//
// Policy decisions (documented, tested):
// - map refuses to overwrite anything present ("exists", like Linux -EEXIST),
//   including mapping under an existing block.
// - map picks the largest leaf the format allows at each step when
//   `blocks` is not false and IOVA, PA and the remaining size are aligned.
// - unmap of part of a block SPLITS the block into next-level leaves with the
//   same attributes when an allocator is given (Linux
//   arm_lpae_split_blk_unmap); without an allocator it refuses with
//   "split-needed" and changes nothing for that block.
// - unmap of a range that covers a whole table entry clears the entry and
//   frees the table pages below it through `alloc.free` when provided.
// - Memory errors while reading/writing tables end the operation with
//   "memory-error" and the address; what was done before stays done.

import type { PhysicalMemory } from "../memory.js";
import { Desc, type MapProt, type PageTableFormat, type StageConfig } from "../translation.js";

/** Allocates zeroed, naturally aligned table memory. */
export interface PageAllocator {
  /** `bytes` is a power of two; the result is aligned to max(bytes, 4096) and zeroed. */
  alloc(bytes: number): bigint | undefined;
  free?(addr: bigint, bytes: number): void;
}

/**
 * A simple allocator over a PhysicalMemory window [base, base + length):
 * bump allocation in 4 KiB pages (naturally aligned for larger requests) with
 * a free list per size. Pages are zeroed on allocation.
 */
export class SimplePageAllocator implements PageAllocator {
  private next: bigint;
  private readonly end: bigint;
  private readonly freeLists = new Map<number, bigint[]>();
  allocated = 0;

  constructor(
    private readonly mem: PhysicalMemory,
    base: bigint,
    length: bigint,
  ) {
    this.next = base;
    this.end = base + length;
  }

  alloc(bytes: number): bigint | undefined {
    const size = Math.max(bytes, 4096);
    const list = this.freeLists.get(size);
    let addr = list?.pop();
    if (addr === undefined) {
      const big = BigInt(size);
      const aligned = (this.next + big - 1n) & ~(big - 1n);
      if (aligned + big > this.end) return undefined;
      addr = aligned;
      this.next = aligned + big;
    }
    const w = this.mem.write(addr, new Uint8Array(size));
    if (!w.ok) return undefined;
    this.allocated += size;
    return addr;
  }

  free(addr: bigint, bytes: number): void {
    const size = Math.max(bytes, 4096);
    let list = this.freeLists.get(size);
    if (!list) {
      list = [];
      this.freeLists.set(size, list);
    }
    list.push(addr);
    this.allocated -= size;
  }
}

/** Bytes of the start table (group) of a stage: 2^(inputBits − levelShift(start)) × 8. */
export function startTableBytes(format: PageTableFormat, inputBits: number, startLevel: number): number {
  return 2 ** (inputBits - format.levelShift(startLevel)) * 8;
}

/** Bytes of a full table below the start level (one granule). */
export function tableBytes(format: PageTableFormat): number {
  return 2 ** format.bitsPerLevel * 8;
}

export type MapError = "misaligned" | "out-of-range" | "exists" | "no-memory" | "memory-error";
export type MapResult =
  | { ok: true; mapped: bigint }
  | { ok: false; error: MapError; at: bigint; mapped: bigint };

export interface MapOptions {
  readonly alloc: PageAllocator;
  /** Use block / large-page leaves where alignment allows (default true). */
  readonly blocks?: boolean;
  /** Largest leaf size allowed, as log2 (e.g. 21 to stop at 2 MB). */
  readonly maxPageShift?: number;
}

function inputMask(stage: StageConfig): bigint {
  return (1n << BigInt(stage.inputBits)) - 1n;
}

function indexAt(stage: StageConfig, va: bigint, level: number): bigint {
  const fmt = stage.format;
  const bits = level === stage.startLevel ? stage.inputBits - fmt.levelShift(level) : fmt.bitsPerLevel;
  return (va >> BigInt(fmt.levelShift(level))) & ((1n << BigInt(bits)) - 1n);
}

function inRange(stage: StageConfig, iova: bigint, size: bigint): boolean {
  const va = iova & inputMask(stage);
  if (stage.inputForm === "low" && va !== iova) return false;
  return size > 0n && va + size - 1n <= inputMask(stage);
}

/**
 * Map [iova, iova+size) → [pa, pa+size) with `prot`. iova, pa and size must
 * be granule aligned. Chooses block sizes when allowed.
 */
export function mapRange(
  mem: PhysicalMemory,
  stage: StageConfig,
  iova: bigint,
  pa: bigint,
  size: bigint,
  prot: MapProt,
  opts: MapOptions,
): MapResult {
  const fmt = stage.format;
  const gmask = (1n << BigInt(fmt.granuleShift)) - 1n;
  if ((iova & gmask) !== 0n || (pa & gmask) !== 0n || (size & gmask) !== 0n) {
    return { ok: false, error: "misaligned", at: iova, mapped: 0n };
  }
  if (!inRange(stage, iova, size)) return { ok: false, error: "out-of-range", at: iova, mapped: 0n };
  if ((pa + size - 1n) >> BigInt(stage.outputBits) !== 0n) {
    return { ok: false, error: "out-of-range", at: iova, mapped: 0n };
  }
  const useBlocks = opts.blocks !== false;
  const maxShift = opts.maxPageShift ?? 64;
  const tBytes = tableBytes(fmt);
  let done = 0n;
  while (done < size) {
    const va = (iova + done) & inputMask(stage);
    const out = pa + done;
    const left = size - done;
    // Pick the leaf level: largest allowed block that fits and is aligned.
    let leafLevel = 3;
    if (useBlocks) {
      for (let l = stage.startLevel; l < 3; l++) {
        const sh = fmt.levelShift(l);
        const bsz = 1n << BigInt(sh);
        if (sh <= maxShift && fmt.blockAllowed(l, stage) && ((va | out) & (bsz - 1n)) === 0n && left >= bsz) {
          leafLevel = l;
          break;
        }
      }
    }
    // Descend, creating tables.
    let table = stage.root;
    for (let level = stage.startLevel; ; level++) {
      const slot = table + indexAt(stage, va, level) * 8n;
      const rd = mem.read64(slot);
      if (!rd.ok) return { ok: false, error: "memory-error", at: slot, mapped: done };
      const type = fmt.decode(rd.value, level, stage);
      if (level === leafLevel) {
        if (type !== Desc.INVALID) return { ok: false, error: "exists", at: iova + done, mapped: done };
        const w = mem.write64(slot, fmt.encodeLeaf(out, level, prot));
        if (!w.ok) return { ok: false, error: "memory-error", at: slot, mapped: done };
        done += 1n << BigInt(fmt.levelShift(level));
        break;
      }
      if (type === Desc.TABLE) {
        table = fmt.outputAddress(rd.value, level, type);
        continue;
      }
      if (type !== Desc.INVALID) return { ok: false, error: "exists", at: iova + done, mapped: done };
      const next = opts.alloc.alloc(tBytes);
      if (next === undefined) return { ok: false, error: "no-memory", at: iova + done, mapped: done };
      const w = mem.write64(slot, fmt.encodeTable(next, level));
      if (!w.ok) return { ok: false, error: "memory-error", at: slot, mapped: done };
      table = next;
    }
  }
  return { ok: true, mapped: done };
}

export type UnmapError = "misaligned" | "out-of-range" | "split-needed" | "no-memory" | "memory-error";
export type UnmapResult =
  | { ok: true; unmapped: bigint }
  | { ok: false; error: UnmapError; at: bigint; unmapped: bigint };

export interface UnmapOptions {
  /** Allocator for splitting blocks (and freeing emptied tables). Without it, partial block unmaps fail. */
  readonly alloc?: PageAllocator;
}

class UnmapStop {
  constructor(
    readonly error: UnmapError,
    readonly at: bigint,
  ) {}
}

/**
 * Unmap [iova, iova+size). Returns the number of bytes that were mapped and
 * are now unmapped (holes are skipped). See the policy at the top of the file.
 */
export function unmapRange(
  mem: PhysicalMemory,
  stage: StageConfig,
  iova: bigint,
  size: bigint,
  opts: UnmapOptions = {},
): UnmapResult {
  const fmt = stage.format;
  const gmask = (1n << BigInt(fmt.granuleShift)) - 1n;
  if ((iova & gmask) !== 0n || (size & gmask) !== 0n) return { ok: false, error: "misaligned", at: iova, unmapped: 0n };
  if (!inRange(stage, iova, size)) return { ok: false, error: "out-of-range", at: iova, unmapped: 0n };
  const start = iova & inputMask(stage);
  const end = start + size; // exclusive
  const state = { unmapped: 0n };
  try {
    unmapLevel(mem, stage, opts, stage.root, stage.startLevel, 0n, 1n << BigInt(stage.inputBits), start, end, state);
  } catch (e) {
    if (e instanceof UnmapStop) return { ok: false, error: e.error, at: e.at, unmapped: state.unmapped };
    throw e;
  }
  return { ok: true, unmapped: state.unmapped };
}

/**
 * Clear [start, end) inside the table at `table` (level `level`, covering
 * input addresses [base, limit)). Internal control flow uses UnmapStop, caught
 * in unmapRange: the public API never throws.
 */
function unmapLevel(
  mem: PhysicalMemory,
  stage: StageConfig,
  opts: UnmapOptions,
  table: bigint,
  level: number,
  base: bigint,
  limit: bigint,
  start: bigint,
  end: bigint,
  state: { unmapped: bigint },
): void {
  const fmt = stage.format;
  const shift = BigInt(fmt.levelShift(level));
  const entrySize = 1n << shift;
  let a = start > base ? start : base;
  while (a < end && a < limit) {
    const idx = indexAt(stage, a, level);
    const entryBase = (a >> shift) << shift;
    const entryEnd = entryBase + entrySize;
    const slot = table + idx * 8n;
    const rd = mem.read64(slot);
    if (!rd.ok) throw new UnmapStop("memory-error", slot);
    const desc = rd.value;
    const type = fmt.decode(desc, level, stage);
    const covers = start <= entryBase && end >= entryEnd;
    if (type === Desc.BLOCK || type === Desc.PAGE) {
      if (covers) {
        if (!mem.write64(slot, 0n).ok) throw new UnmapStop("memory-error", slot);
        state.unmapped += entrySize;
      } else {
        // Partial unmap of a block: split it into next-level leaves, then recurse.
        if (!opts.alloc) throw new UnmapStop("split-needed", entryBase);
        const next = splitBlock(mem, stage, opts.alloc, desc, level, slot);
        unmapLevel(mem, stage, opts, next, level + 1, entryBase, entryEnd, start, end, state);
      }
    } else if (type === Desc.TABLE) {
      const next = fmt.outputAddress(desc, level, type);
      unmapLevel(mem, stage, opts, next, level + 1, entryBase, entryEnd, start, end, state);
      if (covers) {
        if (!mem.write64(slot, 0n).ok) throw new UnmapStop("memory-error", slot);
        opts.alloc?.free?.(next, tableBytes(fmt));
      }
    }
    a = entryEnd;
  }
}

/** Replace the block at `slot` by a table of next-level leaves with the same attributes; returns the table. */
function splitBlock(
  mem: PhysicalMemory,
  stage: StageConfig,
  alloc: PageAllocator,
  desc: bigint,
  level: number,
  slot: bigint,
): bigint {
  const fmt = stage.format;
  const tBytes = tableBytes(fmt);
  const next = alloc.alloc(tBytes);
  if (next === undefined) throw new UnmapStop("no-memory", slot);
  const out = fmt.outputAddress(desc, level, Desc.BLOCK);
  const prot = fmt.leafProt(desc, level);
  const child = level + 1;
  const childSize = 1n << BigInt(fmt.levelShift(child));
  const n = 2 ** fmt.bitsPerLevel;
  const words = new Uint8Array(tBytes);
  const view = new DataView(words.buffer);
  for (let i = 0; i < n; i++) {
    view.setBigUint64(i * 8, fmt.encodeLeaf(out + BigInt(i) * childSize, child, prot), true);
  }
  if (!mem.write(next, words).ok) throw new UnmapStop("memory-error", next);
  if (!mem.write64(slot, fmt.encodeTable(next, level)).ok) throw new UnmapStop("memory-error", slot);
  return next;
}

/** One leaf found by forEachLeaf. */
export interface LeafInfo {
  readonly iova: bigint;
  readonly output: bigint;
  readonly level: number;
  readonly pageShift: number;
  readonly desc: bigint;
  readonly descAddr: bigint;
}

/**
 * Visit every leaf mapping [iova, iova+size) in input order (dump, dirty
 * harvest). Stops at memory errors, returning the failing address.
 */
export function forEachLeaf(
  mem: PhysicalMemory,
  stage: StageConfig,
  iova: bigint,
  size: bigint,
  fn: (leaf: LeafInfo) => void,
): { ok: true } | { ok: false; at: bigint } {
  const start = iova & inputMask(stage);
  const end = start + size;
  const fmt = stage.format;
  const walkEntries = (table: bigint, level: number, from: bigint): bigint | undefined => {
    const shift = BigInt(fmt.levelShift(level));
    const tableShift = shift + BigInt(fmt.bitsPerLevel);
    const tableEnd =
      level === stage.startLevel ? 1n << BigInt(stage.inputBits) : ((from >> tableShift) << tableShift) + (1n << tableShift);
    let a = (from >> shift) << shift;
    while (a < end && a < tableEnd) {
      const slot = table + indexAt(stage, a, level) * 8n;
      const rd = mem.read64(slot);
      if (!rd.ok) return slot;
      const type = fmt.decode(rd.value, level, stage);
      if (type === Desc.TABLE) {
        const bad = walkEntries(fmt.outputAddress(rd.value, level, type), level + 1, a > start ? a : start);
        if (bad !== undefined) return bad;
      } else if (type === Desc.BLOCK || type === Desc.PAGE) {
        fn({
          iova: a,
          output: fmt.outputAddress(rd.value, level, type),
          level,
          pageShift: Number(shift),
          desc: rd.value,
          descAddr: slot,
        });
      }
      a += 1n << shift;
    }
    return undefined;
  };
  const bad = walkEntries(stage.root, stage.startLevel, start);
  return bad === undefined ? { ok: true } : { ok: false, at: bad };
}
