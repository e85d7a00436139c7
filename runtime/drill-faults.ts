// The faults a drill can inject into a running node without access to its process: a node started
// with `allowDrills` answers requests on `partita.drill.<node id>` and then crashes, stalls or
// hands its partitions over, as if it had been sent SIGKILL, SIGSTOP or SIGTERM.
import type { NatsConnection, Subscription } from '@nats-io/transport-node';
import type { Logger } from './logger.js';

export const DRILL_PREFIX = 'partita.drill';

export type DrillFault =
  /** Exit at once, as SIGKILL: no checkpoint, no release; the leases expire. */
  | { fault: 'crash' }
  /** Block the main thread for `ms` (past the lease TTL to be fenced), as SIGSTOP then SIGCONT. */
  | { fault: 'stall'; ms: number }
  /** Stop cleanly, as SIGTERM: checkpoint, hand the partitions over, exit 0. */
  | { fault: 'handoff' }
  /** Nothing: tells the drill that the node accepts faults. */
  | { fault: 'ping' };

export type DrillFaultKind = Exclude<DrillFault['fault'], 'ping'>;
export const DRILL_FAULT_KINDS: readonly DrillFaultKind[] = ['crash', 'stall', 'handoff'];

/**
 * Defects a node can be built with on purpose (see NodeOptions.faults): `ack-before-commit` is a
 * bug the chaos harness must catch; `lose-worker-answers` (every 4th worker answer is lost after
 * its commit, as when a worker thread dies on its way back) is a fault the runtime must survive.
 */
export type InjectedDefect = 'ack-before-commit' | 'lose-worker-answers';
export const INJECTED_DEFECTS: readonly InjectedDefect[] = ['ack-before-commit', 'lose-worker-answers'];

export function drillSubject(nodeId: string): string {
  return `${DRILL_PREFIX}.${nodeId}`;
}

/** Serves drill faults on the node's subject until unsubscribed. */
export function serveDrillFaults(nc: NatsConnection, nodeId: string, log: Logger): Subscription {
  return nc.subscribe(drillSubject(nodeId), {
    callback: (err, m) => {
      if (err) return;
      let f: DrillFault;
      try {
        f = m.json<DrillFault>();
        if (!['crash', 'stall', 'handoff', 'ping'].includes(f.fault))
          throw new Error(`unknown fault "${f.fault}"`);
      } catch (e) {
        m.respond(JSON.stringify({ ok: false, error: (e as Error).message }));
        return;
      }
      m.respond(JSON.stringify({ ok: true, node: nodeId }));
      if (f.fault === 'ping') return;
      log.warn({ fault: f }, 'drill fault injected');
      // Let the reply leave before the fault takes the process down or freezes it.
      void nc.flush().then(() => {
        if (f.fault === 'crash') process.kill(process.pid, 'SIGKILL');
        else if (f.fault === 'handoff') process.kill(process.pid, 'SIGTERM');
        else {
          const until = performance.now() + Math.max(0, Math.min(f.ms, 120_000));
          while (performance.now() < until) {
            // A frozen main thread: no renewals, no deliveries, no publishes.
          }
        }
      });
    },
  });
}
