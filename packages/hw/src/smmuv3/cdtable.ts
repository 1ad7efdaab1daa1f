// Context descriptor table walk: (STE stage-1 fields, SubstreamID) → CD
// words, for linear and 2-level CD tables (Arm IHI 0070 §3.3.2, §5.3, §5.2
// S1Fmt/S1CDMax). In nested configurations S1ContextPtr and L1CD.L2Ptr are
// IPAs: every fetch address goes through `toPa` (stage 2) first, and a
// stage-2 failure is handed back unchanged for the caller to report with
// CLASS = CD and IPA = the fetch address (reference/hw-formats.md §5.3).

import { bytesToWords, get } from "../bits.js";
import type { PhysicalMemory } from "../memory.js";
import { CD_BYTES, L1CD, L1CD_BYTES } from "./cd.js";
import { STE_S1FMT } from "./ste.js";

/** Stage-2 translation of a CD-table fetch address; identity when stage 2 is off. */
export type CdAddressTranslator<F> = (ipa: bigint) => { ok: true; pa: bigint } | { ok: false; fault: F };

export interface CdTableConfig {
  S1ContextPtr: bigint;
  S1Fmt: number;
  S1CDMax: number;
  /** CD2L implemented; without it S1Fmt != 0 never reaches here (the STE is ILLEGAL). */
  twoLevel: boolean;
  /** Effective output size for range checks of L1CD.L2Ptr (IAS when nested, else OAS). */
  addrBits: number;
}

/** One descriptor read on the way to a CD (explain output). */
export interface CdFetchStep {
  what: "L1CD" | "CD";
  /** Address as programmed (an IPA when nested). */
  addr: bigint;
  /** Physical address read. */
  pa: bigint;
  value?: bigint;
}

export type CdFetch<F> =
  | { ok: true; words: bigint[]; cdAddr: bigint; cdPa: bigint; steps: CdFetchStep[] }
  | { ok: false; fault: "C_BAD_SUBSTREAMID"; steps: CdFetchStep[] }
  | { ok: false; fault: "F_CD_FETCH"; FetchAddr: bigint; steps: CdFetchStep[] }
  | { ok: false; fault: "S2"; s2: F; ipa: bigint; steps: CdFetchStep[] };

/**
 * Fetch the CD for `ssid` (0 for non-substream traffic or the single CD).
 * The caller has already checked SSID against S1CDMax / S1DSS.
 */
export function fetchCd<F>(
  mem: PhysicalMemory,
  t: CdTableConfig,
  ssid: number,
  toPa: CdAddressTranslator<F>,
): CdFetch<F> {
  const steps: CdFetchStep[] = [];
  let cdAddr: bigint;
  const fmt = t.S1CDMax === 0 ? STE_S1FMT.LINEAR : t.S1Fmt;
  if (fmt === STE_S1FMT.TWO_LEVEL_4K || fmt === STE_S1FMT.TWO_LEVEL_64K) {
    const leafBits = fmt === STE_S1FMT.TWO_LEVEL_4K ? 6 : 10;
    const l1Bits = Math.max(0, t.S1CDMax - leafBits);
    // L1 table aligned to its size or 64 bytes.
    const l1Base = t.S1ContextPtr & ~((1n << BigInt(Math.max(6, l1Bits + 3))) - 1n);
    const l1Addr = l1Base + BigInt(ssid >>> leafBits) * BigInt(L1CD_BYTES);
    const l1Pa = toPa(l1Addr);
    if (!l1Pa.ok) return { ok: false, fault: "S2", s2: l1Pa.fault, ipa: l1Addr, steps };
    const l1 = mem.read64(l1Pa.pa);
    if (!l1.ok) {
      steps.push({ what: "L1CD", addr: l1Addr, pa: l1Pa.pa });
      return { ok: false, fault: "F_CD_FETCH", FetchAddr: l1Pa.pa, steps };
    }
    steps.push({ what: "L1CD", addr: l1Addr, pa: l1Pa.pa, value: l1.value });
    const d = [l1.value];
    // §7.3.9: L1CD.V = 0, or an L2Ptr out of range, is C_BAD_SUBSTREAMID.
    if (get(d, L1CD.V) === 0n) return { ok: false, fault: "C_BAD_SUBSTREAMID", steps };
    let l2Ptr = get(d, L1CD.L2Ptr) << 12n;
    if (fmt === STE_S1FMT.TWO_LEVEL_64K) l2Ptr &= ~0xffffn; // L2Ptr[15:12] RES0 for 64 KB leaves
    if (t.addrBits < 64 && l2Ptr >> BigInt(t.addrBits) !== 0n) return { ok: false, fault: "C_BAD_SUBSTREAMID", steps };
    cdAddr = l2Ptr + BigInt(ssid & ((1 << leafBits) - 1)) * BigInt(CD_BYTES);
  } else {
    // Linear (S1Fmt 0, or Reserved 0b11 behaving as 0): the table is aligned to its size.
    const base = t.S1ContextPtr & ~((1n << BigInt(t.S1CDMax + 6)) - 1n);
    cdAddr = base + BigInt(ssid) * BigInt(CD_BYTES);
  }
  const cdPa = toPa(cdAddr);
  if (!cdPa.ok) return { ok: false, fault: "S2", s2: cdPa.fault, ipa: cdAddr, steps };
  const r = mem.read(cdPa.pa, CD_BYTES);
  if (!r.ok) {
    steps.push({ what: "CD", addr: cdAddr, pa: cdPa.pa });
    return { ok: false, fault: "F_CD_FETCH", FetchAddr: cdPa.pa, steps };
  }
  const words = bytesToWords(r.value);
  steps.push({ what: "CD", addr: cdAddr, pa: cdPa.pa, value: words[0] });
  return { ok: true, words, cdAddr, cdPa: cdPa.pa, steps };
}
