// Decoding of the invalidation-range encodings the caches are driven by:
// Arm SMMUv3 TLBI range fields (TG/TTL/NUM/SCALE), VT-d IOTLB/PIOTLB address
// mask (AM), and the PCIe ATS / VT-d device-TLB size (S) encoding. Each
// returns a plain [start, start+size) range in bytes plus any level hint.

/** An address range to invalidate, with the optional Arm TTL level hint. */
export interface InvalidationRange {
  readonly start: bigint;
  /** Bytes; 1n for "the entry containing start" (Arm TG = 0 non-range form). */
  readonly size: bigint;
  /** Translation granule of the targeted entries (Arm TG != 0), log2 bytes. */
  readonly granuleShift?: number;
  /** Level hint (Arm TTL): only entries at this level are targeted. */
  readonly level?: number;
}

/** Arm SMMUv3 TLBI TG encoding: 0 = no range/hint, 1 = 4K, 2 = 16K, 3 = 64K. */
export function armTlbiTgShift(tg: number): number | undefined {
  return tg === 1 ? 12 : tg === 2 ? 14 : tg === 3 ? 16 : undefined;
}

export interface ArmTlbiFields {
  /** Address field (Addr[63:12] of CMD_TLBI_NH_VA / S2_IPA), as a byte address. */
  readonly addr: bigint;
  readonly tg: number;
  readonly ttl: number;
  readonly num: number;
  readonly scale: number;
}

/**
 * SMMUv3 range invalidation (SMMUv3 §4.4.1, IDR3.RIL): with TG != 0 the range
 * is (NUM + 1) × 2^SCALE × granule bytes from Addr aligned down to the granule;
 * TTL (1..3) is the level of the leaf entries (0 = any level; TTL = 1 with
 * 16K/64K granules has no level-1 leaves and is treated as no hint). With
 * TG = 0 the command targets the single entry containing Addr at any level.
 */
export function armTlbiRange(f: ArmTlbiFields): InvalidationRange {
  const g = armTlbiTgShift(f.tg);
  if (g === undefined) return { start: f.addr, size: 1n };
  const start = f.addr & ~((1n << BigInt(g)) - 1n);
  const size = BigInt(f.num + 1) << BigInt(f.scale + g);
  let level: number | undefined;
  if (f.ttl >= 1 && f.ttl <= 3 && !(f.ttl === 1 && g !== 12)) level = f.ttl;
  return { start, size, granuleShift: g, level };
}

/**
 * The inverse, as Linux arm_smmu_tlb_inv_range_cmd builds it: for `pages`
 * granules, SCALE = lowest set bit, NUM = (pages >> SCALE) − 1 (≤ 31); a range
 * that does not fit one command is split, so this returns the list of commands.
 */
export function armTlbiEncodeRange(
  start: bigint,
  size: bigint,
  granuleShift: number,
  ttl = 0,
): { addr: bigint; tg: number; ttl: number; num: number; scale: number }[] {
  const tg = granuleShift === 12 ? 1 : granuleShift === 14 ? 2 : 3;
  const out: { addr: bigint; tg: number; ttl: number; num: number; scale: number }[] = [];
  let pages = size >> BigInt(granuleShift);
  let addr = start;
  while (pages > 0n) {
    let scale = 0;
    while (((pages >> BigInt(scale)) & 1n) === 0n) scale++;
    const num = Number((pages >> BigInt(scale)) & 31n);
    const chunk = BigInt(num) << BigInt(scale);
    out.push({ addr, tg, ttl, num: num - 1, scale });
    addr += chunk << BigInt(granuleShift);
    pages -= chunk;
  }
  return out;
}

/**
 * VT-d IOTLB / PASID-IOTLB page-selective invalidation: 2^AM 4 KB pages from
 * ADDR aligned down to that size (VT-d §6.5.2.3; ADDR is expected aligned).
 */
export function vtdAmRange(addr: bigint, am: number): InvalidationRange {
  const size = 4096n << BigInt(am);
  return { start: addr & ~(size - 1n), size };
}

/** Smallest AM covering [start, start+size) (what a driver computes). */
export function vtdAmFor(start: bigint, size: bigint): { addr: bigint; am: number } {
  let am = 0;
  for (;;) {
    const span = 4096n << BigInt(am);
    const base = start & ~(span - 1n);
    if (base + span >= start + size) return { addr: base, am };
    am++;
  }
}

/**
 * PCIe ATS size encoding (Translation Completion, Invalidate Request, VT-d
 * device-TLB S bit): S = 0 → 4 KB at addr; S = 1 → the lowest 0 bit of
 * addr[63:12] at bit k gives size 2^(k+1) and addr with those low 1 bits
 * cleared is the base.
 */
export function atsRangeDecode(addr: bigint, s: boolean): InvalidationRange {
  const a = addr & ~0xfffn;
  if (!s) return { start: a, size: 4096n };
  let k = 12n;
  while (k < 64n && ((a >> k) & 1n) === 1n) k++;
  const size = 1n << (k + 1n);
  return { start: a & ~(size - 1n), size };
}

/** Encode a naturally aligned power-of-two range (≥ 4 KB) in the ATS S form. */
export function atsRangeEncode(start: bigint, size: bigint): { addr: bigint; s: boolean } {
  if (size <= 4096n) return { addr: start & ~0xfffn, s: false };
  // Size 2^(k+1): bits [k-1:12] set, bit k clear.
  const base = start & ~(size - 1n);
  return { addr: base | (((size >> 1n) - 1n) & ~0xfffn), s: true };
}
