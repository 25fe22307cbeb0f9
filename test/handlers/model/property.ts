import { assert } from "@effect/vitest"
import { Effect } from "effect"
import { TestClock } from "effect/testing"
import { inboundEventTypes } from "../../../src/domain/events.ts"
import { expireOverdue } from "../../../src/handlers/expiry.ts"
import { type Outcome, processDelivery } from "../../../src/pipeline/pipeline.ts"
import { Reconciliation, Reservations, ReservationTimers, Stock, type Stores, UnitOfWork } from "../../../src/stores/services.ts"
import { addWarehouse, envelopeBytes, putStock } from "../../support/events.ts"
import { activeWarehouses, type Command, orgs, type Scenario, variants, warehouses } from "./commands.ts"
import { type Expected, type Item, Model } from "./model.ts"

interface Sent {
  readonly command: Command
  readonly shipLines: ReadonlyArray<Item>
  readonly body: Uint8Array
  acked: boolean
}

const body = (
  command: Exclude<Command, { _tag: "Stock" | "Advance" | "Redeliver" }>,
  tenant: (org: string) => string,
  step: number,
  eventId: string,
  shipLines: ReadonlyArray<Item>
) => {
  const e = (type: string, data: unknown) => envelopeBytes(tenant(command.org), type, data, eventId)
  switch (command._tag) {
    case "VariantCreated":
      return e("catalog.variant.created", { variant_id: command.variant, product_id: "p1" })
    case "VariantUpdated":
      return e("catalog.variant.updated", { variant_id: command.variant, changes: { track_inventory: { old: !command.track, new: command.track } } })
    case "VariantDeleted":
      return e("catalog.variant.deleted", { variant_id: command.variant })
    case "ProductDeleted":
      return e("catalog.product.deleted", { product_id: "p1", variant_ids: command.variants })
    case "Place":
      return e("order.placed", {
        order_id: command.order,
        items: command.lines.map((l) => ({ variant_id: l.variant, quantity: l.quantity, preferred_warehouse_id: l.preferred })),
        reservation_ttl_minutes: command.ttl
      })
    case "Confirm":
      return e("order.confirmed", { order_id: command.order })
    case "Cancel":
      return e("order.cancelled", { order_id: command.order, cancellation_reason: "customer_request" })
    case "Ship":
      return e("order.shipped", {
        order_id: command.order,
        shipment_id: `s-${step}`,
        shipped_items: shipLines.map((l) => ({ variant_id: l.variant, quantity: l.quantity, warehouse_id: l.warehouse }))
      })
    case "Return":
      return e("return.received", {
        order_id: command.order,
        return_id: `r-${step}`,
        returned_items: command.lines.map((l) => ({
          variant_id: l.variant, quantity: l.quantity, condition: l.good ? "good" : "damaged", warehouse_id: l.warehouse
        }))
      })
  }
}

const deliver = (bytes: Uint8Array) =>
  processDelivery({ body: bytes, deliveryCount: 1, queue: "model", accepts: inboundEventTypes })

const describeOutcome = (o: Outcome) =>
  o._tag === "DeadLetter" || o._tag === "Retry" ? `${o._tag}(${o.failure.errorType}: ${o.failure.message})` : o._tag

/** The consumer's state, in the model's terms. */
const observe = (tenant: (org: string) => string) => Effect.gen(function*() {
  const stock = yield* Stock
  const reservations = yield* Reservations
  const rows: Record<string, unknown> = {}
  const statuses: Record<string, ReadonlyArray<string>> = {}
  for (const org of orgs) {
    for (const r of yield* stock.list({ organization_id: tenant(org) })) {
      rows[Model.key(org, r.variant_id, r.warehouse_id)] = {
        total: r.total, available: r.available, reserved: r.reserved, damaged: r.damaged, archived: r.archived_at !== null
      }
    }
    for (const order of ["o1", "o2", "o3", "o4"]) {
      const list = yield* reservations.findByOrder(tenant(org), order)
      if (list.length > 0) statuses[Model.key(org, order)] = list.map((r) => r.status).sort()
    }
  }
  return { rows, statuses }
}).pipe(Effect.orDie)

const expected = (model: Model) => {
  const rows: Record<string, unknown> = {}
  for (const [k, r] of model.rows) rows[k] = { ...r }
  const statuses: Record<string, ReadonlyArray<string>> = {}
  for (const [k, list] of model.reservations) statuses[k] = list.map((r) => r.status).sort()
  return { rows, statuses }
}

/**
 * Runs the commands against the consumer and the model side by side. After every step: the
 * outcome is the model's, every stock row and reservation matches, and the reconciliation of
 * SPEC 3 (I1, I2, I3, I8, I9) finds nothing.
 */
export const runModel = ({ commands, initialStock }: Scenario, prefix: string) =>
  Effect.gen(function*() {
    // Each run works in its own tenants, so runs can share one store.
    const tenant = (org: string) => `${prefix}-${org}`
    const model = new Model()
    const sent: Array<Sent> = []
    for (const org of orgs) {
      for (const w of warehouses) yield* addWarehouse(tenant(org), w, { active: w !== "w3" }).pipe(Effect.orDie)
      if (initialStock === 0) continue
      for (const variant of variants) {
        for (const warehouse of activeWarehouses) {
          const command: Command = { _tag: "Stock", org, variant, warehouse, quantity: initialStock }
          yield* putStock(tenant(org), variant, warehouse, initialStock)
          model.apply(command, [])
        }
      }
    }
    const check = (step: number, command: Command, outcome: Outcome | null, want: Expected | null) =>
      Effect.gen(function*() {
        const where = `step ${step} ${JSON.stringify(command)}`
        if (outcome !== null && want !== null) {
          assert.strictEqual(outcome._tag, want.tag, `${where}: got ${describeOutcome(outcome)}`)
          if (want.error !== undefined && (outcome._tag === "DeadLetter" || outcome._tag === "Retry")) {
            assert.strictEqual(outcome.failure.errorType, want.error, `${where}: got ${describeOutcome(outcome)}`)
          }
        }
        const actual = yield* observe(tenant)
        assert.deepStrictEqual(actual, expected(model), `${where}: state differs from the model`)
        const violations = yield* Effect.forEach(orgs, (org) => Effect.flatMap(Reconciliation, (r) => r.check(tenant(org)))).pipe(
          Effect.map((all) => all.flat()),
          Effect.orDie
        )
        assert.deepStrictEqual(violations, [], `${where}: invariants broken`)
      })

    for (const [step, command] of commands.entries()) {
      switch (command._tag) {
        case "Stock": {
          yield* putStock(tenant(command.org), command.variant, command.warehouse, command.quantity)
          model.apply(command, [])
          yield* check(step, command, null, null)
          break
        }
        case "Advance": {
          yield* TestClock.adjust(`${command.minutes} minutes`)
          // Timers fire on the clock; once they are done, a sweep makes "everything overdue is expired" exact.
          yield* Effect.flatMap(ReservationTimers, (t) => t.settled)
          yield* Effect.flatMap(UnitOfWork, (u) => u.transaction(expireOverdue(1000))).pipe(Effect.orDie)
          model.advance(command.minutes)
          yield* check(step, command, null, null)
          break
        }
        case "Redeliver": {
          const previous = sent[sent.length - command.back]
          if (previous === undefined) break
          const outcome = yield* deliver(previous.body)
          const want: Expected = previous.acked ? { tag: "Duplicate" } : model.apply(previous.command, previous.shipLines)
          if (outcome._tag === "Ack") previous.acked = true
          yield* check(step, command, outcome, want)
          break
        }
        default: {
          const shipLines = command._tag === "Ship" ? model.shipLines(command.org, command.order, command.part) : []
          const bytes = body(command, tenant, step, `${prefix}-${step}`, shipLines)
          const want = model.apply(command, shipLines)
          const outcome = yield* deliver(bytes)
          sent.push({ command, shipLines, body: bytes, acked: outcome._tag === "Ack" })
          yield* check(step, command, outcome, want)
        }
      }
    }
  })

export type ModelServices = Stores | ReservationTimers
