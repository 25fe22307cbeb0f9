import { Cause, Context, Deferred, Effect, Exit, Layer, Option, Queue, type Tracer } from "effect"
import type { OrderPlaced } from "../domain/events.ts"
import { orderPlacedAll, type PlacedEvent } from "../handlers/orders.ts"
import { formatTraceparent, noStackTrace } from "../observability/spans.ts"
import type { ReservationTimers } from "../reservations/ReservationTimers.ts"
import { type Stores, UnitOfWork } from "../stores/services.ts"
import type { Decoded } from "./decode.ts"
import { applyDecoded, type Outcome } from "./pipeline.ts"

/**
 * How the runtime applies a decoded event: one unit of work per event (`applyDecoded`) unless
 * `batched` is provided, which groups the `order.placed` events ready at the same moment (issue 8).
 */
export const EventApplier = Context.Reference<{
  apply(decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers>
}>("inventory/pipeline/EventApplier", { defaultValue: () => ({ apply: applyDecoded }) })

/** Group commit (issue 8): `order.placed` events ready together share one set-based transaction. */
export interface BatchSettings {
  /** Most `order.placed` events per transaction; 1 turns grouping off (one transaction per event). */
  readonly maxSize: number
  /** Transactions in flight at once. */
  readonly concurrency: number
}

interface Pending {
  readonly decoded: Decoded & { readonly event: OrderPlaced }
  readonly deliveryCount: number
  readonly done: Deferred.Deferred<Outcome>
  /** The caller's span: the event's work stays beneath its message's trace. */
  readonly parent: Option.Option<Tracer.AnySpan>
}

const isPlaced = (decoded: Decoded): decoded is Decoded & { readonly event: OrderPlaced } =>
  decoded.event.event === "order.placed"

/**
 * Group commit for the hot event: the `order.placed` events that are ready together (at most one
 * per ordering key, since a key's lane waits for its event's outcome) are applied in one
 * set-based unit of work (`orderPlacedAll`), a fixed handful of statements however many there
 * are, by `concurrency` workers taking up to `maxSize` each. Each event still gets its own
 * outcome: applied, duplicate, or dead-lettered for stock (with its
 * `inventory.reservation.failed` written in the same transaction). Acks wait for the commit, as
 * before. If the transaction fails (a lost connection, a deadlock), every event of the group
 * takes the one-by-one path with the full retry policy.
 *
 * Every other event type is applied one by one, as without batching. A savepoint per event in
 * one shared transaction was measured slower than that, and deadlock-prone when several such
 * transactions run at once (README, throughput).
 */
export const batched = (settings: BatchSettings): Layer.Layer<never, never, Stores | ReservationTimers> =>
  Layer.effectContext(Effect.gen(function*() {
    const context = yield* Effect.context<Stores | ReservationTimers>()
    const uow = yield* UnitOfWork
    const queue = yield* Queue.unbounded<Pending>()

    const alone = (item: Pending) =>
      applyDecoded(item.decoded, item.deliveryCount).pipe(
        (effect) => Option.isSome(item.parent) ? Effect.withParentSpan(effect, item.parent.value, noStackTrace) : effect,
        Effect.flatMap((outcome) => Deferred.succeed(item.done, outcome))
      )

    /**
     * One group in one unit of work. Its span belongs to the first event's trace and links the
     * others; each other event's trace gets an `inventory.apply` span linking back to it.
     */
    const run = (items: ReadonlyArray<Pending>) =>
      Effect.gen(function*() {
        const events = items.map((item): PlacedEvent => ({
          event: item.decoded.event,
          eventId: item.decoded.eventId,
          traceparent: Option.isSome(item.parent) ? formatTraceparent(item.parent.value) : null
        }))
        const attributes = { "inventory.event_type": "order.placed", "inventory.batch_size": items.length }
        const exit = yield* Effect.gen(function*() {
          const groupSpan = yield* Effect.currentSpan.pipe(Effect.option)
          for (const item of items.slice(1)) {
            if (Option.isNone(item.parent)) continue
            yield* Effect.withSpan(Effect.void, "inventory.apply", {
              captureStackTrace: false,
              parent: item.parent.value,
              attributes,
              links: Option.isSome(groupSpan) ? [{ span: groupSpan.value, attributes: {} }] : []
            })
          }
          return yield* uow.transaction(orderPlacedAll(events))
        }).pipe(
          Effect.withSpan("inventory.apply", {
            ...(Option.isSome(items[0]!.parent) ? { parent: items[0]!.parent.value } : {}),
            attributes,
            links: items.slice(1).flatMap((item) => Option.isSome(item.parent) ? [{ span: item.parent.value, attributes: {} }] : [])
          }),
          Effect.exit
        )
        if (Exit.isFailure(exit)) {
          yield* Effect.logDebug("order.placed group failed; applying its events one by one").pipe(
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
      }).pipe(
        Effect.catchCause((cause) =>
          // Nothing may be left waiting: whatever is not decided yet takes the one-by-one path.
          Effect.logError("order.placed group failed unexpectedly").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) }),
            Effect.andThen(Effect.forEach(items, (item) =>
              Deferred.isDoneUnsafe(item.done) ? Effect.void : alone(item), { discard: true }))
          )
        ),
        Effect.provideContext(context)
      )

    yield* Effect.logInfo("group commit on for order.placed").pipe(
      Effect.annotateLogs({ max_size: settings.maxSize, concurrency: settings.concurrency })
    )
    const worker = Effect.forever(Effect.flatMap(Queue.takeBetween(queue, 1, settings.maxSize), run))
    for (let i = 0; i < settings.concurrency; i++) yield* Effect.forkScoped(worker)

    const apply = (decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers> =>
      isPlaced(decoded)
        ? Effect.gen(function*() {
          const done = yield* Deferred.make<Outcome>()
          const parent = yield* Effect.option(Effect.currentSpan)
          yield* Queue.offer(queue, { decoded, deliveryCount, done, parent })
          return yield* Deferred.await(done)
        })
        : applyDecoded(decoded, deliveryCount)
    return Context.make(EventApplier, { apply })
  }))
