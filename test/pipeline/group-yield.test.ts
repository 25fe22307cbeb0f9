import { assert, it } from "@effect/vitest"
import { Context, Effect, Fiber, Layer } from "effect"
import { inboundEventTypes } from "../../src/domain/events.ts"
import { applyEvent, batched, UNINTERRUPTED_GROUP } from "../../src/pipeline/batch.ts"
import { decodeDelivery } from "../../src/pipeline/decode.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { WorkingSet } from "../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, freshOrg, putStock } from "../support/events.ts"

/** How often another fiber got the thread, and what it read at each group's load and save. */
class Ticks extends Context.Service<Ticks, { count: number; readonly groups: Array<{ size: number; atLoad: number; atSave: number }> }>()(
  "test/Ticks"
) {}

/** The memory working set, noting the ticks when a group's rows are loaded and when its changes are saved. */
const noted = Layer.effectContext(Effect.gen(function*() {
  const ticks = yield* Ticks
  const workingSet = yield* WorkingSet
  let pending: { size: number; atLoad: number } | undefined
  return Context.make(WorkingSet, WorkingSet.of({
    load: (demand) =>
      Effect.tap(workingSet.load(demand), () => Effect.sync(() => { pending = { size: demand.events.length, atLoad: ticks.count } })),
    save: (changes) =>
      Effect.suspend(() => {
        if (pending !== undefined) ticks.groups.push({ ...pending, atSave: ticks.count })
        pending = undefined
        return workingSet.save(changes)
      })
  }))
}))

const layer = batched({ maxSize: 256, concurrency: 1 }).pipe(
  Layer.provideMerge(Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 })),
  Layer.provideMerge(noted),
  Layer.provideMerge(MemoryStores.layer),
  Layer.provideMerge(Layer.sync(Ticks, () => ({ count: 0, groups: [] })))
)

/** `count` order.placed events offered at once, a fiber ready all along beside them: the groups they went in. */
const offerTogether = (count: number) =>
  Effect.gen(function*() {
    const org = freshOrg()
    yield* addWarehouse(org, "w1").pipe(Effect.orDie)
    for (let v = 0; v < 20; v++) yield* putStock(org, `v${v}`, "w1", 1_000)
    const ticks = yield* Ticks
    ticks.groups.length = 0
    const ticker = yield* Effect.forkChild(Effect.forever(Effect.andThen(Effect.sync(() => { ticks.count++ }), Effect.yieldNow)))
    const events = yield* Effect.forEach(Array.from({ length: count }, (_, i) => i), (i) =>
      decodeDelivery({
        body: envelopeBytes(org, "order.placed", { order_id: `o${i}`, items: [{ variant_id: `v${i % 20}`, quantity: 1 }] }, `e${i}`),
        deliveryCount: 1,
        queue: "test",
        accepts: inboundEventTypes
      }).pipe(Effect.orDie))
    const outcomes = yield* Effect.forEach(events, (decoded) => applyEvent(decoded, 1), { concurrency: "unbounded" })
    yield* Fiber.interrupt(ticker)
    assert.isTrue(outcomes.every((o) => o._tag === "Ack"))
    assert.isAbove(ticks.count, 0, "the other fiber ran while the events were queued and settled")
    return [...ticks.groups]
  })

/**
 * A group is what every later group waits for, so between loading its rows and saving its
 * changes it does not hand the thread to other fibers (deliveries, acks, the relay): they run
 * while it waits for the database. Here the database is in memory and never waits, so another
 * fiber, ready all along, must not run once between a group's load and its save, even for a
 * group of over a hundred events (tens of thousands of operations: a fiber yields every 2,048
 * by default).
 */
it.live("applies a group's events without handing the thread to other fibers", () =>
  Effect.gen(function*() {
    const groups = yield* offerTogether(UNINTERRUPTED_GROUP - 8)
    assert.isAtLeast(Math.max(...groups.map((g) => g.size)), 100, `the events went in large groups (${groups.map((g) => g.size).join(", ")})`)
    for (const group of groups) {
      assert.strictEqual(group.atSave, group.atLoad, `a group of ${group.size} handed the thread away between its load and its save`)
    }
  }).pipe(Effect.provide(layer)))

/**
 * Past `UNINTERRUPTED_GROUP` events a group yields as fibers do: held longer, the thread leaves
 * the garbage collector's background marking behind at full speed (peak RSS over its bound).
 */
it.live("lets other fibers run inside a group larger than that", () =>
  Effect.gen(function*() {
    const groups = yield* offerTogether(2 * UNINTERRUPTED_GROUP)
    const large = groups.filter((g) => g.size > UNINTERRUPTED_GROUP)
    assert.isAtLeast(large.length, 1, `a group larger than ${UNINTERRUPTED_GROUP} (${groups.map((g) => g.size).join(", ")})`)
    for (const group of large) assert.isAbove(group.atSave, group.atLoad, `a group of ${group.size} never yielded`)
  }).pipe(Effect.provide(layer)))
