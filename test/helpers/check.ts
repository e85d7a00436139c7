// Poll for a condition with a deadline instead of sleeping.
export async function check<T>(
  fn: () => T | undefined | false | null | Promise<T | undefined | false | null>,
  timeoutMs = 10_000,
  what = 'condition',
): Promise<T> {
  const deadline = Date.now() + timeoutMs;
  let last: unknown;
  for (;;) {
    try {
      const v = await fn();
      if (v) return v;
    } catch (err) {
      last = err;
    }
    if (Date.now() > deadline) {
      throw new Error(
        `timed out after ${timeoutMs} ms waiting for ${what}${last ? `: ${(last as Error).message}` : ''}`,
      );
    }
    await new Promise((r) => setTimeout(r, 25));
  }
}

/** A small seeded PRNG (mulberry32) for reproducible randomized tests; the drills' own. */
export { seededRandom } from '../../runtime/drill.js';

export function testSeed(): number {
  const s = process.env.PARTITA_TEST_SEED
    ? Number(process.env.PARTITA_TEST_SEED)
    : Math.floor(Math.random() * 2 ** 31);
  return s;
}
