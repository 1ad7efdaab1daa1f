// The guest kernel's event log (its dmesg for the IOMMU): decoded IOMMU
// events, page requests and responses, lost events, driver errors and the
// VMM's session changes. A bounded ring with a gap-free sequence from 1;
// readers follow with a cursor and may wait for new entries.

export type GuestLogSource = "veventq" | "page-request" | "lost-events" | "driver" | "session";

export interface GuestLogEntry {
  seq: bigint;
  unixNanos: bigint;
  source: GuestLogSource;
  /** Event name ("F_TRANSLATION", "page request", "EVTQ overflow"...). */
  kind: string;
  /** Guest-visible device ID (vSID / vRID), when a device is involved. */
  virtId?: number;
  pasid?: number;
  addr?: bigint;
  /** The raw record words, when there is one. */
  raw?: bigint[];
  text: string;
}

export type GuestLogInit = Omit<GuestLogEntry, "seq" | "unixNanos">;

export class EventLog {
  private readonly ring: GuestLogEntry[] = [];
  private nextSeq = 1n;
  private waiters: (() => void)[] = [];

  constructor(
    readonly capacity = 4096,
    /** Also print each entry (the process log). */
    private readonly sink?: (e: GuestLogEntry) => void,
  ) {}

  append(init: GuestLogInit): GuestLogEntry {
    const e: GuestLogEntry = { ...init, seq: this.nextSeq++, unixNanos: BigInt(Date.now()) * 1_000_000n };
    this.ring.push(e);
    if (this.ring.length > this.capacity) this.ring.shift();
    this.sink?.(e);
    const w = this.waiters;
    this.waiters = [];
    for (const f of w) f();
    return e;
  }

  /** The sequence the next entry will get. */
  get next(): bigint {
    return this.nextSeq;
  }

  entries(): readonly GuestLogEntry[] {
    return this.ring;
  }

  /** Entries from `fromSeq`, at most `max` (0 = all), waiting up to `waitMs` for at least one. */
  async read(fromSeq: bigint, max = 0, waitMs = 0): Promise<{ events: GuestLogEntry[]; nextSeq: bigint; lost: bigint }> {
    const from = fromSeq < 1n ? 1n : fromSeq;
    if (from >= this.nextSeq && waitMs > 0) {
      await new Promise<void>((resolve) => {
        const t = setTimeout(done, waitMs);
        function done() {
          clearTimeout(t);
          resolve();
        }
        this.waiters.push(done);
      });
    }
    const first = this.ring[0]?.seq ?? this.nextSeq;
    const lost = from < first ? first - from : 0n;
    let events = this.ring.filter((e) => e.seq >= from);
    if (max > 0) events = events.slice(0, max);
    const last = events[events.length - 1];
    return { events, nextSeq: last ? last.seq + 1n : from > this.nextSeq ? this.nextSeq : from < first ? first : from, lost };
  }

  /** Wait until an entry matching `pred` exists (tests). */
  async waitFor(pred: (e: GuestLogEntry) => boolean, timeoutMs = 5000): Promise<GuestLogEntry> {
    const deadline = Date.now() + timeoutMs;
    let from = 1n;
    for (;;) {
      const r = await this.read(from, 0, Math.max(1, Math.min(250, deadline - Date.now())));
      const hit = r.events.find(pred);
      if (hit) return hit;
      from = r.nextSeq;
      if (Date.now() >= deadline) throw new Error("timed out waiting for a guest log entry");
    }
  }
}
