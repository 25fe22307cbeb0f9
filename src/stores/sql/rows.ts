import type { SqlClient } from "effect/sql/SqlClient"
import type { OutboxMessage, Reservation } from "../model.ts"
import { intArray, textArray } from "./arrays.ts"

const iso = (d: Date | null) => (d === null ? null : d.toISOString())

/**
 * Multi-row writes as statement fragments: one statement text whatever the count (one prepared
 * plan), rows in list order. The outbox insert is the store's and the working set's; the
 * reservation inserts are the working set's.
 */

/** Appends outbox messages; positions follow the list; an event id already there is skipped. */
export const insertOutbox = (sql: SqlClient, messages: ReadonlyArray<OutboxMessage>) => sql`
  INSERT INTO outbox (event_id, organization_id, event_type, aggregate_key, payload, traceparent, created_at)
  SELECT event_id, organization_id, event_type, aggregate_key, payload::jsonb, traceparent, created_at::timestamptz
  FROM unnest(${textArray(messages.map((m) => m.event_id))}::text[], ${textArray(messages.map((m) => m.organization_id))}::text[],
    ${textArray(messages.map((m) => m.event_type))}::text[], ${textArray(messages.map((m) => m.aggregate_key))}::text[],
    ${textArray(messages.map((m) => JSON.stringify(m.payload)))}::text[], ${textArray(messages.map((m) => m.traceparent))}::text[],
    ${textArray(messages.map((m) => m.created_at.toISOString()))}::text[])
    WITH ORDINALITY AS m(event_id, organization_id, event_type, aggregate_key, payload, traceparent, created_at, ord)
  ORDER BY ord
  ON CONFLICT (event_id) DO NOTHING`

/**
 * Inserts reservations, each unless its id exists or its order has a live one already (the
 * partial unique index), returning the (organization_id, reservation_id) of those written; their
 * items follow with `insertReservationItems`, joined to that result by its CTE name.
 */
export const insertReservations = (sql: SqlClient, rs: ReadonlyArray<Reservation>) => sql`
  INSERT INTO reservations (organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by, closed_reason)
  SELECT organization_id, reservation_id, order_id, status, expires_at::timestamptz, created_at::timestamptz, caused_by, closed_reason
  FROM unnest(${textArray(rs.map((r) => r.organization_id))}::text[], ${textArray(rs.map((r) => r.reservation_id))}::text[],
    ${textArray(rs.map((r) => r.order_id))}::text[], ${textArray(rs.map((r) => r.status))}::text[], ${textArray(rs.map((r) => iso(r.expires_at)))}::text[],
    ${textArray(rs.map((r) => r.created_at.toISOString()))}::text[], ${textArray(rs.map((r) => r.caused_by))}::text[], ${textArray(rs.map((r) => r.closed_reason))}::text[])
    WITH ORDINALITY AS n(organization_id, reservation_id, order_id, status, expires_at, created_at, caused_by, closed_reason, ord)
  ORDER BY ord
  ON CONFLICT DO NOTHING
  RETURNING organization_id, reservation_id`

/** The items of `rs`, for the reservations the CTE `written` (an `insertReservations`) wrote. */
export const insertReservationItems = (sql: SqlClient, rs: ReadonlyArray<Reservation>, written: string) => {
  const items = rs.flatMap((r) => r.items.map((item, i) => ({ r, item, position: i + 1 })))
  return sql`
    INSERT INTO reservation_items (organization_id, reservation_id, position, variant_id, warehouse_id, quantity)
    SELECT i.organization_id, i.reservation_id, i.position, i.variant_id, i.warehouse_id, i.quantity
    FROM unnest(${textArray(items.map((x) => x.r.organization_id))}::text[], ${textArray(items.map((x) => x.r.reservation_id))}::text[],
      ${intArray(items.map((x) => x.position))}::integer[], ${textArray(items.map((x) => x.item.variant_id))}::text[],
      ${textArray(items.map((x) => x.item.warehouse_id))}::text[], ${intArray(items.map((x) => x.item.quantity))}::integer[])
      AS i(organization_id, reservation_id, position, variant_id, warehouse_id, quantity)
    JOIN ${sql(written)} USING (organization_id, reservation_id)`
}
