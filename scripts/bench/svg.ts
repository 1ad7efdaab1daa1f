// A hand-written SVG bar chart of the results: one horizontal bar per row
// that has a ratio or a target, on a log scale. Rows with a target on the
// ratio show the ratio and a tick at the target; rows with a target on the
// figure (p99 ≤ 5 ms, ≤ 64 B/page) show figure ÷ limit with the tick at 1.
// Green = met, red = missed, grey = no target (shown for context).
import type { BenchRow } from "./common.js";

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;").replace(/"/g, "&quot;");

interface Bar {
  label: string;
  value: number;
  target?: number;
  better: "lower" | "higher" | "none";
  color: string;
  text: string;
}

function barOf(r: BenchRow): Bar | undefined {
  const color = r.met === undefined ? "#9e9e9e" : r.met ? "#2e7d32" : "#c62828";
  if (r.target?.on === "value") {
    const v = r.figure.value / r.target.limit;
    return { label: `${r.section}: ${r.name}`, value: v, target: 1, better: r.target.op === "<=" ? "lower" : "higher", color, text: `${v.toFixed(2)} of limit` };
  }
  if (r.ratio === undefined || !Number.isFinite(r.ratio) || r.ratio <= 0) return undefined;
  return {
    label: `${r.section}: ${r.name}`,
    value: r.ratio,
    target: r.target?.limit,
    better: r.target ? (r.target.op === "<=" ? "lower" : "higher") : "none",
    color,
    text: `${r.ratio.toFixed(2)}×`,
  };
}

export function chartSvg(rows: BenchRow[], title: string, subtitle: string): string {
  const bars = rows.map(barOf).filter((b): b is Bar => b !== undefined);
  const rowH = 20;
  const labelW = 560;
  const plotW = 520;
  const top = 70;
  const height = top + bars.length * rowH + 50;
  const width = labelW + plotW + 90;
  const vals = bars.flatMap((b) => [b.value, b.target ?? b.value]);
  const lo = Math.min(0.1, ...vals.map((v) => v * 0.8));
  const hi = Math.max(10, ...vals.map((v) => v * 1.25));
  const lmin = Math.floor(Math.log10(lo));
  const lmax = Math.ceil(Math.log10(hi));
  const x = (v: number) => Math.round((labelW + ((Math.log10(v) - lmin) / (lmax - lmin)) * plotW) * 10) / 10;
  const out: string[] = [];
  out.push(`<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}" font-family="DejaVu Sans, Arial, sans-serif" font-size="11">`);
  out.push(`<rect width="100%" height="100%" fill="#ffffff"/>`);
  out.push(`<text x="10" y="20" font-size="15" font-weight="bold">${esc(title)}</text>`);
  out.push(`<text x="10" y="38" fill="#555">${esc(subtitle)}</text>`);
  out.push(`<text x="10" y="56" fill="#555">${esc("bar = ratio to the same-run baseline (log scale); | = target; green met, red missed, grey no target. Figure targets are drawn as figure ÷ limit.")}</text>`);
  for (let p = lmin; p <= lmax; p++) {
    const gx = x(10 ** p);
    out.push(`<line x1="${gx}" y1="${top - 4}" x2="${gx}" y2="${top + bars.length * rowH}" stroke="#ddd"/>`);
    out.push(`<text x="${gx}" y="${top + bars.length * rowH + 14}" text-anchor="middle" fill="#555">${10 ** p >= 1 ? 10 ** p : (10 ** p).toFixed(-p)}×</text>`);
  }
  const one = x(1);
  out.push(`<line x1="${one}" y1="${top - 4}" x2="${one}" y2="${top + bars.length * rowH}" stroke="#888"/>`);
  bars.forEach((b, i) => {
    const y = top + i * rowH;
    const x0 = x(10 ** lmin);
    const xv = x(Math.max(b.value, 10 ** lmin));
    const label = b.label.length > 92 ? `${b.label.slice(0, 90)}…` : b.label;
    out.push(`<text x="${labelW - 8}" y="${y + 14}" text-anchor="end">${esc(label)}</text>`);
    out.push(`<rect x="${x0}" y="${y + 4}" width="${Math.max(1, Math.round((xv - x0) * 10) / 10)}" height="${rowH - 8}" fill="${b.color}"/>`);
    if (b.target !== undefined) {
      const xt = x(b.target);
      out.push(`<line x1="${xt}" y1="${y + 1}" x2="${xt}" y2="${y + rowH - 1}" stroke="#000" stroke-width="2"/>`);
    }
    out.push(`<text x="${Math.max(xv, b.target !== undefined ? x(b.target) : 0) + 6}" y="${y + 14}" fill="#333">${esc(b.text)}${b.better === "none" ? "" : b.better === "lower" ? " (lower is better)" : ""}</text>`);
  });
  out.push("</svg>");
  return `${out.join("\n")}\n`;
}
