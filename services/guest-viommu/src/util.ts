// Small helpers shared by the guest kernel and the VMM.

/** An async mutex: `run` executes functions one at a time, in call order. */
export class Mutex {
  private tail: Promise<unknown> = Promise.resolve();

  run<T>(fn: () => Promise<T> | T): Promise<T> {
    const r = this.tail.then(fn, fn);
    this.tail = r.catch(() => undefined);
    return r;
  }
}

export const sleep = (ms: number) => new Promise<void>((r) => setTimeout(r, ms));

export function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}

/** Index of the highest set bit + 1 (Linux fls64). */
export function fls(v: bigint): number {
  let n = 0;
  while (v > 0n) {
    v >>= 1n;
    n++;
  }
  return n;
}
