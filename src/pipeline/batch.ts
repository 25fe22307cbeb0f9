import { Cause, Context, Deferred, Effect, Exit, FiberSet, Layer, Option, Queue, type Tracer } from "effect"
import type { OrderPlaced } from "../domain/events.ts"
import { orderPlacedAll, type PlacedEvent } from "../handlers/orders/placedTogether.ts"
import { formatTraceparent, noStackTrace } from "../observability/spans.ts"
import { type ReservationTimers, type Stores, UnitOfWork } from "../stores/services.ts"
import type { Decoded } from "./decode.ts"
import { applyDecoded, Outcome } from "./pipeline.ts"

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
  /** Most transactions in flight at once; beyond the first, only under a backlog (`backlogThreshold`). */
  readonly concurrency: number
}

interface Pending {
  readonly decoded: Decoded & { readonly event: OrderPlaced }
  readonly deliveryCount: number
  readonly done: Deferred.Deferred<Outcome>
  /** The caller's span: the event's work stays beneath its message's trace. */
  readonly parent: Option.Option<Tracer.AnySpan>
}

/**
 * How many `order.placed` must be waiting before a second group starts beside a running one: a
 * quarter of a full group (1 when grouping is off, so every worker is used as before).
 */
export const backlogThreshold = (settings: BatchSettings): number => Math.max(1, Math.floor(settings.maxSize / 4))

const isPlaced = (decoded: Decoded): decoded is Decoded & { readonly event: OrderPlaced } =>
  decoded.event.event === "order.placed"

/**
 * Group commit for the hot event: the `order.placed` events that are ready together (at most one
 * per ordering key, since a key's lane waits for its event's outcome) are applied in one
 * set-based unit of work (`orderPlacedAll`), a fixed handful of statements however many there
 * are, up to `maxSize` per group; one group at a time, and up to `concurrency` at once under a
 * backlog. Each event still gets its own outcome: applied, duplicate, or dead-lettered for stock
 * (with its `inventory.reservation.failed` written in the same transaction). Acks wait for the
 * commit, as before. If the transaction fails (a lost connection, a deadlock), every event of
 * the group takes the one-by-one path with the full retry policy.
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
            ? (result === "applied" ? Outcome.Ack : Outcome.Duplicate)({ decoded: item.decoded })
            : Outcome.DeadLetter({ decoded: item.decoded, failure: { errorType: result._tag, message: result.message } }))
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

    // A group starts when none is running. Another starts beside it, up to `concurrency`, only
    // once a backlog has built up: under a light load one transaction at a time, carrying
    // everything that arrived meanwhile, costs the machine less than several small ones (and
    // then waits less for it); under a backlog the extra transactions keep PostgreSQL busy.
    const backlog = backlogThreshold(settings)
    const groups = yield* FiberSet.make<void>()
    const changed = yield* Queue.sliding<void>(1)
    let running = 0
    const mayStart = () => running === 0 || (running < settings.concurrency && Queue.sizeUnsafe(queue) >= backlog)
    yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
      while (!mayStart()) yield* Queue.take(changed)
      const items = yield* Queue.takeBetween(queue, 1, settings.maxSize)
      running++
      yield* FiberSet.run(groups, run(items).pipe(Effect.ensuring(Effect.sync(() => {
        running--
        Queue.offerUnsafe(changed, undefined)
      }))))
    })))

    yield* Effect.logInfo("group commit on for order.placed").pipe(
      Effect.annotateLogs({ max_size: settings.maxSize, concurrency: settings.concurrency, backlog })
    )

    const apply = (decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers> =>
      isPlaced(decoded)
        ? Effect.gen(function*() {
          const done = yield* Deferred.make<Outcome>()
          const parent = yield* Effect.option(Effect.currentSpan)
          yield* Queue.offer(queue, { decoded, deliveryCount, done, parent })
          if (running > 0 && Queue.sizeUnsafe(queue) >= backlog) Queue.offerUnsafe(changed, undefined)
          return yield* Deferred.await(done)
        })
        : applyDecoded(decoded, deliveryCount)
    return Context.make(EventApplier, { apply })
  }))
