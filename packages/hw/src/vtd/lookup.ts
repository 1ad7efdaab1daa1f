// Root → scalable-mode context → PASID directory → PASID table entry fetch
// (spec §3.4.3 "Scalable-Mode Address Translation"). Every fetch reads host
// physical memory; every failure is a scalable-mode fault reason value.
// Every descriptor read is reported to an optional visitor (explain).

import { bytesToWords } from "../bits.js";
import type { PhysicalMemory } from "../memory.js";
import {
  decodePasidDirEntry,
  decodeSmContextEntry,
  decodeSmPasidEntry,
  decodeSmRootEntry,
  PASID_DIR_ENTRY_BYTES,
  pasidDirEntries,
  pasidIndices,
  SM_CONTEXT_ENTRY_BYTES,
  SM_PASID_ENTRY_BYTES,
  SM_ROOT_ENTRY_BYTES,
  type SmContextEntry,
  type SmPasidEntry,
  type VtdEntryLimits,
} from "./entries.js";
import { VTD_FR, type VtdFaultReason } from "./fault-reasons.js";

/** One structure read, for explain output. */
export interface StructureRead {
  readonly what: "root-entry" | "context-entry" | "pasid-dir-entry" | "pasid-entry";
  readonly addr: bigint;
  readonly words: readonly bigint[];
}

export type LookupFault = { ok: false; reason: VtdFaultReason; fpd: boolean; at?: bigint };

function readWords(mem: PhysicalMemory, addr: bigint, bytes: number): bigint[] | undefined {
  const r = mem.read(addr, bytes);
  return r.ok ? bytesToWords(r.value) : undefined;
}

/** Fetch and validate the scalable-mode context entry for `rid` (bus = rid[15:8], devfn = rid[7:0]). */
export function fetchContextEntry(
  mem: PhysicalMemory,
  rta: bigint,
  rid: number,
  lim: VtdEntryLimits,
  visit?: (r: StructureRead) => void,
): { ok: true; ctx: SmContextEntry } | LookupFault {
  const bus = (rid >> 8) & 0xff;
  const devfn = rid & 0xff;
  const rootAddr = rta + BigInt(bus * SM_ROOT_ENTRY_BYTES);
  const root = readWords(mem, rootAddr, SM_ROOT_ENTRY_BYTES);
  if (!root) return { ok: false, reason: VTD_FR.SM_ROOT_ACCESS, fpd: false, at: rootAddr };
  visit?.({ what: "root-entry", addr: rootAddr, words: root });
  const half = decodeSmRootEntry(root, devfn, lim.haw);
  if (!half.ok) return { ok: false, reason: half.reason, fpd: false, at: rootAddr };
  const ctxAddr = half.entry.ctp + BigInt((devfn & 0x7f) * SM_CONTEXT_ENTRY_BYTES);
  const words = readWords(mem, ctxAddr, SM_CONTEXT_ENTRY_BYTES);
  if (!words) return { ok: false, reason: VTD_FR.SM_CTX_ACCESS, fpd: false, at: ctxAddr };
  visit?.({ what: "context-entry", addr: ctxAddr, words });
  const ctx = decodeSmContextEntry(words, lim);
  if (!ctx.ok) return { ok: false, reason: ctx.reason, fpd: ctx.fpd, at: ctxAddr };
  return { ok: true, ctx: ctx.entry };
}

/** Fetch and validate the PASID table entry for `pasid` under a context entry. */
export function fetchPasidEntry(
  mem: PhysicalMemory,
  ctx: SmContextEntry,
  pasid: number,
  lim: VtdEntryLimits,
  visit?: (r: StructureRead) => void,
): { ok: true; pe: SmPasidEntry } | LookupFault {
  const { dir, table } = pasidIndices(pasid);
  if (dir >= pasidDirEntries(ctx)) return { ok: false, reason: VTD_FR.SM_CTX_PDTS, fpd: ctx.fpd };
  const pdeAddr = ctx.pasidDirPtr + BigInt(dir * PASID_DIR_ENTRY_BYTES);
  const pdeRead = mem.read64(pdeAddr);
  if (!pdeRead.ok) return { ok: false, reason: VTD_FR.SM_PDE_ACCESS, fpd: ctx.fpd, at: pdeAddr };
  visit?.({ what: "pasid-dir-entry", addr: pdeAddr, words: [pdeRead.value] });
  const pde = decodePasidDirEntry(pdeRead.value, lim.haw, ctx.fpd);
  if (!pde.ok) return { ok: false, reason: pde.reason, fpd: pde.fpd, at: pdeAddr };
  const peAddr = pde.entry.table + BigInt(table * SM_PASID_ENTRY_BYTES);
  const words = readWords(mem, peAddr, SM_PASID_ENTRY_BYTES);
  if (!words) return { ok: false, reason: VTD_FR.SM_PTE_ACCESS, fpd: pde.entry.fpd, at: peAddr };
  visit?.({ what: "pasid-entry", addr: peAddr, words });
  const pe = decodeSmPasidEntry(words, lim, pde.entry.fpd);
  if (!pe.ok) return { ok: false, reason: pe.reason, fpd: pe.fpd, at: peAddr };
  return { ok: true, pe: pe.entry };
}
