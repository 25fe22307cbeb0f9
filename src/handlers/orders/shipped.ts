import { Effect, Option } from "effect"
import { spanned } from "../../observability/spans.ts"
import { sumByVariant } from "../../domain/allocation.ts"
import { ReservationNotFound, ValidationError } from "../../domain/errors.ts"
import type { OrderShipped } from "../../domain/events.ts"
import { deriveId } from "../../domain/ids.ts"
import { liveStatuses, type Movement } from "../../stores/model.ts"
import { Movements, Reservations, Stock } from "../../stores/services.ts"
import { emit, nowDate } from "../outbound.ts"
import { cancelTimerAfterCommit, createReservation, findReservation, keyOf, sortedItems } from "./lifecycle.ts"

export const orderShipped = Effect.fnUntraced(function*(event: OrderShipped, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const cause = { organization_id: org, event_id: eventId }
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  if (Option.isNone(found)) {
    return yield* new ReservationNotFound({ organization_id: org, order_id: data.order_id, reservation_id: data.reservation_id ?? null })
  }
  let reservation = found.value
  switch (reservation.status) {
    case "fulfilled": {
      yield* Effect.logWarning("order already shipped; nothing changed").pipe(
        Effect.annotateLogs({ order_id: data.order_id, reservation_id: reservation.reservation_id })
      )
      return
    }
    case "cancelled":
      return yield* new ValidationError({ message: `Order ${data.order_id} was cancelled; it cannot be shipped` })
    case "expired": {
      // The goods left anyway: hold exactly what was shipped, where it was shipped from.
      const shippedDemands = data.shipped_items.map((i) => ({ ...i, preferred_warehouse_id: i.warehouse_id }))
      reservation = yield* createReservation(cause, data.order_id, sumByVariant(shippedDemands), "confirmed", null)
      break
    }
    case "active":
    case "confirmed":
      break
  }

  const key = (variantId: string, warehouseId: string) => `${variantId}\u0000${warehouseId}`
  const reserved = new Map<string, number>()
  for (const item of reservation.items) {
    reserved.set(key(item.variant_id, item.warehouse_id), (reserved.get(key(item.variant_id, item.warehouse_id)) ?? 0) + item.quantity)
  }
  const shipped = new Map<string, number>()
  for (const item of data.shipped_items) {
    shipped.set(key(item.variant_id, item.warehouse_id), (shipped.get(key(item.variant_id, item.warehouse_id)) ?? 0) + item.quantity)
  }
  for (const [k, quantity] of shipped) {
    const held = reserved.get(k) ?? 0
    if (quantity > held) {
      const [variant, warehouse] = k.split("\u0000")
      return yield* new ValidationError({
        message: `Shipping more than was reserved: ${quantity} of variant ${variant} from warehouse ${warehouse}, reserved ${held}`
      })
    }
  }

  const stock = yield* Stock
  const now = yield* nowDate
  const movements: Array<Movement> = []
  const reservedItems = [...reserved.entries()].map(([k, quantity]) => {
    const [variant_id, warehouse_id] = k.split("\u0000") as [string, string]
    return { variant_id, warehouse_id, quantity }
  })
  for (const item of sortedItems(org, reservedItems)) {
    const k = key(item.variant_id, item.warehouse_id)
    const out = shipped.get(k) ?? 0
    const rest = item.quantity - out
    if (out > 0) {
      const change = yield* stock.ship(keyOf(org, item), out)
      movements.push({
        movement_id: deriveId(org, "movement", eventId, item.variant_id, item.warehouse_id),
        organization_id: org,
        variant_id: item.variant_id,
        warehouse_id: item.warehouse_id,
        movement_type: "out",
        quantity_change: -out,
        quantity_before: change.before.total,
        quantity_after: change.after.total,
        category: "available",
        reason: "order_shipment",
        reference_type: "order",
        reference_id: data.order_id,
        notes: `Shipped via ${data.shipment_id}`,
        caused_by: eventId,
        created_at: now
      })
    }
    if (rest > 0) yield* stock.release(keyOf(org, item), rest)
  }
  yield* (yield* Movements).append(movements)
  yield* reservations.transition(org, reservation.reservation_id, liveStatuses, "fulfilled", `shipped:${data.shipment_id}`)
  yield* cancelTimerAfterCommit(reservation)
  yield* emit(cause, `order/${data.order_id}`, movements.map((m) => ({
    event: "inventory.movement.out" as const,
    data: {
      movement_id: m.movement_id,
      variant_id: m.variant_id,
      warehouse_id: m.warehouse_id,
      quantity: -m.quantity_change,
      reason: "order_shipment",
      order_id: data.order_id,
      reference_id: data.shipment_id
    }
  })))
}, spanned("order.shipped"))
