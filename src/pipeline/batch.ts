import { Cause, Context, Deferred, Effect, Exit, FiberSet, Layer, Metric, Option, Queue, References, type Tracer } from "effect"
import type { InventoryError } from "../domain/errors.ts"
import { orderingKey } from "../domain/events.ts"
import { fateOf } from "../domain/fates.ts"
import { afterRollback } from "../handlers/dispatch.ts"
import { nowDate } from "../handlers/outbound.ts"
import { demandOf } from "../handlers/reads.ts"
import { groupSize } from "../observability/metrics.ts"
import { underSpan } from "../observability/spans.ts"
import { makeStaged, OutsideWorkingSet, type Staged } from "../stores/memory/staged.ts"
import { type ReservationTimers, type Stores, UnitOfWork, WorkingSet } from "../stores/services.ts"
import type { Decoded } from "./decode.ts"
import { applyDecoded, describe, Outcome, unitOfWork } from "./pipeline.ts"
import { ProcessingPolicy } from "./policy.ts"


/** Whether the key's later events may be applied after this outcome: not after a `Retry`. */
export const letsKeyGoOn = (outcome: Outcome): boolean => outcome._tag !== "Retry"

/** One key's events one at a time, in order, up to the first that does not let the key go on. */
const oneByOne = (items: ReadonlyArray<ChainItem>): Effect.Effect<ReadonlyArray<Outcome>, never, Stores | ReservationTimers> =>
  Effect.gen(function*() {
    const outcomes: Array<Outcome> = []
    for (const item of items) {
      const outcome = yield* underParent(applyDecoded(item.decoded, item.deliveryCount), item.parent)
      outcomes.push(outcome)
      if (!letsKeyGoOn(outcome)) break
    }
    return outcomes
  })

/**
 * How the runtime applies decoded events: `applyChain` takes one key's waiting events in order
 * and returns their outcomes, for the first of them up to one that does not let the key go on
 * (the rest were not applied). It reads the events (`waiting()`) when it takes them up, so those
 * that arrived meanwhile are part of the chain. One unit of work per event by default; `batched`
 * applies the chains ready at the same moment together (issue 18).
 */
export const EventApplier = Context.Reference<{
  applyChain(waiting: () => ReadonlyArray<ChainItem>): Effect.Effect<ReadonlyArray<Outcome>, never, Stores | ReservationTimers>
}>("inventory/pipeline/EventApplier", { defaultValue: () => ({ applyChain: (waiting) => Effect.suspend(() => oneByOne(waiting())) }) })

/** One event through the current applier. */
export const applyEvent = (decoded: Decoded, deliveryCount: number) =>
  Effect.flatMap(EventApplier, (applier) =>
    Effect.flatMap(Effect.option(Effect.currentSpan), (parent) =>
      Effect.map(applier.applyChain(() => [{ decoded, deliveryCount, parent }]), (outcomes) => outcomes[0]!)))

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

/** One event of a key's chain: a group's event with its delivery count (the retry policy's). */
export interface ChainItem extends GroupEvent {
  readonly deliveryCount: number
}

/**
 * What became of one event of a group:
 * - `applied` / `duplicate`: as one unit of work alone would have it;
 * - `Refused`: a permanent failure (its fate is the dead-letter queue); its effects were undone
 *   and what the failure announces (`afterRollback`) was written in the group;
 * - `Alone`: a failure worth retrying, or a defect: undone, to be applied again on its own with
 *   the full retry policy once the group committed;
 * - `not run`: a later event of the key of an `Alone` one: a key's events apply in order, so it
 *   waits for that one's fate.
 */
export type GroupResult =
  | "applied"
  | "duplicate"
  | { readonly _tag: "Refused"; readonly error: InventoryError }
  | { readonly _tag: "Alone"; readonly error: InventoryError | null }
  | "not run"

/** Work for one event of a group, under that event's span when it has one. */
const underParent = <A, E, R>(effect: Effect.Effect<A, E, R>, parent: Option.Option<Tracer.AnySpan>) =>
  Option.isSome(parent) ? underSpan(effect, parent.value) : effect

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
    const held = new Set<string>()
    for (const { decoded, parent } of events) {
      const key = orderingKey(decoded.event)
      if (held.has(key)) {
        results.push("not run")
        continue
      }
      // Under the message's span directly: a span of its own per event (as one at a time has,
      // one per attempt) would only wrap its handler's (issue 18).
      const exit = yield* Effect.exit(underParent(unitOfWork(decoded), parent))
      if (Exit.isSuccess(exit)) {
        results.push(exit.value)
        continue
      }
      if (isOutside(exit.cause)) return yield* Effect.failCause(exit.cause)
      const failed = exit.cause.reasons.find(Cause.isFailReason)
      if (failed === undefined || fateOf(failed.error) !== "dead_letter") {
        results.push({ _tag: "Alone", error: failed?.error ?? null })
        held.add(key)
        continue
      }
      const error = failed.error
      const announce = Effect.flatMap(UnitOfWork, (u) => u.transaction(afterRollback(decoded.event, decoded.eventId, error)))
      const announced = yield* Effect.exit(underParent(announce, parent))
      if (Exit.isFailure(announced)) {
        if (isOutside(announced.cause)) return yield* Effect.failCause(announced.cause)
        results.push({ _tag: "Alone", error })
        held.add(key)
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

/**
 * The largest group whose unit of work runs without handing the thread to other fibers between
 * its steps: it gives the thread away only while it waits for the database. A group is what every
 * later group waits for, while deliveries, acks and the relay can run at any time; yielding every
 * 2,048 operations, as fibers do, lets them stretch a group's in-memory apply while the thread
 * then sits idle during its save. Held at 1,800 lifecycle events/s, p99 to the commit was 44-55
 * ms in five runs without yielding, against 45-112 ms (median 71) in seven before (issue 18). At full speed (groups of 250) not yielding made the thread busier (88-93% of
 * a run against 83-88%) and most runs faster (medians of the interleaved pairs: 8-11% per
 * workload), but the garbage collector's background marking, starved of the machine's cores,
 * fell behind: peak RSS rose by 10-20 MB, past the bound of 200 MB in three runs of ten. So a
 * larger group yields as fibers do. A group up to this size holds the event loop for its apply at
 * most: 250 events took 18-21 ms to apply at full speed, so about 10 ms.
 */
export const UNINTERRUPTED_GROUP = 128

const withoutYielding = <A, E, R>(unit: Effect.Effect<A, E, R>) =>
  Effect.provideService(unit, References.MaxOpsBeforeYield, Number.MAX_SAFE_INTEGER)

/** One key's chain waiting for a group, and where its outcomes go. */
interface Pending {
  /** Read when a group takes the chain up: the key's events that arrived meanwhile are in it. */
  readonly waiting: () => ReadonlyArray<ChainItem>
  /** Its events when it was queued, as `waiting` counts them. */
  readonly counted: number
  readonly done: Deferred.Deferred<ReadonlyArray<Outcome>>
  /** The caller's retry policy: what is applied one by one later follows it, not the default. */
  readonly policy: ProcessingPolicy
}

/** A chain a group took up, its events read. */
interface Taken extends Pending {
  readonly items: ReadonlyArray<ChainItem>
}

const outcomeOf = (item: ChainItem, result: "applied" | "duplicate" | { readonly _tag: "Refused"; readonly error: InventoryError }): Outcome =>
  result === "applied"
    ? Outcome.Ack({ decoded: item.decoded })
    : result === "duplicate"
    ? Outcome.Duplicate({ decoded: item.decoded })
    : Outcome.DeadLetter({ decoded: item.decoded, failure: describe(result.error) })

/**
 * Group commit for every event type: the chains that are ready together (each one key's waiting
 * events, in order) are applied in one set-based unit of work (`applyGroup`), up to `maxSize`
 * events per group; one group at a time, and up to `concurrency` at once under a backlog. Each
 * event still gets its own outcome, and acks wait for the commit, as before. If the transaction
 * fails (a lost connection, a deadlock, a row outside the working set), every chain takes the
 * one-by-one path with the full retry policy; so does an event whose failure is worth retrying,
 * its key's later events waiting for its outcome.
 */
export const batched = (settings: BatchSettings): Layer.Layer<never, never, Stores | ReservationTimers> =>
  Layer.effectContext(Effect.gen(function*() {
    const context = yield* Effect.context<Stores | ReservationTimers>()
    const uow = yield* UnitOfWork
    const queue = yield* Queue.unbounded<Pending>()
    /** Events (not chains) waiting in `queue`. */
    let waiting = 0

    /** The events of a chain from `from` on, one by one, after the group (or instead of it). */
    const rest = (chain: Taken, decided: ReadonlyArray<Outcome>, from: number) =>
      Effect.flatMap(oneByOne(chain.items.slice(from)), (outcomes) => Deferred.succeed(chain.done, [...decided, ...outcomes])).pipe(
        Effect.provideService(ProcessingPolicy, chain.policy)
      )

    /** One group in one unit of work; its span belongs to the first event's trace. */
    const run = (chains: ReadonlyArray<Taken>) =>
      Effect.gen(function*() {
        const items = chains.flatMap((chain) => chain.items)
        const first = items[0]!.parent
        const unit = items.length <= UNINTERRUPTED_GROUP
          ? withoutYielding(uow.transaction(applyGroup(items)))
          : uow.transaction(applyGroup(items))
        const exit = yield* Effect.exit(underParent(unit, first))
        if (Exit.isFailure(exit)) {
          yield* Effect.logDebug("event group failed; applying its events one by one").pipe(
            Effect.annotateLogs({ size: items.length, cause: Cause.pretty(exit.cause) })
          )
          return yield* Effect.forEach(chains, (chain) => rest(chain, [], 0), { concurrency: "unbounded", discard: true })
        }
        const later: Array<Effect.Effect<void, never, Stores | ReservationTimers>> = []
        let at = 0
        for (const chain of chains) {
          const decided: Array<Outcome> = []
          let alone = -1
          for (const [i, item] of chain.items.entries()) {
            const result = exit.value[at + i]!
            if (result === "not run") break
            if (typeof result !== "string" && result._tag === "Alone") {
              alone = i
              break
            }
            decided.push(outcomeOf(item, result))
          }
          at += chain.items.length
          // An event worth retrying is applied again on its own; its key's later events wait for the lane.
          if (alone >= 0) later.push(rest({ ...chain, items: chain.items.slice(0, alone + 1) }, decided, alone))
          else yield* Deferred.succeed(chain.done, decided)
        }
        yield* Effect.all(later, { concurrency: "unbounded", discard: true })
      }).pipe(
        Effect.catchCause((cause) =>
          // Nothing may be left waiting: whatever is not decided yet takes the one-by-one path.
          Effect.logError("event group failed unexpectedly").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) }),
            Effect.andThen(Effect.forEach(chains, (chain) =>
              Deferred.isDoneUnsafe(chain.done) ? Effect.void : rest(chain, [], 0), { discard: true }))
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
    const mayStart = () => running === 0 || (running < settings.concurrency && waiting >= backlog)
    const take = (pending: Pending): Taken => {
      waiting -= pending.counted
      return { ...pending, items: pending.waiting() }
    }
    /** Chains up to `maxSize` events (a longer chain alone). */
    const takeGroup = Effect.gen(function*() {
      const chains = [take(yield* Queue.take(queue))]
      let size = chains[0]!.items.length
      while (size < settings.maxSize) {
        const next = yield* Queue.poll(queue)
        if (Option.isNone(next)) break
        const chain = take(next.value)
        chains.push(chain)
        size += chain.items.length
        if (size > settings.maxSize) break
      }
      return chains
    })
    yield* Effect.forkScoped(Effect.forever(Effect.gen(function*() {
      while (!mayStart()) yield* Queue.take(changed)
      const chains = yield* takeGroup
      running++
      yield* FiberSet.run(groups, run(chains).pipe(Effect.ensuring(Effect.sync(() => {
        running--
        Queue.offerUnsafe(changed, undefined)
      }))))
    })))

    yield* Effect.logInfo("group commit on").pipe(
      Effect.annotateLogs({ max_size: settings.maxSize, concurrency: settings.concurrency, backlog })
    )

    const applyChain = (chain: () => ReadonlyArray<ChainItem>): Effect.Effect<ReadonlyArray<Outcome>, never, Stores | ReservationTimers> =>
      Effect.gen(function*() {
        const done = yield* Deferred.make<ReadonlyArray<Outcome>>()
        const counted = chain().length
        waiting += counted
        yield* Queue.offer(queue, { waiting: chain, counted, done, policy: yield* ProcessingPolicy })
        if (running > 0 && waiting >= backlog) Queue.offerUnsafe(changed, undefined)
        return yield* Deferred.await(done)
      })
    return Context.make(EventApplier, { applyChain })
  }))
