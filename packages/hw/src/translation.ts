// The translation contract: the ONE set of types shared by the page-table
// formats (format/**), the walker (walk/**), the caches (cache/**) and the
// device models (smmuv3/, vtd/, amd/). A device model decodes its own
// structures (STE/CD, context/PASID entries, DTE) into a TranslationConfig,
// calls the walker, and maps the walker's fault values to its own event
// records / fault reasons in one function of its own. Nothing in here knows
// SMMUv3 event numbers or VT-d fault reasons.
//
// How a device model uses it
//   1. Decode CD/STE (or PASID entry) fields into StageConfigs with
//      armStage1Config / armStage2Config (format/arm.ts) or
//      vtdFirstStageConfig / vtdSecondStageConfig (format/vtd.ts); an error
//      there is a bad configuration (C_BAD_CD / C_BAD_STE / 0x5A...).
//   2. Build one TranslationConfig (abort, bypass, s1, s2, nested) with tags.
//   3. Iotlb.translate(tags, iova, access) (cache/iotlb.ts); on a miss call
//      translate(mem, cfg, iova, access) (walk/walk.ts) and Iotlb.insert.
//      Nested structure fetches (CD, PASID-table in GPA space) go through
//      translateIpa(mem, s2, ipa, access, { cls: "CD" }).
//   4. Map a TranslationFault to the model's own event / fault reason in one
//      function of the model.
//
// Conventions
// - Addresses are bigint. Levels are numbers in the Arm numbering for every
//   vendor: the leaf table is level 3, its parent 2, ... (Arm 4K 48-bit starts
//   at 0; VT-d 4-level starts at 0 = PML4, 5-level at -1 = PML5; LPA2 would use
//   -1). `PageTableFormat.levelName(level)` gives the spec's own name for logs
//   ("L2", "PDE", "PML4E", "SL-PDPE"...).
// - Faults are values (`{ ok: false, ... }`), never exceptions. The walker
//   never throws on bad tables.
// - Permissions are small bitmasks (`Perm`), so the hot path does not allocate.

// ---------------------------------------------------------------------------
// Access requests

/** What a transaction does. Exec = instruction fetch (Arm InD=1, VT-d ER=1). */
export type AccessKind = "read" | "write" | "exec";

export interface AccessRequest {
  readonly kind: AccessKind;
  /**
   * Privileged request: Arm PnU=1 (PRIVCFG applied by the device model);
   * VT-d "supervisor request" (PM=1 / PRIV). Unprivileged = Arm EL0, VT-d user.
   */
  readonly privileged: boolean;
  /**
   * Probe: compute the translation and its permissions without raising a
   * permission fault and without hardware dirty updates (ATS translation
   * requests, `explain`). Translation / address-size / access-flag (unless
   * HA) / external-abort faults are still faults. Access flag updates are
   * done as for a read when HA is set.
   */
  readonly probe?: boolean;
}

export const READ: AccessRequest = { kind: "read", privileged: true };
export const WRITE: AccessRequest = { kind: "write", privileged: true };
export const EXEC: AccessRequest = { kind: "exec", privileged: true };
export const READ_USER: AccessRequest = { kind: "read", privileged: false };
export const WRITE_USER: AccessRequest = { kind: "write", privileged: false };
export const EXEC_USER: AccessRequest = { kind: "exec", privileged: false };

// ---------------------------------------------------------------------------
// Permissions

/**
 * A permission set is an OR of these bits. P* = privileged, U* = unprivileged
 * (Arm EL1/EL0; VT-d supervisor/user). Stages without a privilege split (Arm
 * stage 2, VT-d second stage) grant or refuse both together.
 */
export const Perm = {
  PR: 1,
  PW: 2,
  PX: 4,
  UR: 8,
  UW: 16,
  UX: 32,
} as const;
export type PermSet = number;

export const PERM_NONE = 0;
export const PERM_R = Perm.PR | Perm.UR;
export const PERM_W = Perm.PW | Perm.UW;
export const PERM_X = Perm.PX | Perm.UX;
export const PERM_RW = PERM_R | PERM_W;
export const PERM_ALL = PERM_R | PERM_W | PERM_X;

/** The bit of `Perm` an access needs (privileged or not). */
export function permBitFor(access: AccessRequest): number {
  const k = access.kind;
  if (access.privileged) return k === "read" ? Perm.PR : k === "write" ? Perm.PW : Perm.PX;
  return k === "read" ? Perm.UR : k === "write" ? Perm.UW : Perm.UX;
}

/**
 * Does `perms` allow `access`? `execNeedsRead` is the format's rule: Arm
 * instruction fetches need execute permission only (SMMUv3 §13.7, ruling 4);
 * VT-d execute requests are reads that also need execute permission.
 */
export function permits(perms: PermSet, access: AccessRequest, execNeedsRead = false): boolean {
  if ((perms & permBitFor(access)) === 0) return false;
  if (execNeedsRead && access.kind === "exec") {
    return (perms & (access.privileged ? Perm.PR : Perm.UR)) !== 0;
  }
  return true;
}

/** "rwx/rwx" (privileged/unprivileged) for logs and explain output. */
export function permString(p: PermSet): string {
  const c = (bit: number, ch: string) => ((p & bit) !== 0 ? ch : "-");
  return `${c(Perm.PR, "r")}${c(Perm.PW, "w")}${c(Perm.PX, "x")}/${c(Perm.UR, "r")}${c(Perm.UW, "w")}${c(Perm.UX, "x")}`;
}

// ---------------------------------------------------------------------------
// Page-table format descriptors

/** What a descriptor is at a given level (spec encodings as numbers for the hot path). */
export const Desc = {
  /** Not present / invalid / type reserved at this level → translation fault. */
  INVALID: 0,
  /** Points to the next-level table. */
  TABLE: 1,
  /** Leaf above the last level (Arm block, VT-d large/super page). */
  BLOCK: 2,
  /** Leaf at the last level. */
  PAGE: 3,
  /** Present but with reserved bits set (VT-d 0x72/0x7A) → reserved-bit fault. */
  RESERVED: 4,
} as const;
export type DescType = (typeof Desc)[keyof typeof Desc];
export const DESC_NAMES: Readonly<Record<DescType, string>> = {
  0: "invalid",
  1: "table",
  2: "block",
  3: "page",
  4: "reserved",
};

export type FormatFamily = "arm-vmsav8-64" | "vtd-first-stage" | "vtd-second-stage" | "amd-v1";

/**
 * How a format records hardware access/dirty state (Arm HTTU, VT-d A/D).
 * Masks are in place in the 64-bit descriptor.
 */
export interface HwUpdateRules {
  /** Bit set by hardware on access: Arm AF [10], VT-d FS A [5], VT-d SS A [8]. */
  readonly accessBit: bigint;
  /** Also set the access bit in table (non-leaf) entries (VT-d: yes; Arm: no). */
  readonly accessInTables: boolean;
  /** An unset access bit faults unless HA or AFFD (Arm: yes; VT-d: no). */
  readonly accessFault: boolean;
  /** Extended-accessed bit set with A when StageConfig.eafe (VT-d FS EA [10]). */
  readonly extendedAccessBit?: bigint;
  /**
   * Dirty state of a leaf.
   * - "dbm" (Arm): writable-clean = DBM [51] set and the write-permission bit in
   *   its read-only state (S1 AP[2]=1, S2 S2AP[1]=0). HD makes a write flip the
   *   write bit (S1: clear AP[2]; S2: set S2AP[1]) = dirty.
   * - "bit" (VT-d): D bit (FS [6], SS [9]) set by hardware on write.
   */
  readonly dirty:
    | { readonly style: "dbm"; readonly dbm: bigint; readonly writeBit: bigint; readonly writeBitMeansWritable: boolean }
    | { readonly style: "bit"; readonly bit: bigint };
  /** The same masks as 32-bit halves (lo = bits [31:0], hi = bits [63:32]) for the walker's hot path. */
  readonly words: HwUpdateWords;
}

export interface HwUpdateWords {
  readonly accessLo: number;
  readonly accessHi: number;
  /** "bit" style: the dirty bit; "dbm" style: the DBM bit. */
  readonly dirtyLo: number;
  readonly dirtyHi: number;
  /** "dbm" style: the write-permission bit (0 for "bit" style). */
  readonly writeLo: number;
  readonly writeHi: number;
}

/** Split a 64-bit mask into 32-bit halves. */
export function maskWords(m: bigint): { lo: number; hi: number } {
  return { lo: Number(m & 0xffffffffn), hi: Number((m >> 32n) & 0xffffffffn) };
}

/** Build HwUpdateWords from the bigint masks of a rule set. */
export function hwWords(accessBit: bigint, dirty: HwUpdateRules["dirty"]): HwUpdateWords {
  const a = maskWords(accessBit);
  const d = maskWords(dirty.style === "dbm" ? dirty.dbm : dirty.bit);
  const w = maskWords(dirty.style === "dbm" ? dirty.writeBit : 0n);
  return { accessLo: a.lo, accessHi: a.hi, dirtyLo: d.lo, dirtyHi: d.hi, writeLo: w.lo, writeHi: w.hi };
}

/** What `map` is asked to create. Attributes not named use the format's defaults (Linux's). */
export interface MapProt {
  /** Permissions wanted. Unprivileged bits are only meaningful on Arm S1 / VT-d FS. */
  readonly perms: PermSet;
  /** Arm S1 AttrIndx (MAIR index), Arm S2 MemAttr[3:0]. Default: Linux normal WB memory. */
  readonly memAttr?: number;
  /** Arm SH[1:0]; default inner-shareable (3). */
  readonly sh?: number;
  /** Arm nG (default true for S1: ASID-tagged). */
  readonly notGlobal?: boolean;
  /** Create the leaf with its access bit already set (default true; false to test HA / AF faults). */
  readonly accessed?: boolean;
  /**
   * Dirty tracking: writable leaves are created writable-clean (Arm DBM=1 with
   * the write bit read-only; VT-d D=0). Without it Arm leaves are plain
   * writable and VT-d D is left 0.
   */
  readonly dirtyTracking?: boolean;
  /** VT-d SS SNP (bit 11) / Arm ignored. */
  readonly snoop?: boolean;
}

/**
 * Descriptor bits a format function reads: bits
 * [loShift + loBits − 1 : loShift] of the low word and
 * [hiShift + hiBits − 1 : hiShift] of the high word (walk/plan.ts tabulates
 * the function over them).
 */
export interface DescBits {
  readonly loShift: number;
  readonly loBits: number;
  readonly hiShift: number;
  readonly hiBits: number;
}

/**
 * A page-table format: geometry computed once plus a few pure operations.
 * Arm VMSAv8-64 S1/S2 × 4K/16K/64K, VT-d first-stage (4/5-level) and
 * second-stage are each one instance of this interface (format/**). Formats
 * are immutable and shared; per-translation switches live in StageConfig.
 */
export interface PageTableFormat {
  /** e.g. "arm-s1-4k", "arm-s2-64k", "vtd-fs-5l", "vtd-ss". */
  readonly name: string;
  readonly family: FormatFamily;
  /** Descriptor layout of stage 1 or stage 2 (Arm S1 vs S2 attributes; VT-d FS vs SS). */
  readonly stage: 1 | 2;
  /** log2 of the translation granule: 12, 14 or 16. */
  readonly granuleShift: number;
  /** Index bits per full table (Arm: G−3; VT-d: 9). */
  readonly bitsPerLevel: number;
  /** Shallowest level this format can start at (Arm 4K/16K: 0; 64K: 1; VT-d 5-level: -1). */
  readonly minLevel: number;
  /** Smallest / largest input size in bits a StageConfig may use with this format. */
  readonly minInputBits: number;
  readonly maxInputBits: number;
  /** Largest output address size the descriptor can encode (48 for Arm without 52-bit, 52 for VT-d). */
  readonly maxOutputBits: number;
  /** VT-d: execute requests also need read permission. Arm: execute permission only (ruling 4). */
  readonly execNeedsRead: boolean;
  readonly hw: HwUpdateRules;
  /**
   * Walker hint: when every output address is the plain bit field [n:shift]
   * of the descriptor, the address bits of its high word ([n:32]) as a mask,
   * so the walker masks instead of calling outputAddressW. Undefined when the
   * layout is not a plain field (Arm 52-bit OA keeps OA[51:48] in [15:12]).
   */
  readonly addressHiMask: number | undefined;
  /** The descriptor bits decodeW reads, besides the reserved block address bits of blockReservedLo. */
  readonly decodeBits: DescBits;
  /** The descriptor bits tableLimitW reads (the walker tabulates it over them, per level). */
  readonly tableLimitBits: DescBits;
  /** The descriptor bits leafPermsW reads (likewise). */
  readonly leafPermBits: DescBits;

  /** Bit position of the lowest input bit translated by `level`: G + (3 − level)(G − 3). */
  levelShift(level: number): number;
  /** Low-word bits of a block descriptor at `level` that decode makes a reserved-bit fault (VT-d large-page address bits; Arm: none). */
  blockReservedLo(level: number): number;
  /** Is a leaf (block) allowed at this level? (ruling 7; VT-d: large-page capability). */
  blockAllowed(level: number, cfg: StageConfig): boolean;
  /** Classify a descriptor read at `level`. */
  decode(desc: bigint, level: number, cfg: StageConfig): DescType;
  /** Next-table address (TABLE) or output base (BLOCK/PAGE), in place, not shifted. */
  outputAddress(desc: bigint, level: number, type: DescType): bigint;
  /**
   * Permissions a table descriptor lets through to everything below it
   * (Arm APTable/PXNTable/UXNTable unless HAD; VT-d: the entry's own R/W,
   * U/S, XD / R, W, X, which x86-style walks AND across levels).
   */
  tableLimit(desc: bigint, level: number, cfg: StageConfig): PermSet;
  /** Permissions granted by a leaf descriptor on its own (before table limits). */
  leafPerms(desc: bigint, level: number, cfg: StageConfig): PermSet;
  /**
   * Final adjustment after table limits are applied (Arm: unprivileged-
   * writable is never privileged-executable; WXN). Identity for VT-d.
   */
  finalPerms(perms: PermSet, cfg: StageConfig): PermSet;
  /** Is this leaf global (Arm nG=0; VT-d FS G=1)? Stage-2 formats: false. */
  isGlobal(desc: bigint): boolean;

  // Hot path: the same operations on a descriptor given as 32-bit halves
  // (lo = bits [31:0], hi = bits [63:32], both unsigned) with addresses as
  // numbers (exact: output addresses are below 2^53). The bigint methods
  // above are defined by these.
  decodeW(lo: number, hi: number, level: number, cfg: StageConfig): DescType;
  outputAddressW(lo: number, hi: number, level: number, type: DescType): number;
  tableLimitW(lo: number, hi: number, level: number, cfg: StageConfig): PermSet;
  leafPermsW(lo: number, hi: number, level: number, cfg: StageConfig): PermSet;
  isGlobalW(lo: number, hi: number): boolean;

  /** Encode a table descriptor pointing to `next` (for map). */
  encodeTable(next: bigint, level: number): bigint;
  /** Encode a leaf at `level` (BLOCK above the last level, PAGE at it). */
  encodeLeaf(output: bigint, level: number, prot: MapProt): bigint;
  /** Turn a leaf descriptor's permission/attribute bits into a MapProt (for block splitting and dumps). */
  leafProt(desc: bigint, level: number): MapProt;
  /** The spec's name of a level, for logs ("L1", "PDPE", "SL-PDE"). */
  levelName(level: number): string;
}

// ---------------------------------------------------------------------------
// Stage configuration

/**
 * How the input address is range-checked before the walk.
 * - "low": bits [63:inputBits] must be 0 (Arm TTB0 / stage 2 / VT-d SS).
 * - "high": bits [63:inputBits] must be 1 (Arm TTB1).
 * - "canonical": bits [63:inputBits-1] all equal (VT-d FS, x86 canonical).
 * TBI is the device model's business: it passes an input with the top byte
 * already handled.
 */
export type InputForm = "low" | "high" | "canonical";

/** One stage of translation: a format plus where its tables are and its switches. */
export interface StageConfig {
  readonly format: PageTableFormat;
  /**
   * Start table base: Arm TTBx / S2TTB, VT-d FSPTPTR / SSPTPTR. For stage 1
   * of a nested config this is an IPA/GPA (translated through stage 2).
   * With concatenation this is the base of the whole concatenated group.
   */
  readonly root: bigint;
  /** Input address size in bits: 64 − TxSZ / 64 − S2T0SZ; VT-d 48/57 (FS) or AGAW (SS). */
  readonly inputBits: number;
  /** Output size in bits: Arm min(IPS, OAS) / min(S2PS, OAS); VT-d HAW (or SS AGAW for nested FS output). */
  readonly outputBits: number;
  /** Level the walk starts at (Arm numbering, see file header). */
  readonly startLevel: number;
  /**
   * Number of concatenated start-level tables (Arm stage 2 only, 1..16; 1
   * otherwise). The walker indexes the start level with
   * input[inputBits−1 : levelShift(startLevel)], which spans them all (ruling 6).
   */
  readonly concatenated: number;
  readonly inputForm: InputForm;

  // Per-stage switches, named after the spec field that sets them. All default false.
  /** Arm CD.AFFD / STE.S2AFFD: access flag faults disabled (AF=0 behaves as AF=1, no update). */
  readonly affd?: boolean;
  /** Hardware access-flag update: Arm CD.HA / STE.S2HA; VT-d FS: always (set true); VT-d SS: SSADE. */
  readonly ha?: boolean;
  /** Hardware dirty update: Arm CD.HD / STE.S2HD (with DBM); VT-d FS: always; VT-d SS: SSADE. */
  readonly hd?: boolean;
  /** Arm CD.HADx: hierarchical attributes (APTable, XNTable) disabled. */
  readonly had?: boolean;
  /** Arm CD.WXN: writable implies not executable. */
  readonly wxn?: boolean;
  /** Arm stage 2 FEAT_XNX: XN is the 2-bit field [54:53]. */
  readonly xnx?: boolean;
  /** VT-d PASID entry SRE: supervisor requests allowed (SRE=0 → request-blocked fault). */
  readonly sre?: boolean;
  /** VT-d WPE: supervisor writes honour R/W (else supervisor writes ignore R/W). */
  readonly wpe?: boolean;
  /** VT-d NXE: XD bit honoured. */
  readonly nxe?: boolean;
  /** VT-d EAFE: extended-accessed flag set with A. */
  readonly eafe?: boolean;
  /** VT-d SS SSEE: X bit honoured (else execute follows read). */
  readonly ssee?: boolean;
  /** VT-d FS CAP.FL1GP / SS CAP.SLLPS[1]: 1 GB pages. SS 2 MB pages: `large2M`. */
  readonly large1G?: boolean;
  /** VT-d SS CAP.SLLPS[0]: 2 MB pages (VT-d FS always has 2 MB). */
  readonly large2M?: boolean;
}

/**
 * Result of building a StageConfig from a device model's fields (format/arm.ts
 * armStage1Config / armStage2Config, format/vtd.ts vtdFirstStageConfig /
 * vtdSecondStageConfig). An error is a bad configuration (Arm C_BAD_CD /
 * C_BAD_STE, VT-d 0x5A/0x5B), not a translation fault.
 */
export type StageConfigResult = { ok: true; stage: StageConfig } | { ok: false; error: string };

// ---------------------------------------------------------------------------
// Translation configuration: the one contract between device models and the walker

/**
 * Cache tags are plain numbers, generic over vendors:
 * - s1Tag: the address-space tag of stage 1 — Arm ASID, VT-d PASID (AMD PASID).
 *   -1 for entries that have no stage 1 (S2-only).
 * - s2Tag: the domain tag — Arm VMID (also used by S1-only configs when S2 is
 *   implemented; -1 when not), VT-d DID (all PGTTs), AMD DomainID.
 */
export interface CacheTags {
  readonly s1Tag: number;
  readonly s2Tag: number;
}

export type TranslationConfig =
  /** Abort every transaction (Arm STE.Config=0b000 / V=0 handled by the model; VT-d blocked). */
  | { readonly mode: "abort"; readonly s2Tag?: number }
  /** Bypass both stages: output = input (Arm Config=0b100, VT-d PGTT=100). */
  | { readonly mode: "bypass"; readonly s2Tag?: number }
  /** Stage 1 only (Arm 0b101, VT-d PGTT=001 first-stage). */
  | ({ readonly mode: "s1"; readonly s1: StageConfig } & CacheTags)
  /**
   * Stage 2 only (Arm 0b110, VT-d PGTT=010). `s1BypassInputBits`: Arm checks
   * an input ≥ 2^IAS as a stage-1 address-size fault when stage 1 is bypassed
   * (QEMU, SMMUv3 §3.4); leave undefined for no check.
   */
  | ({ readonly mode: "s2"; readonly s2: StageConfig; readonly s1BypassInputBits?: number } & CacheTags)
  /**
   * Nested (Arm 0b111, VT-d PGTT=011): stage-1 tables (root and every
   * descriptor fetch) and the stage-1 output are IPAs/GPAs translated through
   * stage 2 (ruling 1). `s1TablesIpa` is always true for Arm/VT-d nested and
   * exists for formats where only the output is nested.
   */
  | ({
      readonly mode: "nested";
      readonly s1: StageConfig;
      readonly s2: StageConfig;
      readonly s1TablesIpa?: boolean;
    } & CacheTags);

export type TranslationMode = TranslationConfig["mode"];

// ---------------------------------------------------------------------------
// Results

/** One stage's contribution to a successful translation. */
export interface StageOutcome {
  /** Output address of this stage for the input (not just the page base). */
  readonly output: bigint;
  /** Leaf level and log2 of the leaf size. */
  readonly level: number;
  readonly pageShift: number;
  /** Effective permissions of this stage (leaf ∩ table limits, after hardware dirty update). */
  readonly perms: PermSet;
  /** Raw leaf descriptor as last seen / written. */
  readonly desc: bigint;
  /** PA of the leaf descriptor. */
  readonly descAddr: bigint;
  /** Arm nG=0 / VT-d G=1. */
  readonly global: boolean;
  /**
   * The leaf is writable but clean and HD is on: a write must walk again to
   * set dirty (caches must not satisfy writes from this entry without a walk).
   */
  readonly writeNeedsWalk: boolean;
}

export interface TranslationOk {
  readonly ok: true;
  readonly input: bigint;
  /** Final output address (PA). */
  readonly output: bigint;
  /** Intermediate address (stage-1 output) when there is a stage 1 and a stage 2. */
  readonly ipa?: bigint;
  /** log2 of the size of the combined mapping: min of the stages' leaf sizes. */
  readonly pageShift: number;
  /** Level of the smaller of the leaves (the one defining pageShift). */
  readonly level: number;
  /** Effective permissions: S1 ∩ S2 for nested; the single stage's otherwise; PERM_ALL for bypass. */
  readonly perms: PermSet;
  readonly s1?: StageOutcome;
  readonly s2?: StageOutcome;
  /**
   * PAs of every descriptor read during the walk, in order (24 for a cold 4×4
   * nested walk); present when WalkOptions.recordReads asked for it (an IOTLB
   * hit has an empty list). The walker computes this (and
   * StageOutcome.desc/descAddr) lazily in an accessor, so spreading a result
   * ({ ...r }) does not copy it: read the field explicitly.
   */
  readonly descReads?: readonly bigint[];
}

/**
 * Fault kinds, generic over vendors. Each device model maps them:
 * - translation: invalid / not-present descriptor, block at a level that
 *   cannot hold one (Arm F_TRANSLATION; VT-d 0x71 / SS not present).
 * - input-range: input outside the stage's input range (Arm F_TRANSLATION;
 *   VT-d 0x83 / nested FS table GPA beyond SS width 0x74).
 * - non-canonical: VT-d FS non-canonical input (0x80).
 * - address-size: table or leaf output address ≥ 2^outputBits (Arm
 *   F_ADDR_SIZE, ruling 8; VT-d 0x84 / reserved bits).
 * - access-flag: AF=0 without HA/AFFD (Arm F_ACCESS).
 * - permission: the stage does not grant the access (Arm F_PERMISSION;
 *   VT-d 0x81/0x82/0x85/0x86 — `perms` and `access` tell which).
 * - external-abort: memory error reading (or updating) a descriptor (Arm
 *   F_WALK_EABT with FetchAddr = descAddr; VT-d 0x70/0x73/0x78).
 * - reserved-bit: present descriptor with reserved bits (VT-d 0x72 / 0x7A).
 * - request-blocked: the stage refuses the request type before walking
 *   (VT-d SRE=0 and a supervisor request → 0x5D).
 * - aborted: TranslationConfig mode "abort".
 */
export type FaultKind =
  | "translation"
  | "input-range"
  | "non-canonical"
  | "address-size"
  | "access-flag"
  | "permission"
  | "external-abort"
  | "reserved-bit"
  | "request-blocked"
  | "aborted";

/**
 * What stage 2 was translating when it failed (Arm event CLASS, §5.3):
 * CD = a context-descriptor fetch (set by the device model via translateIpa),
 * TT = a stage-1 table/descriptor fetch or descriptor update, IN = the
 * transaction's own address (stage-1 output IPA, or S2-only input).
 * Stage-1 faults: IN, except an external abort on a stage-1 table fetch: TT.
 */
export type FaultClass = "CD" | "TT" | "IN";

export interface TranslationFault {
  readonly ok: false;
  readonly kind: FaultKind;
  /** Which stage faulted (0 only for mode "abort"). */
  readonly stage: 0 | 1 | 2;
  /** Level of the faulting stage's walk at which the fault was found (start level for range faults). */
  readonly level: number;
  /** The transaction's original input address. */
  readonly input: bigint;
  /** Stage-2 faults: the IPA stage 2 failed on (descriptor IPA for TT, output IPA for IN). */
  readonly ipa?: bigint;
  readonly cls: FaultClass;
  /**
   * PA of the descriptor being fetched / examined when the fault was found
   * (Arm FetchAddr for F_WALK_EABT). Undefined for range faults before any read.
   */
  readonly descAddr?: bigint;
  /** The descriptor value, when one was read. */
  readonly desc?: bigint;
  /** For stage-2 faults with cls TT: the stage-1 level whose descriptor was being fetched/updated. */
  readonly s1Level?: number;
  /**
   * The access the faulting stage was performing: the transaction's kind for
   * IN; "read" for a stage-1 descriptor fetch; "write" for a hardware A/D
   * update (Arm ruling 9; VT-d 0x77).
   */
  readonly access: AccessKind;
  /** Whether the transaction itself was privileged. */
  readonly privileged: boolean;
  /** For permission faults: what the faulting stage granted. */
  readonly perms?: PermSet;
}

export type TranslationResult = TranslationOk | TranslationFault;

// ---------------------------------------------------------------------------
// Walk options and the visitor hook

/** One descriptor read (or write-back) seen by the walker. */
export interface WalkStep {
  readonly stage: 1 | 2;
  readonly level: number;
  /** PA the descriptor was read from. */
  readonly descAddr: bigint;
  /** For stage-1 reads in nested mode: the IPA of the descriptor. */
  readonly descIpa?: bigint;
  readonly value: bigint;
  readonly type: DescType;
  /**
   * Why this stage-2 walk happens (nested): "table" = translating a stage-1
   * descriptor address (s1Level tells which), "output" = the final IPA,
   * "ipa" = translateIpa (e.g. CD fetch). Undefined for stage-1 steps and
   * single-stage walks.
   */
  readonly purpose?: "table" | "output" | "ipa";
  readonly s1Level?: number;
  /** Set when the walker wrote the descriptor back (A/D update): the new value. */
  readonly updated?: bigint;
}

export interface WalkOptions {
  /** Called for every descriptor read (and each A/D write-back) in walk order. */
  readonly visitor?: (step: WalkStep) => void;
  /**
   * Keep the PA of every descriptor read in TranslationOk.descReads. Off by
   * default: the list costs an allocation per walk, which the translation
   * path itself never needs (MemoryStats counts reads; the visitor sees them).
   */
  readonly recordReads?: boolean;
}
