// The one error type of the project: a Linux errno (name and number) with a
// message. Handlers throw ErrnoError; the wire layers (wire-errors.ts) turn it
// into a gRPC status or a NATS error reply and back, so the exact errno always
// reaches the caller.

/** Linux errno values (x86-64 / asm-generic numbering) used by the uAPI and the bus. */
export const Errno = {
  EPERM: 1,
  ENOENT: 2,
  ESRCH: 3,
  EINTR: 4,
  EIO: 5,
  ENXIO: 6,
  E2BIG: 7,
  EBADF: 9,
  EAGAIN: 11,
  ENOMEM: 12,
  EACCES: 13,
  EFAULT: 14,
  EBUSY: 16,
  EEXIST: 17,
  ENODEV: 19,
  EINVAL: 22,
  EMFILE: 24,
  ENOTTY: 25,
  ENOSPC: 28,
  ESPIPE: 29,
  ERANGE: 34,
  EDEADLK: 35,
  EOVERFLOW: 75,
  EMSGSIZE: 90,
  EOPNOTSUPP: 95,
  EADDRINUSE: 98,
  ENOTCONN: 107,
  ETIMEDOUT: 110,
} as const;

export type ErrnoName = keyof typeof Errno;

const byNumber = new Map<number, ErrnoName>(Object.entries(Errno).map(([k, v]) => [v, k as ErrnoName]));

export function errnoName(n: number): ErrnoName | undefined {
  return byNumber.get(n);
}

export function isErrnoName(s: string): s is ErrnoName {
  return Object.hasOwn(Errno, s);
}

/**
 * A failure carrying a Linux errno. `response` is the RPC's response message
 * for calls where the kernel writes outputs back even on failure
 * (HWPT_INVALIDATE's entry_num, IOAS_IOVA_RANGES's num_iovas on EMSGSIZE).
 */
export class ErrnoError extends Error {
  readonly errno: ErrnoName;
  response?: unknown;

  constructor(errno: ErrnoName, message?: string, options?: { response?: unknown; cause?: unknown }) {
    super(message ?? errno, options?.cause === undefined ? undefined : { cause: options.cause });
    this.name = "ErrnoError";
    this.errno = errno;
    if (options?.response !== undefined) this.response = options.response;
  }

  get number(): number {
    return Errno[this.errno];
  }

  override toString(): string {
    return `${this.errno} (${this.number}): ${this.message}`;
  }
}

/** Throw-helper for the kernel's checks: `check(cond, "EINVAL", "why")`. */
export function check(cond: unknown, errno: ErrnoName, message?: string): asserts cond {
  if (!cond) throw new ErrnoError(errno, message);
}

export function isErrnoError(e: unknown): e is ErrnoError {
  return e instanceof ErrnoError;
}
