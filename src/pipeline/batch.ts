import { Cause, Context, Deferred, Effect, Exit, FiberSet, Layer, Metric, Option, Queue, type Tracer } from "effect"
import type { InventoryError } from "../domain/errors.ts"
import { fateOf } from "../domain/fates.ts"
import { afterRollback } from "../handlers/dispatch.ts"
import { nowDate } from "../handlers/outbound.ts"
import { demandOf } from "../handlers/reads.ts"
import { groupSize } from "../observability/metrics.ts"
import { noStackTrace } from "../observability/spans.ts"
import { makeStaged, OutsideWorkingSet, type Staged } from "../stores/memory/staged.ts"
import { type ReservationTimers, type Stores, UnitOfWork, WorkingSet } from "../stores/services.ts"
import type { Decoded } from "./decode.ts"
import { applyDecoded, applyOnce, describe, Outcome } from "./pipeline.ts"

/**
 * How the runtime applies a decoded event: one unit of work per event (`applyDecoded`) unless
 * `batched` is provided, which applies the events ready at the same moment together (issue 18).
 */
export const EventApplier = Context.Reference<{
  apply(decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers>
}>("inventory/pipeline/EventApplier", { defaultValue: () => ({ apply: applyDecoded }) })

/** Group commit: events ready together share one set-based transaction. */
export interface BatchSettings {
  /** Most events per transaction; 1 turns grouping off (one transaction per event). */
  readonly maxSize: number
  /** Most transactions in flight at once; beyond the first, only under a backlog (`backlogThreshold`). */
  readonly concurrency: number
}

/**
 * How many events must be waiting before a second group starts beside a running one: a quarter
 * of a full group (1 when grouping is off, so every worker is used as before).
 */
export const backlogThreshold = (settings: BatchSettings): number => Math.max(1, Math.floor(settings.maxSize / 4))

/** One event of a group, and the span its work belongs under. */
export interface GroupEvent {
  readonly decoded: Decoded
  readonly parent: Option.Option<Tracer.AnySpan>
}

/**
 * What became of one event of a group:
 * - `applied` / `duplicate`: as one unit of work alone would have it;
 * - `Refused`: a permanent failure (its fate is the dead-letter queue); its effects were undone
 *   and what the failure announces (`afterRollback`) was written in the group;
 * - `Alone`: a failure worth retrying, or a defect: undone, to be applied again on its own with
 *   the full retry policy once the group committed.
 */
export type GroupResult =
  | "applied"
  | "duplicate"
  | { readonly _tag: "Refused"; readonly error: InventoryError }
  | { readonly _tag: "Alone"; readonly error: InventoryError | null }

let staged: Staged | undefined
/** The staged stores are built once: they hold no rows of their own, only the current group's. */
const stagedStores = () => (staged ??= Effect.runSync(makeStaged))

const isOutside = (cause: Cause.Cause<unknown>) =>
  cause.reasons.some((reason) => Cause.isDieReason(reason) && reason.defect instanceof OutsideWorkingSet)

/**
 * Many events of any types in one unit of work (the caller's), in a constant number of
 * statements however many there are (issue 18). It leaves what applying them one at a time, in
 * the given order, would leave: the rows they may read are loaded and locked once
 * (`WorkingSet.load`, in the one lock order: orders, then stock rows by key), each event runs its
 * own handler on them in memory, its failure undoing only its own changes, and what changed is
 * written back at once (`WorkingSet.save`). A handler that reaches beyond the loaded rows fails
 * the whole group (a defect, `OutsideWorkingSet`), which the caller then applies one at a time.
 */
export const applyGroup = Effect.fn("inventory.group")(function*(events: ReadonlyArray<GroupEvent>) {
  yield* Effect.annotateCurrentSpan({ "inventory.batch_size": events.length })
  yield* Metric.update(groupSize, events.length)
  const store = stagedStores()
  const workingSet = yield* WorkingSet
  const uow = yield* UnitOfWork
  const demand = demandOf(events.map((e) => e.decoded), yield* nowDate)
  const group = store.begin(demand, yield* workingSet.load(demand))
  // The staged stores are provided once for the whole loop; each event runs under its own span.
  const results = yield* store.run(group, Effect.gen(function*() {
    const results: Array<GroupResult> = []
    for (const { decoded, parent } of events) {
      const exit = yield* Effect.exit(applyOnce(decoded, Option.getOrUndefined(parent)))
      if (Exit.isSuccess(exit)) {
        results.push(exit.value)
        continue
      }
      if (isOutside(exit.cause)) return yield* Effect.failCause(exit.cause)
      const failed = exit.cause.reasons.find(Cause.isFailReason)
      if (failed === undefined || fateOf(failed.error) !== "dead_letter") {
        results.push({ _tag: "Alone", error: failed?.error ?? null })
        continue
      }
      const error = failed.error
      const announce = Effect.flatMap(UnitOfWork, (u) => u.transaction(afterRollback(decoded.event, decoded.eventId, error)))
      const announced = yield* Effect.exit(Option.isSome(parent) ? Effect.withParentSpan(announce, parent.value, noStackTrace) : announce)
      if (Exit.isFailure(announced)) {
        if (isOutside(announced.cause)) return yield* Effect.failCause(announced.cause)
        results.push({ _tag: "Alone", error })
        continue
      }
      results.push({ _tag: "Refused", error })
    }
    return results
  }))
  yield* workingSet.save(store.changes(group))
  for (const hook of group.afterCommit) yield* uow.afterCommit(hook)
  return results
})

interface Pending extends GroupEvent {
  readonly deliveryCount: number
  readonly done: Deferred.Deferred<Outcome>
}

/**
 * Group commit for every event type: the events that are ready together (at most one per
 * ordering key, since a key's lane waits for its event's outcome) are applied in one set-based
 * unit of work (`applyGroup`), up to `maxSize` per group; one group at a time, and up to
 * `concurrency` at once under a backlog. Each event still gets its own outcome, and acks wait
 * for the commit, as before. If the transaction fails (a lost connection, a deadlock, a row
 * outside the working set), every event of the group takes the one-by-one path with the full
 * retry policy; so does an event whose failure is worth retrying.
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

    /** One group in one unit of work; its span belongs to the first event's trace and links the others. */
    const run = (items: ReadonlyArray<Pending>) =>
      Effect.gen(function*() {
        const first = items[0]!.parent
        const unit = uow.transaction(applyGroup(items))
        const exit = yield* Effect.exit(Option.isSome(first) ? Effect.withParentSpan(unit, first.value, noStackTrace) : unit)
        if (Exit.isFailure(exit)) {
          yield* Effect.logDebug("event group failed; applying its events one by one").pipe(
            Effect.annotateLogs({ size: items.length, cause: Cause.pretty(exit.cause) })
          )
          return yield* Effect.forEach(items, alone, { concurrency: "unbounded", discard: true })
        }
        const later: Array<Pending> = []
        for (const [i, result] of exit.value.entries()) {
          const item = items[i]!
          if (result === "applied") yield* Deferred.succeed(item.done, Outcome.Ack({ decoded: item.decoded }))
          else if (result === "duplicate") yield* Deferred.succeed(item.done, Outcome.Duplicate({ decoded: item.decoded }))
          else if (result._tag === "Refused") {
            yield* Deferred.succeed(item.done, Outcome.DeadLetter({ decoded: item.decoded, failure: describe(result.error) }))
          } else later.push(item)
        }
        yield* Effect.forEach(later, alone, { concurrency: "unbounded", discard: true })
      }).pipe(
        Effect.catchCause((cause) =>
          // Nothing may be left waiting: whatever is not decided yet takes the one-by-one path.
          Effect.logError("event group failed unexpectedly").pipe(
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

    yield* Effect.logInfo("group commit on").pipe(
      Effect.annotateLogs({ max_size: settings.maxSize, concurrency: settings.concurrency, backlog })
    )

    const apply = (decoded: Decoded, deliveryCount: number): Effect.Effect<Outcome, never, Stores | ReservationTimers> =>
      Effect.gen(function*() {
        const done = yield* Deferred.make<Outcome>()
        const parent = yield* Effect.option(Effect.currentSpan)
        yield* Queue.offer(queue, { decoded, deliveryCount, done, parent })
        if (running > 0 && Queue.sizeUnsafe(queue) >= backlog) Queue.offerUnsafe(changed, undefined)
        return yield* Deferred.await(done)
      })
    return Context.make(EventApplier, { apply })
  }))
