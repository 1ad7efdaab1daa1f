// Test and tool support: a ready SMMUv3 with queues and a stream table in
// sparse memory, builders for stage-1 / stage-2 address spaces using the
// common format map functions, and streams of each kind (S1, S2, nested with
// the guest's tables in guest RAM reached through walk/views stage2View).
// Pure: no Node built-ins. Used by *.test.ts and tools/walk.ts.

import { type ArmGranuleShift, armS2Geometry, armStage1Config, armStage2Config } from "../format/arm.js";
import { type PageAllocator, SimplePageAllocator, mapRange, startTableBytes } from "../format/map.js";
import { type PhysicalMemory, SparseMemory } from "../memory.js";
import { type MapProt, PERM_RW, type PermSet, type StageConfig } from "../translation.js";
import { type CdInit, encodeCd } from "./cd.js";
import { STE_CONFIG, type SteInit, encodeSte } from "./ste.js";
import { stage2View } from "../walk/views.js";
import { type DriverLayout, SmmuDriver } from "./driver.js";
import type { EventRecord } from "./events.js";
import type { SmmuFeatures } from "./regs.js";
import { type AtcInvalidateRequest, type PriResponseMessage, SmmuV3, type StallResolution } from "./smmu.js";

/** Default physical layout of the test bed (host PAs). */
export const BED = {
  STRTAB: 0x0100_0000n,
  CMDQ: 0x0200_0000n,
  EVENTQ: 0x0210_0000n,
  PRIQ: 0x0220_0000n,
  /** Host table pool (STEs L2 arrays, CDs, S2 tables, S1 tables of non-nested streams). */
  POOL: 0x1000_0000n,
  POOL_SIZE: 0x1000_0000n,
  /** Where a guest's RAM lives in host PA space (IPA 0 → this). */
  GUEST_RAM_PA: 0x8000_0000n,
} as const;

export interface BedOptions {
  readonly features?: Partial<SmmuFeatures>;
  readonly strtabFormat?: "linear" | "2-level";
  readonly strtabLog2?: number;
  readonly eventqLog2?: number;
  readonly priqLog2?: number;
  readonly cmdqLog2?: number;
  readonly atschk?: boolean;
  readonly autoConsume?: boolean;
  readonly paBits?: number;
}

export interface Bed {
  readonly mem: SparseMemory;
  readonly alloc: SimplePageAllocator;
  readonly smmu: SmmuV3;
  readonly drv: SmmuDriver;
  readonly events: EventRecord[];
  readonly atc: AtcInvalidateRequest[];
  readonly priResponses: PriResponseMessage[];
  readonly syncs: number[];
  readonly stalls: StallResolution[];
  readonly layout: DriverLayout;
}

export function makeBed(o: BedOptions = {}): Bed {
  const mem = new SparseMemory(o.paBits ?? 48);
  const alloc = new SimplePageAllocator(mem, BED.POOL, BED.POOL_SIZE);
  const events: EventRecord[] = [];
  const atc: AtcInvalidateRequest[] = [];
  const priResponses: PriResponseMessage[] = [];
  const syncs: number[] = [];
  const stalls: StallResolution[] = [];
  const smmu = new SmmuV3({
    memory: mem,
    features: o.features,
    autoConsume: o.autoConsume,
    ports: {
      onEvent: (e) => events.push(e),
      onAtcInvalidate: (r) => atc.push(r),
      onPriResponse: (r) => priResponses.push(r),
      onSyncComplete: (s) => syncs.push(s.consumedAt),
      onStallResolved: (s) => stalls.push(s),
    },
  });
  const drv = new SmmuDriver(smmu, mem, alloc);
  const layout: DriverLayout = {
    strtab: { base: BED.STRTAB, log2size: o.strtabLog2 ?? 16, format: o.strtabFormat ?? "linear", split: 8 },
    cmdq: { base: BED.CMDQ, log2size: o.cmdqLog2 ?? 8 },
    eventq: { base: BED.EVENTQ, log2size: o.eventqLog2 ?? 6 },
    priq: { base: BED.PRIQ, log2size: o.priqLog2 ?? 6 },
    atschk: o.atschk,
  };
  drv.init(layout);
  return { mem, alloc, smmu, drv, events, atc, priResponses, syncs, stalls, layout };
}

/** A stage (1 or 2) with its tables allocated in `mem` by `alloc`, and a map helper. */
export interface Space {
  readonly stage: StageConfig;
  /** Table root as programmed (CD.TTB0 / STE.S2TTB). */
  readonly root: bigint;
  /** STE.S2SL0 (stage 2) / CD.T0SZ-derived values for programming. */
  readonly sl0: number;
  readonly tsz: number;
  readonly tg: number;
  map(iova: bigint, pa: bigint, size: bigint, perms: PermSet, prot?: Omit<MapProt, "perms">): void;
}

const TG0 = (g: ArmGranuleShift) => (g === 12 ? 0 : g === 16 ? 1 : 2);

/** A stage-2 address space of `ias` input bits, tables in host memory. */
export function makeS2(
  mem: PhysicalMemory,
  alloc: PageAllocator,
  p: { granule?: ArmGranuleShift; ias?: number; outputBits?: number; ha?: boolean; hd?: boolean } = {},
): Space {
  const g = p.granule ?? 12;
  const ias = p.ias ?? 40;
  const geo = armS2Geometry(g, ias);
  if (!geo) throw new Error("no stage-2 geometry");
  const fmtProbe = armStage2Config({ granuleShift: g, s2t0sz: 64 - ias, sl0: geo.sl0, outputBits: p.outputBits ?? 48, s2ttb: 0n });
  if (!fmtProbe.ok) throw new Error(fmtProbe.error);
  const bytes = startTableBytes(fmtProbe.stage.format, ias, geo.startLevel);
  const root = alloc.alloc(bytes);
  if (root === undefined) throw new Error("out of table memory");
  const r = armStage2Config({
    granuleShift: g,
    s2t0sz: 64 - ias,
    sl0: geo.sl0,
    outputBits: p.outputBits ?? 48,
    s2ttb: root,
    ha: p.ha,
    hd: p.hd,
  });
  if (!r.ok) throw new Error(r.error);
  const stage = r.stage;
  return {
    stage,
    root,
    sl0: geo.sl0,
    tsz: 64 - ias,
    tg: TG0(g),
    map(iova, pa, size, perms, prot = {}) {
      const m = mapRange(mem, stage, iova, pa, size, { ...prot, perms }, { alloc });
      if (!m.ok) throw new Error(`S2 map ${m.error} at 0x${m.at.toString(16)}`);
    },
  };
}

/** A stage-1 (TTB0) address space; `mem`/`alloc` are the memory the tables live in (guest RAM for nested). */
export function makeS1(
  mem: PhysicalMemory,
  alloc: PageAllocator,
  p: { granule?: ArmGranuleShift; ia?: number; outputBits?: number; ha?: boolean; hd?: boolean } = {},
): Space {
  const g = p.granule ?? 12;
  const ia = p.ia ?? 48;
  const probe = armStage1Config({ granuleShift: g, tsz: 64 - ia, outputBits: p.outputBits ?? 48, ttb: 0n });
  if (!probe.ok) throw new Error(probe.error);
  const root = alloc.alloc(startTableBytes(probe.stage.format, ia, probe.stage.startLevel));
  if (root === undefined) throw new Error("out of table memory");
  const r = armStage1Config({ granuleShift: g, tsz: 64 - ia, outputBits: p.outputBits ?? 48, ttb: root, ha: p.ha, hd: p.hd });
  if (!r.ok) throw new Error(r.error);
  const stage = r.stage;
  return {
    stage,
    root,
    sl0: 0,
    tsz: 64 - ia,
    tg: TG0(g),
    map(iova, pa, size, perms, prot = {}) {
      const m = mapRange(mem, stage, iova, pa, size, { ...prot, perms }, { alloc });
      if (!m.ok) throw new Error(`S1 map ${m.error} at 0x${m.at.toString(16)}`);
    },
  };
}

// ---------------------------------------------------------------------------
// Streams of each kind, programmed through the driver

export function s2SteFields(s2: Space, vmid: number): SteInit {
  return {
    S2VMID: vmid,
    S2T0SZ: s2.tsz,
    S2SL0: s2.sl0,
    S2TG: s2.tg,
    S2PS: 5,
    S2AA64: 1,
    S2R: 1,
    S2TTB: s2.root,
  };
}

export function cdFor(s1: Space, asid: number, extra: CdInit = {}): bigint[] {
  return encodeCd({
    V: 1,
    T0SZ: s1.tsz,
    TG0: s1.tg,
    IPS: 5,
    AA64: 1,
    R: 1,
    A: 1,
    EPD1: 1,
    ASID: asid,
    TTB0: s1.root,
    ...extra,
  });
}

/** An S1-only stream: S1 tables and the CD in host memory. */
export function s1Stream(bed: Bed, sid: number, asid: number, opts: { ste?: SteInit; cd?: CdInit; granule?: 12 | 14 | 16 } = {}) {
  const s1 = makeS1(bed.mem, bed.alloc, { granule: opts.granule ?? 12 });
  const cdAddr = bed.alloc.alloc(4096) as bigint;
  bed.drv.writeWords(cdAddr, cdFor(s1, asid, opts.cd));
  bed.drv.installSte(sid, encodeSte({ V: 1, Config: STE_CONFIG.S1_TRANS, S1ContextPtr: cdAddr, ...opts.ste }));
  return { s1, cdAddr };
}

/** An S2-only stream. */
export function s2Stream(bed: Bed, sid: number, vmid: number, opts: { ste?: SteInit; ias?: number; granule?: 12 | 14 | 16 } = {}) {
  const s2 = makeS2(bed.mem, bed.alloc, { ias: opts.ias ?? 40, granule: opts.granule ?? 12 });
  bed.drv.installSte(sid, encodeSte({ V: 1, Config: STE_CONFIG.S2_TRANS, ...s2SteFields(s2, vmid), ...opts.ste }));
  return { s2 };
}

/**
 * A nested stream: the host S2 maps guest RAM IPA [0, ramSize) to
 * BED.GUEST_RAM_PA (4 KiB pages, optionally shuffled so that contiguous IPAs
 * are non-contiguous PAs); the guest builds its S1 tables and CD table in
 * guest RAM (at IPAs), through a stage-2 view of host memory.
 */
export function nestedStream(
  bed: Bed,
  sid: number,
  vmid: number,
  asid: number,
  opts: {
    s1Granule?: 12 | 14 | 16;
    s2Granule?: 12 | 14 | 16;
    ramSize?: bigint;
    shuffle?: boolean;
    ste?: SteInit;
    cd?: CdInit;
    s1CdMax?: number;
  } = {},
) {
  const ramSize = opts.ramSize ?? 0x0100_0000n; // 16 MiB
  const s2 = makeS2(bed.mem, bed.alloc, { ias: 40, granule: opts.s2Granule ?? 12 });
  const page = 1n << BigInt(opts.s2Granule ?? 12);
  const pages = Number(ramSize / page);
  for (let i = 0; i < pages; i++) {
    // Shuffled: IPA page i → PA page (pages − 1 − i), reversing the order inside guest RAM.
    const target = opts.shuffle ? BigInt(pages - 1 - i) : BigInt(i);
    s2.map(BigInt(i) * page, BED.GUEST_RAM_PA + target * page, page, PERM_RW);
  }
  const guestMem = stage2View(bed.mem, s2.stage);
  // Guest RAM allocator: IPA [1 MiB, ramSize).
  const guestAlloc = new SimplePageAllocator(guestMem, 0x10_0000n, ramSize - 0x10_0000n);
  const s1 = makeS1(guestMem, guestAlloc, { granule: opts.s1Granule ?? 12, outputBits: 40 });
  const cdMax = opts.s1CdMax ?? 0;
  const cdTable = guestAlloc.alloc(Math.max(4096, 64 << cdMax)) as bigint;
  guestMem.write(cdTable, new Uint8Array(64)); // zero CD 0 region
  const cd = cdFor(s1, asid, { IPS: 2, ...opts.cd });
  const w = new Uint8Array(64);
  const dv = new DataView(w.buffer);
  cd.forEach((x, i) => dv.setBigUint64(i * 8, x, true));
  guestMem.write(cdTable, w);
  bed.drv.installSte(
    sid,
    encodeSte({
      V: 1,
      Config: STE_CONFIG.NESTED,
      S1ContextPtr: cdTable,
      S1CDMax: cdMax,
      MEV: 1,
      ...s2SteFields(s2, vmid),
      ...opts.ste,
    }),
  );
  return { s1, s2, guestMem, guestAlloc, cdTable };
}

/** Write a CD (8 words) at a guest or host address through a memory view. */
export function writeCd(mem: { write(a: bigint, d: Uint8Array): unknown }, addr: bigint, words: readonly bigint[]): void {
  const w = new Uint8Array(64);
  const dv = new DataView(w.buffer);
  words.forEach((x, i) => dv.setBigUint64(i * 8, x, true));
  mem.write(addr, w);
}

