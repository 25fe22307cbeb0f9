import { Clock, Effect, Layer, Option, Stream } from "effect"
import {
  compareStockKeys,
  type EventLogEntry,
  type FailedEvent,
  liveStatuses,
  type Reservation,
  type StockCategory,
  type StockKey,
  stockKeyString,
  type StockRow
} from "../model.ts"
import {
  EventLog,
  type FailedEventPosition,
  FailedEvents,
  type ListedFailedEvent,
  Movements,
  Outbox,
  Reconciliation,
  Reservations,
  Stock,
  StoreHealth,
  UnitOfWork,
  Variants,
  Warehouses,
  type Violation,
  WorkingSet,
  type WorkingSetRows
} from "../services.ts"
import { DatabaseError } from "../../domain/errors.ts"
import { MemoryDatabase, type Tables } from "./MemoryDatabase.ts"

const pair = (org: string, id: string) => `${org}\u0000${id}`

/** A broken invariant is a bug in the caller, not a transient failure: it dies loudly. */
const invariant = (condition: boolean, message: string) => {
  if (!condition) throw new Error(`memory store invariant: ${message}`)
}

const newRow = (key: StockKey, levels = { min: 0, max: 999_999 }): StockRow => ({
  ...key,
  total: 0,
  available: 0,
  reserved: 0,
  damaged: 0,
  in_transit: 0,
  min_stock: levels.min,
  max_stock: levels.max,
  stock_strategy: "FIFO",
  archived_at: null
})

const matches = (row: StockKey, filter: { organization_id?: string; variant_id?: string; warehouse_id?: string }) =>
  (filter.organization_id === undefined || row.organization_id === filter.organization_id) &&
  (filter.variant_id === undefined || row.variant_id === filter.variant_id) &&
  (filter.warehouse_id === undefined || row.warehouse_id === filter.warehouse_id)

const UnitOfWorkMemory = Layer.effect(
  UnitOfWork,
  Effect.map(MemoryDatabase, (db) =>
    UnitOfWork.of({
      transaction: (effect) => db.transaction(effect),
      afterCommit: (effect) => db.afterCommit(effect)
    }))
)

const WarehousesMemory = Layer.effect(
  Warehouses,
  Effect.map(MemoryDatabase, ({ atomically }) =>
    Warehouses.of({
      upsert: (w) => atomically((t) => { t.warehouses.set(pair(w.organization_id, w.warehouse_id), w) }),
      setActive: (org, id, active) =>
        atomically((t) => {
          const w = t.warehouses.get(pair(org, id))
          if (w === undefined) return false
          t.warehouses.set(pair(org, id), { ...w, active })
          return true
        }),
      list: (org) =>
        atomically((t) => [...t.warehouses.values()].filter((w) => w.organization_id === org).sort((a, b) => a.warehouse_id < b.warehouse_id ? -1 : 1)),
      listActive: (org) =>
        atomically((t) => [...t.warehouses.values()].filter((w) => w.organization_id === org && w.active).sort((a, b) => a.warehouse_id < b.warehouse_id ? -1 : 1))
    }))
)

const VariantsMemory = Layer.effect(
  Variants,
  Effect.map(MemoryDatabase, ({ atomically }) =>
    Variants.of({
      get: (org, id) => atomically((t) => Option.fromNullishOr(t.variants.get(pair(org, id)))),
      upsert: (v) => atomically((t) => { t.variants.set(pair(v.organization_id, v.variant_id), v) })
    }))
)

const StockMemory = Layer.effect(
  Stock,
  Effect.map(MemoryDatabase, ({ atomically }) => {
    const update = (t: Tables, row: StockRow) => {
      invariant(
        row.total === row.available + row.reserved + row.damaged &&
          row.available >= 0 && row.reserved >= 0 && row.damaged >= 0 && row.in_transit >= 0,
        `row ${stockKeyString(row)} would break total = available + reserved + damaged`
      )
      t.stock.set(stockKeyString(row), row)
      return row
    }
    const add = (row: StockRow, quantity: number, category: StockCategory): StockRow =>
      category === "available"
        ? { ...row, available: row.available + quantity, total: row.total + quantity, archived_at: null }
        : { ...row, damaged: row.damaged + quantity, total: row.total + quantity, archived_at: null }

    return Stock.of({
      forVariants: (org, variantIds) =>
        atomically((t) => {
          const wanted = new Set(variantIds)
          return [...t.stock.values()]
            .filter((row) => row.organization_id === org && wanted.has(row.variant_id))
            .sort(compareStockKeys)
        }),
      candidates: (org, variantIds) =>
        atomically((t) => {
          const wanted = new Set(variantIds)
          return [...t.stock.values()]
            .filter((row) =>
              row.organization_id === org && wanted.has(row.variant_id) && row.archived_at === null &&
              t.warehouses.get(pair(org, row.warehouse_id))?.active === true
            )
            .sort(compareStockKeys)
        }),
      initialize: (org, variantId, warehouseIds, levels) =>
        atomically((t) => {
          let created = 0
          for (const warehouse_id of warehouseIds) {
            const key = { organization_id: org, variant_id: variantId, warehouse_id }
            const existing = t.stock.get(stockKeyString(key))
            if (existing === undefined) {
              update(t, newRow(key, levels))
              created++
            } else if (existing.archived_at !== null && existing.total === 0 && existing.in_transit === 0) {
              update(t, { ...existing, archived_at: null })
            }
          }
          return created
        }),
      reserve: (key, quantity) =>
        atomically((t) => {
          const row = t.stock.get(stockKeyString(key))
          if (row === undefined || row.archived_at !== null || row.available < quantity) return Option.none()
          return Option.some(update(t, { ...row, available: row.available - quantity, reserved: row.reserved + quantity }))
        }),
      release: (key, quantity) =>
        atomically((t) => {
          const row = t.stock.get(stockKeyString(key))
          invariant(row !== undefined && row.reserved >= quantity, `release ${quantity} from ${stockKeyString(key)}`)
          return update(t, { ...row!, available: row!.available + quantity, reserved: row!.reserved - quantity })
        }),
      ship: (key, quantity) =>
        atomically((t) => {
          const before = t.stock.get(stockKeyString(key))
          invariant(before !== undefined && before.reserved >= quantity, `ship ${quantity} from ${stockKeyString(key)}`)
          const after = update(t, { ...before!, reserved: before!.reserved - quantity, total: before!.total - quantity })
          return { before: before!, after }
        }),
      receive: (key, quantity, category) =>
        atomically((t) => {
          const before = t.stock.get(stockKeyString(key)) ?? newRow(key)
          const after = update(t, add(before, quantity, category))
          return { before, after }
        }),
      adjust: (key, delta, category) =>
        atomically((t) => {
          const before = t.stock.get(stockKeyString(key)) ?? newRow(key)
          const after = add(before, delta, category)
          if (after.available < 0 || after.damaged < 0) return Option.none()
          update(t, after)
          return Option.some({ before, after })
        }),
      archive: (org, variantId) =>
        Effect.flatMap(
          Effect.clockWith((clock) => Effect.succeed(new Date(clock.currentTimeMillisUnsafe()))),
          (now) =>
            atomically((t) => {
              let archived = 0
              for (const row of t.stock.values()) {
                if (row.organization_id === org && row.variant_id === variantId && row.archived_at === null) {
                  invariant(row.total === 0 && row.in_transit === 0, `archive non-empty row ${stockKeyString(row)}`)
                  update(t, { ...row, archived_at: now })
                  archived++
                }
              }
              return archived
            })
        ),
      list: (filter) => atomically((t) => [...t.stock.values()].filter((row) => matches(row, filter)).sort(compareStockKeys))
    })
  })
)

const ReservationsMemory = Layer.effect(
  Reservations,
  Effect.map(MemoryDatabase, ({ atomically }) => {
    const newestFirst = (a: Reservation, b: Reservation) => b.created_at.getTime() - a.created_at.getTime()
    const insert = (reservation: Reservation) =>
      atomically((t) => {
        const live = [...t.reservations.values()].some((r) =>
          r.organization_id === reservation.organization_id && r.order_id === reservation.order_id &&
          liveStatuses.includes(r.status)
        )
        if (live && liveStatuses.includes(reservation.status)) return false
        const k = pair(reservation.organization_id, reservation.reservation_id)
        if (t.reservations.has(k)) return false
        t.reservations.set(k, reservation)
        return true
      })
    return Reservations.of({
      // Units of work are serialised already: holding the order is implied.
      lockOrder: () => Effect.void,
      lockById: (org, id) => atomically((t) => Option.fromNullishOr(t.reservations.get(pair(org, id)))),
      findById: (org, id) => atomically((t) => Option.fromNullishOr(t.reservations.get(pair(org, id)))),
      findByOrder: (org, orderId) =>
        atomically((t) =>
          [...t.reservations.values()].filter((r) => r.organization_id === org && r.order_id === orderId).sort(newestFirst)
        ),
      insert,
      transition: (org, id, from, to, reason) =>
        atomically((t) => {
          const r = t.reservations.get(pair(org, id))
          if (r === undefined || !from.includes(r.status)) return false
          t.reservations.set(pair(org, id), { ...r, status: to, closed_reason: reason ?? r.closed_reason })
          return true
        }),
      lockDue: (now, limit) =>
        atomically((t) =>
          [...t.reservations.values()]
            .filter((r) => r.status === "active" && r.expires_at !== null && r.expires_at <= now)
            .sort((a, b) => a.expires_at!.getTime() - b.expires_at!.getTime())
            .slice(0, limit)
        ),
      // One process, one unit of work at a time: nothing is ever held by another, so nothing is busy.
      lockDueAmong: (refs, now) =>
        atomically((t) => ({
          claimed: refs.flatMap((ref) => {
            const r = t.reservations.get(pair(ref.organization_id, ref.reservation_id))
            return r !== undefined && r.status === "active" && r.expires_at !== null && r.expires_at <= now ? [r] : []
          }),
          busy: []
        })),
      activeSchedules: (due) =>
        Stream.unwrap(atomically((t) => {
          const inSlice = (at: Date) => due === undefined || (at <= due.upTo && (due.after === null || at > due.after))
          return Stream.fromIterable(
            [...t.reservations.values()]
              .filter((r) => r.status === "active" && r.expires_at !== null && inSlice(r.expires_at))
              .map((r) => ({ organization_id: r.organization_id, reservation_id: r.reservation_id, expires_at: r.expires_at! }))
          )
        })),
      list: (filter) =>
        atomically((t) =>
          [...t.reservations.values()]
            .filter((r) =>
              r.organization_id === filter.organization_id &&
              (filter.order_id === undefined || r.order_id === filter.order_id) &&
              (filter.status === undefined || r.status === filter.status)
            )
            .sort(newestFirst)
        )
    })
  })
)

const MovementsMemory = Layer.effect(
  Movements,
  Effect.map(MemoryDatabase, ({ atomically }) =>
    Movements.of({
      append: (movements) => atomically((t) => { t.movements.push(...movements) }),
      list: (filter) => atomically((t) => t.movements.filter((m) => matches(m, filter)))
    }))
)

/** False when the event was recorded before. */
const recordIn = (t: Tables, entry: EventLogEntry) => {
  const k = pair(entry.organization_id, entry.event_id)
  if (t.eventLog.has(k)) return false
  t.eventLog.set(k, entry)
  return true
}

const EventLogMemory = Layer.effect(
  EventLog,
  Effect.map(MemoryDatabase, ({ atomically }) =>
    EventLog.of({
      record: (entry) => atomically((t) => recordIn(t, entry)),
      has: (org, eventId) => atomically((t) => t.eventLog.has(pair(org, eventId)))
    }))
)

const OutboxMemory = Layer.effect(
  Outbox,
  Effect.map(MemoryDatabase, ({ atomically, nextOutboxPosition }) =>
    Outbox.of({
      append: (messages) =>
        atomically((t) => {
          for (const m of messages) {
            if (t.outbox.some((o) => o.event_id === m.event_id)) continue
            t.outbox.push({ ...m, position: nextOutboxPosition(), sent_at: null })
          }
        }),
      pending: (limit) =>
        atomically((t) => t.outbox.filter((m) => m.sent_at === null).slice(0, limit).map(({ sent_at: _, ...m }) => m)),
      markSent: (positions) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          atomically((t) => {
            const done = new Set(positions)
            t.outbox.forEach((m, i) => {
              if (done.has(m.position) && m.sent_at === null) t.outbox[i] = { ...m, sent_at: new Date(now) }
            })
          })),
      pendingCount: () => atomically((t) => t.outbox.filter((m) => m.sent_at === null).length),
      purgeSent: (sentBefore, limit) =>
        atomically((t) => {
          // Oldest first (the array is in position order), compacted in place.
          let deleted = 0
          let kept = 0
          for (const m of t.outbox) {
            if (deleted < limit && m.sent_at !== null && m.sent_at < sentBefore) deleted++
            else t.outbox[kept++] = m
          }
          t.outbox.length = kept
          return deleted
        })
    }))
)

const FailedEventsMemory = Layer.effect(
  FailedEvents,
  Effect.map(MemoryDatabase, ({ atomically }) => {
    // Like the SQL bigserial: only ever grows, gaps allowed.
    let seq = 0
    const isAfter = (e: ListedFailedEvent, p: FailedEventPosition) =>
      e.failed_at.getTime() > p.failed_at.getTime() || (e.failed_at.getTime() === p.failed_at.getTime() && e.seq > p.seq)
    const byPosition = (a: ListedFailedEvent, b: ListedFailedEvent) => a.failed_at.getTime() - b.failed_at.getTime() || a.seq - b.seq
    const withoutSeq = ({ seq: _, ...event }: ListedFailedEvent): FailedEvent => event
    return FailedEvents.of({
      record: (event) =>
        atomically((t) => {
          const stored = t.failedEvents.get(event.id)
          if (stored !== undefined) return withoutSeq(stored)
          t.failedEvents.set(event.id, { ...event, seq: ++seq })
          return event
        }),
      get: (id) => atomically((t) => Option.map(Option.fromNullishOr(t.failedEvents.get(id)), withoutSeq)),
      markCopied: (id, at) =>
        atomically((t) => {
          const e = t.failedEvents.get(id)
          if (e !== undefined && e.dlq_copied_at === null) t.failedEvents.set(id, { ...e, dlq_copied_at: at })
        }),
      list: (filter) =>
        atomically((t) => {
          const rows = [...t.failedEvents.values()]
            .filter((e) =>
              (filter.event_type === undefined || e.event_type === filter.event_type) &&
              (filter.error_type === undefined || e.error_type === filter.error_type) &&
              (filter.organization_id === undefined || e.organization_id === filter.organization_id) &&
              (filter.after === undefined || isAfter(e, filter.after))
            )
            .sort(byPosition)
          return filter.limit === undefined ? rows : rows.slice(0, filter.limit)
        }),
      markReplayed: (id, at) =>
        atomically((t) => {
          const e = t.failedEvents.get(id)
          if (e !== undefined) t.failedEvents.set(id, { ...e, replay_count: e.replay_count + 1, last_replayed_at: at })
        }),
      purge: (failedBefore, limit) =>
        atomically((t) => {
          const gone = [...t.failedEvents.values()]
            .filter((e) => e.failed_at.getTime() < failedBefore.getTime())
            .sort(byPosition)
            .slice(0, limit)
          for (const e of gone) t.failedEvents.delete(e.id)
          return gone.length
        })
    })
  })
)

const ReconciliationMemory = Layer.effect(
  Reconciliation,
  Effect.map(MemoryDatabase, ({ atomically }) =>
    Reconciliation.of({
      check: (organizationId) =>
        atomically((t) => {
          const violations: Array<Violation> = []
          const at = (row: StockRow, invariant: Violation["invariant"], detail: string) =>
            violations.push({
              invariant,
              organization_id: row.organization_id,
              variant_id: row.variant_id,
              warehouse_id: row.warehouse_id,
              reservation_id: null,
              detail
            })
          const held = new Map<string, number>()
          for (const r of t.reservations.values()) {
            if (!liveStatuses.includes(r.status)) continue
            for (const item of r.items) {
              const k = stockKeyString({ organization_id: r.organization_id, ...item })
              held.set(k, (held.get(k) ?? 0) + item.quantity)
            }
          }
          const moved = new Map<string, number>()
          for (const m of t.movements) moved.set(stockKeyString(m), (moved.get(stockKeyString(m)) ?? 0) + m.quantity_change)
          for (const row of [...t.stock.values()].sort(compareStockKeys)) {
            if (organizationId !== undefined && row.organization_id !== organizationId) continue
            const k = stockKeyString(row)
            const negative = (["total", "available", "reserved", "damaged", "in_transit"] as const).filter((f) => row[f] < 0 || !Number.isInteger(row[f]))
            if (negative.length > 0) at(row, "I1", `not a whole number >= 0: ${negative.join(", ")}`)
            if (row.total !== row.available + row.reserved + row.damaged) {
              at(row, "I2", `total ${row.total} <> available ${row.available} + reserved ${row.reserved} + damaged ${row.damaged}`)
            }
            if (row.reserved !== (held.get(k) ?? 0)) at(row, "I3", `reserved ${row.reserved} <> live reservation items ${held.get(k) ?? 0}`)
            if (row.total !== (moved.get(k) ?? 0)) at(row, "I8", `total ${row.total} <> sum of movements ${moved.get(k) ?? 0}`)
            if (row.archived_at !== null && (row.total !== 0 || row.in_transit !== 0)) at(row, "I9", `archived with total ${row.total}`)
          }
          for (const [k, quantity] of held) {
            if (!t.stock.has(k)) {
              const [organization_id, variant_id, warehouse_id] = k.split("\u0000") as [string, string, string]
              if (organizationId !== undefined && organization_id !== organizationId) continue
              violations.push({ invariant: "I3", organization_id, variant_id, warehouse_id, reservation_id: null, detail: `live reservation items hold ${quantity} of a missing stock row` })
            }
          }
          return violations
        })
    }))
)

const StoreHealthMemory = Layer.succeed(StoreHealth, StoreHealth.of({ ping: Effect.void }))

/**
 * The working set of a group (issue 18) read from and written back to the memory tables, with
 * the same conflict rule as the SQL store: a row to create that exists already fails the group.
 */
const WorkingSetMemory = Layer.effect(
  WorkingSet,
  Effect.map(MemoryDatabase, ({ atomically, nextOutboxPosition }) =>
    WorkingSet.of({
      load: (demand) =>
        atomically((t): WorkingSetRows => {
          const recorded = demand.events.map((entry) => recordIn(t, entry))
          const orders = new Set(demand.orders.map((o) => pair(o.organization_id, o.order_id)))
          const ids = new Set(demand.reservations.map((r) => pair(r.organization_id, r.reservation_id)))
          const reservations = [...t.reservations.entries()]
            .filter(([k, r]) => ids.has(k) || orders.has(pair(r.organization_id, r.order_id)))
            .map(([, r]) => r)
          const variants = new Map(demand.variants.map((v) => [pair(v.organization_id, v.variant_id), v]))
          for (const r of reservations) {
            for (const item of r.items) variants.set(pair(r.organization_id, item.variant_id), { organization_id: r.organization_id, variant_id: item.variant_id })
          }
          const organizations = new Set(demand.organizations)
          const catalog = new Set(demand.catalog.map((v) => pair(v.organization_id, v.variant_id)))
          return {
            recorded,
            warehouses: [...t.warehouses.values()].filter((w) => organizations.has(w.organization_id)),
            variants: [...t.variants.entries()].filter(([k]) => catalog.has(k)).map(([, v]) => v),
            stock: [...t.stock.values()].filter((row) => variants.has(pair(row.organization_id, row.variant_id))).sort(compareStockKeys),
            reservations,
            stockVariants: [...variants.values()]
          }
        }),
      save: (changes) =>
        Effect.flatMap(
          atomically((t) => {
            const conflict = changes.stockCreated.some((row) => t.stock.has(stockKeyString(row))) ||
              changes.reservationsCreated.some((r) => t.reservations.has(pair(r.organization_id, r.reservation_id)))
            if (conflict) return false
            for (const row of [...changes.stockUpdated, ...changes.stockCreated]) t.stock.set(stockKeyString(row), row)
            for (const r of [...changes.reservationsCreated, ...changes.reservationsChanged]) t.reservations.set(pair(r.organization_id, r.reservation_id), r)
            for (const v of changes.variants) t.variants.set(pair(v.organization_id, v.variant_id), v)
            t.movements.push(...changes.movements)
            for (const m of changes.outbox) {
              if (t.outbox.some((o) => o.event_id === m.event_id)) continue
              t.outbox.push({ ...m, position: nextOutboxPosition(), sent_at: null })
            }
            for (const e of changes.forget) t.eventLog.delete(pair(e.organization_id, e.event_id))
            return true
          }),
          (saved) => saved ? Effect.void : Effect.fail(new DatabaseError({ reason: "conflict", message: "rows changed since the group loaded them" }))
        )
    }))
)

/**
 * Every store but the working set, over whichever `MemoryDatabase` is provided: the staged
 * database of a group (`staged.ts`) runs the handlers on these.
 */
export const storesOn = Layer.mergeAll(
  UnitOfWorkMemory,
  WarehousesMemory,
  VariantsMemory,
  StockMemory,
  ReservationsMemory,
  MovementsMemory,
  EventLogMemory,
  OutboxMemory,
  FailedEventsMemory,
  ReconciliationMemory,
  StoreHealthMemory
)

/**
 * Every store, in memory, sharing one `MemoryDatabase`. Swap it for the SQL layer in tests:
 * `Effect.provide(MemoryStores.layer)`.
 */
export const layer = Layer.mergeAll(storesOn, WorkingSetMemory).pipe(Layer.provideMerge(MemoryDatabase.layer))

