import { assert, it } from "@effect/vitest"
import { Effect, Layer, Schema } from "effect"
import { TestClock } from "effect/testing"
import { inboundEventTypes } from "../../src/domain/events.ts"
import { adjustStock } from "../../src/handlers/returns.ts"
import { type Outcome, processDelivery } from "../../src/pipeline/pipeline.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { liveStatuses } from "../../src/stores/model.ts"
import { Movements, Outbox, Reservations, ReservationTimers, Stock, UnitOfWork } from "../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, noRetries } from "../support/events.ts"

/**
 * Issue 15, SPEC 3: event ids are the publishers', so two organizations may send the same one.
 * For random steps of two organizations drawing their event ids (and adjustment references)
 * from one small pool, each organization's stock rows, reservations, movements, outbound events
 * and per-event outcomes (its dead letters among them) are exactly what it gets when its own
 * steps run alone, on the same clock. The organization names are the same in both runs, so
 * every derived id must come out equal too; only sharing a store with the other may change
 * nothing. Only timers expire reservations here (no sweep), so timer keys are covered as well.
 */

const between = (minimum: number, maximum: number) => Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))

const roles = ["a", "b"] as const
type Role = typeof roles[number]
const Org = Schema.Literals(roles)
/** A pool of ten ids for both organizations: collisions across them are the point. */
const Id = between(0, 9)
const Variant = Schema.Literals(["v1", "v2"])
const Warehouse = Schema.Literals(["w1", "w2", "w3"])
const Order = Schema.Literals(["o1", "o2", "o3"])

const Step = Schema.Union([
  Schema.TaggedStruct("Stock", { org: Org, ref: Id, variant: Variant, warehouse: Warehouse, quantity: between(1, 6) }),
  Schema.TaggedStruct("VariantCreated", { org: Org, id: Id, variant: Variant }),
  Schema.TaggedStruct("VariantUpdated", { org: Org, id: Id, variant: Variant, track: Schema.Boolean }),
  Schema.TaggedStruct("VariantDeleted", { org: Org, id: Id, variant: Variant }),
  Schema.TaggedStruct("Place", {
    org: Org,
    id: Id,
    order: Order,
    lines: Schema.Array(Schema.Struct({ variant: Variant, quantity: between(1, 4) })).pipe(Schema.check(Schema.isBetweenLength(1, 2))),
    ttl: between(1, 30)
  }),
  Schema.TaggedStruct("Confirm", { org: Org, id: Id, order: Order }),
  Schema.TaggedStruct("Cancel", { org: Org, id: Id, order: Order }),
  Schema.TaggedStruct("Ship", { org: Org, id: Id, order: Order }),
  Schema.TaggedStruct("Return", { org: Org, id: Id, order: Order, variant: Variant, warehouse: Warehouse, quantity: between(1, 3), good: Schema.Boolean }),
  /** The organization's own message again, sent `back` of its messages ago. */
  Schema.TaggedStruct("Redeliver", { org: Org, back: between(1, 4) }),
  /** Time passes for everyone: kept in both runs alone. */
  Schema.TaggedStruct("Advance", { minutes: between(1, 40) })
])
type Step = typeof Step.Type

const Scenario = Schema.Struct({ initialStock: between(0, 5), steps: Schema.Array(Step).pipe(Schema.check(Schema.isBetweenLength(1, 40))) })
type Scenario = typeof Scenario.Type

const tenant = (role: Role) => `org_${role}`
const eventId = (id: number) => `evt-${id}`

/** Timers only: every expiry in these runs is a timer's, so a timer keyed without the organization shows. */
const stores = Scheduler.layer({ sweepInterval: "1000 days", sweepBatch: 100 }).pipe(Layer.provideMerge(MemoryStores.layer))

const deliver = (body: Uint8Array) => processDelivery({ body, deliveryCount: 1, queue: "tenants", accepts: inboundEventTypes })

const describeOutcome = (o: Outcome) =>
  o._tag === "DeadLetter" || o._tag === "Retry" ? `${o._tag}(${o.failure.errorType}: ${o.failure.message})` : o._tag

/** What an order ships: everything its live reservation holds, or a line it never reserved. */
const shipment = (org: string, order: string) =>
  Effect.flatMap(Reservations, (r) => r.findByOrder(org, order)).pipe(
    Effect.orDie,
    Effect.map((all) => {
      const live = all.find((r) => liveStatuses.includes(r.status))
      return live === undefined || live.items.length === 0
        ? [{ variant_id: "v1", quantity: 1, warehouse_id: "w1" }]
        : live.items.map((i) => ({ variant_id: i.variant_id, quantity: i.quantity, warehouse_id: i.warehouse_id }))
    })
  )

const bodyOf = (step: Exclude<Step, { _tag: "Stock" | "Redeliver" | "Advance" }>) =>
  Effect.gen(function*() {
    const org = tenant(step.org)
    const e = (type: string, data: unknown) => envelopeBytes(org, type, data, eventId(step.id))
    switch (step._tag) {
      case "VariantCreated":
        return e("catalog.variant.created", { variant_id: step.variant, product_id: "p1" })
      case "VariantUpdated":
        return e("catalog.variant.updated", { variant_id: step.variant, changes: { track_inventory: { old: !step.track, new: step.track } } })
      case "VariantDeleted":
        return e("catalog.variant.deleted", { variant_id: step.variant })
      case "Place":
        return e("order.placed", {
          order_id: step.order,
          items: step.lines.map((l) => ({ variant_id: l.variant, quantity: l.quantity })),
          reservation_ttl_minutes: step.ttl
        })
      case "Confirm":
        return e("order.confirmed", { order_id: step.order })
      case "Cancel":
        return e("order.cancelled", { order_id: step.order, cancellation_reason: "customer_request" })
      case "Ship":
        return e("order.shipped", { order_id: step.order, shipment_id: `s-${step.id}`, shipped_items: yield* shipment(org, step.order) })
      case "Return":
        return e("return.received", {
          order_id: step.order,
          return_id: `r-${step.id}`,
          warehouse_id: step.warehouse,
          returned_items: [{ variant_id: step.variant, quantity: step.quantity, condition: step.good ? "good" : "damaged" }]
        })
    }
  })

/**
 * Everything one organization has, as the stores return it. Outbox rows leave out their
 * store-wide position and their traceparent (each run's traces have random ids).
 */
const observe = (role: Role) =>
  Effect.gen(function*() {
    const org = tenant(role)
    return {
      stock: yield* (yield* Stock).list({ organization_id: org }),
      reservations: yield* (yield* Reservations).list({ organization_id: org }),
      movements: yield* (yield* Movements).list({ organization_id: org }),
      outbox: (yield* (yield* Outbox).pending(1_000_000)).filter((m) => m.organization_id === org).map(({ position: _, traceparent: __, ...m }) => m)
    }
  }).pipe(Effect.orDie)

/**
 * Runs the steps of `present` (and every clock advance) on fresh memory stores and a fresh
 * test clock; returns each present organization's outcomes and what it has at the end.
 */
const runSteps = (scenario: Scenario, present: ReadonlyArray<Role>) =>
  Effect.gen(function*() {
    const outcomes: Record<string, Array<string>> = { a: [], b: [] }
    const sent: Record<string, Array<Uint8Array>> = { a: [], b: [] }
    for (const role of present) {
      for (const w of ["w1", "w2", "w3"]) yield* addWarehouse(tenant(role), w, { active: w !== "w3" }).pipe(Effect.orDie)
      if (scenario.initialStock === 0) continue
      for (const variant of ["v1", "v2"]) {
        for (const warehouse of ["w1", "w2"]) {
          const key = { organization_id: tenant(role), variant_id: variant, warehouse_id: warehouse }
          // One reference for both organizations: adjustment ids must tell them apart.
          yield* Effect.flatMap(UnitOfWork, (u) => u.transaction(adjustStock(key, scenario.initialStock, "available", "initial", `init-${variant}-${warehouse}`)))
            .pipe(Effect.orDie)
        }
      }
    }
    for (const step of scenario.steps) {
      if (step._tag === "Advance") {
        yield* TestClock.adjust(`${step.minutes} minutes`)
        yield* Effect.flatMap(ReservationTimers, (t) => t.settled)
        continue
      }
      if (!present.includes(step.org)) continue
      switch (step._tag) {
        case "Stock": {
          const key = { organization_id: tenant(step.org), variant_id: step.variant, warehouse_id: step.warehouse }
          const adjusted = yield* Effect.flatMap(UnitOfWork, (u) =>
            u.transaction(adjustStock(key, step.quantity, "available", "count", `ref-${step.ref}`))).pipe(Effect.exit)
          outcomes[step.org]!.push(adjusted._tag === "Success" ? "Adjusted" : `AdjustFailed(${String(adjusted.cause)})`)
          break
        }
        case "Redeliver": {
          const own = sent[step.org]!
          const previous = own[own.length - step.back]
          if (previous === undefined) break
          outcomes[step.org]!.push(`again ${describeOutcome(yield* deliver(previous))}`)
          break
        }
        default: {
          const body = yield* bodyOf(step)
          sent[step.org]!.push(body)
          outcomes[step.org]!.push(`${step._tag} ${describeOutcome(yield* deliver(body))}`)
        }
      }
    }
    const seen: Record<string, unknown> = {}
    for (const role of present) seen[role] = { outcomes: outcomes[role], ...(yield* observe(role)) }
    return seen
  }).pipe(noRetries, Effect.provide(stores), Effect.provide(TestClock.layer()))

it.effect.prop(
  "two organizations sharing event ids: each gets exactly what it gets alone (effects, outbound events, dead letters)",
  [Scenario],
  ([scenario]) =>
    Effect.gen(function*() {
      const together = yield* runSteps(scenario, roles)
      for (const role of roles) {
        const alone = yield* runSteps(scenario, [role])
        assert.deepStrictEqual(together[role], alone[role], `organization ${role}: sharing the store changed what it got`)
      }
    }),
  { timeout: 120_000, arbitrary: { runs: 150, size: 40 } }
)
