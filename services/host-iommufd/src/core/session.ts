// A session is one open /dev/iommu file: its objects, its file descriptors,
// its user address space and pinned-page accounting, its fail-nth state, and
// its lease. Calls within a session run one at a time (a per-session lock),
// so each call sees and leaves a consistent state even when it waits on the
// bus (ATC invalidation completions, say).
import { randomBytes } from "node:crypto";
import { ErrnoError } from "@iommufd/kit";
import type { MemFile } from "../mm/memfile.js";
import type { HostMemory } from "../mm/phys.js";
import { putFile, UserMm } from "../mm/user-mm.js";
import { FailNth } from "./fail-nth.js";
import { ObjectTable } from "./object.js";

export type EventDelivery = "nats" | "read";

/** What an fd of the session refers to. */
export type FdEntry =
  | { kind: "memfd"; file: MemFile }
  | { kind: "fault" | "veventq"; objectId: number; close(): void };

export const FD_LIMIT = 1024;

export class Session {
  readonly token = randomBytes(24).toString("base64url");
  readonly objects = new ObjectTable();
  readonly mm: UserMm;
  readonly failNth = new FailNth();
  readonly fds = new Map<number, FdEntry>();
  /** IOMMU_OPTION RLIMIT_MODE: 0 user-based (default for /dev/iommu), 1 process-based. */
  rlimitMode = 0;
  /** IOMMU_VFIO_IOAS compat IOAS id (0 = none). */
  vfioIoasId = 0;
  expiresAt: number;
  closed = false;
  readonly openedAt = Date.now();
  private lock: Promise<unknown> = Promise.resolve();

  constructor(
    readonly id: string,
    readonly clientName: string,
    public leaseMs: number,
    readonly eventDelivery: EventDelivery,
    readonly capSysResource: boolean,
    host: HostMemory,
    lockLimitPages: number,
  ) {
    this.mm = new UserMm(host, lockLimitPages);
    this.expiresAt = Date.now() + leaseMs;
  }

  renew(): void {
    this.expiresAt = Date.now() + this.leaseMs;
  }

  get expired(): boolean {
    return Date.now() > this.expiresAt;
  }

  /** Run `fn` with the session lock held (calls of one session never interleave). */
  serialize<T>(fn: () => Promise<T> | T): Promise<T> {
    const run = this.lock.then(() => {
      if (this.closed) throw new ErrnoError("EBADF", "session closed");
      return fn();
    });
    this.lock = run.catch(() => undefined);
    return run;
  }

  allocFd(entry: FdEntry): number {
    for (let fd = 3; fd < FD_LIMIT; fd++) {
      if (!this.fds.has(fd)) {
        this.fds.set(fd, entry);
        return fd;
      }
    }
    throw new ErrnoError("EMFILE", "no free file descriptor");
  }

  fd(fd: number): FdEntry {
    const e = this.fds.get(fd);
    if (!e) throw new ErrnoError("EBADF", `fd ${fd} is not open`);
    return e;
  }

  closeFd(fd: number): void {
    const e = this.fd(fd);
    this.fds.delete(fd);
    if (e.kind === "memfd") putFile(e.file);
    else e.close();
  }
}
