// Which node runs which partition: every node computes the same answer from the same list of live
// nodes, so no coordinator is needed. Rendezvous hashing ranks the nodes for each partition; a cap
// of ceil(partitions / nodes) per node keeps the load balanced. A node joining or leaving moves
// few partitions: only those whose ranking or whose cap changed.
import { hash32 } from './hash.js';

/** A node's score for a partition: the higher, the more the partition wants the node. */
function score(node: string, partition: number): number {
  return hash32(`${node}/${partition}`);
}

/** Maps each partition to a node id; empty when there are no nodes. */
export function assignPartitions(nodes: readonly string[], partitions: number): Map<number, string> {
  const out = new Map<number, string>();
  const live = [...new Set(nodes)].sort();
  if (live.length === 0) return out;
  const cap = Math.ceil(partitions / live.length);
  const prefs = Array.from({ length: partitions }, (_, p) =>
    live.map((n) => ({ n, s: score(n, p) })).sort((a, b) => b.s - a.s || (a.n < b.n ? -1 : 1)),
  );
  // Every partition to its favourite node, then overloaded nodes shed the partitions that lose
  // least by moving (the smallest gap to their next choice with room): plain rendezvous hashing
  // where the load allows, so a joining node takes mostly its own winners.
  const rank = new Array<number>(partitions).fill(0);
  const owned = new Map(live.map((n) => [n, [] as number[]]));
  for (let p = 0; p < partitions; p++) owned.get(prefs[p]![0]!.n)!.push(p);
  for (;;) {
    const over = live.find((n) => owned.get(n)!.length > cap);
    if (!over) break;
    let best: { p: number; to: number; cost: number } | undefined;
    for (const p of owned.get(over)!) {
      const pr = prefs[p]!;
      for (let r = rank[p]! + 1; r < pr.length; r++) {
        if (owned.get(pr[r]!.n)!.length >= cap) continue;
        const cost = pr[rank[p]!]!.s - pr[r]!.s;
        if (!best || cost < best.cost || (cost === best.cost && p < best.p)) best = { p, to: r, cost };
        break;
      }
    }
    const list = owned.get(over)!;
    list.splice(list.indexOf(best!.p), 1);
    rank[best!.p] = best!.to;
    owned.get(prefs[best!.p]![best!.to]!.n)!.push(best!.p);
  }
  for (const [n, ps] of owned) for (const p of ps) out.set(p, n);
  return out;
}

/** The partitions assigned to `node`. */
export function partitionsOf(node: string, nodes: readonly string[], partitions: number): Set<number> {
  const mine = new Set<number>();
  for (const [p, n] of assignPartitions(nodes, partitions)) if (n === node) mine.add(p);
  return mine;
}
