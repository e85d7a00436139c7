// `partita`: the command line. Each long-running command prints one `partita ready ...` line.
import { mkdirSync } from 'node:fs';
import { createServer } from 'node:net';
import { resolve } from 'node:path';
import { parseArgs } from 'node:util';
import { connect } from '@nats-io/transport-node';
import { readAudit } from './audit.js';
import { archiveCommand } from './cli-archive.js';
import { deadLettersCommand } from './cli-dead-letters.js';
import { drillCommand } from './cli-drill.js';
import {
  applyLogFormat,
  type Command,
  connectCli,
  durationMs,
  int,
  LOG_OPTIONS,
  natsUnreachable,
  natsUrlOf,
  ready,
  stopWithin,
  UsageError,
  untilSignal,
  type Values,
} from './cli-kit.js';
import { replayCommand } from './cli-replay.js';
import { schemaCommand } from './cli-schema.js';
import { startDemoProducer } from './demo-producer.js';
import { INJECTED_DEFECTS, type InjectedDefect } from './drill-faults.js';
import { PartitaError } from './errors.js';
import { piiSecretFrom } from './governance.js';
import { createLogger } from './logger.js';
import { type NatsServerHandle, natsServerBinary, startNatsServer } from './nats-server.js';
import { defaultNatsUrl, startNode } from './node.js';
import type { Durability } from './state-store.js';
import { formatStatus, readStatus } from './status.js';
import { ensureTopology } from './topology.js';
import { parseDuration } from './window.js';

const USAGE = `usage: partita <command> [options]

  dev [--demo] [--actors DIR] [--port N] [--nats-port N] [--data DIR] [--partitions N]
      [--events-max-age D] [--aggregates-max-age D] [--pii-secret-file FILE] [--handler-timeout D]
      [--dlq-max-age D] [--dlq-max-bytes N] [--stall-timeout D] [--shutdown-timeout D]
      everything on one machine: a nats-server child, one node, the gateway
  nats [--port N] [--data DIR] [--partitions N] [--events-max-age DURATION]
       [--dlq-max-age D] [--dlq-max-bytes N]
       [--cluster NAME --name NAME [--cluster-port N] [--routes URL,URL]]
      a local nats-server configured for Partita (JetStream, fsync per write); with --cluster,
      one member of a cluster (route port 6222 by default, 0 picks one)
  node --nats URL [--actors DIR] [--data DIR] [--threads N] [--id NAME] [--metrics-port N]
       [--durability sync|process] [--events-max-age D] [--aggregates-max-age D]
       [--pii-secret-file FILE] [--metrics-host ADDR] [--allow-drills] [--handler-timeout D]
       [--dlq-max-age D] [--dlq-max-bytes N] [--stall-timeout D] [--shutdown-timeout D]
       [--atomic-states] [--recovery bucket|changelog]
      one worker node (/metrics, /healthz, /readyz on loopback unless --metrics-host 0.0.0.0);
      retention of raw events (default 90d) and of window results (default 2y), as 90d, 12h, 2y
      or ms (also $PARTITA_EVENTS_MAX_AGE, $PARTITA_AGGREGATES_MAX_AGE); --allow-drills (or
      PARTITA_ALLOW_DRILLS=1) accepts the faults of partita drill; --handler-timeout: longest a
      handler may run on one event (default 5s), past it the event is dead-lettered;
      --atomic-states (or PARTITA_ATOMIC_STATES=1): each batch's state changes as atomic batches
      on nats-server 2.12+ (readers never see part of one), one put each on older servers;
      --recovery (or PARTITA_RECOVERY): where a taken partition's state comes from, the state
      bucket (default) or the partition's changelog (one stored message per batch; the bucket is
      then exported after the ack); all nodes of a deployment must agree
  gateway --nats URL [--port N] [--host ADDR] [--tokens FILE] [--rate-limit N] [--feature-max-age S]
          [--max-feature-cells N] [--allowed-hosts H,H] [--allowed-origins URL,URL]
      the HTTP gateway and live dashboard; tokens from FILE and/or $PARTITA_TOKENS
      (name:secret:scope[+scope],...); without tokens it listens on loopback only; --rate-limit N:
      requests a second per token (or client address), off by default; it answers
      Host names of its address and loopback (and --allowed-hosts, * for any); without tokens,
      push subscriptions only from its own pages (and --allowed-origins)
  status [--nats URL] [--json]
      partitions, owners, lag and checkpoint age
  drill [--nats URL] [--faults crash,stall,handoff] [--count N] [--seed S] [--stall-ms MS]
        [--interval-ms MS] [--recovery-timeout-ms MS] [--report DIR] [--json]
      a chaos drill against a running deployment whose nodes run with --allow-drills: injects
      the faults, times recovery with probes, writes a report, records it in the audit trail
  audit [--nats URL] [--action NAME] [--limit N] [--json]
      the audit trail of admin actions (schema changes, replays, drills): who and when
  schema add <type> <file.json|file.avsc> [--compat MODE] | schema list | schema check <type> <file>
      the schema registry: register a version (checked under BACKWARD, FORWARD, FULL, NONE or
      a *_TRANSITIVE mode), list the latest versions, check a schema without registering it
  archive [--nats URL] [--dir DIR] [--pii-secret-file FILE] [--flush-ms N] [--max-events N]
      the compliance archive: every raw event, masked, as Parquet files partitioned by hour
  replay --actor A [--partition P] (--from-seq N | --from-time T) [--nats URL] [--json]
         [--timeout SECONDS] [--owner-wait SECONDS]
      rebuild actor A's state from the input streams with the handler the nodes run now
      (after a handler fix); run by each partition's owner under its lease, audited
  dead-letters [--nats URL] [--since 1h] [--type T] [--limit N] [--json]
      dead letters over a recent window by code, type and actor, and the latest ones

--nats defaults to $PARTITA_NATS, else nats://127.0.0.1:4222.
--log-format auto|json|pretty (dev, nats, node, gateway, archive): logs go to stderr, readable on a
  terminal and JSON otherwise (auto, the default; also $PARTITA_LOG_FORMAT), or as asked.
--events-max-age: how long the input streams keep raw events (90d, 36h, ...; 0 keeps them forever),
  default $PARTITA_EVENTS_MAX_AGE, else 90d. --pii-secret-file: the key of x-pii "hash" fields,
  default $PARTITA_PII_SECRET; give every node and the archive the same one.
--dlq-max-age / --dlq-max-bytes: retention of dead letters (default 30d and 1g; 0: no limit), also
  $PARTITA_DLQ_MAX_AGE, $PARTITA_DLQ_MAX_BYTES. --stall-timeout: /readyz fails while a partition has
  work waiting and no progress for this long (default 60s). --shutdown-timeout: a stop that takes
  longer exits 1 anyway (default 20s); a second SIGTERM or SIGINT exits at once.`;

/** `preferred` when it is free on loopback, else 0 (any free port): the ready line names the one used. */
async function freeOr(preferred: number): Promise<number> {
  return new Promise((res) => {
    const srv = createServer();
    srv.once('error', () => res(0));
    srv.listen(preferred, '127.0.0.1', () => srv.close(() => res(preferred)));
  });
}

/** `$PARTITA_INJECT_DEFECT`: deliberate defects, for proving that the chaos harness catches them. */
function defectsOf(v: string | undefined): InjectedDefect[] | undefined {
  if (!v) return undefined;
  const list = v.split(',');
  for (const d of list) {
    if (!INJECTED_DEFECTS.includes(d as InjectedDefect))
      throw new UsageError(
        `PARTITA_INJECT_DEFECT: unknown defect "${d}" (known: ${INJECTED_DEFECTS.join(', ')})`,
      );
  }
  return list as InjectedDefect[];
}

/** `--events-max-age`, else `$PARTITA_EVENTS_MAX_AGE`; undefined keeps the deployment's. */
function eventsMaxAgeOf(v: Values): number | undefined {
  const raw =
    (v['events-max-age'] as string | undefined) ?? (process.env.PARTITA_EVENTS_MAX_AGE || undefined);
  return durationMs(raw, 'events-max-age');
}

/** `--dlq-max-bytes`: bytes, or with a binary unit (512m, 2g); 0 means no limit. */
function bytesOf(v: string | undefined, name: string): number | undefined {
  if (v === undefined) return undefined;
  const m = /^(\d+)\s*([kmg])?i?b?$/i.exec(v.trim());
  if (!m) throw new UsageError(`--${name} must be a size such as 1073741824, 512m or 2g, got "${v}"`);
  const n = Number(m[1]) * 1024 ** ' kmg'.indexOf((m[2] ?? ' ').toLowerCase());
  return n === 0 ? -1 : n;
}

/** `--dlq-max-age` and `--dlq-max-bytes`: the retention of PARTITA_DLQ. */
function dlqRetentionOf(v: Values): { dlqMaxAgeMs?: number; dlqMaxBytes?: number } {
  return {
    dlqMaxAgeMs: durationMs(v['dlq-max-age'] as string | undefined, 'dlq-max-age'),
    dlqMaxBytes: bytesOf(v['dlq-max-bytes'] as string | undefined, 'dlq-max-bytes'),
  };
}

const DLQ_OPTIONS = { 'dlq-max-age': { type: 'string' }, 'dlq-max-bytes': { type: 'string' } } as const;
/** How long a node may take to stop before it exits anyway, and when a stuck partition fails /readyz. */
const LIFECYCLE_OPTIONS = {
  'shutdown-timeout': { type: 'string' },
  'stall-timeout': { type: 'string' },
} as const;
const DEFAULT_SHUTDOWN_MS = 20_000;

/** `--stall-timeout` as the node's stall threshold. */
function stallOf(v: Values): { stallThresholdMs?: number } {
  return { stallThresholdMs: durationMs(v['stall-timeout'] as string | undefined, 'stall-timeout') };
}

/** A port nats-server could not bind, as one line naming it and the option that picks another. */
function portTaken(err: unknown, option: string): unknown {
  if (err instanceof PartitaError && /address already in use/.test(err.message))
    return new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${err.message.split(': ').slice(1).join(': ')}; stop what listens there, or choose another port with ${option} N`,
    );
  return err;
}

/** `--events-max-age` and `--aggregates-max-age` as node options (durations like 90d, 2y, or ms). */
function retentionOf(v: Values): { eventsMaxAgeMs?: number; aggregatesMaxAgeMs?: number } {
  const ms = (name: string) => {
    const s = v[name] as string | undefined;
    if (s === undefined) return undefined;
    try {
      return parseDuration(/^\d+$/.test(s) ? Number(s) : s, `--${name}`);
    } catch (err) {
      throw new UsageError((err as Error).message);
    }
  };
  return { eventsMaxAgeMs: ms('events-max-age'), aggregatesMaxAgeMs: ms('aggregates-max-age') };
}

function durabilityOf(v: unknown): Durability | undefined {
  if (v === undefined) return undefined;
  if (v === 'sync' || v === 'process') return v;
  throw new UsageError(`--durability must be sync or process, got "${String(v)}"`);
}

/** One line naming the nats-server a command runs, its version and binary. */
function logNatsServer(server: NatsServerHandle): void {
  createLogger({ component: 'nats-server' }).info(
    { version: server.version.text, binary: natsServerBinary(), url: server.url },
    `nats-server ${server.version.text}`,
  );
}

const COMMANDS: Record<string, Command> = {
  nats: {
    options: {
      port: { type: 'string' },
      data: { type: 'string' },
      partitions: { type: 'string' },
      cluster: { type: 'string' },
      'cluster-port': { type: 'string' },
      routes: { type: 'string' },
      name: { type: 'string' },
      'events-max-age': { type: 'string' },
      ...DLQ_OPTIONS,
      ...LOG_OPTIONS,
    },
    async run(v) {
      const partitions = int(v.partitions as string | undefined, 'partitions');
      const name = v.name as string | undefined;
      const clusterName = v.cluster as string | undefined;
      if (!clusterName && (v['cluster-port'] !== undefined || v.routes !== undefined)) {
        throw new UsageError('--cluster-port and --routes need --cluster NAME');
      }
      if (clusterName && !name) {
        // JetStream knows a member by its server name: it must be unique and survive restarts.
        throw new UsageError(
          '--cluster needs --name NAME, unique in the cluster and the same across restarts',
        );
      }
      const dlq = dlqRetentionOf(v);
      const server = await startNatsServer({
        port: int(v.port as string | undefined, 'port') ?? 4222,
        dataDir: resolve(
          (v.data as string | undefined) ?? (clusterName ? `.partita/nats-${name}` : '.partita/nats'),
        ),
        partitions,
        serverName: name,
        cluster: clusterName
          ? {
              name: clusterName,
              port: int(v['cluster-port'] as string | undefined, 'cluster-port') ?? 6222,
              routes: ((v.routes as string | undefined) ?? '').split(',').filter((r) => r !== ''),
            }
          : undefined,
      }).catch((err) => {
        throw portTaken(
          err,
          clusterName && /:\d+: address/.test(String(err)) ? '--port or --cluster-port' : '--port',
        );
      });
      logNatsServer(server);
      // A cluster member does not create the topology: JetStream has no meta leader until enough
      // members run, and the ready line must not wait for the others. Nodes create the topology
      // (idempotently) when they start.
      if (!clusterName) {
        const nc = await connect({ servers: server.url });
        await ensureTopology(nc, { partitions, eventsMaxAgeMs: eventsMaxAgeOf(v), ...dlq });
        await nc.close();
      }
      ready({ nats: server.url, cluster: server.clusterUrl });
      const exited = new Promise<'exit'>((r) => server.process.once('exit', () => r('exit')));
      const why = await Promise.race([untilSignal(), exited]);
      if (why === 'exit') return 1;
      await server.stop();
      return 0;
    },
  },
  node: {
    options: {
      nats: { type: 'string' },
      actors: { type: 'string' },
      data: { type: 'string' },
      threads: { type: 'string' },
      id: { type: 'string' },
      'metrics-port': { type: 'string' },
      'metrics-host': { type: 'string' },
      partitions: { type: 'string' },
      durability: { type: 'string' },
      'allow-drills': { type: 'boolean' },
      'atomic-states': { type: 'boolean' },
      recovery: { type: 'string' },
      'pii-secret-file': { type: 'string' },
      'events-max-age': { type: 'string' },
      'aggregates-max-age': { type: 'string' },
      'handler-timeout': { type: 'string' },
      ...DLQ_OPTIONS,
      ...LIFECYCLE_OPTIONS,
      ...LOG_OPTIONS,
    },
    async run(v) {
      const id = v.id as string | undefined;
      const dataDir = resolve((v.data as string | undefined) ?? '.partita/node');
      mkdirSync(dataDir, { recursive: true });
      const natsUrl = (v.nats as string | undefined) ?? defaultNatsUrl();
      const shutdownMs = durationMs(v['shutdown-timeout'] as string | undefined, 'shutdown-timeout');
      // Listening from before the start: without a listener, a SIGINT or SIGTERM that comes after
      // the node logged "node running" but before this command listens kills the process at once
      // (seen in CI). One that comes during the start stops the node once it has started; a second
      // one still kills it at once.
      const signalled = untilSignal();
      const node = await startNode({
        natsUrl,
        actorsDir: v.actors as string | undefined,
        dataDir,
        threads: int(v.threads as string | undefined, 'threads'),
        id,
        metricsPort: int(v['metrics-port'] as string | undefined, 'metrics-port') ?? 0,
        metricsHost: v['metrics-host'] as string | undefined,
        partitions: int(v.partitions as string | undefined, 'partitions'),
        durability: durabilityOf(v.durability),
        allowDrills: v['allow-drills'] === true || process.env.PARTITA_ALLOW_DRILLS === '1',
        atomicStates: v['atomic-states'] === true || process.env.PARTITA_ATOMIC_STATES === '1',
        ...recoveryOption(v.recovery),
        faults: defectsOf(process.env.PARTITA_INJECT_DEFECT),
        piiSecret: piiSecretFrom(v['pii-secret-file'] as string | undefined),
        handlerTimeoutMs: durationMs(v['handler-timeout'] as string | undefined, 'handler-timeout'),
        ...retentionOf(v),
        ...dlqRetentionOf(v),
        ...stallOf(v),
      }).catch((err) => {
        throw natsUnreachable(err, natsUrl);
      });
      ready({ node: node.id, metrics: node.metricsUrl, nats: node.natsUrl });
      await signalled;
      return stopWithin(
        'node',
        shutdownMs ?? DEFAULT_SHUTDOWN_MS,
        () => node.stop(),
        () => node.stopping(),
      );
    },
  },
  gateway: {
    options: {
      nats: { type: 'string' },
      port: { type: 'string' },
      host: { type: 'string' },
      tokens: { type: 'string' },
      'rate-limit': { type: 'string' },
      'feature-max-age': { type: 'string' },
      'max-feature-cells': { type: 'string' },
      'allowed-hosts': { type: 'string' },
      'allowed-origins': { type: 'string' },
      ...LOG_OPTIONS,
    },
    async run(v) {
      const { startGateway, loadTokensFile, parseTokenList } = await import('../gateway/index.js');
      const list = (s: unknown) =>
        typeof s === 'string'
          ? s
              .split(',')
              .map((x) => x.trim())
              .filter((x) => x !== '')
          : undefined;
      const tokens = [
        ...(v.tokens ? loadTokensFile(resolve(v.tokens as string)) : []),
        ...parseTokenList(process.env.PARTITA_TOKENS ?? ''),
      ];
      const perSecond = int(v['rate-limit'] as string | undefined, 'rate-limit');
      const natsUrl = (v.nats as string | undefined) ?? defaultNatsUrl();
      const gw = await startGateway({
        natsUrl: v.nats as string | undefined,
        port: int(v.port as string | undefined, 'port') ?? 8080,
        host: v.host as string | undefined,
        tokens,
        rateLimit: perSecond === undefined ? undefined : { max: perSecond, windowMs: 1000 },
        featureMaxAgeSeconds: int(v['feature-max-age'] as string | undefined, 'feature-max-age'),
        maxFeatureCells: int(v['max-feature-cells'] as string | undefined, 'max-feature-cells'),
        allowedHosts: list(v['allowed-hosts']),
        allowedOrigins: list(v['allowed-origins']),
      }).catch((err) => {
        throw natsUnreachable(err, natsUrl);
      });
      ready({ gateway: gw.url, nats: (v.nats as string | undefined) ?? defaultNatsUrl() });
      await untilSignal();
      await gw.stop();
      return 0;
    },
  },
  dev: {
    options: {
      demo: { type: 'boolean' },
      actors: { type: 'string' },
      port: { type: 'string' },
      'nats-port': { type: 'string' },
      data: { type: 'string' },
      partitions: { type: 'string' },
      'events-max-age': { type: 'string' },
      'pii-secret-file': { type: 'string' },
      'aggregates-max-age': { type: 'string' },
      'handler-timeout': { type: 'string' },
      ...DLQ_OPTIONS,
      ...LIFECYCLE_OPTIONS,
      ...LOG_OPTIONS,
    },
    async run(v) {
      const dataDir = resolve((v.data as string | undefined) ?? '.partita/dev');
      const eventsMaxAgeMs = eventsMaxAgeOf(v);
      const piiSecret = piiSecretFrom(v['pii-secret-file'] as string | undefined);
      const partitions = int(v.partitions as string | undefined, 'partitions');
      const shutdownMs = durationMs(v['shutdown-timeout'] as string | undefined, 'shutdown-timeout');
      const dlq = dlqRetentionOf(v);
      const server = await startNatsServer({
        port: int(v['nats-port'] as string | undefined, 'nats-port') ?? (await freeOr(4222)),
        dataDir: resolve(dataDir, 'nats'),
        partitions,
      }).catch((err) => {
        throw portTaken(err, '--nats-port');
      });
      logNatsServer(server);
      let node: Awaited<ReturnType<typeof startNode>> | undefined;
      const stops: (() => Promise<void>)[] = [() => server.stop()];
      try {
        if (eventsMaxAgeMs !== undefined) {
          const admin = await connect({ servers: server.url });
          await ensureTopology(admin, { partitions, eventsMaxAgeMs }).finally(() => admin.close());
        }
        node = await startNode({
          natsUrl: server.url,
          actorsDir: v.actors as string | undefined,
          dataDir: resolve(dataDir, 'node'),
          id: 'dev',
          metricsPort: 0,
          partitions,
          piiSecret,
          handlerTimeoutMs: durationMs(v['handler-timeout'] as string | undefined, 'handler-timeout'),
          ...retentionOf(v),
          ...dlq,
          ...stallOf(v),
        });
        const started = node;
        stops.unshift(() => started.stop());
        const { startGateway } = await import('../gateway/index.js');
        const port = int(v.port as string | undefined, 'port') ?? 8080;
        const gw = await startGateway({ natsUrl: server.url, port }).catch(
          (err: Error & { code?: string }) => {
            if (err.code !== 'EADDRINUSE') throw err;
            throw new UsageError(
              `port ${port} is already in use (the gateway's): stop what listens there, or choose another port with --port N`,
            );
          },
        );
        stops.unshift(() => gw.stop());
        if (v.demo) {
          const nc = await connect({ servers: server.url, name: 'partita-demo' });
          const demo = startDemoProducer(nc);
          stops.unshift(async () => {
            demo.stop();
            await nc.drain();
          });
        }
        ready({ gateway: gw.url, nats: server.url, metrics: node.metricsUrl });
        if (v.demo) {
          process.stderr.write(
            `demo: open the dashboard at ${gw.url}/, or read ${gw.url}/v1/actors/warehouse/ams-1 (exceptions and SLA breaches per minute) or ${gw.url}/v1/actors/campaign/cmp-3 (CTR at 1m/5m/1h, anomaly flag); Ctrl-C stops\n`,
          );
        }
        await untilSignal();
      } catch (err) {
        for (const stop of stops) await stop().catch(() => undefined);
        throw err;
      }
      // Whatever ends the stop, the nats-server goes with this process (see nats-server.ts).
      return stopWithin(
        'dev',
        shutdownMs ?? DEFAULT_SHUTDOWN_MS,
        async () => {
          for (const stop of stops) await stop().catch(() => undefined);
        },
        () => node?.stopping() ?? '',
      );
    },
  },
  status: {
    options: { nats: { type: 'string' }, json: { type: 'boolean' } },
    async run(v) {
      const nc = await connectCli(natsUrlOf(v));
      try {
        const s = await readStatus(nc);
        process.stdout.write(v.json ? `${JSON.stringify(s, null, 2)}\n` : `${formatStatus(s)}\n`);
      } finally {
        await nc.close();
      }
      return 0;
    },
  },
};

const audit: Command = {
  options: {
    nats: { type: 'string' },
    action: { type: 'string' },
    limit: { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(v) {
    const nc = await connectCli(natsUrlOf(v));
    try {
      const records = await readAudit(nc, {
        action: v.action as string | undefined,
        limit: int(v.limit as string | undefined, 'limit'),
      });
      if (v.json) process.stdout.write(`${JSON.stringify(records, null, 2)}\n`);
      else {
        for (const r of records) {
          const detail = r.details ? ` ${JSON.stringify(r.details)}` : '';
          process.stdout.write(`${r.at}  ${r.who}  ${r.action}${r.target ? ` ${r.target}` : ''}${detail}\n`);
        }
      }
    } finally {
      await nc.close();
    }
    return 0;
  },
};
COMMANDS.audit = audit;
COMMANDS.drill = drillCommand;
COMMANDS.schema = schemaCommand;
COMMANDS.archive = archiveCommand;
COMMANDS.replay = replayCommand;
COMMANDS['dead-letters'] = deadLettersCommand;

export async function main(argv: string[]): Promise<number> {
  const [name, ...rest] = argv;
  if (!name || name === '--help' || name === '-h' || name === 'help') {
    process.stdout.write(`${USAGE}\n`);
    return name ? 0 : 2;
  }
  const cmd = COMMANDS[name];
  if (!cmd) {
    process.stderr.write(`partita: unknown command "${name}"\n${USAGE}\n`);
    return 2;
  }
  let values: Values;
  let positionals: string[];
  try {
    const parsed = parseArgs({
      args: rest,
      options: cmd.options,
      strict: true,
      allowPositionals: !!cmd.positionals,
    });
    values = parsed.values as Values;
    positionals = parsed.positionals;
  } catch (err) {
    process.stderr.write(`partita ${name}: ${(err as Error).message}\n${USAGE}\n`);
    return 2;
  }
  try {
    applyLogFormat(values);
    return await cmd.run(values, positionals);
  } catch (err) {
    if (err instanceof UsageError) {
      process.stderr.write(`partita ${name}: ${err.message}\n`);
      return 2;
    }
    const e = err as Error & { code?: string };
    process.stderr.write(`partita ${name}: ${e.code ? `${e.code}: ` : ''}${e.message}\n`);
    return 1;
  }
}

/** `--recovery`, checked: a misspelt mode must not quietly run the default. */
function recoveryOption(v: unknown): { recovery?: 'bucket' | 'changelog' } {
  if (v === undefined) return {};
  if (v === 'bucket' || v === 'changelog') return { recovery: v };
  throw new UsageError(`--recovery must be bucket or changelog, got "${String(v)}"`);
}
