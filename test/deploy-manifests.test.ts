// The deployment manifests, checked by structure: there is no Docker engine or Kubernetes here, so
// docker-compose.yml, the Kubernetes manifests and the NATS Helm values are parsed and held to what
// the runtime expects (commands, ports, volumes). The NATS configs they
// carry are checked by nats-server itself.
import assert from 'node:assert/strict';
import { spawnSync } from 'node:child_process';
import { existsSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { it } from 'node:test';
import { fileURLToPath } from 'node:url';
import { parse, parseAllDocuments } from 'yaml';
import { natsServerBinary } from '../runtime/index.js';
import { tempDir } from './helpers/nats.js';
import { PARTITA_BIN } from './helpers/node-process.js';

const DEPLOY = fileURLToPath(new URL('../../deploy/', import.meta.url));
const read = (f: string) => readFileSync(join(DEPLOY, f), 'utf8');

/**
 * A partita command line (without the binary) parses: run it against a NATS address where nothing
 * listens, so it gets past option parsing (exit 2 is a usage error) and fails to connect.
 */
function assertPartitaArgs(args: string[], where: string): void {
  const local = args.map((a, i) => (args[i - 1] === '--data' ? tempDir('partita-args-') : a));
  const r = spawnSync(process.execPath, [PARTITA_BIN, ...local, '--nats', 'nats://127.0.0.1:1'], {
    encoding: 'utf8',
    timeout: 30_000,
    env: { ...process.env, PARTITA_LOG_LEVEL: 'silent' },
  });
  assert.notEqual(r.status, 2, `${where}: partita ${args.join(' ')}: ${r.stderr}`);
  assert.doesNotMatch(r.stderr, /unknown|usage/i, `${where}: ${r.stderr}`);
}

interface Service {
  image?: string;
  command?: string[];
  entrypoint?: string[];
  volumes?: string[];
  ports?: string[];
  environment?: Record<string, string>;
  profiles?: string[];
}

it('docker-compose.yml: NATS ×3 with the cluster configs, nodes ×3, the gateway and Prometheus', () => {
  const compose = parse(read('docker-compose.yml'), { merge: true }) as {
    services: Record<string, Service>;
    volumes: Record<string, unknown>;
  };
  const s = compose.services;
  for (const n of [1, 2, 3]) {
    const nats = s[`nats-${n}`]!;
    assert.match(nats.image!, /^nats:2\.\d+/);
    assert.deepEqual(nats.command, ['-c', '/etc/nats/nats.conf']);
    assert.ok(nats.volumes!.includes(`./compose/nats-${n}.conf:/etc/nats/nats.conf:ro`));
    assert.ok(existsSync(join(DEPLOY, `compose/nats-${n}.conf`)));
    const conf = read(`compose/nats-${n}.conf`);
    for (const m of [1, 2, 3])
      assert.ok(conf.includes(`nats-route://nats-${m}:6222`), `nats-${n} routes to nats-${m}`);
    assert.ok(conf.includes(`server_name: partita-${n}`));

    const node = s[`node-${n}`]!;
    assert.equal(node.image, s.gateway!.image);
    assertPartitaArgs(node.command!, `node-${n}`);
    assert.deepEqual(node.command!.slice(0, 5), ['node', '--id', `node-${n}`, '--data', '/data']);
    assert.ok(node.command!.includes('--metrics-host'));
    assert.ok(node.volumes!.includes(`node-${n}:/data`));
    assert.equal(node.environment!.PARTITA_NATS, 'nats://nats-1:4222,nats://nats-2:4222,nats://nats-3:4222');
  }
  assertPartitaArgs(s.gateway!.command!, 'gateway');
  assert.ok(s.gateway!.ports!.includes('8080:8080'));
  assert.match(s.gateway!.environment!.PARTITA_TOKENS!, /^prometheus:[^:]+:read/);
  const promToken = readFileSync(join(DEPLOY, 'prometheus/secrets/gateway-token'), 'utf8').trim();
  assert.ok(s.gateway!.environment!.PARTITA_TOKENS!.includes(`prometheus:${promToken}:`));
  assert.ok(s.prometheus!.volumes!.includes('./prometheus:/etc/prometheus:ro'));
  // Every named volume is declared; every bind mount exists.
  for (const svc of Object.values(s)) {
    for (const v of svc.volumes ?? []) {
      const src = v.split(':')[0]!;
      if (src.startsWith('.')) assert.ok(existsSync(join(DEPLOY, src)), `${src} exists`);
      else assert.ok(src in compose.volumes, `volume ${src} declared`);
    }
  }
  // The Prometheus targets are the compose services on their metrics ports.
  const prom = parse(read('prometheus/prometheus.yml')) as {
    scrape_configs: { job_name: string; static_configs: { targets: string[] }[] }[];
  };
  const targets = prom.scrape_configs.find((j) => j.job_name === 'partita-node')!.static_configs[0]!.targets;
  assert.deepEqual(targets, ['node-1:9464', 'node-2:9464', 'node-3:9464']);
  const dockerfile = read('Dockerfile');
  assert.match(dockerfile, /ENTRYPOINT \["node", "\/app\/bin\/partita.js"\]/);
  assert.match(dockerfile, /VOLUME \["\/data"\]/);
});

interface K8sDoc {
  kind: string;
  metadata: { name: string; labels?: Record<string, string> };
  spec: Record<string, unknown> & {
    selector?: { matchLabels?: Record<string, string> } & Record<string, string>;
    template?: {
      metadata: { labels: Record<string, string> };
      spec: {
        terminationGracePeriodSeconds?: number;
        containers: {
          image: string;
          args: string[];
          ports: { name: string; containerPort: number }[];
          readinessProbe: { httpGet: { path: string; port: string } };
          livenessProbe: { httpGet: { path: string; port: string } };
          volumeMounts?: { name: string; mountPath: string }[];
          envFrom?: { configMapRef?: { name: string }; secretRef?: { name: string } }[];
        }[];
      };
    };
  };
}

it('Kubernetes: a StatefulSet of nodes with a volume for LMDB, a headless Service, the gateway', () => {
  const docs = ['configmap.yaml', 'node.yaml', 'gateway.yaml'].flatMap((f) =>
    parseAllDocuments(read(`k8s/${f}`)).map((d) => d.toJS() as K8sDoc),
  );
  const find = (kind: string, name: string) => {
    const d = docs.find((x) => x.kind === kind && x.metadata.name === name);
    assert.ok(d, `${kind}/${name}`);
    return d!;
  };
  const kustomize = parse(read('k8s/kustomization.yaml')) as { resources: string[] };
  assert.deepEqual(kustomize.resources.sort(), ['configmap.yaml', 'gateway.yaml', 'node.yaml']);
  const cm = find('ConfigMap', 'partita') as unknown as { data: Record<string, string> };
  assert.match(cm.data.PARTITA_NATS!, /^nats:\/\//);

  const sts = find('StatefulSet', 'partita-node');
  const svc = find('Service', 'partita-node');
  assert.equal(sts.spec.serviceName, 'partita-node');
  assert.equal(svc.spec.clusterIP, 'None');
  const podLabels = sts.spec.template!.metadata.labels;
  for (const [k, v] of Object.entries(sts.spec.selector!.matchLabels!)) assert.equal(podLabels[k], v);
  for (const [k, v] of Object.entries(svc.spec.selector as Record<string, string>))
    assert.equal(podLabels[k], v);
  const c = sts.spec.template!.spec.containers[0]!;
  assertPartitaArgs(c.args, 'StatefulSet');
  const dataDir = c.args[c.args.indexOf('--data') + 1];
  const claims = sts.spec.volumeClaimTemplates as { metadata: { name: string } }[];
  const mount = c.volumeMounts!.find((m) => m.mountPath === dataDir);
  assert.ok(mount, `the --data dir ${dataDir} is a mounted volume`);
  assert.ok(
    claims.some((v) => v.metadata.name === mount!.name),
    'the data volume comes from volumeClaimTemplates',
  );
  assert.equal(c.args[c.args.indexOf('--id') + 1], '$(POD_NAME)', 'the node id is the stable pod name');
  const metricsPort = Number(c.args[c.args.indexOf('--metrics-port') + 1]);
  assert.deepEqual(c.ports, [{ name: 'metrics', containerPort: metricsPort }]);
  assert.equal(c.readinessProbe.httpGet.path, '/readyz');
  assert.equal(c.livenessProbe.httpGet.path, '/healthz');
  assert.ok(c.envFrom!.some((e) => e.configMapRef?.name === 'partita'));
  assert.ok(sts.spec.template!.spec.terminationGracePeriodSeconds! >= 30, 'time to hand partitions over');

  const gw = find('Deployment', 'partita-gateway');
  const gwSvc = find('Service', 'partita-gateway');
  const g = gw.spec.template!.spec.containers[0]!;
  assertPartitaArgs(g.args, 'gateway Deployment');
  assert.equal(g.image, c.image);
  const port = Number(g.args[g.args.indexOf('--port') + 1]);
  assert.equal(g.ports[0]!.containerPort, port);
  assert.ok(g.envFrom!.some((e) => e.secretRef?.name === 'partita-gateway-tokens'));
  for (const [k, v] of Object.entries(gwSvc.spec.selector as Record<string, string>))
    assert.equal(gw.spec.template!.metadata.labels[k], v);
});

it('Helm values for the NATS chart: 3 servers, JetStream on files, no mapping, a config nats-server accepts', () => {
  const v = parse(read('helm/nats-values.yaml')) as {
    config: {
      cluster: { enabled: boolean; replicas: number };
      jetstream: {
        enabled: boolean;
        fileStore: { enabled: boolean; pvc: { enabled: boolean } };
        merge: Record<string, string>;
      };
      merge?: Record<string, unknown>;
    };
  };
  assert.equal(v.config.cluster.enabled, true);
  assert.equal(v.config.cluster.replicas, 3);
  assert.equal(v.config.jetstream.enabled, true);
  assert.equal(v.config.jetstream.fileStore.enabled, true);
  assert.equal(v.config.jetstream.fileStore.pvc.enabled, true);
  assert.equal(v.config.merge?.mappings, undefined, 'no server-side mapping');
  assert.equal(v.config.jetstream.merge.sync_interval, 'always');
  // The chart writes `merge` into nats.conf as JSON: nats-server must accept it.
  const dir = tempDir('partita-helm-');
  const conf = join(dir, 'nats.conf');
  const js = { store_dir: dir, ...v.config.jetstream.merge };
  writeFileSync(conf, `jetstream ${JSON.stringify(js)}\n${JSON.stringify(v.config.merge ?? {}, null, 2)}\n`);
  const r = spawnSync(natsServerBinary(), ['-c', conf, '-t'], {
    encoding: 'utf8',
  });
  assert.equal(r.status, 0, r.stderr);
});
