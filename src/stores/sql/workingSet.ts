import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DatabaseError } from "../../domain/errors.ts"
import type { Reservation, ReservationStatus, Variant, Warehouse } from "../model.ts"
import { WorkingSet, type WorkingSetChanges, type WorkingSetDemand, type WorkingSetRows } from "../services.ts"
import { intArray, textArray } from "./arrays.ts"
import { orDatabaseError } from "./errors.ts"
import { orderKeys } from "./reservations.ts"
import { insertOutbox, insertReservationItems, insertReservations } from "./rows.ts"
import { toStockRow } from "./stock.ts"

const pair = (org: string, id: string) => `${org}\u0000${id}`
const iso = (d: Date | null) => (d === null ? null : d.toISOString())
const date = (text: string | null) => (text === null ? null : new Date(text))
/** A json column: the driver may hand it over parsed or as text. */
const json = <A>(raw: unknown): A => (typeof raw === "string" ? JSON.parse(raw) : raw) as A

type ReservationTuple = readonly [
  organization_id: string,
  reservation_id: string,
  order_id: string,
  status: ReservationStatus,
  expires_at: string | null,
  created_at: string,
  caused_by: string,
  closed_reason: string | null,
  items: ReadonlyArray<readonly [variant_id: string, warehouse_id: string, quantity: number]>
]
const toReservation = ([organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by, closed_reason, items]: ReservationTuple): Reservation => ({
  organization_id,
  reservation_id,
  order_id,
  status,
  items: items.map(([variant_id, warehouse_id, quantity]) => ({ variant_id, warehouse_id, quantity })),
  expires_at: date(expires_at),
  created_at: new Date(created_at),
  caused_by,
  closed_reason
})

type StockTuple = readonly [
  organization_id: string,
  variant_id: string,
  warehouse_id: string,
  total: number,
  available: number,
  reserved: number,
  damaged: number,
  in_transit: number,
  min_stock: number,
  max_stock: number,
  archived_at: string | null
]
const toStock = ([organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at]: StockTuple) =>
  toStockRow({ organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, stock_strategy: "FIFO", archived_at: date(archived_at) })

/**
 * The working set on PostgreSQL (issue 18). Loading takes the locks a one-at-a-time unit would
 * take, in the same order: the event-log rows, the orders' advisory locks (sorted), then the
 * stock rows in primary-key order; in two statements, because what the second reads must be
 * read after the first's locks are held (a statement sees the database as it stood when it
 * began). Each round trip counts: on a busy consumer the continuation waits behind other work,
 * so a group's wall time grows with its statements (issue 18). Saving is one statement of data-modifying CTEs, whatever
 * the group's size, that reports how many rows each write touched: fewer than expected means a
 * row appeared or vanished since loading, and the group fails as a `DatabaseError` (conflict).
 */
export const WorkingSetSql = Layer.effect(
  WorkingSet,
  Effect.gen(function*() {
    const sql = yield* SqlClient

    /**
     * The first of the load's two statements: the event-log rows, then the orders' advisory
     * locks in their one order, as a unit of work for one event takes them (the locks' scan waits
     * for the inserts: its filter reads them). One flag per event, as `EventLog.record` answers.
     */
    const recordAndLock = (demand: WorkingSetDemand) => {
      const events = demand.events
      if (events.length === 0 && demand.orders.length === 0) return Effect.succeed<ReadonlyArray<boolean>>([])
      return Effect.map(
        orDatabaseError(sql<{ readonly recorded: unknown }>`
          WITH recorded AS (
            INSERT INTO event_log (organization_id, event_id, event_type, processed_at)
            SELECT organization_id, event_id, event_type, processed_at::timestamptz
            FROM unnest(${textArray(events.map((e) => e.organization_id))}::text[], ${textArray(events.map((e) => e.event_id))}::text[],
              ${textArray(events.map((e) => e.event_type))}::text[], ${textArray(events.map((e) => e.processed_at.toISOString()))}::text[])
              AS e(organization_id, event_id, event_type, processed_at)
            ON CONFLICT DO NOTHING RETURNING organization_id, event_id
          ), locked AS (
            SELECT pg_advisory_xact_lock(hashtextextended(k, 0)) FROM unnest(${textArray(orderKeys(demand.orders))}::text[]) AS k
            WHERE (SELECT count(*) FROM recorded) >= 0
          )
          SELECT (SELECT count(*) FROM locked) AS locks,
            COALESCE((SELECT json_agg(json_build_array(organization_id, event_id)) FROM recorded), '[]'::json) AS recorded`),
        (rows) => {
          // An id listed twice was written once: the first of them is the one recorded.
          const written = new Set(json<ReadonlyArray<readonly [string, string]>>(rows[0]!.recorded).map(([org, id]) => pair(org, id)))
          return events.map((e) => written.delete(pair(e.organization_id, e.event_id)))
        }
      )
    }

    /**
     * The second statement, under the orders' locks: their reservations with items, the stock
     * rows of the demanded variants and of those the reservations hold (locked in primary-key
     * order), the organizations' warehouses and the catalog rows asked for, as one row of json.
     */
    const readLocked = (demand: WorkingSetDemand): Effect.Effect<Omit<WorkingSetRows, "recorded">, DatabaseError> => {
      const { orders, reservations: ids, variants, catalog } = demand
      const organizations = [...new Set(demand.organizations)]
      if (orders.length === 0 && ids.length === 0 && variants.length === 0 && organizations.length === 0 && catalog.length === 0) {
        return Effect.succeed({ warehouses: [], variants: [], stock: [], reservations: [], stockVariants: [] })
      }
      return Effect.map(
        orDatabaseError(sql<{ readonly reservations: unknown; readonly stock: unknown; readonly wanted: unknown; readonly warehouses: unknown; readonly variants: unknown }>`
          WITH found AS (
            SELECT r.organization_id, r.reservation_id, r.order_id, r.status, r.expires_at, r.created_at, r.caused_by, r.closed_reason, r.seq
            FROM unnest(${textArray(orders.map((o) => o.organization_id))}::text[], ${textArray(orders.map((o) => o.order_id))}::text[]) AS k(organization_id, order_id)
            JOIN reservations r ON r.organization_id = k.organization_id AND r.order_id = k.order_id
            UNION
            SELECT r.organization_id, r.reservation_id, r.order_id, r.status, r.expires_at, r.created_at, r.caused_by, r.closed_reason, r.seq
            FROM unnest(${textArray(ids.map((r) => r.organization_id))}::text[], ${textArray(ids.map((r) => r.reservation_id))}::text[]) AS k(organization_id, reservation_id)
            JOIN reservations r ON r.organization_id = k.organization_id AND r.reservation_id = k.reservation_id
          ), held AS (
            SELECT f.*, i.items, i.variant_ids FROM found f CROSS JOIN LATERAL (
              SELECT COALESCE(json_agg(json_build_array(variant_id, warehouse_id, quantity) ORDER BY position), '[]'::json) AS items,
                array_agg(variant_id) AS variant_ids
              FROM reservation_items WHERE organization_id = f.organization_id AND reservation_id = f.reservation_id
            ) i
          ), wanted AS (
            SELECT * FROM unnest(${textArray(variants.map((v) => v.organization_id))}::text[], ${textArray(variants.map((v) => v.variant_id))}::text[])
              AS w(organization_id, variant_id)
            UNION SELECT h.organization_id, v.variant_id FROM held h CROSS JOIN LATERAL unnest(h.variant_ids) AS v(variant_id)
          ), locked AS (
            SELECT s.* FROM wanted w JOIN stock s ON s.organization_id = w.organization_id AND s.variant_id = w.variant_id
            ORDER BY s.organization_id, s.variant_id, s.warehouse_id
            FOR UPDATE OF s
          )
          SELECT
            COALESCE((SELECT json_agg(json_build_array(h.organization_id, h.reservation_id, h.order_id, h.status, h.expires_at, h.created_at,
              h.caused_by, h.closed_reason, h.items) ORDER BY h.seq) FROM held h), '[]'::json) AS reservations,
            COALESCE((SELECT json_agg(json_build_array(l.organization_id, l.variant_id, l.warehouse_id, l.total, l.available, l.reserved,
              l.damaged, l.in_transit, l.min_stock, l.max_stock, l.archived_at)) FROM locked l), '[]'::json) AS stock,
            COALESCE((SELECT json_agg(json_build_array(organization_id, variant_id)) FROM wanted), '[]'::json) AS wanted,
            COALESCE((SELECT json_agg(json_build_array(organization_id, warehouse_id, name, active) ORDER BY organization_id, warehouse_id)
              FROM warehouses WHERE organization_id = ANY(${textArray(organizations)}::text[])), '[]'::json) AS warehouses,
            COALESCE((SELECT json_agg(json_build_array(organization_id, variant_id, product_id, sku, tracked, deleted_at)) FROM variants
              WHERE (organization_id, variant_id) IN (
                SELECT * FROM unnest(${textArray(catalog.map((x) => x.organization_id))}::text[], ${textArray(catalog.map((x) => x.variant_id))}::text[]))
            ), '[]'::json) AS variants`),
        (rows) => {
          const row = rows[0]!
          return {
            reservations: json<ReadonlyArray<ReservationTuple>>(row.reservations).map(toReservation),
            stock: json<ReadonlyArray<StockTuple>>(row.stock).map(toStock),
            stockVariants: json<ReadonlyArray<readonly [string, string]>>(row.wanted).map(([organization_id, variant_id]) => ({ organization_id, variant_id })),
            warehouses: json<ReadonlyArray<readonly [string, string, string, boolean]>>(row.warehouses).map(
              ([organization_id, warehouse_id, name, active]): Warehouse => ({ organization_id, warehouse_id, name, active })
            ),
            variants: json<ReadonlyArray<readonly [string, string, string | null, string | null, boolean, string | null]>>(row.variants).map(
              ([organization_id, variant_id, product_id, sku, tracked, deleted_at]): Variant => ({
                organization_id,
                variant_id,
                product_id,
                sku,
                tracked,
                deleted_at: date(deleted_at)
              })
            )
          }
        }
      )
    }

    const save = (c: WorkingSetChanges) =>
      Effect.gen(function*() {
        const su = c.stockUpdated
        const sc = c.stockCreated
        const rc = c.reservationsCreated
        const rx = c.reservationsChanged
        const v = c.variants
        const m = c.movements
        const o = c.outbox
        const f = c.forget
        const rows = yield* orDatabaseError(sql<{ readonly updated: number; readonly created: number; readonly reserved: number; readonly changed: number }>`
          WITH stock_updated AS (
            UPDATE stock s SET total = u.total, available = u.available, reserved = u.reserved, damaged = u.damaged,
              in_transit = u.in_transit, min_stock = u.min_stock, max_stock = u.max_stock, archived_at = u.archived_at::timestamptz
            FROM unnest(${textArray(su.map((r) => r.organization_id))}::text[], ${textArray(su.map((r) => r.variant_id))}::text[], ${textArray(su.map((r) => r.warehouse_id))}::text[],
              ${su.map((r) => r.total)}::bigint[], ${su.map((r) => r.available)}::bigint[], ${su.map((r) => r.reserved)}::bigint[],
              ${su.map((r) => r.damaged)}::bigint[], ${su.map((r) => r.in_transit)}::bigint[], ${intArray(su.map((r) => r.min_stock))}::integer[],
              ${intArray(su.map((r) => r.max_stock))}::integer[], ${textArray(su.map((r) => iso(r.archived_at)))}::text[])
              AS u(organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            WHERE s.organization_id = u.organization_id AND s.variant_id = u.variant_id AND s.warehouse_id = u.warehouse_id
            RETURNING 1
          ), stock_created AS (
            INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            SELECT organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at::timestamptz
            FROM unnest(${textArray(sc.map((r) => r.organization_id))}::text[], ${textArray(sc.map((r) => r.variant_id))}::text[], ${textArray(sc.map((r) => r.warehouse_id))}::text[],
              ${sc.map((r) => r.total)}::bigint[], ${sc.map((r) => r.available)}::bigint[], ${sc.map((r) => r.reserved)}::bigint[],
              ${sc.map((r) => r.damaged)}::bigint[], ${sc.map((r) => r.in_transit)}::bigint[], ${intArray(sc.map((r) => r.min_stock))}::integer[],
              ${intArray(sc.map((r) => r.max_stock))}::integer[], ${textArray(sc.map((r) => iso(r.archived_at)))}::text[])
              AS n(organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            ORDER BY organization_id, variant_id, warehouse_id
            ON CONFLICT DO NOTHING
            RETURNING 1
          ), reservations_created AS (${insertReservations(sql, rc)}
          ), items AS (${insertReservationItems(sql, rc, "reservations_created")}
          ), reservations_changed AS (
            UPDATE reservations r SET status = u.status, closed_reason = u.closed_reason
            FROM unnest(${textArray(rx.map((r) => r.organization_id))}::text[], ${textArray(rx.map((r) => r.reservation_id))}::text[],
              ${textArray(rx.map((r) => r.status))}::text[], ${textArray(rx.map((r) => r.closed_reason))}::text[])
              AS u(organization_id, reservation_id, status, closed_reason)
            WHERE r.organization_id = u.organization_id AND r.reservation_id = u.reservation_id
            RETURNING 1
          ), variants_saved AS (
            INSERT INTO variants (organization_id, variant_id, product_id, sku, tracked, deleted_at)
            SELECT organization_id, variant_id, product_id, sku, tracked, deleted_at::timestamptz
            FROM unnest(${textArray(v.map((x) => x.organization_id))}::text[], ${textArray(v.map((x) => x.variant_id))}::text[],
              ${textArray(v.map((x) => x.product_id))}::text[], ${textArray(v.map((x) => x.sku))}::text[],
              ${v.map((x) => x.tracked)}::boolean[], ${textArray(v.map((x) => iso(x.deleted_at)))}::text[])
              AS n(organization_id, variant_id, product_id, sku, tracked, deleted_at)
            ON CONFLICT (organization_id, variant_id) DO UPDATE SET
              product_id = EXCLUDED.product_id, sku = EXCLUDED.sku, tracked = EXCLUDED.tracked, deleted_at = EXCLUDED.deleted_at
          ), movements AS (
            INSERT INTO stock_movements (movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change,
              quantity_before, quantity_after, category, reason, reference_type, reference_id, notes, caused_by, created_at)
            SELECT movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change, quantity_before, quantity_after,
              category, reason, reference_type, reference_id, notes, caused_by, created_at::timestamptz
            FROM unnest(${textArray(m.map((x) => x.movement_id))}::text[], ${textArray(m.map((x) => x.organization_id))}::text[], ${textArray(m.map((x) => x.variant_id))}::text[],
              ${textArray(m.map((x) => x.warehouse_id))}::text[], ${textArray(m.map((x) => x.movement_type))}::text[], ${m.map((x) => x.quantity_change)}::bigint[],
              ${m.map((x) => x.quantity_before)}::bigint[], ${m.map((x) => x.quantity_after)}::bigint[], ${textArray(m.map((x) => x.category))}::text[],
              ${textArray(m.map((x) => x.reason))}::text[], ${textArray(m.map((x) => x.reference_type))}::text[], ${textArray(m.map((x) => x.reference_id))}::text[],
              ${textArray(m.map((x) => x.notes))}::text[], ${textArray(m.map((x) => x.caused_by))}::text[], ${textArray(m.map((x) => x.created_at.toISOString()))}::text[])
              WITH ORDINALITY AS n(movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change, quantity_before,
                quantity_after, category, reason, reference_type, reference_id, notes, caused_by, created_at, ord)
            ORDER BY ord
          ), outbox AS (${insertOutbox(sql, o)}
          ), forgotten AS (
            DELETE FROM event_log e
            USING unnest(${textArray(f.map((x) => x.organization_id))}::text[], ${textArray(f.map((x) => x.event_id))}::text[]) AS g(organization_id, event_id)
            WHERE e.organization_id = g.organization_id AND e.event_id = g.event_id
          )
          SELECT (SELECT count(*) FROM stock_updated)::integer AS updated, (SELECT count(*) FROM stock_created)::integer AS created,
            (SELECT count(*) FROM reservations_created)::integer AS reserved, (SELECT count(*) FROM reservations_changed)::integer AS changed`)
        const counts = rows[0]!
        if (counts.updated !== su.length || counts.created !== sc.length || counts.reserved !== rc.length || counts.changed !== rx.length) {
          return yield* Effect.fail(new DatabaseError({
            reason: "conflict",
            message: `rows changed since the group loaded them (stock ${counts.updated}/${su.length} updated, ${counts.created}/${sc.length} created; reservations ${counts.reserved}/${rc.length} created, ${counts.changed}/${rx.length} changed)`
          }))
        }
      })

    return WorkingSet.of({
      load: (demand) =>
        Effect.gen(function*() {
          const recorded = yield* recordAndLock(demand)
          const loaded = yield* readLocked(demand)
          return { recorded, ...loaded }
        }),
      save
    })
  })
)
