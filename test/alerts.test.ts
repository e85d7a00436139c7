// The Prometheus rules, their unit tests and the scrape config pass promtool; the rules and the
// Grafana dashboard query only metrics that docs/metrics.md documents (and so the code exports).
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse } from 'yaml';
import { documentedMetrics } from './helpers/metrics-doc.js';

const PROM = fileURLToPath(new URL('../../deploy/prometheus/', import.meta.url));
const DASHBOARD = fileURLToPath(new URL('../../deploy/grafana/partita-dashboard.json', import.meta.url));
const RUNBOOK = fileURLToPath(new URL('../../RUNBOOK.md', import.meta.url));
const PROMTOOL = process.env.PARTITA_PROMTOOL || '/usr/bin/promtool';

function promtool(...args: string[]): string {
  // Not a skip: CI installs Debian's prometheus package, and without promtool the rules are untested.
  assert.ok(
    existsSync(PROMTOOL),
    `promtool not found at ${PROMTOOL}: install Debian's "prometheus" package (apt-get install prometheus) or set PARTITA_PROMTOOL`,
  );
  const r = spawnSync(PROMTOOL, args, { cwd: PROM, encoding: 'utf8' });
  assert.equal(r.status, 0, `promtool ${args.join(' ')}:\n${r.stdout}\n${r.stderr}`);
  return r.stdout;
}

/** Metric names a PromQL expression reads (`partita_*` and `up`), histogram suffixes removed. */
function metricsIn(expr: string): string[] {
  const names = [...expr.matchAll(/\b(partita_[a-z0-9_]+|up)\b/g)].map((m) => m[1]!);
  return names.map((n) => n.replace(/_(bucket|sum|count)$/, ''));
}

const known = () => new Set([...documentedMetrics().map((d) => d.name), 'up']);

interface Rule {
  alert: string;
  expr: string;
  for?: string;
  labels: { severity: string };
  annotations: { summary: string; runbook: string };
}
const rules = (): Rule[] =>
  (parse(readFileSync(join(PROM, 'alerts.yml'), 'utf8')) as { groups: { rules: Rule[] }[] }).groups.flatMap(
    (g) => g.rules,
  );

it('promtool checks the rules and the scrape config', () => {
  assert.match(promtool('check', 'rules', 'alerts.yml'), /SUCCESS: 11 rules found/);
  promtool('check', 'config', 'prometheus.yml');
});

it('promtool test rules: every alert fires when it should and not otherwise', () => {
  promtool('test', 'rules', 'alerts.test.yml');
  // Each rule has at least one firing case and one case where it stays silent.
  const tests = parse(readFileSync(join(PROM, 'alerts.test.yml'), 'utf8')) as {
    tests: { alert_rule_test: { alertname: string; exp_alerts: unknown[] }[] }[];
  };
  const cases = tests.tests.flatMap((t) => t.alert_rule_test);
  for (const r of rules()) {
    const mine = cases.filter((c) => c.alertname === r.alert);
    assert.ok(
      mine.some((c) => c.exp_alerts.length > 0),
      `${r.alert}: no case where it fires`,
    );
    assert.ok(
      mine.some((c) => c.exp_alerts.length === 0),
      `${r.alert}: no case where it stays silent`,
    );
  }
});

it('the seed runbook thresholds: lag over 30 s and checkpoints over 45 s page', () => {
  const byName = new Map(rules().map((r) => [r.alert, r]));
  const lag = byName.get('PartitaConsumerLagHigh')!;
  assert.match(lag.expr, /partita_consumer_lag_seconds\) > 30$/);
  assert.equal(lag.labels.severity, 'page');
  assert.match(byName.get('PartitaCheckpointSlow')!.expr, /partita_checkpoint_seconds_bucket.*> 45$/s);
  for (const a of [
    'PartitaDeadLetterSurge',
    'PartitaWatermarkStalled',
    'PartitaPartitionsUnowned',
    'PartitaNodeDown',
  ]) {
    assert.ok(byName.has(a), a);
  }
});

it('alerts read documented metrics and link a runbook section that exists', () => {
  const names = known();
  const runbook = readFileSync(RUNBOOK, 'utf8');
  const anchors = new Set(
    [...runbook.matchAll(/^#+ (.+)$/gm)].map((m) =>
      m[1]!
        .trim()
        .toLowerCase()
        .replace(/[^\w\s-]/g, '')
        .replace(/\s/g, '-'),
    ),
  );
  for (const r of rules()) {
    for (const m of metricsIn(r.expr))
      assert.ok(names.has(m), `${r.alert} reads ${m}, not in docs/metrics.md`);
    const anchor = r.annotations.runbook.split('#')[1]!;
    assert.ok(anchors.has(anchor), `${r.alert}: RUNBOOK.md has no section #${anchor}`);
  }
});

it('every panel of the Grafana dashboard queries documented metrics only', () => {
  const dash = JSON.parse(readFileSync(DASHBOARD, 'utf8')) as {
    uid: string;
    panels: { type: string; title: string; targets?: { expr: string }[] }[];
  };
  assert.ok(dash.uid);
  const names = known();
  const panels = dash.panels.filter((p) => p.type !== 'row');
  assert.ok(panels.length >= 10);
  const used = new Set<string>();
  for (const p of panels) {
    assert.ok(p.targets && p.targets.length > 0, `${p.title}: no query`);
    for (const t of p.targets) {
      const ms = metricsIn(t.expr);
      assert.ok(ms.length > 0, `${p.title}: ${t.expr} reads no Partita metric`);
      for (const m of ms) {
        assert.ok(names.has(m), `${p.title}: ${m} is not in docs/metrics.md`);
        used.add(m);
      }
    }
  }
  // The dashboard shows what the alerts watch.
  for (const r of rules()) for (const m of metricsIn(r.expr)) assert.ok(used.has(m), `no panel shows ${m}`);
});
