// Vendor payloads as the kernel sees them: the typed proto messages are
// encoded to the exact C struct bytes (little endian, fields in order), raw
// bytes are taken as they are, and the kernel's length rules are applied to
// the user buffer: the count/length field is authoritative, reading past the
// inline data is a fault on the user buffer (EFAULT), no data is a NULL
// pointer.
import { ErrnoError } from "@iommufd/kit";
import type { HwptAllocRequest, InvalidateEntry } from "@iommufd/proto/iommufd";

class LeWriter {
  private readonly bytes: Uint8Array;
  private readonly view: DataView;
  private off = 0;

  constructor(size: number) {
    this.bytes = new Uint8Array(size);
    this.view = new DataView(this.bytes.buffer);
  }

  u32(v: number): this {
    this.view.setUint32(this.off, v >>> 0, true);
    this.off += 4;
    return this;
  }

  u64(v: bigint): this {
    this.view.setBigUint64(this.off, BigInt.asUintN(64, v), true);
    this.off += 8;
    return this;
  }

  words(ws: readonly bigint[], n: number): this {
    for (let i = 0; i < n; i++) this.u64(ws[i] ?? 0n);
    return this;
  }

  done(): Uint8Array {
    return this.bytes;
  }
}

/** struct iommu_hwpt_vtd_s1 (24), iommu_hwpt_arm_smmuv3 (16), iommu_hwpt_amd_guest (32) — or the raw bytes. */
export function hwptDataBytes(req: HwptAllocRequest): Uint8Array | undefined {
  const d = req.data;
  switch (d.case) {
    case "vtdS1":
      return new LeWriter(24).u64(d.value.flags).u64(d.value.pgtblAddr).u32(d.value.addrWidth).u32(d.value.reserved).done();
    case "armSmmuv3":
      return new LeWriter(16).words(d.value.ste, 2).done();
    case "amdGuest":
      return new LeWriter(32).words(d.value.dte, 4).done();
    case "raw":
      return d.value;
    default:
      return undefined;
  }
}

/** One invalidation entry as bytes: iommu_hwpt_vtd_s1_invalidate (24), iommu_viommu_arm_smmuv3_invalidate (16), or raw. */
export function invalidateEntryBytes(e: InvalidateEntry): Uint8Array {
  const v = e.entry;
  switch (v.case) {
    case "vtdS1":
      return new LeWriter(24).u64(v.value.addr).u64(v.value.npages).u32(v.value.flags).u32(v.value.reserved).done();
    case "armSmmuv3":
      return new LeWriter(16).words(v.value.cmd, 2).done();
    case "raw":
      return v.value;
    default:
      return new Uint8Array(0);
  }
}

/**
 * The user buffer of `len` bytes behind a pointer: `inline` holds what the
 * caller sent. No inline data with len > 0 is a NULL pointer, less data
 * than len a read past the end of the buffer: both EFAULT.
 */
export function userBuffer(inline: Uint8Array | undefined, len: number): Uint8Array {
  if (len === 0) return new Uint8Array(0);
  if (!inline || inline.length === 0) throw new ErrnoError("EFAULT", "NULL user pointer with a non-zero length");
  if (inline.length < len) throw new ErrnoError("EFAULT", `length ${len} reaches past the ${inline.length} bytes given`);
  return inline.subarray(0, len);
}
