// `npm run chaos -- [--minutes N] [--seed S] [--faults N] [--rate N] [--kinds K,..] [--report DIR] [--logs DIR]`: a
// long chaos run (soak) with the harness of the CI suite. Exit 0 when the report passes, 1 when it
// does not. `--logs DIR` keeps every node's log (`<node>.log`; PARTITA_TEST_LOG_LEVEL sets the level).
import { parseArgs } from 'node:util';
import { formatReport, writeReport } from '../../runtime/drill.js';
import { ALL_FAULT_KINDS, FAULT_KINDS, type FaultKind, runChaos } from './harness.js';

const { values } = parseArgs({
  options: {
    minutes: { type: 'string', default: '30' },
    seed: { type: 'string' },
    faults: { type: 'string' },
    rate: { type: 'string', default: '1500' },
    report: { type: 'string', default: 'chaos-reports' },
    logs: { type: 'string' },
    kinds: { type: 'string' },
  },
});
const minutes = Number(values.minutes);
const seed = values.seed !== undefined ? Number(values.seed) : Math.floor(Math.random() * 2 ** 31);
if (!Number.isFinite(minutes) || minutes <= 0 || !Number.isInteger(seed)) {
  console.error(
    'usage: npm run chaos -- [--minutes N] [--seed S] [--faults N] [--rate N] [--kinds K,..] [--report DIR] [--logs DIR]',
  );
  process.exit(2);
}
const kinds = (values.kinds?.split(',') ?? [...FAULT_KINDS]) as FaultKind[];
const unknown = kinds.filter((k) => !ALL_FAULT_KINDS.includes(k));
if (unknown.length > 0) {
  console.error(`--kinds: unknown ${unknown.join(', ')} (known: ${ALL_FAULT_KINDS.join(', ')})`);
  process.exit(2);
}
console.log(`chaos soak: ${minutes} min, seed ${seed}, faults of kinds ${kinds.join(', ')}`);
const report = await runChaos({
  seed,
  // About one fault every 12 s; the run lasts at least the minutes asked for.
  faults: values.faults !== undefined ? Number(values.faults) : Math.max(5, Math.round(minutes * 5)),
  minDurationMs: minutes * 60_000,
  rate: Number(values.rate),
  kinds,
  ...(values.logs ? { logDir: values.logs } : {}),
  reproduce: `npm run chaos -- --minutes ${minutes} --seed ${seed}${values.faults ? ` --faults ${values.faults}` : ''} --rate ${values.rate}${values.kinds ? ` --kinds ${values.kinds}` : ''}`,
});
const paths = writeReport(report, values.report!);
console.log(formatReport(report));
console.log(`report: ${paths.json} and ${paths.text}`);
process.exit(report.ok ? 0 : 1);
