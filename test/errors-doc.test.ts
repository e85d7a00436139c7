// docs/errors.md and ERRORS stay in step: a section per code, and no section for a code that is gone.
import assert from 'node:assert/strict';
import { readFileSync } from 'node:fs';
import { describe, it } from 'node:test';
import { ERRORS, isErrorCode } from '../runtime/index.js';

// The compiled test runs from dist/test/, the document stays at the repository root.
const DOC = new URL('../../docs/errors.md', import.meta.url);

function headings(): string[] {
  return readFileSync(DOC, 'utf8')
    .split('\n')
    .filter((line) => line.startsWith('## '))
    .map((line) => line.slice(3).trim());
}

describe('docs/errors.md', () => {
  it('has a section for every error code', () => {
    const documented = new Set(headings());
    const missing = Object.keys(ERRORS).filter((code) => !documented.has(code));
    assert.deepEqual(
      missing,
      [],
      `codes without a "## <code>" section in docs/errors.md: ${missing.join(', ')}`,
    );
  });

  it('names only real error codes, each once', () => {
    const all = headings();
    const unknown = all.filter((h) => !isErrorCode(h));
    assert.deepEqual(
      unknown,
      [],
      `sections of docs/errors.md that name no code in ERRORS: ${unknown.join(', ')}`,
    );
    const repeated = all.filter((h, i) => all.indexOf(h) !== i);
    assert.deepEqual(repeated, [], `codes documented twice: ${repeated.join(', ')}`);
  });

  it('says what each code means, when it happens and how to solve it', () => {
    const sections = readFileSync(DOC, 'utf8').split(/^## /m).slice(1);
    for (const section of sections) {
      const code = section.slice(0, section.indexOf('\n')).trim();
      for (const part of ['**What it means:**', '**When it happens:**', '**How to solve it:**']) {
        assert.ok(section.includes(part), `${code}: no ${part}`);
      }
    }
  });
});
