// `partita schema add|list|check`: the schema registry from the command line.
import { readFileSync } from 'node:fs';
import { type Command, connectCli, natsUrlOf, UsageError } from './cli-kit.js';
import { COMPAT_MODES, type CompatMode, isCompatMode, type SchemaFormat } from './schema-compat.js';
import { openSchemaRegistry } from './schema-registry.js';

function readSchema(file: string): { schema: unknown; format?: SchemaFormat } {
  let text: string;
  try {
    text = readFileSync(file, 'utf8');
  } catch (err) {
    throw new UsageError(`cannot read ${file}: ${(err as Error).message}`);
  }
  let schema: unknown;
  try {
    schema = JSON.parse(text);
  } catch (err) {
    throw new UsageError(`${file} is not JSON: ${(err as Error).message}`);
  }
  return { schema, format: file.endsWith('.avsc') ? 'avro' : undefined };
}

function compatOf(v: unknown): CompatMode | undefined {
  if (v === undefined) return undefined;
  const m = String(v).toUpperCase();
  if (!isCompatMode(m)) throw new UsageError(`--compat must be one of ${COMPAT_MODES.join(', ')}`);
  return m;
}

export const schemaCommand: Command = {
  options: { nats: { type: 'string' }, compat: { type: 'string' }, json: { type: 'boolean' } },
  positionals: true,
  async run(v, args) {
    const [sub, type, file] = args;
    if (sub === 'add' || sub === 'check') {
      if (!type || !file || args.length !== 3)
        throw new UsageError(`usage: partita schema ${sub} <type> <file.json>`);
    } else if (sub === 'list') {
      if (args.length !== 1) throw new UsageError('usage: partita schema list');
    } else throw new UsageError('usage: partita schema add|list|check ...');
    const compat = compatOf(v.compat);
    const input = file ? readSchema(file) : undefined;
    const nc = await connectCli(natsUrlOf(v));
    try {
      const registry = await openSchemaRegistry(nc);
      if (sub === 'list') {
        const all = await registry.list();
        if (v.json) process.stdout.write(`${JSON.stringify(all, null, 2)}\n`);
        else
          for (const s of all)
            process.stdout.write(
              `${s.type}  v${s.version}  ${s.format}  ${s.compat}  ${s.registeredAt}  ${s.who}\n`,
            );
        return 0;
      }
      if (sub === 'check') {
        const res = await registry.check(type!, input!.schema, { compat, format: input!.format });
        if (v.json) process.stdout.write(`${JSON.stringify(res, null, 2)}\n`);
        else if (res.compatible)
          process.stdout.write(`compatible: ${type} would become v${res.version} (${res.mode})\n`);
        else
          process.stdout.write(
            `incompatible (${res.mode}):\n${res.issues.map((i) => `  ${i}`).join('\n')}\n`,
          );
        return res.compatible ? 0 : 1;
      }
      const rec = await registry.register(type!, input!.schema, { compat, format: input!.format });
      process.stdout.write(
        v.json
          ? `${JSON.stringify(rec, null, 2)}\n`
          : `registered ${rec.type} v${rec.version} (${rec.format}, ${rec.compat})\n`,
      );
      return 0;
    } finally {
      await nc.close();
    }
  },
};
