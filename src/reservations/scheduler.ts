import { Cause, Clock, Deferred, Duration, Effect, Layer, Metric, Queue, Schedule, Scope, Stream } from "effect"
import { expireDue, expireOverdue } from "../handlers/expiry.ts"
import { reservationsExpired } from "../observability/metrics.ts"
import type { ReservationSchedule } from "../stores/model.ts"
import { type ReservationRef, Reservations, ReservationTimers, type Stores, UnitOfWork } from "../stores/services.ts"

export interface SchedulerOptions {
  /** How often overdue reservations are swept (default 60 s). */
  readonly sweepInterval: Duration.Input
  /** Reservations expired per sweep transaction. */
  readonly sweepBatch: number
  /** Expiry transactions run at once when many timers fire together (default 4). */
  readonly expiryConcurrency?: number
  /** Timers due together expired in one transaction, at most (default 100). */
  readonly expiryBatch?: number
  /**
   * Hold timers only for reservations due within this much of now (at least 2 s); a refill every
   * half of it arms those that came within reach. None (the default here): every live reservation's timer
   * is held. The consumer sets it (`RESERVATION_TIMER_HORIZON`), so its memory does not grow
   * with the live reservations (issue 18).
   */
  readonly horizon?: Duration.Input | undefined
}

const transientRetry = Schedule.max([Schedule.exponential("200 millis", 2), Schedule.recurs(4)])

/** How soon a timer tries again when another transaction held its reservation: doubling, up to 4 s. */
const busyRetryMillis = 250
const busyRetryMaxMillis = 4_000

interface Timer {
  /** The one copy of its organization's id that every timer of the organization shares. */
  readonly organization_id: string
  readonly reservation_id: string
  readonly at: number
  readonly seq: number
  /** Position in the heap, kept by the heap, so a cancel removes the entry at once. */
  index: number
}

/** A reservation handed to the expiry workers: a timer that fired, or one tried again. */
interface Attempt extends ReservationRef {
  /** How many times another transaction held the reservation when it was tried before. */
  readonly tries?: number
}

const earlier = (a: Timer, b: Timer) => a.at < b.at || (a.at === b.at && a.seq < b.seq)

/**
 * A binary min-heap of timers by deadline that can remove any entry: a cancelled timer leaves
 * it at once, so the heap holds live reservations only, however far away their deadlines are.
 */
class TimerHeap {
  private readonly items: Array<Timer> = []
  get top(): Timer | undefined {
    return this.items[0]
  }
  get size() {
    return this.items.length
  }
  push(timer: Timer) {
    timer.index = this.items.length
    this.items.push(timer)
    this.up(timer.index)
  }
  pop(): Timer | undefined {
    const top = this.items[0]
    if (top !== undefined) this.remove(top)
    return top
  }
  remove(timer: Timer) {
    const items = this.items
    const i = timer.index
    if (items[i] !== timer) return
    const last = items.pop()!
    timer.index = -1
    if (i === items.length) return
    items[i] = last
    last.index = i
    this.down(i)
    this.up(last.index)
  }
  clear() {
    for (const timer of this.items) timer.index = -1
    this.items.length = 0
  }
  private swap(i: number, j: number) {
    const items = this.items
    const a = items[i]!
    const b = items[j]!
    items[i] = b
    items[j] = a
    a.index = j
    b.index = i
  }
  private up(i: number) {
    while (i > 0) {
      const parent = (i - 1) >> 1
      if (!earlier(this.items[i]!, this.items[parent]!)) return
      this.swap(i, parent)
      i = parent
    }
  }
  private down(i: number) {
    const items = this.items
    for (;;) {
      const l = 2 * i + 1
      const r = l + 1
      let m = i
      if (l < items.length && earlier(items[l]!, items[m]!)) m = l
      if (r < items.length && earlier(items[r]!, items[m]!)) m = r
      if (m === i) return
      this.swap(i, m)
      i = m
    }
  }
}

/**
 * Timers by organization, then reservation id (reservation ids are only unique within one). Kept
 * nested rather than under a key of both ids, and with one copy of each organization's id: a
 * timer is held for as long as its reservation lives, so every byte counts as many times as there
 * are live reservations (recovered from the table on start-up, a string of each id per row).
 * `npm run bench:ttl`, 100,000 timers: 314-333 B each became 228-237, and recovering them 39-40 MB
 * of resident memory became 26-27 (issue 18: a consumer holding about 65,000 peaked at 204 MB
 * under load, against a bound of 200).
 */
class TimerIndex {
  private readonly organizations = new Map<string, { readonly id: string; readonly timers: Map<string, Timer> }>()
  /** The timers of `organizationId`, created on first use; `id` is the copy timers hold. */
  private of(organizationId: string) {
    let organization = this.organizations.get(organizationId)
    if (organization === undefined) {
      organization = { id: organizationId, timers: new Map() }
      this.organizations.set(organizationId, organization)
    }
    return organization
  }
  get(organizationId: string, reservationId: string): Timer | undefined {
    return this.organizations.get(organizationId)?.timers.get(reservationId)
  }
  /** A new timer for the reservation, replacing the one it had (returned). */
  set(organizationId: string, reservationId: string, make: (organizationId: string) => Timer): { readonly timer: Timer; readonly replaced: Timer | undefined } {
    const organization = this.of(organizationId)
    const replaced = organization.timers.get(reservationId)
    const timer = make(organization.id)
    organization.timers.set(reservationId, timer)
    return { timer, replaced }
  }
  delete(organizationId: string, reservationId: string): void {
    const organization = this.organizations.get(organizationId)
    if (organization === undefined) return
    organization.timers.delete(reservationId)
    // Memory follows the live reservations, organizations included.
    if (organization.timers.size === 0) this.organizations.delete(organizationId)
  }
  clear() {
    this.organizations.clear()
  }
}

/**
 * The TTL scheduler (issue 5): keyed, cancellable timers, driven by one fiber on the Effect
 * clock (so `TestClock` drives it). It is the FiberMap pattern with the fibers folded into a
 * deadline heap: a sleeping fiber costs ~2.4 KB, a heap entry well under 200 B. A cancelled timer
 * leaves the heap at once and the table is streamed, never held whole (issue 15). With a
 * `horizon`, only the reservations due within it have a timer in memory, so memory no longer follows the live
 * reservations (at 230 B a timer, a million of them would not fit the heap; issue 18): a
 * reservation due later is armed by the refill that reaches it, on every replica, so a standby
 * holds the timers the consuming replica would have if it died.
 *
 * Timers that fire together expire together, in one unit of work (up to `expiryBatch`). Expiry
 * is idempotent (row lock and conditional transition), so a timer that fires late, twice, or on
 * two replicas releases stock once; a reservation another transaction holds is skipped, not
 * waited for, and tried again shortly. At start-up every active reservation due within the
 * horizon gets its timer back (overdue ones fire at once), and a periodic sweep expires what a
 * dead replica's timers would have.
 */
export const layer = (options: SchedulerOptions): Layer.Layer<ReservationTimers, never, Stores> =>
  Layer.effect(
    ReservationTimers,
    Effect.gen(function*() {
      const context = yield* Effect.context<Stores>()
      const uow = yield* UnitOfWork
      const timers = new TimerIndex()
      const heap = new TimerHeap()
      let seq = 0
      /** Timers handed to the workers whose expiry has not finished yet. */
      let inFlight = 0
      let wake = Deferred.makeUnsafe<void>()
      const due = yield* Queue.unbounded<Attempt>()
      const expiryBatch = Math.max(1, options.expiryBatch ?? 100)
      const scope = yield* Scope.Scope

      // At least 2 s, so the refill reads the table at most once a second.
      const horizon = options.horizon === undefined ? undefined : Math.max(2_000, Duration.toMillis(Duration.fromInputUnsafe(options.horizon)))

      const drop = (organizationId: string, reservationId: string) => {
        const timer = timers.get(organizationId, reservationId)
        if (timer === undefined) return
        timers.delete(organizationId, reservationId)
        heap.remove(timer)
      }

      /** Holds the reservation's timer, unless it is due beyond the horizon (the refill arms it then). */
      const hold = (reservation: ReservationSchedule, now: number) => {
        const at = reservation.expires_at.getTime()
        if (horizon !== undefined && at > now + horizon) return drop(reservation.organization_id, reservation.reservation_id)
        if (timers.get(reservation.organization_id, reservation.reservation_id)?.at === at) return
        const { timer, replaced } = timers.set(reservation.organization_id, reservation.reservation_id, (organization_id) => ({
          organization_id,
          reservation_id: reservation.reservation_id,
          at,
          seq: ++seq,
          index: -1
        }))
        if (replaced !== undefined) heap.remove(replaced)
        heap.push(timer)
        if (heap.top === timer) Deferred.doneUnsafe(wake, Effect.void)
      }

      const service: ReservationTimers["Service"] = ReservationTimers.of({
        schedule: (reservation: ReservationSchedule) =>
          horizon === undefined
            ? Effect.sync(() => hold(reservation, 0))
            : Effect.flatMap(Clock.currentTimeMillis, (now) => Effect.sync(() => hold(reservation, now))),
        cancel: (organizationId, reservationId) => Effect.sync(() => drop(organizationId, reservationId)),
        pending: Effect.sync(() => heap.size),
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

      /**
       * Hands reservations another transaction held back to the workers a little later, waiting
       * twice as long each time the same one is held again. They count as in flight meanwhile, so
       * `settled` waits for them; the wait is real time, not the Effect clock's, as it waits for
       * that other transaction, not for a deadline.
       */
      const retryLater = (batch: ReadonlyArray<Attempt>, busy: ReadonlyArray<ReservationRef>) => {
        const tried = new Map(batch.map((a) => [`${a.organization_id}\u0000${a.reservation_id}`, a.tries ?? 0]))
        const byDelay = new Map<number, Array<Attempt>>()
        for (const ref of busy) {
          const tries = (tried.get(`${ref.organization_id}\u0000${ref.reservation_id}`) ?? 0) + 1
          const delay = Math.min(busyRetryMillis * 2 ** (tries - 1), busyRetryMaxMillis)
          byDelay.set(delay, [...(byDelay.get(delay) ?? []), { organization_id: ref.organization_id, reservation_id: ref.reservation_id, tries }])
        }
        inFlight += busy.length
        return Effect.forEach(byDelay, ([delay, attempts]) =>
          Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, delay))).pipe(
            Effect.andThen(Queue.offerAll(due, attempts)),
            Effect.forkIn(scope)
          ), { discard: true })
      }

      // Timers due together expire together: one transaction for the batch, and a reservation
      // another transaction holds (another replica's timer expiring it, a group on its order) is
      // skipped, not waited for, and tried again 250 ms later (then 0.5, 1, 2, 4 s while it stays
      // held); by then it is usually expired or settled.
      const expire = (batch: ReadonlyArray<Attempt>) =>
        uow.transaction(expireDue(batch)).pipe(
          Effect.provideService(ReservationTimers, service),
          Effect.retry(transientRetry),
          // Logged after the commit, so a line never reports an expiry that rolled back.
          Effect.tap(({ busy, expired }) =>
            Effect.gen(function*() {
              if (busy.length > 0) yield* retryLater(batch, busy)
              if (expired.length === 0) return
              yield* Metric.update(reservationsExpired, expired.length)
              for (const r of expired) {
                yield* Effect.logInfo("reservation expired").pipe(
                  Effect.annotateLogs({ organization_id: r.organization_id, reservation_id: r.reservation_id, by: "timer" })
                )
              }
            })),
          Effect.catchCause((cause) =>
            // The sweep will find them again; nothing is lost by giving up here.
            Effect.logWarning("reservation expiry failed; the sweep will retry").pipe(
              Effect.annotateLogs({ reservations: batch.length, reservation_ids: batch.slice(0, 20).map((a) => a.reservation_id), cause: Cause.pretty(cause) })
            )
          ),
          Effect.withSpan("reservation.timer", {
            attributes: batch.length === 1
              ? { "inventory.reservation_id": batch[0]!.reservation_id }
              : { "inventory.reservation_count": batch.length }
          }),
          Effect.provideContext(context)
        )

      /** Hands every timer whose deadline passed to the expiry workers; returns the next deadline. */
      const fireDue = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        for (;;) {
          const top = heap.top
          if (top === undefined) return undefined
          if (top.at > now) return top.at - now
          heap.pop()
          timers.delete(top.organization_id, top.reservation_id)
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

      const worker = Effect.forever(Effect.flatMap(Queue.takeBetween(due, 1, expiryBatch), (batch) =>
        expire(batch).pipe(Effect.ensuring(Effect.sync(() => { inFlight -= batch.length })))))

      const sweep = uow.transaction(expireOverdue(options.sweepBatch)).pipe(
        Effect.provideService(ReservationTimers, service),
        Effect.tap((n) =>
          n > 0
            ? Effect.andThen(Metric.update(reservationsExpired, n), Effect.logInfo("reservations expired").pipe(Effect.annotateLogs({ count: n, by: "sweep" })))
            : Effect.void),
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

      // Timers from the table, streamed, so this holds what one read brings, not the whole table:
      // at start-up every active reservation due within the horizon (every one without a horizon;
      // those past due fire at once), then, every half horizon, those that came within reach since
      // (`reached`: how far the last refill loaded). A reservation the refill has not reached yet
      // was due beyond the horizon when it was scheduled, so `hold` left it to the refill; a refill
      // that fails is covered by the next one, and by the sweep. A retry reads the slice again:
      // holding a reservation twice keeps one timer.
      const reservations = yield* Reservations
      let reached: Date | null = null
      const load = Effect.gen(function*() {
        const now = yield* Clock.currentTimeMillis
        const upTo = horizon === undefined ? undefined : new Date(now + horizon)
        const loaded = yield* reservations.activeSchedules(upTo === undefined ? undefined : { after: reached, upTo }).pipe(
          Stream.mapArray((page) => {
            for (const reservation of page) hold(reservation, now)
            return page
          }),
          Stream.runCount,
          Effect.retry(transientRetry)
        )
        if (upTo !== undefined) reached = upTo
        return loaded
      })
      const recovered = yield* Effect.orDie(load)
      yield* Effect.logInfo("reservation timers recovered").pipe(Effect.annotateLogs({ count: recovered }))
      if (horizon !== undefined) {
        yield* Effect.sleep(Duration.millis(horizon / 2)).pipe(
          Effect.andThen(load),
          Effect.catchCause((cause) =>
            Effect.logWarning("reservation timer refill failed; the next one retries").pipe(
              Effect.annotateLogs({ cause: Cause.pretty(cause) })
            )
          ),
          Effect.forever,
          Effect.forkScoped
        )
      }

      yield* Effect.forkScoped(driver)
      for (let i = 0; i < (options.expiryConcurrency ?? 4); i++) yield* Effect.forkScoped(worker)
      yield* sweep.pipe(Effect.repeat(Schedule.spaced(options.sweepInterval)), Effect.forkScoped)
      return service
    })
  )
