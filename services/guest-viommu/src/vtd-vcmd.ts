// The VT-d virtual command interface (VT-d 3.x §10.4.43–45, "Virtual Command
// Capability / Command / Response"): how a guest asks its virtual IOMMU for a
// PASID, so the VMM owns the VM's PASID space (Linux supported it from 5.7
// to 5.15: intel-iommu.h DMAR_VC*_REG, pasid.h VCMD_*). Register offsets and
// encodings are Linux's; they are not in packages/hw (a virtual-only
// feature), so both the guest driver and the VMM's vVT-d read them from here.

export const VCMD_REG = {
  /** Virtual Command Capability: bit 0 PAS (PASID allocation supported). */
  VCCAP: 0xe30,
  /** Virtual Command: command in bits [7:0], operand from bit 8. */
  VCMD: 0xe00,
  /** Virtual Command Response: IP bit 0, SC bits [2:1], result from bit 8. */
  VCRSP: 0xe10,
} as const;

export const VCCAP_PAS = 1n;

export const VCMD_CMD = { ALLOC: 1, FREE: 2 } as const;

/** VCRSP.SC (status code). For ALLOC: 2 = no PASID available; for FREE: 2 = invalid PASID. */
export const VCMD_SC = { SUCCESS: 0, NO_PASID_AVAIL: 2, INVALID_PASID: 2 } as const;

export const VCRSP_IP = 1n;

export function vcrsp(sc: number, result = 0n): bigint {
  return (result << 8n) | (BigInt(sc & 3) << 1n);
}

export function vcrspStatus(v: bigint): { inProgress: boolean; sc: number; result: bigint } {
  return { inProgress: (v & VCRSP_IP) !== 0n, sc: Number((v >> 1n) & 3n), result: (v >> 8n) & 0xf_ffffn };
}
