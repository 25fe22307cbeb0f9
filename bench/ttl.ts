/**
 * npm run bench:ttl — what the fiber-based TTL scheduler costs at scale (issue 5):
 *  1. 100,000 pending timers: time to schedule them and the resident memory they hold;
 *  2. start-up recovery of 100,000 active reservations from PostgreSQL: the time from building
 *     the scheduler (query + one timer each) to every timer pending;
 *  3. the same as the consumer runs it, with a timer horizon of 2 minutes (`RESERVATION_TIMER_HORIZON`)
 *     over 100,000 active reservations due across 15 minutes: only the slice due within the horizon
 *     is read and held, as each refill reads the next (the same read).
 *  4. `--phase expiry` (not in the default run): 2,000 reservations due at one instant, expired by 1
 *     and then by 3 scheduler instances (replicas, each with its own pool and the horizon), every
 *     one of which holds every timer: the timers' expiry transactions, the reservations they asked
 *     for, and the time to the last expiry.
 * Prints figures; asserts nothing. `--count N` changes the size.
 */
import { Context, Effect, Layer } from "effect"
import { spawnSync } from "node:child_process"
import { SqlClient } from "effect/sql/SqlClient"
import { Reservations, ReservationTimers, type Stores } from "../src/stores/services.ts"
import * as Scheduler from "../src/reservations/scheduler.ts"
import * as MemoryStores from "../src/stores/memory/stores.ts"
import * as SqlStores from "../src/stores/sql/index.ts"

const count = Number(process.argv[process.argv.indexOf("--count") + 1] ?? NaN) || 100_000
const url = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"
const schema = `bench_ttl_${process.pid}`
const mb = (bytes: number) => `${(bytes / 1024 / 1024).toFixed(1)} MB`
const gc = () => (globalThis as { gc?: () => void }).gc?.()
const rss = () => {
  gc()
  return process.memoryUsage().rss
}
const schedulerOptions = { sweepInterval: "1000 days", sweepBatch: 1000 } as const

const timers = Effect.scoped(Effect.gen(function*() {
  const context = yield* Layer.build(Scheduler.layer(schedulerOptions).pipe(Layer.provideMerge(MemoryStores.layer)))
  const scheduler = Context.get(context, ReservationTimers)
  const before = rss()
  const start = performance.now()
  const expiresAt = new Date(Date.now() + 3_600_000)
  for (let i = 0; i < count; i++) {
    yield* scheduler.schedule({ organization_id: "bench", reservation_id: `r${i}`, expires_at: expiresAt })
  }
  const elapsed = performance.now() - start
  const after = rss()
  console.log(`timers: scheduled ${yield* scheduler.pending} in ${elapsed.toFixed(0)} ms (${(count / elapsed * 1000).toFixed(0)}/s)`)
  console.log(`timers: resident memory ${mb(after)} (+${mb(after - before)} for ${count} timers, ${((after - before) / count).toFixed(0)} B each)`)
}))

/** `count` active reservations in a schema of their own, due `spreadMinutes` from now at most. */
const seededStores = (spreadMinutes: number, label: string) =>
  Effect.gen(function*() {
    const stores = yield* Layer.build(SqlStores.layerWithClient({ url, schema, poolSize: 4 }))
    const sql = Context.get(stores, SqlClient)
    yield* Effect.addFinalizer(() => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).pipe(Effect.ignore))
    const seeded = performance.now()
    yield* sql.unsafe(`
      INSERT INTO reservations (organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by)
      SELECT 'bench', 'r' || g, 'o' || g, 'active', now() + interval '1 minute' * ${spreadMinutes} * g / ${count}, now(), 'bench'
      FROM generate_series(1, ${count}) AS g`)
    yield* sql.unsafe("ANALYZE reservations")
    console.log(`${label}: seeded ${count} active reservations due within ${spreadMinutes} minutes in ${(performance.now() - seeded).toFixed(0)} ms`)
    return stores
  })

const recoveryWith = (options: Scheduler.SchedulerOptions, spreadMinutes: number, label: string) =>
  Effect.scoped(Effect.gen(function*() {
    const stores = yield* seededStores(spreadMinutes, label)
    const before = rss()
    const start = performance.now()
    const context = yield* Layer.build(Scheduler.layer(options).pipe(Layer.provide(Layer.succeedContext(stores))))
    const elapsed = performance.now() - start
    const pending = yield* Context.get(context, ReservationTimers).pending
    console.log(`${label}: ${pending} timers rescheduled in ${elapsed.toFixed(0)} ms; resident memory ${mb(rss())} (+${mb(process.memoryUsage().rss - before)})`)
  }))

const recovery = recoveryWith(schedulerOptions, 60, "recovery")
const horizon = recoveryWith({ ...schedulerOptions, horizon: "2 minutes" }, 15, "horizon")

/** The SQL stores on a pool of their own, counting the timers' expiry transactions and the reservations they asked for. */
const countedStores = (counted: { transactions: number; asked: number }) =>
  Layer.effectContext(Effect.gen(function*() {
    const context = yield* Effect.context<Stores>()
    const reservations = Context.get(context, Reservations)
    return Context.add(context, Reservations, Reservations.of({
      ...reservations,
      lockDueAmong: (refs, now) => Effect.suspend(() => {
        counted.transactions++
        counted.asked += refs.length
        return reservations.lockDueAmong(refs, now)
      })
    }))
  })).pipe(Layer.provide(SqlStores.layerWith({ url, schema, poolSize: 6 })))

const expiryBy = (replicas: number, due: number) =>
  Effect.scoped(Effect.gen(function*() {
    const stores = yield* Layer.build(SqlStores.layerWithClient({ url, schema, poolSize: 2 }))
    const sql = Context.get(stores, SqlClient)
    yield* Effect.addFinalizer(() => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).pipe(Effect.ignore))
    const dueAt = new Date(Date.now() + 4_000)
    yield* sql`
      INSERT INTO reservations (organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by)
      SELECT 'bench', 'r' || g, 'o' || g, 'active', ${dueAt}, now(), 'bench' FROM generate_series(1, ${due}) AS g`
    const counted = { transactions: 0, asked: 0 }
    const instances = yield* Effect.forEach(Array.from({ length: replicas }), () =>
      Layer.build(Scheduler.layer({ ...schedulerOptions, horizon: "2 minutes" }).pipe(Layer.provide(countedStores(counted)))))
    for (const context of instances) {
      const held = yield* Context.get(context, ReservationTimers).pending
      if (held !== due) throw new Error(`a replica holds ${held} timers, not ${due}`)
    }
    for (;;) {
      const [row] = yield* sql<{ readonly n: number }>`SELECT count(*)::int AS n FROM reservations WHERE status = 'active'`
      if (row!.n === 0) break
      yield* Effect.sleep("10 millis")
    }
    const lastExpiry = Date.now() - dueAt.getTime()
    for (const context of instances) yield* Context.get(context, ReservationTimers).settled
    console.log(`expiry: ${replicas} replica${replicas === 1 ? "" : "s"}: ${due} reservations expired, the last ${lastExpiry} ms after their deadline; ${counted.transactions} expiry transactions asking for ${counted.asked} reservations (${(counted.asked / due).toFixed(2)} per reservation)`)
  }))

const expiry = Effect.gen(function*() {
  const due = process.argv.includes("--count") ? count : 2_000
  for (const replicas of [1, 3, 1, 3]) yield* expiryBy(replicas, due)
})

const phases = { timers, recovery, horizon, expiry } as const
const phase = process.argv[process.argv.indexOf("--phase") + 1]

if (phase === "timers" || phase === "recovery" || phase === "horizon" || phase === "expiry") {
  Effect.runPromise(phases[phase]).then(
    () => console.log(`${phase}: peak resident memory of the process ${mb(process.resourceUsage().maxRSS * 1024)}`),
    (error) => {
      console.error(error)
      process.exit(1)
    }
  )
} else {
  // Each phase in its own process, so each memory figure is its own.
  console.log(`bench:ttl  count=${count}  node ${process.version}`)
  for (const p of ["timers", "recovery", "horizon"]) {
    const child = spawnSync(process.execPath, ["--expose-gc", import.meta.filename, "--phase", p, "--count", String(count)], {
      stdio: ["ignore", "pipe", "inherit"],
      encoding: "utf8"
    })
    process.stdout.write(child.stdout.split("\n").filter((line) => !line.includes("INFO")).join("\n"))
    if (child.status !== 0) process.exit(child.status ?? 1)
  }
}
