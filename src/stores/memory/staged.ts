import { Context, Effect, Exit, Layer, Stream } from "effect"
import { compareStockKeys, liveStatuses, type Reservation, stockKeyString, type StockRow, type Variant } from "../model.ts"
import {
  EventLog,
  FailedEvents,
  Movements,
  Outbox,
  Reconciliation,
  Reservations,
  Stock,
  StoreHealth,
  type Stores,
  UnitOfWork,
  Variants,
  Warehouses,
  WorkingSet,
  type WorkingSetChanges,
  type WorkingSetDemand,
  type WorkingSetRows
} from "../services.ts"
import { MemoryDatabase, type Tables } from "./MemoryDatabase.ts"
import { storesOn } from "./stores.ts"

const pair = (org: string, id: string) => `${org}\u0000${id}`

/** A store call reached beyond the rows its group loaded: the group cannot be applied in memory. */
export class OutsideWorkingSet extends Error {
  override readonly name = "OutsideWorkingSet"
}

type Undo = () => void

/**
 * A map that writes down how to take back each change, so one event's changes can be undone
 * alone, and keeps its keys grouped by `groupOf` (the order of a reservation, the variant of a
 * stock row) so the hot lookups need not scan every row of the group.
 */
class JournaledMap<V> extends Map<string, V> {
  journal: Array<Undo> | undefined
  readonly byGroup = new Map<string, Set<string>>()
  private readonly groupOf: (value: V) => string
  constructor(groupOf: (value: V) => string) {
    super()
    this.groupOf = groupOf
  }
  private added(key: string, value: V) {
    const g = this.groupOf(value)
    const keys = this.byGroup.get(g)
    if (keys === undefined) this.byGroup.set(g, new Set([key]))
    else keys.add(key)
  }
  private removed(key: string, value: V) {
    this.byGroup.get(this.groupOf(value))?.delete(key)
  }
  override set(key: string, value: V): this {
    const had = super.has(key)
    if (this.journal !== undefined) {
      const old = super.get(key)
      this.journal.push(had ? () => { super.set(key, old as V) } : () => {
        super.delete(key)
        this.removed(key, value)
      })
    }
    if (!had) this.added(key, value)
    return super.set(key, value)
  }
  override delete(key: string): boolean {
    if (!super.has(key)) return false
    const old = super.get(key) as V
    this.journal?.push(() => {
      super.set(key, old)
      this.added(key, old)
    })
    this.removed(key, old)
    return super.delete(key)
  }
  /** The values of one group, in the order their keys were added. */
  inGroup(group: string): Array<V> {
    const keys = this.byGroup.get(group)
    return keys === undefined ? [] : [...keys].map((k) => super.get(k)!)
  }
}

const journaled = <V>(journal: Array<Undo>, entries: Iterable<readonly [string, V]>, groupOf: (value: V) => string = () => ""): JournaledMap<V> => {
  const map = new JournaledMap<V>(groupOf)
  for (const [k, v] of entries) map.set(k, v)
  map.journal = journal
  return map
}

/**
 * One group's rows in memory: loaded once, changed by its events one at a time, written back
 * once (`changes`). What each event changed can be undone alone (`journal`).
 */
export interface StagedGroup {
  readonly tables: Tables
  /** `tables.stock` and `tables.reservations`, with their rows grouped by variant and by order. */
  readonly stock: JournaledMap<StockRow>
  readonly reservations: JournaledMap<Reservation>
  readonly journal: Array<Undo>
  readonly afterCommit: Array<Effect.Effect<void>>
  /** The event ids in `tables.outbox`. */
  readonly outboxIds: Set<string>
  readonly loaded: {
    readonly stock: ReadonlyMap<string, StockRow>
    readonly reservations: ReadonlyMap<string, Reservation>
    readonly variants: ReadonlyMap<string, Variant>
  }
  /** The events recorded on loading, by (organization, event id). */
  readonly recorded: ReadonlySet<string>
  readonly covers: {
    readonly organizations: ReadonlySet<string>
    readonly stockVariants: ReadonlySet<string>
    readonly catalog: ReadonlySet<string>
    readonly orders: ReadonlySet<string>
    readonly reservations: ReadonlySet<string>
    readonly events: ReadonlySet<string>
  }
}

const CurrentGroup = Context.Reference<StagedGroup | undefined>("inventory/stores/memory/CurrentGroup", {
  defaultValue: () => undefined
})

const outside = (what: string) => Effect.die(new OutsideWorkingSet(`${what} is outside the group's working set`))

/** Runs `call` when `covered` holds for the current group, else dies with `OutsideWorkingSet`. */
const guard = <A, E>(what: string, covered: (group: StagedGroup) => boolean, call: () => Effect.Effect<A, E>): Effect.Effect<A, E> =>
  Effect.flatMap(CurrentGroup, (group) => (group !== undefined && covered(group) ? call() : outside(what)))

/** Reads or changes the current group's rows directly when `covered` holds, else dies with `OutsideWorkingSet`. */
const onGroup = <A>(what: string, covered: (group: StagedGroup) => boolean, f: (group: StagedGroup) => A): Effect.Effect<A> =>
  Effect.flatMap(CurrentGroup, (group) => (group !== undefined && covered(group) ? Effect.sync(() => f(group)) : outside(what)))

const newestFirst = (a: Reservation, b: Reservation) => b.created_at.getTime() - a.created_at.getTime()

/**
 * The staged database: the memory stores' tables are the current group's, and a unit of work is
 * one event inside it: on failure its changes are undone from the journal, its after-commit work
 * is dropped; on success both stay, for the group's one real commit.
 */
const stagedDatabase = MemoryDatabase.of({
  atomically: (f) => Effect.flatMap(CurrentGroup, (group) => group === undefined ? outside("a store call") : Effect.sync(() => f(group.tables))),
  transaction: (effect) =>
    Effect.flatMap(CurrentGroup, (group) => {
      if (group === undefined) return outside("a unit of work")
      return Effect.suspend(() => {
        const mark = group.journal.length
        const movements = group.tables.movements.length
        const outbox = group.tables.outbox.length
        const hooks = group.afterCommit.length
        return Effect.onExit(effect, (exit) =>
          Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => {
            while (group.journal.length > mark) group.journal.pop()!()
            group.tables.movements.length = movements
            for (const m of group.tables.outbox.slice(outbox)) group.outboxIds.delete(m.event_id)
            group.tables.outbox.length = outbox
            group.afterCommit.length = hooks
          }))
      })
    }),
  afterCommit: (effect) =>
    Effect.flatMap(CurrentGroup, (group) => group === undefined ? outside("after-commit work") : Effect.sync(() => { group.afterCommit.push(effect) })),
  nextOutboxPosition: (() => {
    let position = 0
    return () => ++position
  })()
})

export interface Staged {
  /** A group over the rows `load` returned for `demand`. */
  begin(demand: WorkingSetDemand, rows: WorkingSetRows): StagedGroup
  /** Runs `effect` on the group's rows, with every store service staged. */
  run<A, E, R>(group: StagedGroup, effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, Exclude<R, Stores>>
  /** What the group's events changed, for `WorkingSet.save`. */
  changes(group: StagedGroup): WorkingSetChanges
}

/**
 * The handlers' store services over one group's rows (issue 18): the memory stores, on a staged
 * database, each call checked against what the group loaded. A call outside it (a row the
 * demand did not name) dies with `OutsideWorkingSet`, so the group falls back to applying its
 * events one at a time rather than answer from rows it never read.
 */
export const makeStaged: Effect.Effect<Staged> = Effect.gen(function*() {
  const memory = yield* Layer.build(storesOn.pipe(Layer.provide(Layer.succeed(MemoryDatabase, stagedDatabase)))).pipe(Effect.scoped)
  const stock = Context.get(memory, Stock)
  const reservations = Context.get(memory, Reservations)
  const variants = Context.get(memory, Variants)
  const warehouses = Context.get(memory, Warehouses)
  const eventLog = Context.get(memory, EventLog)
  const movements = Context.get(memory, Movements)

  const variantOf = (org: string, variantId: string) => (g: StagedGroup) => g.covers.stockVariants.has(pair(org, variantId))
  const variantsOf = (org: string, ids: ReadonlyArray<string>) => (g: StagedGroup) => ids.every((id) => g.covers.stockVariants.has(pair(org, id)))
  const organization = (org: string) => (g: StagedGroup) => g.covers.organizations.has(org)
  const order = (org: string, orderId: string) => (g: StagedGroup) => g.covers.orders.has(pair(org, orderId))
  const reservation = (org: string, id: string) => (g: StagedGroup) =>
    g.covers.reservations.has(pair(org, id)) || g.tables.reservations.has(pair(org, id))
  const event = (org: string, id: string) => (g: StagedGroup) => g.covers.events.has(pair(org, id))

  /** As the memory store's: refused when the order has a live reservation already, or the id exists. */
  const insert = (r: Reservation) =>
    onGroup("an order", order(r.organization_id, r.order_id), (g) => {
      const live = g.reservations.inGroup(pair(r.organization_id, r.order_id)).some((x) => liveStatuses.includes(x.status))
      if (live && liveStatuses.includes(r.status)) return false
      const k = pair(r.organization_id, r.reservation_id)
      if (g.reservations.has(k)) return false
      g.reservations.set(k, r)
      return true
    })

  const context = Context.make(UnitOfWork, Context.get(memory, UnitOfWork)).pipe(
    Context.add(Stock, Stock.of({
      // The memory store's reads, from the rows grouped by variant rather than a scan of all.
      forVariants: (org, ids) =>
        onGroup("stock rows", variantsOf(org, ids), (g) => [...new Set(ids)].flatMap((id) => g.stock.inGroup(pair(org, id))).sort(compareStockKeys)),
      candidates: (org, ids) =>
        onGroup("stock rows", (g) => variantsOf(org, ids)(g) && organization(org)(g), (g) =>
          [...new Set(ids)].flatMap((id) => g.stock.inGroup(pair(org, id)))
            .filter((row) => row.archived_at === null && g.tables.warehouses.get(pair(org, row.warehouse_id))?.active === true)
            .sort(compareStockKeys)),
      initialize: (org, id, warehouseIds, levels) => guard("stock rows", variantOf(org, id), () => stock.initialize(org, id, warehouseIds, levels)),
      reserve: (key, q) => guard("a stock row", variantOf(key.organization_id, key.variant_id), () => stock.reserve(key, q)),
      release: (key, q) => guard("a stock row", variantOf(key.organization_id, key.variant_id), () => stock.release(key, q)),
      ship: (key, q) => guard("a stock row", variantOf(key.organization_id, key.variant_id), () => stock.ship(key, q)),
      receive: (key, q, category) => guard("a stock row", variantOf(key.organization_id, key.variant_id), () => stock.receive(key, q, category)),
      adjust: (key, delta, category) => guard("a stock row", variantOf(key.organization_id, key.variant_id), () => stock.adjust(key, delta, category)),
      archive: (org, id) => guard("stock rows", variantOf(org, id), () => stock.archive(org, id)),
      list: () => outside("listing stock")
    })),
    Context.add(Reservations, Reservations.of({
      lockOrder: (org, id) => guard("an order", order(org, id), () => reservations.lockOrder(org, id)),
      lockById: (org, id) => guard("a reservation", reservation(org, id), () => reservations.lockById(org, id)),
      findById: (org, id) => guard("a reservation", reservation(org, id), () => reservations.findById(org, id)),
      findByOrder: (org, id) => onGroup("an order", order(org, id), (g) => g.reservations.inGroup(pair(org, id)).sort(newestFirst)),
      insert,
      transition: (org, id, from, to, reason) => guard("a reservation", reservation(org, id), () => reservations.transition(org, id, from, to, reason)),
      lockDue: () => outside("due reservations"),
      lockDueAmong: () => outside("due reservations"),
      activeSchedules: () => Stream.fromEffect(outside("reservation schedules")),
      list: () => outside("listing reservations")
    })),
    Context.add(Variants, Variants.of({
      get: (org, id) => guard("a variant", (g) => g.covers.catalog.has(pair(org, id)), () => variants.get(org, id)),
      upsert: (v) => guard("a variant", (g) => g.covers.catalog.has(pair(v.organization_id, v.variant_id)), () => variants.upsert(v))
    })),
    Context.add(Warehouses, Warehouses.of({
      list: (org) => guard("warehouses", organization(org), () => warehouses.list(org)),
      listActive: (org) => guard("warehouses", organization(org), () => warehouses.listActive(org)),
      upsert: () => outside("writing a warehouse"),
      setActive: () => outside("writing a warehouse")
    })),
    Context.add(EventLog, EventLog.of({
      record: (entry) => guard("an event", event(entry.organization_id, entry.event_id), () => eventLog.record(entry)),
      has: (org, id) => guard("an event", event(org, id), () => eventLog.has(org, id))
    })),
    Context.add(Movements, Movements.of({ append: movements.append, list: () => outside("listing movements") })),
    Context.add(Outbox, Outbox.of({
      // As the memory store's, each event id once, without its scan of every earlier message.
      append: (messages) =>
        Effect.flatMap(CurrentGroup, (group) => {
          if (group === undefined) return outside("the outbox")
          return Effect.sync(() => {
            for (const m of messages) {
              if (group.outboxIds.has(m.event_id)) continue
              group.outboxIds.add(m.event_id)
              group.tables.outbox.push({ ...m, position: 0, sent_at: null })
            }
          })
        }),
      pending: () => outside("the outbox"),
      markSent: () => outside("the outbox"),
      pendingCount: () => outside("the outbox"),
      purgeSent: () => outside("the outbox")
    })),
    Context.add(FailedEvents, FailedEvents.of({
      record: () => outside("dead letters"),
      get: () => outside("dead letters"),
      markCopied: () => outside("dead letters"),
      list: () => outside("dead letters"),
      markReplayed: () => outside("dead letters"),
      purge: () => outside("dead letters")
    })),
    Context.add(Reconciliation, Reconciliation.of({ check: () => outside("reconciliation") })),
    Context.add(StoreHealth, StoreHealth.of({ ping: outside("the store's health") })),
    Context.add(WorkingSet, WorkingSet.of({ load: () => outside("a nested working set"), save: () => outside("a nested working set") }))
  )

  const begin = (demand: WorkingSetDemand, rows: WorkingSetRows): StagedGroup => {
    const journal: Array<Undo> = []
    const recorded = new Set<string>()
    const present = new Map<string, (typeof demand.events)[number]>()
    demand.events.forEach((entry, i) => {
      const k = pair(entry.organization_id, entry.event_id)
      if (rows.recorded[i]) recorded.add(k)
      else present.set(k, entry)
    })
    // Recorded before this group: a duplicate. Recorded on loading: new, to record in its turn.
    for (const k of recorded) present.delete(k)
    const stock = new Map(rows.stock.map((row) => [stockKeyString(row), row] as const))
    const reservationsLoaded = new Map(rows.reservations.map((r) => [pair(r.organization_id, r.reservation_id), r] as const))
    const variantsLoaded = new Map(rows.variants.map((v) => [pair(v.organization_id, v.variant_id), v] as const))
    const stagedStock = journaled(journal, stock, (row) => pair(row.organization_id, row.variant_id))
    const stagedReservations = journaled(journal, reservationsLoaded, (r) => pair(r.organization_id, r.order_id))
    const tables: Tables = {
      warehouses: journaled(journal, rows.warehouses.map((w) => [pair(w.organization_id, w.warehouse_id), w] as const)),
      variants: journaled(journal, variantsLoaded),
      stock: stagedStock,
      reservations: stagedReservations,
      movements: [],
      eventLog: journaled(journal, present),
      outbox: [],
      failedEvents: journaled(journal, [])
    }
    return {
      tables,
      stock: stagedStock,
      reservations: stagedReservations,
      journal,
      afterCommit: [],
      outboxIds: new Set(),
      loaded: { stock, reservations: reservationsLoaded, variants: variantsLoaded },
      recorded,
      covers: {
        organizations: new Set(demand.organizations),
        stockVariants: new Set(rows.stockVariants.map((v) => pair(v.organization_id, v.variant_id))),
        catalog: new Set(demand.catalog.map((v) => pair(v.organization_id, v.variant_id))),
        orders: new Set(demand.orders.map((o) => pair(o.organization_id, o.order_id))),
        reservations: new Set([
          ...demand.reservations.map((r) => pair(r.organization_id, r.reservation_id)),
          ...reservationsLoaded.keys()
        ]),
        events: new Set(demand.events.map((e) => pair(e.organization_id, e.event_id)))
      }
    }
  }

  const changes = (group: StagedGroup): WorkingSetChanges => {
    const { tables, loaded } = group
    const stockUpdated: Array<StockRow> = []
    const stockCreated: Array<StockRow> = []
    for (const [k, row] of tables.stock) {
      const before = loaded.stock.get(k)
      if (before === undefined) stockCreated.push(row)
      else if (before !== row) stockUpdated.push(row)
    }
    const reservationsCreated: Array<Reservation> = []
    const reservationsChanged: Array<Reservation> = []
    for (const [k, r] of tables.reservations) {
      const before = loaded.reservations.get(k)
      if (before === undefined) reservationsCreated.push(r)
      else if (before !== r) reservationsChanged.push(r)
    }
    const variantsChanged = [...tables.variants].flatMap(([k, v]) => (loaded.variants.get(k) === v ? [] : [v]))
    const forget = [...group.recorded].flatMap((k) => {
      if (tables.eventLog.has(k)) return []
      const [organization_id, event_id] = k.split("\u0000") as [string, string]
      return [{ organization_id, event_id }]
    })
    return {
      stockUpdated,
      stockCreated,
      reservationsCreated,
      reservationsChanged,
      variants: variantsChanged,
      movements: tables.movements,
      outbox: tables.outbox.map(({ position: _, sent_at: __, ...message }) => message),
      forget
    }
  }

  return {
    begin,
    run: (group, effect) => effect.pipe(Effect.provideContext(context), Effect.provideService(CurrentGroup, group)) as never,
    changes
  }
})
