// Shared helpers for format descriptors: the bigint methods of
// PageTableFormat defined once from the word (hot-path) methods, and the
// 32-bit half arithmetic the formats use.

import type { DescType, PermSet, StageConfig } from "../translation.js";

export const TWO32 = 4294967296;

export function loWord(d: bigint): number {
  return Number(d & 0xffffffffn);
}
export function hiWord(d: bigint): number {
  return Number((d >> 32n) & 0xffffffffn);
}
export function fromWords(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** Mask clearing bits below `shift` in a 32-bit word (shift 0..32). */
export function loClearBelow(shift: number): number {
  return shift >= 32 ? 0 : ~((1 << shift) - 1) >>> 0;
}

/** Address bits [47 or 51 : shift] of a descriptor given as halves, as a number. */
export function addrFromWords(lo: number, hi: number, shift: number, hiMask: number): number {
  if (shift >= 32) return ((hi & hiMask & loClearBelow(shift - 32)) >>> 0) * TWO32;
  return (hi & hiMask) * TWO32 + ((lo & loClearBelow(shift)) >>> 0);
}

/** Implements the bigint methods of PageTableFormat from its word methods. */
export abstract class WordFormat {
  abstract decodeW(lo: number, hi: number, level: number, cfg: StageConfig): DescType;
  abstract outputAddressW(lo: number, hi: number, level: number, type: DescType): number;
  abstract tableLimitW(lo: number, hi: number, level: number, cfg: StageConfig): PermSet;
  abstract leafPermsW(lo: number, hi: number, level: number, cfg: StageConfig): PermSet;
  abstract isGlobalW(lo: number, hi: number): boolean;

  decode(desc: bigint, level: number, cfg: StageConfig): DescType {
    return this.decodeW(loWord(desc), hiWord(desc), level, cfg);
  }
  outputAddress(desc: bigint, level: number, type: DescType): bigint {
    return BigInt(this.outputAddressW(loWord(desc), hiWord(desc), level, type));
  }
  tableLimit(desc: bigint, level: number, cfg: StageConfig): PermSet {
    return this.tableLimitW(loWord(desc), hiWord(desc), level, cfg);
  }
  leafPerms(desc: bigint, level: number, cfg: StageConfig): PermSet {
    return this.leafPermsW(loWord(desc), hiWord(desc), level, cfg);
  }
  isGlobal(desc: bigint): boolean {
    return this.isGlobalW(loWord(desc), hiWord(desc));
  }
}
