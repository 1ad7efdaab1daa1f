// Circular queue mechanics shared by the command, event and PRI queues
// (Arm IHI 0070 §3.5). A queue of 2^LOG2SIZE entries lives in memory at
// *_BASE.ADDR; the PROD and CONS registers hold an index in bits
// [LOG2SIZE-1:0] and a wrap flag in bit LOG2SIZE. The queue is empty when
// index and wrap are equal, full when the index is equal and wrap differs.
// Bits above the wrap flag (CONS.ERR, PROD.OVFLG, ...) are not part of the
// pointer and are preserved by these helpers.

import { type PhysicalMemory, type MemResult } from "../memory.js";
import { bytesToWords, get, getNum, wordsToBytes } from "../bits.js";
import { Q_BASE } from "./regs.js";

export interface QueueGeometry {
  /** Base address of entry 0 (Q_BASE.ADDR aligned to the queue size). */
  base: bigint;
  /** log2 of the number of entries (after capping at the IDR1 maximum). */
  log2size: number;
  /** Entry size in bytes (16 command / PRI, 32 event). */
  entryBytes: number;
}

/** Decode a *_BASE register value into a queue geometry. */
export function queueGeometry(baseReg: bigint, entryBytes: number, maxLog2: number): QueueGeometry {
  const w = [baseReg];
  const log2size = Math.min(getNum(w, Q_BASE.LOG2SIZE), maxLog2);
  // §6.3.26: the effective base is aligned to the queue size (entries * size), min 32 bytes.
  const align = BigInt(Math.max(5, log2size + Math.log2(entryBytes)));
  const addr = get(w, Q_BASE.ADDR) << 5n;
  return { base: addr & ~((1n << align) - 1n), log2size, entryBytes };
}

/** Pointer bits (index + wrap) of a PROD/CONS value. */
export function qPtr(reg: number, log2size: number): number {
  return reg & ((2 << log2size) - 1);
}

export function qIndex(reg: number, log2size: number): number {
  return reg & ((1 << log2size) - 1);
}

export function qWrap(reg: number, log2size: number): number {
  return (reg >>> log2size) & 1;
}

export function qEmpty(prod: number, cons: number, log2size: number): boolean {
  return qPtr(prod, log2size) === qPtr(cons, log2size);
}

export function qFull(prod: number, cons: number, log2size: number): boolean {
  return qIndex(prod, log2size) === qIndex(cons, log2size) && qWrap(prod, log2size) !== qWrap(cons, log2size);
}

/** Number of entries between cons and prod. */
export function qCount(prod: number, cons: number, log2size: number): number {
  const n = 1 << log2size;
  const p = qPtr(prod, log2size);
  const c = qPtr(cons, log2size);
  return (p - c + 2 * n) % (2 * n);
}

/** Advance a pointer by one entry, keeping the bits above the wrap flag. */
export function qInc(reg: number, log2size: number): number {
  const ptrMask = (2 << log2size) - 1;
  const next = (qPtr(reg, log2size) + 1) & ptrMask;
  return ((reg & ~ptrMask) | next) >>> 0;
}

/** Address of the entry a pointer designates. */
export function qEntryAddr(g: QueueGeometry, reg: number): bigint {
  return g.base + BigInt(qIndex(reg, g.log2size)) * BigInt(g.entryBytes);
}

/** Read the entry at a pointer as 64-bit words. */
export function qReadEntry(mem: PhysicalMemory, g: QueueGeometry, reg: number): MemResult<bigint[]> {
  const r = mem.read(qEntryAddr(g, reg), g.entryBytes);
  return r.ok ? { ok: true, value: bytesToWords(r.value) } : r;
}

/** Write the entry at a pointer from 64-bit words. */
export function qWriteEntry(mem: PhysicalMemory, g: QueueGeometry, reg: number, words: readonly bigint[]): MemResult<void> {
  return mem.write(qEntryAddr(g, reg), wordsToBytes(words));
}
