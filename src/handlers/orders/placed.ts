import { Effect } from "effect"
import { spanned } from "../../observability/spans.ts"
import { sumByVariant } from "../../domain/allocation.ts"
import type { InsufficientStock } from "../../domain/errors.ts"
import type { OrderPlaced } from "../../domain/events.ts"
import { Reservations } from "../../stores/services.ts"
import { emit, nowDate } from "../outbound.ts"
import { createReservation, expiresAfter, failedDraft } from "./lifecycle.ts"

export const orderPlaced = Effect.fnUntraced(function*(event: OrderPlaced, eventId: string) {
  const org = event.organization_id
  const { data } = event
  yield* (yield* Reservations).lockOrder(org, data.order_id)
  const existing = yield* (yield* Reservations).findByOrder(org, data.order_id)
  if (existing.length > 0) {
    // A re-sent order, or one cancelled before it was placed: reserve nothing more.
    yield* Effect.logWarning("order already has a reservation; nothing reserved").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_status: existing[0]!.status })
    )
    return
  }
  const expiresAt = expiresAfter(yield* nowDate, data.reservation_ttl_minutes)
  yield* createReservation({ organization_id: org, event_id: eventId }, data.order_id, sumByVariant(data.items), "active", expiresAt)
}, spanned("order.placed"))

/**
 * What `order.placed` leaves behind when it fails for lack of stock: the reservation rolled
 * back, but the order service must still hear `inventory.reservation.failed` (SPEC 4). Runs in
 * its own unit of work, after the failed one.
 */
export const reservationFailed = Effect.fnUntraced(function*(
  event: OrderPlaced,
  eventId: string,
  error: InsufficientStock
) {
  yield* emit({ organization_id: event.organization_id, event_id: eventId }, `order/${event.data.order_id}`, [failedDraft(event.data.order_id, error)])
}, spanned("order.placed.failed"))
