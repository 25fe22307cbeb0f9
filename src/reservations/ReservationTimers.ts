import { Context, type Effect } from "effect"
import type { ReservationSchedule } from "../stores/model.ts"

/**
 * One cancellable timer per live reservation, keyed by (organization, reservation id): ids are
 * scoped by organization (SPEC 3), so one organization's confirm never cancels another's timer.
 * Handlers schedule a timer when they reserve and cancel it on confirm, cancel and ship; the
 * implementation in `scheduler.ts` expires the reservation when the timer fires.
 */
export class ReservationTimers extends Context.Service<ReservationTimers, {
  schedule(reservation: ReservationSchedule): Effect.Effect<void>
  cancel(organizationId: string, reservationId: string): Effect.Effect<void>
  /** How many timers the scheduler holds: one per scheduled reservation, a cancelled one gone at once. */
  readonly pending: Effect.Effect<number>
  /** Completes once every timer due by now has fired and its expiry has finished. */
  readonly settled: Effect.Effect<void>
}>()("inventory/reservations/ReservationTimers") {}
