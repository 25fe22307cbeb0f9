import { Schema } from "effect"
import { Id, StockLevel, Text, Timestamp } from "./primitives.ts"

/**
 * The events this service publishes to `inventory_events` (routing key = event name). Each
 * carries its own `event_id` and the `causation_id` of the inbound event (or reservation
 * expiry) that caused it (SPEC 6).
 */

const envelope = {
  version: Schema.Literal("1.0"),
  timestamp: Timestamp,
  organization_id: Id,
  event_id: Schema.String,
  causation_id: Schema.String
}

const Count = StockLevel

export const StockInitialized = Schema.Struct({
  event: Schema.Literal("inventory.stock.initialized"),
  ...envelope,
  data: Schema.Struct({ variant_id: Id, warehouses_count: Count, stock_records_created: Count })
})

export const StockArchived = Schema.Struct({
  event: Schema.Literal("inventory.stock.archived"),
  ...envelope,
  data: Schema.Struct({ variant_id: Id, records_archived: Count })
})

export const ReservationFailed = Schema.Struct({
  event: Schema.Literal("inventory.reservation.failed"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    variant_id: Id,
    requested: Count,
    available: Count,
    reason: Schema.Literal("insufficient_stock")
  })
})

export const ReservedItem = Schema.Struct({ variant_id: Id, warehouse_id: Id, quantity: Count })

export const StockReserved = Schema.Struct({
  event: Schema.Literal("inventory.stock.reserved"),
  ...envelope,
  data: Schema.Struct({
    reservation_id: Id,
    order_id: Id,
    items: Schema.Array(ReservedItem),
    expires_at: Schema.NullOr(Timestamp)
  })
})

export const StockReleased = Schema.Struct({
  event: Schema.Literal("inventory.stock.released"),
  ...envelope,
  data: Schema.Struct({
    reservation_id: Id,
    order_id: Id,
    reason: Text,
    items_released: Count,
    items: Schema.Array(ReservedItem)
  })
})

export const MovementOut = Schema.Struct({
  event: Schema.Literal("inventory.movement.out"),
  ...envelope,
  data: Schema.Struct({
    movement_id: Id,
    variant_id: Id,
    warehouse_id: Id,
    quantity: Count,
    reason: Text,
    order_id: Schema.NullOr(Id),
    reference_id: Schema.NullOr(Text)
  })
})

export const MovementIn = Schema.Struct({
  event: Schema.Literal("inventory.movement.in"),
  ...envelope,
  data: Schema.Struct({
    movement_id: Id,
    variant_id: Id,
    warehouse_id: Id,
    quantity: Count,
    reason: Text,
    category: Schema.Literals(["available", "damaged"]),
    reference_id: Schema.NullOr(Text)
  })
})

export const OutboundEvent = Schema.Union([
  StockInitialized,
  StockArchived,
  ReservationFailed,
  StockReserved,
  StockReleased,
  MovementOut,
  MovementIn
])
export type OutboundEvent = typeof OutboundEvent.Type
export type OutboundEventType = OutboundEvent["event"]

/** What a handler hands to the outbox: the event without its envelope bookkeeping. */
export type OutboundDraft = {
  [T in OutboundEvent as T["event"]]: { readonly event: T["event"]; readonly data: T["data"] }
}[OutboundEventType]
