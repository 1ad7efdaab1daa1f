// Encoders for scalable-mode structures and a small builder that lays out
// root table → context tables → PASID directory → PASID tables in physical
// memory, the way a host driver (Linux intel_pasid_setup_*) programs them.
// Used by the host driver, the walk tool and the tests.

import { pack, wordsToBytes } from "../bits.js";
import type { PageAllocator } from "../format/map.js";
import type { PhysicalMemory } from "../memory.js";
import {
  PASID_DIR_ENTRY,
  PASID_DIR_ENTRY_BYTES,
  pasidIndices,
  SM_CONTEXT_ENTRY,
  SM_CONTEXT_ENTRY_BYTES,
  SM_PASID_ENTRY,
  SM_PASID_ENTRY_BYTES,
  SM_ROOT_ENTRY,
  SM_ROOT_ENTRY_BYTES,
} from "./entries.js";

type Fields<T> = Partial<Record<keyof T, bigint | number>>;

/** Context-entry field values; PASIDDIRPTR given as an address (it is shifted here). */
export type SmContextFields = Omit<Fields<typeof SM_CONTEXT_ENTRY>, "PASIDDIRPTR"> & { PASIDDIRPTR?: bigint };
/** PASID-entry field values; SSPTPTR / FSPTPTR given as addresses. */
export type SmPasidFields = Omit<Fields<typeof SM_PASID_ENTRY>, "SSPTPTR" | "FSPTPTR"> & { SSPTPTR?: bigint; FSPTPTR?: bigint };

export function encodeSmRootEntry(v: { lctp?: bigint; uctp?: bigint }): bigint[] {
  return pack(SM_ROOT_ENTRY, 2, {
    LP: v.lctp !== undefined ? 1 : 0,
    LCTP: (v.lctp ?? 0n) >> 12n,
    UP: v.uctp !== undefined ? 1 : 0,
    UCTP: (v.uctp ?? 0n) >> 12n,
  });
}

export function encodeSmContextEntry(v: SmContextFields): bigint[] {
  const { PASIDDIRPTR, ...rest } = v;
  return pack(SM_CONTEXT_ENTRY, 4, { ...rest, PASIDDIRPTR: (PASIDDIRPTR ?? 0n) >> 12n });
}

export function encodePasidDirEntry(table: bigint, fpd = false): bigint {
  return pack(PASID_DIR_ENTRY, 1, { P: 1, FPD: fpd ? 1 : 0, SMPTBLPTR: table >> 12n })[0] as bigint;
}

export function encodeSmPasidEntry(v: SmPasidFields): bigint[] {
  const { SSPTPTR, FSPTPTR, ...rest } = v;
  return pack(SM_PASID_ENTRY, 8, { ...rest, SSPTPTR: (SSPTPTR ?? 0n) >> 12n, FSPTPTR: (FSPTPTR ?? 0n) >> 12n });
}

/**
 * Builds scalable-mode tables in memory. `rta` is the root table (pass it to
 * RTADDR with TTM = 01b). Context entries default to P = 1, PASIDE = 1,
 * PDTS = 7 (full 20-bit PASID directory) with a PASID directory allocated
 * for the device; override any field.
 */
export class VtdTableBuilder {
  readonly rta: bigint;
  private readonly ctxTables = new Map<string, bigint>();
  private readonly pasidDirs = new Map<number, bigint>();
  private readonly pasidTables = new Map<string, bigint>();
  private readonly ctxFields = new Map<number, SmContextFields>();

  constructor(
    readonly mem: PhysicalMemory,
    readonly alloc: PageAllocator,
  ) {
    this.rta = this.page(0x1000);
  }

  private page(bytes: number): bigint {
    const p = this.alloc.alloc(bytes);
    if (p === undefined) throw new RangeError("out of table memory");
    return p;
  }

  private write(addr: bigint, words: bigint[]): void {
    const r = this.mem.write(addr, wordsToBytes(words));
    if (!r.ok) throw new RangeError(`cannot write table at 0x${addr.toString(16)}`);
  }

  /** Context table for the half of `bus` that holds devfn; creates and links it on first use. */
  private contextTable(bus: number, devfn: number): bigint {
    const key = `${bus}:${devfn >= 128 ? "u" : "l"}`;
    let t = this.ctxTables.get(key);
    if (t === undefined) {
      t = this.page(0x1000);
      this.ctxTables.set(key, t);
      const lctp = this.ctxTables.get(`${bus}:l`);
      const uctp = this.ctxTables.get(`${bus}:u`);
      this.write(this.rta + BigInt(bus * SM_ROOT_ENTRY_BYTES), encodeSmRootEntry({ ...(lctp !== undefined ? { lctp } : {}), ...(uctp !== undefined ? { uctp } : {}) }));
    }
    return t;
  }

  /** Address of the context entry for `rid`. */
  contextEntryAddr(rid: number): bigint {
    const bus = (rid >> 8) & 0xff;
    const devfn = rid & 0xff;
    return this.contextTable(bus, devfn) + BigInt((devfn & 0x7f) * SM_CONTEXT_ENTRY_BYTES);
  }

  /** Program the context entry of `rid` (merged over the defaults and earlier calls). */
  setContext(rid: number, fields: SmContextFields = {}): bigint {
    let dir = this.pasidDirs.get(rid);
    if (dir === undefined && fields.PASIDDIRPTR === undefined) {
      // PDTS = 7: 2^14 directory entries × 8 B = 128 KiB = 32 pages.
      dir = this.page(0x20000);
      this.pasidDirs.set(rid, dir);
    }
    const merged: SmContextFields = { P: 1, PASIDE: 1, PDTS: 7, PASIDDIRPTR: dir, ...this.ctxFields.get(rid), ...fields };
    this.ctxFields.set(rid, merged);
    const addr = this.contextEntryAddr(rid);
    this.write(addr, encodeSmContextEntry(merged));
    return addr;
  }

  /** Address of the PASID table entry for (rid, pasid); creates the directory entry and table. */
  pasidEntryAddr(rid: number, pasid: number): bigint {
    if (!this.ctxFields.has(rid)) this.setContext(rid);
    const dir = (this.ctxFields.get(rid) as SmContextFields).PASIDDIRPTR as bigint;
    const { dir: di, table: ti } = pasidIndices(pasid);
    const key = `${rid}:${di}`;
    let t = this.pasidTables.get(key);
    if (t === undefined) {
      t = this.page(0x1000);
      this.pasidTables.set(key, t);
      const r = this.mem.write64(dir + BigInt(di * PASID_DIR_ENTRY_BYTES), encodePasidDirEntry(t));
      if (!r.ok) throw new RangeError("cannot write PASID directory entry");
    }
    return t + BigInt(ti * SM_PASID_ENTRY_BYTES);
  }

  /** Program the PASID table entry for (rid, pasid). P defaults to 1. */
  setPasidEntry(rid: number, pasid: number, fields: SmPasidFields): bigint {
    const addr = this.pasidEntryAddr(rid, pasid);
    this.write(addr, encodeSmPasidEntry({ P: 1, ...fields }));
    return addr;
  }
}
