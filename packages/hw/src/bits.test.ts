// The field helpers every layout goes through: a field made by f() / abs()
// (with its shift and mask precomputed) and a plain { qw, hi, lo } literal
// must read and write the same bits and refuse the same values.
import { describe, expect, it } from "vitest";
import { abs, bytesToWords, f, get, getNum, nameOf, pack, set, unpack, wordsToBytes } from "./bits.js";

const literal = (qw: number, hi: number, lo: number) => ({ qw, hi, lo });

describe("bit fields", () => {
  const cases = [
    [0, 7, 0],
    [0, 63, 63],
    [1, 51, 12],
    [1, 63, 0],
    [2, 31, 31],
  ] as const;

  it("a prepared field and a plain literal read and write the same bits", () => {
    const words = [0x0123_4567_89ab_cdefn, 0xfedc_ba98_7654_3210n, 0x8000_0000n];
    for (const [qw, hi, lo] of cases) {
      const p = f(qw, hi, lo);
      const l = literal(qw, hi, lo);
      expect(get(words, p)).toBe(get(words, l));
      const width = BigInt(hi - lo + 1);
      const v = ((1n << width) - 1n) & 0x5a5a_5a5a_5a5a_5a5an;
      const a = [...words];
      const b = [...words];
      set(a, p, v);
      set(b, l, v);
      expect(a).toEqual(b);
      expect(get(a, p)).toBe(v);
      // Only the field's bits changed.
      const m = ((1n << width) - 1n) << BigInt(lo);
      expect((a[qw] as bigint) & ~m).toBe((words[qw] as bigint) & ~m);
    }
  });

  it("refuses a value that does not fit, or a negative one, with either form", () => {
    for (const fld of [f(0, 11, 4), literal(0, 11, 4)]) {
      expect(() => set([0n], fld, 0x100)).toThrow(RangeError);
      expect(() => set([0n], fld, -1n)).toThrow(RangeError);
      const w = [0n];
      set(w, fld, 0xff);
      expect(w[0]).toBe(0xff0n);
    }
  });

  it("abs() places a field by absolute bit position", () => {
    const fld = abs(115, 100);
    expect(fld).toMatchObject({ qw: 1, hi: 51, lo: 36 });
    expect(() => abs(70, 60)).toThrow(/crosses/);
    const w = [0n, 0n];
    set(w, fld, 0xbeef);
    expect(w[1]).toBe(0xbeefn << 36n);
    expect(getNum(w, fld)).toBe(0xbeef);
  });

  it("pack leaves zero fields at zero, still checks the others, and refuses unknown names", () => {
    const T = { A: f(0, 3, 0), B: f(0, 7, 4), C: f(1, 63, 60) } as const;
    expect(pack(T, 2, { A: 0, B: 0n, C: 0xa })).toEqual([0n, 0xan << 60n]);
    expect(pack(T, 2, { A: 5, B: 0xf })).toEqual([0xf5n, 0n]);
    expect(() => pack(T, 2, { A: 0x10 })).toThrow(RangeError);
    expect(() => pack(T, 2, { D: 0 } as never)).toThrow(/unknown field D/);
    expect(unpack(T, pack(T, 2, { A: 1, B: 2, C: 3 }))).toEqual({ A: 1n, B: 2n, C: 3n });
  });

  it("nameOf finds the first name of a value, of number or bigint encodings, and hex for unknown values", () => {
    const OP = { NOP: 0x00, SYNC: 0x46, ALIAS: 0x46 } as const;
    expect(nameOf(OP, 0x46)).toBe("SYNC");
    expect(nameOf(OP, 0)).toBe("NOP");
    expect(nameOf(OP, 0x7f)).toBe("0x7f");
    expect(nameOf(OP, 0x46n)).toBe("0x46"); // a bigint is not the number with the same value
    expect(nameOf({ BIG: 1n << 40n } as const, 1n << 40n)).toBe("BIG");
  });

  it("words and little-endian bytes round-trip", () => {
    const words = [0x0102_0304_0506_0708n, 0xffff_ffff_ffff_ffffn];
    const bytes = wordsToBytes(words);
    expect([...bytes.slice(0, 8)]).toEqual([8, 7, 6, 5, 4, 3, 2, 1]);
    expect(bytesToWords(bytes)).toEqual(words);
    expect(() => bytesToWords(new Uint8Array(5))).toThrow(RangeError);
  });
});
