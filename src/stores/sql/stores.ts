import { PgClient } from "@effect/sql-pg"
import { Array as Arr, Clock, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { FailedEvent, Movement, PendingOutboxMessage, Variant, Warehouse } from "../model.ts"
import { EventLog, FailedEvents, type ListedFailedEvent, Movements, Outbox, StoreHealth, Variants, Warehouses } from "../services.ts"
import { responseBound } from "./client.ts"
import { orDatabaseError } from "./errors.ts"
import { insertOutbox } from "./rows.ts"
import { filterClause, whole } from "./stock.ts"

/**
 * What a statement sent outside a unit of work is wrapped in (`responseBound`), as a unit of work
 * is: for the statements the running consumer sends on its own, the relay's, the dead-letter
 * path's, the health check.
 */
const boundedStatements = responseBound("the statement was given up")

export const WarehousesSql = Layer.effect(
  Warehouses,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    return Warehouses.of({
      upsert: (w) =>
        Effect.asVoid(orDatabaseError(sql`
          INSERT INTO warehouses (organization_id, warehouse_id, name, active)
          VALUES (${w.organization_id}, ${w.warehouse_id}, ${w.name}, ${w.active})
          ON CONFLICT (organization_id, warehouse_id) DO UPDATE SET name = EXCLUDED.name, active = EXCLUDED.active`)),
      setActive: (org, id, active) =>
        Effect.map(
          orDatabaseError(sql`
            UPDATE warehouses SET active = ${active} WHERE organization_id = ${org} AND warehouse_id = ${id} RETURNING 1`),
          (rows) => rows.length > 0
        ),
      list: (org) =>
        orDatabaseError(sql<Warehouse>`
          SELECT organization_id, warehouse_id, name, active FROM warehouses
          WHERE organization_id = ${org} ORDER BY warehouse_id`),
      listActive: (org) =>
        orDatabaseError(sql<Warehouse>`
          SELECT organization_id, warehouse_id, name, active FROM warehouses
          WHERE organization_id = ${org} AND active ORDER BY warehouse_id`)
    })
  })
)

export const VariantsSql = Layer.effect(
  Variants,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    return Variants.of({
      get: (org, id) =>
        Effect.map(
          orDatabaseError(sql<Variant>`
            SELECT organization_id, variant_id, product_id, sku, tracked, deleted_at FROM variants
            WHERE organization_id = ${org} AND variant_id = ${id}`),
          (rows) => Option.fromNullishOr(rows[0])
        ),
      upsert: (v) =>
        Effect.asVoid(orDatabaseError(sql`
          INSERT INTO variants (organization_id, variant_id, product_id, sku, tracked, deleted_at)
          VALUES (${v.organization_id}, ${v.variant_id}, ${v.product_id}, ${v.sku}, ${v.tracked}, ${v.deleted_at})
          ON CONFLICT (organization_id, variant_id) DO UPDATE SET
            product_id = EXCLUDED.product_id, sku = EXCLUDED.sku, tracked = EXCLUDED.tracked, deleted_at = EXCLUDED.deleted_at`))
    })
  })
)

interface MovementRecord extends Omit<Movement, "quantity_change" | "quantity_before" | "quantity_after"> {
  readonly quantity_change: bigint | number
  readonly quantity_before: bigint | number
  readonly quantity_after: bigint | number
}

const movementColumns = "movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change, " +
  "quantity_before, quantity_after, category, reason, reference_type, reference_id, notes, caused_by, created_at"

export const MovementsSql = Layer.effect(
  Movements,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    return Movements.of({
      append: (movements) =>
        !Arr.isReadonlyArrayNonEmpty(movements) ? Effect.void : Effect.asVoid(orDatabaseError(sql`
          INSERT INTO stock_movements ${
          sql.insert(Arr.map(movements, (m): Record<string, unknown> => ({
            movement_id: m.movement_id,
            organization_id: m.organization_id,
            variant_id: m.variant_id,
            warehouse_id: m.warehouse_id,
            movement_type: m.movement_type,
            quantity_change: m.quantity_change,
            quantity_before: m.quantity_before,
            quantity_after: m.quantity_after,
            category: m.category,
            reason: m.reason,
            reference_type: m.reference_type,
            reference_id: m.reference_id,
            notes: m.notes,
            caused_by: m.caused_by,
            created_at: m.created_at
          })))
        }`)),
      list: (filter) =>
        Effect.map(
          orDatabaseError(sql<MovementRecord>`
            SELECT ${sql.literal(movementColumns)} FROM stock_movements WHERE ${filterClause(sql, filter)} ORDER BY position`),
          (rows) =>
            rows.map((m): Movement => ({
              ...m,
              quantity_change: whole(m.quantity_change),
              quantity_before: whole(m.quantity_before),
              quantity_after: whole(m.quantity_after)
            }))
        )
    })
  })
)

export const EventLogSql = Layer.effect(
  EventLog,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    return EventLog.of({
      // A concurrent twin waits on the first one's uncommitted row, then sees the conflict.
      record: (entry) =>
        Effect.map(
          orDatabaseError(sql`
            INSERT INTO event_log (organization_id, event_id, event_type, processed_at)
            VALUES (${entry.organization_id}, ${entry.event_id}, ${entry.event_type}, ${entry.processed_at})
            ON CONFLICT DO NOTHING RETURNING 1`),
          (rows) => rows.length > 0
        ),
      has: (org, eventId) =>
        Effect.map(
          orDatabaseError(sql`SELECT 1 FROM event_log WHERE organization_id = ${org} AND event_id = ${eventId}`),
          (rows) => rows.length > 0
        )
    })
  })
)

interface OutboxRecord extends Omit<PendingOutboxMessage, "position"> {
  readonly position: bigint | number
}

export const OutboxSql = Layer.effect(
  Outbox,
  Effect.gen(function*() {
    const sql = yield* PgClient.PgClient
    // The relay's statements: a round over a dead path fails at the deadline rather than publish,
    // once the path is back, rows it read before the cut (another relay has sent them meanwhile).
    const bounded = yield* boundedStatements
    return Outbox.of({
      append: (messages) =>
        messages.length === 0 ? Effect.void : Effect.asVoid(orDatabaseError(insertOutbox(sql, messages))),
      pending: (limit) =>
        bounded(Effect.map(
          orDatabaseError(sql<OutboxRecord>`
            SELECT position, event_id, organization_id, event_type, aggregate_key, payload, traceparent, created_at
            FROM outbox WHERE sent_at IS NULL ORDER BY position LIMIT ${limit}`),
          (rows) => rows.map((m): PendingOutboxMessage => ({ ...m, position: whole(m.position) }))
        )),
      // The relay's own clock: `sent_at` is bookkeeping, never compared with event times.
      markSent: (positions) =>
        positions.length === 0 ? Effect.void : Effect.flatMap(Clock.currentTimeMillis, (now) =>
          bounded(Effect.asVoid(orDatabaseError(sql`
            UPDATE outbox SET sent_at = ${new Date(now)}
            WHERE position = ANY(${positions.map((p) => BigInt(p))}::bigint[]) AND sent_at IS NULL`)))),
      pendingCount: () =>
        bounded(Effect.map(
          orDatabaseError(sql<{ readonly n: bigint }>`SELECT count(*) AS n FROM outbox WHERE sent_at IS NULL`),
          (rows) => whole(rows[0]?.n ?? 0)
        )),
      purgeSent: (sentBefore, limit) =>
        bounded(Effect.map(
          orDatabaseError(sql<{ readonly n: number }>`
            WITH gone AS (
              DELETE FROM outbox WHERE position IN (
                SELECT position FROM outbox WHERE sent_at < ${sentBefore} ORDER BY position LIMIT ${limit})
              RETURNING 1
            )
            SELECT count(*)::integer AS n FROM gone`),
          (rows) => rows[0]?.n ?? 0
        ))
    })
  })
)

const failedColumns = "id, event_id, event_type, organization_id, error_type, error_message, body, body_sha256, body_length, " +
  "content_type, original_exchange, original_routing_key, attempts, failed_at, replay_count, last_replayed_at, dlq_copied_at, headers"

export const FailedEventsSql = Layer.effect(
  FailedEvents,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    // The dead-letter path's writes: a message being dead-lettered over a dead path goes back to
    // the queue at the deadline (`StoreUnavailable`) rather than hold its lane, and the pause, on TCP.
    const bounded = yield* boundedStatements
    return FailedEvents.of({
      // The first record of an id stays: the snapshot of the outer SELECT does not see the
      // insert, so it answers only when the insert did nothing.
      record: (e) =>
        bounded(Effect.flatMap(
          orDatabaseError(sql<FailedEvent>`
            WITH inserted AS (
              INSERT INTO failed_events (${sql.literal(failedColumns)})
              VALUES (${e.id}, ${e.event_id}, ${e.event_type}, ${e.organization_id}, ${e.error_type}, ${e.error_message},
                ${e.body}, ${e.body_sha256}, ${e.body_length}, ${e.content_type}, ${e.original_exchange}, ${e.original_routing_key},
                ${e.attempts}, ${e.failed_at}, ${e.replay_count}, ${e.last_replayed_at}, ${e.dlq_copied_at},
                ${JSON.stringify(e.headers)}::jsonb)
              ON CONFLICT (id) DO NOTHING
              RETURNING ${sql.literal(failedColumns)}
            )
            SELECT ${sql.literal(failedColumns)} FROM inserted
            UNION ALL
            SELECT ${sql.literal(failedColumns)} FROM failed_events WHERE id = ${e.id} AND NOT EXISTS (SELECT 1 FROM inserted)`),
          (rows) => rows[0] === undefined ? Effect.die(new Error(`failed event ${e.id} neither inserted nor found`)) : Effect.succeed(rows[0])
        )),
      markCopied: (id, at) =>
        bounded(Effect.asVoid(orDatabaseError(sql`
          UPDATE failed_events SET dlq_copied_at = ${at} WHERE id = ${id} AND dlq_copied_at IS NULL`))),
      get: (id) =>
        Effect.map(
          orDatabaseError(sql<FailedEvent>`SELECT ${sql.literal(failedColumns)} FROM failed_events WHERE id = ${id}`),
          (rows) => Option.fromNullishOr(rows[0])
        ),
      list: (filter) =>
        Effect.map(
          orDatabaseError(sql<FailedEvent & { readonly seq: bigint | number | string }>`
            SELECT ${sql.literal(failedColumns)}, seq FROM failed_events
            WHERE ${
            sql.and([
              ...(filter.event_type !== undefined ? [sql`event_type = ${filter.event_type}`] : []),
              ...(filter.error_type !== undefined ? [sql`error_type = ${filter.error_type}`] : []),
              ...(filter.organization_id !== undefined ? [sql`organization_id = ${filter.organization_id}`] : []),
              ...(filter.after !== undefined ? [sql`(failed_at, seq) > (${filter.after.failed_at}, ${BigInt(filter.after.seq)})`] : [])
            ])
          }
            ORDER BY failed_at, seq
            ${filter.limit !== undefined ? sql`LIMIT ${filter.limit}` : sql``}`),
          (rows) => rows.map((e): ListedFailedEvent => ({ ...e, seq: whole(e.seq) }))
        ),
      markReplayed: (id, at) =>
        Effect.asVoid(orDatabaseError(sql`
          UPDATE failed_events SET replay_count = replay_count + 1, last_replayed_at = ${at} WHERE id = ${id}`)),
      purge: (failedBefore, limit) =>
        Effect.map(
          orDatabaseError(sql<{ readonly n: number }>`
            WITH gone AS (
              DELETE FROM failed_events WHERE id IN (
                SELECT id FROM failed_events WHERE failed_at < ${failedBefore} ORDER BY failed_at, seq LIMIT ${limit})
              RETURNING 1
            )
            SELECT count(*)::integer AS n FROM gone`),
          (rows) => rows[0]?.n ?? 0
        )
    })
  })
)

export const StoreHealthSql = Layer.effect(
  StoreHealth,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    // A ping over a dead path would otherwise wait for TCP, and a paused consumer, which resumes
    // on a ping's answer, with it.
    const bounded = yield* boundedStatements
    return StoreHealth.of({ ping: bounded(Effect.asVoid(orDatabaseError(sql`SELECT 1`))) })
  })
)
