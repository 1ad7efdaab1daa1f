// pino JSON lines → one readable line each: time, level, message, then the
// key fields (component first, error messages inlined). Lines that are not
// pino JSON pass through unchanged.

const LEVELS: Record<number, string> = { 10: "TRACE", 20: "DEBUG", 30: "INFO", 40: "WARN", 50: "ERROR", 60: "FATAL" };
const LEVEL_COLOR: Record<string, string> = { TRACE: "90", DEBUG: "90", INFO: "32", WARN: "33", ERROR: "31", FATAL: "35" };
/** Fields every record has, or that the prefix already says. */
const SKIP = new Set(["level", "time", "msg", "pid", "hostname", "proc", "name", "v", "component"]);
const MAX_VALUE = 160;

function value(v: unknown): string {
  if (typeof v === "string") return /[\s"=]/.test(v) || v === "" ? JSON.stringify(v) : v;
  if (typeof v === "number" || typeof v === "boolean" || v === null) return String(v);
  const s = JSON.stringify(v) ?? String(v);
  return s.length > MAX_VALUE ? `${s.slice(0, MAX_VALUE - 1)}…` : s;
}

function errText(e: unknown): string {
  if (e && typeof e === "object") {
    const o = e as { type?: string; message?: string; code?: string };
    return value(`${o.type && o.type !== "Error" ? `${o.type}: ` : ""}${o.message ?? ""}${o.code ? ` (${o.code})` : ""}`);
  }
  return value(e);
}

function clock(t: unknown): string {
  const d = typeof t === "string" || typeof t === "number" ? new Date(t) : new Date();
  return Number.isNaN(d.getTime()) ? String(t) : d.toISOString().slice(11, 23);
}

/** One pino JSON line as `HH:MM:SS.mmm LEVEL component: msg key=value ...`. */
export function formatLogLine(line: string, color = false): string {
  if (!line.startsWith("{")) return line;
  let r: Record<string, unknown>;
  try {
    r = JSON.parse(line) as Record<string, unknown>;
  } catch {
    return line;
  }
  if (typeof r.level !== "number" || !("msg" in r || "time" in r)) return line;
  const level = LEVELS[r.level] ?? String(r.level);
  const lv = color ? `\x1b[${LEVEL_COLOR[level] ?? "0"}m${level.padEnd(5)}\x1b[0m` : level.padEnd(5);
  const parts = [clock(r.time), lv];
  const msg = `${typeof r.component === "string" ? `${r.component}: ` : ""}${typeof r.msg === "string" ? r.msg : ""}`;
  if (msg) parts.push(msg);
  for (const [k, v] of Object.entries(r)) {
    if (SKIP.has(k) || v === undefined) continue;
    parts.push(`${k}=${k === "err" || k === "error" ? errText(v) : value(v)}`);
  }
  return parts.join(" ");
}

const PREFIX_COLORS = ["36", "35", "34", "33", "32", "96", "95", "94"];

/** `[name] ` (colored per process when `color`), padded to `width`. */
export function prefixFor(name: string, index: number, width: number, color = false): string {
  const p = `[${name}]`.padEnd(width + 2);
  return color ? `\x1b[${PREFIX_COLORS[index % PREFIX_COLORS.length]}m${p}\x1b[0m ` : `${p} `;
}
