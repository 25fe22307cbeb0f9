/**
 * npm run bench:apply — CPU per event of the apply side alone (issue 18): `applyGroup` over a
 * working set kept in plain maps (loading and saving cost next to nothing), so no I/O, no broker,
 * no decoding: what the handlers, the staged stores and the Effect runtime cost per event. Lifecycle events (placed, confirmed, shipped, one in ten
 * cancelled) in groups of --group (default 256), --orders orders (default 5,000) per round,
 * --rounds rounds (default 5; the first warms the JIT up and is not counted).
 *
 *   npm run bench:apply
 *   npm run bench:apply -- --group 64 --profile /tmp/apply-prof     also writes a V8 CPU profile there
 *   npm run bench:apply -- --heap-profile /tmp/apply.heapprofile    and what is allocated per event (sampled)
 */
import { Context, Effect, Layer, Option } from "effect"
import { Session } from "node:inspector/promises"
import { mkdirSync, writeFileSync } from "node:fs"
import { inboundEventTypes } from "../src/domain/events.ts"
import { applyGroup, type GroupEvent } from "../src/pipeline/batch.ts"
import { decodeDelivery } from "../src/pipeline/decode.ts"
import * as Scheduler from "../src/reservations/scheduler.ts"
import * as MemoryStores from "../src/stores/memory/stores.ts"
import type { Reservation, StockRow } from "../src/stores/model.ts"
import { UnitOfWork, WorkingSet } from "../src/stores/services.ts"

const argv = process.argv
const arg = (name: string, fallback: number) => (argv.includes(`--${name}`) ? Number(argv[argv.indexOf(`--${name}`) + 1]) : fallback)
const GROUP = arg("group", 256)
const ORDERS = arg("orders", 5_000)
const ROUNDS = arg("rounds", 5)
const PROFILE = argv.includes("--profile") ? argv[argv.indexOf("--profile") + 1] : undefined
/** A sampled allocation profile (every allocation, collected or not) of the first counted round. */
const HEAP_PROFILE = argv.includes("--heap-profile") ? argv[argv.indexOf("--heap-profile") + 1] : undefined
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
const round = (r: number) =>
  Effect.gen(function*() {
    const orders = Array.from({ length: ORDERS }, (_, i) => `o${r}_${i}`)
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

const program = Effect.gen(function*() {
  const uow = yield* UnitOfWork
  const session = new Session()
  session.connect()
  for (let r = 0; r < ROUNDS; r++) {
    const stages = yield* round(r)
    if (r === 1 && PROFILE !== undefined) {
      yield* Effect.promise(() => session.post("Profiler.enable"))
      yield* Effect.promise(() => session.post("Profiler.start"))
    }
    if (r === 1 && HEAP_PROFILE !== undefined) {
      yield* Effect.promise(() =>
        session.post("HeapProfiler.startSampling", { samplingInterval: 4096, includeObjectsCollectedByMajorGC: true, includeObjectsCollectedByMinorGC: true })
      )
    }
    const start = process.cpuUsage()
    let events = 0
    for (const stage of stages) {
      for (let i = 0; i < stage.length; i += GROUP) {
        const group: Array<GroupEvent> = stage.slice(i, i + GROUP).map((decoded) => ({ decoded, parent: Option.none() }))
        const results = yield* uow.transaction(applyGroup(group))
        if (results.some((x) => typeof x !== "string")) throw new Error(`refused: ${JSON.stringify(results.find((x) => typeof x !== "string"))}`)
        events += group.length
      }
    }
    const used = process.cpuUsage(start)
    if (r > 0) console.log(`round ${r}: ${events} events in groups of ${GROUP}: ${((used.user + used.system) / events).toFixed(1)} µs of CPU per event`)
    if (r === 1 && HEAP_PROFILE !== undefined) {
      const { profile } = yield* Effect.promise(() => session.post("HeapProfiler.stopSampling"))
      writeFileSync(HEAP_PROFILE, JSON.stringify(profile))
      const total = (node: { selfSize: number; children: ReadonlyArray<never> }): number => node.selfSize + node.children.reduce((sum, c) => sum + total(c), 0)
      console.log(`allocated (sampled): ${(total(profile.head as never) / events / 1024).toFixed(1)} KB per event; profile: ${HEAP_PROFILE}`)
    }
  }
  if (PROFILE !== undefined) {
    const { profile } = yield* Effect.promise(() => session.post("Profiler.stop"))
    mkdirSync(PROFILE, { recursive: true })
    writeFileSync(`${PROFILE}/apply.cpuprofile`, JSON.stringify(profile))
    console.log(`profile: ${PROFILE}/apply.cpuprofile`)
  }
})

Effect.runPromise(program.pipe(
  // The reservation timers are the real scheduler's (its recovery reads the memory stores, empty).
  Effect.provide(Layer.mergeAll(plainMaps, plainUnits).pipe(
    Layer.provideMerge(Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 })),
    Layer.provideMerge(MemoryStores.layer)
  )),
  Effect.scoped
)).catch((error) => {
  console.error(error)
  process.exit(1)
})
