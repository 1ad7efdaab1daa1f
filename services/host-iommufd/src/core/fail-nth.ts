// Fault injection in the style of the kernel's iommufd_fail_nth: when armed
// with N, the Nth fault point passed by the calls that follow fails once,
// with ENOMEM (as a failed allocation would). Fault points sit at every
// allocation and every step that can fail, so a sweep over N = 1, 2, ...
// exercises every unwind path; a run that passes fewer than N points has
// gone through without injection. An optional glob limits which points count.
import { ErrnoError } from "@iommufd/kit";

function globToRegExp(glob: string): RegExp {
  const esc = glob.replace(/[.+^${}()|[\]\\]/g, "\\$&").replace(/\*/g, ".*").replace(/\?/g, ".");
  return new RegExp(`^${esc}$`);
}

export class FailNth {
  private nth = 0;
  private filter?: RegExp;
  /** Fault points passed since arming. */
  hits = 0;
  injectedPoint = "";

  /** Arm: fail the nth matching fault point from now on (0 disarms). */
  arm(nth: number, pointFilter = ""): void {
    this.nth = nth;
    this.filter = pointFilter ? globToRegExp(pointFilter) : undefined;
    this.hits = 0;
    this.injectedPoint = "";
  }

  /** nth still pending: 0 once injected or when disarmed (as reading fail-nth does). */
  get pending(): number {
    return this.injectedPoint ? 0 : this.nth;
  }

  /** A fault point: throws ENOMEM when it is the armed one. */
  point(where: string): void {
    if (this.nth === 0 || this.injectedPoint) return;
    if (this.filter && !this.filter.test(where)) return;
    if (++this.hits === this.nth) {
      this.injectedPoint = where;
      throw new ErrnoError("ENOMEM", `fail_nth: injected failure at ${where} (point ${this.nth})`);
    }
  }
}
