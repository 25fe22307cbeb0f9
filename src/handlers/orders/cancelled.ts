import { Effect, Option } from "effect"
import { spanned } from "../../observability/spans.ts"
import type { OrderCancelled } from "../../domain/events.ts"
import { deriveId } from "../../domain/ids.ts"
import { Reservations } from "../../stores/services.ts"
import { nowDate } from "../outbound.ts"
import { cancelTimerAfterCommit, findReservation, releaseReservation } from "./lifecycle.ts"

export const orderCancelled = Effect.fnUntraced(function*(event: OrderCancelled, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  const reason = data.cancellation_reason ?? "cancelled"
  if (Option.isNone(found)) {
    // Cancelled before it was placed: leave a tombstone so a late `order.placed` reserves nothing.
    yield* reservations.insert({
      organization_id: org,
      reservation_id: deriveId(org, "reservation", eventId),
      order_id: data.order_id,
      status: "cancelled",
      items: [],
      expires_at: null,
      created_at: yield* nowDate,
      caused_by: eventId,
      closed_reason: `cancelled_before_placed: ${reason}`
    })
    yield* Effect.logWarning("reservation not found for cancelled order; may be already released").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_id: data.reservation_id ?? null })
    )
    return
  }
  const released = yield* releaseReservation(found.value, "cancelled", reason, { organization_id: org, event_id: eventId })
  if (released) yield* cancelTimerAfterCommit(found.value)
  else {
    yield* Effect.logWarning("reservation already released; nothing changed").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_id: found.value.reservation_id, status: found.value.status })
    )
  }
}, spanned("order.cancelled"))
