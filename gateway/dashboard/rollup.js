// What the rollup panel can chart, read from the states themselves (whatever actors run):
// closed windows in `state.rollups[name][granularity]` (`{start, end, count, value, update}`,
// newest last), or, for actors without rollups, numeric fields of the state sampled live. Pure
// functions over the dashboard's `latest` map (actor → key → change); app.js draws them.
/* global uPlot */
window.PartitaRollup = (() => {
  const UNIT_MS = { ms: 1, s: 1e3, m: 6e4, h: 36e5, d: 864e5, w: 6048e5, y: 31536e6 };
  /** Granularities sort by length: 1m, 5m, 1h. */
  const durationMs = (every) => {
    const m = /^(\d+(?:\.\d+)?)(ms|s|m|h|d|w|y)$/.exec(every);
    return m ? Number(m[1]) * UNIT_MS[m[2]] : Number.POSITIVE_INFINITY;
  };
  const isObject = (v) => v !== null && typeof v === 'object' && !Array.isArray(v);
  const isResult = (r) => isObject(r) && typeof r.start === 'number' && isObject(r.value);
  const at = (obj, path) => path.split('.').reduce((o, k) => (isObject(o) ? o[k] : undefined), obj);

  /** Numeric leaves of an object, in their order, as dotted paths (a few levels deep). */
  const numericPaths = (obj, prefix = '', depth = 0, out = []) => {
    if (!isObject(obj) || depth > 3) return out;
    for (const [k, v] of Object.entries(obj)) {
      const p = prefix ? `${prefix}.${k}` : k;
      if (typeof v === 'number') out.push(p);
      else if (isObject(v)) numericPaths(v, p, depth + 1, out);
    }
    return out;
  };

  // A timestamp or an id is not a metric: summed or charted, it means nothing. Told by its name
  // (`ts`, `createdAt`, `slaDue`, `orderId`, …) or by a value in the range of epoch milliseconds
  // (2001 to 5138), which no count of this dashboard's scale reaches.
  const NOT_METRIC = /(^|\.)(ts|time|timestamp|at|id|seq|epoch|version)$|(At|Time|Ts|Due|Id|Seq)$/;
  const EPOCH_MS = [1e12, 1e14];
  const inEpochMs = (v) => Math.abs(v) >= EPOCH_MS[0] && Math.abs(v) < EPOCH_MS[1];
  const isMetric = (path, v) => !NOT_METRIC.test(path) && !inEpochMs(v);
  /** A field that holds a time: named as one, with a value in epoch milliseconds. */
  const isTimestamp = (name, v) =>
    NOT_METRIC.test(name) && !/(^|\.)(id|seq|epoch|version)$|(Id|Seq)$/.test(name) && inEpochMs(v);

  // A sum over keys is drawn for counts and sums only: ratios, means, percentiles, extremes and
  // distinct counts of different keys do not add up. The state carries no aggregation kinds, so
  // their names tell (an actor's `ctr`, a rollup's `p95`, a `baseline.*`).
  const NOT_ADDITIVE =
    /^(ctr|cvr|rate|ratio|mean|avg|average|min|max|median|p\d+|distinct|unique|uniques|var|std|stddev|pct|percent|baseline|share|score)$/i;
  const additive = (path) =>
    !path.split('.').some((s) => NOT_ADDITIVE.test(s) || /(Rate|Ratio|Mean|Avg)$/.test(s));

  /**
   * Every rollup some state of `latest` carries: `{ id, actor, rollup, granularities, keys,
   * windows, measures }`, granularities shortest first, `windows` the closed windows kept at the
   * shortest, `measures` how many numbers a window's value holds.
   */
  const rollups = (latest) => {
    const found = new Map();
    for (const [actor, keys] of latest) {
      for (const c of keys.values()) {
        const byName = isObject(c.state) ? c.state.rollups : undefined;
        if (!isObject(byName)) continue;
        for (const [name, byEvery] of Object.entries(byName)) {
          if (!isObject(byEvery)) continue;
          const id = `${actor}/${name}`;
          let f = found.get(id);
          if (!f) {
            f = { id, actor, rollup: name, counts: new Map(), keys: 0, measures: 0 };
            found.set(id, f);
          }
          let has = false;
          for (const [every, list] of Object.entries(byEvery)) {
            const n = Array.isArray(list) ? list.filter(isResult).length : 0;
            if (n === 0) continue;
            f.counts.set(every, (f.counts.get(every) ?? 0) + n);
            f.measures = Math.max(f.measures, numericPaths(list.filter(isResult).at(-1).value).length);
            has = true;
          }
          if (has) f.keys++;
        }
      }
    }
    return [...found.values()]
      .filter((f) => f.counts.size > 0)
      .map(({ counts, ...f }) => {
        const granularities = [...counts.keys()].sort((a, b) => durationMs(a) - durationMs(b));
        return { ...f, granularities, windows: counts.get(granularities[0]) };
      })
      .sort((a, b) => a.id.localeCompare(b.id));
  };

  /**
   * The first view: the rollup with the most closed windows, then the most granularities, then
   * the most measures (right after start every rollup has one window per key: traffic, with
   * impressions, clicks and CTR, says more than spend alone).
   */
  const best = (list) =>
    [...list].sort(
      (a, b) =>
        b.windows - a.windows || b.granularities.length - a.granularities.length || b.measures - a.measures,
    )[0];

  /** What a rollup's windows carry: their values' numeric leaves, then `count` (events fed). */
  const rollupMeasures = (latest, actor, rollup, every) => {
    const paths = new Set();
    for (const c of latest.get(actor)?.values() ?? []) {
      const list = at(c.state, 'rollups')?.[rollup]?.[every];
      const last = Array.isArray(list) ? list.filter(isResult).at(-1) : undefined;
      if (last) for (const p of numericPaths(last.value, 'value')) paths.add(p);
      if (paths.size > 0) break;
    }
    return [...paths, 'count'];
  };

  /** An actor's numeric state fields that are metrics (no rollups, windows, timestamps, ids). */
  const stateMeasures = (latest, actor) => {
    const paths = new Set();
    for (const c of [...(latest.get(actor)?.values() ?? [])].slice(0, 50)) {
      if (!isObject(c.state)) continue;
      const { rollups: _r, windows: _w, sys: _s, ...fields } = c.state;
      for (const p of numericPaths(fields)) if (isMetric(p, at(fields, p))) paths.add(p);
    }
    return [...paths];
  };

  const measureLabel = (path) => (path === 'count' ? 'events' : path.replace(/^value\./, ''));

  /**
   * One rollup at one granularity: x = window starts (s), the sum over keys (additive measures
   * only) and the `top` keys with the most events, each a series; `rows` for the table.
   */
  const rollupSeries = (latest, { actor, rollup, every, measure }, top = 5) => {
    const perKey = [];
    for (const [key, c] of latest.get(actor) ?? []) {
      const list = at(c.state, 'rollups')?.[rollup]?.[every];
      if (!Array.isArray(list)) continue;
      const results = list.filter(isResult);
      if (results.length === 0) continue;
      const byStart = new Map();
      let events = 0;
      for (const r of results) {
        const v = at(r, measure);
        if (typeof v === 'number') byStart.set(r.start, v);
        events += typeof r.count === 'number' ? r.count : 0;
      }
      perKey.push({ key, byStart, events, last: results.at(-1), updatedAt: c.updatedAt });
    }
    perKey.sort((a, b) => b.events - a.events || a.key.localeCompare(b.key));
    const starts = [...new Set(perKey.flatMap((k) => [...k.byStart.keys()]))].sort((a, b) => a - b);
    const shown = perKey.slice(0, top);
    const sum = additive(measure);
    const series = [];
    if (sum) {
      series.push({
        label: `all keys (${perKey.length})`,
        values: starts.map((s) => {
          let total = null;
          for (const k of perKey) if (k.byStart.has(s)) total = (total ?? 0) + k.byStart.get(s);
          return total;
        }),
      });
    }
    for (const k of shown) series.push({ label: k.key, values: starts.map((s) => k.byStart.get(s) ?? null) });
    return {
      x: starts.map((s) => s / 1000),
      series,
      keys: shown.map((k) => k.key),
      // The table: each key's last closed window, the highest values first.
      rows: perKey
        .map((k) => ({
          key: k.key,
          value: at(k.last, measure),
          window: k.last.start,
          updatedAt: k.updatedAt,
        }))
        .sort((a, b) => (b.value ?? Number.NEGATIVE_INFINITY) - (a.value ?? Number.NEGATIVE_INFINITY)),
    };
  };

  /** Live state fields: the current value per key, the busiest keys first. */
  const stateRows = (latest, actor, measure) =>
    [...(latest.get(actor) ?? [])]
      .map(([key, c]) => ({ key, value: at(c.state, measure), updatedAt: c.updatedAt }))
      .filter((r) => typeof r.value === 'number')
      .sort((a, b) => b.value - a.value || a.key.localeCompare(b.key));

  // Axis labels: compact (1.2k, 3.4M, 0.052), and an axis as wide as its widest label.
  const compact = new Intl.NumberFormat('en', { notation: 'compact', maximumSignificantDigits: 3 });
  const fmtAxis = (v) => (v === null || v === undefined ? '' : compact.format(v));
  const fmtValue = (v) =>
    typeof v !== 'number'
      ? '–'
      : Math.abs(v) >= 1000
        ? Math.round(v).toLocaleString('en')
        : String(Math.round(v * 1000) / 1000);
  // Time labels on one line (uPlot's default adds a date line whose first label is cut at the
  // chart's left edge): seconds when ticks are less than a minute apart, days when a day or more.
  const timeFormats = [
    [
      60,
      new Intl.DateTimeFormat(undefined, {
        hour: '2-digit',
        minute: '2-digit',
        second: '2-digit',
        hourCycle: 'h23',
      }),
    ],
    [86400, new Intl.DateTimeFormat(undefined, { hour: '2-digit', minute: '2-digit', hourCycle: 'h23' })],
    [Number.POSITIVE_INFINITY, new Intl.DateTimeFormat(undefined, { month: 'short', day: 'numeric' })],
  ];
  const fmtTimes = (_u, splits, _axisIdx, _space, incr) => {
    const f = timeFormats.find(([below]) => incr < below)[1];
    return splits.map((s) => f.format(new Date(s * 1000)));
  };
  /**
   * The x axis of closed windows: a tick at window starts (as many as fit), labelled by minute or
   * by day, and half a window of room at each end so no point or label sits on the edge.
   */
  const windowX = (every) => {
    const step = durationMs(every) / 1000;
    const f = step < 86400 ? timeFormats[1][1] : timeFormats[2][1];
    return {
      scale: {
        time: true,
        // From the data itself: for a single point uPlot would pass a day-long span.
        range: (u) => {
          const xs = u.data[0] ?? [];
          const now = Date.now() / 1000;
          return xs.length === 0 ? [now - step, now] : [xs[0] - step / 2, xs[xs.length - 1] + step / 2];
        },
      },
      axis: {
        splits: (u) => {
          const xs = u.data[0] ?? [];
          const fit = Math.max(1, Math.floor(u.bbox.width / devicePixelRatio / 70));
          const every = Math.ceil(xs.length / fit);
          return xs.filter((_x, i) => (xs.length - 1 - i) % every === 0);
        },
        values: (_u, splits) => splits.map((s) => f.format(new Date(s * 1000))),
      },
    };
  };
  /** A window's start as the axis labels it. */
  const fmtWindow = (every, start) =>
    (durationMs(every) < 86_400_000 ? timeFormats[1][1] : timeFormats[2][1]).format(new Date(start));
  /** y from 0 (or below, for negatives), with headroom above the highest value (1 if none is). */
  const yRange = (_u, min, max) =>
    min === null || max === null ? [0, 1] : uPlot.rangeNum(Math.min(0, min), max > 0 ? max : 1, 0.1, true);
  /**
   * uPlot's axis `size`, measured from the labels it is about to draw (after uPlot's autosize
   * demo). uPlot may ask again as the layout converges; never shrinking keeps every label seen
   * inside the axis and still converges.
   */
  const axisSize = (u, values, axisIdx, cycleNum) => {
    const axis = u.axes[axisIdx];
    let size = axis.ticks.size + axis.gap;
    const longest = (values ?? []).reduce((a, v) => (String(v).length > a.length ? String(v) : a), '');
    if (longest !== '') {
      u.ctx.font = axis.font[0];
      size += u.ctx.measureText(longest).width / devicePixelRatio;
    }
    size = Math.ceil(size) + 2;
    return cycleNum > 1 ? Math.max(size, axis._size ?? 0) : size;
  };

  return {
    additive,
    axisSize,
    best,
    durationMs,
    fmtAxis,
    fmtTimes,
    fmtValue,
    fmtWindow,
    isTimestamp,
    measureLabel,
    rollupMeasures,
    rollupSeries,
    rollups,
    stateMeasures,
    stateRows,
    windowX,
    yRange,
    at,
  };
})();
