// A fresh node and a fresh gateway, before any event or request: every series docs/metrics.md
// promises ("Series from the start") is on /metrics at 0, so `rate()` and `absent()` alerts see 0
// and not a missing series. Each labelled metric needs a rule below: a new one fails until it has.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { pino } from 'pino';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { DEAD_LETTER_CODES, type PartitaNode, startNode, timeFeaturesOf } from '../runtime/index.js';
import { NATS_RETRY_CODES } from '../runtime/nats-refusal.js';
import { QUERY_RESULTS } from '../runtime/state-query.js';
import { check } from './helpers/check.js';
import { type DocumentedMetric, documentedMetrics } from './helpers/metrics-doc.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const PARTITIONS = 4;

let nats: TestNats;
let node: PartitaNode;
let gw: RunningGateway;

before(async () => {
  nats = await startTestNats({ partitions: PARTITIONS });
  // The built-in actors: some with windows and timers (late events), one without (ledger).
  node = await startNode({
    natsUrl: nats.url,
    dataDir: join(nats.dir, 'node'),
    metricsPort: 0,
    threads: 1,
    logger: pino({ level: 'silent' }),
  });
  gw = await startGateway({ natsUrl: nats.url, port: 0 });
});
after(async () => {
  await gw?.stop();
  await node?.stop();
  await nats?.stop();
});

type Labels = Record<string, string>;

/** The label sets of a family's samples (`_count` for histograms), by metric name. */
function series(text: string): Map<string, Labels[]> {
  const out = new Map<string, Labels[]>();
  for (const line of text.split('\n')) {
    if (line === '' || line.startsWith('#')) continue;
    const m = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})? \S+$/.exec(line);
    if (!m || /_(bucket|sum)$/.test(m[1]!)) continue;
    const labels = Object.fromEntries(
      [...(m[2] ?? '').matchAll(/(\w+)="([^"]*)"/g)].map((x) => [x[1]!, x[2]!]),
    );
    const name = m[1]!.replace(/_count$/, '');
    out.set(name, [...(out.get(name) ?? []), labels]);
    if (name !== m[1]) out.set(m[1]!, [...(out.get(m[1]!) ?? []), labels]);
  }
  return out;
}

const cross = (a: Labels[], key: string, values: readonly string[]): Labels[] =>
  a.flatMap((l) => values.map((v) => ({ ...l, [key]: v })));

/** The label sets a fresh process must carry for a documented metric, by the doc's rules. */
function expected(d: DocumentedMetric, openapiRoutes: string[]): Labels[] | 'no rule' {
  const key = d.labels.join(',');
  const actors = node.actors.map((a) => a.name);
  const partitionsOf = d.type === 'counter' ? [...Array(PARTITIONS).keys()] : node.owned();
  switch (key) {
    case '':
      return [{}];
    case 'code':
      return cross(
        [{}],
        'code',
        d.name === 'partita_nats_refusals_total' ? NATS_RETRY_CODES : DEAD_LETTER_CODES,
      );
    case 'actor':
      return cross(
        [{}],
        'actor',
        d.name === 'partita_late_events_total'
          ? node.actors.filter((a) => timeFeaturesOf(a.def)).map((a) => a.name)
          : actors,
      );
    case 'actor,result':
      return cross(cross([{}], 'actor', actors), 'result', ['ok', 'failed']);
    case 'kind':
      return cross([{}], 'kind', ['missing', 'stale', 'restore']);
    case 'result':
      return cross([{}], 'result', QUERY_RESULTS);
    case 'source':
      return cross([{}], 'source', ['owner', 'export']);
    case 'partition':
      // Before its first watermark a partition has no watermark lag to tell (documented).
      if (d.name === 'partita_watermark_lag_seconds') return [];
      return cross([{}], 'partition', partitionsOf.map(String));
    case 'node':
      return [{ node: node.id }];
    case 'route':
      return cross([{}], 'route', [...openapiRoutes, 'unknown']);
    case 'route,status':
      // Every route has a series; the statuses are those its schema declares (at least one).
      return [...cross([{}], 'route', openapiRoutes), { route: 'unknown', status: '404' }];
    default:
      return 'no rule';
  }
}

const matches = (have: Labels, want: Labels) => Object.entries(want).every(([k, v]) => have[k] === v);

it('the dead-letter codes are those docs/errors.md marks as such', () => {
  const doc = readFileSync(new URL('../../docs/errors.md', import.meta.url), 'utf8');
  const marked = doc
    .split(/^## /m)
    .slice(1)
    .filter((s) => /Dead-letter\s+code/.test(s))
    .map((s) => s.slice(0, s.indexOf('\n')).trim());
  assert.deepEqual([...marked].sort(), [...DEAD_LETTER_CODES].sort());
});

it('a fresh node and gateway carry every documented series, at 0', async () => {
  // Per-partition gauges follow ownership: wait until the node owns its partitions.
  await check(() => node.owned().length === PARTITIONS, 20_000, 'the node to own every partition');
  const doc = (await (await fetch(`${gw.url}/openapi.json`)).json()) as { paths: Record<string, unknown> };
  const routes = Object.keys(doc.paths).map((p) => p.replace(/\{(\w+)\}/g, ':$1'));
  assert.ok(routes.includes('/v1/actors/:actor/:key'), `routes: ${routes.join(', ')}`);

  const problems = async () => {
    const scraped = {
      node: series(await (await fetch(`${node.metricsUrl}/metrics`)).text()),
      gateway: series(await (await fetch(`${gw.url}/metrics`)).text()),
    };
    const out: string[] = [];
    for (const d of documentedMetrics()) {
      const want = expected(d, routes);
      if (want === 'no rule') {
        out.push(
          `${d.name}: no rule for labels ${d.labels.join(', ')} (docs/metrics.md, Series from the start)`,
        );
        continue;
      }
      const have = scraped[d.process].get(d.name) ?? [];
      for (const w of want)
        if (!have.some((h) => matches(h, w))) out.push(`${d.name}${JSON.stringify(w)}: no series`);
    }
    return out;
  };
  // Gauges sampled from JetStream arrive when the partitions start; everything else is there at once.
  let last: string[] = [];
  await check(
    async () => {
      last = await problems();
      return last.length === 0;
    },
    10_000,
    'every documented series',
  ).catch(() => assert.deepEqual(last, []));
});

it('a series at 0 is 0: nothing counted on a fresh node', async () => {
  const text = await (await fetch(`${node.metricsUrl}/metrics`)).text();
  const dead = text.split('\n').filter((l) => l.startsWith('partita_events_dead_lettered_total{'));
  assert.equal(dead.length, DEAD_LETTER_CODES.length);
  for (const l of dead) assert.match(l, / 0$/);
});
