// The compliance archive: every raw event of the input streams, masked, as Parquet files
// partitioned by hour, each event exactly once across crashes and restarts.
//
// Exactly-once rests on the files alone. A file holds a contiguous range of one partition's
// sequences and is named after it (`p<P>-<first>-<last>.parquet`, zero-padded); it is written to
// a temporary name, fsynced, renamed, and its directory fsynced, so a file either exists whole or
// not at all. On start the archive deletes temporary files and resumes each partition after the
// highest sequence a finished file holds; its durable consumer is recreated there (its own
// position is not the truth, the files are) and acknowledged after each rename, which makes the
// archive's lag visible as the consumer's.
import {
  closeSync,
  existsSync,
  fsyncSync,
  mkdirSync,
  openSync,
  readdirSync,
  renameSync,
  rmSync,
  writeSync,
} from 'node:fs';
import { join } from 'node:path';
import {
  AckPolicy,
  DeliverPolicy,
  type JetStreamClient,
  type JetStreamManager,
  type JsMsg,
  jetstream,
} from '@nats-io/jetstream';
import { connect, type NatsConnection } from '@nats-io/transport-node';
import { parquetWriteBuffer } from 'hyparquet-writer';
import { unpack } from 'msgpackr';
import { EVENT_TIME_HEADER } from './batch.js';
import { compileGovernance, type Govern } from './governance.js';
import { createLogger, type Logger } from './logger.js';
import { openSchemaRegistry, watchSchemas } from './schema-registry.js';
import { inStream, parseInSubject } from './subjects.js';
import { ensureTopology } from './topology.js';

export interface ArchiveOptions {
  /** @default $PARTITA_NATS or nats://127.0.0.1:4222 */
  natsUrl?: string;
  /** Where the hourly directories go. */
  dir: string;
  /** Key of x-pii "hash" fields; must equal the nodes'. @default $PARTITA_PII_SECRET */
  piiSecret?: string;
  /** A partition's open file is finished after this long. @default 60000 */
  flushMs?: number;
  /** ... or once it holds this many events. @default 100000 */
  maxEvents?: number;
  logger?: Logger;
}

export interface RunningArchive {
  readonly dir: string;
  /** Per partition, the highest sequence in a finished file. */
  archived(): Map<number, number>;
  /** Finishes the open files, then closes. */
  stop(): Promise<void>;
}

/** One row of an archive file. */
export interface ArchiveRow {
  partition: number;
  seq: bigint;
  /** The producer's subject, `events.<type>.<key>`. */
  subject: string;
  type: string;
  key: string;
  publishedAt: Date;
  eventTime: Date;
  msgId: string | null;
  contentType: string | null;
  /** The payload as JSON, after masking; null when it could not be decoded or masked. */
  data: string | null;
  /** Why `data` is null. */
  error: string | null;
}

export const ARCHIVE_CONSUMER_PREFIX = 'partita-archive-p';
const FILE_RE = /^p(\d+)-(\d{20})-(\d{20})\.parquet$/;
const TMP_SUFFIX = '.tmp';
const pad = (n: number) => String(n).padStart(20, '0');
const hourDir = (t: Date) =>
  join(`date=${t.toISOString().slice(0, 10)}`, `hour=${String(t.getUTCHours()).padStart(2, '0')}`);

/** Finished files under `dir`: partition, first and last sequence, path. */
export function archiveFiles(
  dir: string,
): { partition: number; first: number; last: number; path: string }[] {
  const out: { partition: number; first: number; last: number; path: string }[] = [];
  if (!existsSync(dir)) return out;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (!e.isFile()) continue;
    const m = FILE_RE.exec(e.name);
    if (m)
      out.push({
        partition: Number(m[1]),
        first: Number(m[2]),
        last: Number(m[3]),
        path: join(e.parentPath, e.name),
      });
  }
  return out.sort((a, b) => a.partition - b.partition || a.first - b.first);
}

/** Deletes what a crash left half-written. */
function removeTemporaries(dir: string): number {
  let n = 0;
  if (!existsSync(dir)) return n;
  for (const e of readdirSync(dir, { recursive: true, withFileTypes: true })) {
    if (e.isFile() && e.name.endsWith(TMP_SUFFIX)) {
      rmSync(join(e.parentPath, e.name));
      n++;
    }
  }
  return n;
}

function fsyncDir(path: string): void {
  const fd = openSync(path, 'r');
  try {
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** For crash tests: `PARTITA_FAILPOINT=archive-before-rename:N` kills the process (SIGKILL) with
 * its N-th file written to its temporary name but not yet renamed. */
function failpoint(): () => void {
  const m = /^archive-before-rename:(\d+)$/.exec(process.env.PARTITA_FAILPOINT ?? '');
  if (!m) return () => {};
  let left = Number(m[1]);
  return () => {
    if (--left === 0) process.kill(process.pid, 'SIGKILL');
  };
}

function writeParquet(path: string, rows: ArchiveRow[]): void {
  const col = <K extends keyof ArchiveRow>(k: K) => rows.map((r) => r[k]);
  const buf = parquetWriteBuffer({
    columnData: [
      { name: 'partition', data: col('partition'), type: 'INT32', nullable: false },
      { name: 'seq', data: col('seq'), type: 'INT64', nullable: false },
      { name: 'subject', data: col('subject'), type: 'STRING', nullable: false },
      { name: 'type', data: col('type'), type: 'STRING', nullable: false },
      { name: 'key', data: col('key'), type: 'STRING', nullable: false },
      { name: 'published_at', data: col('publishedAt'), type: 'TIMESTAMP', nullable: false },
      { name: 'event_time', data: col('eventTime'), type: 'TIMESTAMP', nullable: false },
      { name: 'msg_id', data: col('msgId'), type: 'STRING' },
      { name: 'content_type', data: col('contentType'), type: 'STRING' },
      { name: 'data', data: col('data'), type: 'JSON' },
      { name: 'error', data: col('error'), type: 'STRING' },
    ],
    createdBy: 'partita archive',
  });
  const fd = openSync(path, 'w');
  try {
    writeSync(fd, new Uint8Array(buf));
    fsyncSync(fd);
  } finally {
    closeSync(fd);
  }
}

/** Decodes and masks one stored event into a row. */
export function archiveRow(m: JsMsg, partition: number, govern: Govern | undefined): ArchiveRow {
  const parsed = parseInSubject(m.subject);
  const type = parsed?.type ?? '';
  const key = parsed?.key ?? '';
  const contentType = m.headers?.get('Content-Type') || null;
  const publishedAt = new Date(Math.floor(m.info.timestampNanos / 1_000_000));
  let data: string | null = null;
  let error: string | null = null;
  let decoded: unknown;
  try {
    decoded =
      contentType === 'application/msgpack'
        ? unpack(m.data)
        : JSON.parse(Buffer.from(m.data.buffer, m.data.byteOffset, m.data.byteLength).toString('utf8'));
    const g = govern ? govern(type, decoded) : { data: decoded };
    if ('code' in g) error = `${g.code}: ${g.message}`;
    else {
      decoded = g.data;
      data = JSON.stringify(decoded) ?? null;
    }
  } catch (err) {
    // The raw bytes are not kept: undecodable, they cannot be masked.
    error = `PARTITA_ERR_DECODE: ${(err as Error).message}`;
  }
  let eventTime = publishedAt.getTime();
  const h = Number(m.headers?.get(EVENT_TIME_HEADER) || Number.NaN);
  const ts = data !== null ? (decoded as { ts?: unknown } | null)?.ts : undefined;
  if (Number.isFinite(h)) eventTime = h;
  else if (typeof ts === 'number' && Number.isFinite(ts)) eventTime = ts;
  return {
    partition,
    seq: BigInt(m.seq),
    subject: parsed ? `events.${type}.${key}` : m.subject,
    type,
    key,
    publishedAt,
    eventTime: new Date(eventTime),
    msgId: m.headers?.get('Nats-Msg-Id') || null,
    contentType,
    data,
    error,
  };
}

class PartitionArchiver {
  private rows: ArchiveRow[] = [];
  private hour = '';
  private openedAt = 0;
  private lastMsg: JsMsg | null = null;
  private running = true;
  private done: Promise<void> = Promise.resolve();

  constructor(
    readonly partition: number,
    /** Highest sequence in a finished file. */
    public archived: number,
    private readonly js: JetStreamClient,
    private readonly jsm: JetStreamManager,
    private readonly cfg: Required<Pick<ArchiveOptions, 'dir' | 'flushMs' | 'maxEvents'>>,
    private readonly govern: () => Govern | undefined,
    private readonly log: Logger,
    private readonly beforeRename: () => void,
  ) {}

  async start(): Promise<void> {
    const stream = inStream(this.partition);
    const name = `${ARCHIVE_CONSUMER_PREFIX}${this.partition}`;
    await this.jsm.consumers.delete(stream, name).catch(() => undefined);
    const start = this.archived + 1;
    await this.jsm.consumers.add(stream, {
      durable_name: name,
      ack_policy: AckPolicy.All,
      ack_wait: 10 * 60 * 1_000_000_000,
      max_ack_pending: this.cfg.maxEvents + 2000,
      description: 'partita archive',
      ...(start > 1
        ? { deliver_policy: DeliverPolicy.StartSequence, opt_start_seq: start }
        : { deliver_policy: DeliverPolicy.All }),
    });
    this.done = this.loop(await this.js.consumers.get(stream, name));
  }

  private async loop(consumer: Awaited<ReturnType<JetStreamClient['consumers']['get']>>): Promise<void> {
    while (this.running) {
      try {
        const left = this.rows.length > 0 ? this.openedAt + this.cfg.flushMs - Date.now() : this.cfg.flushMs;
        const batch = await consumer.fetch({
          max_messages: Math.min(1000, this.cfg.maxEvents),
          expires: Math.max(1000, Math.min(5000, left)),
        });
        for await (const m of batch) {
          if (m.seq <= this.archived || (this.lastMsg && m.seq <= this.lastMsg.seq)) continue;
          const expected = (this.lastMsg?.seq ?? this.archived) + 1;
          if (m.seq !== expected)
            this.log.error(
              { partition: this.partition, from: expected, to: m.seq - 1 },
              'events gone from the stream before they were archived (retention or purge)',
            );
          const row = archiveRow(m, this.partition, this.govern());
          const hour = hourDir(row.publishedAt);
          if (this.rows.length > 0 && hour !== this.hour) this.flush();
          if (this.rows.length === 0) {
            this.hour = hour;
            this.openedAt = Date.now();
          }
          this.rows.push(row);
          this.lastMsg = m;
          if (this.rows.length >= this.cfg.maxEvents) this.flush();
        }
        if (this.rows.length > 0 && Date.now() - this.openedAt >= this.cfg.flushMs) this.flush();
      } catch (err) {
        if (!this.running) break;
        this.log.warn(
          { partition: this.partition, err: (err as Error).message },
          'archive fetch failed; retrying',
        );
        await new Promise((r) => setTimeout(r, 500));
      }
    }
  }

  /** Writes the open rows as one finished file, then acknowledges them. */
  flush(): void {
    if (this.rows.length === 0) return;
    const first = Number(this.rows[0]!.seq);
    const last = Number(this.rows[this.rows.length - 1]!.seq);
    const dir = join(this.cfg.dir, this.hour);
    mkdirSync(dir, { recursive: true });
    const final = join(dir, `p${this.partition}-${pad(first)}-${pad(last)}.parquet`);
    const tmp = `${final}${TMP_SUFFIX}`;
    writeParquet(tmp, this.rows);
    this.beforeRename();
    renameSync(tmp, final);
    fsyncDir(dir);
    this.archived = last;
    this.rows = [];
    this.lastMsg?.ack();
  }

  async stop(): Promise<void> {
    this.running = false;
    await this.done;
    this.flush();
  }
}

export async function startArchive(opts: ArchiveOptions): Promise<RunningArchive> {
  const log = opts.logger ?? createLogger({ component: 'archive' });
  const nc: NatsConnection = await connect({
    servers: (opts.natsUrl ?? (process.env.PARTITA_NATS || 'nats://127.0.0.1:4222')).split(','),
    name: 'partita-archive',
    maxReconnectAttempts: -1,
    reconnectTimeWait: 250,
  });
  const cfg = { dir: opts.dir, flushMs: opts.flushMs ?? 60_000, maxEvents: opts.maxEvents ?? 100_000 };
  mkdirSync(cfg.dir, { recursive: true });
  const removed = removeTemporaries(cfg.dir);
  if (removed > 0) log.warn({ removed }, 'removed unfinished archive files left by a crash');
  const topology = await ensureTopology(nc);
  const secret = opts.piiSecret ?? (process.env.PARTITA_PII_SECRET || undefined);
  let govern: Govern | undefined;
  const registry = await openSchemaRegistry(nc);
  const watch = await watchSchemas(registry.kv, (latest) => {
    govern = latest.size > 0 ? compileGovernance(latest.values(), secret, { validate: false }) : undefined;
  });
  const archived = new Map<number, number>();
  for (const f of archiveFiles(cfg.dir))
    archived.set(f.partition, Math.max(archived.get(f.partition) ?? 0, f.last));
  const js = jetstream(nc);
  const beforeRename = failpoint();
  const archivers: PartitionArchiver[] = [];
  for (let p = 0; p < topology.partitions; p++) {
    const a = new PartitionArchiver(
      p,
      archived.get(p) ?? 0,
      js,
      topology.jsm,
      cfg,
      () => govern,
      log,
      beforeRename,
    );
    await a.start();
    archivers.push(a);
  }
  log.info({ dir: cfg.dir, partitions: topology.partitions }, 'archive running');
  return {
    dir: cfg.dir,
    archived: () => new Map(archivers.map((a) => [a.partition, a.archived])),
    async stop() {
      await Promise.all(archivers.map((a) => a.stop()));
      watch.stop();
      await nc.drain().catch(() => undefined);
    },
  };
}
