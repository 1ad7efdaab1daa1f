// The PURE core of the `walk` tool: given a memory image, a JSON-friendly
// translation setup and a list of (StreamID, SubstreamID, IOVA, access)
// queries, return JSON-able results — the PA, size and permissions, or the
// fault as the device would record it — and with `explain` every descriptor
// read in both stages (and the configuration structures fetched).
//
// Vendor-neutral front: `config.vendor` selects a handler from WALK_VENDORS:
// "smmuv3" (here) and "vtd" (vtd/walk-tool.ts); further device models
// register theirs with registerWalkVendor(). The CLI wrapper that reads files lives
// elsewhere. Every bigint in the output is a "0x…" string.

import { hex, pack, wordsToBytes } from "../bits.js";
import { armStage1Config, armStage2Config, type ArmGranuleShift } from "../format/arm.js";
import { type PhysicalMemory, SparseMemory } from "../memory.js";
import {
  type AccessKind,
  DESC_NAMES,
  type PermSet,
  type TranslationFault,
  type WalkStep,
  permString,
} from "../translation.js";
import { walkStage } from "../walk/walk.js";
import type { EventRecord } from "../smmuv3/events.js";
import { faultToEvent } from "../smmuv3/faults.js";
import { type SmmuFeatures, SMMU_REG, STRTAB_BASE, STRTAB_BASE_CFG, STRTAB_FMT, CR0, oasEncoding } from "../smmuv3/regs.js";
import { type SmmuTrace, SmmuV3 } from "../smmuv3/smmu.js";
import { STE_BYTES, STE_CONFIG, STE_QWORDS, encodeSte } from "../smmuv3/ste.js";
import { vtdWalkVendor } from "../vtd/walk-tool.js";

// ---------------------------------------------------------------------------
// Input

/** A number in JSON: a bigint, a safe integer, or a string ("0x1f", "31"). */
export type JsonNum = bigint | number | string;

/** One piece of the memory image: bytes at an address (hex string, byte array or Uint8Array). */
export interface ImageSegment {
  readonly address: JsonNum;
  readonly bytes: string | readonly number[] | Uint8Array;
}

export type WalkImage = readonly ImageSegment[] | SparseMemory;

export interface WalkQuery {
  readonly streamId?: number;
  readonly substreamId?: number;
  readonly iova: JsonNum;
  readonly access?: AccessKind;
  /** PCIe: only PASID-tagged requests can be privileged. Default false. */
  readonly privileged?: boolean;
}

/** SMMUv3 setups. */
export type SmmuWalkConfig =
  /** A full SMMU: stream table registers; the tables (STE, CD, page tables) are in the image. */
  | {
      readonly vendor: "smmuv3";
      readonly kind: "smmu";
      readonly strtabBase: JsonNum;
      /** log2 of the number of StreamIDs (STRTAB_BASE_CFG.LOG2SIZE). */
      readonly log2size: number;
      readonly format?: "linear" | "2-level";
      readonly split?: number;
      readonly features?: Partial<SmmuFeatures>;
    }
  /** A bare STE (8 qwords): placed in a scratch stream table for every query's StreamID. */
  | { readonly vendor: "smmuv3"; readonly kind: "ste"; readonly ste: readonly JsonNum[]; readonly features?: Partial<SmmuFeatures> }
  /** A bare CD (8 qwords): a stage-1-only STE pointing at it is synthesised. */
  | { readonly vendor: "smmuv3"; readonly kind: "cd"; readonly cd: readonly JsonNum[]; readonly features?: Partial<SmmuFeatures> }
  /** Bare TTB/TCR fields for one stage (no STE/CD). */
  | {
      readonly vendor: "smmuv3";
      readonly kind: "stage";
      readonly stage: 1 | 2;
      /** Granule in bytes: 4096, 16384 or 65536. */
      readonly granule: number;
      /** Input size in bits (64 − TxSZ). */
      readonly inputBits: number;
      /** Stage 2: S2SL0. */
      readonly sl0?: number;
      /** TTB0 / S2TTB. */
      readonly ttb: JsonNum;
      /** Effective output size in bits (default 48). */
      readonly outputBits?: number;
      readonly ha?: boolean;
      readonly hd?: boolean;
      readonly affd?: boolean;
      readonly had?: boolean;
      readonly wxn?: boolean;
    };

/** Any vendor's config: `vendor` selects the handler. */
export type WalkConfig = SmmuWalkConfig | { readonly vendor: string; readonly [k: string]: unknown };

export interface WalkInput {
  readonly image: WalkImage;
  readonly config: WalkConfig;
  readonly queries: readonly WalkQuery[];
  /** Report every descriptor read (both stages) and configuration fetch. */
  readonly explain?: boolean;
}

// ---------------------------------------------------------------------------
// Output (JSON-able)

export interface JsonStep {
  readonly stage: 1 | 2;
  readonly level: number;
  readonly descAddr: string;
  readonly descIpa?: string;
  readonly value: string;
  readonly type: string;
  readonly purpose?: string;
  readonly s1Level?: number;
  readonly updated?: string;
}

export interface JsonConfigStep {
  readonly what: string;
  readonly addr: string;
  readonly pa?: string;
  readonly value?: string;
}

export type JsonWalkResult =
  | {
      readonly query: JsonQuery;
      readonly ok: true;
      readonly pa: string;
      readonly ipa?: string;
      readonly size: string;
      readonly pageShift: number;
      readonly perms: string;
      readonly permBits: number;
      readonly steps?: readonly JsonStep[];
      readonly config?: readonly JsonConfigStep[];
    }
  | {
      readonly query: JsonQuery;
      readonly ok: false;
      /** The fault value (walker fault or configuration fault). */
      readonly fault: Record<string, string | number | boolean>;
      /** The event record the device records for it (if any), fields as JSON. */
      readonly event?: Record<string, string | number | boolean>;
      readonly recorded?: boolean;
      readonly steps?: readonly JsonStep[];
      readonly config?: readonly JsonConfigStep[];
    };

export interface JsonQuery {
  readonly streamId: number;
  readonly substreamId?: number;
  readonly iova: string;
  readonly access: AccessKind;
  readonly privileged: boolean;
}

export interface WalkOutput {
  readonly vendor: string;
  readonly results: readonly JsonWalkResult[];
}

/** A per-vendor handler. */
export interface WalkVendor {
  run(mem: PhysicalMemory, config: WalkConfig, queries: readonly WalkQuery[], explain: boolean): JsonWalkResult[];
}

export const WALK_VENDORS = new Map<string, WalkVendor>();

export function registerWalkVendor(name: string, handler: WalkVendor): void {
  WALK_VENDORS.set(name, handler);
}

// ---------------------------------------------------------------------------
// Helpers

export function toBig(v: JsonNum): bigint {
  if (typeof v === "bigint") return v;
  if (typeof v === "number") {
    if (!Number.isSafeInteger(v) || v < 0) throw new RangeError(`not an address: ${v}`);
    return BigInt(v);
  }
  const s = v.trim().replace(/_/g, "");
  if (!/^(0x[0-9a-fA-F]+|[0-9]+)$/.test(s)) throw new RangeError(`not a number: ${v}`);
  return BigInt(s);
}

function bytesOf(b: ImageSegment["bytes"]): Uint8Array {
  if (b instanceof Uint8Array) return b;
  if (typeof b === "string") {
    const s = b.replace(/^0x/, "").replace(/[\s_]/g, "");
    if (s.length % 2 !== 0 || !/^[0-9a-fA-F]*$/.test(s)) throw new RangeError("bad hex byte string");
    const out = new Uint8Array(s.length / 2);
    for (let i = 0; i < out.length; i++) out[i] = Number.parseInt(s.slice(2 * i, 2 * i + 2), 16);
    return out;
  }
  return Uint8Array.from(b);
}

/** Build a SparseMemory from an image (a SparseMemory is used as is). */
export function loadImage(image: WalkImage, paBits = 52): SparseMemory {
  if (image instanceof SparseMemory) return image;
  const mem = new SparseMemory(paBits);
  for (const seg of image) {
    const w = mem.write(toBig(seg.address), bytesOf(seg.bytes));
    if (!w.ok) throw new RangeError(`image segment at ${String(seg.address)} outside memory`);
  }
  return mem;
}

function jsonValue(v: unknown): string | number | boolean | undefined {
  if (typeof v === "bigint") return hex(v);
  if (typeof v === "number" || typeof v === "boolean" || typeof v === "string") return v;
  return undefined;
}

function jsonRecord(o: object): Record<string, string | number | boolean> {
  const out: Record<string, string | number | boolean> = {};
  for (const [k, v] of Object.entries(o)) {
    const j = jsonValue(v);
    if (j !== undefined) out[k] = j;
  }
  return out;
}

function jsonStep(s: WalkStep): JsonStep {
  return {
    stage: s.stage,
    level: s.level,
    descAddr: hex(s.descAddr),
    ...(s.descIpa !== undefined ? { descIpa: hex(s.descIpa) } : {}),
    value: hex(s.value),
    type: DESC_NAMES[s.type],
    ...(s.purpose !== undefined ? { purpose: s.purpose } : {}),
    ...(s.s1Level !== undefined ? { s1Level: s.s1Level } : {}),
    ...(s.updated !== undefined ? { updated: hex(s.updated) } : {}),
  };
}

function jsonQuery(q: WalkQuery): JsonQuery {
  return {
    streamId: q.streamId ?? 0,
    ...(q.substreamId !== undefined ? { substreamId: q.substreamId } : {}),
    iova: hex(toBig(q.iova)),
    access: q.access ?? "read",
    privileged: q.privileged === true,
  };
}

function okResult(
  q: WalkQuery,
  r: { pa: bigint; ipa?: bigint; pageShift: number; perms: PermSet },
  steps: JsonStep[] | undefined,
  config: JsonConfigStep[] | undefined,
): JsonWalkResult {
  return {
    query: jsonQuery(q),
    ok: true,
    pa: hex(r.pa),
    ...(r.ipa !== undefined ? { ipa: hex(r.ipa) } : {}),
    size: hex(1n << BigInt(r.pageShift)),
    pageShift: r.pageShift,
    perms: permString(r.perms),
    permBits: r.perms,
    ...(steps ? { steps } : {}),
    ...(config ? { config } : {}),
  };
}

// ---------------------------------------------------------------------------
// SMMUv3 handler

/** Scratch area for synthesised stream tables / CDs (top of a 48-bit space, 2^47-aligned). */
const SCRATCH = 1n << 47n;

function configTrace(t: SmmuTrace, out: JsonConfigStep[]): void {
  if (t.ev === "ste-fetch") {
    if (t.l1Addr !== undefined) {
      out.push({ what: "L1STD", addr: hex(t.l1Addr), ...(t.l1Desc !== undefined ? { value: hex(t.l1Desc) } : {}) });
    }
    if (t.steAddr !== undefined) {
      out.push({ what: "STE", addr: hex(t.steAddr), ...(t.ste ? { value: hex(t.ste[0] ?? 0n) } : {}) });
    }
  } else if (t.ev === "cd-fetch") {
    for (const s of t.steps) {
      out.push({ what: s.what, addr: hex(s.addr), pa: hex(s.pa), ...(s.value !== undefined ? { value: hex(s.value) } : {}) });
    }
  }
}

function runSmmu(mem: PhysicalMemory, cfg: SmmuWalkConfig, queries: readonly WalkQuery[], explain: boolean): JsonWalkResult[] {
  if (cfg.kind === "stage") return runStage(mem, cfg, queries, explain);
  const features = cfg.features ?? {};
  const results: JsonWalkResult[] = [];
  for (const q of queries) {
    const sid = q.streamId ?? 0;
    let strtabBase: bigint;
    let log2size: number;
    let twoLevel = false;
    let split = 8;
    if (cfg.kind === "smmu") {
      strtabBase = toBig(cfg.strtabBase);
      log2size = cfg.log2size;
      twoLevel = cfg.format === "2-level";
      split = cfg.split ?? 8;
    } else {
      // Synthesise a linear stream table holding the STE at this StreamID.
      strtabBase = SCRATCH;
      log2size = Math.max(1, Math.ceil(Math.log2(sid + 1)));
      let ste: bigint[];
      if (cfg.kind === "ste") {
        ste = cfg.ste.map(toBig);
      } else {
        const cdAddr = SCRATCH - 0x1000n;
        mem.write(cdAddr, wordsToBytes(cfg.cd.map(toBig).concat(new Array(8).fill(0n)).slice(0, 8)));
        ste = encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: cdAddr });
      }
      while (ste.length < STE_QWORDS) ste.push(0n);
      mem.write(strtabBase + BigInt(sid) * BigInt(STE_BYTES), wordsToBytes(ste.slice(0, STE_QWORDS)));
    }
    const configSteps: JsonConfigStep[] = [];
    const event: { e?: EventRecord } = {};
    const smmu = new SmmuV3({
      memory: mem,
      features: { sidBits: 32, ...features },
      ports: {
        onEvent: (e) => (event.e = e),
        ...(explain ? { onTrace: (t: SmmuTrace) => configTrace(t, configSteps) } : {}),
      },
    });
    smmu.write(SMMU_REG.STRTAB_BASE, pack(STRTAB_BASE, 1, { ADDR: strtabBase >> 6n })[0] as bigint, 8);
    smmu.write(
      SMMU_REG.STRTAB_BASE_CFG,
      Number(
        pack(STRTAB_BASE_CFG, 1, {
          LOG2SIZE: log2size,
          SPLIT: twoLevel ? split : 0,
          FMT: twoLevel ? STRTAB_FMT.TWO_LEVEL : STRTAB_FMT.LINEAR,
        })[0],
      ),
    );
    smmu.write(SMMU_REG.CR0, Number(pack(CR0, 1, { SMMUEN: 1 })[0]));
    const steps: JsonStep[] = [];
    const r = smmu.translate(
      sid,
      q.substreamId,
      toBig(q.iova),
      { kind: q.access ?? "read", privileged: q.privileged === true },
      explain ? { visitor: (s) => steps.push(jsonStep(s)) } : undefined,
    );
    const st = explain ? steps : undefined;
    const cs = explain ? configSteps : undefined;
    if (r.ok) {
      results.push(okResult(q, r, st, cs));
    } else {
      const ev = r.event ?? event.e;
      results.push({
        query: jsonQuery(q),
        ok: false,
        fault: jsonRecord(r.fault),
        ...(ev ? { event: jsonRecord(ev) } : {}),
        recorded: r.recorded,
        ...(st ? { steps: st } : {}),
        ...(cs ? { config: cs } : {}),
      });
    }
  }
  return results;
}

function runStage(
  mem: PhysicalMemory,
  cfg: Extract<SmmuWalkConfig, { kind: "stage" }>,
  queries: readonly WalkQuery[],
  explain: boolean,
): JsonWalkResult[] {
  const g = Math.log2(cfg.granule) as ArmGranuleShift;
  if (g !== 12 && g !== 14 && g !== 16) throw new RangeError(`granule ${cfg.granule} not supported`);
  const outputBits = cfg.outputBits ?? 48;
  oasEncoding(outputBits);
  const sc =
    cfg.stage === 1
      ? armStage1Config({
          granuleShift: g,
          tsz: 64 - cfg.inputBits,
          outputBits,
          ttb: toBig(cfg.ttb),
          ha: cfg.ha,
          hd: cfg.hd,
          affd: cfg.affd,
          had: cfg.had,
          wxn: cfg.wxn,
        })
      : armStage2Config({
          granuleShift: g,
          s2t0sz: 64 - cfg.inputBits,
          sl0: cfg.sl0 ?? 1,
          outputBits,
          s2ttb: toBig(cfg.ttb),
          ha: cfg.ha,
          hd: cfg.hd,
          affd: cfg.affd,
        });
  return queries.map((q): JsonWalkResult => {
    if (!sc.ok) {
      return {
        query: jsonQuery(q),
        ok: false,
        fault: { config: cfg.stage === 1 ? "C_BAD_CD" : "C_BAD_STE", reason: sc.error },
      };
    }
    const steps: JsonStep[] = [];
    const iova = toBig(q.iova);
    const access = { kind: q.access ?? "read", privileged: q.privileged === true } as const;
    const r = walkStage(mem, sc.stage, iova, access, explain ? { visitor: (s) => steps.push(jsonStep(s)) } : undefined);
    if (r.ok) return okResult(q, { pa: r.output, pageShift: r.pageShift, perms: r.perms }, explain ? steps : undefined, undefined);
    const ev = faultToEvent(r as TranslationFault, {
      StreamID: q.streamId ?? 0,
      SSV: q.substreamId !== undefined,
      SubstreamID: q.substreamId ?? 0,
      kind: access.kind,
      privileged: access.privileged,
      InputAddr: iova,
    });
    return {
      query: jsonQuery(q),
      ok: false,
      fault: jsonRecord(r),
      ...(ev ? { event: jsonRecord(ev) } : {}),
      ...(explain ? { steps } : {}),
    };
  });
}

registerWalkVendor("smmuv3", {
  run: (mem, config, queries, explain) => runSmmu(mem, config as SmmuWalkConfig, queries, explain),
});
// The VT-d handler lives with the VT-d model (it imports only types from here).
registerWalkVendor("vtd", vtdWalkVendor);

// ---------------------------------------------------------------------------
// Entry point

/**
 * Run the walk tool. The image is copied into a fresh SparseMemory (a
 * SparseMemory passed in is used directly, so hardware A/D updates show).
 */
export function runWalk(input: WalkInput): WalkOutput {
  const vendor = input.config.vendor;
  const handler = WALK_VENDORS.get(vendor);
  if (!handler) throw new RangeError(`unknown vendor "${vendor}" (known: ${[...WALK_VENDORS.keys()].join(", ")})`);
  const mem = loadImage(input.image);
  return { vendor, results: handler.run(mem, input.config, input.queries, input.explain === true) };
}

