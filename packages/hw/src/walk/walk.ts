// The one walker. Every format (Arm S1/S2 4K/16K/64K, VT-d FS/SS) and every
// mode (S1 only, S2 only, nested) goes through `walkCore`, driven by a
// PageTableFormat and a StageConfig. Results are values; bad tables, aborts
// and impossible configurations produce fault values, never exceptions.
//
// Nested (reference/hw-formats.md §5, §7 rulings 1, 2, 9): every stage-1
// descriptor fetch address (table base + index × 8) is an IPA translated by
// its own stage-2 walk (not the table base once), then the stage-1 output IPA
// is translated. Fault order per ruling 2, for each stage-1 level:
//   S2 walk of the descriptor IPA (→ S2, CLASS TT) → S1 fetch (external abort
//   → S1, TT) → S1 translation → S1 address size;
// then at the leaf: S1 access flag (with HA: the S2 write check of the
// descriptor IPA, ruling 9) → S1 permission → S2 walk of the output IPA
// (→ S2, CLASS IN).
//
// Hot path: descriptors are handled as two 32-bit halves and addresses as
// numbers (all table and output addresses are below 2^52, exact in a double);
// bigint appears only at the API boundary, in faults, and in A/D write-backs.
// The format is consulted through its StagePlan (plan.ts): level shifts,
// address masks and decode/permission tables, so the level loop makes no
// format calls; a translation's context is reused by the next one.

import type { PhysicalMemory } from "../memory.js";
import {
  type AccessRequest,
  Desc,
  type DescType,
  type FaultClass,
  type FaultKind,
  PERM_ALL,
  PERM_W,
  type PermSet,
  type StageConfig,
  type StageOutcome,
  type TranslationConfig,
  type TranslationFault,
  type TranslationOk,
  type TranslationResult,
  type WalkOptions,
  type WalkStep,
  permits,
} from "../translation.js";
import { POW2, planOf, type StagePlan, TABLE_LIMIT_SHIFT, TYPE_MASK } from "./plan.js";

// Local snapshots of imported constants: module-namespace getters (as emitted
// by tsx / vite transforms) would otherwise sit on the hot path.
const D_INVALID = Desc.INVALID;
const D_TABLE = Desc.TABLE;
const D_BLOCK = Desc.BLOCK;
const D_RESERVED = Desc.RESERVED;
const P_ALL = PERM_ALL;
const P_W = PERM_W;
const allowed = permits;

/** How often a walk restarts when a hardware A/D update loses a compare-and-swap race. */
const MAX_CAS_RETRIES = 4;
const TWO32 = 4294967296;
const MAX_EXACT = 2 ** 53;
/** Scratch for descriptor reads: consumed immediately after each read, so one per module is enough. */
const WORDS = new Uint32Array(2);

const READ_FETCH: AccessRequest = { kind: "read", privileged: true };
const WRITE_FETCH: AccessRequest = { kind: "write", privileged: true };

function toBig(lo: number, hi: number): bigint {
  return (BigInt(hi >>> 0) << 32n) | BigInt(lo >>> 0);
}

/** A stage result; desc/descAddr are converted to bigint, and global decoded, only when read. */
class StageOut implements StageOutcome {
  constructor(
    /** @internal */ readonly plan: StagePlan,
    readonly level: number,
    readonly pageShift: number,
    readonly perms: PermSet,
    readonly writeNeedsWalk: boolean,
    /** @internal */ readonly outNum: number,
    /** @internal */ readonly descLo: number,
    /** @internal */ readonly descHi: number,
    /** @internal */ readonly descAddrNum: number,
  ) {}
  get output(): bigint {
    return BigInt(this.outNum);
  }
  get global(): boolean {
    return this.plan.format.isGlobalW(this.descLo, this.descHi);
  }
  get desc(): bigint {
    return toBig(this.descLo, this.descHi);
  }
  get descAddr(): bigint {
    return BigInt(this.descAddrNum);
  }
}

/** A successful translation; descReads (when recorded) is converted to bigint when read. */
class Ok implements TranslationOk {
  readonly ok = true as const;
  constructor(
    readonly input: bigint,
    /** @internal */ readonly outNum: number,
    /** @internal */ readonly ipaNum: number,
    readonly pageShift: number,
    readonly level: number,
    readonly perms: PermSet,
    readonly s1: StageOutcome | undefined,
    readonly s2: StageOutcome | undefined,
    private readonly reads: readonly number[] | undefined,
  ) {}
  get output(): bigint {
    return this.outNum < 0 ? this.input : BigInt(this.outNum);
  }
  get ipa(): bigint | undefined {
    return this.ipaNum < 0 ? undefined : BigInt(this.ipaNum);
  }
  get descReads(): readonly bigint[] | undefined {
    return this.reads?.map((n) => BigInt(n));
  }
}

/**
 * Per-translation context shared by the stage walks. Reused: a finished
 * translation leaves its context in `spare` for the next one (a translation
 * started from a memory or visitor callback inside another finds none and
 * makes its own), so a translation allocates little besides its result.
 */
interface Ctx {
  mem: PhysicalMemory;
  fast: boolean;
  readonly w: Uint32Array;
  /** Nested: the stage-2 plan for table-address walks, and their reusable purpose. */
  s2Plan: StagePlan | undefined;
  readonly tablePurpose: Purpose;
  /** Nested: the reusable purpose of the stage-2 walk of the stage-1 output. */
  readonly outputPurpose: Purpose;
  /** The transaction's input address (reported in every fault). */
  input: bigint;
  privileged: boolean;
  /** WalkOptions.recordReads: descriptor PAs read so far are reads[0 .. nReads), copied into the result. */
  record: boolean;
  readonly reads: number[];
  nReads: number;
  visitor: ((step: WalkStep) => void) | undefined;
  // Result registers written by a successful walkCore.
  rOut: number;
  rLevel: number;
  rShift: number;
  rPerms: number;
  rLo: number;
  rHi: number;
  rDescAddr: number;
  rWnw: boolean;
}

/** Why a stage walk runs (for fault fields and visitor steps). One class, so the walker's loads of it stay monomorphic. */
class Purpose {
  constructor(
    readonly stage: 1 | 2,
    /** CLASS for faults of this walk. */
    public cls: FaultClass,
    /** For stage-2 walks: the IPA being translated (reported as fault.ipa). */
    public ipa: bigint | number | undefined,
    public s1Level: number | undefined,
    readonly step: "table" | "output" | "ipa" | undefined,
  ) {}
}

/** The purpose of every stage-1 walk of a transaction. */
const S1_IN = Object.freeze(new Purpose(1, "IN", undefined, undefined, undefined));

function fault(
  ctx: Ctx,
  kind: FaultKind,
  p: Purpose,
  level: number,
  access: AccessRequest["kind"],
  descAddr?: number,
  lo?: number,
  hi?: number,
  perms?: number,
  cls?: FaultClass,
): TranslationFault {
  return {
    ok: false,
    kind,
    stage: p.stage,
    level,
    input: ctx.input,
    ipa: p.ipa === undefined ? undefined : BigInt(p.ipa),
    cls: cls ?? p.cls,
    descAddr: descAddr === undefined ? undefined : BigInt(descAddr),
    desc: lo === undefined ? undefined : toBig(lo, hi ?? 0),
    s1Level: p.s1Level,
    access,
    privileged: ctx.privileged,
    perms,
  };
}

let spare: Ctx | undefined;

function makeCtx(
  mem: PhysicalMemory,
  input: bigint,
  access: AccessRequest,
  opts: WalkOptions | undefined,
  s2ForTables?: StageConfig,
): Ctx {
  const c = spare ?? blankCtx(mem);
  spare = undefined;
  c.mem = mem;
  c.fast = typeof mem.read64Split === "function";
  c.s2Plan = s2ForTables === undefined ? undefined : planOf(s2ForTables);
  c.input = input;
  c.privileged = access.privileged;
  c.record = opts?.recordReads === true;
  c.nReads = 0;
  c.visitor = opts?.visitor;
  return c;
}

/** A new context: makeCtx sets its per-translation fields. */
function blankCtx(mem: PhysicalMemory): Ctx {
  return {
    mem,
    fast: false,
    w: WORDS,
    s2Plan: undefined,
    tablePurpose: new Purpose(2, "TT", 0, 0, "table"),
    outputPurpose: new Purpose(2, "IN", 0, undefined, "output"),
    input: 0n,
    privileged: false,
    record: false,
    reads: [],
    nReads: 0,
    visitor: undefined,
    rOut: 0,
    rLevel: 0,
    rShift: 0,
    rPerms: 0,
    rLo: 0,
    rHi: 0,
    rDescAddr: 0,
    rWnw: false,
  };
}

/** End of a translation: its context becomes the spare; the result passes through. */
function done(ctx: Ctx, r: TranslationResult): TranslationResult {
  spare = ctx;
  return r;
}

/** The descriptor PAs this translation read, for its result, if recorded. */
function readsOf(ctx: Ctx): number[] | undefined {
  return ctx.record ? ctx.reads.slice(0, ctx.nReads) : undefined;
}

/** Read the descriptor at `pa` into ctx.w through read64 (a memory without read64Split); false on an abort. */
function readSlow(ctx: Ctx, pa: number): boolean {
  const r = ctx.mem.read64(BigInt(pa));
  if (!r.ok) return false;
  ctx.w[0] = Number(r.value & 0xffffffffn);
  ctx.w[1] = Number(r.value >> 32n);
  return true;
}

/**
 * Translate a stage-1 descriptor IPA through stage 2 (nested, ruling 1): the
 * PA in ctx.rOut and undefined, or a stage-2 fault with CLASS TT and the
 * descriptor IPA. (The PA goes through ctx, not the return value: a number
 * returned from a call that is not inlined is boxed when it is 2^30 or more.)
 */
function tableAddr(ctx: Ctx, ipa: number, s1Level: number, write: boolean): TranslationFault | undefined {
  const plan = ctx.s2Plan as StagePlan;
  // Stage-2 walks never nest, so one mutable purpose per translation is safe;
  // fault() copies its fields.
  const p = ctx.tablePurpose;
  p.ipa = ipa;
  p.s1Level = s1Level;
  const access = write ? WRITE_FETCH : READ_FETCH;
  if (ipa >= plan.inputLimit) return fault(ctx, "input-range", p, plan.start, access.kind);
  return walkCore(ctx, plan, ipa >>> 0, Math.floor(ipa / TWO32), access, p);
}

/**
 * Write back a hardware A/D update with compare-and-swap. Returns undefined
 * on success, RETRY if the descriptor changed under us, or a fault.
 */
function update(
  ctx: Ctx,
  p: Purpose,
  level: number,
  descPa: number,
  lo: number,
  hi: number,
  nlo: number,
  nhi: number,
  descIpa: number | undefined,
  type: DescType,
  cls: FaultClass,
): TranslationFault | typeof RETRY | undefined {
  const old = toBig(lo, hi);
  const nv = toBig(nlo, nhi);
  const r = ctx.mem.cas64(BigInt(descPa), old, nv);
  if (!r.ok) return fault(ctx, "external-abort", p, level, "write", descPa, lo, hi, undefined, cls);
  if (r.value !== old) return RETRY;
  if (ctx.visitor) {
    ctx.visitor({
      stage: p.stage,
      level,
      descAddr: BigInt(descPa),
      descIpa: descIpa === undefined ? undefined : BigInt(descIpa),
      value: old,
      type,
      updated: nv,
      purpose: p.step,
      s1Level: p.s1Level,
    });
  }
  return undefined;
}

const RETRY = 1 as const;

/** The descriptor kept changing under the A/D compare-and-swap: report the update as failed. */
function casLost(ctx: Ctx, p: Purpose, level: number, descPa: number, lo: number, hi: number, cls: FaultClass): TranslationFault {
  return fault(ctx, "external-abort", p, level, "write", descPa, lo, hi, undefined, cls);
}

/**
 * Walk one stage for the (already range-checked, masked) input va = vaHi:vaLo.
 * Stage-1 table addresses go through stage 2 when ctx.s2Plan is set and
 * p.stage === 1. On success returns undefined with the result in ctx.r*.
 * Reads only the plan, the context and the request: no StageConfig or format
 * loads, whose shapes differ between vendors and stages.
 */
function walkCore(
  ctx: Ctx,
  plan: StagePlan,
  vaLo: number,
  vaHi: number,
  access: AccessRequest,
  p: Purpose,
): TranslationFault | undefined {
  const start = plan.start;
  const stage1 = p.stage === 1;
  if (stage1 && plan.blocksPrivileged && access.privileged) {
    return fault(ctx, "request-blocked", p, start, access.kind);
  }
  // A hand-built StageConfig the builders would have refused: fault, never throw.
  if (plan.badGeometry) return fault(ctx, "translation", p, start, access.kind);
  const nested = stage1 && ctx.s2Plan !== undefined;
  // Loop invariants kept in locals (property loads per level add up over 24 levels).
  const { shifts, blockLo, granuleLo, hiMask, setTableA, oaLimit, startBits, aLo, aHi } = plan;
  const w = ctx.w;
  const probe = access.probe === true;
  const visitor = ctx.visitor;
  const record = ctx.record;
  const mem = ctx.mem;
  const fast = ctx.fast;
  // Faults of a stage-1 descriptor fetch or A/D write-back are CLASS TT.
  const fetchCls = stage1 ? "TT" : p.cls;

  for (let attempt = 0; ; attempt++) {
    let level = start;
    let table = plan.root;
    let limit = P_ALL;
    let nbits = startBits;
    let restart = false;
    for (;;) {
      const shift = shifts[level + 1] as number;
      const m = (1 << nbits) - 1;
      const idx = shift >= 32 ? (vaHi >>> (shift - 32)) & m : ((vaLo >>> shift) | (vaHi << (32 - shift))) & m;
      const descIpa = table + idx * 8;
      let descPa = descIpa;
      if (nested) {
        const t = tableAddr(ctx, descIpa, level, false);
        if (t !== undefined) return t;
        descPa = ctx.rOut;
      }
      const read = fast ? (mem.read64Split as NonNullable<PhysicalMemory["read64Split"]>)(descPa, w) === undefined : readSlow(ctx, descPa);
      // F_WALK_EABT: FetchAddr = descriptor PA.
      if (!read) return fault(ctx, "external-abort", p, level, "read", descPa, undefined, undefined, undefined, fetchCls);
      if (record) ctx.reads[ctx.nReads++] = descPa;
      const lo = w[0] as number;
      const hi = w[1] as number;
      const d = plan.decodeLevel(lo, hi, level);
      const type = (d & TYPE_MASK) as DescType;
      if (visitor) {
        visitor({
          stage: p.stage,
          level,
          descAddr: BigInt(descPa),
          descIpa: nested ? BigInt(descIpa) : undefined,
          value: toBig(lo, hi),
          type,
          purpose: p.step,
          s1Level: p.s1Level,
        });
      }
      if (type === D_INVALID) return fault(ctx, "translation", p, level, access.kind, descPa, lo, hi);
      if (type === D_RESERVED) return fault(ctx, "reserved-bit", p, level, access.kind, descPa, lo, hi);
      const loMask = type === D_BLOCK ? (blockLo[level + 1] as number) : granuleLo;
      const out = hiMask < 0 || loMask < 0 ? plan.format.outputAddressW(lo, hi, level, type) : (hi & hiMask) * TWO32 + ((lo & loMask) >>> 0);
      // Ruling 8: next-table and leaf output addresses are checked at this level.
      if (out >= oaLimit) return fault(ctx, "address-size", p, level, access.kind, descPa, lo, hi);

      if (type === D_TABLE) {
        limit &= d >>> TABLE_LIMIT_SHIFT;
        // VT-d sets A in every paging-structure entry it uses (x86 rule).
        if (setTableA && ((lo & aLo) | (hi & aHi)) === 0) {
          const nlo = (lo | aLo | plan.eaLo) >>> 0;
          const nhi = (hi | aHi) >>> 0;
          if (nested) {
            const t = tableAddr(ctx, descIpa, level, true);
            if (t !== undefined) return t;
          }
          const u = update(ctx, p, level, descPa, lo, hi, nlo, nhi, nested ? descIpa : undefined, type, fetchCls);
          if (u === RETRY) {
            if (attempt >= MAX_CAS_RETRIES) return casLost(ctx, p, level, descPa, lo, hi, fetchCls);
            restart = true;
            break;
          }
          if (u !== undefined) return u;
        }
        table = out;
        level++;
        nbits = plan.bitsPerLevel;
        if (level > 3) return fault(ctx, "translation", p, 3, access.kind, descPa, lo, hi);
        continue;
      }

      // Leaf (block or page).
      let nlo = lo;
      let nhi = hi;
      let checkedWrite = false;
      // Access flag (before permission: ruling 2).
      if (((lo & aLo) | (hi & aHi)) === 0) {
        if (plan.ha) {
          nlo = (nlo | aLo | plan.eaLo) >>> 0;
          nhi = (nhi | aHi) >>> 0;
          if (nested) {
            // Ruling 9: the AF update writes the descriptor's IPA; stage 2 must allow the write.
            const t = tableAddr(ctx, descIpa, level, true);
            if (t !== undefined) return t;
            checkedWrite = true;
          }
        } else if (plan.afFaults) {
          return fault(ctx, "access-flag", p, level, access.kind, descPa, lo, hi);
        }
      }
      let perms = plan.leafPermsUnder(lo, hi, level, limit);
      let writeNeedsWalk = false;
      if (plan.hd) {
        const dirty = dirtyUpdate(plan, access, probe, lo, hi, level, limit, perms);
        if (dirty === DIRTY_DEFERRED) writeNeedsWalk = true;
        else if (dirty !== NO_DIRTY) {
          // A write made the leaf dirty: the written descriptor's permissions apply.
          perms = dirty;
          nlo = plan.dirtiedLo(nlo);
          nhi = plan.dirtiedHi(nhi);
        }
      }
      if (!probe && !allowed(perms, access, plan.execNeedsRead)) {
        return fault(ctx, "permission", p, level, access.kind, descPa, lo, hi, perms);
      }
      if (nlo !== lo || nhi !== hi) {
        if (nested && !checkedWrite) {
          const t = tableAddr(ctx, descIpa, level, true);
          if (t !== undefined) return t;
        }
        const u = update(ctx, p, level, descPa, lo, hi, nlo, nhi, nested ? descIpa : undefined, type, fetchCls);
        if (u === RETRY) {
          if (attempt >= MAX_CAS_RETRIES) return casLost(ctx, p, level, descPa, lo, hi, fetchCls);
          restart = true;
          break;
        }
        if (u !== undefined) return u;
      }
      const pageShift = shifts[level + 1] as number;
      // Integer masks, not `%` (a slow fmod on doubles).
      const off =
        pageShift < 32
          ? (vaLo & ((1 << pageShift) - 1)) >>> 0
          : pageShift === 32
            ? vaLo
            : ((vaHi & ((1 << (pageShift - 32)) - 1)) >>> 0) * TWO32 + vaLo;
      ctx.rOut = out + off;
      ctx.rLevel = level;
      ctx.rShift = pageShift;
      ctx.rPerms = perms;
      ctx.rLo = nlo;
      ctx.rHi = nhi;
      ctx.rDescAddr = descPa;
      ctx.rWnw = writeNeedsWalk;
      return undefined;
    }
    if (!restart) return fault(ctx, "translation", p, start, access.kind); // unreachable
  }
}

const NO_DIRTY = -1;
const DIRTY_DEFERRED = -2;

/**
 * HD on a leaf: the permissions after a hardware dirty update this access
 * makes, DIRTY_DEFERRED when the leaf is writable only once dirtied but this
 * access does not write it (a later write must walk again: writeNeedsWalk),
 * or NO_DIRTY. Arm DBM: a writable-clean leaf (DBM set, write bit in its
 * read-only state) becomes writable by flipping the write bit; VT-d: a
 * writable leaf without D gets D.
 */
function dirtyUpdate(plan: StagePlan, access: AccessRequest, probe: boolean, lo: number, hi: number, level: number, limit: PermSet, perms: PermSet): PermSet | typeof NO_DIRTY | typeof DIRTY_DEFERRED {
  const wantsWrite = access.kind === "write" && !probe;
  const dirtyBit = ((lo & plan.dirtyLo) | (hi & plan.dirtyHi)) !== 0;
  if (plan.dbm) {
    const wbit = ((lo & plan.writeLo) | (hi & plan.writeHi)) !== 0;
    const clean = plan.writeBitMeansWritable ? !wbit : wbit;
    if (!clean || !dirtyBit) return NO_DIRTY;
    const dperms = plan.leafPermsUnder(plan.dirtiedLo(lo), plan.dirtiedHi(hi), level, limit);
    if ((dperms & P_W) === 0) return NO_DIRTY;
    return wantsWrite && allowed(dperms, access, plan.execNeedsRead) ? dperms : DIRTY_DEFERRED;
  }
  if ((perms & P_W) === 0 || dirtyBit) return NO_DIRTY;
  return wantsWrite && allowed(perms, access, plan.execNeedsRead) ? perms : DIRTY_DEFERRED;
}

function stageOut(ctx: Ctx, plan: StagePlan): StageOut {
  return new StageOut(
    plan,
    ctx.rLevel,
    ctx.rShift,
    ctx.rPerms,
    ctx.rWnw,
    ctx.rOut,
    ctx.rLo,
    ctx.rHi,
    ctx.rDescAddr,
  );
}

/**
 * Range-check a stage's input and split it into 32-bit halves of the masked
 * address. Returns the fault kind on failure.
 */
function splitInput(st: StageConfig, input: bigint, out: { lo: number; hi: number }): FaultKind | undefined {
  const n = Number(input);
  if (st.inputForm !== "high" && n >= 0 && n < MAX_EXACT) {
    if (n >= (POW2[st.inputForm === "low" ? st.inputBits : st.inputBits - 1] as number)) {
      return st.inputForm === "low" ? "input-range" : "non-canonical";
    }
    out.lo = n >>> 0;
    out.hi = Math.floor(n / TWO32);
    return undefined;
  }
  const ia = BigInt(st.inputBits);
  switch (st.inputForm) {
    case "low":
      if (input >> ia !== 0n) return "input-range";
      break;
    case "high":
      if (input >> ia !== (1n << (64n - ia)) - 1n) return "input-range";
      break;
    case "canonical": {
      const top = input >> (ia - 1n);
      if (top !== 0n && top !== (1n << (65n - ia)) - 1n) return "non-canonical";
      break;
    }
  }
  const va = BigInt.asUintN(st.inputBits, input);
  out.lo = Number(va & 0xffffffffn);
  out.hi = Number(va >> 32n);
  return undefined;
}

function rangeFault(ctx: Ctx, kind: FaultKind, p: Purpose, st: StageConfig, access: AccessRequest): TranslationFault {
  return fault(ctx, kind, p, st.startLevel, access.kind);
}

const split = { lo: 0, hi: 0 };

function walkSingle(ctx: Ctx, st: StageConfig, input: bigint, access: AccessRequest, p: Purpose): TranslationResult {
  const k = splitInput(st, input, split);
  if (k !== undefined) return rangeFault(ctx, k, p, st, access);
  const plan = planOf(st);
  const f = walkCore(ctx, plan, split.lo, split.hi, access, p);
  if (f !== undefined) return f;
  const s = stageOut(ctx, plan);
  return new Ok(
    ctx.input,
    s.outNum,
    -1,
    s.pageShift,
    s.level,
    s.perms,
    p.stage === 1 ? s : undefined,
    p.stage === 2 ? s : undefined,
    readsOf(ctx),
  );
}

/**
 * Walk one stage whose tables are at physical addresses (S1-only, S2-only, or
 * a guest walking its own tables in its own memory). Faults report the
 * format's stage (1 or 2) and CLASS IN.
 */
export function walkStage(
  mem: PhysicalMemory,
  stage: StageConfig,
  input: bigint,
  access: AccessRequest,
  opts?: WalkOptions,
): TranslationResult {
  const ctx = makeCtx(mem, input, access, opts);
  const stageNo = stage.format.stage;
  return done(
    ctx,
    walkSingle(ctx, stage, input, access, new Purpose(stageNo, "IN", stageNo === 2 ? input : undefined, undefined, stageNo === 2 ? "output" : undefined)),
  );
}

export interface TranslateIpaOptions extends WalkOptions {
  /** CLASS to report on failure: "CD" for a context-descriptor fetch (the SMMUv3 model), default "IN". */
  readonly cls?: FaultClass;
  /** The transaction's input address to report in faults (default: the IPA itself). */
  readonly input?: bigint;
}

/**
 * Translate an arbitrary IPA/GPA through stage 2 (the SMMUv3 model's CD and
 * L1CD fetches in nested mode: cls "CD"; VT-d nested structure fetches).
 * Faults are stage 2 with `ipa` = the IPA and the given class.
 */
export function translateIpa(
  mem: PhysicalMemory,
  s2: StageConfig,
  ipa: bigint,
  access: AccessRequest = READ_FETCH,
  opts?: TranslateIpaOptions,
): TranslationResult {
  const ctx = makeCtx(mem, opts?.input ?? ipa, access, opts);
  return done(ctx, walkSingle(ctx, s2, ipa, access, new Purpose(2, opts?.cls ?? "IN", ipa, undefined, "ipa")));
}

/**
 * Translate one transaction with a TranslationConfig: the single entry point
 * device models use. Never throws; the device model maps a fault to its own
 * event record / fault reason.
 */
export function translate(
  mem: PhysicalMemory,
  cfg: TranslationConfig,
  input: bigint,
  access: AccessRequest,
  opts?: WalkOptions,
): TranslationResult {
  switch (cfg.mode) {
    case "abort":
      return {
        ok: false,
        kind: "aborted",
        stage: 0,
        level: 0,
        input,
        cls: "IN",
        access: access.kind,
        privileged: access.privileged,
      };
    case "bypass":
      return new Ok(input, -1, -1, 12, 3, P_ALL, undefined, undefined, opts?.recordReads === true ? [] : undefined);
    case "s1": {
      const ctx = makeCtx(mem, input, access, opts);
      return done(ctx, walkSingle(ctx, cfg.s1, input, access, S1_IN));
    }
    case "s2": {
      if (cfg.s1BypassInputBits !== undefined && input >> BigInt(cfg.s1BypassInputBits) !== 0n) {
        // Stage 1 bypassed and input ≥ 2^IAS: stage-1 address-size fault (SMMUv3 §3.4, QEMU).
        return {
          ok: false,
          kind: "address-size",
          stage: 1,
          level: cfg.s2.startLevel,
          input,
          cls: "IN",
          access: access.kind,
          privileged: access.privileged,
        };
      }
      const ctx = makeCtx(mem, input, access, opts);
      return done(ctx, walkSingle(ctx, cfg.s2, input, access, new Purpose(2, "IN", input, undefined, "output")));
    }
    case "nested": {
      const ctx = makeCtx(mem, input, access, opts, cfg.s1TablesIpa !== false ? cfg.s2 : undefined);
      return done(ctx, walkNested(ctx, cfg, input, access));
    }
  }
}

/** Stage 1 (its table addresses through stage 2 unless s1TablesIpa is false), then its output through stage 2. */
function walkNested(ctx: Ctx, cfg: Extract<TranslationConfig, { mode: "nested" }>, input: bigint, access: AccessRequest): TranslationResult {
  const p1 = S1_IN;
  const k = splitInput(cfg.s1, input, split);
  if (k !== undefined) return rangeFault(ctx, k, p1, cfg.s1, access);
  const plan1 = planOf(cfg.s1);
  const f1 = walkCore(ctx, plan1, split.lo, split.hi, access, p1);
  if (f1 !== undefined) return f1;
  const s1 = stageOut(ctx, plan1);
  const ipa = ctx.rOut;
  const p2 = ctx.outputPurpose;
  p2.ipa = ipa;
  const plan2 = ctx.s2Plan ?? planOf(cfg.s2);
  if (ipa >= plan2.inputLimit) return rangeFault(ctx, "input-range", p2, cfg.s2, access);
  const f2 = walkCore(ctx, plan2, ipa >>> 0, Math.floor(ipa / TWO32), access, p2);
  if (f2 !== undefined) return f2;
  const s2 = stageOut(ctx, plan2);
  const s1Smaller = s1.pageShift <= s2.pageShift;
  return new Ok(
    input,
    s2.outNum,
    s1.outNum,
    s1Smaller ? s1.pageShift : s2.pageShift,
    s1Smaller ? s1.level : s2.level,
    s1.perms & s2.perms,
    s1,
    s2,
    readsOf(ctx),
  );
}
