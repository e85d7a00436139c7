// Finds and loads actor modules. The same code runs on the main thread and in every worker, so
// both see the same definitions (TypeScript modules go through tsx's loader).
import { readdirSync, statSync } from 'node:fs';
import { extname, join, resolve } from 'node:path';
import { fileURLToPath, pathToFileURL } from 'node:url';
import { PartitaError } from './errors.js';
import { timeFeaturesOf } from './event-time.js';
import { type ActorDefinition, defineActor, type Guarantee } from './types.js';

const ACTOR_EXTENSIONS = new Set(['.js', '.mjs', '.ts']);
const TOKEN = /^[^.*>\s]+$/;

/** The built-in actors shipped in `actors/` (compiled next to this file's folder). */
export function builtinActorsDir(): string {
  return fileURLToPath(new URL('../actors/', import.meta.url));
}

/** Every `*.js`, `*.mjs` and `*.ts` file directly in `dir` (not `.d.ts`), sorted; only those. */
export function findActorFiles(dir: string): string[] {
  const abs = resolve(dir);
  let names: string[];
  try {
    names = readdirSync(abs);
  } catch (err) {
    throw new PartitaError('PARTITA_ERR_ACTORS_NOT_FOUND', `cannot read ${abs}`, { cause: err });
  }
  const files = names
    .filter((n) => ACTOR_EXTENSIONS.has(extname(n)) && !n.endsWith('.d.ts') && !n.endsWith('.test.js'))
    .map((n) => join(abs, n))
    .filter((f) => statSync(f).isFile())
    .sort();
  if (files.length === 0)
    throw new PartitaError('PARTITA_ERR_ACTORS_NOT_FOUND', `no .js, .mjs or .ts module in ${abs}`);
  return files;
}

export interface LoadedActor {
  readonly def: ActorDefinition;
  readonly name: string;
  readonly guarantee: Guarantee;
  readonly file: string;
}

async function importModule(file: string): Promise<Record<string, unknown>> {
  (globalThis as { defineActor?: unknown }).defineActor ??= defineActor;
  if (extname(file) === '.ts') {
    const { tsImport } = await import('tsx/esm/api');
    return (await tsImport(pathToFileURL(file).href, import.meta.url)) as Record<string, unknown>;
  }
  return (await import(pathToFileURL(file).href)) as Record<string, unknown>;
}

export function validateActor(value: unknown, file: string): ActorDefinition {
  const d = value as Partial<ActorDefinition> | undefined;
  const fail = (why: string) => new PartitaError('PARTITA_ERR_ACTOR_INVALID', `${file}: ${why}`);
  if (!d || typeof d !== 'object') throw fail('the default export is not an object');
  if (typeof d.name !== 'string' || !TOKEN.test(d.name)) throw fail('`name` must be a single subject token');
  if (
    !Array.isArray(d.events) ||
    d.events.length === 0 ||
    !d.events.every((e) => typeof e === 'string' && TOKEN.test(e))
  )
    throw fail('`events` must be a non-empty list of single subject tokens');
  if (d.guarantee !== undefined && d.guarantee !== 'exactly-once' && d.guarantee !== 'at-least-once')
    throw fail("`guarantee` must be 'exactly-once' or 'at-least-once'");
  if (typeof d.initial !== 'function') throw fail('`initial` must be a function');
  if (typeof d.handle !== 'function') throw fail('`handle` must be a function');
  try {
    // Windows, rollups, watermark and timers compile here, so a bad spec fails at load.
    timeFeaturesOf(d as ActorDefinition);
  } catch (err) {
    throw fail((err as Error).message);
  }
  return d as ActorDefinition;
}

export async function loadActors(files: readonly string[]): Promise<LoadedActor[]> {
  const out: LoadedActor[] = [];
  const names = new Set<string>();
  for (const file of files) {
    let mod: Record<string, unknown>;
    try {
      mod = await importModule(file);
    } catch (err) {
      throw new PartitaError('PARTITA_ERR_ACTOR_INVALID', `${file}: ${(err as Error).message}`, {
        cause: err,
      });
    }
    let value = mod.default;
    // A CommonJS or tsx-wrapped module may nest the default export once more.
    if (value && typeof value === 'object' && 'default' in value && !('name' in value)) {
      value = (value as { default: unknown }).default;
    }
    const def = validateActor(value, file);
    if (names.has(def.name))
      throw new PartitaError('PARTITA_ERR_ACTOR_INVALID', `${file}: duplicate actor name ${def.name}`);
    names.add(def.name);
    out.push({ def, name: def.name, guarantee: def.guarantee ?? 'exactly-once', file });
  }
  return out;
}
