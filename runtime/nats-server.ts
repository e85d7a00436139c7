// Starts a local nats-server configured for Partita: JetStream plus the partition mapping, alone or
// as a member of a cluster. Used by `partita nats`, `partita dev`, the tests and the benchmarks.
import { type ChildProcess, execFileSync, spawn } from 'node:child_process';
import { randomBytes } from 'node:crypto';
import { existsSync, mkdirSync, readdirSync, readFileSync, rmSync, writeFileSync } from 'node:fs';
import { createServer, type Server } from 'node:net';
import { dirname, join } from 'node:path';
import { setTimeout as sleep } from 'node:timers/promises';
import { fileURLToPath } from 'node:url';
import { jetstreamManager, StorageType } from '@nats-io/jetstream';
import { connect } from '@nats-io/transport-node';
import { PartitaError } from './errors.js';
import { partitionMapping } from './subjects.js';

export interface NatsServerOptions {
  /** Client port; 0 picks a free one. @default 4222 */
  port?: number;
  /** Directory for the config file and the JetStream store. */
  dataDir: string;
  /** Partition count of the `events.*.*` mapping (with `mapping` only). @default 16 */
  partitions?: number;
  /**
   * Configure the server-side `partition()` mapping of `events.*.*` as deployments before 2.10
   * streams did. Partita no longer needs it (the ingest stream's transform partitions); it stays
   * for tests of deployments that have it. @default false
   */
  mapping?: boolean;
  /** @default '127.0.0.1' */
  host?: string;
  /** Unique per member of a cluster: JetStream's peers are named after it. @default `partita-<pid>` */
  serverName?: string;
  /** Makes the server a member of a cluster; without it the server runs alone. */
  cluster?: NatsClusterOptions;
  /** Forward the server's own log to this process's stderr. @default false */
  verbose?: boolean;
  /**
   * JetStream's `sync_interval`: how often the store is fsynced. `always` fsyncs every write
   * before it is acknowledged, so an acknowledged write survives power loss (the server's default,
   * 2 minutes, loses up to that much on a power cut: Jepsen's NATS 2.12.1 analysis). A duration
   * such as `'10s'` trades that for throughput. @default 'always'
   */
  syncInterval?: string;
}

export interface NatsClusterOptions {
  /** The cluster's name; every member has the same one. */
  name: string;
  /** Route listen port; 0 picks a free one. */
  port: number;
  /**
   * Route URLs of the members (`nats-route://host:port`). Listing every member, this one
   * included, is fine: the server ignores a route to itself, and clustered JetStream refuses to
   * start without at least one configured route.
   */
  routes: string[];
}

export interface NatsServerHandle {
  readonly url: string;
  readonly port: number;
  /** This member's route URL (`nats-route://host:port`); undefined for a server without a cluster. */
  readonly clusterUrl?: string;
  /** The version of the binary that runs. */
  readonly version: NatsServerVersion;
  readonly process: ChildProcess;
  readonly configFile: string;
  /** The last few thousand characters the server wrote to stderr (unless `verbose`). */
  log(): string;
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/** The oldest nats-server line Partita supports (README, "Supported NATS servers"). */
export const MIN_NATS_SERVER = { major: 2, minor: 10 } as const;

/**
 * The nats-server binary to run: `$PARTITA_NATS_SERVER` if set, else the project's
 * `.partita/bin/nats-server` (where `scripts/ensure-nats.mjs` puts the one it fetches; found from
 * the package root, not the working directory), else `nats-server` on PATH.
 */
export function natsServerBinary(): string {
  if (process.env.PARTITA_NATS_SERVER) return process.env.PARTITA_NATS_SERVER;
  const local = join(packageRoot(), '.partita', 'bin', 'nats-server');
  return existsSync(local) ? local : 'nats-server';
}

/** The directory of Partita's package.json (this file is `runtime/` or `dist/runtime/` below it). */
function packageRoot(): string {
  let dir = dirname(fileURLToPath(import.meta.url));
  for (;;) {
    if (existsSync(join(dir, 'package.json'))) return dir;
    const up = dirname(dir);
    if (up === dir) return process.cwd();
    dir = up;
  }
}

export interface NatsServerVersion {
  /** As the server prints it, e.g. `v2.15.1`. */
  readonly text: string;
  readonly major: number;
  readonly minor: number;
  readonly patch: number;
  /** At least `MIN_NATS_SERVER`. */
  readonly supported: boolean;
}

const versions = new Map<string, NatsServerVersion>();

/**
 * The version of a nats-server binary (`natsServerBinary()` by default), from its `--version`;
 * remembered per binary. Throws PARTITA_ERR_NATS_SERVER when the binary cannot be run.
 */
export function natsServerVersion(bin = natsServerBinary()): NatsServerVersion {
  const known = versions.get(bin);
  if (known) return known;
  let out: string;
  try {
    out = execFileSync(bin, ['--version'], {
      encoding: 'utf8',
      stdio: ['ignore', 'pipe', 'pipe'],
      timeout: 10_000,
    });
  } catch (err) {
    throw new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${bin}: cannot run it (${(err as Error).message.split('\n')[0]}); run \`node scripts/ensure-nats.mjs\` or set PARTITA_NATS_SERVER`,
      { cause: err },
    );
  }
  const m = /v?(\d+)\.(\d+)\.(\d+)/.exec(out);
  if (!m)
    throw new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${bin}: no version in its --version output: ${out.trim()}`,
    );
  const [major, minor, patch] = [Number(m[1]), Number(m[2]), Number(m[3])];
  const v: NatsServerVersion = {
    text: `v${major}.${minor}.${patch}`,
    major,
    minor,
    patch,
    supported:
      major > MIN_NATS_SERVER.major || (major === MIN_NATS_SERVER.major && minor >= MIN_NATS_SERVER.minor),
  };
  versions.set(bin, v);
  return v;
}

/** The nats-server config text Partita needs: JetStream (and, if asked, the legacy mapping). */
export function natsConfig(opts: NatsServerOptions & { portsDir?: string }): string {
  const partitions = opts.partitions ?? 16;
  const lines = [
    `server_name: ${JSON.stringify(opts.serverName ?? `partita-${process.pid}`)}`,
    `host: ${JSON.stringify(opts.host ?? '127.0.0.1')}`,
    `port: ${opts.port === 0 || opts.port === undefined ? -1 : opts.port}`,
  ];
  if (opts.portsDir) lines.push(`ports_file_dir: ${JSON.stringify(opts.portsDir)}`);
  lines.push('jetstream {');
  lines.push(`  store_dir: ${JSON.stringify(join(opts.dataDir, 'jetstream'))}`);
  const sync = opts.syncInterval ?? 'always';
  if (!/^(always|\d+(ms|s|m|h))$/.test(sync)) {
    throw new PartitaError(
      'PARTITA_ERR_USAGE',
      `sync interval ${JSON.stringify(sync)}: use always or a duration (10s)`,
    );
  }
  lines.push(`  sync_interval: ${sync}`);
  lines.push('}');
  if (opts.mapping) {
    lines.push('mappings {');
    for (const [from, to] of Object.entries(partitionMapping(partitions))) {
      lines.push(`  ${JSON.stringify(from)}: ${JSON.stringify(to)}`);
    }
    lines.push('}');
  }
  if (opts.cluster) {
    // Port -1 lets the server pick; `startNatsServer` picks one itself first, because the other
    // members' routes must name it.
    const port = opts.cluster.port === 0 ? -1 : opts.cluster.port;
    lines.push('cluster {');
    lines.push(`  name: ${JSON.stringify(opts.cluster.name)}`);
    lines.push(`  listen: ${JSON.stringify(`${opts.host ?? '127.0.0.1'}:${port}`)}`);
    lines.push(`  routes: [${opts.cluster.routes.map((r) => JSON.stringify(r)).join(', ')}]`);
    lines.push('}');
  }
  return `${lines.join('\n')}\n`;
}

/** Starts nats-server as a child process and resolves once it accepts clients. */
export async function startNatsServer(opts: NatsServerOptions): Promise<NatsServerHandle> {
  const bin = natsServerBinary();
  const version = natsServerVersion(bin);
  if (!version.supported) {
    throw new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${bin} is nats-server ${version.text}; Partita needs ${MIN_NATS_SERVER.major}.${MIN_NATS_SERVER.minor} or newer: run \`node scripts/ensure-nats.mjs\` (it fetches one into .partita/bin) or set PARTITA_NATS_SERVER`,
    );
  }
  if (opts.cluster) {
    const port = opts.cluster.port || (await freePorts(1, opts.host))[0]!;
    // A route to itself (ignored by the server) lets the first member of a cluster start
    // clustered JetStream before the others exist: it needs one configured route.
    const self = routeUrl(opts.host, port);
    const routes = opts.cluster.routes.includes(self) ? opts.cluster.routes : [...opts.cluster.routes, self];
    opts = { ...opts, cluster: { ...opts.cluster, port, routes } };
  }
  mkdirSync(opts.dataDir, { recursive: true });
  const portsDir = join(opts.dataDir, 'ports');
  mkdirSync(portsDir, { recursive: true });
  for (const f of readdirSync(portsDir)) writeFileSync(join(portsDir, f), '');
  const configFile = join(opts.dataDir, 'nats-server.conf');
  writeFileSync(configFile, natsConfig({ ...opts, portsDir }));
  // Its own process group: a Ctrl-C meant for us must not stop the server before our nodes have
  // checkpointed; we stop it last, and kill it if we exit first.
  const child = spawn(bin, ['-c', configFile], {
    stdio: ['ignore', 'ignore', opts.verbose ? 'inherit' : 'pipe'],
    detached: true,
  });
  const killOnExit = () => child.kill('SIGKILL');
  process.once('exit', killOnExit);
  const guardian = guard(child);
  child.once('exit', () => {
    process.removeListener('exit', killOnExit);
    // Its server is gone: the guardian must not signal the pid later (it may be reused).
    guardian?.kill('SIGKILL');
  });
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
    // A port in use is the common case: one line naming the address, not the server's banner.
    const inUse = /listen tcp ([^\s:]*:\d+): bind: address already in use/.exec(stderr);
    throw new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      inUse
        ? `${inUse[1]}: address already in use (port ${inUse[1]!.split(':').pop()})`
        : `${bin}: ${stderr.trim() || 'no ports file'}`,
    );
  }
  const port = Number(new URL(url).port);
  return {
    url,
    port,
    version,
    clusterUrl: opts.cluster ? routeUrl(opts.host, opts.cluster.port) : undefined,
    process: child,
    configFile,
    log: () => stderr,
    async stop(signal: NodeJS.Signals = 'SIGTERM') {
      if (exited !== null) return;
      child.kill(signal);
      await exit;
    },
  };
}

/**
 * The server must not outlive this process, whatever ends it: an `exit` handler does not run on
 * SIGKILL (or a crash of the runtime), and the server runs in its own process group (so a Ctrl-C
 * reaches this process first). A tiny shell reads a pipe from this process, which only the kernel
 * closes, when this process is gone, however it ended; it then sends the server SIGTERM. Null if
 * no shell could be started (the exit handler still covers an ordinary exit).
 */
function guard(server: ChildProcess): ChildProcess | null {
  if (server.pid === undefined) return null;
  try {
    const g = spawn(
      'sh',
      [
        '-c',
        'while read -r _; do :; done; kill -TERM "$1" 2>/dev/null',
        'partita-nats-guard',
        String(server.pid),
      ],
      {
        stdio: ['pipe', 'ignore', 'ignore'],
        detached: true,
      },
    );
    g.once('error', () => undefined);
    // Neither the guardian nor its pipe keeps this process alive.
    g.unref();
    (g.stdin as unknown as { unref?: () => void } | null)?.unref?.();
    return g;
  } catch {
    return null;
  }
}

/** A member's route URL; a wildcard listen address is reached on loopback. */
export function routeUrl(host: string | undefined, port: number): string {
  const h = !host || host === '0.0.0.0' || host === '::' ? '127.0.0.1' : host;
  return `nats-route://${h.includes(':') ? `[${h}]` : h}:${port}`;
}

/**
 * `n` distinct ports that are free right now. All are held open until each is known, so they
 * differ; another process may still take one before the server binds it (the server then exits
 * and `startNatsServer` says so).
 */
export async function freePorts(n: number, host = '127.0.0.1'): Promise<number[]> {
  const servers: Server[] = [];
  try {
    const ports: number[] = [];
    for (let i = 0; i < n; i++) {
      const srv = createServer();
      servers.push(srv);
      ports.push(
        await new Promise<number>((res, rej) => {
          srv.once('error', rej);
          srv.listen(0, host, () => res((srv.address() as { port: number }).port));
        }),
      );
    }
    return ports;
  } finally {
    await Promise.all(servers.map((s) => new Promise((r) => s.close(r))));
  }
}

export interface WaitForJetStreamOptions {
  /** @default 30000 */
  timeoutMs?: number;
  /**
   * Also wait until a stream with this many replicas can be placed (a probe stream is created and
   * deleted): the meta leader answers before it knows every peer, and until it does an R3 stream
   * fails with "no suitable peers for placement". @default 1
   */
  replicas?: number;
}

/**
 * Resolves once JetStream answers through every one of `servers` (client URLs). In a cluster only
 * the meta leader answers an account-info request, so an answer through each member means the
 * member is routed to the others and JetStream has a leader.
 */
export async function waitForJetStream(
  servers: readonly string[],
  opts: WaitForJetStreamOptions = {},
): Promise<void> {
  const timeoutMs = opts.timeoutMs ?? 30_000;
  const deadline = Date.now() + timeoutMs;
  const fail = (what: string, last: unknown) =>
    new PartitaError(
      'PARTITA_ERR_NATS_SERVER',
      `${what} after ${timeoutMs} ms${last ? `: ${(last as Error).message}` : ''}`,
      { cause: last },
    );
  await Promise.all(
    servers.map(async (url) => {
      let last: unknown;
      while (Date.now() < deadline) {
        const nc = await connect({ servers: url, reconnect: false, timeout: 1000 }).catch((err) => {
          last = err;
          return undefined;
        });
        if (nc) {
          try {
            const jsm = await jetstreamManager(nc, { checkAPI: false, timeout: 1000 });
            await jsm.getAccountInfo();
            return;
          } catch (err) {
            last = err;
          } finally {
            await nc.close().catch(() => undefined);
          }
        }
        await sleep(50);
      }
      throw fail(`JetStream not available through ${url}`, last);
    }),
  );
  if ((opts.replicas ?? 1) <= 1) return;
  const nc = await connect({ servers: [...servers], timeout: 1000 });
  try {
    const jsm = await jetstreamManager(nc, { checkAPI: false, timeout: 2000 });
    // The same name on every attempt: adding an existing stream with the same config succeeds, so
    // an attempt that timed out after the server created it leaves nothing behind.
    const id = randomBytes(6).toString('hex');
    const probe = {
      name: `PARTITA_PROBE_${id}`,
      subjects: [`partita.probe.${id}`],
      storage: StorageType.Memory,
      num_replicas: opts.replicas,
    };
    let last: unknown;
    while (Date.now() < deadline) {
      try {
        await jsm.streams.add(probe);
        await jsm.streams.delete(probe.name);
        return;
      } catch (err) {
        last = err;
      }
      await sleep(50);
    }
    await jsm.streams.delete(probe.name).catch(() => undefined);
    throw fail(`no room for a stream with ${opts.replicas} replicas`, last);
  } finally {
    await nc.close().catch(() => undefined);
  }
}

export interface NatsClusterStartOptions {
  /** Number of servers. @default 3 */
  size?: number;
  /** Parent directory; member `i` keeps its config and JetStream store in `<dataDir>/<name>-<i>`. */
  dataDir: string;
  /** Partition count of the `events.*.*` mapping, the same on every member. @default 16 */
  partitions?: number;
  /** Cluster name; the members are named `<name>-1` … `<name>-<size>`. @default 'partita' */
  name?: string;
  /** @default '127.0.0.1' */
  host?: string;
  /** Forward the servers' logs to this process's stderr. @default false */
  verbose?: boolean;
  /** JetStream's `sync_interval` on every member (`NatsServerOptions.syncInterval`). @default 'always' */
  syncInterval?: string;
  /**
   * How long one attempt waits for the cluster to form and place streams on every member; a
   * fresh cluster that has not formed by then is started again, three times at most. @default 15000
   */
  timeoutMs?: number;
  /**
   * Waits until the started members form a cluster (tests replace it to fail an attempt).
   * @default `waitForJetStream` with `replicas: size`
   */
  waitFormed?: (servers: readonly string[], timeoutMs: number) => Promise<void>;
  /**
   * Picks the members' route ports; called again, up to three times, when one was taken before its
   * server bound it. @default free ports of `host` (`freePorts`)
   */
  routePorts?: (n: number) => Promise<number[]>;
}

export interface NatsClusterMember {
  /** Server name, the member's JetStream peer name. */
  readonly name: string;
  /** Client URL; the same across restarts. */
  readonly url: string;
  readonly port: number;
  readonly clusterUrl: string;
  readonly dataDir: string;
  /** The running server, or null while the member is stopped. */
  readonly server: NatsServerHandle | null;
  /** Stops the server (SIGTERM unless told otherwise); a no-op when stopped. */
  stop(signal?: NodeJS.Signals): Promise<void>;
  /** SIGKILL: a crash, nothing flushed. */
  kill(): Promise<void>;
  /**
   * Starts the member again on the same ports and store dir (stopping it first if it runs);
   * resolves once it accepts clients, before it has caught up with the others.
   */
  restart(): Promise<void>;
}

export interface NatsCluster {
  readonly name: string;
  readonly members: readonly NatsClusterMember[];
  /** Client URLs of every member. */
  readonly servers: readonly string[];
  /** `servers` joined with commas, the form `--nats` takes. */
  readonly url: string;
  /** Stops every member still running. */
  stop(signal?: NodeJS.Signals): Promise<void>;
}

/**
 * Starts a local cluster of `size` nats-servers with clustered JetStream and resolves once it has
 * formed, has a JetStream meta leader, and can place a stream on every member. Route ports are
 * picked up front (nats-server could pick them, `listen: host:-1`, but every member's routes must
 * name all of them before it starts).
 */
export async function startNatsCluster(opts: NatsClusterStartOptions): Promise<NatsCluster> {
  for (let attempt = 1; ; attempt++) {
    try {
      return await startClusterOnce(opts);
    } catch (err) {
      // The route ports are free when picked, not when bound: another process (any outgoing
      // connection takes an ephemeral port from the same range) can take one in between, and
      // that member exits at once (seen in CI). Pick them again.
      // A fresh 2.10.x cluster now and then never forms: one member is routed to the others but
      // never hears from the meta leader, so no R3 stream can be placed however long one waits
      // (about one start in 40 on 2.10.27; not seen on 2.15). Starting it again forms it.
      // Anything else is a real failure.
      if (!(err instanceof PortTaken || err instanceof NotFormed)) throw err;
      if (attempt >= 4) throw err.cause;
      process.emitWarning(`nats cluster: ${(err.cause as Error).message}; starting it again`, {
        code: 'PARTITA_NATS_CLUSTER_RETRY',
      });
    }
  }
}

async function startClusterOnce(opts: NatsClusterStartOptions): Promise<NatsCluster> {
  const size = opts.size ?? 3;
  const name = opts.name ?? 'partita';
  const clusterPorts = await (opts.routePorts ?? ((n) => freePorts(n, opts.host)))(size);
  const timeoutMs = opts.timeoutMs ?? 15_000;
  const waitFormed =
    opts.waitFormed ?? ((servers, ms) => waitForJetStream(servers, { timeoutMs: ms, replicas: size }));
  const routes = clusterPorts.map((p) => routeUrl(opts.host, p));
  const members = clusterPorts.map((clusterPort, i) => {
    const memberName = `${name}-${i + 1}`;
    const dataDir = join(opts.dataDir, memberName);
    // A store this call creates may be removed if the cluster does not form; an existing one never.
    const fresh = !existsSync(dataDir);
    let server: NatsServerHandle | null = null;
    // The first start picks the client port; restarts reuse it, so the URL stays the same.
    let port = 0;
    let url = '';
    const start = async () => {
      server = await startNatsServer({
        port,
        dataDir,
        partitions: opts.partitions,
        host: opts.host,
        serverName: memberName,
        cluster: { name, port: clusterPort, routes },
        verbose: opts.verbose,
        syncInterval: opts.syncInterval,
      });
      port = server.port;
      url ||= server.url;
      return server;
    };
    const stop = async (signal?: NodeJS.Signals) => {
      const s = server;
      server = null;
      await s?.stop(signal);
    };
    return {
      start,
      fresh,
      dataDir,
      member: {
        name: memberName,
        get url() {
          return url;
        },
        get port() {
          return port;
        },
        clusterUrl: routes[i]!,
        dataDir,
        get server() {
          return server;
        },
        stop,
        kill: () => stop('SIGKILL'),
        async restart() {
          await stop();
          await start();
        },
      } satisfies NatsClusterMember,
    };
  });
  const stopAll = (signal?: NodeJS.Signals) => Promise.all(members.map((m) => m.member.stop(signal)));
  try {
    // Every start settles before any failure is acted on: a member still starting when another
    // failed would come up after the clean-up below and be left running.
    const started = await Promise.allSettled(members.map((m) => m.start()));
    const failed = started.find((r) => r.status === 'rejected');
    if (failed) throw failed.reason;
    const servers = members.map((m) => m.member.url);
    try {
      await waitFormed(servers, timeoutMs);
    } catch (err) {
      if (!members.every((m) => m.fresh)) throw err;
      await stopAll('SIGKILL');
      for (const m of members) rmSync(m.dataDir, { recursive: true, force: true });
      throw new NotFormed(err);
    }
    return {
      name,
      members: members.map((m) => m.member),
      servers,
      url: servers.join(','),
      async stop(signal?: NodeJS.Signals) {
        await stopAll(signal);
      },
    };
  } catch (err) {
    // A member may also fail to bind its route port after it took clients (and wrote its ports
    // file): then it is its log that tells, and the cluster never forms.
    const taken = [
      err instanceof Error ? err.message : '',
      ...members.map((m) => m.member.server?.log() ?? ''),
    ];
    await stopAll('SIGKILL');
    if (taken.some((t) => /address already in use/i.test(t))) throw new PortTaken(err);
    throw err;
  }
}

class NotFormed extends Error {
  constructor(cause: unknown) {
    super('a fresh cluster did not form', { cause });
  }
}

class PortTaken extends Error {
  constructor(cause: unknown) {
    super('a port of the cluster was taken before its server bound it', { cause });
  }
}
