// The time limit on actor code. A worker thread stuck in a handler cannot answer, so the main
// thread watches it through a small SharedArrayBuffer per task: before every call into actor code
// the worker writes which call it is (batch, sequence, actor, key) and bumps a counter. The
// dispatcher samples the counter on a timer; once it has not moved for the limit while the task
// is still applying, it claims the task and aborts it (piscina terminates the thread and starts
// another). The claim is a compare-and-swap on the task's phase that the worker's commit needs as
// well, so a thread is only ever terminated before its LMDB write transaction, never inside it.
import type { CallSite } from './batch.js';

// Int32 slots.
const PHASE = 0;
const COUNTER = 1;
const BATCH = 2;
const ACTOR = 3;
const FIRE = 4;
const KEY_LEN = 5;
// Float64 slot (byte 24): the call's sequence.
const SEQ_BYTE = 24;
const KEY_BYTE = 32;
// Keys that reach actor code are at most MAX_KEY_BYTES (512); a firing's key comes from a stored
// record, which LMDB bounds to 1978 bytes with its actor.
const KEY_ROOM = 2048;

/** `waiting` → `applying` → `committing`, or `applying` → `claimed` (about to be terminated). */
const WAITING = 0;
const APPLYING = 1;
const CLAIMED = 2;
const COMMITTING = 3;

export function watchBuffer(): SharedArrayBuffer {
  return new SharedArrayBuffer(KEY_BYTE + KEY_ROOM);
}

const encoder = new TextEncoder();
const decoder = new TextDecoder();

/** The worker's side: records each call and asks leave to commit. */
export class CallRecorder {
  private readonly i32: Int32Array;
  private readonly seq: Float64Array;
  private readonly key: Uint8Array;

  constructor(
    buffer: SharedArrayBuffer,
    private readonly actorIndex: ReadonlyMap<string, number>,
  ) {
    this.i32 = new Int32Array(buffer, 0, KEY_BYTE / 4);
    this.seq = new Float64Array(buffer, SEQ_BYTE, 1);
    this.key = new Uint8Array(buffer, KEY_BYTE, KEY_ROOM);
    Atomics.store(this.i32, PHASE, APPLYING);
  }

  batch(index: number): void {
    this.i32[BATCH] = index;
  }

  /** Before a call into actor code (ApplyOptions.onCall). Odd counter: the record is being written. */
  readonly record = (seq: number, actor: string, key: string, fire: boolean): void => {
    Atomics.add(this.i32, COUNTER, 1);
    this.i32[ACTOR] = this.actorIndex.get(actor) ?? -1;
    this.i32[FIRE] = fire ? 1 : 0;
    this.seq[0] = seq;
    this.i32[KEY_LEN] = encoder.encodeInto(key, this.key).written;
    Atomics.add(this.i32, COUNTER, 1);
  };

  /**
   * Leave to start the commit: false when the watchdog claimed the task first, whose thread is
   * then about to be terminated and must not begin a write transaction.
   */
  commit(): boolean {
    return Atomics.compareExchange(this.i32, PHASE, APPLYING, COMMITTING) === APPLYING;
  }

  /**
   * After a refused commit: waits for the termination (an answer or a thrown error would reach a
   * pool that already gave the task up).
   */
  awaitTermination(): never {
    Atomics.wait(this.i32, PHASE, CLAIMED);
    throw new Error('the watchdog claimed this task');
  }
}

/** A call as the main thread reads it back: the actor as its index in the loaded actors. */
export interface RecordedCall extends Omit<CallSite, 'actor'> {
  batch: number;
  actor: number;
}

/** The main thread's side, for one task. */
export class TaskWatch {
  private readonly i32: Int32Array;
  private readonly seq: Float64Array;
  private readonly key: Uint8Array;
  private seen = 0;
  private since = 0;

  constructor(readonly buffer: SharedArrayBuffer) {
    this.i32 = new Int32Array(buffer, 0, KEY_BYTE / 4);
    this.seq = new Float64Array(buffer, SEQ_BYTE, 1);
    this.key = new Uint8Array(buffer, KEY_BYTE, KEY_ROOM);
  }

  /**
   * Samples the task at `now` (ms): the call that has been running for `limitMs` or more, claimed
   * (the caller must then abort the task), or undefined.
   */
  overrun(now: number, limitMs: number): RecordedCall | undefined {
    const c = Atomics.load(this.i32, COUNTER);
    if (c !== this.seen) {
      this.seen = c;
      this.since = now;
      return undefined;
    }
    // No call yet (the runtime's own work), or a record being written: nothing to blame.
    if (c === 0 || c % 2 === 1 || now - this.since < limitMs) return undefined;
    const call = this.read();
    if (Atomics.load(this.i32, COUNTER) !== c) return undefined;
    if (Atomics.compareExchange(this.i32, PHASE, APPLYING, CLAIMED) !== APPLYING) return undefined;
    return call;
  }

  /**
   * After the worker died on its own: the call it was in, if it died while applying (nothing of
   * the task was committed then), else undefined.
   */
  diedIn(): RecordedCall | undefined {
    if (Atomics.load(this.i32, PHASE) !== APPLYING) return undefined;
    const c = Atomics.load(this.i32, COUNTER);
    if (c === 0 || c % 2 === 1) return undefined;
    return this.read();
  }

  /** Whether the task never reached its commit (safe to run again). */
  uncommitted(): boolean {
    const phase = Atomics.load(this.i32, PHASE);
    return phase === WAITING || phase === APPLYING || phase === CLAIMED;
  }

  private read(): RecordedCall {
    return {
      batch: this.i32[BATCH]!,
      seq: this.seq[0]!,
      actor: this.i32[ACTOR]!,
      key: decoder.decode(this.key.slice(0, this.i32[KEY_LEN]!)),
      fire: this.i32[FIRE] === 1,
    };
  }
}
