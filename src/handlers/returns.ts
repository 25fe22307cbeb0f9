import { Effect, Option } from "effect"
import { spanned } from "../observability/spans.ts"
import { ValidationError } from "../domain/errors.ts"
import type { ReturnReceived } from "../domain/events.ts"
import { deriveId } from "../domain/ids.ts"
import { compareStockKeys, type Movement, type StockCategory, type StockKey } from "../stores/model.ts"
import { Movements, Stock } from "../stores/services.ts"
import { type Causation, emit, nowDate } from "./outbound.ts"

interface Inflow extends StockKey {
  readonly quantity: number
  readonly category: StockCategory
}

/**
 * Puts goods into a stock row (creating it if needed) with an `in` movement per row and
 * category, and announces each movement.
 */
export const receiveStock = Effect.fnUntraced(function*(
  cause: Causation,
  aggregateKey: string,
  inflows: ReadonlyArray<Inflow>,
  movement: { readonly reason: string; readonly reference_type: string; readonly reference_id: string; readonly notes: string | null }
) {
  const stock = yield* Stock
  const now = yield* nowDate
  const movements: Array<Movement> = []
  const sorted = [...inflows].sort((a, b) => compareStockKeys(a, b) || (a.category < b.category ? -1 : a.category > b.category ? 1 : 0))
  for (const inflow of sorted) {
    const change = yield* stock.receive(inflow, inflow.quantity, inflow.category)
    movements.push({
      movement_id: deriveId(inflow.organization_id, "movement", cause.event_id, inflow.variant_id, inflow.warehouse_id, inflow.category),
      organization_id: inflow.organization_id,
      variant_id: inflow.variant_id,
      warehouse_id: inflow.warehouse_id,
      movement_type: "in",
      quantity_change: inflow.quantity,
      quantity_before: change.before.total,
      quantity_after: change.after.total,
      category: inflow.category,
      reason: movement.reason,
      reference_type: movement.reference_type,
      reference_id: movement.reference_id,
      notes: movement.notes,
      caused_by: cause.event_id,
      created_at: now
    })
  }
  yield* (yield* Movements).append(movements)
  yield* emit(cause, aggregateKey, movements.map((m) => ({
    event: "inventory.movement.in" as const,
    data: {
      movement_id: m.movement_id,
      variant_id: m.variant_id,
      warehouse_id: m.warehouse_id,
      quantity: m.quantity_change,
      reason: m.reason,
      category: m.category,
      reference_id: m.reference_id
    }
  })))
  return movements
})

export const returnReceived = Effect.fnUntraced(function*(event: ReturnReceived, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const byKey = new Map<string, Inflow>()
  for (const item of data.returned_items) {
    const warehouse_id = item.warehouse_id ?? data.warehouse_id
    if (warehouse_id === undefined) {
      return yield* new ValidationError({
        message: `Returned item ${item.variant_id} names no warehouse, and the return has no warehouse_id`
      })
    }
    const category: StockCategory = item.condition === "good" ? "available" : "damaged"
    const k = `${item.variant_id}\u0000${warehouse_id}\u0000${category}`
    const seen = byKey.get(k)
    byKey.set(k, {
      organization_id: org,
      variant_id: item.variant_id,
      warehouse_id,
      category,
      quantity: (seen?.quantity ?? 0) + item.quantity
    })
  }
  yield* receiveStock({ organization_id: org, event_id: eventId }, `order/${data.order_id}`, [...byKey.values()], {
    reason: "customer_return",
    reference_type: "return",
    reference_id: data.return_id,
    notes: `Return from order ${data.order_id}${data.rma_number ? ` (${data.rma_number})` : ""}`
  })
}, spanned("return.received"))

/**
 * An operator's signed correction of one row (`inventory stock adjust`), written as a movement.
 * Refused when it would take a quantity below zero.
 */
export const adjustStock = Effect.fnUntraced(function*(
  key: StockKey,
  delta: number,
  category: StockCategory,
  reason: string,
  reference: string
) {
  if (!Number.isInteger(delta) || delta === 0) {
    return yield* new ValidationError({ message: "delta must be a non-zero whole number" })
  }
  const stock = yield* Stock
  const changed = yield* stock.adjust(key, delta, category)
  if (Option.isNone(changed)) {
    return yield* new ValidationError({
      message: `Adjustment refused: ${delta} ${category} on ${key.variant_id}@${key.warehouse_id} would make stock negative`
    })
  }
  const { before, after } = changed.value
  const eventId = deriveId(key.organization_id, "adjustment", reference)
  const movement: Movement = {
    movement_id: deriveId(key.organization_id, "movement", eventId),
    organization_id: key.organization_id,
    variant_id: key.variant_id,
    warehouse_id: key.warehouse_id,
    movement_type: delta > 0 ? "in" : "out",
    quantity_change: delta,
    quantity_before: before.total,
    quantity_after: after.total,
    category,
    reason,
    reference_type: "adjustment",
    reference_id: reference,
    notes: null,
    caused_by: eventId,
    created_at: yield* nowDate
  }
  yield* (yield* Movements).append([movement])
  const cause = { organization_id: key.organization_id, event_id: eventId }
  const common = {
    movement_id: movement.movement_id,
    variant_id: key.variant_id,
    warehouse_id: key.warehouse_id,
    quantity: Math.abs(delta),
    reason,
    reference_id: reference
  }
  yield* emit(cause, `variant/${key.variant_id}`, [
    delta > 0
      ? { event: "inventory.movement.in", data: { ...common, category } }
      : { event: "inventory.movement.out", data: { ...common, order_id: null } }
  ])
  return { before, after, movement }
}, spanned("stock.adjust"))
