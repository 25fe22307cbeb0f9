import { Effect } from "effect"
import type { InboundEvent } from "../domain/events.ts"
import type { InventoryError } from "../domain/errors.ts"
import type { ReservationTimers, Stores } from "../stores/services.ts"
import { productDeleted, variantCreated, variantDeleted, variantUpdated } from "./catalog.ts"
import { orderCancelled } from "./orders/cancelled.ts"
import { orderConfirmed } from "./orders/confirmed.ts"
import { orderPlaced, reservationFailed } from "./orders/placed.ts"
import { orderShipped } from "./orders/shipped.ts"
import { returnReceived } from "./returns.ts"

/** Runs the handler of the event's type. Exhaustive: a new event type without a handler does not compile. */
export const handleEvent = (
  event: InboundEvent,
  eventId: string
): Effect.Effect<void, InventoryError, Stores | ReservationTimers> => {
  switch (event.event) {
    case "catalog.variant.created":
      return variantCreated(event, eventId)
    case "catalog.variant.updated":
      return variantUpdated(event, eventId)
    case "catalog.variant.deleted":
      return variantDeleted(event, eventId)
    case "catalog.product.deleted":
      return productDeleted(event, eventId)
    case "order.placed":
      return orderPlaced(event, eventId)
    case "order.confirmed":
      return orderConfirmed(event, eventId)
    case "order.cancelled":
      return orderCancelled(event, eventId)
    case "order.shipped":
      return orderShipped(event, eventId)
    case "return.received":
      return returnReceived(event, eventId)
  }
}

/**
 * What must still be written after an event's unit of work rolled back. Only one case so far:
 * an `order.placed` refused for stock still tells the order service so (SPEC 4).
 */
export const afterRollback = (event: InboundEvent, eventId: string, error: InventoryError) =>
  event.event === "order.placed" && error._tag === "InsufficientStock"
    ? reservationFailed(event, eventId, error)
    : Effect.void
