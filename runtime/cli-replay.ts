// `partita replay --actor A [--partition P] (--from-seq N | --from-time T)`: rebuild an actor's state
// from the input streams with the handler the nodes run now. See replay.ts for the semantics.
import { type Command, connectCli, int, natsUrlOf, UsageError } from './cli-kit.js';
import { runReplay } from './replay.js';

export const replayCommand: Command = {
  options: {
    nats: { type: 'string' },
    actor: { type: 'string' },
    partition: { type: 'string' },
    'from-seq': { type: 'string' },
    'from-time': { type: 'string' },
    timeout: { type: 'string' },
    'owner-wait': { type: 'string' },
    json: { type: 'boolean' },
  },
  async run(v) {
    const actor = v.actor as string | undefined;
    if (!actor) throw new UsageError('--actor A is required');
    const fromSeq = int(v['from-seq'] as string | undefined, 'from-seq');
    const fromTime = v['from-time'] as string | undefined;
    if ((fromSeq === undefined) === (fromTime === undefined))
      throw new UsageError('give exactly one of --from-seq N and --from-time T');
    if (fromSeq === 0) throw new UsageError('--from-seq counts from 1');
    const timeoutS = int(v.timeout as string | undefined, 'timeout');
    const ownerWaitS = int(v['owner-wait'] as string | undefined, 'owner-wait');
    const nc = await connectCli(natsUrlOf(v), { name: 'partita-replay' });
    try {
      const results = await runReplay(nc, {
        actor,
        partition: int(v.partition as string | undefined, 'partition'),
        fromSeq,
        fromTime,
        timeoutMs: timeoutS === undefined ? undefined : timeoutS * 1000,
        ownerWaitMs: ownerWaitS === undefined ? undefined : ownerWaitS * 1000,
      });
      if (v.json) process.stdout.write(`${JSON.stringify(results, null, 2)}\n`);
      else {
        for (const r of results) {
          process.stdout.write(
            `partition ${r.partition}: ${r.events} events (seq ${r.fromSeq}..${r.toSeq}) refolded into ${r.keys} keys` +
              `${r.deleted ? `, ${r.deleted} removed` : ''}${r.deadLettered ? `, ${r.deadLettered} dead-lettered` : ''}` +
              ` on ${r.node} (epoch ${r.epoch}) in ${r.ms} ms\n`,
          );
        }
      }
    } finally {
      await nc.close();
    }
    return 0;
  },
};
