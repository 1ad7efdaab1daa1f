// The ONE place where a walker fault value becomes a VT-d scalable-mode fault
// reason. Structure-fetch faults (root/context/PASID) are produced by
// lookup.ts directly as reasons, because they never go through the walker.
//
// Rules (spec Appendix A; nested rows from §3.8 / hw-formats.md §2.6, §5.3):
// - First-stage walk (stage 1): not present 0x71, reserved bits 0x72, memory
//   error on the root (PML5/PML4) fetch 0x73, on other entries 0x70;
//   non-canonical input 0x80; in nested mode an FS address beyond the
//   second-stage width 0x74 (FS-only: address bits above HAW are reserved
//   bits, 0x72).
// - Second stage while translating a first-stage structure (cls "TT"): GPA
//   beyond the SS width 0x74; no SS read permission for the FS root 0x75, for
//   another FS entry 0x76; no SS write permission for an FS A/D update 0x77.
// - Second stage for the transaction's own address (cls "IN": SS-only input,
//   or the nested final GPA) and SS walk errors for either purpose: not
//   present (R=W=0) 0x79, reserved 0x7A, memory error on the SS root 0x7B,
//   on other SS entries 0x78, SS output beyond HAW 0x84; SS-only input beyond
//   the AGAW 0x83.
// - Permissions of the combined translation: execute 0x82, user access to a
//   supervisor-only page 0x81, write 0x85, read 0x86.
// - request-blocked (SRE = 0 and a supervisor request) 0x5D.

import type { TranslationFault } from "../translation.js";
import { Perm } from "../translation.js";
import { VTD_FR, type VtdFaultReason } from "./fault-reasons.js";

/** What the model knows about the walk that failed. */
export interface FaultContext {
  /** Nested translation (PGTT = 011b). */
  readonly nested: boolean;
  /** Start level of the first-stage walk (0 = PML4, -1 = PML5). */
  readonly s1StartLevel?: number;
  /** Start level of the second-stage walk. */
  readonly s2StartLevel?: number;
}

const USER_BITS = Perm.UR | Perm.UW | Perm.UX;

function permissionReason(f: TranslationFault): VtdFaultReason {
  if (f.access === "exec") return VTD_FR.SM_EXECUTE;
  if (!f.privileged && f.perms !== undefined && (f.perms & USER_BITS) === 0) return VTD_FR.SM_US;
  return f.access === "write" ? VTD_FR.SM_WRITE : VTD_FR.SM_READ;
}

export function vtdReasonForWalkFault(f: TranslationFault, ctx: FaultContext): VtdFaultReason {
  if (f.kind === "request-blocked") return VTD_FR.SM_PTE_SRE;
  if (f.kind === "aborted") return VTD_FR.SM_PTE_INV;
  if (f.stage === 2) {
    const atRoot = ctx.s2StartLevel !== undefined && f.level === ctx.s2StartLevel;
    switch (f.kind) {
      case "translation":
        return VTD_FR.SM_SS_NOT_PRESENT;
      case "reserved-bit":
        return VTD_FR.SM_SS_RSVD;
      case "external-abort":
        return atRoot ? VTD_FR.SM_SSPTPTR_INV : VTD_FR.SM_SS_ACCESS;
      case "address-size":
        return VTD_FR.SM_OUTPUT_BEYOND_MAX;
      case "input-range":
      case "non-canonical":
        return ctx.nested ? VTD_FR.SM_NESTED_FS_ADDR : VTD_FR.SM_INPUT_BEYOND_MAX;
      case "access-flag":
        return VTD_FR.SM_SS_NOT_PRESENT;
      case "permission":
        if (f.cls === "TT") {
          if (f.access === "write") return VTD_FR.SM_NESTED_FS_WRITE;
          return f.s1Level !== undefined && f.s1Level === ctx.s1StartLevel
            ? VTD_FR.SM_NESTED_FS_ROOT_READ
            : VTD_FR.SM_NESTED_FS_READ;
        }
        return permissionReason(f);
    }
  }
  // Stage 1 (first stage).
  const atRoot = ctx.s1StartLevel !== undefined && f.level === ctx.s1StartLevel;
  switch (f.kind) {
    case "translation":
    case "access-flag":
      return VTD_FR.SM_FS_P;
    case "reserved-bit":
      return VTD_FR.SM_FS_RSVD;
    case "external-abort":
      return atRoot ? VTD_FR.SM_FS_ROOT_ACCESS : VTD_FR.SM_FS_ACCESS;
    case "non-canonical":
    case "input-range":
      return VTD_FR.SM_NON_CANONICAL;
    case "address-size":
      return ctx.nested ? VTD_FR.SM_NESTED_FS_ADDR : VTD_FR.SM_FS_RSVD;
    case "permission":
      return permissionReason(f);
  }
  return VTD_FR.SM_PTE_INV;
}
