// A stand-in for the `nats` CLI's `nats pub SUBJECT PAYLOAD`, for machines without the CLI (the
// README's examples use it): publishes as the CLI does, a core NATS publish to $NATS_URL, and
// prints the CLI's line. Anything else is refused, so an example it cannot stand in for fails.
import { connect } from '@nats-io/transport-node';

const [command, subject, payload, ...rest] = process.argv.slice(2);
if (command !== 'pub' || !subject || payload === undefined || rest.length > 0) {
  process.stderr.write(
    `the nats stand-in only runs "nats pub SUBJECT PAYLOAD", not: nats ${process.argv.slice(2).join(' ')}\n`,
  );
  process.exit(2);
}
const nc = await connect({ servers: process.env.NATS_URL ?? 'nats://127.0.0.1:4222' });
nc.publish(subject, payload);
await nc.flush();
await nc.close();
process.stdout.write(`Published ${Buffer.byteLength(payload)} bytes to "${subject}"\n`);
