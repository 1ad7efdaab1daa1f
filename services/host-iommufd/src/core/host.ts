// The host kernel's global state: physical memory, tunables and the open
// sessions (each an open /dev/iommu). Sessions are found by their token (the
// `iommufd-session` metadata) and by their public id (NATS subjects, Admin).
// A reaper closes sessions whose lease ran out, as closing the fd would.

import type { Metadata } from "@grpc/grpc-js";
import { type Bus, ErrnoError, type Logger } from "@iommufd/kit";
import { HostMemory } from "../mm/phys.js";
import { PciTable } from "./pci.js";
import { type EventDelivery, Session } from "./session.js";

export const SESSION_HEADER = "iommufd-session";

export interface Tunables {
  leaseMsDefault: number;
  leaseMsMax: number;
  /** RLIMIT_MEMLOCK for new sessions, in 4 KiB pages. */
  memlockPages: number;
  /** How long the host waits for a device's ATC invalidation completion. */
  atcInvalidationTimeoutMs: number;
}

export const DEFAULT_TUNABLES: Tunables = {
  leaseMsDefault: 10_000,
  leaseMsMax: 300_000,
  memlockPages: 4 * 1024 * 1024, // 16 GiB
  atcInvalidationTimeoutMs: 1_000,
};

export class Host {
  readonly memory = new HostMemory(48);
  readonly tunables: Tunables = { ...DEFAULT_TUNABLES };
  readonly pci = new PciTable();
  /** Called before a session's objects are destroyed (devices are unbound first, as their VFIO fds close first). */
  readonly onSessionClosing: ((s: Session) => void)[] = [];
  private readonly byToken = new Map<string, Session>();
  readonly sessions = new Map<string, Session>();
  private nextSessionNo = 1;
  private readonly reaper: NodeJS.Timeout;
  /** Called after a session is gone (drivers, data plane and admin drop their state). */
  readonly onSessionClosed: ((s: Session) => void)[] = [];

  constructor(
    readonly log: Logger,
    /** Where events and faults are published (absent in unit tests: records stay queued). */
    readonly bus?: Bus,
  ) {
    this.reaper = setInterval(() => this.reap(), 250);
    this.reaper.unref();
  }

  openSession(opts: { clientName: string; leaseMs: number; eventDelivery: EventDelivery; capSysResource: boolean }): Session {
    const lease = opts.leaseMs === 0 ? this.tunables.leaseMsDefault : Math.min(opts.leaseMs, this.tunables.leaseMsMax);
    const id = `s${this.nextSessionNo++}`;
    const s = new Session(id, opts.clientName, lease, opts.eventDelivery, opts.capSysResource, this.memory, this.tunables.memlockPages);
    this.byToken.set(s.token, s);
    this.sessions.set(id, s);
    this.log.info({ session: id, client: opts.clientName, leaseMs: lease }, "session opened");
    return s;
  }

  /** The session named by the call's metadata: missing, unknown, closed or expired → EBADF. */
  sessionOf(md: Metadata): Session {
    const token = md.get(SESSION_HEADER)[0]?.toString();
    if (!token) throw new ErrnoError("EBADF", `no ${SESSION_HEADER} metadata: open a session first`);
    const s = this.byToken.get(token);
    if (!s || s.closed) throw new ErrnoError("EBADF", "unknown or closed session");
    if (s.expired) {
      this.closeSession(s, "lease expired");
      throw new ErrnoError("EBADF", "session lease expired");
    }
    return s;
  }

  sessionById(id: string): Session {
    const s = this.sessions.get(id);
    if (!s) throw new ErrnoError("ENOENT", `no session ${id}`);
    return s;
  }

  /**
   * close(): devices are unbound first (their VFIO fds close before the
   * iommufd), then every fd is closed (dropping the references fds hold),
   * then every object is destroyed, leaves first, then the user memory goes.
   * Returns the number of objects destroyed.
   */
  closeSession(s: Session, why: string): number {
    if (s.closed) return 0;
    for (const cb of this.onSessionClosing) cb(s);
    for (const fd of [...s.fds.keys()]) s.closeFd(fd);
    const n = s.objects.size;
    s.objects.destroyAll();
    s.mm.closeAll();
    s.closed = true;
    this.byToken.delete(s.token);
    this.sessions.delete(s.id);
    for (const cb of this.onSessionClosed) cb(s);
    this.log.info({ session: s.id, why, objects: n }, "session closed");
    return n;
  }

  private reap(): void {
    for (const s of this.sessions.values()) {
      // Wait for a call in progress: the lock serializes the close after it.
      if (s.expired) void s.serialize(() => this.closeSession(s, "lease expired")).catch(() => undefined);
    }
  }

  shutdown(): void {
    clearInterval(this.reaper);
    for (const s of [...this.sessions.values()]) this.closeSession(s, "host shutdown");
  }
}
