// Driver-side helpers: what a host driver writes for iommufd's VT-d nested
// objects, following the Linux intel driver (intel_pasid_setup_nested,
// cache_tag_flush_range, qi_flush_*). Pure encoders; the host owns the
// memory and the queue.

import { atsRangeEncode, vtdAmFor } from "../cache/ranges.js";
import { FLPM, PGTT } from "./entries.js";
import {
  DEVTLB_INV_DESC,
  encodeInvDesc,
  INV_DESC_TYPE,
  IOTLB_GRAN,
  IOTLB_INV_DESC,
  PC_GRAN,
  PC_INV_DESC,
  PDEVTLB_INV_DESC,
  PIOTLB_GRAN,
  PIOTLB_INV_DESC,
  WAIT_INV_DESC,
} from "./invdesc.js";
import type { SmPasidFields } from "./tables.js";

/** `struct iommu_hwpt_vtd_s1` flags (iommufd uAPI). */
export const IOMMU_VTD_S1 = { SRE: 1n << 0n, EAFE: 1n << 1n, WPE: 1n << 2n } as const;

/** `struct iommu_hwpt_vtd_s1` (24 bytes). */
export interface IommuHwptVtdS1 {
  flags: bigint;
  pgtbl_addr: bigint;
  addr_width: number;
  __reserved: number;
}

/** The nesting parent (HWPT_PAGING with NEST_PARENT) as the PASID entry needs it. */
export interface VtdNestParent {
  /** HPA of the second-stage root. */
  readonly ssptptr: bigint;
  /** AW (1/2/3 → 39/48/57-bit). */
  readonly aw: number;
  /** Dirty tracking on the parent (SSADE). */
  readonly ssade?: boolean;
}

/**
 * PASID-entry fields for a nested translation (PGTT = 011b), as Linux
 * intel_pasid_setup_nested() fills them: FSPTPTR = guest pgtbl_addr (a GPA),
 * FLPM from addr_width (57 → 5-level), SRE / WPE / EAFE from the guest flags,
 * SSPTPTR / AW / SSADE from the parent, DID, PWSNP when page walks snoop,
 * PGSNP when snooping is forced, FPD clear.
 * Returns an error string where Linux refuses (EINVAL / EOPNOTSUPP territory).
 */
export function nestedPasidFields(
  s1: IommuHwptVtdS1,
  parent: VtdNestParent,
  did: number,
  opts: { fs5lp: boolean; pwsnp?: boolean; pgsnp?: boolean },
): { ok: true; fields: SmPasidFields } | { ok: false; error: string } {
  const known = IOMMU_VTD_S1.SRE | IOMMU_VTD_S1.EAFE | IOMMU_VTD_S1.WPE;
  if ((s1.flags & ~known) !== 0n || s1.__reserved !== 0) return { ok: false, error: "unsupported flags" };
  if (s1.addr_width !== 48 && s1.addr_width !== 57) return { ok: false, error: "addr_width" };
  if (s1.addr_width === 57 && !opts.fs5lp) return { ok: false, error: "5-level first stage not supported" };
  if ((s1.pgtbl_addr & 0xfffn) !== 0n) return { ok: false, error: "pgtbl_addr not page aligned" };
  return {
    ok: true,
    fields: {
      P: 1,
      PGTT: PGTT.NESTED,
      FSPTPTR: s1.pgtbl_addr,
      FLPM: s1.addr_width === 57 ? FLPM.LEVEL5 : FLPM.LEVEL4,
      SRE: s1.flags & IOMMU_VTD_S1.SRE ? 1 : 0,
      WPE: s1.flags & IOMMU_VTD_S1.WPE ? 1 : 0,
      EAFE: s1.flags & IOMMU_VTD_S1.EAFE ? 1 : 0,
      SSPTPTR: parent.ssptptr,
      AW: parent.aw,
      SSADE: parent.ssade ? 1 : 0,
      DID: did,
      PWSNP: opts.pwsnp ? 1 : 0,
      PGSNP: opts.pgsnp ? 1 : 0,
    },
  };
}

/** PASID-cache invalidation of one PASID (Linux after writing a PASID entry). */
export function pasidCacheDesc(did: number, pasid: number): bigint[] {
  return encodeInvDesc(INV_DESC_TYPE.PASID_CACHE, PC_INV_DESC, { G: PC_GRAN.PASID, DID: did, PASID: pasid });
}

/**
 * PASID-based IOTLB invalidation for [addr, addr + npages·4K), the host side
 * of `iommu_hwpt_vtd_s1_invalidate`: npages = 2^64−1 (with addr 0) → all of
 * (DID, PASID); otherwise page-selective with the smallest covering AM
 * (Linux computes the same mask), IH = the LEAF flag.
 */
export function piotlbDesc(did: number, pasid: number, addr: bigint, npages: bigint, leaf = false): bigint[] {
  if (npages === 0xffff_ffff_ffff_ffffn) {
    return encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, { G: PIOTLB_GRAN.PASID, DID: did, PASID: pasid });
  }
  const { addr: base, am } = vtdAmFor(addr, npages << 12n);
  return encodeInvDesc(INV_DESC_TYPE.PASID_IOTLB, PIOTLB_INV_DESC, {
    G: PIOTLB_GRAN.PAGE,
    DID: did,
    PASID: pasid,
    AM: am,
    IH: leaf ? 1 : 0,
    ADDR: base >> 12n,
  });
}

/** Domain-selective IOTLB invalidation (a nest parent changed: every nested PASID of the DID). */
export function iotlbDomainDesc(did: number): bigint[] {
  return encodeInvDesc(INV_DESC_TYPE.IOTLB, IOTLB_INV_DESC, { G: IOTLB_GRAN.DOMAIN, DID: did });
}

/**
 * Device-TLB invalidation for a range (ATS S encoding), PASID-based when
 * `pasid` is given. `all` = the whole device TLB (Linux does this for
 * nested domains when the parent changes).
 */
export function devtlbDesc(sid: number, pasid: number | undefined, addr: bigint, size: bigint, all = false): bigint[] {
  const enc = all ? { addr: 0x7fff_ffff_ffff_f000n, s: true } : atsRangeEncode(addr, size);
  if (pasid === undefined) {
    return encodeInvDesc(INV_DESC_TYPE.DEVICE_TLB, DEVTLB_INV_DESC, { SID: sid, S: enc.s ? 1 : 0, ADDR: enc.addr >> 12n });
  }
  return encodeInvDesc(INV_DESC_TYPE.PASID_DEVICE_TLB, PDEVTLB_INV_DESC, { SID: sid, PASID: pasid, S: enc.s ? 1 : 0, ADDR: enc.addr >> 12n });
}

/** Invalidation wait with a status write (SW) and optional fence / interrupt. */
export function waitDesc(statusAddr: bigint, statusData: number, opts: { fence?: boolean; interrupt?: boolean } = {}): bigint[] {
  return encodeInvDesc(INV_DESC_TYPE.WAIT, WAIT_INV_DESC, {
    SW: 1,
    FN: opts.fence ? 1 : 0,
    IF: opts.interrupt ? 1 : 0,
    SDATA: statusData,
    SADDR: statusAddr >> 2n,
  });
}
