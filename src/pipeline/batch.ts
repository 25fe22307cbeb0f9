import { Cause, Context, Deferred, Effect, Exit, Layer, Option, Queue, type Tracer } from "effect"
import type { InventoryError } from "../domain/errors.ts"
import { fateOf } from "../domain/fates.ts"
import type { OrderPlaced } from "../domain/events.ts"
import { afterRollback } from "../handlers/dispatch.ts"
import { orderPlacedAll, type PlacedEvent } from "../handlers/orders.ts"
import { formatTraceparent, noStackTrace } from "../observability/spans.ts"
import type { ReservationTimers } from "../reservations/ReservationTimers.ts"
import { type Stores, UnitOfWork } from "../stores/services.ts"
import type { Decoded } from "./decode.ts"
import { applyDecoded, applyOnce, type Outcome } from "./pipeline.ts"

/**
 * How the runtime applies a decoded event. By default one unit of work per event
 * (`applyDecoded`); `EventApplier.batched` groups the events ready at the same moment into one
 * transaction (issue 8).
 */
export const EventApplier = Context.Reference<{
  apply(decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers>
}>("inventory/pipeline/EventApplier", { defaultValue: () => ({ apply: applyDecoded }) })

export interface BatchSettings {
  /** Most events per transaction. */
  readonly maxSize: number
  /** Transactions in flight at once. */
  readonly concurrency: number
}

interface Pending {
  readonly decoded: Decoded
  readonly deliveryCount: number
  readonly done: Deferred.Deferred<Outcome>
  /** The caller's span: the event's work stays beneath its message's trace. */
  readonly parent: Option.Option<Tracer.AnySpan>
}

const isPlaced = (item: Pending): item is Pending & { readonly decoded: { readonly event: OrderPlaced } } =>
  item.decoded.event.event === "order.placed"

type InBatch =
  | { readonly _tag: "applied" | "duplicate" }
  | { readonly _tag: "dead"; readonly error: InventoryError }

/**
 * Group commit: the events that are ready together (at most one per ordering key, since a key's
 * lane waits for its event's outcome) run in one transaction, each in its own savepoint. One
 * event's failure rolls back only that savepoint; a permanent failure still gets its fate (and
 * what it must announce, like `inventory.reservation.failed`, is written in the same
 * transaction); a transient one is applied again on its own, with the full retry policy,
 * after the batch. Acks wait for the commit, as before. If the transaction itself fails (lost
 * connection), every event of the batch takes the one-by-one path.
 */
export const batched = (settings: BatchSettings): Layer.Layer<never, never, Stores | ReservationTimers> =>
  Layer.effectContext(Effect.gen(function*() {
    const context = yield* Effect.context<Stores | ReservationTimers>()
    const uow = yield* UnitOfWork
    const queue = yield* Queue.unbounded<Pending>()

    const underCaller = <A, E, R>(item: Pending, effect: Effect.Effect<A, E, R>) =>
      Option.isSome(item.parent) ? Effect.withParentSpan(effect, item.parent.value, noStackTrace) : effect

    const inBatch = (item: Pending): Effect.Effect<InBatch, InventoryError, Stores | ReservationTimers> =>
      uow.transaction(applyOnce(item.decoded)).pipe(
        Effect.map((result): InBatch => ({ _tag: result === "applied" ? "applied" : "duplicate" })),
        Effect.catch((error: InventoryError) =>
          fateOf(error) === "dead_letter"
            ? uow.transaction(afterRollback(item.decoded.event, item.decoded.eventId, error)).pipe(
              Effect.as<InBatch>({ _tag: "dead", error })
            )
            : Effect.fail(error)
        ),
        (effect) => underCaller(item, effect)
      )

    const alone = (item: Pending) =>
      underCaller(item, applyDecoded(item.decoded, item.deliveryCount)).pipe(
        Effect.flatMap((outcome) => Deferred.succeed(item.done, outcome))
      )

    /**
     * The batch's `order.placed` events in one set-based unit of work (`orderPlacedAll`). Its
     * span belongs to the first event's trace and links the others; each other event's trace
     * gets an `inventory.apply` span linking back to it.
     */
    const placedTogether = (items: ReadonlyArray<Pending & { readonly decoded: { readonly event: OrderPlaced } }>) =>
      Effect.gen(function*() {
        if (items.length === 0) return
        const t0 = performance.now()
        const events = items.map((item): PlacedEvent => ({
          event: item.decoded.event,
          eventId: item.decoded.eventId,
          traceparent: Option.isSome(item.parent) ? formatTraceparent(item.parent.value) : null
        }))
        const exit = yield* Effect.gen(function*() {
          const batchSpan = yield* Effect.currentSpan.pipe(Effect.option)
          for (const item of items.slice(1)) {
            if (Option.isNone(item.parent)) continue
            yield* Effect.withSpan(Effect.void, "inventory.apply", {
              captureStackTrace: false,
              parent: item.parent.value,
              attributes: { "inventory.event_type": "order.placed", "inventory.batch_size": items.length },
              links: Option.isSome(batchSpan) ? [{ span: batchSpan.value, attributes: {} }] : []
            })
          }
          return yield* uow.transaction(orderPlacedAll(events))
        }).pipe(
          Effect.withSpan("inventory.apply", {
            ...(Option.isSome(items[0]!.parent) ? { parent: items[0]!.parent.value } : {}),
            attributes: { "inventory.event_type": "order.placed", "inventory.batch_size": items.length },
            links: items.slice(1).flatMap((item) => Option.isSome(item.parent) ? [{ span: item.parent.value, attributes: {} }] : [])
          }),
          Effect.exit
        )
        process.stderr.write(`DBGB ${items.length} ${(performance.now() - t0).toFixed(1)}\n`)
        if (Exit.isFailure(exit)) {
          yield* Effect.logDebug("order.placed batch failed; applying its events one by one").pipe(
            Effect.annotateLogs({ size: items.length, cause: Cause.pretty(exit.cause) })
          )
          return yield* Effect.forEach(items, alone, { concurrency: "unbounded", discard: true })
        }
        for (const [i, result] of exit.value.entries()) {
          const item = items[i]!
          yield* Deferred.succeed(item.done, typeof result === "string"
            ? { _tag: result === "applied" ? "Ack" : "Duplicate", decoded: item.decoded }
            : { _tag: "DeadLetter", decoded: item.decoded, failure: { errorType: result._tag, message: result.message } })
        }
      })

    const run = (all: ReadonlyArray<Pending>) =>
      Effect.gen(function*() {
        yield* placedTogether(all.filter(isPlaced))
        const items = all.filter((item) => !isPlaced(item))
        if (items.length === 0) return
        const batch = yield* uow.transaction(
          Effect.forEach(items, (item) => Effect.exit(inBatch(item)))
        ).pipe(Effect.exit)
        if (Exit.isFailure(batch)) {
          yield* Effect.logDebug("batch transaction failed; applying its events one by one").pipe(
            Effect.annotateLogs({ size: items.length, cause: Cause.pretty(batch.cause) })
          )
          return yield* Effect.forEach(items, alone, { concurrency: "unbounded", discard: true })
        }
        const retry: Array<Pending> = []
        for (const [i, exit] of batch.value.entries()) {
          const item = items[i]!
          if (Exit.isFailure(exit)) {
            retry.push(item)
            continue
          }
          const r = exit.value
          yield* Deferred.succeed(item.done, r._tag === "dead"
            ? { _tag: "DeadLetter", decoded: item.decoded, failure: { errorType: r.error._tag, message: r.error.message } }
            : { _tag: r._tag === "applied" ? "Ack" : "Duplicate", decoded: item.decoded })
        }
        yield* Effect.forEach(retry, alone, { concurrency: "unbounded", discard: true })
      }).pipe(
        Effect.withSpan("inventory.batch", { attributes: { "inventory.batch_size": all.length } }),
        Effect.catchCause((cause) =>
          // Nothing may be left waiting: whatever is not decided yet takes the one-by-one path.
          Effect.logError("batch failed unexpectedly").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) }),
            Effect.andThen(Effect.forEach(all, (item) =>
              Deferred.isDoneUnsafe(item.done) ? Effect.void : alone(item), { discard: true }))
          )
        ),
        Effect.provideContext(context)
      )

    yield* Effect.logInfo("group commit on").pipe(Effect.annotateLogs({ max_size: settings.maxSize, concurrency: settings.concurrency }))
    const worker = Effect.forever(Effect.flatMap(Queue.takeBetween(queue, 1, settings.maxSize), run))
    for (let i = 0; i < settings.concurrency; i++) yield* Effect.forkScoped(worker)

    const apply = (decoded: Decoded, deliveryCount: number) =>
      Effect.gen(function*() {
        const done = yield* Deferred.make<Outcome>()
        const parent = yield* Effect.option(Effect.currentSpan)
        yield* Queue.offer(queue, { decoded, deliveryCount, done, parent })
        return yield* Deferred.await(done)
      })
    return Context.make(EventApplier, { apply })
  }))
