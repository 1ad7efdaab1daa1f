// A small seeded PRNG (SplitMix64) for workload offsets and data patterns:
// the same seed gives the same sequence in any process, so a VERIFY run can
// be reproduced and a pattern regenerated for comparison.

const MASK = (1n << 64n) - 1n;

export class SplitMix64 {
  private state: bigint;

  constructor(seed: bigint) {
    this.state = seed & MASK;
  }

  nextU64(): bigint {
    this.state = (this.state + 0x9e3779b97f4a7c15n) & MASK;
    let z = this.state;
    z = ((z ^ (z >> 30n)) * 0xbf58476d1ce4e5b9n) & MASK;
    z = ((z ^ (z >> 27n)) * 0x94d049bb133111ebn) & MASK;
    return z ^ (z >> 31n);
  }

  /** Uniform in [0, n) for n ≤ 2^53. */
  below(n: number): number {
    return Number(this.nextU64() % BigInt(n));
  }

  /** Fill with pseudo-random bytes. */
  fill(buf: Uint8Array): Uint8Array {
    let i = 0;
    while (i < buf.length) {
      let v = this.nextU64();
      for (let k = 0; k < 8 && i < buf.length; k++, i++) {
        buf[i] = Number(v & 0xffn);
        v >>= 8n;
      }
    }
    return buf;
  }
}

/** A random 64-bit seed (for seed = 0, "random"). */
export function randomSeed(): bigint {
  const hi = BigInt(Math.floor(Math.random() * 2 ** 32));
  const lo = BigInt(Math.floor(Math.random() * 2 ** 32));
  return ((hi << 32n) | lo) || 1n;
}

function mix32(x: number): number {
  let v = Math.imul(x ^ (x >>> 16), 0x7feb352d);
  v = Math.imul(v ^ (v >>> 15), 0x846ca68b);
  return (v ^ (v >>> 16)) >>> 0;
}

/**
 * A slice of the seeded pattern at byte `offset`, computed without state so
 * a reader can regenerate any slice (VERIFY): each 4-byte word is a hash of
 * (seed, word index), so data written to the wrong place never matches.
 */
export function patternSlice(seed: bigint, offset: number, length: number): Uint8Array {
  const out = new Uint8Array(length);
  const lo = Number(seed & 0xffffffffn) | 0;
  const hi = Number((seed >> 32n) & 0xffffffffn) | 0;
  let i = 0;
  while (i < length) {
    const pos = offset + i;
    const w = Math.floor(pos / 4);
    const v = mix32(mix32((w ^ lo) >>> 0) ^ hi ^ Math.floor(w / 2 ** 32));
    for (let b = pos % 4; b < 4 && i < length; b++, i++) out[i] = (v >>> (8 * b)) & 0xff;
  }
  return out;
}
