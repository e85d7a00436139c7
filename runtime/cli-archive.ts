// `partita archive`: the compliance archive (see archive.ts).
import { resolve } from 'node:path';
import { startArchive } from './archive.js';
import { type Command, int, LOG_OPTIONS, natsUnreachable, natsUrlOf, ready, untilSignal } from './cli-kit.js';
import { piiSecretFrom } from './governance.js';

export const archiveCommand: Command = {
  options: {
    nats: { type: 'string' },
    dir: { type: 'string' },
    'pii-secret-file': { type: 'string' },
    'flush-ms': { type: 'string' },
    'max-events': { type: 'string' },
    ...LOG_OPTIONS,
  },
  async run(v) {
    const dir = resolve((v.dir as string | undefined) ?? '.partita/archive');
    const natsUrl = natsUrlOf(v).join(',');
    const archive = await startArchive({
      natsUrl,
      dir,
      piiSecret: piiSecretFrom(v['pii-secret-file'] as string | undefined),
      flushMs: int(v['flush-ms'] as string | undefined, 'flush-ms'),
      maxEvents: int(v['max-events'] as string | undefined, 'max-events'),
    }).catch((err) => {
      throw natsUnreachable(err, natsUrl);
    });
    ready({ archive: dir, nats: natsUrl });
    await untilSignal();
    await archive.stop();
    return 0;
  },
};
