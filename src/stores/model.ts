import type { OutboundEvent } from "../domain/published.ts"

/** Rows as every store implementation returns them. Quantities are whole numbers. */

export interface StockKey {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
}

export interface StockRow extends StockKey {
  readonly total: number
  readonly available: number
  readonly reserved: number
  readonly damaged: number
  readonly in_transit: number
  readonly min_stock: number
  readonly max_stock: number
  readonly stock_strategy: "FIFO"
  readonly archived_at: Date | null
}

export type StockCategory = "available" | "damaged"

/** Orders stock rows by primary key: the one order in which row locks are taken (SPEC 3). */
export const compareStockKeys = (a: StockKey, b: StockKey): number =>
  a.organization_id < b.organization_id ? -1 : a.organization_id > b.organization_id ? 1 :
  a.variant_id < b.variant_id ? -1 : a.variant_id > b.variant_id ? 1 :
  a.warehouse_id < b.warehouse_id ? -1 : a.warehouse_id > b.warehouse_id ? 1 : 0

export const stockKeyString = (k: StockKey): string => `${k.organization_id}\u0000${k.variant_id}\u0000${k.warehouse_id}`

export interface Warehouse {
  readonly organization_id: string
  readonly warehouse_id: string
  readonly name: string
  readonly active: boolean
}

export interface Variant {
  readonly organization_id: string
  readonly variant_id: string
  readonly product_id: string | null
  readonly sku: string | null
  readonly tracked: boolean
  readonly deleted_at: Date | null
}

export type ReservationStatus = "active" | "confirmed" | "cancelled" | "expired" | "fulfilled"
export const liveStatuses: ReadonlyArray<ReservationStatus> = ["active", "confirmed"]

export interface ReservationItem {
  readonly variant_id: string
  readonly warehouse_id: string
  readonly quantity: number
}

export interface Reservation {
  readonly organization_id: string
  readonly reservation_id: string
  readonly order_id: string
  readonly status: ReservationStatus
  readonly items: ReadonlyArray<ReservationItem>
  readonly expires_at: Date | null
  readonly created_at: Date
  /** The inbound event that created it: the causation of what its expiry publishes. */
  readonly caused_by: string
  /** Why it left `active`/`confirmed`, when it did. */
  readonly closed_reason: string | null
}

export interface Movement {
  readonly movement_id: string
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  readonly movement_type: "in" | "out"
  /** Signed change of `total`: the movements of a row sum to its total (I8). */
  readonly quantity_change: number
  readonly quantity_before: number
  readonly quantity_after: number
  readonly category: StockCategory
  readonly reason: string
  readonly reference_type: string | null
  readonly reference_id: string | null
  readonly notes: string | null
  readonly caused_by: string
  readonly created_at: Date
}

export interface OutboxMessage {
  readonly event_id: string
  readonly organization_id: string
  readonly event_type: OutboundEvent["event"]
  /** Messages of one aggregate are published in the order they were written. */
  readonly aggregate_key: string
  readonly payload: OutboundEvent
  /** W3C traceparent of the work that wrote it, so the published message joins that trace. */
  readonly traceparent: string | null
  readonly created_at: Date
}

export interface PendingOutboxMessage extends OutboxMessage {
  /** Store-assigned position: publish order within an aggregate. */
  readonly position: number
}

export interface EventLogEntry {
  readonly organization_id: string
  readonly event_id: string
  readonly event_type: string
  readonly processed_at: Date
}

/** A dead-lettered message, kept after the DLQ's TTL and length cap would drop it. */
export interface FailedEvent {
  readonly id: string
  readonly event_id: string | null
  readonly event_type: string | null
  readonly organization_id: string | null
  readonly error_type: string
  readonly error_message: string
  /** The message body, cut at `DLQ_BODY_MAX_BYTES`; `body_length` and `body_sha256` describe the original. */
  readonly body: Uint8Array
  /** SHA-256 (hex) of the original body, whole. */
  readonly body_sha256: string
  /** Length in bytes of the original body; more than `body.length` when the stored body was cut. */
  readonly body_length: number
  readonly content_type: string | null
  readonly original_exchange: string
  readonly original_routing_key: string
  readonly attempts: number
  readonly failed_at: Date
  readonly replay_count: number
  readonly last_replayed_at: Date | null
  /** When its copy was confirmed on the DLQ; null while it is recorded but not copied yet. */
  readonly dlq_copied_at: Date | null
  /**
   * The message's own AMQP headers with a plain value (`traceparent`, the publisher's own), so a
   * replay carries them again; the broker's and the replay's bookkeeping are left out.
   */
  readonly headers: Readonly<Record<string, string | number | boolean>>
}

export interface ReservationSchedule {
  readonly organization_id: string
  readonly reservation_id: string
  readonly expires_at: Date
}
