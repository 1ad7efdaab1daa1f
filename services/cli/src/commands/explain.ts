// `explain`: the host's full translation of (device, PASID, IOVA) as the
// hardware would do it, without side effects (Admin.Explain): every
// configuration fetch, every stage-1 level and every stage-2 walk of a table
// address, then the PA or the fault. Prints the text; --svg also draws the
// 2D walk: stage-1 steps in one column, the stage-2 walks they cause
// indented beside them, configuration fetches above, the result below.
import { writeFileSync } from "node:fs";
import type { Command } from "commander";
import { DEFAULT_STATE, readState } from "../state.js";

interface ExplainOptions {
  rid: string;
  iova: string;
  pasid?: string;
  access: "read" | "write" | "exec";
  priv?: boolean;
  host?: string;
  state: string;
  svg?: string;
}

const num = (s: string) => (/^0x/i.test(s) ? Number.parseInt(s, 16) : Number(s));

export function explainCommand(program: Command): void {
  program
    .command("explain")
    .description("explain the nested walk of (device RID, PASID, IOVA) on the running host, as text and optionally as an SVG picture")
    .requiredOption("--rid <rid>", "PCI requester ID of the device (0x18, 24)")
    .requiredOption("--iova <iova>", "input address (0x10000000)")
    .option("--pasid <pasid>", "PASID / SubstreamID (none = a request without PASID)")
    .option("--access <kind>", "read, write or exec", "read")
    .option("--priv", "a privileged request")
    .option("--host <host:port>", "host-iommufd gRPC address (default: from the running `up`)")
    .option("--state <file>", "state file of `up`", DEFAULT_STATE)
    .option("--svg <file>", "also draw the walk as an SVG picture into <file>")
    .action(async (o: ExplainOptions) => {
      await explain(o);
    });
}

async function explain(o: ExplainOptions): Promise<void> {
  const { createClient } = await import("@iommufd/kit");
  const { Admin, ExplainAccess } = await import("@iommufd/proto/iommufd");
  const host = o.host ?? readState(o.state)?.processes.find((p) => p.kind === "host-iommufd")?.address;
  if (!host) throw new Error("no host address: start a topology with `up` or pass --host");
  const access = { read: ExplainAccess.READ, write: ExplainAccess.WRITE, exec: ExplainAccess.EXEC }[o.access];
  if (!access) throw new Error(`--access must be read, write or exec, not ${o.access}`);
  const admin = createClient(Admin, host);
  try {
    const r = await admin.rpc.explain({
      rid: num(o.rid),
      ...(o.pasid !== undefined ? { pasid: num(o.pasid) } : {}),
      iova: BigInt(o.iova),
      access,
      priv: o.priv === true,
    });
    process.stdout.write(`${r.text}\n`);
    if (o.svg) {
      writeFileSync(o.svg, walkSvg(r.text.split("\n"), `rid ${o.rid}${o.pasid !== undefined ? ` pasid ${o.pasid}` : ""} iova ${o.iova} ${o.access}`));
      process.stdout.write(`wrote ${o.svg}\n`);
    }
  } finally {
    admin.close();
  }
}

type Kind = "config" | "s1" | "s2" | "result";

/** Which part of the walk a line of the explain text is. */
function kindOf(line: string, last: boolean): Kind {
  if (last) return "result";
  if (/^S2\b|stage 2|second.stage|\bSS\b|SL-/i.test(line)) return "s2";
  if (/^S1\b|stage 1|first.stage|\bFS\b|PML|PDPE|PDE|PTE|\bL[0-3]\b/i.test(line)) return "s1";
  return "config";
}

const COLORS: Record<Kind, { fill: string; stroke: string }> = {
  config: { fill: "#eeeeee", stroke: "#777777" },
  s1: { fill: "#dbe9ff", stroke: "#2f6fd0" },
  s2: { fill: "#ffe7cc", stroke: "#d07a1f" },
  result: { fill: "#d9f2d9", stroke: "#2e8b2e" },
};

const FAILED = { fill: "#f8d7d7", stroke: "#c03030" };

const esc = (s: string) => s.replace(/&/g, "&amp;").replace(/</g, "&lt;").replace(/>/g, "&gt;");

/** One box per step, stage-2 walks indented to the right of the stage-1 step they serve. */
export function walkSvg(lines: string[], title: string): string {
  const rows = lines.filter((l) => l.trim() !== "");
  const boxH = 22;
  const gap = 6;
  const width = 1100;
  const parts: string[] = [];
  let y = 40;
  rows.forEach((line, i) => {
    const kind = kindOf(line, i === rows.length - 1);
    const failed = kind === "result" && /fault|abort|F_|C_BAD|blocked|not present|SM_/i.test(line);
    const x = kind === "s2" ? 60 : 20;
    const c = failed ? FAILED : COLORS[kind];
    parts.push(`<rect x="${x}" y="${y}" width="${width - x - 20}" height="${boxH}" rx="4" fill="${c.fill}" stroke="${c.stroke}"/>`);
    parts.push(`<text x="${x + 8}" y="${y + 15}" font-family="monospace" font-size="12">${esc(line.length > 150 ? `${line.slice(0, 147)}...` : line)}</text>`);
    if (i > 0) parts.push(`<line x1="30" y1="${y - gap}" x2="30" y2="${y}" stroke="#999"/>`);
    y += boxH + gap;
  });
  const legend = (["config", "s1", "s2", "result"] as Kind[])
    .map((k, i) => `<rect x="${20 + i * 170}" y="${y + 8}" width="14" height="14" fill="${COLORS[k].fill}" stroke="${COLORS[k].stroke}"/><text x="${40 + i * 170}" y="${y + 20}" font-family="sans-serif" font-size="12">${{ config: "configuration fetch", s1: "stage 1 (guest tables)", s2: "stage 2 (host tables)", result: "result" }[k]}</text>`)
    .join("");
  const height = y + 40;
  return `<svg xmlns="http://www.w3.org/2000/svg" width="${width}" height="${height}" viewBox="0 0 ${width} ${height}">
<rect width="100%" height="100%" fill="white"/>
<text x="20" y="24" font-family="sans-serif" font-size="15" font-weight="bold">${esc(`nested walk: ${title}`)}</text>
${parts.join("\n")}
${legend}
</svg>
`;
}
