// Sequence numbers on the bus (proto/bus/v1/bus.proto, SEQUENCE NUMBERS):
// a publisher numbers each subject's stream from 1, +1 per message; a
// consumer detects gaps, duplicates and late (reordered) arrivals and
// surfaces them — it never hides them. One SeqCounter per outgoing stream,
// one SeqTracker per incoming stream.

/** The numbering of one outgoing stream: 1, 2, 3, … (restart with reset()). */
export class SeqCounter {
  private last = 0n;

  next(): bigint {
    this.last += 1n;
    return this.last;
  }

  /** The last number handed out (0 before the first). */
  get current(): bigint {
    return this.last;
  }

  /** A new stream (after a (re-)registration): the next number is 1 again. */
  reset(): void {
    this.last = 0n;
  }
}

/** What one incoming sequence number was, relative to the stream so far. */
export type SeqVerdict =
  | { kind: "in-order" }
  /** `missing` messages were skipped before this one (lost, or still on their way). */
  | { kind: "gap"; missing: bigint; expected: bigint }
  /** A number reported missing earlier arrived after all: reordered, not lost. */
  | { kind: "late" }
  /** Seen before (or 0, which no stream uses): drop it. */
  | { kind: "duplicate" };

export interface SeqCounters {
  /** Messages accepted (in order, after a gap, or late). */
  received: number;
  /** Gap events (a jump forward). */
  gaps: number;
  /** Messages skipped by those jumps and not (yet) arrived late. */
  missing: bigint;
  /** Numbers seen twice (or 0). */
  duplicates: number;
  /** Numbers that arrived after a later one (first counted missing). */
  late: number;
}

/** How many skipped numbers one tracker remembers, to tell late from duplicate. */
const MISSING_WINDOW = 4096;

/**
 * Tracks one incoming stream. The first message after construction or reset()
 * is expected to be 1; a stream that starts higher counts as a gap (the
 * messages before it were lost).
 */
export class SeqTracker {
  private next = 1n;
  private readonly missingSet = new Set<bigint>();
  readonly counters: SeqCounters = { received: 0, gaps: 0, missing: 0n, duplicates: 0, late: 0 };

  observe(seq: bigint): SeqVerdict {
    if (seq === this.next) {
      this.next++;
      this.counters.received++;
      return { kind: "in-order" };
    }
    if (seq > this.next) {
      const expected = this.next;
      const missing = seq - expected;
      // Remember (a bounded window of) the skipped numbers so a late arrival is not taken for a duplicate.
      for (let s = seq - 1n; s >= expected && seq - s <= BigInt(MISSING_WINDOW); s--) this.missingSet.add(s);
      while (this.missingSet.size > MISSING_WINDOW) this.missingSet.delete(this.missingSet.values().next().value as bigint);
      this.next = seq + 1n;
      this.counters.received++;
      this.counters.gaps++;
      this.counters.missing += missing;
      return { kind: "gap", missing, expected };
    }
    if (this.missingSet.delete(seq)) {
      this.counters.received++;
      this.counters.late++;
      this.counters.missing -= 1n;
      return { kind: "late" };
    }
    this.counters.duplicates++;
    return { kind: "duplicate" };
  }

  /** The peer started a new stream (it restarted, or we registered again): expect 1 next. Counters stay. */
  reset(): void {
    this.next = 1n;
    this.missingSet.clear();
  }

  /** The next number expected. */
  get expected(): bigint {
    return this.next;
  }
}
