import { assert, describe, it } from "@effect/vitest"
import { Clock, Context, Effect, Exit, Layer, Scope } from "effect"
import { TestClock } from "effect/testing"
import { ReservationTimers } from "../../src/stores/services.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { addWarehouse, freshOrg, noRetries, outboxOf, putStock, quantities, reservationsOf, send } from "../support/events.ts"

/** Timers only: a sweep interval far beyond any test, so every release proves a timer fired. */
const timersOnlyOptions = { sweepInterval: "1000 days", sweepBatch: 100 } as const
const timersOnly = Scheduler.layer(timersOnlyOptions).pipe(Layer.provideMerge(MemoryStores.layer))
/** The same, holding timers only for reservations due within 2 minutes (as the consumer does). */
const withHorizon = Scheduler.layer({ ...timersOnlyOptions, horizon: "2 minutes" }).pipe(Layer.provideMerge(MemoryStores.layer))

const place = (org: string, order: string, quantity: number, ttl: number) =>
  send(org, "order.placed", { order_id: order, items: [{ variant_id: "v1", quantity }], reservation_ttl_minutes: ttl })

const setup = Effect.gen(function*() {
  const org = freshOrg()
  yield* addWarehouse(org, "w1").pipe(Effect.orDie)
  yield* putStock(org, "v1", "w1", 1000)
  return org
})

const status = (org: string, order: string) => Effect.map(reservationsOf(org, order), (rs) => rs[0]?.status)

describe("reservation TTL timers", () => {
  it.effect("fire at expires_at, not before, and publish inventory.stock.released (expired)", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      yield* place(org, "o1", 3, 10)
      const timers = yield* ReservationTimers
      assert.strictEqual(yield* timers.pending, 1)
      yield* TestClock.adjust("9 minutes")
      assert.strictEqual(yield* status(org, "o1"), "active")
      yield* TestClock.adjust("59 seconds")
      assert.strictEqual(yield* status(org, "o1"), "active")
      yield* TestClock.adjust("1 second")
      assert.strictEqual(yield* status(org, "o1"), "expired")
      assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 1000, available: 1000, reserved: 0, damaged: 0 })
      assert.strictEqual((yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.released").length, 1)
      assert.strictEqual(yield* timers.pending, 0)
    })).pipe(Effect.provide(timersOnly)))

  it.effect("a fractional TTL is honoured to the millisecond", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      yield* place(org, "o1", 1, 0.5)
      yield* TestClock.adjust("29999 millis")
      assert.strictEqual(yield* status(org, "o1"), "active")
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* status(org, "o1"), "expired")
    })).pipe(Effect.provide(timersOnly)))

  it.effect("confirm, cancel and ship cancel the timer", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      const timers = yield* ReservationTimers
      yield* place(org, "o1", 1, 5)
      yield* place(org, "o2", 1, 5)
      yield* place(org, "o3", 1, 5)
      assert.strictEqual(yield* timers.pending, 3)
      yield* send(org, "order.confirmed", { order_id: "o1" })
      yield* send(org, "order.cancelled", { order_id: "o2" })
      yield* send(org, "order.shipped", { order_id: "o3", shipment_id: "s3", shipped_items: [{ variant_id: "v1", quantity: 1, warehouse_id: "w1" }] })
      assert.strictEqual(yield* timers.pending, 0)
      yield* TestClock.adjust("1 hour")
      assert.deepStrictEqual([yield* status(org, "o1"), yield* status(org, "o2"), yield* status(org, "o3")], ["confirmed", "cancelled", "fulfilled"])
    })).pipe(Effect.provide(timersOnly)))

  it.effect("rescheduling a reservation replaces its timer", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      yield* place(org, "o1", 1, 5)
      const [reservation] = yield* reservationsOf(org, "o1")
      const timers = yield* ReservationTimers
      // A timer scheduled for the same reservation (as recovery does) replaces the earlier one.
      yield* timers.schedule({ organization_id: org, reservation_id: reservation!.reservation_id, expires_at: reservation!.expires_at! })
      assert.strictEqual(yield* timers.pending, 1)
      yield* TestClock.adjust("5 minutes")
      assert.strictEqual(yield* status(org, "o1"), "expired")
      assert.strictEqual((yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.released").length, 1)
    })).pipe(Effect.provide(timersOnly)))

  it.effect("timers are the organization's: the same reservation id in two organizations is two timers", () =>
    noRetries(Effect.gen(function*() {
      const timers = yield* ReservationTimers
      const [a, b] = [freshOrg(), freshOrg()]
      const now = yield* Clock.currentTimeMillis
      const at = (minutes: number) => new Date(now + minutes * 60_000)
      yield* timers.schedule({ organization_id: a, reservation_id: "r1", expires_at: at(5) })
      yield* timers.schedule({ organization_id: b, reservation_id: "r1", expires_at: at(5) })
      assert.strictEqual(yield* timers.pending, 2)
      yield* timers.cancel(a, "r1")
      yield* timers.cancel(a, "r1")
      assert.strictEqual(yield* timers.pending, 1)
      // Rescheduling b's replaces b's only, and a new timer of a's is one more.
      yield* timers.schedule({ organization_id: b, reservation_id: "r1", expires_at: at(10) })
      yield* timers.schedule({ organization_id: a, reservation_id: "r1", expires_at: at(20) })
      assert.strictEqual(yield* timers.pending, 2)
      // Each fires once, at its own deadline (no such reservation: its expiry changes nothing).
      yield* TestClock.adjust("15 minutes")
      assert.strictEqual(yield* timers.pending, 1)
      yield* timers.cancel(b, "r1")
      assert.strictEqual(yield* timers.pending, 1)
      yield* TestClock.adjust("10 minutes")
      assert.strictEqual(yield* timers.pending, 0)
    })).pipe(Effect.provide(timersOnly)))

  it.effect("many timers fire in order of their deadlines", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      for (let i = 1; i <= 200; i++) yield* place(org, `o${i}`, 1, i)
      const timers = yield* ReservationTimers
      assert.strictEqual(yield* timers.pending, 200)
      yield* TestClock.adjust("100 minutes")
      assert.strictEqual(yield* timers.pending, 100)
      assert.strictEqual(yield* status(org, "o100"), "expired")
      assert.strictEqual(yield* status(org, "o101"), "active")
      assert.deepStrictEqual(yield* quantities(org, "v1", "w1"), { total: 1000, available: 900, reserved: 100, damaged: 0 })
    })).pipe(Effect.provide(timersOnly)))

  it.effect("recovery at start-up reschedules active reservations; overdue ones expire at once", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      yield* place(org, "due", 1, 1)
      yield* place(org, "later", 1, 60)
      const timers = yield* ReservationTimers
      // Simulate a restart: the old timers die with their process, the rows stay.
      yield* timers.cancel(org, (yield* reservationsOf(org, "due"))[0]!.reservation_id)
      yield* timers.cancel(org, (yield* reservationsOf(org, "later"))[0]!.reservation_id)
      yield* TestClock.adjust("5 minutes")
      assert.strictEqual(yield* status(org, "due"), "active", "no timer left: nothing expired it")
      const restarted = yield* Layer.build(Scheduler.layer({ sweepInterval: "1000 days", sweepBatch: 100 }))
      const fresh = Context.get(restarted, ReservationTimers)
      yield* TestClock.adjust("1 millis")
      assert.strictEqual(yield* status(org, "due"), "expired")
      assert.strictEqual(yield* fresh.pending, 1)
      yield* TestClock.adjust("1 hour")
      assert.strictEqual(yield* status(org, "later"), "expired")
    })).pipe(Effect.provide(timersOnly)))

  it.effect("with a horizon, a timer is held only once its reservation is due within it, and still fires at expires_at", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      const timers = yield* ReservationTimers
      yield* place(org, "near", 1, 1)
      yield* place(org, "far", 1, 15)
      assert.strictEqual(yield* timers.pending, 1, "the reservation due in 15 minutes has no timer yet")
      // Refills every minute, each reaching 2 minutes ahead: the one at 13 minutes reaches 15.
      yield* TestClock.adjust("12 minutes")
      assert.strictEqual(yield* status(org, "near"), "expired")
      assert.strictEqual(yield* timers.pending, 0)
      yield* TestClock.adjust("1 minute")
      assert.strictEqual(yield* timers.pending, 1, "armed by the refill")
      yield* TestClock.adjust("119999 millis")
      assert.strictEqual(yield* status(org, "far"), "active", "not before expires_at")
      yield* TestClock.adjust("1 millis")
      yield* timers.settled
      assert.strictEqual(yield* status(org, "far"), "expired")
    })).pipe(Effect.provide(withHorizon)))

  it.effect("with a horizon, start-up arms what is due within it and the refills the rest; a confirm still cancels", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      // Written under a scheduler without a horizon, whose timers die with it (a restart).
      const before = yield* ReservationTimers
      for (const [order, ttl] of [["soon", 1], ["later", 60], ["confirmed", 60]] as const) {
        yield* place(org, order, 1, ttl)
        yield* before.cancel(org, (yield* reservationsOf(org, order))[0]!.reservation_id)
      }
      const timers = Context.get(yield* Layer.build(Scheduler.layer({ ...timersOnlyOptions, horizon: "2 minutes" })), ReservationTimers)
      assert.strictEqual(yield* timers.pending, 1, "only the reservation due within the horizon")
      yield* TestClock.adjust("1 minute")
      yield* timers.settled
      assert.strictEqual(yield* status(org, "soon"), "expired")
      yield* send(org, "order.confirmed", { order_id: "confirmed" })
      yield* TestClock.adjust("58 minutes")
      assert.strictEqual(yield* timers.pending, 1, "the confirmed reservation is not armed")
      assert.strictEqual(yield* status(org, "later"), "active")
      yield* TestClock.adjust("1 minute")
      yield* timers.settled
      assert.strictEqual(yield* status(org, "later"), "expired")
      assert.strictEqual(yield* status(org, "confirmed"), "confirmed")
    })).pipe(Effect.provide(timersOnly)))

  it.effect("the periodic sweep expires what no timer holds", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      const withSweep = Scheduler.layer({ sweepInterval: "1 minute", sweepBatch: 2 })
      const context = yield* Layer.build(withSweep)
      const timers = Context.get(context, ReservationTimers)
      for (const o of ["a", "b", "c", "d", "e"]) yield* place(org, o, 1, 1)
      for (const o of ["a", "b", "c", "d", "e"]) yield* timers.cancel(org, (yield* reservationsOf(org, o))[0]!.reservation_id)
      const stale = yield* ReservationTimers
      for (const o of ["a", "b", "c", "d", "e"]) yield* stale.cancel(org, (yield* reservationsOf(org, o))[0]!.reservation_id)
      yield* TestClock.adjust("2 minutes")
      for (const o of ["a", "b", "c", "d", "e"]) assert.strictEqual(yield* status(org, o), "expired", `order ${o}`)
    })).pipe(Effect.provide(timersOnly)))

  it.effect("closing the scheduler interrupts every timer and its sweep: nothing keeps running", () =>
    noRetries(Effect.gen(function*() {
      const org = yield* setup
      const ambient = yield* ReservationTimers
      const scope = yield* Scope.make()
      const context = yield* Layer.buildWithScope(Scheduler.layer({ sweepInterval: "1 minute", sweepBatch: 100 }), scope)
      const timers = Context.get(context, ReservationTimers)
      for (const o of ["a", "b", "c"]) {
        yield* place(org, o, 1, 1)
        const [r] = yield* reservationsOf(org, o)
        yield* ambient.cancel(org, r!.reservation_id)
        yield* timers.schedule({ organization_id: org, reservation_id: r!.reservation_id, expires_at: r!.expires_at! })
      }
      assert.strictEqual(yield* timers.pending, 3)
      yield* Scope.close(scope, Exit.void)
      assert.strictEqual(yield* timers.pending, 0)
      yield* TestClock.adjust("1 day")
      for (const o of ["a", "b", "c"]) assert.strictEqual(yield* status(org, o), "active", "no timer or sweep outlived its scope")
    })).pipe(Effect.provide(timersOnly)))
})
