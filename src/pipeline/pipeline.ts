import { Cause, Data, Effect, Exit, Schedule } from "effect"
import type { InventoryError, InventoryErrorTag } from "../domain/errors.ts"
import { fateOf } from "../domain/fates.ts"
import { afterRollback, handleEvent } from "../handlers/dispatch.ts"
import { nowDate } from "../handlers/outbound.ts"
import { noStackTrace } from "../observability/spans.ts"
import { EventLog, UnitOfWork } from "../stores/services.ts"
import { type Decoded, decodeDelivery, type Delivery } from "./decode.ts"
import { ProcessingPolicy } from "./policy.ts"

/** Why a message could not be applied, as the DLQ headers and metrics name it. */
export interface Failure {
  /** The error's tag, or `Defect` for a bug that threw. */
  readonly errorType: InventoryErrorTag | "Defect"
  readonly message: string
}

/**
 * The one result of a delivery; the runtime only acts on it:
 * - `Ack`: applied and committed;
 * - `Duplicate`: applied before (same `event_id`), nothing changed;
 * - `Retry`: a transient failure outlived the in-process retries; give it back to the queue,
 *   and when `pause` hold consumption until the database answers;
 * - `DeadLetter`: permanent failure, or too many deliveries.
 */
export type Outcome = Data.TaggedEnum<{
  Ack: { readonly decoded: Decoded }
  Duplicate: { readonly decoded: Decoded }
  Retry: { readonly decoded: Decoded; readonly failure: Failure; readonly pause: boolean }
  DeadLetter: { readonly decoded: Decoded | null; readonly failure: Failure }
}>

/** Constructors and the exhaustive `$match` of `Outcome`. */
export const Outcome = Data.taggedEnum<Outcome>()

// On one line: the message becomes the x-error-message header and a log line's message, and a
// schema's failure text spans several lines.
const oneLine = (text: string) => text.trim().replace(/\s*\n\s*(?=at \[)/g, " ").replace(/\s*\n\s*/g, "; ")
/** The failure as the DLQ headers, logs and metrics name it. */
export const describe = (error: InventoryError): Failure => ({ errorType: error._tag, message: oneLine(error.message) })

/** One event's unit of work: the event-log row, every effect, the outbox rows, or nothing (SPEC 6). */
export const unitOfWork = (decoded: Decoded) =>
  Effect.gen(function*() {
    const uow = yield* UnitOfWork
    const log = yield* EventLog
    return yield* uow.transaction(Effect.gen(function*() {
      const first = yield* log.record({
        organization_id: decoded.event.organization_id,
        event_id: decoded.eventId,
        event_type: decoded.event.event,
        processed_at: yield* nowDate
      })
      if (!first) return "duplicate" as const
      yield* handleEvent(decoded.event, decoded.eventId)
      return "applied" as const
    }))
  })

/** One attempt at an event's own unit of work, under a span of its own: retries are visible. */
export const applyOnce = (decoded: Decoded) =>
  unitOfWork(decoded).pipe(Effect.withSpan("inventory.apply", { attributes: { "inventory.event_type": decoded.event.event } }, noStackTrace))

/**
 * Applies a decoded event: transient failures are retried in process (1 s, 2 s, 4 s by
 * default), permanent ones are not; the fate of what still fails comes from the routing table.
 */
export const applyDecoded = (decoded: Decoded, deliveryCount: number) =>
  Effect.gen(function*() {
    const policy = yield* ProcessingPolicy
    const schedule = Schedule.max([
      Schedule.exponential(policy.retryBaseDelay, 2),
      Schedule.recurs(policy.retries)
    ])
    const exit = yield* applyOnce(decoded).pipe(
      Effect.retry({ schedule, while: (error: InventoryError) => fateOf(error) !== "dead_letter" }),
      Effect.exit
    )
    if (Exit.isSuccess(exit)) {
      return exit.value === "applied" ? Outcome.Ack({ decoded }) : Outcome.Duplicate({ decoded })
    }
    const failed = exit.cause.reasons.find(Cause.isFailReason)
    if (failed === undefined) {
      // A defect is a bug, not the message's fault: give it more deliveries, then park it.
      const failure: Failure = { errorType: "Defect", message: Cause.pretty(exit.cause).split("\n")[0]!.slice(0, 500) }
      yield* Effect.logError("handler defect").pipe(Effect.annotateLogs({ cause: Cause.pretty(exit.cause) }))
      return deliveryCount >= policy.maxDeliveries
        ? Outcome.DeadLetter({ decoded, failure })
        : Outcome.Retry({ decoded, failure, pause: false })
    }
    const error = failed.error
    const failure = describe(error)
    switch (fateOf(error)) {
      case "dead_letter": {
        // What the failure itself must announce is written first; if even that cannot be
        // written, the message goes back rather than lose it.
        const recorded = yield* Effect.flatMap(UnitOfWork, (u) => u.transaction(afterRollback(decoded.event, decoded.eventId, error))).pipe(Effect.exit)
        if (Exit.isFailure(recorded)) {
          yield* Effect.logError("could not record the consequences of a failed event").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(recorded.cause) })
          )
          return Outcome.Retry({ decoded, failure, pause: true })
        }
        return Outcome.DeadLetter({ decoded, failure })
      }
      case "retry":
        return deliveryCount >= policy.maxDeliveries
          ? Outcome.DeadLetter({ decoded, failure: { ...failure, message: `${failure.message} (after ${deliveryCount} deliveries)` } })
          : Outcome.Retry({ decoded, failure, pause: false })
      case "retry_until_healthy":
        // An outage is never the message's fault: it goes back however often it was delivered.
        return Outcome.Retry({ decoded, failure, pause: true })
    }
  })

/** A delivery that cannot be decoded is dead-lettered at once, with nothing decoded (SPEC 2). */
export const undecodable = (error: InventoryError): Outcome => Outcome.DeadLetter({ decoded: null, failure: describe(error) })

/** Raw bytes and properties in, one outcome out: the whole broker-free pipeline. */
export const processDelivery = (delivery: Delivery) =>
  decodeDelivery(delivery).pipe(
    Effect.withSpan("inventory.decode", {}, noStackTrace),
    Effect.matchEffect({
      onFailure: (error) => Effect.succeed(undecodable(error)),
      onSuccess: (decoded) => applyDecoded(decoded, delivery.deliveryCount)
    })
  )
