// Bit-exact field access on bigint words. Every register, descriptor, queue
// entry and record layout in packages/hw is declared as a table of fields
// (name → position) and read/written only through these helpers, so layouts
// can be checked against the spec line by line.

/** A bit range [hi:lo] inside a structure made of little-endian 64-bit words. */
export interface Field {
  /** Index of the 64-bit word (qwN in the specs' notation). */
  readonly qw: number;
  readonly hi: number;
  readonly lo: number;
}

/**
 * A field made by `f` or `abs` also carries its shift and width mask as
 * bigints, so `get` and `set` (on every command, queue entry and table
 * entry) do no BigInt conversions; a plain `{ qw, hi, lo }` still works.
 */
interface PreparedField extends Field {
  readonly shift: bigint;
  readonly ones: bigint;
}

function prepared(qw: number, hi: number, lo: number): PreparedField {
  return { qw, hi, lo, shift: BigInt(lo), ones: (1n << BigInt(hi - lo + 1)) - 1n };
}

/** A field declared at absolute bit positions (abs = 64 * qw + bit). */
export function abs(hi: number, lo: number): Field {
  const qw = Math.floor(lo / 64);
  if (Math.floor(hi / 64) !== qw) throw new RangeError(`field [${hi}:${lo}] crosses a 64-bit word`);
  return prepared(qw, hi - 64 * qw, lo - 64 * qw);
}

/** A field at bits [hi:lo] of word qw. */
export function f(qw: number, hi: number, lo = hi): Field {
  if (hi < lo || lo < 0 || hi > 63) throw new RangeError(`bad field [${hi}:${lo}]`);
  return prepared(qw, hi, lo);
}

/** A table of named fields: `as const` objects typed by this. */
export type FieldTable = Readonly<Record<string, Field>>;

/** Mask of bits [hi:lo]. */
export function mask(hi: number, lo = 0): bigint {
  return ((1n << BigInt(hi - lo + 1)) - 1n) << BigInt(lo);
}

/** Bits [hi:lo] of `word`, shifted down. */
export function extract(word: bigint, hi: number, lo = hi): bigint {
  return (word >> BigInt(lo)) & ((1n << BigInt(hi - lo + 1)) - 1n);
}

/** `word` with bits [hi:lo] replaced by `value` (which must fit). */
export function deposit(word: bigint, hi: number, lo: number, value: bigint): bigint {
  const width = hi - lo + 1;
  if (value < 0n || value >> BigInt(width) !== 0n) {
    throw new RangeError(`value 0x${value.toString(16)} does not fit in [${hi}:${lo}]`);
  }
  return (word & ~mask(hi, lo)) | (value << BigInt(lo));
}

/** An address field stored in place (not shifted down): word & mask(hi, lo). */
export function addrField(word: bigint, hi: number, lo: number): bigint {
  return word & mask(hi, lo);
}

/** Read a field from a structure given as an array of 64-bit words. */
export function get(words: readonly bigint[], fld: Field): bigint {
  const w = words[fld.qw] ?? 0n;
  const { shift, ones } = fld as Partial<PreparedField>;
  return ones === undefined ? extract(w, fld.hi, fld.lo) : (w >> (shift as bigint)) & ones;
}

/** Read a field as a JS number (only for fields of at most 53 bits). */
export function getNum(words: readonly bigint[], fld: Field): number {
  return Number(get(words, fld));
}

/** Write a field into a structure given as an array of 64-bit words (in place). */
export function set(words: bigint[], fld: Field, value: bigint | number): void {
  const w = words[fld.qw] ?? 0n;
  const v = BigInt(value);
  const { shift, ones } = fld as Partial<PreparedField>;
  if (ones === undefined) words[fld.qw] = deposit(w, fld.hi, fld.lo, v);
  else {
    if (v < 0n || v > ones) throw new RangeError(`value 0x${v.toString(16)} does not fit in [${fld.hi}:${fld.lo}]`);
    words[fld.qw] = (w & ~(ones << (shift as bigint))) | (v << (shift as bigint));
  }
}

/** Build a structure of `qwords` words from named field values. */
export function pack<T extends FieldTable>(
  table: T,
  qwords: number,
  values: Partial<Record<keyof T, bigint | number>>,
): bigint[] {
  const words = new Array<bigint>(qwords).fill(0n);
  for (const [name, value] of Object.entries(values) as [keyof T & string, bigint | number | undefined][]) {
    if (value === undefined) continue;
    const fld = table[name];
    if (!fld) throw new RangeError(`unknown field ${name}`);
    // Words start at zero: a zero field is already in place.
    if (value !== 0 && value !== 0n) set(words, fld, value);
  }
  return words;
}

/** Decode every field of a table (for logs, explain output and tests). */
export function unpack<T extends FieldTable>(table: T, words: readonly bigint[]): Record<keyof T, bigint> {
  const out = {} as Record<keyof T, bigint>;
  for (const name of Object.keys(table) as (keyof T & string)[]) out[name] = get(words, table[name] as Field);
  return out;
}

const reverse = new WeakMap<object, Map<number | bigint, string>>();

/** Reverse lookup for `as const` encodings: value → name (the first name of a value), for logs and counters. */
export function nameOf<T extends Readonly<Record<string, number | bigint>>>(enc: T, value: number | bigint): string {
  let names = reverse.get(enc);
  if (!names) {
    names = new Map();
    for (const [k, v] of Object.entries(enc)) if (!names.has(v)) names.set(v, k);
    reverse.set(enc, names);
  }
  return names.get(value) ?? `0x${value.toString(16)}`;
}

/** Little-endian bytes → 64-bit words (length must be a multiple of 8). */
export function bytesToWords(bytes: Uint8Array): bigint[] {
  if (bytes.length % 8 !== 0) throw new RangeError(`length ${bytes.length} is not a multiple of 8`);
  const view = new DataView(bytes.buffer, bytes.byteOffset, bytes.byteLength);
  const words: bigint[] = [];
  for (let i = 0; i < bytes.length; i += 8) words.push(view.getBigUint64(i, true));
  return words;
}

/** 64-bit words → little-endian bytes. */
export function wordsToBytes(words: readonly bigint[]): Uint8Array {
  const bytes = new Uint8Array(words.length * 8);
  const view = new DataView(bytes.buffer);
  words.forEach((w, i) => view.setBigUint64(i * 8, BigInt.asUintN(64, w), true));
  return bytes;
}

export function hex(v: bigint | number): string {
  return `0x${v.toString(16)}`;
}
