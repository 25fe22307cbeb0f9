import { PgClient } from "@effect/sql-pg"
import { Context, Duration, Effect, Layer, ManagedRuntime, Redacted, Stream } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { ProcessingPolicy } from "../../src/pipeline/policy.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Reconciliation, Reservations, ReservationTimers, type Stores } from "../../src/stores/services.ts"
import { addWarehouse, freshOrg, putStock, quantities, reservationsOf, send } from "../support/events.ts"
import { eventually } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import { installAudit, noTimers, outboxRowsOf, stockChangesOf, transitionsOf } from "./support.ts"

/**
 * SPEC 4, "exactly once even with several consumer processes": two independent scheduler
 * instances, each on its own connection pool (two PostgreSQL clients, told apart by their
 * `application_name`), over one schema. Every reservation is held by both: by their timers
 * (both recover every active reservation at start-up, all due at the same instant), by their
 * sweeps only, or by both at once. Each reservation must leave `active` once: counted in
 * committed rows (audit triggers, outbox), not read off the final state. With a timer horizon,
 * neither holds them at first and the one left after the other stops arms them by its refill.
 */

const schema = uniqueSchema("res_two")
const N = 50

// The test's view: stores with inert timers, so placing orders schedules nothing anywhere.
const inspect = ManagedRuntime.make(
  Layer.merge(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 8 }), noTimers) as Layer.Layer<any, unknown>
)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)

beforeAll(async () => {
  await look(installAudit)
})

afterAll(async () => {
  await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await inspect.dispose()
})

/** What one instance's expiry path asked for: the reservations its timers tried to expire. */
interface Probe {
  readonly timerAttempts: Set<string>
  /** How many times the timers asked for each reservation. */
  readonly asked: Map<string, number>
  timerCalls: number
  sweeps: number
}

/**
 * One scheduler instance as a process would build it: its own pool (named `label`), the SQL
 * stores on it, `Scheduler.layer` on top. `Reservations` is wrapped only to observe calls.
 */
const instance = (label: string, options: Scheduler.SchedulerOptions) => {
  const probe: Probe = { timerAttempts: new Set(), asked: new Map(), timerCalls: 0, sweeps: 0 }
  const pool = PgClient.layer({
    url: Redacted.make(testDatabaseUrl),
    maxConnections: 6,
    applicationName: label,
    startupParameters: { search_path: schema }
  })
  const observed = Layer.effectContext(Effect.gen(function*() {
    const context = yield* Effect.context<Stores>()
    const reservations = Context.get(context, Reservations)
    return Context.add(context, Reservations, Reservations.of({
      ...reservations,
      lockDueAmong: (refs, now) =>
        Effect.suspend(() => {
          for (const ref of refs) {
            probe.timerAttempts.add(ref.reservation_id)
            probe.asked.set(ref.reservation_id, (probe.asked.get(ref.reservation_id) ?? 0) + 1)
          }
          probe.timerCalls++
          return reservations.lockDueAmong(refs, now)
        }),
      lockDue: (now, limit) =>
        Effect.suspend(() => {
          probe.sweeps++
          return reservations.lockDue(now, limit)
        })
    }))
  }))
  const layer = Scheduler.layer(options).pipe(
    Layer.provideMerge(observed.pipe(Layer.provide(SqlStores.storesLayer.pipe(Layer.provide(pool)))))
  )
  return { label, probe, runtime: ManagedRuntime.make(layer) }
}

type Instance = ReturnType<typeof instance>
const timers = (i: Instance) => i.runtime.runPromise(Effect.service(ReservationTimers))
const pending = (i: Instance) => i.runtime.runPromise(Effect.flatMap(ReservationTimers, (t) => t.pending))

/** N orders of `org`, every reservation due `dueInMs` from now (returned); an anchor due in 10 hours. */
const placeOrders = async (org: string, dueInMs = 6_000) => {
  await look(addWarehouse(org, "wh"))
  await look(putStock(org, "v1", "wh", 100))
  await look(putStock(org, "v2", "wh", 100))
  // Every order takes v1; every other one v2 too, so expiries contend for the same rows.
  const placed = await look(Effect.all(
    Array.from({ length: N }, (_, i) =>
      send(org, "order.placed", {
        order_id: `o${i}`,
        items: i % 2 === 0 ? [{ variant_id: "v2", quantity: 1 }, { variant_id: "v1", quantity: 1 }] : [{ variant_id: "v1", quantity: 1 }],
        reservation_ttl_minutes: 60
      })),
    { concurrency: 8 }
  ).pipe(Effect.provideService(ProcessingPolicy, {
    retryBaseDelay: Duration.millis(10),
    retries: 3,
    maxDeliveries: 5,
    maxBodyBytes: 1024 * 1024,
    maxLinesPerEvent: 500
  })))
  expect(placed.map((o) => o._tag)).toEqual(Array.from({ length: N }, () => "Ack"))
  // A hold that never expires here: a double release would not trip reserved >= 0, it would show.
  await look(send(org, "order.placed", { order_id: "anchor", items: [{ variant_id: "v1", quantity: 7 }, { variant_id: "v2", quantity: 3 }], reservation_ttl_minutes: 600 }))
  // All N due at one instant, a few seconds ahead: both instances' timers fire together.
  const dueAt = new Date(Date.now() + dueInMs)
  await look(Effect.flatMap(SqlClient, (sql) =>
    sql`UPDATE reservations SET expires_at = ${dueAt} WHERE organization_id = ${org} AND order_id <> 'anchor'`))
  expect(await look(quantities(org, "v1", "wh"))).toEqual({ total: 100, available: 100 - N - 7, reserved: N + 7, damaged: 0 })
  return dueAt
}

/** Every reservation expired once, by someone; the anchor untouched; the books balance. */
const assertExpiredOnce = async (org: string) => {
  const ids = new Map<string, string>()
  for (let i = 0; i < N; i++) ids.set((await look(reservationsOf(org, `o${i}`)))[0]!.reservation_id, `o${i}`)
  expect(ids.size).toBe(N)

  const transitions = await look(transitionsOf(org))
  expect(transitions).toHaveLength(N)
  expect(new Set(transitions.map((t) => t.reservation_id))).toEqual(new Set(ids.keys()))
  expect(transitions.every((t) => t.from_status === "active" && t.to_status === "expired" && t.closed_reason === "expired")).toBe(true)

  // One committed release per reservation item: N of v1, N/2 of v2, one unit each.
  const returned = (await look(stockChangesOf(org))).filter((c) => c.d_available > 0)
  expect(returned.filter((c) => c.variant_id === "v1")).toHaveLength(N)
  expect(returned.filter((c) => c.variant_id === "v2")).toHaveLength(N / 2)
  expect(returned.every((c) => c.d_available === 1 && c.d_reserved === -1 && c.d_total === 0)).toBe(true)

  const releases = (await look(outboxRowsOf(org))).filter((m) => m.event_type === "inventory.stock.released")
  expect(releases).toHaveLength(N)
  expect(new Set(releases.map((m) => m.payload.data.reservation_id))).toEqual(new Set(ids.keys()))
  expect(releases.every((m) => m.payload.data.reason === "expired")).toBe(true)

  expect((await look(reservationsOf(org, "anchor")))[0]?.status).toBe("active")
  expect(await look(quantities(org, "v1", "wh"))).toEqual({ total: 100, available: 93, reserved: 7, damaged: 0 })
  expect(await look(quantities(org, "v2", "wh"))).toEqual({ total: 100, available: 97, reserved: 3, damaged: 0 })
  expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])

  const byClient: Record<string, number> = {}
  for (const t of transitions) byClient[t.client] = (byClient[t.client] ?? 0) + 1
  return { ids, byClient }
}

const expiredCount = async (org: string) => {
  let n = 0
  for (let i = 0; i < N; i++) if ((await look(reservationsOf(org, `o${i}`)))[0]?.status === "expired") n++
  return n
}

const withInstances = async (
  options: Scheduler.SchedulerOptions,
  body: (a: Instance, b: Instance) => Promise<void>
) => {
  const a = instance("scheduler-a", options)
  const b = instance("scheduler-b", options)
  try {
    await Promise.all([a.runtime.runPromise(Effect.void), b.runtime.runPromise(Effect.void)])
    await body(a, b)
  } finally {
    await Promise.all([a.runtime.dispose(), b.runtime.dispose()])
  }
}

const settle = (i: Instance) => i.runtime.runPromise(Effect.flatMap(ReservationTimers, (t) => t.settled))

describe("two scheduler instances on one database", () => {
  it("both hold a timer for every reservation: each is released once", async () => {
    const org = freshOrg()
    await placeOrders(org)
    await withInstances({ sweepInterval: "1 hour", sweepBatch: 100 }, async (a, b) => {
      // Both recovered every live reservation at start-up, the anchor's too (the schema's first test).
      for (const i of [a, b]) expect(await pending(i), i.label).toBe(N + 1)
      await eventually("every reservation expired", async () => (await expiredCount(org)) === N, 90_000)
      await Promise.all([settle(a), settle(b)])
      const { ids, byClient } = await assertExpiredOnce(org)
      // Both instances really raced: each one's timers tried every reservation.
      for (const i of [a, b]) expect([...i.probe.timerAttempts].filter((id) => ids.has(id)).sort(), i.label).toEqual([...ids.keys()].sort())
      // A replica that found a reservation held by the other's expiry tries it again shortly, finds
      // it expired and drops it: only the anchor's timer is left on each.
      await eventually("only the anchor's timer left", async () => (await pending(a)) === 1 && (await pending(b)) === 1, 10_000)
      console.info(`timers: expiries committed per instance ${JSON.stringify(byClient)}; transactions asking ${a.probe.timerCalls} and ${b.probe.timerCalls}`)
    })
  }, 180_000)

  it("only the sweeps of both (timers cancelled): each is released once", async () => {
    const org = freshOrg()
    await placeOrders(org)
    await withInstances({ sweepInterval: "10 millis", sweepBatch: 2 }, async (a, b) => {
      // Cancel every recovered timer on both, before any is due: only the sweeps are left.
      // (Every active reservation of the schema: the earlier tests' anchors were recovered too.)
      const live = await look(Effect.flatMap(Reservations, (r) => Stream.runCollect(r.activeSchedules())))
      expect(live.filter((r) => r.organization_id === org)).toHaveLength(N + 1)
      for (const i of [a, b]) {
        const t = await timers(i)
        for (const r of live) await i.runtime.runPromise(t.cancel(r.organization_id, r.reservation_id))
      }
      expect(await pending(a)).toBe(0)
      expect(await pending(b)).toBe(0)
      await eventually("every reservation expired", async () => (await expiredCount(org)) === N, 90_000)
      const { byClient } = await assertExpiredOnce(org)
      // No timer was involved: neither instance's expiry-by-id path ran.
      expect(a.probe.timerCalls + b.probe.timerCalls).toBe(0)
      expect(a.probe.sweeps).toBeGreaterThan(0)
      expect(b.probe.sweeps).toBeGreaterThan(0)
      console.info(`sweeps: expiries committed per instance ${JSON.stringify(byClient)}`)
    })
  }, 180_000)

  it("timers and sweeps of both at once: each is released once", async () => {
    const org = freshOrg()
    await placeOrders(org)
    await withInstances({ sweepInterval: "20 millis", sweepBatch: 5 }, async (a, b) => {
      await eventually("every reservation expired", async () => (await expiredCount(org)) === N, 90_000)
      await Promise.all([settle(a), settle(b)])
      const { byClient } = await assertExpiredOnce(org)
      console.info(`timers + sweeps: expiries committed per instance ${JSON.stringify(byClient)}`)
    })
  }, 180_000)

  it("with a horizon, a replica arms by its refill what another scheduled, and expires it at its deadline once that one is gone", async () => {
    const org = freshOrg()
    // Due well beyond the 2 s horizon when both start: neither holds a timer for them yet.
    const dueAt = await placeOrders(org, 9_000)
    await withInstances({ sweepInterval: "1 hour", sweepBatch: 100, horizon: "2 seconds" }, async (a, b) => {
      for (const i of [a, b]) expect(await pending(i), i.label).toBe(0)
      // The replica that would have expired them stops before any is due; its sweep never runs again.
      await a.runtime.dispose()
      await eventually("every reservation expired", async () => (await expiredCount(org)) === N, 90_000)
      await settle(b)
      const { ids, byClient } = await assertExpiredOnce(org)
      // By b's timers, armed by its refill: its one sweep ran at start-up, before anything was due.
      expect(byClient).toEqual({ "scheduler-b": N })
      expect([...b.probe.timerAttempts].filter((id) => ids.has(id)).sort()).toEqual([...ids.keys()].sort())
      expect(b.probe.sweeps).toBe(1)
      // Not released before the deadline.
      const releases = (await look(outboxRowsOf(org))).filter((m) => m.event_type === "inventory.stock.released")
      for (const m of releases) expect(new Date(m.payload.timestamp).getTime()).toBeGreaterThanOrEqual(dueAt.getTime())
    })
  }, 180_000)

  it("a timer whose reservation another transaction holds tries again, and expires it once that one lets go", async () => {
    const org = freshOrg()
    const dueAt = await placeOrders(org, 5_000)
    // A transaction that holds o0's order and does nothing with it (a stuck group, say).
    const release = Promise.withResolvers<void>()
    const locked = Promise.withResolvers<void>()
    const holding = look(Effect.flatMap(SqlClient, (sql) =>
      sql.withTransaction(Effect.flatMap(Reservations, (r) => r.lockOrder(org, "o0")).pipe(
        Effect.andThen(Effect.sync(() => locked.resolve())),
        Effect.andThen(Effect.promise(() => release.promise))
      ))))
    await locked.promise
    await withInstances({ sweepInterval: "1 hour", sweepBatch: 100 }, async (a, b) => {
      await eventually("every other reservation expired", async () => (await expiredCount(org)) === N - 1, 90_000)
      // Well past the deadline, o0 is still held, so still active: skipped, not waited for.
      await eventually("three seconds past the deadline", () => Date.now() > dueAt.getTime() + 3_000 || undefined, 20_000)
      const o0 = (await look(reservationsOf(org, "o0")))[0]!
      expect(o0.status).toBe("active")
      // Asked again while held, each time after twice the wait (0.25, 0.5, 1, 2 s): a handful of
      // times in those three seconds, where a fixed 250 ms would have asked a dozen.
      for (const i of [a, b]) {
        const asked = i.probe.asked.get(o0.reservation_id) ?? 0
        expect(asked, i.label).toBeGreaterThanOrEqual(2)
        expect(asked, i.label).toBeLessThanOrEqual(7)
      }
      release.resolve()
      await holding
      // The timers that found it held try again and expire it; no sweep runs within the hour.
      await eventually("o0 expired", async () => (await expiredCount(org)) === N, 30_000)
      await Promise.all([settle(a), settle(b)])
      await assertExpiredOnce(org)
      expect(a.probe.sweeps + b.probe.sweeps).toBe(2)
    })
  }, 180_000)
})
