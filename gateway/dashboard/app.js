// The live dashboard: one WebSocket to /v1/ws?status=true. It receives a snapshot of every state,
// then each committed change as it is pushed, plus heartbeat and status frames. Nothing is polled.
/* global uPlot */
(() => {
  const $ = (id) => document.getElementById(id);
  const params = new URLSearchParams(location.search);
  const token = params.get('access_token');
  const HISTORY = 120; // seconds shown in the charts
  const TAIL_MAX = 200;
  const STALE_MS = 5000; // status frames come every 2 s; silence this long means stale

  /** latest[actor][key] = { state, updatedAt, seq } */
  const latest = new Map();
  const tail = [];
  let paused = false;
  let lastFrameAt = 0;
  let lastChangeAt = 0;
  let connected = false;
  let natsUp = true;
  let latencies = [];
  let changesThisSecond = 0;
  let lastStatus = null;
  let prevEvents = null;

  // ---- charts -------------------------------------------------------------------------------
  const R = window.PartitaRollup;
  const width = (el) => Math.max(300, el.clientWidth - 8);
  const seriesOpts = (label, stroke) => ({
    label,
    stroke,
    width: 2,
    spanGaps: true,
    value: (_u, v) => R.fmtValue(v),
  });
  const axisOpts = { stroke: '#8a96a3', grid: { stroke: '#232d3a' }, ticks: { stroke: '#232d3a' } };
  /** The x axis is the last HISTORY seconds of the clock, unless `x` says otherwise. */
  const liveX = {
    scale: {
      time: true,
      range: (_u, _min, max) => [(max ?? Date.now() / 1000) - HISTORY, max ?? Date.now() / 1000],
    },
    axis: { values: R.fmtTimes },
  };
  const mkChart = (el, series, height = 200, x = liveX) =>
    new uPlot(
      {
        width: width(el),
        height,
        series: [{}, ...series],
        axes: [
          { ...axisOpts, ...x.axis },
          { ...axisOpts, values: (_u, splits) => splits.map(R.fmtAxis), size: R.axisSize },
        ],
        scales: { x: x.scale, y: { range: R.yRange } },
      },
      [[], ...series.map(() => [])],
      el,
    );
  const throughput = mkChart($('chart-throughput'), [
    seriesOpts('changes/s', '#58a6ff'),
    seriesOpts('events/s', '#3fb950'),
  ]);
  const latencyChart = mkChart($('chart-latency'), [
    seriesOpts('p50', '#3fb950'),
    seriesOpts('p95', '#d29922'),
    seriesOpts('p99', '#f85149'),
  ]);
  const tpData = [[], [], []];
  const latData = [[], [], [], []];
  const push = (data, t, values) => {
    data[0].push(t);
    for (const [i, v] of values.entries()) data[i + 1].push(v);
    if (data[0].length > HISTORY) for (const a of data) a.shift();
  };
  const fillSelect = (sel, options, value) => {
    const have = [...sel.options].map((o) => `${o.value}\u0000${o.text}`).join('\u0001');
    if (have !== options.map(([v, t]) => `${v}\u0000${t}`).join('\u0001')) {
      sel.replaceChildren(...options.map(([v, t]) => new Option(t, v)));
    }
    if (value !== undefined) sel.value = value;
  };

  // ---- rollup panel: what the states carry ----------------------------------------------------
  // `want` is what was asked for (URL, controls); `view` completes it from the states each second.
  // Asked for nothing, the panel opens on the rollup with the most closed windows, and stays there.
  const sourceSel = $('chart-source');
  const measureSel = $('chart-measure');
  const everyBox = $('chart-every');
  let want = {
    kind: params.has('field') ? 'state' : undefined,
    actor: params.get('actor') ?? undefined,
    rollup: params.get('rollup') ?? undefined,
    every: params.get('every') ?? undefined,
    measure: params.get('field') ?? params.get('measure') ?? undefined,
  };
  let view = null;
  let rollup = null;
  let rollupLabels = '';
  let rollupData = [[]];

  // Without a closed window yet: the actor with the richest state (the most metric fields; an
  // analytics actor rather than an entity's record), then the one with the most keys.
  const stateView = (actor) => {
    const fields = new Map([...latest.keys()].map((a) => [a, R.stateMeasures(latest, a)]));
    const actors = [...fields.keys()].filter((a) => fields.get(a).length > 0);
    const a =
      actor && actors.includes(actor)
        ? actor
        : actors.sort(
            (x, y) =>
              fields.get(y).length - fields.get(x).length ||
              latest.get(y).size - latest.get(x).size ||
              x.localeCompare(y),
          )[0];
    if (!a) return null;
    const measures = fields.get(a);
    const measure = measures.includes(want.measure) ? want.measure : measures[0];
    return { kind: 'state', actor: a, measure, measures, granularities: [] };
  };
  const complete = (list) => {
    if (want.kind !== 'state') {
      const candidates = list.filter(
        (r) => (!want.actor || r.actor === want.actor) && (!want.rollup || r.rollup === want.rollup),
      );
      const r = want.rollup ? candidates[0] : R.best(candidates);
      if (r) {
        if (!want.rollup) want = { ...want, actor: r.actor, rollup: r.rollup };
        const every = r.granularities.includes(want.every) ? want.every : r.granularities[0];
        const measures = R.rollupMeasures(latest, r.actor, r.rollup, every);
        // A measure is named as the window's value names it (`traffic.ctr`), or by its path.
        const asked = [want.measure, `value.${want.measure}`].find((m) => measures.includes(m));
        const measure = asked ?? measures[0];
        return {
          kind: 'rollup',
          id: r.id,
          actor: r.actor,
          rollup: r.rollup,
          every,
          measure,
          measures,
          granularities: r.granularities,
        };
      }
    }
    // No closed window yet (or asked for a field): live state fields.
    return stateView(want.actor);
  };
  const viewKey = (v) => (v ? [v.kind, v.actor, v.rollup, v.every, v.measure].join('\u0000') : '');

  const renderControls = (list) => {
    const options = [
      ...list.map((r) => [`rollup:${r.id}`, `${r.actor} · ${r.rollup}`]),
      ...[...latest.keys()]
        .sort()
        .filter((a) => R.stateMeasures(latest, a).length > 0)
        .map((a) => [`state:${a}`, `${a} · live state`]),
    ];
    fillSelect(
      sourceSel,
      options,
      view ? (view.kind === 'rollup' ? `rollup:${view.id}` : `state:${view.actor}`) : undefined,
    );
    fillSelect(
      measureSel,
      (view?.measures ?? []).map((m) => [m, R.measureLabel(m)]),
      view?.measure,
    );
    const evs = view?.granularities ?? [];
    if ([...everyBox.children].map((b) => b.dataset.every).join() !== evs.join()) {
      everyBox.replaceChildren(
        ...evs.map((e) => {
          const b = document.createElement('button');
          b.type = 'button';
          b.dataset.every = e;
          b.textContent = e;
          b.onclick = () => {
            want = { ...want, every: e };
            renderRollup(Date.now() / 1000);
          };
          return b;
        }),
      );
    }
    for (const b of everyBox.children)
      b.setAttribute('aria-pressed', String(b.dataset.every === view?.every));
    const summed = view && R.additive(view.measure);
    $('chart-hint').textContent = !view
      ? 'waiting for states'
      : view.kind === 'rollup'
        ? `closed windows of event time, by window start · ${summed ? 'all keys and ' : ''}the busiest keys${summed ? '' : ' (not summed: a ratio, mean, percentile or distinct count)'}`
        : `live state, sampled each second${list.length === 0 ? ' (no closed rollup window yet)' : ''} · ${summed ? 'sum over keys and ' : ''}the top keys`;
  };
  sourceSel.onchange = () => {
    const [kind, rest] = sourceSel.value.split(/:(.*)/s);
    want =
      kind === 'rollup'
        ? { actor: rest.split('/')[0], rollup: rest.slice(rest.indexOf('/') + 1) }
        : { kind: 'state', actor: rest };
    renderRollup(Date.now() / 1000);
  };
  measureSel.onchange = () => {
    want = { ...want, measure: measureSel.value };
    renderRollup(Date.now() / 1000);
  };

  const resetRollup = () => {
    rollup?.destroy();
    rollup = null;
    rollupLabels = '';
    rollupData = [[]];
  };
  const COLORS = ['#e6e6e6', '#f0883e', '#a371f7', '#3fb950', '#58a6ff', '#d29922'];
  const chartFor = (labels, x) => {
    if (rollup && rollupLabels === labels.join('\u0000')) return;
    rollup?.destroy();
    const offset = labels[0]?.startsWith('all keys') || labels[0]?.startsWith('sum of') ? 0 : 1;
    rollup = mkChart(
      $('chart-rollup'),
      labels.map((l, i) => seriesOpts(l, COLORS[(i + offset) % COLORS.length])),
      240,
      x,
    );
    rollupLabels = labels.join('\u0000');
  };
  const renderTable = (rows) => {
    $('top-keys').tBodies[0].replaceChildren(
      ...rows.slice(0, 8).map((r) => {
        const tr = document.createElement('tr');
        const win = r.window === undefined ? '–' : R.fmtWindow(view.every, r.window);
        for (const c of [r.key, R.fmtValue(r.value), win, ago(Date.parse(r.updatedAt))])
          tr.insertCell().textContent = c;
        return tr;
      }),
    );
  };
  /** Once a second and on every control change: the panel from the states as they are now. */
  const renderRollup = (t) => {
    const list = R.rollups(latest);
    const next = complete(list);
    if (viewKey(next) !== viewKey(view)) resetRollup();
    view = next;
    renderControls(list);
    let keys = [];
    let points = 0;
    if (view?.kind === 'rollup') {
      const d = R.rollupSeries(latest, view);
      chartFor(
        d.series.map((s) => s.label),
        R.windowX(view.every),
      );
      rollup.setData([d.x, ...d.series.map((s) => s.values)]);
      keys = d.keys;
      points = d.x.length;
      renderTable(d.rows);
    } else if (view) {
      const rows = R.stateRows(latest, view.actor, view.measure);
      if (!rollup) {
        const summed = R.additive(view.measure);
        const top = rows.slice(0, 5).map((r) => r.key);
        chartFor([...(summed ? [`sum of ${view.measure}`] : []), ...top], liveX);
        rollupData = [[], ...rollupLabels.split('\u0000').map(() => [])];
      }
      const labels = rollupLabels.split('\u0000');
      const byKey = new Map(rows.map((r) => [r.key, r.value]));
      const sum = rows.reduce((s, r) => s + r.value, 0);
      push(
        rollupData,
        t,
        labels.map((l) => (l.startsWith('sum of ') ? sum : (byKey.get(l) ?? null))),
      );
      rollup.setData(rollupData);
      keys = labels.filter((l) => byKey.has(l));
      points = rollupData[0].length;
      renderTable(rows);
    }
    window.partita.view = view && { ...view, keys, points };
  };

  // ---- live tail ------------------------------------------------------------------------------
  const tailSel = $('tail-actor');
  const refreshTailActors = () => {
    const actors = ['*', ...new Set([...latest.keys(), 'warehouse'])].sort();
    const cur = tailSel.value || params.get('tail') || 'warehouse';
    fillSelect(
      tailSel,
      actors.map((a) => [a, a === '*' ? '(all actors)' : a]),
      actors.includes(cur) ? cur : undefined,
    );
  };
  tailSel.onchange = () => renderTail(true);
  const summary = (c) => {
    const s = c.state;
    const focus = s && typeof s === 'object' && s.last && typeof s.last === 'object' ? s.last : s;
    // Timestamps read as times of day, not as 13-digit numbers.
    return JSON.stringify(focus, (k, v) =>
      typeof v === 'number' && R.isTimestamp(k, v) ? new Date(v).toLocaleTimeString() : v,
    );
  };
  const tailMatches = (c) => {
    const actor = tailSel.value || 'warehouse';
    if (actor !== '*' && c.actor !== actor) return false;
    const f = $('tail-filter').value.trim().toLowerCase();
    return !f || c.key.toLowerCase().includes(f) || summary(c).toLowerCase().includes(f);
  };
  const row = (c, fresh) => {
    const tr = document.createElement('tr');
    if (fresh) tr.className = 'new';
    tr.dataset.actor = c.actor;
    tr.dataset.key = c.key;
    for (const v of [new Date(c.updatedAt).toLocaleTimeString(), c.actor, c.key, summary(c)]) {
      tr.insertCell().textContent = v;
    }
    return tr;
  };
  const renderTail = () => {
    const rows = tail.filter(tailMatches).slice(0, TAIL_MAX);
    $('tail').tBodies[0].replaceChildren(...rows.map((c) => row(c, false)));
    $('tail-count').textContent = `${rows.length} shown${paused ? ' · paused' : ''}`;
  };
  $('tail-filter').oninput = () => renderTail();
  $('tail-pause').onclick = (e) => {
    paused = !paused;
    e.target.textContent = paused ? 'Resume' : 'Pause';
    e.target.setAttribute('aria-pressed', String(paused));
    renderTail();
  };
  const addToTail = (c) => {
    tail.unshift(c);
    if (tail.length > TAIL_MAX * 5) tail.length = TAIL_MAX * 5;
    if (paused || !tailMatches(c)) return;
    const tbody = $('tail').tBodies[0];
    tbody.prepend(row(c, true));
    while (tbody.rows.length > TAIL_MAX) tbody.deleteRow(-1);
    $('tail-count').textContent = `${tbody.rows.length} shown`;
  };

  // ---- frames ---------------------------------------------------------------------------------
  const apply = (c, live) => {
    let keys = latest.get(c.actor);
    if (!keys) {
      keys = new Map();
      latest.set(c.actor, keys);
      refreshTailActors();
    }
    const prev = keys.get(c.key);
    if (prev && prev.seq > c.seq) return;
    keys.set(c.key, c);
    if (!live) return;
    changesThisSecond++;
    lastChangeAt = Date.now();
    const lat = Date.now() - Date.parse(c.updatedAt);
    if (Number.isFinite(lat)) latencies.push(Math.max(0, lat));
    addToTail(c);
  };
  const onFrame = (f) => {
    lastFrameAt = Date.now();
    switch (f.type) {
      case 'snapshot':
        for (const c of f.changes) apply(c, false);
        break;
      case 'ready':
        refreshTailActors();
        renderRollup(Date.now() / 1000);
        break;
      case 'changes':
        for (const c of f.changes) apply(c, true);
        break;
      case 'heartbeat':
        natsUp = f.nats;
        break;
      case 'status':
        natsUp = f.gateway.nats;
        lastStatus = f;
        renderStatus(f);
        break;
      case 'overflow':
        console.warn('the gateway dropped this dashboard for falling behind; reconnecting');
        break;
    }
    updateFreshness();
  };

  const fmtNum = R.fmtValue;
  const ago = (t) => {
    const s = (Date.now() - t) / 1000;
    return s < 1 ? 'now' : s < 60 ? `${Math.round(s)} s ago` : `${Math.round(s / 60)} min ago`;
  };
  const pct = (p) => (p ? `${Math.round(p.p50)} / ${Math.round(p.p95)} / ${Math.round(p.p99)}` : '–');

  const renderStatus = (f) => {
    $('changes-rate').textContent = fmtNum(f.gateway.changesPerSecond);
    $('latency-gateway').textContent = pct(f.gateway.commitToGatewayMs);
    const cl = f.cluster;
    if (!cl) return;
    const events = cl.partitions.reduce((s, p) => s + (p.stream ? p.stream.lastSeq : 0), 0);
    if (prevEvents) {
      const rate = ((events - prevEvents.n) * 1000) / Math.max(1, f.at - prevEvents.at);
      $('events-rate').textContent = fmtNum(Math.max(0, rate));
      eventsRate = Math.max(0, rate);
    }
    prevEvents = { n: events, at: f.at };
    $('lag').textContent = fmtNum(cl.partitions.reduce((s, p) => s + (p.lagMessages ?? 0), 0));
    $('nodes').textContent = String(cl.nodes.length);
    $('nodes-list').textContent = cl.nodes.join(', ');
    $('partitions').tBodies[0].replaceChildren(
      ...cl.partitions.map((p) => {
        const tr = document.createElement('tr');
        const age = p.checkpointAgeSeconds === null ? '–' : `${p.checkpointAgeSeconds.toFixed(1)} s`;
        for (const v of [
          p.partition,
          p.owner ?? '(none)',
          p.lagMessages ?? '–',
          age,
          p.stream ? p.stream.messages : '–',
        ]) {
          tr.insertCell().textContent = String(v);
        }
        if (!p.owner) tr.className = 'unowned';
        return tr;
      }),
    );
  };
  let eventsRate = null;

  const updateFreshness = () => {
    const el = $('freshness');
    const now = Date.now();
    let state;
    let text;
    if (!connected) {
      state = 'down';
      text = 'disconnected · reconnecting';
    } else if (!natsUp) {
      state = 'stale';
      text = 'gateway lost NATS · data may be stale';
    } else if (now - lastFrameAt > STALE_MS) {
      state = 'stale';
      text = `no data for ${Math.round((now - lastFrameAt) / 1000)} s`;
    } else {
      state = 'live';
      text = lastChangeAt ? `live · last change ${ago(lastChangeAt)}` : 'live · waiting for changes';
    }
    el.dataset.state = state;
    $('freshness-text').textContent = text;
  };

  // Once a second: chart points and the browser-side latency percentiles.
  setInterval(() => {
    const t = Date.now() / 1000;
    push(tpData, t, [changesThisSecond, eventsRate]);
    changesThisSecond = 0;
    throughput.setData(tpData);
    if (latencies.length > 0) {
      const s = latencies.sort((a, b) => a - b);
      const q = (x) => s[Math.min(s.length - 1, Math.floor(x * s.length))];
      push(latData, t, [q(0.5), q(0.95), q(0.99)]);
      $('latency-screen').textContent = `${q(0.5)} / ${q(0.95)} / ${q(0.99)}`;
    } else push(latData, t, [null, null, null]);
    latencies = [];
    latencyChart.setData(latData);
    renderRollup(t);
    updateFreshness();
  }, 1000);

  // ---- connection -----------------------------------------------------------------------------
  let backoff = 250;
  const connect = () => {
    const proto = location.protocol === 'https:' ? 'wss' : 'ws';
    const qs = new URLSearchParams({ status: 'true' });
    if (token) qs.set('access_token', token);
    const ws = new WebSocket(`${proto}://${location.host}/v1/ws?${qs}`);
    ws.onopen = () => {
      connected = true;
      backoff = 250;
      updateFreshness();
    };
    ws.onmessage = (m) => onFrame(JSON.parse(m.data));
    ws.onclose = () => {
      connected = false;
      updateFreshness();
      setTimeout(connect, backoff);
      backoff = Math.min(5000, backoff * 2);
    };
  };
  window.addEventListener('resize', () => {
    for (const [c, el] of [
      [throughput, 'chart-throughput'],
      [latencyChart, 'chart-latency'],
      [rollup, 'chart-rollup'],
    ]) {
      c?.setSize({ width: width($(el)), height: c.height });
    }
  });
  window.partita = {
    latest,
    tail,
    /** What the rollup panel shows: kind, actor, rollup, granularity, measure, keys, points. */
    view: null,
    get charts() {
      return [throughput, latencyChart, rollup].filter(Boolean);
    },
    get status() {
      return lastStatus;
    },
  };
  connect();
})();
