// Intel VT-d paging-structure formats as PageTableFormat descriptors:
// first-stage (x86-64 IA-32e layout, 4- or 5-level) and second-stage, plus
// StageConfig builders from PASID-entry fields. Levels use the common Arm
// numbering (leaf table = 3): VT-d spec level 1 (PTE) = 3, 2 (PDE) = 2,
// 3 (PDPE) = 1, 4 (PML4E) = 0, 5 (PML5E) = -1.
// Sources: reference/hw-formats.md §2.4–2.6 (from Linux/QEMU), the Intel SDM
// IA-32e tables for the first-stage layout, and the Linux intel driver where
// the VT-d spec transcripts were not checked:
// - first-stage XD is honoured only with PASID-entry NXE=1 and is a reserved
//   bit otherwise (x86 rule; Linux's own comment on pasid_set_nxe: "required
//   when XD bit of the first level page table entry is about to be set");
// - second-stage "present" = R|W != 0 (Linux dma_pte_present).

import { mask } from "../bits.js";
import {
  Desc,
  type DescType,
  type HwUpdateRules,
  hwWords,
  type MapProt,
  PERM_R,
  PERM_W,
  PERM_X,
  Perm,
  type PageTableFormat,
  type PermSet,
  type StageConfig,
  type StageConfigResult,
} from "../translation.js";
import { addrFromWords, WordFormat } from "./common.js";

/** First-stage entry fields (bit positions). */
export const VTD_FS = {
  P: 0,
  RW: 1,
  US: 2,
  PWT: 3,
  PCD: 4,
  A: 5,
  D: 6,
  PS: 7, // PDPE/PDE; PAT in a 4 KB PTE
  G: 8,
  EA: 10,
  PAT_LARGE: 12,
  XD: 63,
} as const;

/** Second-stage entry fields (bit positions). */
export const VTD_SS = {
  R: 0,
  W: 1,
  X: 2,
  EMT_LO: 3, // EMT [5:3]
  IPAT: 6,
  PS: 7,
  A: 8,
  D: 9,
  SNP: 11,
  TM: 62,
} as const;

const B = (n: number) => 1n << BigInt(n);
const ADDR_MASK = mask(51, 12);
const FS_LEVEL_NAMES: Record<number, string> = { [-1]: "PML5E", 0: "PML4E", 1: "PDPE", 2: "PDE", 3: "PTE" };

/** VT-d spec level number (1 = PTE ... 5 = PML5E) for a common level. */
export function vtdSpecLevel(level: number): number {
  return 4 - level;
}

function levelShift(level: number): number {
  return 12 + (3 - level) * 9;
}

// Local snapshots of imported constants (keeps module-namespace getters off the hot path).
const D_INVALID = Desc.INVALID;
const D_TABLE = Desc.TABLE;
const D_BLOCK = Desc.BLOCK;
const D_PAGE = Desc.PAGE;
const D_RESERVED = Desc.RESERVED;
const P_PR = Perm.PR;
const P_PW = Perm.PW;
const P_PX = Perm.PX;
const P_UR = Perm.UR;
const P_UW = Perm.UW;
const P_UX = Perm.UX;
const P_R = PERM_R;
const P_W = PERM_W;
const P_X = PERM_X;
const FS_ACCESS = B(VTD_FS.A);
const FS_DIRTY = { style: "bit" as const, bit: B(VTD_FS.D) };
const SS_ACCESS = B(VTD_SS.A);
const SS_DIRTY = { style: "bit" as const, bit: B(VTD_SS.D) };
const HI_ADDR = 0xfffff; // address bits [51:32]
const FS_PERM_BITS = { loShift: VTD_FS.RW, loBits: 2, hiShift: VTD_FS.XD - 32, hiBits: 1 };
const SS_PERM_BITS = { loShift: VTD_SS.R, loBits: 3, hiShift: 0, hiBits: 0 };
const HI_XD = 0x80000000; // bit 63
const PS_BIT = 1 << VTD_FS.PS; // = VTD_SS.PS

/**
 * What the VT-d first- and second-stage formats share: 4 KiB tables of 512
 * entries, 4 or 5 levels (3 for a 39-bit second stage), 52-bit addresses in
 * bits [51:12], PS [7] marking a large page, execute needing read, and no
 * permission adjustment after the walk.
 */
abstract class VtdFormat extends WordFormat {
  readonly granuleShift = 12;
  readonly bitsPerLevel = 9;
  readonly minLevel = -1;
  readonly maxInputBits = 57;
  readonly maxOutputBits = 52;
  readonly execNeedsRead = true;
  readonly addressHiMask = HI_ADDR;
  /** Lowest large-page address bit that is reserved (bits below it are attributes). */
  protected abstract readonly reservedFrom: number;

  abstract blockAllowed(level: number, cfg: StageConfig): boolean;

  levelShift(level: number): number {
    return levelShift(level);
  }

  /** Large-page address bits [shift-1:reservedFrom] are reserved. */
  blockReservedLo(level: number): number {
    const shift = levelShift(level);
    return shift >= 32 ? 0 : ((1 << shift) - 1) & ~((1 << this.reservedFrom) - 1);
  }

  /** The type of a present entry: a page at the last level, else PS [7] picks a large page (if allowed, without reserved bits) or a table. */
  protected presentType(lo: number, level: number, cfg: StageConfig): DescType {
    if (level === 3) return D_PAGE;
    if ((lo & PS_BIT) === 0) return D_TABLE;
    if (!this.blockAllowed(level, cfg) || (lo & this.blockReservedLo(level)) !== 0) return D_RESERVED;
    return D_BLOCK;
  }

  outputAddressW(lo: number, hi: number, level: number, type: DescType): number {
    return addrFromWords(lo, hi, type === D_BLOCK ? levelShift(level) : 12, HI_ADDR);
  }

  finalPerms(perms: PermSet): PermSet {
    return perms;
  }
}

class VtdFirstStage extends VtdFormat implements PageTableFormat {
  readonly name = "vtd-fs";
  readonly family = "vtd-first-stage" as const;
  readonly stage = 1 as const;
  readonly minInputBits = 48;
  /** Bit 12 of a large page is PAT. */
  protected readonly reservedFrom = 13;
  /** P [0] … PS [7]; XD [63]. */
  readonly decodeBits = { loShift: 0, loBits: 8, hiShift: VTD_FS.XD - 32, hiBits: 1 };
  /** R/W [1], U/S [2]; XD [63]. */
  readonly tableLimitBits = FS_PERM_BITS;
  readonly leafPermBits = FS_PERM_BITS;
  readonly hw: HwUpdateRules = {
    accessBit: FS_ACCESS,
    accessInTables: true,
    accessFault: false,
    extendedAccessBit: B(VTD_FS.EA),
    dirty: FS_DIRTY,
    words: hwWords(FS_ACCESS, FS_DIRTY),
  };

  /** 2 MB pages always; 1 GB pages with CAP.FL1GP (StageConfig.large1G). */
  blockAllowed(level: number, cfg: StageConfig): boolean {
    return level === 2 || (level === 1 && cfg.large1G === true);
  }

  decodeW(lo: number, hi: number, level: number, cfg: StageConfig): DescType {
    if ((lo & 1) === 0) return D_INVALID;
    if (!cfg.nxe && (hi & HI_XD) !== 0) return D_RESERVED; // XD is reserved unless NXE
    return this.presentType(lo, level, cfg);
  }

  /** Every level's R/W, U/S and XD restrict what lies below (x86 rule: AND over the walk). */
  tableLimitW(lo: number, hi: number, _level: number, cfg: StageConfig): PermSet {
    return fsPerms(lo, hi, cfg);
  }

  leafPermsW(lo: number, hi: number, _level: number, cfg: StageConfig): PermSet {
    return fsPerms(lo, hi, cfg);
  }

  isGlobalW(lo: number): boolean {
    return (lo & (1 << VTD_FS.G)) !== 0;
  }

  /** Linux intel driver: non-leaf entries P|R/W|U/S|A. */
  encodeTable(next: bigint): bigint {
    return (next & ADDR_MASK) | B(VTD_FS.P) | B(VTD_FS.RW) | B(VTD_FS.US) | B(VTD_FS.A);
  }

  /** Linux: P | R/W (if writable) | U/S | A | D (if writable, unless dirty tracking) | PS for large pages. XD never set. */
  encodeLeaf(output: bigint, level: number, prot: MapProt): bigint {
    let d = (output & ADDR_MASK) | B(VTD_FS.P);
    if (prot.perms & P_W) d |= B(VTD_FS.RW);
    if (prot.perms & (P_UR | P_UW | P_UX)) d |= B(VTD_FS.US);
    if (prot.accessed !== false) d |= B(VTD_FS.A);
    if (prot.perms & P_W && prot.dirtyTracking !== true) d |= B(VTD_FS.D);
    if (level < 3) d |= B(VTD_FS.PS);
    return d;
  }

  leafProt(desc: bigint): MapProt {
    const rw = (desc & B(VTD_FS.RW)) !== 0n;
    const us = (desc & B(VTD_FS.US)) !== 0n;
    let perms: number = P_PR | P_PX | (rw ? P_PW : 0);
    if (us) perms |= P_UR | P_UX | (rw ? P_UW : 0);
    return {
      perms,
      accessed: (desc & B(VTD_FS.A)) !== 0n,
      dirtyTracking: rw && (desc & B(VTD_FS.D)) === 0n,
    };
  }

  levelName(level: number): string {
    return FS_LEVEL_NAMES[level] ?? `L${level}`;
  }
}

function fsPerms(lo: number, hi: number, cfg: StageConfig): PermSet {
  const rw = (lo & (1 << VTD_FS.RW)) !== 0;
  const xd = cfg.nxe === true && (hi & HI_XD) !== 0;
  // Supervisor writes ignore R/W unless WPE (x86 CR0.WP analogue).
  let p: number = P_PR | (rw || !cfg.wpe ? P_PW : 0) | (xd ? 0 : P_PX);
  if (lo & (1 << VTD_FS.US)) p |= P_UR | (rw ? P_UW : 0) | (xd ? 0 : P_UX);
  return p;
}

class VtdSecondStage extends VtdFormat implements PageTableFormat {
  readonly name = "vtd-ss";
  readonly family = "vtd-second-stage" as const;
  readonly stage = 2 as const;
  readonly minInputBits = 39;
  protected readonly reservedFrom = 12;
  /** R [0] … PS [7]. */
  readonly decodeBits = { loShift: 0, loBits: 8, hiShift: 0, hiBits: 0 };
  /** R [0], W [1], X [2]. */
  readonly tableLimitBits = SS_PERM_BITS;
  readonly leafPermBits = SS_PERM_BITS;
  readonly hw: HwUpdateRules = {
    accessBit: SS_ACCESS,
    accessInTables: true,
    accessFault: false,
    dirty: SS_DIRTY,
    words: hwWords(SS_ACCESS, SS_DIRTY),
  };

  /** Superpages per CAP.SLLPS: 2 MB (large2M), 1 GB (large1G). */
  blockAllowed(level: number, cfg: StageConfig): boolean {
    return (level === 2 && cfg.large2M === true) || (level === 1 && cfg.large1G === true);
  }

  decodeW(lo: number, _hi: number, level: number, cfg: StageConfig): DescType {
    if ((lo & 3) === 0) return D_INVALID; // present = R|W (Linux dma_pte_present)
    return this.presentType(lo, level, cfg);
  }

  tableLimitW(lo: number, _hi: number, _level: number, cfg: StageConfig): PermSet {
    return ssPerms(lo, cfg);
  }

  leafPermsW(lo: number, _hi: number, _level: number, cfg: StageConfig): PermSet {
    return ssPerms(lo, cfg);
  }

  isGlobalW(): boolean {
    return false;
  }

  /** Linux: non-leaf entries R|W. */
  encodeTable(next: bigint): bigint {
    return (next & ADDR_MASK) | B(VTD_SS.R) | B(VTD_SS.W);
  }

  encodeLeaf(output: bigint, level: number, prot: MapProt): bigint {
    let d = output & ADDR_MASK;
    if (prot.perms & P_R) d |= B(VTD_SS.R);
    if (prot.perms & P_W) d |= B(VTD_SS.W);
    if (prot.perms & P_X) d |= B(VTD_SS.X);
    if (prot.snoop) d |= B(VTD_SS.SNP);
    if (level < 3) d |= B(VTD_SS.PS);
    return d;
  }

  leafProt(desc: bigint): MapProt {
    let perms = 0;
    if (desc & B(VTD_SS.R)) perms |= P_R;
    if (desc & B(VTD_SS.W)) perms |= P_W;
    if (desc & B(VTD_SS.X)) perms |= P_X;
    return { perms, snoop: (desc & B(VTD_SS.SNP)) !== 0n, accessed: (desc & B(VTD_SS.A)) !== 0n };
  }

  levelName(level: number): string {
    return `SL-${FS_LEVEL_NAMES[level] ?? `L${level}`}`;
  }
}

function ssPerms(lo: number, cfg: StageConfig): PermSet {
  const r = (lo & 1) !== 0;
  let p = 0;
  if (r) p |= P_R;
  if (lo & 2) p |= P_W;
  if (cfg.ssee ? (lo & 4) !== 0 : r) p |= P_X;
  return p;
}

/** The VT-d first-stage format (one instance; 4 vs 5 levels is StageConfig.startLevel). */
export const VTD_FIRST_STAGE: PageTableFormat = new VtdFirstStage();
/** The VT-d second-stage format (levels from AW in StageConfig). */
export const VTD_SECOND_STAGE: PageTableFormat = new VtdSecondStage();

export interface VtdFirstStageParams {
  /** FSPM: 4 (48-bit) or 5 (57-bit) levels. */
  readonly levels: 4 | 5;
  /** FSPTPTR (a GPA when nested). */
  readonly fsptptr: bigint;
  /** Host address width (output size) in bits; for nested, the SS input width bounds the GPA anyway. */
  readonly haw: number;
  readonly sre?: boolean;
  readonly wpe?: boolean;
  readonly nxe?: boolean;
  readonly eafe?: boolean;
  /** CAP.FL1GP: 1 GB pages. */
  readonly large1G?: boolean;
}

/** First-stage StageConfig. First-stage A/D are always maintained by hardware (ha = hd = true). */
export function vtdFirstStageConfig(p: VtdFirstStageParams): StageConfigResult {
  if (p.levels !== 4 && p.levels !== 5) return { ok: false, error: `FSPM levels ${p.levels} invalid` };
  if (p.haw < 32 || p.haw > 52) return { ok: false, error: `HAW ${p.haw} invalid` };
  if (p.fsptptr >> 52n !== 0n) return { ok: false, error: "FSPTPTR beyond 52 bits" };
  return {
    ok: true,
    stage: {
      format: VTD_FIRST_STAGE,
      root: p.fsptptr & ADDR_MASK,
      inputBits: p.levels === 5 ? 57 : 48,
      outputBits: p.haw,
      startLevel: p.levels === 5 ? -1 : 0,
      concatenated: 1,
      inputForm: "canonical",
      ha: true,
      hd: true,
      sre: p.sre === true,
      wpe: p.wpe === true,
      nxe: p.nxe === true,
      eafe: p.eafe === true,
      large1G: p.large1G === true,
    },
  };
}

export interface VtdSecondStageParams {
  /** PASID-entry AW (AGAW): 1 = 39-bit/3-level, 2 = 48-bit/4-level, 3 = 57-bit/5-level. */
  readonly aw: number;
  readonly ssptptr: bigint;
  /** Host address width in bits (output size). */
  readonly haw: number;
  /** SSADE: second-stage A/D enable. */
  readonly ssade?: boolean;
  /** SSEE: execute permission from the X bit. */
  readonly ssee?: boolean;
  /** CAP.SLLPS bit 0 (2 MB) and bit 1 (1 GB). */
  readonly large2M?: boolean;
  readonly large1G?: boolean;
}

export function vtdSecondStageConfig(p: VtdSecondStageParams): StageConfigResult {
  if (p.aw < 1 || p.aw > 3) return { ok: false, error: `AW ${p.aw} invalid` };
  if (p.haw < 32 || p.haw > 52) return { ok: false, error: `HAW ${p.haw} invalid` };
  if (p.ssptptr >> BigInt(p.haw) !== 0n) return { ok: false, error: "SSPTPTR beyond HAW" };
  return {
    ok: true,
    stage: {
      format: VTD_SECOND_STAGE,
      root: p.ssptptr & ADDR_MASK,
      inputBits: 30 + 9 * p.aw,
      outputBits: p.haw,
      startLevel: 2 - p.aw,
      concatenated: 1,
      inputForm: "low",
      ha: p.ssade === true,
      hd: p.ssade === true,
      ssee: p.ssee === true,
      large2M: p.large2M === true,
      large1G: p.large1G === true,
    },
  };
}
