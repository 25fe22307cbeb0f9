import { Effect, Layer, Option, Stream } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type * as Statement from "effect/sql/Statement"
import type { SqlError } from "effect/sql/SqlError"
import type { DatabaseError } from "../../domain/errors.ts"
import type { Reservation, ReservationItem, ReservationStatus } from "../model.ts"
import { type OrderRef, Reservations } from "../services.ts"
import { fromSqlError, orDatabaseError } from "./errors.ts"

export interface ReservationRecord {
  readonly organization_id: string
  readonly reservation_id: string
  readonly order_id: string
  readonly status: ReservationStatus
  readonly expires_at: Date | null
  readonly created_at: Date
  readonly caused_by: string
  readonly closed_reason: string | null
}

interface ItemRecord extends ReservationItem {
  readonly organization_id: string
  readonly reservation_id: string
}

const columns = "organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by, closed_reason"

/** Newest first; reservations created in the same millisecond keep their write order. */
const newestFirst = "created_at DESC, seq ASC"

/** The advisory lock key of one order: one event alone and a group lock the same key. */
const orderLockKey = (org: string, orderId: string) => `inventory.order ${org} ${orderId}`

/** The order keys, each once, in the one order every unit of work takes them (`WorkingSetSql` too). */
export const orderKeys = (orders: ReadonlyArray<OrderRef>): Array<string> =>
  [...new Set(orders.map((o) => orderLockKey(o.organization_id, o.order_id)))].sort()

export const ReservationsSql = Layer.effect(
  Reservations,
  Effect.gen(function*() {
    const sql = yield* SqlClient

    /** The items of each reservation, in the order they were written. */
    const withItems = (records: ReadonlyArray<ReservationRecord>): Effect.Effect<ReadonlyArray<Reservation>, DatabaseError> => {
      if (records.length === 0) return Effect.succeed([])
      return Effect.map(
        orDatabaseError(sql<ItemRecord>`
          SELECT organization_id, reservation_id, variant_id, warehouse_id, quantity FROM reservation_items
          WHERE (organization_id, reservation_id) IN (
            SELECT * FROM unnest(${records.map((r) => r.organization_id)}::text[], ${records.map((r) => r.reservation_id)}::text[]))
          ORDER BY organization_id, reservation_id, position`),
        (items) => {
          const byReservation = new Map<string, Array<ReservationItem>>()
          for (const item of items) {
            const k = `${item.organization_id}\u0000${item.reservation_id}`
            const list = byReservation.get(k) ?? []
            list.push({ variant_id: item.variant_id, warehouse_id: item.warehouse_id, quantity: item.quantity })
            byReservation.set(k, list)
          }
          return records.map((r): Reservation => ({
            organization_id: r.organization_id,
            reservation_id: r.reservation_id,
            order_id: r.order_id,
            status: r.status,
            items: byReservation.get(`${r.organization_id}\u0000${r.reservation_id}`) ?? [],
            expires_at: r.expires_at,
            created_at: r.created_at,
            caused_by: r.caused_by,
            closed_reason: r.closed_reason
          }))
        }
      )
    }
    const load = (statement: Effect.Effect<ReadonlyArray<ReservationRecord>, SqlError>) =>
      Effect.flatMap(orDatabaseError(statement), withItems)
    const first = (statement: Effect.Effect<ReadonlyArray<ReservationRecord>, SqlError>) =>
      Effect.map(load(statement), (found) => Option.fromNullishOr(found[0]))

    /** One advisory key per (organization, order); a hash collision only serialises two orders. */
    const orderKey = (org: string, orderId: string) => sql`hashtextextended(${orderLockKey(org, orderId)}, 0)`
    const lockOrder = (org: string, orderId: string) =>
      Effect.asVoid(orDatabaseError(sql`SELECT pg_advisory_xact_lock(${orderKey(org, orderId)})`))

    /**
     * Locks the due reservations `source` selects (a `FROM ... WHERE` over `reservations r`),
     * skipping rows another transaction holds and, among the rest, orders whose lock another
     * holds (a group handling its events). The batch is chosen first (row locks, SKIP LOCKED,
     * LIMIT) and only its orders' locks are tried: tried in the same WHERE as the sort, they were
     * taken for every overdue row before the LIMIT, holding a whole backlog's orders.
     */
    const claimDue = (source: Statement.Fragment, limit?: number) =>
      load(sql<ReservationRecord>`
        WITH batch AS MATERIALIZED (
          SELECT r.organization_id, r.reservation_id, r.order_id, r.expires_at, r.seq ${source}
          ORDER BY r.expires_at, r.seq
          ${limit === undefined ? sql`` : sql`LIMIT ${limit}`}
          FOR UPDATE OF r SKIP LOCKED
        ), claimed AS MATERIALIZED (
          SELECT * FROM batch
          WHERE pg_try_advisory_xact_lock(hashtextextended('inventory.order ' || organization_id || ' ' || order_id, 0))
        )
        SELECT ${sql.literal(columns.split(", ").map((c) => `r.${c}`).join(", "))}
        FROM reservations r JOIN claimed c USING (organization_id, reservation_id)
        ORDER BY c.expires_at, c.seq`)

    return Reservations.of({
      lockOrder,

      // The order's lock first, then the row: an expiry is serialised with that order's
      // events exactly as they are with one another, so it never interleaves with a ship or
      // a confirm half-way (and cannot deadlock against one).
      lockById: (org, id) =>
        Effect.gen(function*() {
          const owner = yield* orDatabaseError(sql<{ readonly order_id: string }>`
            SELECT order_id FROM reservations WHERE organization_id = ${org} AND reservation_id = ${id}`)
          if (owner[0] === undefined) return Option.none()
          yield* lockOrder(org, owner[0].order_id)
          return yield* first(sql<ReservationRecord>`
            SELECT ${sql.literal(columns)} FROM reservations
            WHERE organization_id = ${org} AND reservation_id = ${id} FOR UPDATE`)
        }),

      findById: (org, id) =>
        first(sql<ReservationRecord>`
          SELECT ${sql.literal(columns)} FROM reservations WHERE organization_id = ${org} AND reservation_id = ${id}`),

      findByOrder: (org, orderId) =>
        load(sql<ReservationRecord>`
          SELECT ${sql.literal(columns)} FROM reservations WHERE organization_id = ${org} AND order_id = ${orderId}
          ORDER BY ${sql.literal(newestFirst)}`),

      // One statement: the reservation and its items, or nothing when the order already has
      // a live one (the partial unique index) or the id exists.
      insert: (r) =>
        Effect.map(
          orDatabaseError(sql<{ readonly inserted: number }>`
            WITH r AS (
              INSERT INTO reservations (${sql.literal(columns)})
              VALUES (${r.organization_id}, ${r.reservation_id}, ${r.order_id}, ${r.status}, ${r.expires_at}, ${r.created_at}, ${r.caused_by}, ${r.closed_reason})
              ON CONFLICT DO NOTHING
              RETURNING organization_id, reservation_id
            ), items AS (
              INSERT INTO reservation_items (organization_id, reservation_id, position, variant_id, warehouse_id, quantity)
              SELECT r.organization_id, r.reservation_id, i.position, i.variant_id, i.warehouse_id, i.quantity
              FROM r, unnest(${r.items.map((i) => i.variant_id)}::text[], ${r.items.map((i) => i.warehouse_id)}::text[], ${r.items.map((i) => i.quantity)}::integer[])
                WITH ORDINALITY AS i(variant_id, warehouse_id, quantity, position)
            )
            SELECT count(*)::integer AS inserted FROM r`),
          (rows) => (rows[0]?.inserted ?? 0) > 0
        ),

      transition: (org, id, from, to, reason) =>
        Effect.map(
          orDatabaseError(sql`
            UPDATE reservations SET status = ${to}, closed_reason = COALESCE(${reason}::text, closed_reason)
            WHERE organization_id = ${org} AND reservation_id = ${id} AND status = ANY(${[...from]}::text[])
            RETURNING 1`),
          (rows) => rows.length > 0
        ),

      // Skips rows another process holds, and orders whose events are being handled right
      // now (their advisory lock is taken), so a sweep never waits on, or deadlocks with, them.
      lockDue: (now, limit) => claimDue(sql`FROM reservations r WHERE r.status = 'active' AND r.expires_at <= ${now}`, limit),

      // As `lockDue`, among the given reservations; then, of those not claimed, the ones still
      // active and past due in this statement's snapshot: someone else holds them.
      lockDueAmong: (refs, now) =>
        Effect.gen(function*() {
          if (refs.length === 0) return { claimed: [], busy: [] }
          const among = sql`
            FROM reservations r JOIN unnest(${refs.map((r) => r.organization_id)}::text[], ${refs.map((r) => r.reservation_id)}::text[])
              AS w(organization_id, reservation_id) USING (organization_id, reservation_id)
            WHERE r.status = 'active' AND r.expires_at <= ${now}`
          const claimed = yield* claimDue(among)
          if (claimed.length === refs.length) return { claimed, busy: [] }
          const mine = new Set(claimed.map((r) => `${r.organization_id}\u0000${r.reservation_id}`))
          const due = yield* orDatabaseError(sql<{ readonly organization_id: string; readonly reservation_id: string }>`
            SELECT r.organization_id, r.reservation_id ${among}`)
          const busy = due.filter((r) => !mine.has(`${r.organization_id}\u0000${r.reservation_id}`))
          return { claimed, busy }
        }),

      // One statement streamed, in no order: no page re-reads or re-sorts what came before, so a
      // slice of `reservations_due` (status, expires_at) costs its own rows, however large it is.
      activeSchedules: (due) =>
        sql<{ readonly organization_id: string; readonly reservation_id: string; readonly expires_at: Date }>`
          SELECT organization_id, reservation_id, expires_at FROM reservations
          WHERE status = 'active' AND expires_at IS NOT NULL
            ${due === undefined ? sql`` : sql`AND expires_at <= ${due.upTo}`}
            ${due?.after == null ? sql`` : sql`AND expires_at > ${due.after}`}`.stream.pipe(
          Stream.map((r) => ({ organization_id: r.organization_id, reservation_id: r.reservation_id, expires_at: r.expires_at })),
          Stream.catchTag("SqlError", (error) => Stream.fromEffect(fromSqlError(error)))
        ),

      list: (filter) =>
        load(sql<ReservationRecord>`
          SELECT ${sql.literal(columns)} FROM reservations
          WHERE ${
          sql.and([
            sql`organization_id = ${filter.organization_id}`,
            ...(filter.order_id !== undefined ? [sql`order_id = ${filter.order_id}`] : []),
            ...(filter.status !== undefined ? [sql`status = ${filter.status}`] : [])
          ])
        }
          ORDER BY ${sql.literal(newestFirst)}`)
    })
  })
)
