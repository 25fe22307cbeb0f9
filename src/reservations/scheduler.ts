import { Cause, Clock, Deferred, Duration, Effect, Layer, Metric, Queue, Schedule } from "effect"
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
  /** Expiries run at once when many timers fire together (default 4). */
  readonly expiryConcurrency?: number
}

const transientRetry = Schedule.max([Schedule.exponential("200 millis", 2), Schedule.recurs(4)])

interface Timer {
  readonly organization_id: string
  readonly reservation_id: string
  readonly at: number
  readonly seq: number
}

const earlier = (a: Timer, b: Timer) => a.at < b.at || (a.at === b.at && a.seq < b.seq)

/** A binary min-heap of timers by deadline. Cancelled timers stay in it until they surface. */
class TimerHeap {
  private readonly items: Array<Timer> = []
  get top(): Timer | undefined {
    return this.items[0]
  }
  get size() {
    return this.items.length
  }
  push(timer: Timer) {
    const items = this.items
    items.push(timer)
    let i = items.length - 1
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!earlier(items[i]!, items[parent]!)) break
      ;[items[i], items[parent]] = [items[parent]!, items[i]!]
      i = parent
    }
  }
  pop(): Timer | undefined {
    const items = this.items
    const top = items[0]
    const last = items.pop()
    if (items.length > 0 && last !== undefined) {
      items[0] = last
      let i = 0
      for (;;) {
        const l = 2 * i + 1
        const r = l + 1
        let m = i
        if (l < items.length && earlier(items[l]!, items[m]!)) m = l
        if (r < items.length && earlier(items[r]!, items[m]!)) m = r
        if (m === i) break
        ;[items[i], items[m]] = [items[m]!, items[i]!]
        i = m
      }
    }
    return top
  }
  clear() {
    this.items.length = 0
  }
}

/**
 * The TTL scheduler (issue 5): keyed, cancellable timers, one per live reservation, driven by
 * one fiber on the Effect clock (so `TestClock` drives it). It is the FiberMap pattern with
 * the fibers folded into a deadline heap: a sleeping fiber costs ~2.4 KB, a heap entry well
 * under 200 B, which is what keeps 100,000 pending reservations inside the memory budget.
 *
 * When a timer fires, the expiry runs in its own unit of work. Expiry is idempotent (row lock
 * and conditional transition), so a timer that fires late, twice, or on two replicas releases
 * stock once. At start-up every active reservation gets its timer back (overdue ones fire at
 * once), and a periodic sweep expires what a dead replica's timers would have.
 */
export const layer = (options: SchedulerOptions): Layer.Layer<ReservationTimers, never, Stores> =>
  Layer.effect(
    ReservationTimers,
    Effect.gen(function*() {
      const context = yield* Effect.context<Stores>()
      const uow = yield* UnitOfWork
      const timers = new Map<string, Timer>()
      const heap = new TimerHeap()
      let seq = 0
      /** Timers handed to the workers whose expiry has not finished yet. */
      let inFlight = 0
      let wake = Deferred.makeUnsafe<void>()
      const due = yield* Queue.unbounded<Timer>()

      const service: ReservationTimers["Service"] = ReservationTimers.of({
        schedule: (reservation: ReservationSchedule) =>
          Effect.sync(() => {
            const timer: Timer = {
              organization_id: reservation.organization_id,
              reservation_id: reservation.reservation_id,
              at: reservation.expires_at.getTime(),
              seq: ++seq
            }
            timers.set(timer.reservation_id, timer)
            heap.push(timer)
            if (heap.top === timer) Deferred.doneUnsafe(wake, Effect.void)
          }),
        cancel: (reservationId) => Effect.sync(() => { timers.delete(reservationId) }),
        pending: Effect.sync(() => timers.size),
        settled: Effect.gen(function*() {
          for (;;) {
            const now = yield* Clock.currentTimeMillis
            const top = heap.top
            const due = top !== undefined && top.at <= now
            if (!due && inFlight === 0) return
            // Real time, not the test clock: this waits for work, not for a deadline.
            yield* Effect.promise(() => new Promise((resolve) => setTimeout(resolve, 2)))
          }
        })
      })

      const expire = (timer: Timer) =>
        uow.transaction(expireReservation(timer.organization_id, timer.reservation_id)).pipe(
          Effect.provideService(ReservationTimers, service),
          Effect.retry(transientRetry),
          Effect.tap((expired) => (expired ? Metric.update(reservationsExpired, 1) : Effect.void)),
          Effect.catchCause((cause) =>
            // The sweep will find it again; nothing is lost by giving up here.
            Effect.logWarning("reservation expiry failed; the sweep will retry").pipe(
              Effect.annotateLogs({ reservation_id: timer.reservation_id, cause: Cause.pretty(cause) })
            )
          ),
          Effect.withSpan("reservation.timer", { attributes: { "inventory.reservation_id": timer.reservation_id } }),
          Effect.provideContext(context)
        )

      /** Hands every timer whose deadline passed to the expiry workers; returns the next deadline. */
      const fireDue = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        for (;;) {
          const top = heap.top
          if (top === undefined) return undefined
          if (timers.get(top.reservation_id) !== top) {
            heap.pop() // cancelled or rescheduled
            continue
          }
          if (top.at > now) return top.at - now
          heap.pop()
          timers.delete(top.reservation_id)
          inFlight++
          yield* Queue.offer(due, top)
        }
      })

      const driver = Effect.gen(function*() {
        for (;;) {
          const signal = wake
          const wait = yield* fireDue
          const woken = Deferred.await(signal)
          yield* wait === undefined ? woken : Effect.raceFirst(Effect.sleep(Duration.millis(wait)), woken)
          if (Deferred.isDoneUnsafe(signal)) wake = Deferred.makeUnsafe<void>()
        }
      })

      const worker = Effect.forever(Effect.flatMap(Queue.take(due), (timer) =>
        expire(timer).pipe(Effect.ensuring(Effect.sync(() => { inFlight-- })))))

      const sweep = uow.transaction(expireOverdue(options.sweepBatch)).pipe(
        Effect.provideService(ReservationTimers, service),
        Effect.tap((n) => (n > 0 ? Metric.update(reservationsExpired, n) : Effect.void)),
        Effect.repeat({ while: (n) => n >= options.sweepBatch }),
        Effect.withSpan("reservation.sweep"),
        Effect.catchCause((cause) =>
          Effect.logWarning("reservation sweep failed; next sweep will retry").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) })
          )
        ),
        Effect.provideContext(context)
      )

      yield* Effect.addFinalizer(() => Effect.sync(() => {
        timers.clear()
        heap.clear()
      }))

      // Recovery: every active reservation gets its timer back; those past due fire at once.
      const active = yield* (yield* Reservations).activeSchedules().pipe(Effect.retry(transientRetry), Effect.orDie)
      for (const reservation of active) yield* service.schedule(reservation)
      yield* Effect.logInfo("reservation timers recovered").pipe(Effect.annotateLogs({ count: active.length }))

      yield* Effect.forkScoped(driver)
      for (let i = 0; i < (options.expiryConcurrency ?? 4); i++) yield* Effect.forkScoped(worker)
      yield* sweep.pipe(Effect.repeat(Schedule.spaced(options.sweepInterval)), Effect.forkScoped)
      return service
    })
  )
