import { Cause, Clock, Duration, Effect, FiberMap, Layer, Metric, Schedule } from "effect"
import { expireOverdue, expireReservation } from "../handlers/expiry.ts"
import { reservationsExpired } from "../observability/metrics.ts"
import type { ReservationSchedule } from "../stores/model.ts"
import { Reservations, type Stores, UnitOfWork } from "../stores/services.ts"
import { ReservationTimers } from "./ReservationTimers.ts"

export interface SchedulerOptions {
  /** How often overdue reservations are swept (default 60 s). */
  readonly sweepInterval: Duration.Input
  /** Reservations expired per sweep transaction. */
  readonly sweepBatch: number
}

const transientRetry = Schedule.max([Schedule.exponential("200 millis", 2), Schedule.recurs(4)])

/**
 * The fiber-based TTL scheduler (issue 5): one timer fiber per live reservation in a
 * `FiberMap` keyed by reservation id. A timer sleeps until `expires_at` (on the Effect clock,
 * so `TestClock` drives it) and then runs the expiry in its own unit of work. Expiry is
 * idempotent, so a timer that fires late, twice, or on two replicas releases stock once.
 */
export const layer = (options: SchedulerOptions): Layer.Layer<ReservationTimers, never, Stores> =>
  Layer.effect(
    ReservationTimers,
    Effect.gen(function*() {
      const timers = yield* FiberMap.make<string>()
      const context = yield* Effect.context<Stores>()
      const uow = yield* UnitOfWork

      const expire = (organizationId: string, reservationId: string) =>
        uow.transaction(expireReservation(organizationId, reservationId)).pipe(
          Effect.provideService(ReservationTimers, service),
          Effect.retry(transientRetry),
          Effect.tap((expired) => expired ? Metric.update(reservationsExpired, 1) : Effect.void),
          Effect.catchCause((cause) =>
            // The sweep will find it again; nothing is lost by giving up here.
            Effect.logWarning("reservation expiry failed; the sweep will retry").pipe(
              Effect.annotateLogs({ reservation_id: reservationId, cause: Cause.pretty(cause) })
            )
          ),
          Effect.withSpan("reservation.timer", { attributes: { "inventory.reservation_id": reservationId } }),
          Effect.provideContext(context)
        )

      const schedule = (reservation: ReservationSchedule) =>
        Effect.gen(function*() {
          const now = yield* Clock.currentTimeMillis
          const wait = Math.max(0, reservation.expires_at.getTime() - now)
          yield* FiberMap.run(
            timers,
            reservation.reservation_id,
            Effect.sleep(Duration.millis(wait)).pipe(Effect.andThen(expire(reservation.organization_id, reservation.reservation_id)))
          )
        })

      const service: ReservationTimers["Service"] = ReservationTimers.of({
        schedule,
        cancel: (reservationId) => FiberMap.remove(timers, reservationId),
        pending: FiberMap.size(timers)
      })

      const sweep = uow.transaction(expireOverdue(options.sweepBatch)).pipe(
        Effect.provideService(ReservationTimers, service),
        Effect.tap((n) => n > 0 ? Metric.update(reservationsExpired, n) : Effect.void),
        Effect.repeat({ while: (n) => n >= options.sweepBatch }),
        Effect.withSpan("reservation.sweep"),
        Effect.catchCause((cause) =>
          Effect.logWarning("reservation sweep failed; next sweep will retry").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) })
          )
        ),
        Effect.provideContext(context)
      )

      // Recovery: every active reservation gets its timer back; those past due fire at once.
      const active = yield* (yield* Reservations).activeSchedules().pipe(
        Effect.retry(transientRetry),
        Effect.orDie
      )
      yield* Effect.forEach(active, schedule, { discard: true })
      yield* Effect.logInfo("reservation timers recovered").pipe(Effect.annotateLogs({ count: active.length }))

      yield* sweep.pipe(
        Effect.repeat(Schedule.spaced(options.sweepInterval)),
        Effect.forkScoped
      )
      return service
    })
  )
