import { Effect, Option } from "effect"
import { spanned } from "../observability/spans.ts"
import { deriveId } from "../domain/ids.ts"
import type { Reservation } from "../stores/model.ts"
import { type ReservationRef, Reservations, Stock } from "../stores/services.ts"
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
 * Releases reservations this unit of work has locked: every stock row they touch is locked first,
 * up front and in key order, as every other unit of work does (releasing reservation by
 * reservation would take them out of order). Returns the ones it expired.
 */
const expireLocked = Effect.fnUntraced(function*(due: ReadonlyArray<Reservation>) {
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
  const expired: Array<Reservation> = []
  for (const reservation of due) {
    if (yield* expire(reservation)) expired.push(reservation)
  }
  return expired
})

/**
 * Expires up to `limit` overdue reservations that no other process holds: what a dead
 * replica's timers would have done. Returns how many it expired.
 */
export const expireOverdue = Effect.fnUntraced(function*(limit: number) {
  const due = yield* (yield* Reservations).lockDue(yield* nowDate, limit)
  return (yield* expireLocked(due)).length
}, spanned("reservation.expire_overdue"))

/**
 * The timers' expiry: of `refs`, releases in one unit of work those still active and past due
 * that no other transaction holds, without waiting for any. Returns the ones it expired and the
 * ones it found held (`busy`: another replica expiring them, a group working on the order), for
 * the timer to try again; the rest were expired, confirmed or cancelled already.
 */
export const expireDue = Effect.fnUntraced(function*(refs: ReadonlyArray<ReservationRef>) {
  const { busy, claimed } = yield* (yield* Reservations).lockDueAmong(refs, yield* nowDate)
  return { expired: yield* expireLocked(claimed), busy }
}, spanned("reservation.expire_due"))
