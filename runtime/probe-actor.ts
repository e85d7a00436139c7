// The probe: a system actor every node runs, whatever its --actors. A drill publishes probe events
// to every partition and times how long until each is applied again after a fault; its state is
// exactly-once, so it also proves that probes were neither lost nor doubled.
import { fileURLToPath } from 'node:url';
import { type ActorDefinition, defineActor } from './types.js';

/** Actor name and event type of the probe (`events.partita_probe.<key>`). */
export const PROBE_ACTOR = 'partita_probe';

export interface ProbeState {
  /** Probes applied. */
  n: number;
  /** The `i` of the last probe applied: probes of one key are numbered 1, 2, 3, ... */
  last: number;
  /** Probes that did not follow the last one (a gap or a repeat): must stay 0. */
  outOfOrder: number;
}

const probe: ActorDefinition<ProbeState, { i: number }> = defineActor({
  name: PROBE_ACTOR,
  events: [PROBE_ACTOR],
  guarantee: 'exactly-once',
  initial: () => ({ n: 0, last: 0, outOfOrder: 0 }),
  handle(state, event) {
    state.n += 1;
    if (event.data.i !== state.last + 1) state.outOfOrder += 1;
    state.last = event.data.i;
  },
});

export default probe;

/** This module's file, for the list of actor modules a node loads. */
export const PROBE_ACTOR_FILE = fileURLToPath(import.meta.url);
