// `walk`: the hardware walk tool. Reads raw memory image file(s) and a JSON
// file with the translation setup and queries, runs the pure core in
// packages/hw/src/tools/walk.ts (runWalk) and prints its JSON: per query the
// PA, size and permissions, or the fault and the event record the device
// would write; with --explain every descriptor read of both stages.
//
// The core is not on @iommufd/hw's public surface yet, hence the relative
// import (to be replaced by the package entry once it exports the tool).
import { readFileSync } from "node:fs";
import type { JsonNum, WalkConfig, WalkQuery } from "../../../../packages/hw/src/tools/walk.js";
import { type Command, InvalidArgumentError } from "commander";
import { progress } from "../progress.js";

/** Queries per runWalk call when a progress bar is shown. */
const CHUNK = 256;

interface WalkFile {
  config: WalkConfig;
  queries?: WalkQuery[];
  image?: { address: JsonNum; bytes: string | number[] }[];
}

/** `file` or `file@0x80000000`: raw bytes loaded at that physical address (default 0). */
export function parseImageArg(v: string, prev: { file: string; address: string }[] = []): { file: string; address: string }[] {
  const at = v.lastIndexOf("@");
  const [file, address] = at > 0 ? [v.slice(0, at), v.slice(at + 1)] : [v, "0"];
  if (!/^(0x[0-9a-fA-F_]+|\d+)$/.test(address)) throw new InvalidArgumentError(`"${address}" is not an address`);
  return [...prev, { file, address }];
}

/** `iova=0x6008,sid=3,ssid=1,access=write,priv` → a query. */
export function parseQueryArg(v: string, prev: WalkQuery[] = []): WalkQuery[] {
  const q: { iova?: string; streamId?: number; substreamId?: number; access?: WalkQuery["access"]; privileged?: boolean } = {};
  for (const part of v.split(",")) {
    const [k, val = ""] = part.split("=", 2).map((s) => s.trim()) as [string, string?];
    const num = () => {
      const n = Number(val);
      if (!Number.isInteger(n) || n < 0) throw new InvalidArgumentError(`${k}=${val}: not a number`);
      return n;
    };
    if (k === "iova") q.iova = val;
    else if (k === "sid" || k === "streamId") q.streamId = num();
    else if (k === "ssid" || k === "pasid" || k === "substreamId") q.substreamId = num();
    else if (k === "access") {
      if (!["read", "write", "exec"].includes(val)) throw new InvalidArgumentError(`access=${val}: read, write or exec`);
      q.access = val as WalkQuery["access"];
    } else if (k === "priv") q.privileged = val === "" || val === "1" || val === "true";
    else throw new InvalidArgumentError(`unknown query key "${k}" (iova, sid, ssid, access, priv)`);
  }
  if (!q.iova) throw new InvalidArgumentError(`query "${v}" has no iova`);
  return [...prev, { ...q, iova: q.iova }];
}

export function walkCommand(program: Command): void {
  program
    .command("walk")
    .description("walk page tables in raw memory images as the IOMMU hardware would (packages/hw walk tool); prints JSON")
    .requiredOption("-c, --config <file>", 'JSON: {"config": {"vendor": "smmuv3"|"vtd", ...}, "queries": [...], "image": [{address, bytes}]?}, or a bare config')
    .option("-i, --image <file[@address]>", "raw memory image loaded at a physical address (repeatable; default address 0)", parseImageArg, [])
    .option("-q, --query <spec>", "a query: iova=0x6008,sid=3,ssid=1,access=read|write|exec,priv (repeatable; added to the file's)", parseQueryArg, [])
    .option("-e, --explain", "list every configuration fetch and descriptor read of both stages")
    .option("--compact", "one-line JSON")
    .addHelpText(
      "after",
      `
Configs (see packages/hw/src/tools/walk.ts): smmuv3 kinds "smmu" (strtabBase, log2size),
"ste" (8 qwords), "cd" (8 qwords), "stage" (stage, granule, inputBits, ttb); vtd configs
(see packages/hw/src/vtd/walk-tool.ts). Numbers may be "0x…" strings.`,
    )
    .action(async (o: { config: string; image: { file: string; address: string }[]; query: WalkQuery[]; explain?: boolean; compact?: boolean }) => {
      const { loadImage, runWalk } = await import("../../../../packages/hw/src/tools/walk.js");
      const raw = JSON.parse(readFileSync(o.config, "utf8")) as WalkFile | WalkConfig;
      const file: WalkFile = "config" in raw && typeof raw.config === "object" ? (raw as WalkFile) : { config: raw as WalkConfig };
      const queries = [...(file.queries ?? []), ...o.query];
      if (queries.length === 0) throw new Error("no queries: give them in the JSON file (queries) or with --query");
      // One memory for every chunk, so the walk sees what one call would (A/D updates included).
      const mem = loadImage([...(file.image ?? []), ...o.image.map((im) => ({ address: im.address, bytes: new Uint8Array(readFileSync(im.file)) }))]);
      const bar = progress("walking", queries.length, { enabled: queries.length > CHUNK });
      const results = [];
      let vendor = "";
      for (let i = 0; i < queries.length; i += CHUNK) {
        const out = runWalk({ image: mem, config: file.config, queries: queries.slice(i, i + CHUNK), explain: o.explain === true });
        vendor = out.vendor;
        results.push(...out.results);
        bar.tick(Math.min(CHUNK, queries.length - i));
      }
      bar.stop();
      console.log(JSON.stringify({ vendor, results }, null, o.compact ? undefined : 2));
    });
}
