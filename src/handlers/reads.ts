import type { InboundEvent } from "../domain/events.ts"
import type { EventLogEntry } from "../stores/model.ts"
import type { OrderRef, ReservationRef, VariantRef, WorkingSetDemand } from "../stores/services.ts"

/** What one event's handler may read, beyond its own event-log entry and its organization's warehouses. */
interface Reads {
  readonly orders: ReadonlyArray<OrderRef>
  readonly reservations: ReadonlyArray<ReservationRef>
  readonly variants: ReadonlyArray<VariantRef>
  readonly catalog: ReadonlyArray<VariantRef>
}

const none: Reads = { orders: [], reservations: [], variants: [], catalog: [] }

/**
 * The rows each handler may read, by event type: kept beside the handlers, since a handler that
 * reads something new must say so here (a group that misses a row falls back to one event at a
 * time, see `stores/memory/staged.ts`). Exhaustive: a new event type does not compile without it.
 * The stock rows of the variants an order's reservations hold are added on loading.
 */
export const readsOf = (event: InboundEvent): Reads => {
  const org = event.organization_id
  const variant = (variant_id: string): VariantRef => ({ organization_id: org, variant_id })
  const order = (order_id: string): OrderRef => ({ organization_id: org, order_id })
  const reservation = (id: string | null | undefined): ReadonlyArray<ReservationRef> =>
    id ? [{ organization_id: org, reservation_id: id }] : []
  switch (event.event) {
    case "catalog.variant.created":
    case "catalog.variant.updated":
    case "catalog.variant.deleted":
      return { ...none, variants: [variant(event.data.variant_id)], catalog: [variant(event.data.variant_id)] }
    case "catalog.product.deleted":
      return { ...none, variants: event.data.variant_ids.map(variant), catalog: event.data.variant_ids.map(variant) }
    case "order.placed":
      return { ...none, orders: [order(event.data.order_id)], variants: event.data.items.map((i) => variant(i.variant_id)) }
    case "order.confirmed":
    case "order.cancelled":
      return { ...none, orders: [order(event.data.order_id)], reservations: reservation(event.data.reservation_id) }
    case "order.shipped":
      return {
        ...none,
        orders: [order(event.data.order_id)],
        reservations: reservation(event.data.reservation_id),
        variants: event.data.shipped_items.map((i) => variant(i.variant_id))
      }
    case "return.received":
      return { ...none, variants: event.data.returned_items.map((i) => variant(i.variant_id)) }
  }
}

/** What a group of events may read, and the event-log entries it records on loading. */
export const demandOf = (events: ReadonlyArray<{ readonly event: InboundEvent; readonly eventId: string }>, now: Date): WorkingSetDemand => {
  const reads = events.map((e) => readsOf(e.event))
  return {
    events: events.map((e): EventLogEntry => ({
      organization_id: e.event.organization_id,
      event_id: e.eventId,
      event_type: e.event.event,
      processed_at: now
    })),
    organizations: [...new Set(events.map((e) => e.event.organization_id))],
    orders: reads.flatMap((r) => r.orders),
    reservations: reads.flatMap((r) => r.reservations),
    variants: reads.flatMap((r) => r.variants),
    catalog: reads.flatMap((r) => r.catalog)
  }
}
