import { assert, layer } from "@effect/vitest"
import { Clock, Duration, Effect } from "effect"
import { expireReservation } from "../../src/handlers/expiry.ts"
import type { Outcome } from "../../src/pipeline/pipeline.ts"
import { liveStatuses } from "../../src/stores/model.ts"
import { Reconciliation, Reservations, UnitOfWork } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, noRetries, outboxOf, putStock, quantities, reservationsOf, send } from "../support/events.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * Real concurrency: every event runs through the real pipeline in its own unit of work, on
 * its own pooled connection, against one PostgreSQL. No in-process retries, so a deadlock or
 * any other transient failure would surface as a `Retry` outcome and fail the test.
 */
const strict = noRetries

const tagOf = (outcome: Outcome) =>
  outcome._tag === "DeadLetter" || outcome._tag === "Retry" ? `${outcome._tag}:${outcome.failure.errorType}` : outcome._tag

const count = (outcomes: ReadonlyArray<Outcome>, tag: string) => outcomes.filter((o) => tagOf(o) === tag).length

const clean = (org: string) =>
  Effect.flatMap(Reconciliation, (r) => r.check(org)).pipe(
    Effect.orDie,
    Effect.map((violations) => assert.deepStrictEqual(violations, [], `reconciliation of ${org}`))
  )

/** The Effect clock moved forward, for one effect: an expiry that finds the hold lapsed. */
const later = (by: Duration.Input) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.clockWith((clock) => {
    const offset = Duration.toMillis(Duration.fromInputUnsafe(by))
    const shifted: Clock.Clock = {
      ...clock,
      // A class's methods are not own properties: the spread leaves them out.
      sleep: (duration) => clock.sleep(duration),
      currentTimeMillisUnsafe: () => clock.currentTimeMillisUnsafe() + offset,
      currentTimeMillis: Effect.sync(() => clock.currentTimeMillisUnsafe() + offset),
      currentTimeNanosUnsafe: () => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n,
      currentTimeNanos: Effect.sync(() => clock.currentTimeNanosUnsafe() + BigInt(offset) * 1_000_000n)
    }
    return Effect.provideService(effect, Clock.Clock, shifted)
  })

/** Runs both at once, the one started first alternating by round, so either can win the race. */
const race = <A, B, E, R>(round: number, a: Effect.Effect<A, E, R>, b: Effect.Effect<B, E, R>) =>
  round % 2 === 0
    ? Effect.all([a, b], { concurrency: 2 })
    : Effect.map(Effect.all([b, a], { concurrency: 2 }), ([y, x]) => [x, y] as const)

const world = (stock: Record<string, number>) =>
  Effect.gen(function*() {
    const org = freshOrg()
    yield* Effect.orDie(addWarehouse(org, "wh"))
    for (const [variant, quantity] of Object.entries(stock)) yield* putStock(org, variant, "wh", quantity)
    return org
  })

layer(sqlLayer("concurrency", { poolSize: 12 }), { excludeTestServices: true, timeout: "120 seconds" })("SQL concurrency", (it) => {
  it.effect("50 concurrent orders for the last 20 units: exactly 20 reservations, no oversell", () =>
    strict(Effect.gen(function*() {
      const org = yield* world({ v: 20 })
      const outcomes = yield* Effect.all(
        Array.from({ length: 50 }, (_, i) => send(org, "order.placed", { order_id: `o${i}`, items: [{ variant_id: "v", quantity: 1 }] })),
        { concurrency: "unbounded" }
      )
      assert.strictEqual(count(outcomes, "Ack"), 20)
      assert.strictEqual(count(outcomes, "DeadLetter:InsufficientStock"), 30)
      assert.deepStrictEqual(yield* quantities(org, "v", "wh"), { total: 20, available: 0, reserved: 20, damaged: 0 })
      const active = yield* Effect.orDie(Effect.flatMap(Reservations, (r) => r.list({ organization_id: org, status: "active" })))
      assert.strictEqual(active.length, 20)
      assert.strictEqual(new Set(active.map((r) => r.order_id)).size, 20)
      const failed = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.reservation.failed")
      assert.strictEqual(failed.length, 30, "every refused order is told")
      yield* clean(org)
    })))

  it.effect("two orders taking the same variants in opposite item order, 100 times: no deadlock, one winner", () =>
    strict(Effect.gen(function*() {
      const round = Effect.gen(function*() {
        // B can serve only one of them: exactly one order must win, whichever locks first.
        const org = yield* world({ a: 3, b: 2 })
        const [first, second] = yield* Effect.all([
          send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "a", quantity: 2 }, { variant_id: "b", quantity: 1 }] }),
          send(org, "order.placed", { order_id: "o2", items: [{ variant_id: "b", quantity: 2 }, { variant_id: "a", quantity: 1 }] })
        ], { concurrency: 2 })
        const tags = [tagOf(first!), tagOf(second!)]
        assert.deepStrictEqual([...tags].sort(), ["Ack", "DeadLetter:InsufficientStock"], `outcomes ${tags.join(", ")}`)
        const winnerTakes = tags[0] === "Ack" ? { a: 2, b: 1 } : { a: 1, b: 2 }
        assert.deepStrictEqual(yield* quantities(org, "a", "wh"), { total: 3, available: 3 - winnerTakes.a, reserved: winnerTakes.a, damaged: 0 })
        assert.deepStrictEqual(yield* quantities(org, "b", "wh"), { total: 2, available: 2 - winnerTakes.b, reserved: winnerTakes.b, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, tags[0] === "Ack" ? "o1" : "o2")).length, 1)
        assert.strictEqual((yield* reservationsOf(org, tags[0] === "Ack" ? "o2" : "o1")).length, 0)
        yield* clean(org)
      })
      yield* Effect.all(Array.from({ length: 100 }, () => round), { concurrency: 5, discard: true })
    })))

  it.effect("the same event delivered twice at once is applied once", () =>
    strict(Effect.gen(function*() {
      const round = Effect.gen(function*() {
        const org = yield* world({ v: 10 })
        const eventId = freshId("evt")
        const outcomes = yield* Effect.all(
          [1, 2].map(() => send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v", quantity: 3 }] }, { eventId })),
          { concurrency: 2 }
        )
        assert.deepStrictEqual(outcomes.map(tagOf).sort(), ["Ack", "Duplicate"])
        assert.deepStrictEqual(yield* quantities(org, "v", "wh"), { total: 10, available: 7, reserved: 3, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "o1")).length, 1)
        assert.strictEqual((yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.reserved").length, 1)
        yield* clean(org)
      })
      yield* Effect.all(Array.from({ length: 20 }, () => round), { concurrency: 4, discard: true })
    })))

  it.effect("an expiry racing a confirm: one winner, the reservation leaves active once", () =>
    strict(Effect.gen(function*() {
      const uow = yield* UnitOfWork
      const round = (i: number) => Effect.gen(function*() {
        const org = yield* world({ v: 5 })
        assert.strictEqual(tagOf(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v", quantity: 2 }] })), "Ack")
        const [original] = yield* reservationsOf(org, "o1")
        const [expired, confirmed] = yield* race(
          i,
          uow.transaction(expireReservation(org, original!.reservation_id)).pipe(later("16 minutes"), Effect.orDie),
          send(org, "order.confirmed", { order_id: "o1", reservation_id: original!.reservation_id })
        )
        assert.strictEqual(tagOf(confirmed!), "Ack")
        const all = yield* reservationsOf(org, "o1")
        const first = all.find((r) => r.reservation_id === original!.reservation_id)!
        const released = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.released")
        if (expired) {
          // The expiry won; the confirm, serialised behind it, found the hold lapsed and held the goods again.
          assert.strictEqual(first.status, "expired")
          assert.strictEqual(released.length, 1)
          assert.deepStrictEqual(all.map((r) => r.status).sort(), ["confirmed", "expired"])
        } else {
          assert.strictEqual(first.status, "confirmed")
          assert.strictEqual(released.length, 0)
          assert.strictEqual(all.length, 1)
        }
        assert.strictEqual(all.filter((r) => liveStatuses.includes(r.status)).length, 1)
        assert.deepStrictEqual(yield* quantities(org, "v", "wh"), { total: 5, available: 3, reserved: 2, damaged: 0 })
        yield* clean(org)
      })
      yield* Effect.all(Array.from({ length: 20 }, (_, i) => round(i)), { concurrency: 4, discard: true })
    })))

  it.effect("a cancel racing a ship: one winner, stock released or shipped exactly once", () =>
    strict(Effect.gen(function*() {
      const round = (i: number) => Effect.gen(function*() {
        const org = yield* world({ v: 5 })
        assert.strictEqual(tagOf(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v", quantity: 2 }] })), "Ack")
        const [cancelled, shipped] = yield* race(
          i,
          send(org, "order.cancelled", { order_id: "o1", cancellation_reason: "customer_request" }),
          send(org, "order.shipped", { order_id: "o1", shipment_id: "s1", shipped_items: [{ variant_id: "v", quantity: 2, warehouse_id: "wh" }] })
        )
        assert.strictEqual(tagOf(cancelled!), "Ack", "a cancel after the ship is a warning, not a failure")
        const [reservation, ...rest] = yield* reservationsOf(org, "o1")
        assert.strictEqual(rest.length, 0)
        const out = yield* outboxOf(org)
        const released = out.filter((m) => m.event_type === "inventory.stock.released").length
        const movedOut = out.filter((m) => m.event_type === "inventory.movement.out").length
        if (reservation!.status === "cancelled") {
          assert.strictEqual(tagOf(shipped!), "DeadLetter:ValidationError", "shipping a cancelled order is refused")
          assert.deepStrictEqual([released, movedOut], [1, 0])
          assert.deepStrictEqual(yield* quantities(org, "v", "wh"), { total: 5, available: 5, reserved: 0, damaged: 0 })
        } else {
          assert.strictEqual(reservation!.status, "fulfilled")
          assert.strictEqual(tagOf(shipped!), "Ack")
          assert.deepStrictEqual([released, movedOut], [0, 1])
          assert.deepStrictEqual(yield* quantities(org, "v", "wh"), { total: 3, available: 3, reserved: 0, damaged: 0 })
        }
        yield* clean(org)
      })
      yield* Effect.all(Array.from({ length: 20 }, (_, i) => round(i)), { concurrency: 4, discard: true })
    })))
})
