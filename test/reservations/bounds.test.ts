import { assert, describe, it, layer } from "@effect/vitest"
import { Context, Effect, Layer, Stream } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { TestClock } from "effect/testing"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import type { ReservationSchedule, ReservationStatus } from "../../src/stores/model.ts"
import { Reservations, ReservationTimers, type Stores } from "../../src/stores/services.ts"
import { sqlStoresLayer } from "../support/sql.ts"
import { freshOrg } from "../support/events.ts"

/**
 * Issue 15, "Bounds" and timer keys: timers are keyed by (organization, reservation id); a
 * cancelled timer leaves the scheduler at once, so what it holds is bounded by live
 * reservations whatever their TTL; start-up recovery streams the active reservations, never
 * holding the table.
 */

/** Timers only: a sweep far beyond any test, so every expiry here is a timer's. */
const timersOnly = { sweepInterval: "1000 days", sweepBatch: 100 } as const

/** A reservation row with no items: expiring it moves only its status, which is what these tests watch. */
const reservationRow = (org: string, id: string, status: ReservationStatus, expiresAt: Date) =>
  Effect.flatMap(Reservations, (r) =>
    r.insert({
      organization_id: org,
      reservation_id: id,
      order_id: `order-${id}`,
      status,
      items: [],
      expires_at: expiresAt,
      created_at: new Date(0),
      caused_by: `evt-${id}`,
      closed_reason: null
    })).pipe(Effect.orDie)

const statusOf = (org: string, id: string) =>
  Effect.flatMap(Reservations, (r) => r.findById(org, id)).pipe(
    Effect.map((found) => (found._tag === "Some" ? found.value.status : undefined)),
    Effect.orDie
  )

/** A small deterministic generator: the same "random" deadlines on every run. */
const lcg = (seed: number) => () => {
  seed = (seed * 1_103_515_245 + 12_345) % 2_147_483_648
  return seed / 2_147_483_648
}

describe("reservation timers on the memory stores", () => {
  it.effect("are keyed by organization: org B's cancel leaves org A's timer with the same reservation id", () =>
    Effect.gen(function*() {
      const timers = Context.get(yield* Layer.build(Scheduler.layer(timersOnly)), ReservationTimers)
      const [a, b] = [freshOrg(), freshOrg()]
      const at = new Date(5 * 60_000)
      for (const org of [a, b]) {
        yield* reservationRow(org, "r-shared", "active", at)
        yield* timers.schedule({ organization_id: org, reservation_id: "r-shared", expires_at: at })
      }
      assert.strictEqual(yield* timers.pending, 2, "one timer per organization")
      yield* timers.cancel(b, "r-shared")
      assert.strictEqual(yield* timers.pending, 1)
      yield* TestClock.adjust("5 minutes")
      yield* timers.settled
      assert.strictEqual(yield* statusOf(a, "r-shared"), "expired", "org A's timer fired")
      assert.strictEqual(yield* statusOf(b, "r-shared"), "active", "org B's timer was the one cancelled")
    }).pipe(Effect.provide(MemoryStores.layer)))

  it.effect("a cancelled or replaced timer leaves the scheduler at once, whatever its TTL", () =>
    Effect.gen(function*() {
      const timers = Context.get(yield* Layer.build(Scheduler.layer(timersOnly)), ReservationTimers)
      const org = freshOrg()
      // A TTL of a year: a tombstone left in the heap would stay that long.
      const far = new Date(365 * 24 * 3_600_000)
      for (let i = 0; i < 1000; i++) yield* timers.schedule({ organization_id: org, reservation_id: `r${i}`, expires_at: far })
      assert.strictEqual(yield* timers.pending, 1000)
      for (let i = 1; i < 1000; i++) yield* timers.cancel(org, `r${i}`)
      assert.strictEqual(yield* timers.pending, 1)
      for (let i = 0; i < 100; i++) {
        yield* timers.schedule({ organization_id: org, reservation_id: "r0", expires_at: new Date(far.getTime() + i) })
      }
      assert.strictEqual(yield* timers.pending, 1, "rescheduling replaces the entry")
      yield* timers.cancel(org, "r0")
      assert.strictEqual(yield* timers.pending, 0)
    }).pipe(Effect.provide(MemoryStores.layer)))

  it.effect("after cancels from anywhere in the heap, exactly the others fire, each at its deadline", () =>
    Effect.gen(function*() {
      const timers = Context.get(yield* Layer.build(Scheduler.layer(timersOnly)), ReservationTimers)
      const org = freshOrg()
      const random = lcg(15)
      const deadlines = Array.from({ length: 300 }, () => 1 + Math.floor(random() * 120))
      for (const [i, minutes] of deadlines.entries()) {
        const at = new Date(minutes * 60_000)
        yield* reservationRow(org, `r${i}`, "active", at)
        yield* timers.schedule({ organization_id: org, reservation_id: `r${i}`, expires_at: at })
      }
      const cancelled = new Set(deadlines.flatMap((_, i) => (random() < 0.5 ? [i] : [])))
      for (const i of cancelled) yield* timers.cancel(org, `r${i}`)
      assert.strictEqual(yield* timers.pending, deadlines.length - cancelled.size)
      for (let minute = 1; minute <= 120; minute++) {
        yield* TestClock.adjust("1 minute")
        yield* timers.settled
        for (const [i, due] of deadlines.entries()) {
          const want = !cancelled.has(i) && due <= minute ? "expired" : "active"
          assert.strictEqual(yield* statusOf(org, `r${i}`), want, `r${i} (due at minute ${due}) at minute ${minute}`)
        }
      }
      assert.strictEqual(yield* timers.pending, 0)
    }).pipe(Effect.provide(MemoryStores.layer)), 60_000)
})

/** Reservations as a proxy that counts the rows recovery streams. */
const countingStream = (read: { rows: number }) =>
  Layer.effect(
    Reservations,
    Effect.map(Reservations, (r) =>
      Reservations.of({
        ...r,
        activeSchedules: (due) =>
          r.activeSchedules(due).pipe(Stream.mapArray((rows) => {
            read.rows += rows.length
            return rows
          }))
      }))
  )

/** Every active schedule the store streams, and the size of each chunk it came in. */
const streamAll = Effect.gen(function*() {
  const reservations = yield* Reservations
  const chunks: Array<number> = []
  const all: Array<ReservationSchedule> = []
  yield* reservations.activeSchedules().pipe(
    Stream.runForEachArray((rows) => Effect.sync(() => { chunks.push(rows.length); all.push(...rows) })),
    Effect.orDie
  )
  return { all, chunks }
})

const recoverySuite = <E>(name: string, stores: Layer.Layer<Stores, E>) =>
  layer(stores, { timeout: "60 seconds" })(name, (it) => {
    it.effect("activeSchedules streams every active reservation once, and nothing else", () =>
      Effect.gen(function*() {
        // Orgs whose names are prefixes of each other, and ids that interleave across them.
        const base = freshOrg()
        const [a, b] = [base, `${base}x`]
        const at = new Date(Date.now() + 3_600_000)
        const active: Array<string> = []
        for (const org of [b, a]) {
          for (const id of ["r3", "r1", "r10", "r2"]) {
            yield* reservationRow(org, id, "active", at)
            active.push(`${org}/${id}`)
          }
          yield* reservationRow(org, "r-confirmed", "confirmed", at)
          yield* reservationRow(org, "r-cancelled", "cancelled", at)
        }
        const { all } = yield* streamAll
        const mine = all.filter((s) => s.organization_id === a || s.organization_id === b)
        assert.deepStrictEqual(mine.map((s) => `${s.organization_id}/${s.reservation_id}`).sort(), active.sort())
        assert.strictEqual(new Set(all.map((s) => `${s.organization_id}\u0000${s.reservation_id}`)).size, all.length, "no row twice")
        for (const s of mine) assert.strictEqual(s.expires_at.getTime(), at.getTime())
      }))

    it.effect("activeSchedules with `due` reads only the active reservations expiring in the slice (after, upTo]", () =>
      Effect.gen(function*() {
        const org = freshOrg()
        const t0 = Date.now() + 3_600_000
        const at = (minutes: number) => new Date(t0 + minutes * 60_000)
        for (const m of [10, 20, 30]) yield* reservationRow(org, `r${m}`, "active", at(m))
        yield* reservationRow(org, "r15-confirmed", "confirmed", at(15))
        const slice = (after: Date | null, upTo: Date) =>
          Effect.flatMap(Reservations, (r) => Stream.runCollect(r.activeSchedules({ after, upTo }))).pipe(
            Effect.map((rows) => rows.filter((x) => x.organization_id === org).map((x) => x.reservation_id).sort()),
            Effect.orDie
          )
        assert.deepStrictEqual(yield* slice(at(10), at(20)), ["r20"], "after is exclusive, upTo inclusive")
        assert.deepStrictEqual(yield* slice(null, at(20)), ["r10", "r20"])
        assert.deepStrictEqual(yield* slice(at(30), at(90)), [])
      }))

    it.effect("start-up recovery schedules every active reservation from one read of the stream", () =>
      Effect.gen(function*() {
        const org = freshOrg()
        const at = new Date(Date.now() + 3_600_000)
        for (let i = 0; i < 7; i++) yield* reservationRow(org, `r${i}`, "active", at)
        yield* reservationRow(org, "r-expired", "expired", at)
        const total = (yield* streamAll).all.length
        assert.ok(total >= 7)
        const read = { rows: 0 }
        const context = yield* Layer.build(Scheduler.layer(timersOnly).pipe(Layer.provide(countingStream(read))))
        assert.strictEqual(yield* Context.get(context, ReservationTimers).pending, total, "every active reservation has its timer")
        assert.strictEqual(read.rows, total, "each row read once")
      }))
  })

recoverySuite("recovery on the memory stores", MemoryStores.layer)
recoverySuite("recovery on the PostgreSQL stores", sqlStoresLayer("recovery", { poolSize: 3 }))

layer(sqlStoresLayer("recovery_stream", { poolSize: 2 }), { timeout: "60 seconds" })("recovery's read on PostgreSQL", (it) => {
  it.effect("streams the rows in chunks, so a reader never holds the whole table", () =>
    Effect.gen(function*() {
      const org = freshOrg()
      const at = new Date(Date.now() + 3_600_000)
      const n = 5_000
      const sql = yield* SqlClient
      yield* sql`
        INSERT INTO reservations (organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by)
        SELECT ${org}, 'r' || i, 'order-' || i, 'active', ${at}, now(), 'evt-' || i FROM generate_series(1, ${n}) AS i`.pipe(Effect.orDie)
      const { all, chunks } = yield* streamAll
      assert.strictEqual(all.filter((s) => s.organization_id === org).length, n)
      // The driver pauses the socket once 512 rows wait, and one read of the socket holds fewer than
      // 1,500 of these rows: a chunk is bounded by that, not by the table.
      assert.ok(Math.max(...chunks) < 2_000, `chunks of ${Math.max(...chunks)} rows at most, ${chunks.length} chunks`)
    }))
})
