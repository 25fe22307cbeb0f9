import { Data } from "effect"
import { mayAwaitPredecessor } from "../domain/fates.ts"
import { type Failure, Outcome } from "../pipeline/pipeline.ts"
import type { DeadLetterResult } from "./deadLetter.ts"
import type { Settlement } from "./inbound.ts"

/** How a settled message's span ends: with its outcome recorded, or abandoned with a reason. */
export type Trace = Data.TaggedEnum<{
  Finished: {}
  Abandoned: { readonly reason: string }
}>
export const Trace = Data.taggedEnum<Trace>()

/** What the broker is told about one message, and what the consumer does beside it. */
export interface Told {
  readonly how: Settlement
  /** Hold consumption until the database answers. */
  readonly pause: boolean
  readonly trace: Trace
  /** The message committed outbox rows: wake the relay. */
  readonly nudgeRelay: boolean
  /** The failure to log as the message goes back to the queue, when the outcome was a retry. */
  readonly returned: Failure | undefined
}

/**
 * What to do with a message once its outcome is known:
 * - `Settle`: tell the broker now;
 * - `Defer`: try it again once behind its key's other waiting messages;
 * - `DeadLetter`: run the dead-letter path first; `afterDeadLetter` then says what to tell.
 */
export type Verdict = Data.TaggedEnum<{
  Settle: { readonly told: Told }
  Defer: {}
  DeadLetter: { readonly failure: Failure }
}>
export const Verdict = Data.taggedEnum<Verdict>()

const told = (how: Settlement, trace: Trace, extra: Partial<Told> = {}): Told => ({
  how,
  pause: false,
  trace,
  nudgeRelay: false,
  returned: undefined,
  ...extra
})

/**
 * The broker's instruction for an outcome; `canDefer` says whether other messages of its key
 * wait behind it and it was not deferred before. Which failures may defer comes from the fate
 * table (`awaitsPredecessor`): this layer names no error tag.
 */
export const verdict = (outcome: Outcome, canDefer: boolean): Verdict =>
  Outcome.$match(outcome, {
    Ack: () => Verdict.Settle({ told: told("ack", Trace.Finished(), { nudgeRelay: true }) }),
    Duplicate: () => Verdict.Settle({ told: told("ack", Trace.Finished()) }),
    DeadLetter: ({ failure }) => Verdict.DeadLetter({ failure }),
    Retry: ({ failure, pause }) =>
      canDefer && mayAwaitPredecessor(failure.errorType)
        ? Verdict.Defer()
        : Verdict.Settle({
          // An outage is not the message's fault (uncounted requeue); a failure that may pass is, and counts.
          told: told(pause ? "requeue" : "retry", Trace.Finished(), { pause, returned: failure })
        })
  })

/** What the broker is told once the dead-letter path ran. */
export const afterDeadLetter = (result: DeadLetterResult, failure: Failure): Told => {
  switch (result._tag) {
    case "DeadLettered":
      return told("ack", Trace.Finished())
    case "StoreUnavailable":
      // An outage is not the message's fault: back to the queue, uncounted, and pause.
      return told("requeue", Trace.Abandoned({ reason: `dead-lettering waits for the database (${failure.errorType})` }), {
        pause: true
      })
    case "CopyUnconfirmed":
      // Counted, so the queue's x-delivery-limit bounds it if the broker never confirms.
      return told("retry", Trace.Abandoned({ reason: `dead-letter copy unconfirmed (${failure.errorType})` }))
    case "Unrecordable":
      // The broker dead-letters it to the same DLQ (x-death says why): it terminates.
      return told("reject", Trace.Abandoned({ reason: `dead-letter record impossible (${failure.errorType})` }))
  }
}

/** The message goes back to the queue: the key's later messages must go back behind it. */
export const returnsToQueue = (how: Settlement): boolean => how === "retry" || how === "requeue"

/** The message reached its final outcome on this delivery (the classic-queue counter forgets it). */
export const isFinal = (how: Settlement): boolean => how === "ack" || how === "reject"
