import { assert, layer } from "@effect/vitest"
import { type Duration, Effect, Layer, Option, Schema } from "effect"
import { OutboundEvent } from "../../src/domain/published.ts"
import { TestClock } from "effect/testing"
import type { Outcome } from "../../src/pipeline/pipeline.ts"
import { EventLog, Movements, Reconciliation, ReservationTimers, type Stores, Variants } from "../../src/stores/services.ts"
import {
  addWarehouse,
  freshId,
  freshOrg,
  noRetries,
  outboxOf,
  putStock,
  quantities,
  reservationsOf,
  send
} from "../support/events.ts"

/**
 * SPEC 4, handler by handler, through the broker-free pipeline. One suite, run against every
 * store implementation (memory and PostgreSQL). Each test works in its own organization.
 */
const decodeOutbound = Schema.decodeUnknownSync(OutboundEvent)

export const handlerContract = <E>(name: string, stores: Layer.Layer<Stores | ReservationTimers, E>) =>
  layer(stores, { timeout: "60 seconds" })(name, (it) => {
    const expectTag = (outcome: Outcome, tag: Outcome["_tag"]) =>
      assert.strictEqual(outcome._tag, tag, `expected ${tag}, got ${JSON.stringify(outcome).slice(0, 400)}`)
    const errorOf = (outcome: Outcome) =>
      outcome._tag === "DeadLetter" || outcome._tag === "Retry" ? outcome.failure : assert.fail(`no failure in ${outcome._tag}`)
    /** The books balance, and everything written for publication matches its published schema. */
    const clean = (org: string) =>
      Effect.flatMap(Reconciliation, (r) => r.check(org)).pipe(
        Effect.orDie,
        Effect.map((violations) => assert.deepStrictEqual(violations, [])),
        Effect.andThen(outboxOf(org)),
        Effect.map((rows) => {
          for (const row of rows) {
            const decoded = decodeOutbound(JSON.parse(JSON.stringify(row.payload)))
            assert.strictEqual(decoded.event, row.event_type)
            assert.strictEqual(decoded.event_id, row.event_id)
          }
        })
      )
    /** Moves the clock, then waits until every timer now due has done its (possibly remote) work. */
    const advance = (duration: Duration.Input) =>
      TestClock.adjust(duration).pipe(Effect.andThen(Effect.flatMap(ReservationTimers, (t) => t.settled)))
    const test = (title: string, body: () => Effect.Effect<void, never, Stores | ReservationTimers>) =>
      it.effect(title, () => noRetries(body()))

    /** An organization with warehouses wh_a, wh_b (active) and wh_c (inactive), and a tracked variant. */
    const world = Effect.gen(function*() {
      const org = freshOrg()
      yield* addWarehouse(org, "wh_a", { name: "Bodega A" })
      yield* addWarehouse(org, "wh_b", { name: "Bodega B" })
      yield* addWarehouse(org, "wh_c", { active: false })
      return org
    }).pipe(Effect.orDie)

    // ---------------------------------------------------------------- catalog.variant.created

    test("variant created: one row per active warehouse, thresholds from the event, initialized published", () =>
      Effect.gen(function*() {
        const org = yield* world
        const outcome = yield* send(org, "catalog.variant.created", {
          variant_id: "v1", product_id: "p1", sku: "SKU-1", track_inventory: true, default_min_stock: 20, default_max_stock: 200
        })
        expectTag(outcome, "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 0, available: 0, reserved: 0, damaged: 0 })
        assert.isNotNull(yield* quantities(org, "v1", "wh_b"))
        assert.isNull(yield* quantities(org, "v1", "wh_c"), "inactive warehouse gets no row")
        const out = yield* outboxOf(org)
        assert.strictEqual(out.length, 1)
        assert.strictEqual(out[0]!.event_type, "inventory.stock.initialized")
        assert.deepStrictEqual(out[0]!.payload.data, { variant_id: "v1", warehouses_count: 2, stock_records_created: 2 })
        assert.strictEqual(out[0]!.payload.causation_id, outcome._tag === "Ack" ? outcome.decoded.eventId : "")
        yield* clean(org)
      }))

    test("variant created: defaults 0 / 999999; existing rows left as they are", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 7)
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 7, available: 7, reserved: 0, damaged: 0 })
        const out = yield* outboxOf(org)
        const initialized = out.find((m) => m.event_type === "inventory.stock.initialized")!
        assert.deepStrictEqual(initialized.payload.data, { variant_id: "v1", warehouses_count: 2, stock_records_created: 1 })
        yield* clean(org)
      }))

    test("variant created with track_inventory false: nothing created, nothing published", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1", track_inventory: false }), "Ack")
        assert.isNull(yield* quantities(org, "v1", "wh_a"))
        assert.strictEqual((yield* outboxOf(org)).length, 0)
      }))

    test("variant created under another product: DuplicateRecord, dead-lettered", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        const outcome = yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p2" })
        expectTag(outcome, "DeadLetter")
        assert.strictEqual(errorOf(outcome).errorType, "DuplicateRecord")
      }))

    // ---------------------------------------------------------------- catalog.variant.updated

    test("variant updated: tracking false -> true initializes, SKU recorded", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1", track_inventory: false }), "Ack")
        expectTag(yield* send(org, "catalog.variant.updated", {
          variant_id: "v1",
          changes: { sku: { old: "A", new: "B" }, track_inventory: { old: false, new: true } }
        }), "Ack")
        assert.isNotNull(yield* quantities(org, "v1", "wh_a"))
        const variant = yield* Effect.flatMap(Variants, (v) => v.get(org, "v1")).pipe(Effect.orDie)
        assert.isTrue(Option.isSome(variant) && variant.value.tracked && variant.value.sku === "B")
      }))

    test("variant updated: tracking true -> false with stock is StockNotZero; without stock untracks", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        yield* putStock(org, "v1", "wh_a", 3)
        const refused = yield* send(org, "catalog.variant.updated", { variant_id: "v1", changes: { track_inventory: { old: true, new: false } } })
        expectTag(refused, "DeadLetter")
        assert.strictEqual(errorOf(refused).errorType, "StockNotZero")
        const still = yield* Effect.flatMap(Variants, (v) => v.get(org, "v1")).pipe(Effect.orDie)
        assert.isTrue(Option.isSome(still) && still.value.tracked)

        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v2", product_id: "p1" }), "Ack")
        expectTag(yield* send(org, "catalog.variant.updated", { variant_id: "v2", changes: { track_inventory: { old: true, new: false } } }), "Ack")
        const untracked = yield* Effect.flatMap(Variants, (v) => v.get(org, "v2")).pipe(Effect.orDie)
        assert.isTrue(Option.isSome(untracked) && !untracked.value.tracked)
      }))

    // ---------------------------------------------------------------- catalog.variant.deleted / product.deleted

    test("variant deleted with stock: StockNotZero with the warehouses holding it; nothing archived", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        yield* putStock(org, "v1", "wh_a", 45)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 15 }] }), "Ack")
        const outcome = yield* send(org, "catalog.variant.deleted", { variant_id: "v1" })
        expectTag(outcome, "DeadLetter")
        assert.strictEqual(errorOf(outcome).errorType, "StockNotZero")
        assert.match(errorOf(outcome).message, /v1@wh_a=45/)
        const dead = outcome._tag === "DeadLetter" ? outcome : undefined
        assert.isDefined(dead)
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 45, available: 30, reserved: 15, damaged: 0 })
        assert.isFalse((yield* outboxOf(org)).some((m) => m.event_type === "inventory.stock.archived"))
      }))

    test("StockNotZero carries the seed's warehouses_with_stock details", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        yield* putStock(org, "v1", "wh_a", 45)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 15 }] }), "Ack")
        const { StockNotZero } = yield* Effect.promise(() => import("../../src/domain/errors.ts"))
        const { variantDeleted } = yield* Effect.promise(() => import("../../src/handlers/catalog.ts"))
        const error = yield* variantDeleted({
          event: "catalog.variant.deleted", version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, data: { variant_id: "v1" }
        }, freshId("evt")).pipe(Effect.flip, Effect.orDie)
        assert.instanceOf(error, StockNotZero)
        if (error._tag !== "StockNotZero") return
        assert.deepStrictEqual(error.warehouses_with_stock, [{
          variant_id: "v1", warehouse_id: "wh_a", warehouse_name: "Bodega A", total_quantity: 45, available: 30, reserved: 15
        }])
        assert.strictEqual(error.action_required, "Clear all stock before deleting variant")
      }))

    test("variant deleted at zero stock: rows archived, archived published, no longer reservable", () =>
      Effect.gen(function*() {
        const org = yield* world
        expectTag(yield* send(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" }), "Ack")
        expectTag(yield* send(org, "catalog.variant.deleted", { variant_id: "v1", product_id: "p1", deletion_type: "soft" }), "Ack")
        const archived = (yield* outboxOf(org)).find((m) => m.event_type === "inventory.stock.archived")
        assert.deepStrictEqual(archived?.payload.data, { variant_id: "v1", records_archived: 2 })
        const placed = yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 1 }] })
        expectTag(placed, "DeadLetter")
        assert.strictEqual(errorOf(placed).errorType, "InsufficientStock")
        yield* clean(org)
      }))

    test("product deleted: all variants or none", () =>
      Effect.gen(function*() {
        const org = yield* world
        for (const v of ["v1", "v2", "v3"]) {
          expectTag(yield* send(org, "catalog.variant.created", { variant_id: v, product_id: "p1" }), "Ack")
        }
        yield* putStock(org, "v3", "wh_b", 1)
        const refused = yield* send(org, "catalog.product.deleted", { product_id: "p1", variant_ids: ["v1", "v2", "v3"] })
        expectTag(refused, "DeadLetter")
        assert.strictEqual(errorOf(refused).errorType, "StockNotZero")
        assert.isFalse((yield* outboxOf(org)).some((m) => m.event_type === "inventory.stock.archived"), "nothing archived")

        expectTag(yield* send(org, "catalog.product.deleted", { product_id: "p1", variant_ids: ["v1", "v2"] }), "Ack")
        const archived = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.archived")
        assert.deepStrictEqual(archived.map((m) => m.payload.data), [
          { variant_id: "v1", records_archived: 2 },
          { variant_id: "v2", records_archived: 2 }
        ])
        yield* clean(org)
      }))

    // ---------------------------------------------------------------- order.placed

    test("order placed: preferred warehouse when it can serve; reservation, reserved event, timer", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 5)
        yield* putStock(org, "v1", "wh_b", 50)
        const timers = yield* ReservationTimers
        const before = yield* timers.pending
        expectTag(yield* send(org, "order.placed", {
          order_id: "o1", items: [{ variant_id: "v1", quantity: 2, preferred_warehouse_id: "wh_a" }], reservation_ttl_minutes: 30
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 5, available: 3, reserved: 2, damaged: 0 })
        const [reservation] = yield* reservationsOf(org, "o1")
        assert.strictEqual(reservation?.status, "active")
        assert.strictEqual(reservation!.expires_at!.getTime() - reservation!.created_at.getTime(), 30 * 60_000)
        const reserved = (yield* outboxOf(org)).find((m) => m.event_type === "inventory.stock.reserved")
        assert.deepStrictEqual(reserved?.payload.data, {
          reservation_id: reservation!.reservation_id,
          order_id: "o1",
          items: [{ variant_id: "v1", warehouse_id: "wh_a", quantity: 2 }],
          expires_at: reservation!.expires_at!.toISOString()
        })
        assert.strictEqual(yield* timers.pending, before + 1)
        yield* clean(org)
      }))

    test("order placed: the warehouse with most available when the preferred cannot serve; inactive never", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* addWarehouse(org, "wh_d").pipe(Effect.orDie)
        yield* putStock(org, "v1", "wh_a", 2)
        yield* putStock(org, "v1", "wh_b", 6)
        yield* putStock(org, "v1", "wh_d", 4)
        yield* putStock(org, "v1", "wh_c", 100)
        expectTag(yield* send(org, "order.placed", {
          order_id: "o1", items: [{ variant_id: "v1", quantity: 3, preferred_warehouse_id: "wh_a" }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_b"), { total: 6, available: 3, reserved: 3, damaged: 0 })
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_d"), { total: 4, available: 4, reserved: 0, damaged: 0 })
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_c"), { total: 100, available: 100, reserved: 0, damaged: 0 })
        expectTag(yield* send(org, "order.placed", {
          order_id: "o2", items: [{ variant_id: "v1", quantity: 4, preferred_warehouse_id: "wh_c" }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_d"), { total: 4, available: 0, reserved: 4, damaged: 0 }, "inactive preferred warehouse is passed over")
        const [reservation] = yield* reservationsOf(org, "o1")
        assert.strictEqual(reservation!.expires_at!.getTime() - reservation!.created_at.getTime(), 15 * 60_000, "default TTL")
        yield* clean(org)
      }))

    test("order placed without enough stock: InsufficientStock, nothing reserved, reservation.failed published", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 5)
        yield* putStock(org, "v2", "wh_a", 1)
        const outcome = yield* send(org, "order.placed", {
          order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }, { variant_id: "v2", quantity: 3 }]
        })
        expectTag(outcome, "DeadLetter")
        assert.strictEqual(errorOf(outcome).errorType, "InsufficientStock")
        assert.match(errorOf(outcome).message, /variant v2.*requested 3, available 1/)
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 5, available: 5, reserved: 0, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "o1")).length, 0)
        const out = yield* outboxOf(org)
        assert.deepStrictEqual(out.filter((m) => m.event_type !== "inventory.movement.in").map((m) => m.payload.data), [{
          order_id: "o1", variant_id: "v2", requested: 3, available: 1, reason: "insufficient_stock"
        }])
        const logged = yield* Effect.flatMap(EventLog, (l) => l.has(org, outcome._tag === "DeadLetter" ? outcome.decoded!.eventId : "")).pipe(Effect.orDie)
        assert.isFalse(logged, "a dead-lettered event does not block its replay")
        yield* clean(org)
      }))

    test("order placed naming a variant twice is checked against the sum (I6)", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 5)
        const outcome = yield* send(org, "order.placed", {
          order_id: "o1", items: [{ variant_id: "v1", quantity: 3 }, { variant_id: "v1", quantity: 3 }]
        })
        expectTag(outcome, "DeadLetter")
        assert.match(errorOf(outcome).message, /requested 6, available 5/)
        expectTag(yield* send(org, "order.placed", {
          order_id: "o2", items: [{ variant_id: "v1", quantity: 2 }, { variant_id: "v1", quantity: 3 }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 5, available: 0, reserved: 5, damaged: 0 })
        yield* clean(org)
      }))

    test("order placed twice (new event id) reserves nothing more; same event id is a duplicate", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        const data = { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }] }
        expectTag(yield* send(org, "order.placed", data, { eventId: "e-1" }), "Ack")
        expectTag(yield* send(org, "order.placed", data, { eventId: "e-1" }), "Duplicate")
        expectTag(yield* send(org, "order.placed", data, { eventId: "e-2" }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 8, reserved: 2, damaged: 0 })
        assert.strictEqual((yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.reserved").length, 1)
        yield* clean(org)
      }))

    // ---------------------------------------------------------------- order.confirmed

    test("order confirmed: active becomes confirmed, timer cancelled; twice is a no-op", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }] }), "Ack")
        const timers = yield* ReservationTimers
        const pending = yield* timers.pending
        const [reservation] = yield* reservationsOf(org, "o1")
        expectTag(yield* send(org, "order.confirmed", { order_id: "o1", reservation_id: reservation!.reservation_id, payment_confirmed: true }), "Ack")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "confirmed")
        assert.strictEqual(yield* timers.pending, pending - 1)
        expectTag(yield* send(org, "order.confirmed", { order_id: "o1" }), "Ack")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "confirmed")
        // A confirmed reservation never expires.
        yield* advance("1 day")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 8, reserved: 2, damaged: 0 })
        yield* clean(org)
      }))

    test("order confirmed by order_id when the reservation_id is unknown", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }] }), "Ack")
        expectTag(yield* send(org, "order.confirmed", { order_id: "o1", reservation_id: "res_123" }), "Ack")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "confirmed")
      }))

    test("order confirmed before it was placed: ReservationNotFound is retried, then dead-lettered", () =>
      Effect.gen(function*() {
        const org = yield* world
        const first = yield* send(org, "order.confirmed", { order_id: "o-unknown" }, { deliveryCount: 1 })
        expectTag(first, "Retry")
        assert.strictEqual(errorOf(first).errorType, "ReservationNotFound")
        assert.isFalse(first._tag === "Retry" && first.pause, "not an outage: consumption goes on")
        const last = yield* send(org, "order.confirmed", { order_id: "o-unknown" }, { deliveryCount: 5 })
        expectTag(last, "DeadLetter")
        assert.strictEqual(errorOf(last).errorType, "ReservationNotFound")
      }))

    test("order confirmed after expiry: reserved again when stock allows, else InsufficientStock", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 3)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }], reservation_ttl_minutes: 1 }), "Ack")
        expectTag(yield* send(org, "order.placed", { order_id: "o2", items: [{ variant_id: "v1", quantity: 1 }], reservation_ttl_minutes: 1 }), "Ack")
        yield* advance("2 minutes")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "expired")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 3, available: 3, reserved: 0, damaged: 0 })

        expectTag(yield* send(org, "order.confirmed", { order_id: "o1" }), "Ack")
        const o1 = yield* reservationsOf(org, "o1")
        assert.deepStrictEqual(o1.map((r) => r.status).sort(), ["confirmed", "expired"])
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 3, available: 1, reserved: 2, damaged: 0 })

        yield* putStock(org, "v1", "wh_a", -1)
        const refused = yield* send(org, "order.confirmed", { order_id: "o2" })
        expectTag(refused, "DeadLetter")
        assert.strictEqual(errorOf(refused).errorType, "InsufficientStock")
        yield* clean(org)
      }))

    // ---------------------------------------------------------------- order.cancelled

    test("order cancelled: reserved back to available, released published, timer cancelled; twice releases once", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 4 }] }), "Ack")
        const timers = yield* ReservationTimers
        const pending = yield* timers.pending
        const [reservation] = yield* reservationsOf(org, "o1")
        expectTag(yield* send(org, "order.cancelled", {
          order_id: "o1", reservation_id: reservation!.reservation_id, cancellation_reason: "customer_request", cancelled_by: "u1"
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 10, reserved: 0, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "cancelled")
        assert.strictEqual(yield* timers.pending, pending - 1)
        expectTag(yield* send(org, "order.cancelled", { order_id: "o1", reservation_id: reservation!.reservation_id }), "Ack")
        const released = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.released")
        assert.strictEqual(released.length, 1)
        assert.deepStrictEqual(released[0]!.payload.data, {
          reservation_id: reservation!.reservation_id,
          order_id: "o1",
          reason: "customer_request",
          items_released: 1,
          items: [{ variant_id: "v1", warehouse_id: "wh_a", quantity: 4 }]
        })
        yield* clean(org)
      }))

    test("order cancelled before it was placed: acked, and the late order.placed reserves nothing", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.cancelled", { order_id: "o1", reservation_id: "res_123" }), "Ack")
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 4 }] }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 10, reserved: 0, damaged: 0 })
        yield* clean(org)
      }))

    // ---------------------------------------------------------------- order.shipped

    test("order shipped: reserved and total fall, out movement with before/after, remainder released, fulfilled", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        yield* putStock(org, "v2", "wh_a", 5)
        expectTag(yield* send(org, "order.placed", {
          order_id: "o1", items: [{ variant_id: "v1", quantity: 4 }, { variant_id: "v2", quantity: 2 }]
        }), "Ack")
        expectTag(yield* send(org, "order.confirmed", { order_id: "o1" }), "Ack")
        expectTag(yield* send(org, "order.shipped", {
          order_id: "o1", shipment_id: "ship_1", shipped_items: [{ variant_id: "v1", quantity: 3, warehouse_id: "wh_a" }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 7, available: 7, reserved: 0, damaged: 0 })
        assert.deepStrictEqual(yield* quantities(org, "v2", "wh_a"), { total: 5, available: 5, reserved: 0, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "fulfilled")
        const movements = (yield* Effect.flatMap(Movements, (m) => m.list({ organization_id: org, variant_id: "v1" })).pipe(Effect.orDie))
          .filter((m) => m.reason === "order_shipment")
        assert.strictEqual(movements.length, 1)
        assert.deepInclude(movements[0]!, {
          movement_type: "out", quantity_change: -3, quantity_before: 10, quantity_after: 7, reference_type: "order", reference_id: "o1"
        })
        const out = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.movement.out")
        assert.strictEqual(out.length, 1)
        assert.deepInclude(out[0]!.payload.data as object, { variant_id: "v1", warehouse_id: "wh_a", quantity: 3, reason: "order_shipment", order_id: "o1" })

        expectTag(yield* send(org, "order.shipped", {
          order_id: "o1", shipment_id: "ship_1", shipped_items: [{ variant_id: "v1", quantity: 3, warehouse_id: "wh_a" }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 7, available: 7, reserved: 0, damaged: 0 }, "a replayed ship changes nothing")
        yield* clean(org)
      }))

    test("shipping more than was reserved is a ValidationError and changes nothing", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }] }), "Ack")
        const outcome = yield* send(org, "order.shipped", {
          order_id: "o1", shipment_id: "s1", shipped_items: [{ variant_id: "v1", quantity: 3, warehouse_id: "wh_a" }]
        })
        expectTag(outcome, "DeadLetter")
        assert.strictEqual(errorOf(outcome).errorType, "ValidationError")
        assert.match(errorOf(outcome).message, /more than was reserved/)
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 8, reserved: 2, damaged: 0 })
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "active")
        yield* clean(org)
      }))

    test("shipping after expiry holds the shipped goods again and ships them", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 2 }], reservation_ttl_minutes: 1 }), "Ack")
        yield* advance("5 minutes")
        expectTag(yield* send(org, "order.shipped", {
          order_id: "o1", shipment_id: "s1", shipped_items: [{ variant_id: "v1", quantity: 2, warehouse_id: "wh_a" }]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 8, available: 8, reserved: 0, damaged: 0 })
        assert.deepStrictEqual((yield* reservationsOf(org, "o1")).map((r) => r.status).sort(), ["expired", "fulfilled"])
        yield* clean(org)
      }))

    // ---------------------------------------------------------------- return.received

    test("return received: good to available, other conditions to damaged, rows created, in movements", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 2)
        expectTag(yield* send(org, "return.received", {
          order_id: "o1", return_id: "ret_1", rma_number: "RMA-1", warehouse_id: "wh_a",
          returned_items: [
            { variant_id: "v1", quantity: 1, condition: "good", return_reason: "wrong_size" },
            { variant_id: "v1", quantity: 2, condition: "damaged" },
            { variant_id: "v9", quantity: 1, condition: "defective", warehouse_id: "wh_b" }
          ]
        }), "Ack")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 5, available: 3, reserved: 0, damaged: 2 })
        assert.deepStrictEqual(yield* quantities(org, "v9", "wh_b"), { total: 1, available: 0, reserved: 0, damaged: 1 })
        const movements = (yield* Effect.flatMap(Movements, (m) => m.list({ organization_id: org })).pipe(Effect.orDie))
          .filter((m) => m.reason === "customer_return")
        assert.strictEqual(movements.length, 3)
        assert.isTrue(movements.every((m) => m.movement_type === "in" && m.reference_type === "return" && m.reference_id === "ret_1"))
        const inbound = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.movement.in" && (m.payload.data as { reason: string }).reason === "customer_return")
        assert.strictEqual(inbound.length, 3)
        yield* clean(org)
      }))

    test("return received with no warehouse anywhere is a ValidationError", () =>
      Effect.gen(function*() {
        const org = yield* world
        const outcome = yield* send(org, "return.received", {
          order_id: "o1", return_id: "r1", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }]
        })
        expectTag(outcome, "DeadLetter")
        assert.strictEqual(errorOf(outcome).errorType, "ValidationError")
      }))

    // ---------------------------------------------------------------- expiry

    test("an active reservation past its TTL is released once, with reason expired", () =>
      Effect.gen(function*() {
        const org = yield* world
        yield* putStock(org, "v1", "wh_a", 10)
        expectTag(yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 4 }], reservation_ttl_minutes: 10 }), "Ack")
        yield* advance("9 minutes")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "active")
        yield* advance("2 minutes")
        assert.strictEqual((yield* reservationsOf(org, "o1"))[0]!.status, "expired")
        assert.deepStrictEqual(yield* quantities(org, "v1", "wh_a"), { total: 10, available: 10, reserved: 0, damaged: 0 })
        const released = (yield* outboxOf(org)).filter((m) => m.event_type === "inventory.stock.released")
        assert.strictEqual(released.length, 1)
        assert.strictEqual((released[0]!.payload.data as { reason: string }).reason, "expired")
        const { expireReservation } = yield* Effect.promise(() => import("../../src/handlers/expiry.ts"))
        const again = yield* expireReservation(org, (yield* reservationsOf(org, "o1"))[0]!.reservation_id).pipe(Effect.orDie)
        assert.isFalse(again)
        yield* clean(org)
      }))
  })
