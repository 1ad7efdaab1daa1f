// VT-d scalable-mode fault reasons (spec Appendix A "Non-Recoverable Fault
// Reason Encodings"; names follow the spec's conditions, codes and wording
// cross-checked with the Linux intel driver's dma_remap_sm_fault_reasons[]).
// One `as const` table and one name lookup; nothing else in vtd/ spells a
// reason code.

import { nameOf } from "../bits.js";

export const VTD_FR = {
  // Legacy-mode reasons (kept for decoding records; the model runs scalable mode).
  ROOT_ENTRY_P: 0x01,
  CONTEXT_ENTRY_P: 0x02,
  CONTEXT_ENTRY_INV: 0x03,
  ADDR_BEYOND_MGAW: 0x04,
  WRITE: 0x05,
  READ: 0x06,
  PAGING_ENTRY_INV: 0x07,
  ROOT_TABLE_INV: 0x08,
  CONTEXT_TABLE_INV: 0x09,
  ROOT_ENTRY_RSVD: 0x0a,
  CONTEXT_ENTRY_RSVD: 0x0b,
  PAGING_ENTRY_RSVD: 0x0c,
  CONTEXT_ENTRY_TT: 0x0d,

  // Root table / root entry.
  SM_RTADDR_INV: 0x30,
  SM_TTM_LEGACY_PASID: 0x31,
  SM_TTM_LEGACY_PRQ: 0x32,
  SM_ROOT_ACCESS: 0x38,
  SM_ROOT_P: 0x39,
  SM_ROOT_RSVD: 0x3a,

  // Scalable-mode context entry.
  SM_CTX_ACCESS: 0x40,
  SM_CTX_P: 0x41,
  SM_CTX_RSVD: 0x42,
  SM_CTX_INV: 0x43,
  SM_CTX_DTE: 0x44,
  SM_CTX_PASIDE: 0x45,
  SM_CTX_PDTS: 0x46,
  SM_CTX_PRE: 0x47,
  SM_CTX_RID_PASID: 0x48,

  // PASID directory entry.
  SM_PDE_ACCESS: 0x50,
  SM_PDE_P: 0x51,
  SM_PDE_RSVD: 0x52,

  // PASID table entry.
  SM_PTE_ACCESS: 0x58,
  SM_PTE_P: 0x59,
  SM_PTE_RSVD: 0x5a,
  SM_PTE_INV: 0x5b,
  SM_PTE_ERE: 0x5c,
  SM_PTE_SRE: 0x5d,

  // First-stage translation.
  SM_FS_ACCESS: 0x70,
  SM_FS_P: 0x71,
  SM_FS_RSVD: 0x72,
  SM_FS_ROOT_ACCESS: 0x73,
  SM_NESTED_FS_ADDR: 0x74,
  SM_NESTED_FS_ROOT_READ: 0x75,
  SM_NESTED_FS_READ: 0x76,
  SM_NESTED_FS_WRITE: 0x77,

  // Second-stage translation.
  SM_SS_ACCESS: 0x78,
  SM_SS_NOT_PRESENT: 0x79,
  SM_SS_RSVD: 0x7a,
  SM_SSPTPTR_INV: 0x7b,
  SM_SS_AD_NOSNOOP: 0x7c,

  // General (apply to the combined translation).
  SM_NON_CANONICAL: 0x80,
  SM_US: 0x81,
  SM_EXECUTE: 0x82,
  SM_INPUT_BEYOND_MAX: 0x83,
  SM_OUTPUT_BEYOND_MAX: 0x84,
  SM_WRITE: 0x85,
  SM_READ: 0x86,
  SM_INTERRUPT_ADDR: 0x87,
  SM_FS_AD_NOSNOOP: 0x90,
} as const;
export type VtdFaultReason = (typeof VTD_FR)[keyof typeof VTD_FR];

/** "SM_CTX_DTE" for 0x44; hex for unknown codes. */
export function vtdFaultReasonName(code: number): string {
  return nameOf(VTD_FR, code);
}

/** The interrupt address range (0xFEE0_0000–0xFEEF_FFFF); DMA may not be translated into it. */
export const VTD_INTERRUPT_RANGE = { first: 0xfee0_0000n, last: 0xfeef_ffffn } as const;
