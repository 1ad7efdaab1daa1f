// Progress bars for long work (cli-progress), on stderr and only on a
// terminal; log lines printed meanwhile go above the bar. Without a
// terminal there is no bar and lines go straight to stdout.
import cliProgress from "cli-progress";

export interface Progress {
  /** Advance by `n` (default 1), optionally naming the current step. */
  tick(n?: number, step?: string): void;
  /** Print a line without breaking the bar. */
  log(line: string): void;
  stop(): void;
}

export function progress(label: string, total: number, opts: { enabled?: boolean } = {}): Progress {
  const tty = process.stderr.isTTY === true && opts.enabled !== false;
  if (!tty) {
    return { tick: () => {}, log: (line) => process.stdout.write(`${line}\n`), stop: () => {} };
  }
  const multi = new cliProgress.MultiBar(
    {
      format: `${label} [{bar}] {value}/{total} {step}`,
      hideCursor: true,
      clearOnComplete: true,
      stream: process.stderr,
      barsize: 30,
    },
    cliProgress.Presets.shades_classic,
  );
  const bar = multi.create(total, 0, { step: "" });
  return {
    tick: (n = 1, step = "") => bar.increment(n, { step }),
    log: (line) => multi.log(`${line}\n`),
    stop: () => multi.stop(),
  };
}
