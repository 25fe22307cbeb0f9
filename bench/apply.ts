/**
 * npm run bench:apply — CPU per event of the apply side alone (issue 18): `applyGroup` over a
 * working set kept in plain maps (loading and saving cost next to nothing), so no I/O, no broker,
 * no decoding: what the handlers, the staged stores and the Effect runtime cost per event. Lifecycle events (placed, confirmed, shipped, one in ten
 * cancelled) in groups of --group (default 256), --orders orders (default 5,000) per round,
 * --rounds rounds (default 5; the first warms the JIT up and is not counted).
 *
 * With --postgres the working set and the unit of work are the real ones, on PostgreSQL
 * (`DATABASE_URL`, a schema of its own, dropped at the end): this process's CPU is then what a
 * group costs the consumer, its statements included, without the broker, the relay or PostgreSQL's
 * own work. --group takes a list of sizes, each run in every round, and the CPU per group is fitted
 * as a fixed part per group plus a part per event: why small groups, at a held rate, cost more
 * per event than full ones (default orders 2,000 there).
 *
 *   npm run bench:apply
 *   npm run bench:apply -- --group 64 --profile /tmp/apply-prof     also writes a V8 CPU profile there
 *   npm run bench:apply -- --heap-profile /tmp/apply.heapprofile    and what is allocated per event (sampled)
 *   npm run bench:apply -- --postgres --group 1,8,37,256             per group and per event, on PostgreSQL
 *   npm run bench:apply -- --group 37 --gap 20                       idle 20 ms after each group, as at a held
 *                                                                    rate: the same work's CPU when the machine
 *                                                                    idles between groups (see bench:host)
 */
import { Context, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Session } from "node:inspector/promises"
import { mkdirSync, writeFileSync } from "node:fs"
import { parseArgs } from "node:util"
import { inboundEventTypes } from "../src/domain/events.ts"
import { applyGroup, type GroupEvent } from "../src/pipeline/batch.ts"
import { decodeDelivery } from "../src/pipeline/decode.ts"
import * as Scheduler from "../src/reservations/scheduler.ts"
import * as MemoryStores from "../src/stores/memory/stores.ts"
import * as SqlStores from "../src/stores/sql/index.ts"
import type { Reservation, StockRow } from "../src/stores/model.ts"
import { type ReservationTimers, UnitOfWork, WorkingSet } from "../src/stores/services.ts"
import { number, numbers } from "./args.ts"
import { median } from "./stats.ts"

const { values: flags } = parseArgs({
  options: {
    postgres: { type: "boolean", default: false },
    group: { type: "string", default: "256" },
    orders: { type: "string" },
    rounds: { type: "string", default: "5" },
    profile: { type: "string" },
    "heap-profile": { type: "string" },
    gap: { type: "string", default: "0" }
  }
})
const POSTGRES = flags.postgres
const GROUPS = numbers("group", flags.group)
if (GROUPS.includes(0)) throw new Error("--group takes sizes > 0")
const ORDERS = flags.orders === undefined ? (POSTGRES ? 2_000 : 5_000) : number("orders", flags.orders)
const ROUNDS = number("rounds", flags.rounds)
const PROFILE = flags.profile
/** A sampled allocation profile (every allocation, collected or not) of the first counted round. */
const HEAP_PROFILE = flags["heap-profile"]
/** Milliseconds of idle time after each group, as a held rate leaves between groups. */
const GAP = number("gap", flags.gap)
const VARIANTS = 1_000
const ORG = "bench_org"

const encoder = new TextEncoder()
let seq = 0
const decode = (event: string, data: unknown) =>
  decodeDelivery({
    body: encoder.encode(JSON.stringify({ event, version: "1.0", timestamp: new Date().toISOString(), organization_id: ORG, event_id: `e${++seq}`, data })),
    deliveryCount: 1,
    queue: "bench",
    accepts: inboundEventTypes
  }).pipe(Effect.orDie)

/** One round's events, by stage: every order placed, then confirmed, then shipped or cancelled. */
const round = (tag: string) =>
  Effect.gen(function*() {
    const orders = Array.from({ length: ORDERS }, (_, i) => `o${tag}_${i}`)
    const items = new Map(orders.map((o) => [o, Array.from({ length: 1 + (o.length % 3) }, (_, k) => ({ variant_id: `v${(o.length * 7919 + k * 104_729 + seq) % VARIANTS}`, quantity: 1 }))]))
    const placed = yield* Effect.forEach(orders, (o) => decode("order.placed", { order_id: o, customer_id: "c", items: items.get(o)!.map((i) => ({ ...i, preferred_warehouse_id: "wh_1" })) }))
    const confirmed = yield* Effect.forEach(orders, (o) => decode("order.confirmed", { order_id: o }))
    const closed = yield* Effect.forEach(orders, (o, i) =>
      i % 10 === 0
        ? decode("order.cancelled", { order_id: o, cancellation_reason: "customer" })
        : decode("order.shipped", { order_id: o, shipment_id: `s${o}`, shipped_items: items.get(o)!.map((it) => ({ ...it, warehouse_id: "wh_1" })) }))
    return [placed, confirmed, closed]
  })

/** The bench's database: plain maps, one organization, one warehouse. */
const stock = new Map<string, StockRow>()
const reservations = new Map<string, Array<Reservation>>()
const logged = new Set<string>()
for (let v = 0; v < VARIANTS; v++) {
  stock.set(`v${v}`, {
    organization_id: ORG, variant_id: `v${v}`, warehouse_id: "wh_1", total: 1e9, available: 1e9, reserved: 0, damaged: 0, in_transit: 0,
    min_stock: 0, max_stock: 999_999, stock_strategy: "FIFO", archived_at: null
  })
}
const plainMaps = Layer.succeed(WorkingSet, WorkingSet.of({
  load: (demand) =>
    Effect.sync(() => {
      const recorded = demand.events.map((e) => !logged.has(e.event_id) && logged.add(e.event_id) !== undefined)
      const held = demand.orders.flatMap((o) => reservations.get(o.order_id) ?? [])
      const variants = new Set([...demand.variants.map((v) => v.variant_id), ...held.flatMap((r) => r.items.map((i) => i.variant_id))])
      return {
        recorded,
        warehouses: [{ organization_id: ORG, warehouse_id: "wh_1", name: "one", active: true }],
        variants: [],
        stock: [...variants].sort().flatMap((v) => (stock.has(v) ? [stock.get(v)!] : [])),
        reservations: held,
        stockVariants: [...variants].map((variant_id) => ({ organization_id: ORG, variant_id }))
      }
    }),
  save: (changes) =>
    Effect.sync(() => {
      for (const row of [...changes.stockUpdated, ...changes.stockCreated]) stock.set(row.variant_id, row)
      for (const r of changes.reservationsCreated) reservations.set(r.order_id, [...(reservations.get(r.order_id) ?? []), r])
      for (const r of changes.reservationsChanged) {
        reservations.set(r.order_id, reservations.get(r.order_id)!.map((x) => (x.reservation_id === r.reservation_id ? r : x)))
      }
      for (const e of changes.forget) logged.delete(e.event_id)
    })
}))
/** A unit of work that only runs its after-commit work. */
const plainUnits = Layer.effect(UnitOfWork, Effect.sync(() => {
  const Hooks = Context.Reference<Array<Effect.Effect<void>> | undefined>("bench/Hooks", { defaultValue: () => undefined })
  return UnitOfWork.of({
    transaction: (effect) =>
      Effect.flatMap(Hooks, (outer) => {
        if (outer !== undefined) return effect
        const hooks: Array<Effect.Effect<void>> = []
        return effect.pipe(Effect.provideService(Hooks, hooks), Effect.tap(() => Effect.forEach(hooks, (h) => h, { discard: true })))
      }),
    afterCommit: (effect) => Effect.flatMap(Hooks, (hooks) => (hooks === undefined ? effect : Effect.sync(() => { hooks.push(effect) })))
  })
}))

/** The bench's database on PostgreSQL: one organization, one warehouse, the same stock. */
const seedPostgres = Effect.gen(function*() {
  const sql = yield* SqlClient
  yield* sql`INSERT INTO warehouses (organization_id, warehouse_id, name, active) VALUES (${ORG}, 'wh_1', 'wh_1', true)`
  yield* sql`INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
    SELECT ${ORG}, 'v' || v, 'wh_1', 1000000000, 1000000000 FROM generate_series(0, ${VARIANTS - 1}) v`
})

/** Least squares over the sizes: CPU per group = fixed + per event × size. */
const fit = (points: ReadonlyArray<readonly [size: number, cpuMs: number]>) => {
  const n = points.length
  const mx = points.reduce((a, [x]) => a + x, 0) / n
  const my = points.reduce((a, [, y]) => a + y, 0) / n
  const slope = points.reduce((a, [x, y]) => a + (x - mx) * (y - my), 0) / points.reduce((a, [x]) => a + (x - mx) ** 2, 0)
  return { perGroupMs: my - slope * mx, perEventUs: slope * 1000 }
}

const program = Effect.gen(function*() {
  const uow = yield* UnitOfWork
  const session = new Session()
  session.connect()
  const perGroup = new Map<number, Array<number>>(GROUPS.map((size) => [size, []]))
  const sql = yield* Effect.serviceOption(SqlClient)
  for (let r = 0; r < ROUNDS; r++) {
    for (const size of GROUPS) {
      const stages = yield* round(`${r}_${size}`)
      const first = r === 1 && size === GROUPS[0]
      if (first && PROFILE !== undefined) {
        yield* Effect.promise(() => session.post("Profiler.enable"))
        yield* Effect.promise(() => session.post("Profiler.start"))
      }
      if (first && HEAP_PROFILE !== undefined) {
        yield* Effect.promise(() =>
          session.post("HeapProfiler.startSampling", { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
        )
      }
      const start = process.cpuUsage()
      const startedAt = performance.now()
      let events = 0
      let groups = 0
      for (const stage of stages) {
        for (let i = 0; i < stage.length; i += size) {
          const group: Array<GroupEvent> = stage.slice(i, i + size).map((decoded) => ({ decoded, parent: Option.none() }))
          const results = yield* uow.transaction(applyGroup(group))
          if (results.some((x) => typeof x !== "string")) throw new Error(`refused: ${JSON.stringify(results.find((x) => typeof x !== "string"))}`)
          events += group.length
          groups++
          if (GAP > 0) yield* Effect.sleep(GAP)
        }
      }
      const used = process.cpuUsage(start)
      const cpuUs = used.user + used.system
      if (r > 0) {
        perGroup.get(size)!.push(cpuUs / groups / 1000)
        console.log(
          `round ${r}: ${events} events in groups of ${size}: ${(cpuUs / events).toFixed(1)} µs of CPU per event` +
            (POSTGRES ? `, ${(cpuUs / groups / 1000).toFixed(2)} ms per group (${((performance.now() - startedAt) / groups).toFixed(2)} ms of wall time)` : "")
        )
      }
      if (first && HEAP_PROFILE !== undefined) {
        const { profile } = yield* Effect.promise(() => session.post("HeapProfiler.stopSampling"))
        writeFileSync(HEAP_PROFILE, JSON.stringify(profile))
        const total = (node: { selfSize: number; children: ReadonlyArray<never> }): number => node.selfSize + node.children.reduce((sum, c) => sum + total(c), 0)
        console.log(`allocated (sampled): ${(total(profile.head as never) / events / 1024).toFixed(1)} KB per event; profile: ${HEAP_PROFILE}`)
      }
    }
    // Statistics once the warm-up round wrote rows, as autovacuum would have them: plans made on
    // empty tables scan them as they grow (docs/throughput.md).
    if (r === 0 && Option.isSome(sql)) yield* sql.value`ANALYZE`
  }
  if (PROFILE !== undefined) {
    const { profile } = yield* Effect.promise(() => session.post("Profiler.stop"))
    mkdirSync(PROFILE, { recursive: true })
    writeFileSync(`${PROFILE}/apply.cpuprofile`, JSON.stringify(profile))
    console.log(`profile: ${PROFILE}/apply.cpuprofile`)
  }
  if (POSTGRES && GROUPS.length > 1 && ROUNDS > 1) {
    const { perEventUs, perGroupMs } = fit(GROUPS.map((size) => [size, median(perGroup.get(size)!)] as const))
    console.log(`fitted over the sizes (medians of the rounds): ${perGroupMs.toFixed(2)} ms of CPU per group + ${perEventUs.toFixed(1)} µs per event`)
  }
})

/** Handlers' reservation timers are the real scheduler's, over whichever stores the run uses. */
const timers = Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 })
const schema = `bench_apply_${process.pid}`
const postgres = Layer.effectDiscard(seedPostgres).pipe(
  Layer.provideMerge(SqlStores.layerWithClient({ url: process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres", schema, poolSize: 10 })),
  // Dropped when the run ends, however it ends.
  Layer.tap((context) => Effect.addFinalizer(() => Effect.ignore(Context.get(context, SqlClient).unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))))
)

// The reservation timers' recovery reads the stores: empty ones.
const stores: Layer.Layer<UnitOfWork | WorkingSet | ReservationTimers, unknown> = POSTGRES
  ? timers.pipe(Layer.provideMerge(postgres))
  : Layer.mergeAll(plainMaps, plainUnits).pipe(Layer.provideMerge(timers), Layer.provideMerge(MemoryStores.layer))

Effect.runPromise(program.pipe(
  Effect.provide(stores),
  Effect.scoped
)).catch((error) => {
  console.error(error)
  process.exit(1)
})
