import { assert, describe, layer } from "@effect/vitest"
import { Context, Deferred, Duration, Effect, Fiber, Layer, Metric, Option } from "effect"
import { DatabaseError } from "../../src/domain/errors.ts"
import { inboundEventTypes } from "../../src/domain/events.ts"
import { applyEvent, backlogThreshold, batched, EventApplier } from "../../src/pipeline/batch.ts"
import { groupSize } from "../../src/observability/metrics.ts"
import { type Decoded, decodeDelivery } from "../../src/pipeline/decode.ts"
import type { Outcome } from "../../src/pipeline/pipeline.ts"
import { ProcessingPolicy } from "../../src/pipeline/policy.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { EventLog, Reconciliation, type Stores, UnitOfWork, WorkingSet } from "../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, freshId, freshOrg, outboxOf, putStock, quantities, reservationsOf } from "../support/events.ts"
import { sqlStoresLayer } from "../support/sql.ts"

/** Counts outermost units of work, and fails the event-log write (alone or in a group) of chosen event ids once. */
class Faults extends Context.Service<Faults, { outer: number; readonly failOnce: Set<string> }>()("test/Faults") {}

const instrumented = <E>(stores: Layer.Layer<Stores, E>) => {
  const faults = Layer.succeed(Faults, { outer: 0, failOnce: new Set<string>() })
  const overrides = Layer.effectContext(Effect.gen(function*() {
    const f = yield* Faults
    const uow = yield* UnitOfWork
    const log = yield* EventLog
    const workingSet = yield* WorkingSet
    let depth = 0
    return Context.make(UnitOfWork, UnitOfWork.of({
      transaction: (effect) =>
        Effect.suspend(() => {
          if (depth === 0) f.outer++
          depth++
          return uow.transaction(effect).pipe(Effect.ensuring(Effect.sync(() => { depth-- })))
        }),
      afterCommit: uow.afterCommit
    })).pipe(Context.add(EventLog, EventLog.of({
      ...log,
      record: (entry) =>
        f.failOnce.delete(entry.event_id)
          ? Effect.fail(new DatabaseError({ reason: "serialization", message: "injected" }))
          : log.record(entry)
    })), Context.add(WorkingSet, WorkingSet.of({
      ...workingSet,
      // A group records its events as it loads them.
      load: (demand) =>
        demand.events.some((entry) => f.failOnce.delete(entry.event_id))
          ? Effect.fail(new DatabaseError({ reason: "serialization", message: "injected" }))
          : workingSet.load(demand)
    })))
  }))
  return Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(
    Layer.provideMerge(overrides),
    Layer.provideMerge(stores),
    Layer.provideMerge(faults)
  )
}

const suite = <E>(name: string, stores: Layer.Layer<Stores, E>) =>
  layer(
    batched({ maxSize: 16, concurrency: 1 }).pipe(Layer.provideMerge(instrumented(stores))),
    // Live clock: the one-by-one path sleeps between its retries.
    { timeout: "60 seconds", excludeTestServices: true }
  )(name, (it) => {
    const apply = (org: string, event: string, data: unknown, eventId = freshId("evt")) =>
      Effect.gen(function*() {
        const decoded = yield* decodeDelivery({
          body: envelopeBytes(org, event, data, eventId),
          deliveryCount: 1,
          queue: "test",
          accepts: inboundEventTypes
        }).pipe(Effect.orDie)
        return yield* applyEvent(decoded, 1)
      })
    const policy = Effect.provideService(ProcessingPolicy, {
      retryBaseDelay: Duration.millis(5), retries: 3, maxDeliveries: 5, maxBodyBytes: 1 << 20, maxLinesPerEvent: 500
    })

    it.effect("events ready together share one transaction; each failure rolls back only itself and gets its fate", () =>
      policy(Effect.gen(function*() {
        const org = freshOrg()
        yield* addWarehouse(org, "w1").pipe(Effect.orDie)
        yield* putStock(org, "v1", "w1", 10)
        const faults = yield* Faults
        const before = faults.outer
        const groupsBefore = (yield* Metric.value(groupSize)).count
        const outcomes: ReadonlyArray<Outcome> = yield* Effect.all([
          apply(org, "order.placed", { order_id: "ok-1", items: [{ variant_id: "v1", quantity: 2 }] }, "e-ok-1"),
          apply(org, "order.placed", { order_id: "short", items: [{ variant_id: "v1", quantity: 50 }] }, "e-short"),
          apply(org, "order.placed", { order_id: "ok-2", items: [{ variant_id: "v1", quantity: 3 }] }, "e-ok-2"),
          apply(org, "return.received", { order_id: "r", return_id: "r1", warehouse_id: "w1", returned_items: [{ variant_id: "v2", quantity: 1, condition: "good" }] }, "e-return")
        ], { concurrency: "unbounded" })
        assert.deepStrictEqual(outcomes.map((o) => o._tag), ["Ack", "DeadLetter", "Ack", "Ack"])
        assert.isTrue(outcomes[1]!._tag === "DeadLetter" && outcomes[1]!.failure.errorType === "InsufficientStock")
        // Four events offered together: the three order.placed in one set-based transaction, the
        // return in another (one more if the first event was taken alone).
        assert.isAtMost(faults.outer - before, 3)
        const sizes = yield* Metric.value(groupSize)
        assert.isAtLeast(sizes.count - groupsBefore, 1, "each group is counted in inventory_group_size")
        assert.isAtMost(sizes.count - groupsBefore, 3)
        assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 10, available: 5, reserved: 5, damaged: 0 })
        assert.deepStrictEqual(yield* quantities(org, "v2", "w1"), { total: 1, available: 1, reserved: 0, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "short")).length, 0)
        const out = yield* outboxOf(org)
        assert.strictEqual(out.filter((m) => m.event_type === "inventory.reservation.failed").length, 1, "the failure is announced")
        assert.strictEqual(out.filter((m) => m.event_type === "inventory.stock.reserved").length, 2)
        const logged = yield* Effect.forEach(["e-ok-1", "e-short", "e-ok-2", "e-return"], (id) =>
          Effect.flatMap(EventLog, (l) => l.has(org, id)).pipe(Effect.orDie))
        assert.deepStrictEqual(logged, [true, false, true, true])
        assert.deepStrictEqual(yield* Effect.flatMap(Reconciliation, (r) => r.check(org)).pipe(Effect.orDie), [])
      })))

    it.effect("a transient failure inside a batch is applied again on its own; a duplicate is a duplicate", () =>
      policy(Effect.gen(function*() {
        const org = freshOrg()
        yield* addWarehouse(org, "w1").pipe(Effect.orDie)
        yield* putStock(org, "v1", "w1", 10)
        const faults = yield* Faults
        faults.failOnce.add("e-flaky")
        const first: ReadonlyArray<Outcome> = yield* Effect.all([
          apply(org, "order.placed", { order_id: "a", items: [{ variant_id: "v1", quantity: 1 }] }, "e-a"),
          apply(org, "order.placed", { order_id: "flaky", items: [{ variant_id: "v1", quantity: 1 }] }, "e-flaky"),
          apply(org, "order.placed", { order_id: "b", items: [{ variant_id: "v1", quantity: 1 }] }, "e-b")
        ], { concurrency: "unbounded" })
        assert.deepStrictEqual(first.map((o) => o._tag), ["Ack", "Ack", "Ack"])
        assert.isFalse(faults.failOnce.has("e-flaky"), "the injected failure happened")
        const again = yield* apply(org, "order.placed", { order_id: "a", items: [{ variant_id: "v1", quantity: 1 }] }, "e-a")
        assert.strictEqual(again._tag, "Duplicate")
        assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 10, available: 7, reserved: 3, damaged: 0 })
        assert.deepStrictEqual(yield* Effect.flatMap(Reconciliation, (r) => r.check(org)).pipe(Effect.orDie), [])
      })))

    it.effect("one key's events as a chain: applied in order in one group; those after one worth retrying wait", () =>
      policy(Effect.gen(function*() {
        const org = freshOrg()
        yield* addWarehouse(org, "w1").pipe(Effect.orDie)
        yield* putStock(org, "v1", "w1", 10)
        const decode = (event: string, data: unknown, eventId: string) =>
          decodeDelivery({ body: envelopeBytes(org, event, data, eventId), deliveryCount: 1, queue: "test", accepts: inboundEventTypes }).pipe(Effect.orDie)
        const chainOf = (events: ReadonlyArray<Decoded>) => () => events.map((decoded) => ({ decoded, deliveryCount: 1, parent: Option.none() }))
        const applier = yield* EventApplier
        const faults = yield* Faults
        const before = faults.outer
        const lifecycle = yield* Effect.all([
          decode("order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }] }, "c-placed"),
          decode("order.confirmed", { order_id: "o1" }, "c-confirmed"),
          decode("order.shipped", { order_id: "o1", shipment_id: "s1", shipped_items: [{ variant_id: "v1", quantity: 2, warehouse_id: "w1" }] }, "c-shipped")
        ])
        const outcomes = yield* applier.applyChain(chainOf(lifecycle))
        assert.deepStrictEqual(outcomes.map((o) => o._tag), ["Ack", "Ack", "Ack"])
        assert.strictEqual(faults.outer - before, 1, "the whole chain in one unit of work")
        assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 8, available: 8, reserved: 0, damaged: 0 })

        // A confirm before its placement is worth retrying: the placement behind it waits.
        const early = yield* Effect.all([
          decode("order.confirmed", { order_id: "o2" }, "c2-confirmed"),
          decode("order.placed", { order_id: "o2", items: [{ variant_id: "v1", quantity: 1 }] }, "c2-placed")
        ])
        // Retried on its own with the caller's policy (one retry here), not the default (three).
        const units = faults.outer
        const waited = yield* applier.applyChain(chainOf(early)).pipe(Effect.provideService(ProcessingPolicy, {
          retryBaseDelay: Duration.millis(5), retries: 1, maxDeliveries: 5, maxBodyBytes: 1 << 20, maxLinesPerEvent: 500
        }))
        assert.deepStrictEqual(waited.map((o) => o._tag), ["Retry"])
        assert.strictEqual(faults.outer - units, 3, "the group, then two attempts on its own")
        assert.strictEqual((yield* reservationsOf(org, "o2")).length, 0, "the placement was not applied")
        assert.deepStrictEqual(yield* Effect.flatMap(Reconciliation, (r) => r.check(org)).pipe(Effect.orDie), [])
      })))
  })

/** Holds every outermost unit of work at a gate, counting how many are open at once. */
class Gate extends Context.Service<Gate, { armed: boolean; open: Deferred.Deferred<void>; active: number; most: number; units: number }>()("test/Gate") {}

/** Set inside a gated unit of work, so the units nested in it pass (fibers run side by side). */
const Nested = Context.Reference<boolean>("test/Nested", { defaultValue: () => false })

const gated = Layer.effectContext(Effect.gen(function*() {
  const gate = yield* Gate
  const uow = yield* UnitOfWork
  return Context.make(UnitOfWork, UnitOfWork.of({
    transaction: (effect) =>
      Effect.flatMap(Nested, (nested) =>
        nested || !gate.armed ? uow.transaction(effect) : Effect.suspend(() => {
          gate.active++
          gate.units++
          gate.most = Math.max(gate.most, gate.active)
          return Deferred.await(gate.open).pipe(
            Effect.andThen(uow.transaction(Effect.provideService(effect, Nested, true))),
            Effect.ensuring(Effect.sync(() => { gate.active-- }))
          )
        })),
    afterCommit: uow.afterCommit
  }))
}))

describe("group commit: how many groups run at once", () => {
  const gate = Layer.effect(Gate, Effect.map(Deferred.make<void>(), (open) => ({ armed: false, open, active: 0, most: 0, units: 0 })))
  layer(
    // The scheduler gets the stores as they are (its start-up sweep is a unit of work too); the groups get the gate.
    batched({ maxSize: 8, concurrency: 3 }).pipe(
      Layer.provideMerge(gated),
      Layer.provideMerge(Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 })),
      Layer.provideMerge(MemoryStores.layer),
      Layer.provideMerge(gate)
    ),
    { excludeTestServices: true }
  )("memory stores", (it) => {
    it.effect("one group at a time while it keeps up; a second beside it once a backlog (a quarter of a group) waits", () =>
      Effect.gen(function*() {
        const org = freshOrg()
        yield* addWarehouse(org, "w1").pipe(Effect.orDie)
        yield* putStock(org, "v1", "w1", 10)
        const g = yield* Gate
        const place = (order: string) =>
          Effect.gen(function*() {
            const decoded = yield* decodeDelivery({
              body: envelopeBytes(org, "order.placed", { order_id: order, items: [{ variant_id: "v1", quantity: 1 }] }, `e-${order}`),
              deliveryCount: 1,
              queue: "test",
              accepts: inboundEventTypes
            }).pipe(Effect.orDie)
            return yield* applyEvent(decoded, 1)
          }).pipe(Effect.forkChild)
        // What must happen is waited for (up to 5 s, however loaded the machine); what must not
        // is given 30 ms to show up.
        const settle = Effect.sleep("30 millis")
        const until = (open: number) =>
          Effect.gen(function*() {
            const deadline = Date.now() + 5_000
            while (g.active !== open && Date.now() < deadline) yield* Effect.sleep("5 millis")
          })
        assert.strictEqual(backlogThreshold({ maxSize: 8, concurrency: 3 }), 2)
        g.armed = true

        const first = yield* place("a")
        yield* until(1)
        assert.strictEqual(g.active, 1, "the first group is open")
        const second = yield* place("b")
        yield* settle
        assert.strictEqual(g.active, 1, "one waiting event is no backlog: it waits for the running group")
        const third = yield* place("c")
        yield* until(2)
        assert.strictEqual(g.active, 2, "two waiting (a quarter of 8): a second group starts beside the first")

        yield* Deferred.succeed(g.open, undefined)
        g.armed = false
        const outcomes = yield* Effect.forEach([first, second, third], Fiber.join)
        assert.deepStrictEqual(outcomes.map((o) => o._tag), ["Ack", "Ack", "Ack"])
        assert.deepStrictEqual([g.most, g.units], [2, 2], "b and c went together")
        assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 10, available: 7, reserved: 3, damaged: 0 })
      }))

    it.effect("a chain is read when its group takes it up: a key's event that arrives while it waits joins it", () =>
      Effect.gen(function*() {
        const org = freshOrg()
        yield* addWarehouse(org, "w1").pipe(Effect.orDie)
        yield* putStock(org, "v1", "w1", 10)
        const g = yield* Gate
        const decode = (event: string, data: unknown, eventId: string) =>
          decodeDelivery({ body: envelopeBytes(org, event, data, eventId), deliveryCount: 1, queue: "test", accepts: inboundEventTypes }).pipe(Effect.orDie)
        const item = (decoded: Decoded) => ({ decoded, deliveryCount: 1, parent: Option.none() })
        const applier = yield* EventApplier
        g.open = yield* Deferred.make<void>()
        g.armed = true
        g.units = 0
        g.most = 0

        // A group holds the gate; order b's chain queues behind it with its placement only.
        const first = yield* applyEvent(yield* decode("order.placed", { order_id: "a", items: [{ variant_id: "v1", quantity: 1 }] }, "j-a"), 1).pipe(Effect.forkChild)
        const deadline = Date.now() + 5_000
        while (g.active !== 1 && Date.now() < deadline) yield* Effect.sleep("5 millis")
        const waiting = [item(yield* decode("order.placed", { order_id: "b", items: [{ variant_id: "v1", quantity: 2 }] }, "j-b-placed"))]
        // A copy, as a lane hands over a slice of its messages.
        const chain = yield* applier.applyChain(() => [...waiting]).pipe(Effect.forkChild)
        yield* Effect.sleep("30 millis")
        // Its confirmation arrives while the chain waits for its group.
        waiting.push(item(yield* decode("order.confirmed", { order_id: "b" }, "j-b-confirmed")))

        yield* Deferred.succeed(g.open, undefined)
        assert.strictEqual((yield* Fiber.join(first))._tag, "Ack")
        const outcomes = yield* Fiber.join(chain)
        g.armed = false
        assert.deepStrictEqual(outcomes.map((o) => o._tag), ["Ack", "Ack"], "the confirmation was part of the chain")
        assert.strictEqual(g.units, 2, "a's group, then b's placement and confirmation in one group")
        assert.deepStrictEqual((yield* reservationsOf(org, "b")).map((r) => r.status), ["confirmed"])
      }))
  })
})

describe("group commit", () => {
  suite("on the memory stores", MemoryStores.layer)
  suite("on PostgreSQL", sqlStoresLayer("batch"))
})
