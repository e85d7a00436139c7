// Every metric documented in docs/metrics.md is on a real node's or the gateway's /metrics under
// load, and those that should move do. The doc table is the list: a metric added to the code must
// be added there, and a documented one must exist.
import assert from 'node:assert/strict';
import { join } from 'node:path';
import { after, before, it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { jetstream } from '@nats-io/jetstream';
import type { NatsConnection } from '@nats-io/transport-node';
import { pino } from 'pino';
import { type RunningGateway, startGateway } from '../gateway/index.js';
import { type PartitaNode, startNode } from '../runtime/index.js';
import { runReplay } from '../runtime/replay.js';
import { check } from './helpers/check.js';
import { documentedMetrics } from './helpers/metrics-doc.js';
import { startTestNats, type TestNats } from './helpers/nats.js';

const FIXTURE_ACTORS = fileURLToPath(new URL('./fixtures/actors/', import.meta.url));

/**
 * Documented metrics of the event-time engine, which may not exist in every build: once present
 * they must have the documented type and labels, and move if they have samples (the fixture actors
 * here use no event-time windows). Keep this list short.
 */
const RECORDED_ELSEWHERE = new Set(['partita_watermark_lag_seconds', 'partita_late_events_total']);

interface Family {
  type: string;
  /** Sample lines (name{labels} value). */
  samples: string[];
}

function parse(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  for (const line of text.split('\n')) {
    const t = /^# TYPE (\S+) (\S+)/.exec(line);
    if (t) {
      families.set(t[1]!, { type: t[2]!, samples: [] });
      continue;
    }
    if (line === '' || line.startsWith('#')) continue;
    const name = /^[a-zA-Z_:][a-zA-Z0-9_:]*/.exec(line)![0];
    const base = families.has(name) ? name : name.replace(/_(bucket|sum|count)$/, '');
    families.get(base)?.samples.push(line);
  }
  return families;
}

const sumOf = (f: Family) =>
  f.samples.filter((s) => !/_bucket\{/.test(s)).reduce((a, s) => a + Number(s.split(' ').pop()), 0);
const labelsOf = (f: Family) =>
  new Set(f.samples.flatMap((s) => [...s.matchAll(/(\w+)="/g)].map((m) => m[1]!)).filter((l) => l !== 'le'));

let nats: TestNats;
let nc: NatsConnection;
let node: PartitaNode;
let gw: RunningGateway;

before(async () => {
  nats = await startTestNats({ partitions: 4 });
  nc = await nats.connect();
  node = await startNode({
    natsUrl: nats.url,
    actorsDir: FIXTURE_ACTORS,
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

it('docs/metrics.md lists metrics, each with a type, a process and when it moves', () => {
  const docs = documentedMetrics();
  assert.ok(docs.length >= 20, `only ${docs.length} metrics parsed from docs/metrics.md`);
  for (const d of docs) {
    assert.match(d.type, /^(counter|gauge|histogram)$/, d.name);
    if (d.type === 'counter') assert.match(d.name, /_total$/, `${d.name}: a counter ends in _total`);
    else assert.doesNotMatch(d.name, /_total$/, `${d.name}: only counters end in _total`);
  }
});

it('every documented metric is on /metrics under load, and moves', async () => {
  const scrape = async (url: string) => parse(await (await fetch(`${url}/metrics`)).text());
  const js = jetstream(nc);
  let running = true;
  let sent = 0;
  // Load: account events (state), risky events that emit to the auditor (events out) and some
  // that throw (dead letters), bursts that leave a backlog (lag), and gateway reads.
  const load = (async () => {
    for (let round = 0; running; round++) {
      const burst = round % 10 === 0 ? 3000 : 100;
      for (let i = 0; i < burst; i++) {
        nc.publish(`events.tx.acct-${i % 50}`, JSON.stringify({ id: sent++, amount: 1 }));
      }
      await js.publish('events.risky.r1', JSON.stringify({ fail: round % 3 === 0 }));
      await fetch(`${gw.url}/v1/actors/account/acct-${round % 50}`);
      await fetch(`${gw.url}/v1/actors/account/none`);
      await new Promise((r) => setTimeout(r, 30));
    }
  })();
  // A push subscriber (SSE), so the gateway's fan-out metrics move too.
  const sse = new AbortController();
  const subscriber = fetch(`${gw.url}/v1/subscribe?actor=account`, { signal: sse.signal })
    .then(async (res) => {
      for await (const _ of res.body!) {
        // read on, so the gateway keeps sending
      }
    })
    .catch(() => undefined);
  const samples: Map<string, Family>[] = [];
  const gwSamples: Map<string, Family>[] = [];
  try {
    await check(
      async () => sumOf((await scrape(node.metricsUrl!)).get('partita_events_applied_total')!) > 0,
      20_000,
      'events applied',
    );
    for (let i = 0; i < 10; i++) {
      samples.push(await scrape(node.metricsUrl!));
      gwSamples.push(await scrape(gw.url));
      // A backlog that takes a while to work off, so lag is seen above 0 and back at it.
      if (i === 1)
        for (let k = 0; k < 60_000; k++) nc.publish(`events.tx.bulk-${k % 500}`, '{"id":-1,"amount":1}');
      if (i === 5) await runReplay(nc, { actor: 'account', fromSeq: 1, who: 'metrics-test' });
      await new Promise((r) => setTimeout(r, 700));
    }
  } finally {
    running = false;
    await load;
    sse.abort();
    await subscriber;
  }

  const problems: string[] = [];
  for (const d of documentedMetrics()) {
    const series = d.process === 'node' ? samples : gwSamples;
    const fams = series.map((s) => s.get(d.name));
    const last = fams[fams.length - 1];
    if (!last) {
      if (!RECORDED_ELSEWHERE.has(d.name)) problems.push(`${d.name}: not on the ${d.process}'s /metrics`);
      continue;
    }
    if (last.type !== d.type) problems.push(`${d.name}: ${last.type}, documented as ${d.type}`);
    const labels = labelsOf(last);
    for (const l of d.labels)
      if (last.samples.length > 0 && !labels.has(l)) problems.push(`${d.name}: no label ${l}`);
    for (const l of labels)
      if (!d.labels.includes(l)) problems.push(`${d.name}: label ${l} is not documented`);
    if (d.moves === 'start' && !(sumOf(last) > 0)) problems.push(`${d.name}: still 0`);
    if (RECORDED_ELSEWHERE.has(d.name) && last.samples.length === 0) continue;
    if (d.moves === 'load') {
      const prints = new Set(fams.map((f) => f?.samples.join('\n') ?? ''));
      if (prints.size < 2 || last.samples.length === 0) problems.push(`${d.name}: did not move under load`);
    }
  }
  assert.deepEqual(problems, []);
  assert.ok(sent > 0);
});

it('every partita_ metric on /metrics is documented', async () => {
  const documented = new Set(documentedMetrics().map((d) => d.name));
  const undocumented: string[] = [];
  for (const url of [node.metricsUrl!, gw.url]) {
    const fams = parse(await (await fetch(`${url}/metrics`)).text());
    for (const name of fams.keys()) {
      // prom-client's default process metrics are documented as a group.
      if (/^partita_(node|gateway)_(process|nodejs)_/.test(name)) continue;
      if (!documented.has(name)) undocumented.push(name);
    }
  }
  assert.deepEqual(undocumented, []);
});
