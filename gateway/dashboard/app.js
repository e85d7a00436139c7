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
  const width = (el) => Math.max(300, el.clientWidth - 8);
  const seriesOpts = (label, stroke) => ({ label, stroke, width: 2, spanGaps: true });
  const mkChart = (el, series, height = 200) =>
    new uPlot(
      {
        width: width(el),
        height,
        series: [{}, ...series],
        axes: [
          { stroke: '#8a96a3', grid: { stroke: '#232d3a' } },
          { stroke: '#8a96a3', grid: { stroke: '#232d3a' } },
        ],
        // The last HISTORY seconds, even while there are only a few points.
        scales: {
          x: {
            time: true,
            range: (_u, _min, max) => [(max ?? Date.now() / 1000) - HISTORY, max ?? Date.now() / 1000],
          },
        },
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
  let rollup = null;
  let rollupKeys = [];
  const tpData = [[], [], []];
  const latData = [[], [], [], []];
  let rollupData = [[]];
  const push = (data, t, values) => {
    data[0].push(t);
    for (const [i, v] of values.entries()) data[i + 1].push(v);
    if (data[0].length > HISTORY) for (const a of data) a.shift();
  };

  // ---- actor / field pickers (generic over whatever actors publish) ---------------------------
  const numericPaths = (obj, prefix = '', depth = 0, out = []) => {
    if (obj === null || typeof obj !== 'object' || depth > 2) return out;
    for (const [k, v] of Object.entries(obj)) {
      const p = prefix ? `${prefix}.${k}` : k;
      if (typeof v === 'number') out.push(p);
      else if (v && typeof v === 'object' && !Array.isArray(v)) numericPaths(v, p, depth + 1, out);
    }
    return out;
  };
  const at = (obj, path) =>
    path.split('.').reduce((o, k) => (o && typeof o === 'object' ? o[k] : undefined), obj);
  const fillSelect = (sel, values, keep) => {
    const cur = sel.value || keep;
    const have = [...sel.options].map((o) => o.value).join('\u0000');
    if (have === values.join('\u0000')) return;
    sel.replaceChildren(...values.map((v) => new Option(v === '*' ? '(all actors)' : v, v)));
    if (values.includes(cur)) sel.value = cur;
  };
  const actorSel = $('chart-actor');
  const fieldSel = $('chart-field');
  const tailSel = $('tail-actor');
  const refreshPickers = () => {
    const actors = [...latest.keys()].sort();
    fillSelect(
      actorSel,
      actors,
      params.get('actor') || (actors.includes('campaign') ? 'campaign' : actors[0]),
    );
    fillSelect(
      tailSel,
      ['*', ...new Set([...actors, 'warehouse'])].sort(),
      params.get('tail') || 'warehouse',
    );
    const keys = latest.get(actorSel.value);
    const fields = new Set();
    if (keys)
      for (const v of [...keys.values()].slice(0, 50)) for (const p of numericPaths(v.state)) fields.add(p);
    fillSelect(fieldSel, [...fields].sort(), params.get('field') || 'impressions');
  };
  actorSel.onchange = fieldSel.onchange = () => {
    refreshPickers();
    resetRollup();
  };
  tailSel.onchange = () => renderTail(true);

  const resetRollup = () => {
    rollup?.destroy();
    rollup = null;
    rollupKeys = [];
    rollupData = [[]];
  };
  const topKeys = () => {
    const keys = latest.get(actorSel.value);
    if (!keys || !fieldSel.value) return [];
    return [...keys.entries()]
      .map(([k, v]) => [k, at(v.state, fieldSel.value), v.updatedAt])
      .filter(([, v]) => typeof v === 'number')
      .sort((a, b) => b[1] - a[1]);
  };
  const sampleRollup = (t) => {
    const rows = topKeys();
    if (rows.length === 0) return;
    if (!rollup) {
      rollupKeys = rows.slice(0, 5).map((r) => r[0]);
      const colors = ['#f0883e', '#a371f7', '#3fb950', '#58a6ff', '#d29922'];
      rollup = mkChart(
        $('chart-rollup'),
        [
          seriesOpts(`sum of ${fieldSel.value}`, '#e6e6e6'),
          ...rollupKeys.map((k, i) => seriesOpts(k, colors[i])),
        ],
        240,
      );
      rollupData = [[], [], ...rollupKeys.map(() => [])];
    }
    const byKey = new Map(rows.map((r) => [r[0], r[1]]));
    const sum = rows.reduce((s, r) => s + r[1], 0);
    push(rollupData, t, [sum, ...rollupKeys.map((k) => byKey.get(k) ?? null)]);
    rollup.setData(rollupData);
    const tbody = $('top-keys').tBodies[0];
    tbody.replaceChildren(
      ...rows.slice(0, 8).map(([k, v, u]) => {
        const tr = document.createElement('tr');
        for (const c of [k, fmtNum(v), ago(Date.parse(u))]) tr.insertCell().textContent = c;
        return tr;
      }),
    );
  };

  // ---- live tail ------------------------------------------------------------------------------
  const summary = (c) => {
    const s = c.state;
    const focus = s && typeof s === 'object' && s.last && typeof s.last === 'object' ? s.last : s;
    return JSON.stringify(focus);
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
      refreshPickers();
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
        refreshPickers();
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

  const fmtNum = (v) =>
    Math.abs(v) >= 1000 ? Math.round(v).toLocaleString() : String(Math.round(v * 1000) / 1000);
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
    sampleRollup(t);
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
    get status() {
      return lastStatus;
    },
  };
  connect();
})();
