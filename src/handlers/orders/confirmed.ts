import { Effect, Option } from "effect"
import { spanned } from "../../observability/spans.ts"
import { sumByVariant } from "../../domain/allocation.ts"
import { ReservationNotFound } from "../../domain/errors.ts"
import type { OrderConfirmed } from "../../domain/events.ts"
import { Reservations } from "../../stores/services.ts"
import { cancelTimerAfterCommit, createReservation, findReservation } from "./lifecycle.ts"

export const orderConfirmed = Effect.fnUntraced(function*(event: OrderConfirmed, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  if (Option.isNone(found)) {
    return yield* new ReservationNotFound({ organization_id: org, order_id: data.order_id, reservation_id: data.reservation_id ?? null })
  }
  const reservation = found.value
  switch (reservation.status) {
    case "active": {
      yield* reservations.transition(org, reservation.reservation_id, ["active"], "confirmed", null)
      yield* cancelTimerAfterCommit(reservation)
      return
    }
    case "expired": {
      // Payment arrived after the hold lapsed: hold the same goods again if stock allows.
      yield* createReservation(
        { organization_id: org, event_id: eventId },
        data.order_id,
        sumByVariant(reservation.items.map((i) => ({ ...i, preferred_warehouse_id: i.warehouse_id }))),
        "confirmed",
        null
      )
      return
    }
    case "confirmed":
    case "fulfilled":
    case "cancelled": {
      yield* Effect.logWarning("order.confirmed for a reservation that is not active; nothing changed").pipe(
        Effect.annotateLogs({ order_id: data.order_id, reservation_id: reservation.reservation_id, status: reservation.status })
      )
      return
    }
  }
}, spanned("order.confirmed"))
