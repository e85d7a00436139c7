// Ad-tech: impressions and clicks per campaign, with the click-through rate, rolled up at 1m, 5m
// and 1h of event time, and an anomaly flag when a minute's CTR or volume leaves its usual range.
// `events.impressions.<campaign>` `{ cost?, ts }` and `events.clicks.<campaign>` `{ ts }`.
import { defineActor, type Reducer, type WindowResult } from '../runtime/types.js';

interface Traffic {
  impressions: number;
  clicks: number;
  ctr: number;
}

interface Campaign {
  impressions: number;
  clicks: number;
  ctr: number;
  spend: number;
  /** Exponentially weighted mean and variance of the 1-minute CTR and impressions. */
  baseline: { ctr: number; ctrVar: number; impressions: number; minutes: number };
  anomaly: { at: number; reason: string; ctr: number; impressions: number } | null;
  anomalies: number;
}

/** Impressions and clicks of a window, with their CTR. */
const traffic: Reducer<[number, number], Traffic> = {
  init: () => [0, 0],
  add: (acc, type) => (type === 'clicks' ? [acc[0], acc[1] + 1] : [acc[0] + 1, acc[1]]),
  merge: (a, b) => [a[0] + b[0], a[1] + b[1]],
  result: ([impressions, clicks]) => ({
    impressions,
    clicks,
    ctr: impressions > 0 ? clicks / impressions : 0,
  }),
};

const ALPHA = 0.2;
/** Minutes of history before a minute can be called anomalous. */
const WARMUP = 5;

export default defineActor<Campaign, { cost?: number }>({
  name: 'campaign',
  events: ['impressions', 'clicks'],
  guarantee: 'at-least-once',
  watermark: { maxOutOfOrder: '2s' },
  rollups: {
    traffic: {
      value: (e) => e.type,
      aggregate: { traffic },
      every: ['1m', '5m', '1h'],
      allowedLateness: '10s',
      keep: 15,
    },
    spend: {
      value: (e) => (e.type === 'impressions' ? Number(e.data.cost ?? 0) : undefined),
      aggregate: { sum: 'sum', p95: 'p95' },
      every: ['1m', '1h'],
      keep: 5,
    },
  },
  initial: () => ({
    impressions: 0,
    clicks: 0,
    ctr: 0,
    spend: 0,
    baseline: { ctr: 0, ctrVar: 0, impressions: 0, minutes: 0 },
    anomaly: null,
    anomalies: 0,
  }),
  handle(state, event) {
    if (event.type === 'impressions') {
      state.impressions += 1;
      state.spend = Math.round((state.spend + Number(event.data.cost ?? 0)) * 1e6) / 1e6;
    } else {
      state.clicks += 1;
    }
    state.ctr = state.impressions > 0 ? state.clicks / state.impressions : 0;
    return state;
  },
  onWindow(state, result: WindowResult) {
    // Judge each closed minute once, against the baseline of the minutes before it.
    if (result.window !== 'traffic@1m' || result.update > 0) return state;
    const t = result.value.traffic as Traffic;
    const b = state.baseline;
    if (b.minutes >= WARMUP && t.impressions >= 20) {
      const sd = Math.sqrt(b.ctrVar);
      const reason =
        Math.abs(t.ctr - b.ctr) > Math.max(3 * sd, 0.02)
          ? t.ctr > b.ctr
            ? 'ctr-spike'
            : 'ctr-drop'
          : t.impressions < 0.3 * b.impressions
            ? 'volume-drop'
            : null;
      state.anomaly = reason ? { at: result.start, reason, ctr: t.ctr, impressions: t.impressions } : null;
      if (reason) state.anomalies += 1;
    }
    const d = t.ctr - b.ctr;
    b.ctr = b.minutes === 0 ? t.ctr : b.ctr + ALPHA * d;
    b.ctrVar = b.minutes === 0 ? 0 : (1 - ALPHA) * (b.ctrVar + ALPHA * d * d);
    b.impressions = b.minutes === 0 ? t.impressions : b.impressions + ALPHA * (t.impressions - b.impressions);
    b.minutes += 1;
    return state;
  },
});
