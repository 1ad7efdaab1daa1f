// IOAS: an IOVA → memory map (the kernel's ioas.c). The object owns its
// io_pagetable; the handlers check inputs in the kernel's order
// (reference/iommufd-uapi.md §3.2–3.9) and leave the IOVA rules to iopt.
import { check, ErrnoError, type Logger } from "@iommufd/kit";
import { IoasMapFlags, type Iommufd, OptionId, OptionOps } from "@iommufd/proto/iommufd";
import type { Ucmd, UcmdTable } from "../core/dispatch.js";
import { IommufdObject } from "../core/object.js";
import type { PagingDomain } from "../drivers/ops.js";
import { IoPagetable, type IoptDomain, type Prot, ULONG_MAX } from "../iopt/io-pagetable.js";

/**
 * Wait for the device-TLB invalidations the domains started. A device that
 * never completes is the data plane's to contain (its ATS is cut off); the
 * unmap itself has happened and succeeds, as Linux logs the time-out and
 * carries on.
 */
export async function syncDomains(domains: readonly IoptDomain[], ucmd: { readonly log: Logger }): Promise<void> {
  const results = await Promise.allSettled(domains.map((d) => (d as Partial<PagingDomain>).iotlbSync?.()));
  for (const r of results) if (r.status === "rejected") ucmd.log.warn({ err: String(r.reason) }, "device-TLB invalidation did not complete");
}

export class Ioas extends IommufdObject {
  readonly type = "IOAS" as const;
  readonly iopt: IoPagetable;

  constructor(ucmd: Ucmd) {
    super();
    this.iopt = new IoPagetable(ucmd.session.mm, ucmd.session.failNth);
  }

  release(): void {
    this.iopt.destroy();
  }

  override describe() {
    return {
      areas: this.iopt.areas.size,
      mapped_bytes: this.iopt.mappedBytes,
      domains: this.iopt.domains.length,
      iova_alignment: this.iopt.iovaAlignment,
    };
  }
}

const MAP_FLAGS = IoasMapFlags.FIXED_IOVA | IoasMapFlags.WRITEABLE | IoasMapFlags.READABLE;

/** Steps shared by MAP, MAP_FILE and COPY: known flags, no overflow, some permission. */
function checkMapFlags(flags: number, values: bigint[]): Prot {
  check((flags & ~MAP_FLAGS) === 0, "EOPNOTSUPP", `unknown flags 0x${(flags & ~MAP_FLAGS).toString(16)}`);
  for (const v of values) check(v < ULONG_MAX, "EOVERFLOW", "iova or length is U64_MAX");
  const prot = { read: (flags & IoasMapFlags.READABLE) !== 0, write: (flags & IoasMapFlags.WRITEABLE) !== 0 };
  check(prot.read || prot.write, "EINVAL", "neither READABLE nor WRITEABLE");
  return prot;
}

function fixedIova(flags: number, iova: bigint): bigint | undefined {
  return flags & IoasMapFlags.FIXED_IOVA ? iova : undefined;
}

export const ioasHandlers: UcmdTable<typeof Iommufd> = {
  ioasAlloc(req, ucmd) {
    check(req.flags === 0, "EOPNOTSUPP", "flags must be 0");
    const ioas = ucmd.alloc(new Ioas(ucmd));
    return { outIoasId: ioas.id };
  },

  ioasIovaRanges(req, { session }) {
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    const { iopt } = session.objects.get<Ioas>(req.ioasId, "IOAS");
    const ranges = iopt.iovaRanges();
    const out = { numIovas: ranges.length, allowedIovas: ranges.slice(0, req.numIovas), outIovaAlignment: iopt.iovaAlignment };
    if (ranges.length > req.numIovas) {
      throw new ErrnoError("EMSGSIZE", `${ranges.length} ranges do not fit in num_iovas ${req.numIovas}`, { response: out });
    }
    return out;
  },

  ioasAllowIovas(req, { session }) {
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    const { iopt } = session.objects.get<Ioas>(req.ioasId, "IOAS");
    check(req.numIovas <= req.allowedIovas.length, "EFAULT", `num_iovas ${req.numIovas} reaches past the ${req.allowedIovas.length} ranges given`);
    iopt.setAllowed(req.allowedIovas.slice(0, req.numIovas).map((r) => ({ start: r.start, last: r.last })));
    return {};
  },

  ioasMap(req, { session }) {
    check(req.reserved === 0 && (req.flags & ~MAP_FLAGS) === 0, "EOPNOTSUPP", "unknown flags or reserved ≠ 0");
    const prot = checkMapFlags(req.flags, [req.iova, req.length]);
    const { iopt } = session.objects.get<Ioas>(req.ioasId, "IOAS");
    const iova = iopt.map({ kind: "user", va: req.userVa }, req.length, { iova: fixedIova(req.flags, req.iova), prot, srcAddr: req.userVa });
    return { iova };
  },

  ioasMapFile(req, { session }) {
    const prot = checkMapFlags(req.flags, [req.iova, req.length]);
    const { iopt } = session.objects.get<Ioas>(req.ioasId, "IOAS");
    check(req.length !== 0n, "EINVAL", "length is 0");
    check(req.start + req.length - 1n <= ULONG_MAX, "EOVERFLOW", "start + length overflows");
    const e = session.fd(req.fd);
    if (e.kind !== "memfd") throw new ErrnoError("EBADF", `fd ${req.fd} is not a memfd`);
    check(req.start + req.length <= e.file.size, "EINVAL", "range beyond the end of the file");
    if (prot.write && !e.file.writable) throw new ErrnoError("EPERM", "file not opened for write");
    const iova = iopt.map({ kind: "file", file: e.file, offset: req.start }, req.length, {
      iova: fixedIova(req.flags, req.iova),
      prot,
      srcAddr: req.start,
    });
    return { iova };
  },

  ioasCopy(req, { session }) {
    const prot = checkMapFlags(req.flags, [req.length, req.srcIova, req.dstIova]);
    const src = session.objects.get<Ioas>(req.srcIoasId, "IOAS");
    const pieces = src.iopt.copySource(req.srcIova, req.length);
    const dst = session.objects.get<Ioas>(req.dstIoasId, "IOAS");
    const dstIova = dst.iopt.mapShared(pieces, { iova: fixedIova(req.flags, req.dstIova), prot, srcAddr: req.srcIova });
    return { dstIova };
  },

  async ioasUnmap(req, ucmd) {
    const { iopt } = ucmd.session.objects.get<Ioas>(req.ioasId, "IOAS");
    let length: bigint;
    if (req.iova === 0n && req.length === ULONG_MAX) length = iopt.unmapAll();
    else {
      check(req.iova < ULONG_MAX && req.length < ULONG_MAX, "EOVERFLOW", "iova or length is U64_MAX");
      length = iopt.unmap(req.iova, req.length);
    }
    // The unmap returns once every device's ATC has dropped the range (Linux's iotlb_sync).
    await syncDomains(iopt.domains, ucmd);
    return { length };
  },

  option(req, { session }) {
    check(req.reserved === 0, "EOPNOTSUPP", "reserved must be 0");
    check(req.optionId === OptionId.RLIMIT_MODE || req.optionId === OptionId.HUGE_PAGES, "EOPNOTSUPP", `unknown option_id ${req.optionId}`);
    if (req.optionId === OptionId.RLIMIT_MODE) {
      check(req.objectId === 0, "EOPNOTSUPP", "RLIMIT_MODE takes object_id 0");
      if (req.op === OptionOps.GET) return { val64: BigInt(session.rlimitMode) };
      check(req.op === OptionOps.SET, "EOPNOTSUPP", `unknown op ${req.op}`);
      if (!session.capSysResource) throw new ErrnoError("EPERM", "RLIMIT_MODE SET needs CAP_SYS_RESOURCE");
      if (session.objects.size > 0) throw new ErrnoError("EBUSY", "RLIMIT_MODE can only change while the session has no objects");
      check(req.val64 === 0n || req.val64 === 1n, "EINVAL", "val64 must be 0 or 1");
      session.rlimitMode = Number(req.val64);
      return { val64: req.val64 };
    }
    const { iopt } = session.objects.get<Ioas>(req.objectId, "IOAS");
    if (req.op === OptionOps.GET) return { val64: iopt.disableLargePages ? 0n : 1n };
    check(req.op === OptionOps.SET, "EOPNOTSUPP", `unknown op ${req.op}`);
    check(req.val64 === 0n || req.val64 === 1n, "EINVAL", "val64 must be 0 or 1");
    if (req.val64 === 0n && iopt.domains.length > 0 && iopt.areas.size > 0) {
      throw new ErrnoError("EINVAL", "cannot disable huge pages while the IOAS has domains and mappings");
    }
    iopt.setDisableLargePages(req.val64 === 0n);
    return { val64: req.val64 };
  },
};
