// Runs `partita node` as a child process, so tests can kill -9 it.
import { type ChildProcess, spawn } from 'node:child_process';
import { fileURLToPath } from 'node:url';

export const PARTITA_BIN = fileURLToPath(new URL('../../../bin/partita.js', import.meta.url));

export interface NodeProcess {
  readonly child: ChildProcess;
  readonly ready: Record<string, string>;
  stderr(): string;
  kill(signal?: NodeJS.Signals): Promise<number | null>;
}

/** Spawns a partita command and resolves on its `partita ready` line. */
export async function spawnPartita(
  args: string[],
  env: Record<string, string> = {},
  timeoutMs = 20_000,
): Promise<NodeProcess> {
  const child = spawn(process.execPath, [PARTITA_BIN, ...args], {
    stdio: ['ignore', 'pipe', 'pipe'],
    env: { ...process.env, PARTITA_LOG_LEVEL: process.env.PARTITA_TEST_LOG_LEVEL ?? 'warn', ...env },
  });
  let err = '';
  child.stderr!.on('data', (d: Buffer) => {
    err = (err + d.toString()).slice(-20_000);
  });
  let exitCode: number | null | undefined;
  const exited = new Promise<number | null>((r) =>
    child.once('exit', (code, sig) => {
      exitCode = code ?? (sig ? -1 : null);
      r(exitCode);
    }),
  );
  const ready = await new Promise<Record<string, string>>((resolve, reject) => {
    let out = '';
    const timer = setTimeout(
      () => reject(new Error(`no ready line within ${timeoutMs} ms: ${err}`)),
      timeoutMs,
    );
    child.stdout!.on('data', (d: Buffer) => {
      out += d.toString();
      const line = out.split('\n').find((l) => l.startsWith('partita ready'));
      if (line) {
        clearTimeout(timer);
        const pairs: Record<string, string> = {};
        for (const p of line.split(' ').slice(2)) {
          const i = p.indexOf('=');
          if (i > 0) pairs[p.slice(0, i)] = p.slice(i + 1);
        }
        resolve(pairs);
      }
    });
    child.once('exit', (code) => {
      clearTimeout(timer);
      reject(new Error(`exited with ${code} before ready: ${err}`));
    });
  });
  return {
    child,
    ready,
    stderr: () => err,
    async kill(signal: NodeJS.Signals = 'SIGKILL') {
      if (exitCode !== undefined) return exitCode;
      child.kill(signal);
      return exited;
    },
  };
}
