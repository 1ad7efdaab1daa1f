// The session verbs (open/keep/close of /dev/iommu) and the syscalls the VMM
// needs on host-owned memory: memfd_create, mmap, munmap, close. These are
// not iommufd ioctls, but IOAS_MAP's user_va and IOAS_MAP_FILE's fd refer to
// what they create.
import { check, ErrnoError } from "@iommufd/kit";
import { EventDelivery, type Iommufd, MmapFlags, MmapProt } from "@iommufd/proto/iommufd";
import type { SessionlessTable, UcmdTable } from "../core/dispatch.js";
import { MemFile } from "../mm/memfile.js";
import { PAGE } from "../mm/user-mm.js";

const MFD_FLAGS = 1 | 2; // MFD_CLOEXEC | MFD_ALLOW_SEALING
const MMAP_FLAGS_KNOWN = MmapFlags.SHARED | MmapFlags.PRIVATE | MmapFlags.FIXED | MmapFlags.ANONYMOUS | MmapFlags.FIXED_NOREPLACE;
const MMAP_PROT_KNOWN = MmapProt.READ | MmapProt.WRITE | MmapProt.EXEC;

const pageUp = (n: bigint) => (n + PAGE - 1n) & ~(PAGE - 1n);

export const sessionVerbs: SessionlessTable<typeof Iommufd> = {
  openSession(req, host) {
    const delivery = req.eventDelivery;
    check(delivery in EventDelivery, "EINVAL", `event_delivery ${delivery} is not an EventDelivery value`);
    const s = host.openSession({
      clientName: req.clientName || "anonymous",
      leaseMs: req.leaseMs,
      eventDelivery: delivery === EventDelivery.READ ? "read" : "nats",
      capSysResource: req.capSysResource,
    });
    return { session: s.token, sessionId: s.id, leaseMs: s.leaseMs };
  },
};

export const fileHandlers: UcmdTable<typeof Iommufd> = {
  keepAlive(_req, { session }) {
    session.renew();
    return { leaseMs: session.leaseMs };
  },

  closeSession(_req, { session, host }) {
    return { objectsDestroyed: host.closeSession(session, "CloseSession") };
  },

  memfdCreate(req, { session, host, point }) {
    check((req.flags & ~MFD_FLAGS) === 0, "EINVAL", `unknown memfd flags 0x${req.flags.toString(16)}`);
    check(req.size !== 0n, "EINVAL", "size is 0");
    point("memfd_create");
    const file = new MemFile(host.memory, pageUp(req.size), req.name || "memfd");
    return { fd: session.allocFd({ kind: "memfd", file }) };
  },

  mmap(req, ucmd) {
    const { session } = ucmd;
    check(req.length !== 0n, "EINVAL", "length is 0");
    check(req.offset % PAGE === 0n, "EINVAL", "offset is not page aligned");
    const f = req.flags;
    const sharing = f & (MmapFlags.SHARED | MmapFlags.PRIVATE);
    check((f & ~MMAP_FLAGS_KNOWN) === 0 && (sharing === MmapFlags.SHARED || sharing === MmapFlags.PRIVATE), "EINVAL", "flags need exactly one of MAP_SHARED / MAP_PRIVATE and no unknown bits");
    const anon = (f & MmapFlags.ANONYMOUS) !== 0;
    check(anon || sharing === MmapFlags.SHARED, "EINVAL", "MAP_PRIVATE file mappings are not modelled");
    check((req.prot & ~MMAP_PROT_KNOWN) === 0, "EINVAL", "unknown prot bits");
    let file: MemFile | undefined;
    if (!anon) {
      const e = session.fd(req.fd);
      if (e.kind !== "memfd") throw new ErrnoError("ENODEV", `fd ${req.fd} is not a memfd`);
      file = e.file;
    }
    const fixed = f & MmapFlags.FIXED_NOREPLACE ? "noreplace" : f & MmapFlags.FIXED ? "replace" : undefined;
    ucmd.point("mmap");
    const addr = session.mm.mmap(file, pageUp(req.length), { offset: req.offset, addr: req.addr, fixed });
    return { addr };
  },

  munmap(req, { session }) {
    check(req.addr % PAGE === 0n, "EINVAL", "addr is not page aligned");
    check(req.length !== 0n, "EINVAL", "length is 0");
    session.mm.munmap(req.addr, pageUp(req.length));
    return {};
  },

  close(req, { session }) {
    session.closeFd(req.fd);
    return {};
  },
};
