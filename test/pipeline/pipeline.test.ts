import { assert, describe, it } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import { DatabaseError, type InventoryErrorTag } from "../../src/domain/errors.ts"
import { type Fate, fates } from "../../src/domain/fates.ts"
import { ProcessingPolicy } from "../../src/pipeline/policy.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import { EventLog, Stock } from "../../src/stores/services.ts"
import { addWarehouse, freshOrg, outboxOf, putStock, quantities, reservationsOf, send } from "../support/events.ts"

const policy = {
  retryBaseDelay: Duration.millis(5),
  retries: 3,
  maxDeliveries: 5,
  maxBodyBytes: 1024 * 1024,
  maxLinesPerEvent: 500
}

/** Memory stores whose chosen operation misbehaves, counting its calls. */
const faulty = (fault: { eventLog?: (call: number) => Effect.Effect<void, DatabaseError>; reserve?: (call: number) => Effect.Effect<void, DatabaseError> }) => {
  const calls = { eventLog: 0, reserve: 0 }
  const wrapped = Layer.effect(
    EventLog,
    Effect.map(EventLog, (log) =>
      EventLog.of({
        ...log,
        record: (entry) => Effect.andThen(Effect.suspend(() => fault.eventLog?.(++calls.eventLog) ?? Effect.void), log.record(entry))
      }))
  ).pipe(Layer.provide(MemoryStores.layer))
  const stock = Layer.effect(
    Stock,
    Effect.map(Stock, (s) =>
      Stock.of({
        ...s,
        reserve: (key, q) => Effect.andThen(Effect.suspend(() => fault.reserve?.(++calls.reserve) ?? Effect.void), s.reserve(key, q))
      }))
  ).pipe(Layer.provide(MemoryStores.layer))
  const stores = Layer.mergeAll(wrapped, stock).pipe(Layer.provideMerge(MemoryStores.layer))
  const layer = Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(Layer.provideMerge(stores))
  return { calls, layer }
}

const down = new DatabaseError({ reason: "connection", message: "connection refused" })

describe("the pipeline's retry and dead-letter policy", () => {
  it("gives every error a fate, as SPEC 5 routes them", () => {
    const table: { readonly [Tag in InventoryErrorTag]: Fate } = fates
    assert.deepStrictEqual(table, {
      ValidationError: "dead_letter",
      InsufficientStock: "dead_letter",
      StockNotZero: "dead_letter",
      DuplicateRecord: "dead_letter",
      ReservationNotFound: "retry",
      DatabaseError: "retry_until_healthy"
    })
    // @ts-expect-error a routing table that leaves an error without a fate does not type-check
    const incomplete: { readonly [Tag in InventoryErrorTag]: Fate } = { ValidationError: "dead_letter" }
    void incomplete
  })

  it.live("retries a transient database error in process and then succeeds", () => {
    const { calls, layer } = faulty({ eventLog: (n) => (n <= 2 ? Effect.fail(down) : Effect.void) })
    return Effect.gen(function*() {
      const org = freshOrg()
      const outcome = yield* send(org, "return.received", {
        order_id: "o1", return_id: "r1", warehouse_id: "w1", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }]
      })
      assert.strictEqual(outcome._tag, "Ack")
      assert.strictEqual(calls.eventLog, 3)
      assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 1, available: 1, reserved: 0, damaged: 0 })
    }).pipe(Effect.provideService(ProcessingPolicy, policy), Effect.provide(layer))
  })

  it.live("an outage outlasting the retries gives the message back and pauses, however often it was delivered", () => {
    const { calls, layer } = faulty({ eventLog: () => Effect.fail(down) })
    return Effect.gen(function*() {
      const org = freshOrg()
      const data = { order_id: "o1", return_id: "r1", warehouse_id: "w1", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }] }
      const outcome = yield* send(org, "return.received", data)
      assert.strictEqual(outcome._tag, "Retry")
      assert.isTrue(outcome._tag === "Retry" && outcome.pause)
      assert.strictEqual(calls.eventLog, 4, "one attempt and three retries")
      const late = yield* send(org, "return.received", data, { deliveryCount: 50 })
      assert.strictEqual(late._tag, "Retry", "an outage never dead-letters")
    }).pipe(Effect.provideService(ProcessingPolicy, policy), Effect.provide(layer))
  })

  it.live("a defect is retried by redelivery, then dead-lettered after too many deliveries", () => {
    const { layer } = faulty({ eventLog: () => Effect.die(new Error("bug")) })
    return Effect.gen(function*() {
      const org = freshOrg()
      const data = { order_id: "o1", return_id: "r1", warehouse_id: "w1", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }] }
      const first = yield* send(org, "return.received", data, { deliveryCount: 1 })
      assert.strictEqual(first._tag, "Retry")
      assert.isTrue(first._tag === "Retry" && first.failure.errorType === "Defect" && !first.pause)
      const last = yield* send(org, "return.received", data, { deliveryCount: 5 })
      assert.strictEqual(last._tag, "DeadLetter")
    }).pipe(Effect.provideService(ProcessingPolicy, policy), Effect.provide(layer))
  })

  it.live("a unit of work that fails half-way leaves nothing behind", () => {
    const { calls, layer } = faulty({ reserve: (n) => (n === 2 ? Effect.die(new Error("crash after the first decrement")) : Effect.void) })
    return Effect.gen(function*() {
      const org = freshOrg()
      yield* addWarehouse(org, "w1").pipe(Effect.orDie)
      yield* putStock(org, "v1", "w1", 5)
      yield* putStock(org, "v2", "w1", 5)
      const before = (yield* outboxOf(org)).length
      const outcome = yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }, { variant_id: "v2", quantity: 2 }] })
      assert.strictEqual(outcome._tag, "Retry")
      assert.strictEqual(calls.reserve, 2)
      assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 5, available: 5, reserved: 0, damaged: 0 })
      assert.strictEqual((yield* reservationsOf(org, "o1")).length, 0)
      assert.strictEqual((yield* outboxOf(org)).length, before)
      const logged = yield* Effect.flatMap(EventLog, (l) => l.has(org, outcome._tag === "Retry" ? outcome.decoded.eventId : "")).pipe(Effect.orDie)
      assert.isFalse(logged)
    }).pipe(Effect.provideService(ProcessingPolicy, { ...policy, retries: 0 }), Effect.provide(layer))
  })
})
