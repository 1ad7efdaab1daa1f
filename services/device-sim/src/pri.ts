// The PRI side of an endpoint (PCIe Page Request Interface,
// reference/hw-formats.md §4.2): page request groups out on .pri, page group
// responses in on .pri-resp, and the Outstanding Page Request Allocation as
// credits — one per page request, returned when its group's response
// arrives (or the group times out). A Response Failure disables PRI
// (Status.RF) until the endpoint registers again.
import { PrgResponseCode } from "@iommufd/proto/bus";

/** One page the device wants made resident. */
export interface PageWant {
  addr: bigint;
  pasid: number | undefined;
  r: boolean;
  w: boolean;
  x: boolean;
  priv: boolean;
}

/** How a page request (all of its groups) ended. */
export type PriOutcome = "success" | "invalid" | "failure" | "timeout" | "disabled" | "no-credits" | "reset";

export interface PriCounters {
  pageRequests: number;
  groups: number;
  prgSuccess: number;
  prgInvalid: number;
  prgFailure: number;
  timeouts: number;
  /** Responses for a PRG index with no group outstanding (PRI Status "Unexpected PRG Index"). */
  unexpectedResponses: number;
  /** Page requests sent beyond the allocation (misbehaviour). */
  creditOverruns: number;
}

export interface PriPort {
  /** Publish one page request (the endpoint numbers it). */
  publish(req: { pasid: number | undefined; addr: bigint; r: boolean; w: boolean; x: boolean; priv: boolean; prgIndex: number; last: boolean }): void;
  /** Break the credit rule (Misbehaviour.exceed_pri_credits). */
  exceedCredits(): boolean;
  timeoutMs: number;
  warn(obj: object, msg: string): void;
}

interface Group {
  index: number;
  size: number;
  pasid: number | undefined;
  resolve(o: PriOutcome): void;
  timer: NodeJS.Timeout;
}

const PRG_INDICES = 512; // 9-bit PRG Index

export class PriEngine {
  /** Outstanding Page Request Allocation granted by the host. */
  allocation = 0;
  /** False after a Response Failure (Status.RF) until reset(). */
  enabled = true;
  outstanding = 0;
  readonly counters: PriCounters = {
    pageRequests: 0,
    groups: 0,
    prgSuccess: 0,
    prgInvalid: 0,
    prgFailure: 0,
    timeouts: 0,
    unexpectedResponses: 0,
    creditOverruns: 0,
  };
  private readonly groups = new Map<number, Group>();
  private nextIndex = 0;
  private waiters: { n: number; go(ok: boolean): void }[] = [];

  constructor(private readonly port: PriPort) {}

  /** A new registration: new allocation, PRI enabled again, every outstanding group ends with "reset". */
  reset(allocation: number): void {
    this.allocation = allocation;
    this.enabled = true;
    for (const g of this.groups.values()) {
      clearTimeout(g.timer);
      g.resolve("reset");
    }
    this.groups.clear();
    this.outstanding = 0;
    const w = this.waiters;
    this.waiters = [];
    for (const x of w) x.go(false);
  }

  /**
   * Ask for `pages` to be made resident: one group per `allocation` pages
   * (a group bigger than the allocation could never be sent), LAST on the
   * last request of each group. Resolves with the worst outcome.
   */
  async request(pages: PageWant[]): Promise<PriOutcome> {
    if (!this.enabled) return "disabled";
    const exceed = this.port.exceedCredits();
    if (this.allocation === 0 && !exceed) return "no-credits";
    const groupMax = exceed ? pages.length : this.allocation;
    // Page requests of one group carry one PASID prefix: group by PASID first.
    const byPasid = new Map<number | undefined, PageWant[]>();
    for (const p of pages) {
      const l = byPasid.get(p.pasid);
      if (l) l.push(p);
      else byPasid.set(p.pasid, [p]);
    }
    const runs: Promise<PriOutcome>[] = [];
    for (const list of byPasid.values()) {
      for (let i = 0; i < list.length; i += groupMax) runs.push(this.group(list.slice(i, i + groupMax), exceed));
    }
    const outcomes = await Promise.all(runs);
    for (const o of ["reset", "failure", "disabled", "no-credits", "timeout", "invalid"] as const) if (outcomes.includes(o)) return o;
    return "success";
  }

  private acquire(n: number, exceed: boolean): Promise<boolean> {
    if (exceed) {
      if (this.outstanding + n > this.allocation) this.counters.creditOverruns += this.outstanding + n - Math.max(this.allocation, this.outstanding);
      this.outstanding += n;
      return Promise.resolve(true);
    }
    if (this.waiters.length === 0 && this.outstanding + n <= this.allocation) {
      this.outstanding += n;
      return Promise.resolve(true);
    }
    return new Promise((resolve) => this.waiters.push({ n, go: resolve }));
  }

  private releaseCredits(n: number): void {
    this.outstanding = Math.max(0, this.outstanding - n);
    while (this.waiters.length > 0 && this.outstanding + this.waiters[0].n <= this.allocation) {
      const w = this.waiters.shift() as { n: number; go(ok: boolean): void };
      this.outstanding += w.n;
      w.go(true);
    }
  }

  private freeIndex(): number | undefined {
    for (let k = 0; k < PRG_INDICES; k++) {
      const i = (this.nextIndex + k) % PRG_INDICES;
      if (!this.groups.has(i)) {
        this.nextIndex = (i + 1) % PRG_INDICES;
        return i;
      }
    }
    return undefined;
  }

  private async group(pages: PageWant[], exceed: boolean): Promise<PriOutcome> {
    if (!(await this.acquire(pages.length, exceed))) return "reset";
    if (!this.enabled) {
      this.releaseCredits(pages.length);
      return "disabled";
    }
    const index = this.freeIndex();
    if (index === undefined) {
      // 512 groups outstanding: only reachable when exceeding credits.
      this.releaseCredits(pages.length);
      return "no-credits";
    }
    this.counters.groups++;
    const outcome = new Promise<PriOutcome>((resolve) => {
      const timer = setTimeout(() => {
        if (this.groups.get(index)?.timer !== timer) return;
        this.groups.delete(index);
        this.counters.timeouts++;
        this.releaseCredits(pages.length);
        this.port.warn({ prgIndex: index, pages: pages.length }, "page group response timed out");
        resolve("timeout");
      }, this.port.timeoutMs);
      this.groups.set(index, { index, size: pages.length, pasid: pages[0].pasid, resolve, timer });
    });
    pages.forEach((p, i) => {
      this.counters.pageRequests++;
      this.port.publish({ pasid: p.pasid, addr: p.addr & ~0xfffn, r: p.r, w: p.w, x: p.x, priv: p.priv, prgIndex: index, last: i === pages.length - 1 });
    });
    return outcome;
  }

  /** A PRG Response arrived (duplicates were already dropped by sequence number). */
  onResponse(prgIndex: number, code: PrgResponseCode): void {
    const g = this.groups.get(prgIndex);
    if (!g) {
      this.counters.unexpectedResponses++;
      this.port.warn({ prgIndex, code: PrgResponseCode[code] ?? code }, "page group response for no outstanding group (Unexpected PRG Index)");
      return;
    }
    clearTimeout(g.timer);
    this.groups.delete(prgIndex);
    this.releaseCredits(g.size);
    switch (code) {
      case PrgResponseCode.SUCCESS:
        this.counters.prgSuccess++;
        g.resolve("success");
        return;
      case PrgResponseCode.INVALID_REQUEST:
        this.counters.prgInvalid++;
        g.resolve("invalid");
        return;
      default:
        // Response Failure (and reserved codes, which PCIe treats alike): PRI stops until reset.
        this.counters.prgFailure++;
        this.enabled = false;
        g.resolve("failure");
        return;
    }
  }

  /** Groups waiting for a response. */
  get groupsOutstanding(): number {
    return this.groups.size;
  }
}
