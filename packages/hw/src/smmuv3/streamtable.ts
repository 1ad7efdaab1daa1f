// Stream table walk: StreamID → STE words, for linear and 2-level tables
// (Arm IHI 0070 §3.3, §5.1, §6.3.24–25; reference/hw-formats.md §1.2).
// Returns values: the STE, or the configuration error an ordinary
// transaction would record (C_BAD_STREAMID / F_STE_FETCH).

import { bytesToWords, get, getNum } from "../bits.js";
import type { PhysicalMemory } from "../memory.js";
import { STE_BYTES, L1STD, L1STD_BYTES } from "./ste.js";
import { STRTAB_BASE, STRTAB_BASE_CFG, STRTAB_FMT } from "./regs.js";

export interface StreamTableConfig {
  /** SMMU_STRTAB_BASE value. */
  base: bigint;
  /** SMMU_STRTAB_BASE_CFG value. */
  cfg: number;
}

/** The descriptors read to find an STE (for explain output). */
export interface SteLocation {
  /** Address of the L1STD read (2-level tables only). */
  l1Addr?: bigint;
  l1Desc?: bigint;
  steAddr: bigint;
}

export type SteFetch =
  | { ok: true; words: bigint[]; loc: SteLocation }
  | { ok: false; fault: "C_BAD_STREAMID"; loc?: Partial<SteLocation> }
  | { ok: false; fault: "F_STE_FETCH"; FetchAddr: bigint; loc?: Partial<SteLocation> };

export interface StreamTableLimits {
  /** IDR1.SIDSIZE. */
  sidBits: number;
  /** IDR0.ST_LEVEL = 1. */
  twoLevel: boolean;
}

/** Effective SPLIT: 6, 8 or 10 (other values are reserved; the model rounds up to the next valid one). */
export function effectiveSplit(split: number): number {
  return split <= 6 ? 6 : split <= 8 ? 8 : 10;
}

/** Read the STE for a StreamID. */
export function fetchSte(mem: PhysicalMemory, st: StreamTableConfig, sid: number, lim: StreamTableLimits): SteFetch {
  const cfg = [BigInt(st.cfg)];
  const log2size = Math.min(getNum(cfg, STRTAB_BASE_CFG.LOG2SIZE), lim.sidBits);
  const fmt = getNum(cfg, STRTAB_BASE_CFG.FMT);
  const baseAddr = get([st.base], STRTAB_BASE.ADDR) << 6n;
  // §7.3.3: StreamID >= 2^LOG2SIZE is C_BAD_STREAMID.
  if (sid < 0 || (log2size < 32 && sid >= 2 ** log2size)) return { ok: false, fault: "C_BAD_STREAMID" };

  if (fmt !== STRTAB_FMT.TWO_LEVEL || !lim.twoLevel) {
    // Linear: ADDR[LOG2SIZE+5:0] = 0 (§6.3.24).
    const base = baseAddr & ~((1n << BigInt(log2size + 6)) - 1n);
    const steAddr = base + BigInt(sid) * BigInt(STE_BYTES);
    return readSte(mem, steAddr, {});
  }

  const split = effectiveSplit(getNum(cfg, STRTAB_BASE_CFG.SPLIT));
  const l1Bits = Math.max(0, log2size - split);
  // 2-level: ADDR[MAX(5, LOG2SIZE-SPLIT-1+3):0] = 0.
  const base = baseAddr & ~((1n << BigInt(Math.max(6, l1Bits + 3))) - 1n);
  const l1idx = split >= 32 ? 0 : Math.floor(sid / 2 ** split);
  const l2idx = sid % 2 ** split;
  const l1Addr = base + BigInt(l1idx) * BigInt(L1STD_BYTES);
  const l1 = mem.read64(l1Addr);
  if (!l1.ok) return { ok: false, fault: "F_STE_FETCH", FetchAddr: l1Addr, loc: { l1Addr } };
  const desc = [l1.value];
  const span = getNum(desc, L1STD.Span);
  // §7.3.3: Span 0, reserved (> 12), larger than SPLIT + 1, or index beyond the L2 array.
  if (span === 0 || span > 12 || span > split + 1 || l2idx >= 2 ** (span - 1)) {
    return { ok: false, fault: "C_BAD_STREAMID", loc: { l1Addr, l1Desc: l1.value } };
  }
  // L2 array of 2^(Span-1) STEs is aligned to its size.
  const l2Ptr = (get(desc, L1STD.L2Ptr) << 6n) & ~((1n << BigInt(span - 1 + 6)) - 1n);
  return readSte(mem, l2Ptr + BigInt(l2idx) * BigInt(STE_BYTES), { l1Addr, l1Desc: l1.value });
}

function readSte(mem: PhysicalMemory, steAddr: bigint, loc: Omit<SteLocation, "steAddr">): SteFetch {
  const r = mem.read(steAddr, STE_BYTES);
  if (!r.ok) return { ok: false, fault: "F_STE_FETCH", FetchAddr: steAddr, loc: { ...loc, steAddr } };
  return { ok: true, words: bytesToWords(r.value), loc: { ...loc, steAddr } };
}
