import { Duration, Effect, Option } from "effect"
import { allocate, type Demand } from "../../domain/allocation.ts"
import { InsufficientStock } from "../../domain/errors.ts"
import { deriveId } from "../../domain/ids.ts"
import type { OutboundDraft } from "../../domain/published.ts"
import {
  compareStockKeys,
  liveStatuses,
  type Reservation,
  type ReservationItem,
  type ReservationStatus,
  type StockKey
} from "../../stores/model.ts"
import { Reservations, ReservationTimers, Stock, UnitOfWork } from "../../stores/services.ts"
import { type Causation, emit, nowDate } from "../outbound.ts"

/**
 * What every order event shares: a reservation's life from reserve to release, its timer, and
 * what it announces. Each event's own rules live beside this file, one module per event.
 */

export const DEFAULT_RESERVATION_TTL_MINUTES = 15

/** When a hold placed at `now` lapses. */
export const expiresAfter = (now: Date, ttlMinutes: number | null | undefined): Date =>
  new Date(now.getTime() + Duration.toMillis(Duration.minutes(ttlMinutes ?? DEFAULT_RESERVATION_TTL_MINUTES)))

export const keyOf = (organizationId: string, item: ReservationItem): StockKey => ({
  organization_id: organizationId,
  variant_id: item.variant_id,
  warehouse_id: item.warehouse_id
})

/** Items in stock-key order: the one order in which every unit of work locks rows. */
export const sortedItems = (organizationId: string, items: ReadonlyArray<ReservationItem>) =>
  [...items].sort((a, b) => compareStockKeys(keyOf(organizationId, a), keyOf(organizationId, b)))

/**
 * Reserves every demand, all or nothing. Rows are locked in key order, and each decrement is
 * conditional, so racing consumers can never both take the last unit.
 */
const reserveDemands = Effect.fnUntraced(function*(
  organizationId: string,
  orderId: string,
  demands: ReadonlyArray<Demand>
) {
  const stock = yield* Stock
  const rows = yield* stock.candidates(organizationId, demands.map((d) => d.variant_id))
  const items = yield* Effect.fromResult(allocate(organizationId, orderId, demands, rows))
  for (const item of sortedItems(organizationId, items)) {
    const reserved = yield* stock.reserve(keyOf(organizationId, item), item.quantity)
    if (Option.isNone(reserved)) {
      const row = rows.find((r) => r.variant_id === item.variant_id && r.warehouse_id === item.warehouse_id)
      return yield* new InsufficientStock({
        organization_id: organizationId,
        order_id: orderId,
        variant_id: item.variant_id,
        requested: item.quantity,
        available: row?.available ?? 0
      })
    }
  }
  return items
})

/** Gives a reservation's items back to available and moves it out of the live states, once (I5). */
export const releaseReservation = Effect.fnUntraced(function*(
  reservation: Reservation,
  to: Extract<ReservationStatus, "cancelled" | "expired">,
  reason: string,
  cause: Causation
) {
  const moved = yield* (yield* Reservations).transition(
    reservation.organization_id,
    reservation.reservation_id,
    liveStatuses,
    to,
    reason
  )
  if (!moved) return false
  const stock = yield* Stock
  for (const item of sortedItems(reservation.organization_id, reservation.items)) {
    yield* stock.release(keyOf(reservation.organization_id, item), item.quantity)
  }
  yield* emit(cause, `order/${reservation.order_id}`, [{
    event: "inventory.stock.released",
    data: {
      reservation_id: reservation.reservation_id,
      order_id: reservation.order_id,
      reason,
      items_released: reservation.items.length,
      items: reservation.items
    }
  }])
  return true
})

/** An active reservation: one that holds stock until a deadline. */
export type ActiveReservation = Reservation & { readonly expires_at: Date }

/** Starts the TTL timers of new active reservations once their unit of work commits, never before. */
export const scheduleTimersAfterCommit = Effect.fnUntraced(function*(created: ReadonlyArray<ActiveReservation>) {
  const timers = yield* ReservationTimers
  const uow = yield* UnitOfWork
  for (const r of created) {
    yield* uow.afterCommit(timers.schedule({ organization_id: r.organization_id, reservation_id: r.reservation_id, expires_at: r.expires_at }))
  }
})

export const cancelTimerAfterCommit = Effect.fnUntraced(function*(reservation: Reservation) {
  const timers = yield* ReservationTimers
  yield* (yield* UnitOfWork).afterCommit(timers.cancel(reservation.organization_id, reservation.reservation_id))
})

/**
 * The reservation an order event refers to: by `reservation_id` when it names one of this
 * order's, else the order's live reservation, else its newest.
 */
export const findReservation = Effect.fnUntraced(function*(
  organizationId: string,
  orderId: string,
  reservationId: string | null | undefined
) {
  const reservations = yield* Reservations
  if (reservationId) {
    const byId = yield* reservations.findById(organizationId, reservationId)
    if (Option.isSome(byId) && byId.value.order_id === orderId) return byId
  }
  const all = yield* reservations.findByOrder(organizationId, orderId)
  return Option.fromNullishOr(all.find((r) => liveStatuses.includes(r.status)) ?? all[0])
})

export const reservedDraft = (reservation: Reservation): OutboundDraft => ({
  event: "inventory.stock.reserved",
  data: {
    reservation_id: reservation.reservation_id,
    order_id: reservation.order_id,
    items: reservation.items,
    expires_at: reservation.expires_at === null ? null : reservation.expires_at.toISOString()
  }
})

export const failedDraft = (orderId: string, error: InsufficientStock): OutboundDraft => ({
  event: "inventory.reservation.failed",
  data: {
    order_id: orderId,
    variant_id: error.variant_id,
    requested: error.requested,
    available: error.available,
    reason: "insufficient_stock"
  }
})

/** Writes a new reservation for the order, reserves its stock and announces it. */
export const createReservation = Effect.fnUntraced(function*(
  cause: Causation,
  orderId: string,
  demands: ReadonlyArray<Demand>,
  status: "active" | "confirmed",
  expiresAt: Date | null
) {
  const org = cause.organization_id
  const items = yield* reserveDemands(org, orderId, demands)
  const reservation: Reservation = {
    organization_id: org,
    reservation_id: deriveId(org, "reservation", cause.event_id),
    order_id: orderId,
    status,
    items,
    expires_at: expiresAt,
    created_at: yield* nowDate,
    caused_by: cause.event_id,
    closed_reason: null
  }
  const inserted = yield* (yield* Reservations).insert(reservation)
  if (!inserted) {
    // The order lock makes this unreachable unless a second writer ignores it; refuse to double-reserve.
    return yield* Effect.die(new Error(`order ${orderId} gained a live reservation while locked`))
  }
  yield* emit(cause, `order/${orderId}`, [reservedDraft(reservation)])
  if (status === "active" && expiresAt !== null) yield* scheduleTimersAfterCommit([{ ...reservation, expires_at: expiresAt }])
  return reservation
})
