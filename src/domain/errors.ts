import { Schema } from "effect"

/**
 * Every failure a handler can name (SPEC 5). Each one's fate (retry or dead-letter) is decided
 * once, by tag, in `fates.ts`.
 */

/** The message is not a well-formed event this queue accepts; retrying cannot help. */
export class ValidationError extends Schema.TaggedError<ValidationError>()("ValidationError", {
  message: Schema.String
}) {}

/** `order.placed` (or a re-reservation) asked for more than any active warehouse has. */
export class InsufficientStock extends Schema.TaggedError<InsufficientStock>()("InsufficientStock", {
  organization_id: Schema.String,
  order_id: Schema.String,
  variant_id: Schema.String,
  requested: Schema.Number,
  available: Schema.Number
}) {
  override get message() {
    return `Insufficient stock for variant ${this.variant_id} (order ${this.order_id}): requested ${this.requested}, available ${this.available}`
  }
}

export const WarehouseWithStock = Schema.Struct({
  variant_id: Schema.String,
  warehouse_id: Schema.String,
  warehouse_name: Schema.NullOr(Schema.String),
  total_quantity: Schema.Number,
  available: Schema.Number,
  reserved: Schema.Number
})
export type WarehouseWithStock = typeof WarehouseWithStock.Type

/** A variant cannot be deleted or untracked while any warehouse still holds it. */
export class StockNotZero extends Schema.TaggedError<StockNotZero>()("StockNotZero", {
  variant_id: Schema.String,
  warehouses_with_stock: Schema.Array(WarehouseWithStock),
  action_required: Schema.String
}) {
  override get message() {
    const where = this.warehouses_with_stock.map((w) => `${w.variant_id}@${w.warehouse_id}=${w.total_quantity}`)
    return `Cannot delete variant with existing stock: ${where.join(", ")}`
  }
}

/** A record the event would create exists already with conflicting identity. */
export class DuplicateRecord extends Schema.TaggedError<DuplicateRecord>()("DuplicateRecord", {
  message: Schema.String
}) {}

/** No reservation matches the order yet: its `order.placed` may still be on its way. */
export class ReservationNotFound extends Schema.TaggedError<ReservationNotFound>()("ReservationNotFound", {
  organization_id: Schema.String,
  order_id: Schema.String,
  reservation_id: Schema.NullOr(Schema.String)
}) {
  override get message() {
    return `No reservation for order ${this.order_id}${this.reservation_id ? ` (reservation ${this.reservation_id})` : ""}`
  }
}

/** The store failed for a reason that may pass: connection, timeout, deadlock, serialization. */
export class DatabaseError extends Schema.TaggedError<DatabaseError>()("DatabaseError", {
  reason: Schema.Literals(["connection", "timeout", "deadlock", "serialization", "conflict", "unknown"]),
  message: Schema.String
}) {}

/** Every error a handler may fail with. */
export type InventoryError =
  | ValidationError
  | InsufficientStock
  | StockNotZero
  | DuplicateRecord
  | ReservationNotFound
  | DatabaseError

export type InventoryErrorTag = InventoryError["_tag"]
