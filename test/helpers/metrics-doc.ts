// The metric tables of docs/metrics.md, which tests hold the code, the alerts and the dashboard to.
import { readFileSync } from 'node:fs';
import { fileURLToPath } from 'node:url';

const DOC = fileURLToPath(new URL('../../../docs/metrics.md', import.meta.url));

export interface DocumentedMetric {
  name: string;
  type: string;
  labels: string[];
  moves: 'load' | 'start' | 'failure';
  process: 'node' | 'gateway';
}

/** The metric tables of docs/metrics.md (sections "Node" and "Gateway"). */
export function documentedMetrics(text = readFileSync(DOC, 'utf8')): DocumentedMetric[] {
  const out: DocumentedMetric[] = [];
  let section = '';
  for (const line of text.split('\n')) {
    if (line.startsWith('## ')) section = line.slice(3).trim();
    const m = /^\|\s*`(partita_[a-z0-9_]+)`\s*\|\s*(\w+)\s*\|([^|]*)\|\s*(\w+)\s*\|/.exec(line);
    if (!m || (section !== 'Node' && section !== 'Gateway')) continue;
    out.push({
      name: m[1]!,
      type: m[2]!,
      labels: [...m[3]!.matchAll(/`(\w+)`/g)].map((x) => x[1]!),
      moves: m[4] as DocumentedMetric['moves'],
      process: section === 'Node' ? 'node' : 'gateway',
    });
  }
  return out;
}
