// Starts a local nats-server configured for Partita: JetStream plus the partition mapping.
// Used by `partita nats`, `partita dev`, the tests and the benchmarks alike.
import { type ChildProcess, spawn } from 'node:child_process';
import { mkdirSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { PartitaError } from './errors.js';
import { partitionMapping } from './subjects.js';

export interface NatsServerOptions {
  /** Client port; 0 picks a free one. @default 4222 */
  port?: number;
  /** Directory for the config file and the JetStream store. */
  dataDir: string;
  /** Partition count of the `events.*.*` mapping. @default 16 */
  partitions?: number;
  /** @default '127.0.0.1' */
  host?: string;
  serverName?: string;
  /** Cluster settings for a member of a multi-server cluster. */
  cluster?: { name: string; port: number; routes: string[] };
  /** Forward the server's own log to this process's stderr. @default false */
  verbose?: boolean;
}

export interface NatsServerHandle {
  readonly url: string;
  readonly port: number;
  readonly process: ChildProcess;
  readonly configFile: string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

export function natsServerBinary(): string {
  return process.env.PARTITA_NATS_SERVER || 'nats-server';
}

/** The nats-server config text Partita needs: JetStream and the mapping that assigns partitions. */
export function natsConfig(opts: NatsServerOptions & { portsDir?: string }): string {
  const partitions = opts.partitions ?? 16;
  const lines = [
    `server_name: ${JSON.stringify(opts.serverName ?? `partita-${process.pid}`)}`,
    `host: ${JSON.stringify(opts.host ?? '127.0.0.1')}`,
    `port: ${opts.port === 0 || opts.port === undefined ? -1 : opts.port}`,
  ];
  if (opts.portsDir) lines.push(`ports_file_dir: ${JSON.stringify(opts.portsDir)}`);
  lines.push(`jetstream { store_dir: ${JSON.stringify(join(opts.dataDir, 'jetstream'))} }`);
  lines.push('mappings {');
  for (const [from, to] of Object.entries(partitionMapping(partitions))) {
    lines.push(`  ${JSON.stringify(from)}: ${JSON.stringify(to)}`);
  }
  lines.push('}');
  if (opts.cluster) {
    lines.push('cluster {');
    lines.push(`  name: ${JSON.stringify(opts.cluster.name)}`);
    lines.push(`  listen: ${JSON.stringify(`${opts.host ?? '127.0.0.1'}:${opts.cluster.port}`)}`);
    lines.push(`  routes: [${opts.cluster.routes.map((r) => JSON.stringify(r)).join(', ')}]`);
    lines.push('}');
  }
  return `${lines.join('\n')}\n`;
}

/** Starts nats-server as a child process and resolves once it accepts clients. */
export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServerHandle> {
  mkdirSync(opts.dataDir, { recursive: true });
  const portsDir = join(opts.dataDir, 'ports');
  mkdirSync(portsDir, { recursive: true });
  for (const f of readdirSync(portsDir)) writeFileSync(join(portsDir, f), '');
  const configFile = join(opts.dataDir, 'nats-server.conf');
  writeFileSync(configFile, natsConfig({ ...opts, portsDir }));
  // Its own process group: a Ctrl-C meant for us must not stop the server before our nodes have
  // checkpointed; we stop it last, and kill it if we exit first.
  const child = spawn(natsServerBinary(), ['-c', configFile], {
    stdio: ['ignore', 'ignore', opts.verbose ? 'inherit' : 'pipe'],
    detached: true,
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  child.once('exit', () => process.removeListener('exit', killOnExit));
  let stderr = '';
  child.stderr?.on('data', (d: Buffer) => {
    stderr = (stderr + d.toString()).slice(-4000);
  });
  let exited: number | null = null;
  const exit = new Promise<void>((resolve) => {
    child.once('exit', (code) => {
      exited = code ?? -1;
      resolve();
    });
  });
  child.once('error', (err) => {
    stderr += String(err);
  });
  const portsFile = () => readdirSync(portsDir).find((f) => f.endsWith(`_${child.pid}.ports`));
  const deadline = Date.now() + 15_000;
  let url: string | undefined;
  while (Date.now() < deadline && exited === null) {
    const f = portsFile();
    if (f) {
      try {
        const ports = JSON.parse(readFileSync(join(portsDir, f), 'utf8')) as { nats?: string[] };
        url = ports.nats?.[0];
        if (url) break;
      } catch {
        // The file is being written; try again.
      }
    }
    await sleep(20);
  }
  if (!url) {
    child.kill('SIGKILL');
    throw new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${natsServerBinary()}: ${stderr.trim() || 'no ports file'}`,
    );
  }
  const port = Number(new URL(url).port);
  return {
    url,
    port,
    process: child,
    configFile,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (exited !== null) return;
      child.kill(signal);
      await exit;
    },
  };
}
