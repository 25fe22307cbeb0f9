import { Effect, Option } from "effect"
import { spanned } from "../observability/spans.ts"
import { deriveId } from "../domain/ids.ts"
import type { Reservation } from "../stores/model.ts"
import { Reservations, Stock } from "../stores/services.ts"
import { nowDate } from "./outbound.ts"
import { releaseReservation } from "./orders/lifecycle.ts"

/** The expiry of one reservation, caused by the reservation rather than by an inbound event. */
const expire = (reservation: Reservation) =>
  releaseReservation(reservation, "expired", "expired", {
    organization_id: reservation.organization_id,
    event_id: deriveId(reservation.organization_id, "expired", reservation.reservation_id)
  })

/**
 * Releases a reservation whose hold lapsed (SPEC 4): only if it is still `active` and past
 * `expires_at`. The row lock and the conditional transition make it happen once, however many
 * timers or processes fire for it. Returns whether this call expired it.
 */
export const expireReservation = Effect.fnUntraced(function*(organizationId: string, reservationId: string) {
  const found = yield* (yield* Reservations).lockById(organizationId, reservationId)
  if (Option.isNone(found)) return false
  const reservation = found.value
  const now = yield* nowDate
  if (reservation.status !== "active" || reservation.expires_at === null || reservation.expires_at > now) return false
  return yield* expire(reservation)
}, spanned("reservation.expire"))

/**
 * Expires up to `limit` overdue reservations that no other process holds: what a dead
 * replica's timers would have done. Returns how many it expired.
 */
export const expireOverdue = Effect.fnUntraced(function*(limit: number) {
  const due = yield* (yield* Reservations).lockDue(yield* nowDate, limit)
  // Lock every stock row the batch will touch up front, in key order, as every other unit of
  // work does: releasing reservation by reservation would take them out of order.
  const variantsByOrg = new Map<string, Set<string>>()
  for (const r of due) {
    const set = variantsByOrg.get(r.organization_id) ?? new Set<string>()
    for (const item of r.items) set.add(item.variant_id)
    variantsByOrg.set(r.organization_id, set)
  }
  const stock = yield* Stock
  for (const org of [...variantsByOrg.keys()].sort()) {
    yield* stock.forVariants(org, [...variantsByOrg.get(org)!].sort(), { lock: true })
  }
  let expired = 0
  for (const reservation of due) {
    if (yield* expire(reservation)) expired++
  }
  return expired
}, spanned("reservation.expire_overdue"))
