import { assert, describe, layer } from "@effect/vitest"
import { Cause, Data, Effect, Exit, type Layer, Option, Schema } from "effect"
import type { InventoryError } from "../../src/domain/errors.ts"
import { fateOf, fates } from "../../src/domain/fates.ts"
import { inboundEventTypes, orderingKey } from "../../src/domain/events.ts"
import { afterRollback } from "../../src/handlers/dispatch.ts"
import { applyGroup, type GroupResult } from "../../src/pipeline/batch.ts"
import { type Decoded, decodeDelivery } from "../../src/pipeline/decode.ts"
import { applyOnce } from "../../src/pipeline/pipeline.ts"
import { EventLog, Movements, Reservations, type ReservationTimers, Stock, type Stores, UnitOfWork, Variants } from "../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, freshOrg, outboxOf, putStock } from "../support/events.ts"
import { memoryLayer } from "../support/memory.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * `applyGroup` (issue 18: events of every type in one set-based unit of work) must leave exactly
 * what applying the same events one at a time, in the same order, leaves: the same stock,
 * reservations, movements, catalog rows, outbox rows, event log and per-event results (duplicates,
 * refusals, failures worth a retry, repeated orders, cancels before placements, shipments beyond
 * the reservation, inactive warehouses and archived rows included). Both runs start from the same
 * committed state and are rolled back after their snapshot, so they see the same world. A handler
 * that reads beyond what `handlers/reads.ts` declares fails the group, and so the test.
 */

const between = (minimum: number, maximum: number) => Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))
const Variant = Schema.Literals(["v1", "v2", "v3"])
const Warehouse = Schema.Literals(["w1", "w2", "w3"])
const Order = Schema.Literals(["o1", "o2"])
/** Event ids `e0`..`e9`: equal indexes are the same event id, sent twice (maybe as another type). */
const EventIndex = between(0, 9)
const some = <S extends Schema.Top>(schema: S, max: number) => Schema.Array(schema).pipe(Schema.check(Schema.isBetweenLength(1, max)))

const Step = Schema.Union([
  Schema.Struct({
    kind: Schema.Literal("placed"),
    order: Order,
    event: EventIndex,
    lines: some(Schema.Struct({ variant: Variant, quantity: between(1, 4), preferred: Schema.NullOr(Warehouse) }), 3),
    /** The order's later events, right behind it (their ids follow its own). */
    then: Schema.Literals(["nothing", "confirmed", "shipped", "confirmed+shipped", "cancelled"])
  }),
  Schema.Struct({ kind: Schema.Literal("confirmed"), order: Order, event: EventIndex, byId: Schema.Boolean }),
  Schema.Struct({ kind: Schema.Literal("cancelled"), order: Order, event: EventIndex, byId: Schema.Boolean }),
  Schema.Struct({
    kind: Schema.Literal("shipped"),
    order: Order,
    event: EventIndex,
    /** Ships what the order's last placement asked for, from w1, where most placements are served (else `lines`). */
    asPlaced: Schema.Boolean,
    lines: some(Schema.Struct({ variant: Variant, quantity: between(1, 3), warehouse: Warehouse }), 2)
  }),
  Schema.Struct({
    kind: Schema.Literal("returned"),
    order: Order,
    event: EventIndex,
    lines: some(Schema.Struct({ variant: Variant, quantity: between(1, 3), good: Schema.Boolean, warehouse: Schema.NullOr(Warehouse) }), 2)
  }),
  Schema.Struct({ kind: Schema.Literal("variantCreated"), variant: Variant, event: EventIndex, track: Schema.Boolean }),
  Schema.Struct({ kind: Schema.Literal("variantUpdated"), variant: Variant, event: EventIndex, track: Schema.Boolean }),
  Schema.Struct({ kind: Schema.Literal("variantDeleted"), variant: Variant, event: EventIndex }),
  Schema.Struct({ kind: Schema.Literal("productDeleted"), variants: some(Variant, 2), event: EventIndex })
])
type Step = typeof Step.Type

const Scenario = Schema.Struct({
  stock: Schema.Array(Schema.Struct({ variant: Variant, warehouse: Warehouse, quantity: between(1, 8) })).pipe(
    Schema.check(Schema.isBetweenLength(0, 6))
  ),
  /** Applied and committed one at a time before the group. */
  before: Schema.Array(Step).pipe(Schema.check(Schema.isBetweenLength(0, 4))),
  group: Schema.Array(Step).pipe(Schema.check(Schema.isBetweenLength(1, 12)))
})

const message = (step: Step, earlier: ReadonlyArray<Step>): { readonly event: string; readonly data: unknown } => {
  switch (step.kind) {
    case "placed":
      return {
        event: "order.placed",
        data: { order_id: step.order, items: step.lines.map((l) => ({ variant_id: l.variant, quantity: l.quantity, preferred_warehouse_id: l.preferred })) }
      }
    case "confirmed":
      return { event: "order.confirmed", data: { order_id: step.order, ...(step.byId ? { reservation_id: "unknown-reservation" } : {}) } }
    case "cancelled":
      return { event: "order.cancelled", data: { order_id: step.order, ...(step.byId ? { reservation_id: "unknown-reservation" } : {}) } }
    case "shipped": {
      const placed = earlier.findLast((s) => s.kind === "placed" && s.order === step.order)
      const lines = step.asPlaced && placed?.kind === "placed"
        ? placed.lines.map((l) => ({ variant: l.variant, quantity: l.quantity, warehouse: "w1" }))
        : step.lines
      return {
        event: "order.shipped",
        data: { order_id: step.order, shipment_id: `s-${step.event}`, shipped_items: lines.map((l) => ({ variant_id: l.variant, quantity: l.quantity, warehouse_id: l.warehouse })) }
      }
    }
    case "returned":
      return {
        event: "return.received",
        data: {
          order_id: step.order,
          return_id: `r-${step.event}`,
          warehouse_id: "w1",
          returned_items: step.lines.map((l) => ({
            variant_id: l.variant,
            quantity: l.quantity,
            condition: l.good ? "good" : "damaged",
            ...(l.warehouse === null ? {} : { warehouse_id: l.warehouse })
          }))
        }
      }
    case "variantCreated":
      return { event: "catalog.variant.created", data: { variant_id: step.variant, product_id: "p1", track_inventory: step.track } }
    case "variantUpdated":
      return { event: "catalog.variant.updated", data: { variant_id: step.variant, changes: { track_inventory: { old: !step.track, new: step.track } } } }
    case "variantDeleted":
      return { event: "catalog.variant.deleted", data: { variant_id: step.variant } }
    case "productDeleted":
      return { event: "catalog.product.deleted", data: { product_id: "p1", variant_ids: step.variants } }
  }
}

/** Each step with its event id suffix; a placement's `then` becomes the order's next steps. */
const expand = (steps: ReadonlyArray<Step>): ReadonlyArray<{ readonly step: Step; readonly id: string }> =>
  steps.flatMap((step) => {
    const own = { step, id: `e${step.event}` }
    if (step.kind !== "placed" || step.then === "nothing") return [own]
    const next = step.then.split("+").map((kind): Step =>
      kind === "confirmed"
        ? { kind: "confirmed", order: step.order, event: step.event, byId: false }
        : kind === "cancelled"
        ? { kind: "cancelled", order: step.order, event: step.event, byId: false }
        : { kind: "shipped", order: step.order, event: step.event, asPlaced: true, lines: [] as never }
    )
    return [own, ...next.map((n, i) => ({ step: n, id: `e${step.event}-${i}` }))]
  })

class Rollback extends Data.TaggedError("Rollback")<{ readonly snapshot: unknown }> {}

/** One event alone, as the pipeline applies it without in-process retries: its result, by name. */
const oneAtATime = (decoded: Decoded) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(applyOnce(decoded))
    if (Exit.isSuccess(exit)) return exit.value as string
    const failed = exit.cause.reasons.find(Cause.isFailReason)
    if (failed === undefined) return "Defect"
    if (fateOf(failed.error) === "dead_letter") {
      yield* Effect.flatMap(UnitOfWork, (u) => u.transaction(afterRollback(decoded.event, decoded.eventId, failed.error))).pipe(Effect.orDie)
    }
    return failed.error._tag
  })

const named = (result: GroupResult): string =>
  typeof result === "string" ? result : result._tag === "Refused" ? result.error._tag : result.error?._tag ?? "Defect"

let run = 0

const suite = <E>(name: string, stores: Layer.Layer<Stores | ReservationTimers, E>, runs: number) =>
  layer(stores, { timeout: "300 seconds" })(name, (it) => {
    it.effect.prop(
      "applyGroup leaves what one event at a time leaves, for every event type",
      [Scenario],
      ([scenario]) =>
        Effect.gen(function*() {
          const org = freshOrg()
          const tag = `r${run++}`
          const before = expand(scenario.before)
          const group = expand(scenario.group)
          const all = [...before, ...group].map((x) => x.step)
          const decode = (step: Step, eventTag: string) => {
            const { event, data } = message(step, all.slice(0, all.indexOf(step)))
            return decodeDelivery({
              body: envelopeBytes(org, event, data, `${org}-${eventTag}`),
              deliveryCount: 1,
              queue: "test",
              accepts: inboundEventTypes
            }).pipe(Effect.orDie)
          }

          yield* addWarehouse(org, "w1").pipe(Effect.orDie)
          yield* addWarehouse(org, "w2").pipe(Effect.orDie)
          yield* addWarehouse(org, "w3", { active: false }).pipe(Effect.orDie)
          // Enough in w1 that many placements succeed (and so can be shipped), then the scenario's own rows.
          yield* putStock(org, "v1", "w1", 6)
          yield* putStock(org, "v2", "w1", 6)
          for (const s of scenario.stock) yield* putStock(org, s.variant, s.warehouse, s.quantity)
          for (const [i, { step }] of before.entries()) yield* oneAtATime(yield* decode(step, `${tag}-before${i}`))

          const eventIds = [...new Set(group.map((x) => `${org}-${tag}-${x.id}`))]
          const snapshot = (results: ReadonlyArray<string>) =>
            Effect.gen(function*() {
              const stock = yield* (yield* Stock).list({ organization_id: org })
              const reservations = yield* (yield* Reservations).list({ organization_id: org })
              const movements = (yield* (yield* Movements).list({ organization_id: org }))
                .map(({ created_at: _, ...m }) => m)
                .sort((a, b) => (a.movement_id < b.movement_id ? -1 : 1))
              const variants = yield* Effect.forEach(["v1", "v2", "v3"], (v) => Effect.map(Effect.flatMap(Variants, (s) => s.get(org, v)), Option.getOrNull))
              const outbox = (yield* outboxOf(org)).map((m) => ({ event_id: m.event_id, key: m.aggregate_key, payload: m.payload }))
              const log = yield* EventLog
              const logged = yield* Effect.forEach(eventIds, (id) => log.has(org, id))
              return { results, stock, reservations, movements, variants, outbox, logged }
            })
          const rolledBack = (effect: Effect.Effect<ReadonlyArray<string>, InventoryError, Stores | ReservationTimers>) =>
            Effect.flatMap(UnitOfWork, (u) =>
              u.transaction(Effect.flatMap(effect, (results) => Effect.flatMap(snapshot(results), (s) => Effect.fail(new Rollback({ snapshot: s })))))
            ).pipe(
              Effect.catchTag("Rollback", (r) => Effect.succeed(r.snapshot)),
              Effect.orDie
            )

          // A key whose event failed in a way worth retrying waits for it: its later events are not run.
          const sequential = yield* rolledBack(Effect.gen(function*() {
            const held = new Set<string>()
            const results: Array<string> = []
            for (const { id, step } of group) {
              const decoded = yield* decode(step, `${tag}-${id}`)
              const key = orderingKey(decoded.event)
              if (held.has(key)) {
                results.push("not run")
                continue
              }
              const result = yield* oneAtATime(decoded)
              if (result === "Defect" || (result in fates && fates[result as keyof typeof fates] !== "dead_letter")) held.add(key)
              results.push(result)
            }
            return results
          }))
          const together = yield* rolledBack(Effect.gen(function*() {
            const events = yield* Effect.forEach(group, ({ id, step }) => decode(step, `${tag}-${id}`))
            const results = yield* applyGroup(events.map((decoded) => ({ decoded, parent: Option.none() })))
            return results.map(named)
          }))
          assert.deepStrictEqual(together, sequential)
        }),
      { timeout: 300_000, arbitrary: { runs } }
    )
  })

describe("events of every type applied together", () => {
  suite("on the memory stores", memoryLayer, 300)
  suite("on PostgreSQL", sqlLayer("group_apply"), 200)
})
