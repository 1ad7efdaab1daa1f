// pino logging: one root logger per process, one child per component.
import { type Logger, pino } from "pino";

export type { Logger };

export const LOG_LEVELS = ["fatal", "error", "warn", "info", "debug", "trace", "silent"] as const;
export type LogLevel = (typeof LOG_LEVELS)[number];

export function createLogger(processName: string, level: LogLevel = "info"): Logger {
  return pino({
    name: processName,
    level,
    base: { pid: process.pid, proc: processName },
    timestamp: pino.stdTimeFunctions.isoTime,
  });
}
