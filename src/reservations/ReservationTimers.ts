import { Context, type Effect } from "effect"
import type { ReservationSchedule } from "../stores/model.ts"

/**
 * One cancellable timer per live reservation, keyed by reservation id. Handlers schedule a
 * timer when they reserve and cancel it on confirm, cancel and ship; the implementation in
 * `scheduler.ts` expires the reservation when the timer fires.
 */
export class ReservationTimers extends Context.Service<ReservationTimers, {
  schedule(reservation: ReservationSchedule): Effect.Effect<void>
  cancel(reservationId: string): Effect.Effect<void>
  /** How many timers are pending. */
  readonly pending: Effect.Effect<number>
  /** Completes once every timer due by now has fired and its expiry has finished. */
  readonly settled: Effect.Effect<void>
}>()("inventory/reservations/ReservationTimers") {}
