import { assert, describe, layer } from "@effect/vitest"
import { Data, Effect, type Layer, Schema } from "effect"
import type { InventoryError } from "../../src/domain/errors.ts"
import { inboundEventTypes, type OrderPlaced } from "../../src/domain/events.ts"
import { afterRollback } from "../../src/handlers/dispatch.ts"
import { orderPlacedAll, type PlacedResult } from "../../src/handlers/orders/placedTogether.ts"
import { decodeDelivery } from "../../src/pipeline/decode.ts"
import { applyOnce } from "../../src/pipeline/pipeline.ts"
import { EventLog, Reservations, type ReservationTimers, Stock, type Stores, UnitOfWork } from "../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, freshOrg, outboxOf, putStock } from "../support/events.ts"
import { memoryLayer } from "../support/memory.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * `orderPlacedAll` (issue 8: many `order.placed` in one set-based unit of work) must leave
 * exactly what applying the same events one at a time leaves: the same stock, reservations,
 * outbox rows, event log and per-event results, duplicates, repeated orders, inactive
 * warehouses, preferences and shortages included. Both runs start from the same committed
 * state and are rolled back after their snapshot, so they see the same world.
 */

const between = (minimum: number, maximum: number) => Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))
const Variant = Schema.Literals(["v1", "v2", "v3"])
const Warehouse = Schema.Literals(["w1", "w2", "w3"])
const Order = Schema.Literals(["o1", "o2", "o3", "o4", "o5"])

const Place = Schema.Struct({
  order: Order,
  /** Event ids are `e0`..`e6`: equal indexes are the same event sent twice. */
  event: between(0, 6),
  lines: Schema.Array(Schema.Struct({ variant: Variant, quantity: between(1, 4), preferred: Schema.NullOr(Warehouse) })).pipe(
    Schema.check(Schema.isBetweenLength(1, 3))
  ),
  ttl: between(1, 60)
})

const Scenario = Schema.Struct({
  stock: Schema.Array(Schema.Struct({ variant: Variant, warehouse: Warehouse, quantity: between(1, 8) })).pipe(
    Schema.check(Schema.isBetweenLength(0, 8))
  ),
  /** Placed and committed before the batch: their orders already hold a reservation. */
  before: Schema.Array(Place).pipe(Schema.check(Schema.isBetweenLength(0, 2))),
  batch: Schema.Array(Place).pipe(Schema.check(Schema.isBetweenLength(1, 14)))
})
type Place = typeof Place.Type

class Rollback extends Data.TaggedError("Rollback")<{ readonly snapshot: unknown }> {}

let run = 0

const suite = <E>(name: string, stores: Layer.Layer<Stores | ReservationTimers, E>, runs: number) =>
  layer(stores, { timeout: "240 seconds" })(name, (it) => {
    it.effect.prop(
      "orderPlacedAll leaves what one event at a time leaves",
      [Scenario],
      ([scenario]) =>
        Effect.gen(function*() {
          const org = freshOrg()
          const tag = `r${run++}`
          const decode = (place: Place, eventTag: string) =>
            decodeDelivery({
              body: envelopeBytes(org, "order.placed", {
                order_id: place.order,
                items: place.lines.map((l) => ({ variant_id: l.variant, quantity: l.quantity, preferred_warehouse_id: l.preferred })),
                reservation_ttl_minutes: place.ttl
              }, `${org}-${eventTag}`),
              deliveryCount: 1,
              queue: "test",
              accepts: inboundEventTypes
            }).pipe(Effect.orDie)
          const oneAtATime = (place: Place, eventTag: string) =>
            Effect.gen(function*() {
              const decoded = yield* decode(place, eventTag)
              return yield* applyOnce(decoded).pipe(
                Effect.map((r): string => r),
                Effect.catchTag("InsufficientStock", (error) =>
                  Effect.flatMap(UnitOfWork, (u) => u.transaction(afterRollback(decoded.event, decoded.eventId, error))).pipe(
                    Effect.as(error._tag)
                  ))
              )
            })

          yield* addWarehouse(org, "w1").pipe(Effect.orDie)
          yield* addWarehouse(org, "w2").pipe(Effect.orDie)
          yield* addWarehouse(org, "w3", { active: false }).pipe(Effect.orDie)
          for (const s of scenario.stock) yield* putStock(org, s.variant, s.warehouse, s.quantity)
          for (const [i, place] of scenario.before.entries()) yield* oneAtATime(place, `${tag}-before${i}`).pipe(Effect.orDie)

          const eventIds = [...new Set(scenario.batch.map((p) => `${org}-${tag}-e${p.event}`))]
          const snapshot = (results: ReadonlyArray<string>) =>
            Effect.gen(function*() {
              const stock = yield* (yield* Stock).list({ organization_id: org })
              const reservations = yield* (yield* Reservations).list({ organization_id: org })
              const outbox = (yield* outboxOf(org)).map((m) => ({ event_id: m.event_id, key: m.aggregate_key, payload: m.payload }))
              const log = yield* EventLog
              const logged = yield* Effect.forEach(eventIds, (id) => log.has(org, id))
              return { results, stock, reservations, outbox, logged }
            })
          const rolledBack = (effect: Effect.Effect<ReadonlyArray<string>, InventoryError, Stores | ReservationTimers>) =>
            Effect.flatMap(UnitOfWork, (u) =>
              u.transaction(Effect.flatMap(effect, (results) => Effect.flatMap(snapshot(results), (s) => Effect.fail(new Rollback({ snapshot: s })))))
            ).pipe(
              Effect.catchTag("Rollback", (r) => Effect.succeed(r.snapshot)),
              Effect.orDie
            )

          const sequential = yield* rolledBack(Effect.forEach(scenario.batch, (place) => oneAtATime(place, `${tag}-e${place.event}`)))
          const together = yield* rolledBack(Effect.gen(function*() {
            const events = yield* Effect.forEach(scenario.batch, (place) => decode(place, `${tag}-e${place.event}`))
            const results = yield* orderPlacedAll(events.map((d) => ({ event: d.event as OrderPlaced, eventId: d.eventId, traceparent: null })))
            return results.map((r: PlacedResult) => (typeof r === "string" ? r : r._tag))
          }))
          assert.deepStrictEqual(together, sequential)
        }),
      { timeout: 240_000, arbitrary: { runs } }
    )
  })

describe("order.placed applied together", () => {
  suite("on the memory stores", memoryLayer, 300)
  suite("on PostgreSQL", sqlLayer("placed_together"), 60)
})
