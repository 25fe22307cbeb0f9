import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { DatabaseError } from "../../domain/errors.ts"
import type { Reservation, ReservationItem, Variant, Warehouse } from "../model.ts"
import { EventLog, Reservations, type VariantRef, WorkingSet, type WorkingSetChanges } from "../services.ts"
import { textArray } from "./arrays.ts"
import { orDatabaseError } from "./errors.ts"
import type { ReservationRecord } from "./reservations.ts"
import { insertOutbox, insertReservationItems, insertReservations } from "./rows.ts"
import { type StockRecord, toStockRow } from "./stock.ts"

interface ReservationWithItems extends ReservationRecord {
  /** `[variant_id, warehouse_id, quantity]` per item, in position order (json). */
  readonly items: unknown
}

const pair = (org: string, id: string) => `${org}\u0000${id}`
const iso = (d: Date | null) => (d === null ? null : d.toISOString())

const itemsOf = (raw: unknown): ReadonlyArray<ReservationItem> => {
  const list = (typeof raw === "string" ? JSON.parse(raw) : raw) as ReadonlyArray<readonly [string, string, number]>
  return list.map(([variant_id, warehouse_id, quantity]) => ({ variant_id, warehouse_id, quantity: Number(quantity) }))
}

/**
 * The working set on PostgreSQL (issue 18). Loading takes the locks a one-at-a-time unit would
 * take, in the same order: the event-log rows, the orders' advisory locks (sorted), then the
 * stock rows in primary-key order. Saving is one statement of data-modifying CTEs, whatever
 * the group's size, that reports how many rows each write touched: fewer than expected means a
 * row appeared or vanished since loading, and the group fails as a `DatabaseError` (conflict).
 */
export const WorkingSetSql = Layer.effect(
  WorkingSet,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const log = yield* EventLog
    const reservations = yield* Reservations

    const loadReservations = (orders: ReadonlyArray<{ organization_id: string; order_id: string }>, ids: ReadonlyArray<{ organization_id: string; reservation_id: string }>) =>
      orders.length === 0 && ids.length === 0 ? Effect.succeed<ReadonlyArray<Reservation>>([]) : Effect.map(
        orDatabaseError(sql<ReservationWithItems>`
          SELECT r.organization_id, r.reservation_id, r.order_id, r.status, r.expires_at, r.created_at, r.caused_by, r.closed_reason,
            COALESCE((
              SELECT json_agg(json_build_array(i.variant_id, i.warehouse_id, i.quantity) ORDER BY i.position)
              FROM reservation_items i WHERE i.organization_id = r.organization_id AND i.reservation_id = r.reservation_id
            ), '[]'::json) AS items
          FROM reservations r
          WHERE (r.organization_id, r.order_id) IN (
              SELECT * FROM unnest(${orders.map((o) => o.organization_id)}::text[], ${orders.map((o) => o.order_id)}::text[]))
            OR (r.organization_id, r.reservation_id) IN (
              SELECT * FROM unnest(${ids.map((r) => r.organization_id)}::text[], ${ids.map((r) => r.reservation_id)}::text[]))
          ORDER BY r.seq`),
        (records) => records.map((r): Reservation => ({
          organization_id: r.organization_id,
          reservation_id: r.reservation_id,
          order_id: r.order_id,
          status: r.status,
          items: itemsOf(r.items),
          expires_at: r.expires_at,
          created_at: r.created_at,
          caused_by: r.caused_by,
          closed_reason: r.closed_reason
        }))
      )

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
            FROM unnest(${su.map((r) => r.organization_id)}::text[], ${su.map((r) => r.variant_id)}::text[], ${su.map((r) => r.warehouse_id)}::text[],
              ${su.map((r) => r.total)}::bigint[], ${su.map((r) => r.available)}::bigint[], ${su.map((r) => r.reserved)}::bigint[],
              ${su.map((r) => r.damaged)}::bigint[], ${su.map((r) => r.in_transit)}::bigint[], ${su.map((r) => r.min_stock)}::integer[],
              ${su.map((r) => r.max_stock)}::integer[], ${textArray(su.map((r) => iso(r.archived_at)))}::text[])
              AS u(organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            WHERE s.organization_id = u.organization_id AND s.variant_id = u.variant_id AND s.warehouse_id = u.warehouse_id
            RETURNING 1
          ), stock_created AS (
            INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            SELECT organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at::timestamptz
            FROM unnest(${sc.map((r) => r.organization_id)}::text[], ${sc.map((r) => r.variant_id)}::text[], ${sc.map((r) => r.warehouse_id)}::text[],
              ${sc.map((r) => r.total)}::bigint[], ${sc.map((r) => r.available)}::bigint[], ${sc.map((r) => r.reserved)}::bigint[],
              ${sc.map((r) => r.damaged)}::bigint[], ${sc.map((r) => r.in_transit)}::bigint[], ${sc.map((r) => r.min_stock)}::integer[],
              ${sc.map((r) => r.max_stock)}::integer[], ${textArray(sc.map((r) => iso(r.archived_at)))}::text[])
              AS n(organization_id, variant_id, warehouse_id, total, available, reserved, damaged, in_transit, min_stock, max_stock, archived_at)
            ORDER BY organization_id, variant_id, warehouse_id
            ON CONFLICT DO NOTHING
            RETURNING 1
          ), reservations_created AS (${insertReservations(sql, rc)}
          ), items AS (${insertReservationItems(sql, rc, "reservations_created")}
          ), reservations_changed AS (
            UPDATE reservations r SET status = u.status, closed_reason = u.closed_reason
            FROM unnest(${rx.map((r) => r.organization_id)}::text[], ${rx.map((r) => r.reservation_id)}::text[],
              ${rx.map((r) => r.status)}::text[], ${textArray(rx.map((r) => r.closed_reason))}::text[])
              AS u(organization_id, reservation_id, status, closed_reason)
            WHERE r.organization_id = u.organization_id AND r.reservation_id = u.reservation_id
            RETURNING 1
          ), variants_saved AS (
            INSERT INTO variants (organization_id, variant_id, product_id, sku, tracked, deleted_at)
            SELECT organization_id, variant_id, product_id, sku, tracked, deleted_at::timestamptz
            FROM unnest(${v.map((x) => x.organization_id)}::text[], ${v.map((x) => x.variant_id)}::text[],
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
            FROM unnest(${m.map((x) => x.movement_id)}::text[], ${m.map((x) => x.organization_id)}::text[], ${m.map((x) => x.variant_id)}::text[],
              ${m.map((x) => x.warehouse_id)}::text[], ${m.map((x) => x.movement_type)}::text[], ${m.map((x) => x.quantity_change)}::bigint[],
              ${m.map((x) => x.quantity_before)}::bigint[], ${m.map((x) => x.quantity_after)}::bigint[], ${m.map((x) => x.category)}::text[],
              ${m.map((x) => x.reason)}::text[], ${textArray(m.map((x) => x.reference_type))}::text[], ${textArray(m.map((x) => x.reference_id))}::text[],
              ${textArray(m.map((x) => x.notes))}::text[], ${m.map((x) => x.caused_by)}::text[], ${m.map((x) => x.created_at.toISOString())}::text[])
              WITH ORDINALITY AS n(movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change, quantity_before,
                quantity_after, category, reason, reference_type, reference_id, notes, caused_by, created_at, ord)
            ORDER BY ord
          ), outbox AS (${insertOutbox(sql, o)}
          ), forgotten AS (
            DELETE FROM event_log e
            USING unnest(${f.map((x) => x.organization_id)}::text[], ${f.map((x) => x.event_id)}::text[]) AS g(organization_id, event_id)
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
          const recorded = yield* log.recordAll(demand.events)
          yield* reservations.lockOrders(demand.orders)
          const loaded = yield* loadReservations(demand.orders, demand.reservations)
          const variants = new Map<string, VariantRef>()
          for (const ref of demand.variants) variants.set(pair(ref.organization_id, ref.variant_id), ref)
          for (const r of loaded) {
            for (const item of r.items) variants.set(pair(r.organization_id, item.variant_id), { organization_id: r.organization_id, variant_id: item.variant_id })
          }
          const wanted = [...variants.values()]
          const stock = wanted.length === 0 ? [] : yield* orDatabaseError(sql<StockRecord>`
            SELECT s.* FROM stock s
            WHERE (s.organization_id, s.variant_id) IN (
              SELECT * FROM unnest(${wanted.map((x) => x.organization_id)}::text[], ${wanted.map((x) => x.variant_id)}::text[]))
            ORDER BY s.organization_id, s.variant_id, s.warehouse_id
            FOR UPDATE`)
          const organizations = [...new Set(demand.organizations)]
          const warehouses = organizations.length === 0 ? [] : yield* orDatabaseError(sql<Warehouse>`
            SELECT organization_id, warehouse_id, name, active FROM warehouses
            WHERE organization_id = ANY(${organizations}::text[]) ORDER BY organization_id, warehouse_id`)
          const catalog = demand.catalog
          const variantRows = catalog.length === 0 ? [] : yield* orDatabaseError(sql<Variant>`
            SELECT organization_id, variant_id, product_id, sku, tracked, deleted_at FROM variants
            WHERE (organization_id, variant_id) IN (
              SELECT * FROM unnest(${catalog.map((x) => x.organization_id)}::text[], ${catalog.map((x) => x.variant_id)}::text[]))`)
          return {
            recorded,
            warehouses,
            variants: variantRows,
            stock: stock.map(toStockRow),
            reservations: loaded,
            stockVariants: wanted
          }
        }),
      save
    })
  })
)
