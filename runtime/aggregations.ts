// The built-in window aggregations and the custom-reducer contract. Every accumulator is plain
// JSON data (it lives in actor state, goes through LMDB and the state bucket) and every
// aggregation can merge two accumulators (session windows merge when an event bridges them).
import { hash32 } from './hash.js';
import type { AggregationSpec, Reducer } from './types.js';

/** A compiled aggregation: pure functions over a JSON accumulator. */
export interface Aggregation {
  readonly name: string;
  init(): unknown;
  add(acc: unknown, value: unknown): unknown;
  merge(a: unknown, b: unknown): unknown;
  result(acc: unknown): unknown;
}

const num = (v: unknown): number => (typeof v === 'number' ? v : Number(v));

const count: Omit<Aggregation, 'name'> = {
  init: () => 0,
  add: (acc) => (acc as number) + 1,
  merge: (a, b) => (a as number) + (b as number),
  result: (acc) => acc,
};

const sum: Omit<Aggregation, 'name'> = {
  init: () => 0,
  add: (acc, v) => {
    const x = num(v);
    return Number.isFinite(x) ? (acc as number) + x : acc;
  },
  merge: (a, b) => (a as number) + (b as number),
  result: (acc) => acc,
};

function extreme(pick: (a: number, b: number) => number): Omit<Aggregation, 'name'> {
  return {
    init: () => null,
    add: (acc, v) => {
      const x = num(v);
      if (!Number.isFinite(x)) return acc;
      return acc === null ? x : pick(acc as number, x);
    },
    merge: (a, b) => (a === null ? b : b === null ? a : pick(a as number, b as number)),
    result: (acc) => acc,
  };
}

const mean: Omit<Aggregation, 'name'> = {
  init: () => [0, 0],
  add: (acc, v) => {
    const x = num(v);
    const [n, s] = acc as [number, number];
    return Number.isFinite(x) ? [n + 1, s + x] : acc;
  },
  merge: (a, b) => {
    const [n1, s1] = a as [number, number];
    const [n2, s2] = b as [number, number];
    return [n1 + n2, s1 + s2];
  },
  result: (acc) => {
    const [n, s] = acc as [number, number];
    return n === 0 ? null : s / n;
  },
};

// --- HyperLogLog: approximate distinct count -------------------------------------------------
// 2^10 registers (standard error 1.04/√1024 ≈ 3.3%). Sparse ({index: rank}) while few registers are
// set, so a window of a handful of values stays small in state; dense (an array) after that.

const HLL_P = 10;
const HLL_M = 1 << HLL_P;
const SPARSE_MAX = 96;

type Hll = Record<string, number> | number[];

function hllSet(acc: Hll, idx: number, rank: number): Hll {
  if (Array.isArray(acc)) {
    if (rank > acc[idx]!) acc[idx] = rank;
    return acc;
  }
  const k = String(idx);
  if ((acc[k] ?? 0) >= rank) return acc;
  acc[k] = rank;
  if (Object.keys(acc).length <= SPARSE_MAX) return acc;
  const dense = new Array<number>(HLL_M).fill(0);
  for (const [i, r] of Object.entries(acc)) dense[Number(i)] = r;
  return dense;
}

const distinct: Omit<Aggregation, 'name'> = {
  init: () => ({}),
  add: (acc, v) => {
    if (v === undefined || v === null) return acc;
    const h = hash32(typeof v === 'string' ? v : JSON.stringify(v));
    const idx = h >>> (32 - HLL_P);
    const rest = (h << HLL_P) >>> 0;
    const rank = rest === 0 ? 32 - HLL_P + 1 : Math.clz32(rest) + 1;
    return hllSet(acc as Hll, idx, rank);
  },
  merge: (a, b) => {
    let out: Hll = Array.isArray(a) ? [...a] : { ...(a as Record<string, number>) };
    const entries = Array.isArray(b) ? b.map((r, i) => [i, r] as const) : Object.entries(b as object);
    for (const [i, r] of entries) if ((r as number) > 0) out = hllSet(out, Number(i), r as number);
    return out;
  },
  result: (acc) => {
    const regs = acc as Hll;
    let zeros = HLL_M;
    let z = 0;
    const values = Array.isArray(regs) ? regs : Object.values(regs);
    for (const r of values) {
      if (r > 0) zeros--;
      z += 2 ** -r;
    }
    z += zeros; // unset registers count 2^0 each
    const alpha = 0.7213 / (1 + 1.079 / HLL_M);
    const estimate = (alpha * HLL_M * HLL_M) / z;
    // Small ranges: linear counting is far more accurate while registers are still empty.
    if (estimate <= 2.5 * HLL_M && zeros > 0) return Math.round(HLL_M * Math.log(HLL_M / zeros));
    return Math.round(estimate);
  },
};

// --- Percentiles: a DDSketch-style log histogram ----------------------------------------------
// Buckets of relative width 2α: any quantile comes back within α (1%) of the true value of the
// element at that rank. Deterministic, mergeable by adding counts, and small: a bucket per 2% of
// value range actually used.

export const PERCENTILE_ALPHA = 0.01;
const GAMMA = (1 + PERCENTILE_ALPHA) / (1 - PERCENTILE_ALPHA);
const LOG_GAMMA = Math.log(GAMMA);

/** {n: count, z: zeros, p: {bucket: count} for positives, m: same for negatives' magnitudes} */
interface Sketch {
  n: number;
  z: number;
  p: Record<string, number>;
  m: Record<string, number>;
}

const bucketOf = (x: number) => Math.ceil(Math.log(x) / LOG_GAMMA);
const bucketValue = (i: number) => (2 * GAMMA ** i) / (GAMMA + 1);

function percentile(q: number): Omit<Aggregation, 'name'> {
  return {
    init: (): Sketch => ({ n: 0, z: 0, p: {}, m: {} }),
    add: (acc, v) => {
      const x = num(v);
      if (!Number.isFinite(x)) return acc;
      const s = acc as Sketch;
      s.n++;
      if (x === 0) s.z++;
      else {
        const store = x > 0 ? s.p : s.m;
        const k = String(bucketOf(Math.abs(x)));
        store[k] = (store[k] ?? 0) + 1;
      }
      return s;
    },
    merge: (a, b) => {
      const x = a as Sketch;
      const y = b as Sketch;
      const out: Sketch = { n: x.n + y.n, z: x.z + y.z, p: { ...x.p }, m: { ...x.m } };
      for (const [k, c] of Object.entries(y.p)) out.p[k] = (out.p[k] ?? 0) + c;
      for (const [k, c] of Object.entries(y.m)) out.m[k] = (out.m[k] ?? 0) + c;
      return out;
    },
    result: (acc) => sketchQuantile(acc as Sketch, q),
  };
}

/** The value of the element of rank ⌊q·(n−1)⌋ (0-based, ascending), within α relative error. */
function sketchQuantile(s: Sketch, q: number): number | null {
  if (s.n === 0) return null;
  const rank = Math.floor(q * (s.n - 1));
  let seen = 0;
  // Ascending: negatives by decreasing magnitude, zeros, positives by increasing value.
  const neg = Object.entries(s.m)
    .map(([k, c]) => [Number(k), c] as const)
    .sort((a, b) => b[0] - a[0]);
  for (const [i, c] of neg) {
    seen += c;
    if (seen > rank) return -bucketValue(i);
  }
  seen += s.z;
  if (seen > rank) return 0;
  const pos = Object.entries(s.p)
    .map(([k, c]) => [Number(k), c] as const)
    .sort((a, b) => a[0] - b[0]);
  for (const [i, c] of pos) {
    seen += c;
    if (seen > rank) return bucketValue(i);
  }
  return bucketValue(pos[pos.length - 1]![0]);
}

const PERCENTILE_NAME = /^p(\d{1,2}(\.\d+)?)$/;

/** Compiles an aggregation spec; throws a plain Error on an unknown one (the loader wraps it). */
export function compileAggregation(name: string, spec: AggregationSpec): Aggregation {
  if (typeof spec === 'object' && spec !== null) {
    if ('percentile' in spec) {
      const q = spec.percentile;
      if (!(q >= 0 && q <= 1)) throw new Error(`aggregation "${name}": percentile must be in [0, 1]`);
      return { name, ...percentile(q) };
    }
    return fromReducer(name, spec as Reducer);
  }
  switch (spec) {
    case 'count':
      return { name, ...count };
    case 'sum':
      return { name, ...sum };
    case 'min':
      return { name, ...extreme(Math.min) };
    case 'max':
      return { name, ...extreme(Math.max) };
    case 'mean':
      return { name, ...mean };
    case 'distinct':
      return { name, ...distinct };
  }
  const m = PERCENTILE_NAME.exec(String(spec));
  if (m) return { name, ...percentile(Number(m[1]) / 100) };
  throw new Error(
    `aggregation "${name}": unknown "${String(spec)}" (count, sum, min, max, mean, distinct, p50, p95, p99, {percentile}, or a reducer)`,
  );
}

function fromReducer(name: string, r: Reducer): Aggregation {
  if (typeof r.init !== 'function' || typeof r.add !== 'function')
    throw new Error(`aggregation "${name}": a reducer needs init() and add(acc, value)`);
  return {
    name,
    init: () => r.init(),
    add: (acc, v) => r.add(acc, v),
    merge: (a, b) => {
      if (!r.merge) throw new Error(`aggregation "${name}": session windows need the reducer's merge(a, b)`);
      return r.merge(a, b);
    },
    result: (acc) => (r.result ? r.result(acc) : acc),
  };
}
