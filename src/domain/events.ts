import { Schema } from "effect"
import { Id, Quantity, StockLevel, Text, Timestamp, Version } from "./primitives.ts"

/**
 * The events this service consumes (SPEC 2): one envelope, and one tagged union of the nine
 * event types on the field `event`. Unknown extra fields are ignored when decoding.
 */

const envelope = {
  version: Version,
  timestamp: Timestamp,
  organization_id: Id,
  event_id: Schema.optionalKey(Id)
}

const item = <Fields extends Schema.Struct.Fields>(fields: Fields) => Schema.Struct(fields)

/** Most lines one order or shipment may carry; bounds what one message can cost. */
export const MAX_LINES_PER_EVENT = 500

const lines = <S extends Schema.Top>(schema: S) =>
  Schema.Array(schema).pipe(
    Schema.check(Schema.isMinLength(1, { message: "must list at least one item" })),
    Schema.check(Schema.isMaxLength(MAX_LINES_PER_EVENT, { message: `must list at most ${MAX_LINES_PER_EVENT} items` }))
  )

export const VariantCreated = Schema.Struct({
  event: Schema.Literal("catalog.variant.created"),
  ...envelope,
  data: Schema.Struct({
    variant_id: Id,
    product_id: Id,
    sku: Schema.optionalKey(Text),
    track_inventory: Schema.optionalKey(Schema.Boolean),
    default_min_stock: Schema.optionalKey(StockLevel),
    default_max_stock: Schema.optionalKey(StockLevel)
  })
})
export type VariantCreated = typeof VariantCreated.Type

const Change = <S extends Schema.Top>(schema: S) => Schema.Struct({ old: Schema.NullOr(schema), new: schema })

export const VariantUpdated = Schema.Struct({
  event: Schema.Literal("catalog.variant.updated"),
  ...envelope,
  data: Schema.Struct({
    variant_id: Id,
    product_id: Schema.optionalKey(Id),
    changes: Schema.Struct({
      sku: Schema.optionalKey(Change(Text)),
      track_inventory: Schema.optionalKey(Change(Schema.Boolean))
    }),
    default_min_stock: Schema.optionalKey(StockLevel),
    default_max_stock: Schema.optionalKey(StockLevel)
  })
})
export type VariantUpdated = typeof VariantUpdated.Type

export const VariantDeleted = Schema.Struct({
  event: Schema.Literal("catalog.variant.deleted"),
  ...envelope,
  data: Schema.Struct({
    variant_id: Id,
    product_id: Schema.optionalKey(Id),
    deletion_type: Schema.optionalKey(Text),
    deleted_by: Schema.optionalKey(Text)
  })
})
export type VariantDeleted = typeof VariantDeleted.Type

export const ProductDeleted = Schema.Struct({
  event: Schema.Literal("catalog.product.deleted"),
  ...envelope,
  data: Schema.Struct({
    product_id: Id,
    variant_ids: lines(Id),
    deleted_by: Schema.optionalKey(Text)
  })
})
export type ProductDeleted = typeof ProductDeleted.Type

export const OrderPlaced = Schema.Struct({
  event: Schema.Literal("order.placed"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    customer_id: Schema.optionalKey(Id),
    local_id: Schema.optionalKey(Id),
    items: lines(item({
      variant_id: Id,
      quantity: Quantity,
      preferred_warehouse_id: Schema.optionalKey(Schema.NullOr(Id))
    })),
    reservation_ttl_minutes: Schema.optionalKey(
      Schema.Number.pipe(
        Schema.check(Schema.isGreaterThan(0, { message: "must be greater than 0" })),
        Schema.check(Schema.isLessThanOrEqualTo(10080, { message: "must be at most 10080 (one week)" }))
      )
    )
  })
})
export type OrderPlaced = typeof OrderPlaced.Type

export const OrderConfirmed = Schema.Struct({
  event: Schema.Literal("order.confirmed"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    reservation_id: Schema.optionalKey(Schema.NullOr(Id)),
    payment_confirmed: Schema.optionalKey(Schema.Boolean)
  })
})
export type OrderConfirmed = typeof OrderConfirmed.Type

export const OrderCancelled = Schema.Struct({
  event: Schema.Literal("order.cancelled"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    reservation_id: Schema.optionalKey(Schema.NullOr(Id)),
    cancellation_reason: Schema.optionalKey(Text),
    cancelled_by: Schema.optionalKey(Text)
  })
})
export type OrderCancelled = typeof OrderCancelled.Type

export const OrderShipped = Schema.Struct({
  event: Schema.Literal("order.shipped"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    reservation_id: Schema.optionalKey(Schema.NullOr(Id)),
    shipment_id: Id,
    shipped_items: lines(item({
      variant_id: Id,
      quantity: Quantity,
      warehouse_id: Id
    }))
  })
})
export type OrderShipped = typeof OrderShipped.Type

export const ReturnReceived = Schema.Struct({
  event: Schema.Literal("return.received"),
  ...envelope,
  data: Schema.Struct({
    order_id: Id,
    return_id: Id,
    rma_number: Schema.optionalKey(Text),
    warehouse_id: Schema.optionalKey(Id),
    returned_items: lines(item({
      variant_id: Id,
      quantity: Quantity,
      condition: Text,
      return_reason: Schema.optionalKey(Text),
      warehouse_id: Schema.optionalKey(Id)
    })),
    received_at: Schema.optionalKey(Timestamp)
  })
})
export type ReturnReceived = typeof ReturnReceived.Type

export const CatalogEvent = Schema.Union([VariantCreated, VariantUpdated, VariantDeleted, ProductDeleted])
export type CatalogEvent = typeof CatalogEvent.Type

export const OrderEvent = Schema.Union([OrderPlaced, OrderConfirmed, OrderCancelled, OrderShipped, ReturnReceived])
export type OrderEvent = typeof OrderEvent.Type

/** Every consumed event, discriminated by `event`. */
export const InboundEvent = Schema.Union([
  VariantCreated,
  VariantUpdated,
  VariantDeleted,
  ProductDeleted,
  OrderPlaced,
  OrderConfirmed,
  OrderCancelled,
  OrderShipped,
  ReturnReceived
])
export type InboundEvent = typeof InboundEvent.Type
export type InboundEventType = InboundEvent["event"]

export const catalogEventTypes = [
  "catalog.variant.created",
  "catalog.variant.updated",
  "catalog.variant.deleted",
  "catalog.product.deleted"
] as const satisfies ReadonlyArray<CatalogEvent["event"]>

export const orderEventTypes = [
  "order.placed",
  "order.confirmed",
  "order.cancelled",
  "order.shipped",
  "return.received"
] as const satisfies ReadonlyArray<OrderEvent["event"]>

export const inboundEventTypes: ReadonlyArray<InboundEventType> = [...catalogEventTypes, ...orderEventTypes]

/** The service that emits an event type, as the consumed-events metric labels it. */
export const sourceService = (type: InboundEventType): "catalog" | "orders" =>
  type.startsWith("catalog.") ? "catalog" : "orders"

/**
 * The key whose events must be applied in the order they arrive: the order for order events,
 * the variant or product for catalog events (SPEC 1, issue 4).
 */
export const orderingKey = (event: InboundEvent): string => {
  switch (event.event) {
    case "catalog.variant.created":
    case "catalog.variant.updated":
    case "catalog.variant.deleted":
      return `${event.organization_id}/variant/${event.data.variant_id}`
    case "catalog.product.deleted":
      return `${event.organization_id}/product/${event.data.product_id}`
    case "order.placed":
    case "order.confirmed":
    case "order.cancelled":
    case "order.shipped":
    case "return.received":
      return `${event.organization_id}/order/${event.data.order_id}`
  }
}
