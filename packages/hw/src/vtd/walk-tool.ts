// The VT-d handler of the `walk` tool (pure core). A configuration is either
// a memory image holding root/context/PASID tables (with RTADDR), or a bare
// 512-bit PASID entry over a memory image holding the page tables. The
// result is the output address or the scalable-mode fault reason with the
// fault-record fields, plus an explain listing every structure and
// descriptor read of both stages. The memory image is never modified:
// hardware A/D updates land in a private overlay.

import { hex } from "../bits.js";
import { VTD_FIRST_STAGE, VTD_SECOND_STAGE } from "../format/vtd.js";
import { ByteMemory, type MemResult, type PhysicalMemory } from "../memory.js";
import type { JsonConfigStep, JsonNum, JsonStep, JsonWalkResult, WalkQuery, WalkVendor } from "../tools/walk.js";
import { DESC_NAMES, permString, type WalkStep } from "../translation.js";
import type { VtdFaultReason } from "./fault-reasons.js";
import type { VtdFaultRecord } from "./fault-record.js";
import type { StructureRead } from "./lookup.js";
import { DEFAULT_VTD_CAPABILITIES, VTD_REG, type VtdCapabilities } from "./regs.js";
import { Vtd, type VtdExplain, type VtdTranslateResult } from "./vtd.js";

/** Copy-on-write view: reads fall through to the image, writes stay here. */
export class OverlayMemory extends ByteMemory {
  readonly paBits: number;
  private readonly pages = new Map<bigint, Uint8Array>();
  constructor(readonly base: PhysicalMemory) {
    super();
    this.paBits = base.paBits;
  }
  private pageOf(pfn: bigint): Uint8Array | undefined {
    return this.pages.get(pfn);
  }
  read(addr: bigint, length: number): MemResult<Uint8Array> {
    const r = this.base.read(addr, length);
    if (!r.ok) return r;
    const out = r.value.slice();
    for (let i = 0; i < length; i++) {
      const a = addr + BigInt(i);
      const p = this.pageOf(a >> 12n);
      if (p) out[i] = p[Number(a & 0xfffn)] as number;
    }
    return { ok: true, value: out };
  }
  write(addr: bigint, data: Uint8Array): MemResult<void> {
    for (let i = 0; i < data.length; i++) {
      const a = addr + BigInt(i);
      const pfn = a >> 12n;
      let p = this.pages.get(pfn);
      if (!p) {
        const r = this.base.read(pfn << 12n, 4096);
        if (!r.ok) return { ok: false, abort: r.abort, addr: a };
        p = r.value.slice();
        this.pages.set(pfn, p);
      }
      p[Number(a & 0xfffn)] = data[i] as number;
    }
    return { ok: true, value: undefined };
  }
  /** Addresses the walk would have written (A/D updates), for explain. */
  get dirtyPages(): bigint[] {
    return [...this.pages.keys()].map((p) => p << 12n);
  }
}

export type VtdWalkConfig =
  /** Root table in memory: RTADDR as software writes it (TTM in bits 11:10 must be 01b). */
  | { readonly kind: "tables"; readonly mem: PhysicalMemory; readonly rtaddr: bigint }
  /** A bare PASID table entry (8 qwords); page tables in `mem`. */
  | { readonly kind: "pasid-entry"; readonly mem: PhysicalMemory; readonly entry: readonly bigint[] };

export interface VtdWalkRequest {
  readonly config: VtdWalkConfig;
  readonly rid: number;
  /** undefined = request without PASID (RID_PASID; for a bare entry: PASID 0). */
  readonly pasid?: number;
  readonly addr: bigint;
  readonly access: "read" | "write" | "exec";
  /** Privileged (supervisor) request; only with a PASID. */
  readonly priv?: boolean;
  readonly caps?: Partial<VtdCapabilities>;
  /** Keep the image unmodified (A/D updates go to a private overlay). Default true. */
  readonly overlay?: boolean;
}

/** Structured explain: every structure and descriptor read, and the same as text lines. */
export interface VtdWalkTrace {
  structures: StructureRead[];
  steps: WalkStep[];
  explain: string[];
}

export type VtdWalkResult =
  | ({ ok: true; output: bigint; ipa?: bigint; perms: string; permBits: number; pageShift: number; did?: number; pgtt?: number } & VtdWalkTrace)
  | ({ ok: false; reason: VtdFaultReason; reasonName: string; record: VtdFaultRecord; recorded: string } & VtdWalkTrace);

function describeStructure(r: StructureRead): string {
  return `${r.what} @${hex(r.addr)} = [${r.words.map(hex).join(", ")}]`;
}

function describeStep(s: WalkStep): string {
  const name = (s.stage === 1 ? VTD_FIRST_STAGE : VTD_SECOND_STAGE).levelName(s.level);
  const why =
    s.stage === 2 ? (s.purpose === "table" ? ` (for FS ${VTD_FIRST_STAGE.levelName(s.s1Level ?? 0)} fetch)` : s.purpose === "output" ? " (final GPA)" : "") : "";
  const ipa = s.descIpa !== undefined ? ` GPA ${hex(s.descIpa)} →` : "";
  if (s.updated !== undefined) return `S${s.stage} ${name}${why}:${ipa} @${hex(s.descAddr)} A/D update ${hex(s.value)} → ${hex(s.updated)}`;
  return `S${s.stage} ${name}${why}:${ipa} @${hex(s.descAddr)} = ${hex(s.value)} (${DESC_NAMES[s.type]})`;
}

/** Run one VT-d walk for the tool. Never throws on bad tables. */
export function vtdWalk(req: VtdWalkRequest): VtdWalkResult {
  const caps = { ...DEFAULT_VTD_CAPABILITIES, ...req.caps };
  const mem = req.overlay === false ? req.config.mem : new OverlayMemory(req.config.mem);
  const vtd = new Vtd(mem, { caps });
  const access = { kind: req.access, priv: req.priv ?? false };
  let result: VtdTranslateResult;
  const explain: VtdExplain = { structures: [], steps: [] };
  const lines: string[] = [];
  if (req.config.kind === "tables") {
    vtd.writeReg(VTD_REG.RTADDR, req.config.rtaddr);
    vtd.writeReg(VTD_REG.GCMD, (1n << 30n) | (1n << 31n), 4); // SRTP + TE
    result = vtd.translate(req.rid, req.pasid, req.addr, access, { explain });
  } else {
    lines.push(`pasid-entry = [${req.config.entry.map(hex).join(", ")}]`);
    result = vtd.translateWithPasidEntry(req.config.entry, req.rid, req.pasid, req.addr, access, { explain });
  }
  lines.push(...explain.structures.map(describeStructure), ...explain.steps.map(describeStep));
  const trace = { structures: explain.structures, steps: explain.steps, explain: lines };
  if (result.ok) {
    lines.push(`→ ${hex(result.output)} (${permString(result.perms)}, 2^${result.pageShift})`);
    return {
      ok: true,
      output: result.output,
      ...(result.walk?.ipa !== undefined ? { ipa: result.walk.ipa } : {}),
      perms: permString(result.perms),
      permBits: result.perms,
      pageShift: result.pageShift,
      ...(result.did !== undefined ? { did: result.did } : {}),
      ...(result.pgtt !== undefined ? { pgtt: result.pgtt } : {}),
      ...trace,
    };
  }
  lines.push(`→ fault ${hex(result.reason)} ${result.reasonName}`);
  return { ok: false, reason: result.reason, reasonName: result.reasonName, record: result.record, recorded: result.recorded, ...trace };
}

// ---------------------------------------------------------------------------
// The `walk` tool's vendor handler (tools/walk.ts registers it as "vtd").
// Queries: streamId = requester ID, substreamId = PASID (absent = request
// without PASID). Type-only imports from tools/walk.ts keep the module graph
// acyclic at run time.

/** A number in JSON: bigint, safe integer, or "0x…" / decimal string. */
type ToolNum = JsonNum;

function big(v: ToolNum): bigint {
  if (typeof v === "bigint") return v;
  if (typeof v === "number") return BigInt(v);
  return BigInt(v.trim().replace(/_/g, ""));
}

/** VT-d configurations accepted by the walk tool. */
export type VtdToolConfig =
  /** Root/context/PASID tables in the image; RTADDR as software writes it (TTM = 01b in bits 11:10). */
  | { readonly vendor: "vtd"; readonly kind: "tables"; readonly rtaddr: ToolNum; readonly caps?: Partial<VtdCapabilities> }
  /** A bare PASID table entry (8 qwords) over page tables in the image. */
  | { readonly vendor: "vtd"; readonly kind: "pasid-entry"; readonly entry: readonly ToolNum[]; readonly caps?: Partial<VtdCapabilities> };

function jsonFields(o: object): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(o)) {
    if (typeof v === "bigint") out[k] = hex(v);
    else if (typeof v === "number" || typeof v === "boolean" || typeof v === "string") out[k] = v;
  }
  return out;
}

function toolStep(st: WalkStep): JsonStep {
  return {
    stage: st.stage,
    level: st.level,
    descAddr: hex(st.descAddr),
    ...(st.descIpa !== undefined ? { descIpa: hex(st.descIpa) } : {}),
    value: hex(st.value),
    type: DESC_NAMES[st.type],
    ...(st.purpose !== undefined ? { purpose: st.purpose } : {}),
    ...(st.s1Level !== undefined ? { s1Level: st.s1Level } : {}),
    ...(st.updated !== undefined ? { updated: hex(st.updated) } : {}),
  };
}

function toolConfigStep(r: StructureRead): JsonConfigStep {
  return { what: r.what, addr: hex(r.addr), value: hex(r.words[0] ?? 0n) };
}

/** Run the VT-d walk for the tool's queries (memory used directly: A/D updates show, as for SMMUv3). */
export function runVtdWalk(mem: PhysicalMemory, config: VtdToolConfig, queries: readonly WalkQuery[], explain: boolean): JsonWalkResult[] {
  const cfg: VtdWalkConfig =
    config.kind === "tables" ? { kind: "tables", mem, rtaddr: big(config.rtaddr) } : { kind: "pasid-entry", mem, entry: config.entry.map(big) };
  return queries.map((q): JsonWalkResult => {
    const access = q.access ?? "read";
    const query = {
      streamId: q.streamId ?? 0,
      ...(q.substreamId !== undefined ? { substreamId: q.substreamId } : {}),
      iova: hex(big(q.iova)),
      access,
      privileged: q.privileged === true,
    };
    const r = vtdWalk({
      config: cfg,
      rid: q.streamId ?? 0,
      ...(q.substreamId !== undefined ? { pasid: q.substreamId } : {}),
      addr: big(q.iova),
      access,
      priv: q.privileged === true,
      overlay: false,
      ...(config.caps ? { caps: config.caps } : {}),
    });
    const trace = explain ? { steps: r.steps.map(toolStep), config: r.structures.map(toolConfigStep) } : {};
    if (r.ok) {
      return {
        query,
        ok: true,
        pa: hex(r.output),
        ...(r.ipa !== undefined ? { ipa: hex(r.ipa) } : {}),
        size: hex(1n << BigInt(r.pageShift)),
        pageShift: r.pageShift,
        perms: r.perms,
        permBits: r.permBits,
        ...trace,
      };
    }
    return {
      query,
      ok: false,
      fault: { reason: hex(r.reason), reasonName: r.reasonName },
      event: jsonFields(r.record),
      recorded: r.recorded === "recorded",
      ...trace,
    };
  });
}

/** The handler object tools/walk.ts registers under "vtd". */
export const vtdWalkVendor: WalkVendor = {
  run: (mem, config, queries, explain) => runVtdWalk(mem, config as unknown as VtdToolConfig, queries, explain),
};
