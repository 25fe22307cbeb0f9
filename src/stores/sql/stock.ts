import { Clock, Effect, Layer, Option } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { DatabaseError } from "../../domain/errors.ts"
import { type StockCategory, type StockKey, stockKeyString, type StockRow } from "../model.ts"
import { Stock, type StockChange, type StockFilter } from "../services.ts"
import { orDatabaseError, UnexpectedDatabaseError } from "./errors.ts"
import { atomically } from "./unitOfWork.ts"

export interface StockRecord {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  readonly total: bigint | number
  readonly available: bigint | number
  readonly reserved: bigint | number
  readonly damaged: bigint | number
  readonly in_transit: bigint | number
  readonly min_stock: number
  readonly max_stock: number
  readonly stock_strategy: string
  readonly archived_at: Date | null
}

/** `bigint` columns arrive as JS bigints; balances stay far below 2^53. */
export const whole = (value: bigint | number | string): number => Number(value)

export const toStockRow = (r: StockRecord): StockRow => ({
  organization_id: r.organization_id,
  variant_id: r.variant_id,
  warehouse_id: r.warehouse_id,
  total: whole(r.total),
  available: whole(r.available),
  reserved: whole(r.reserved),
  damaged: whole(r.damaged),
  in_transit: whole(r.in_transit),
  min_stock: r.min_stock,
  max_stock: r.max_stock,
  stock_strategy: "FIFO",
  archived_at: r.archived_at
})

const newRow = (key: StockKey): StockRow => ({
  organization_id: key.organization_id,
  variant_id: key.variant_id,
  warehouse_id: key.warehouse_id,
  total: 0,
  available: 0,
  reserved: 0,
  damaged: 0,
  in_transit: 0,
  min_stock: 0,
  max_stock: 999_999,
  stock_strategy: "FIFO",
  archived_at: null
})

const add = (row: StockRow, quantity: number, category: StockCategory): StockRow =>
  category === "available"
    ? { ...row, available: row.available + quantity, total: row.total + quantity, archived_at: null }
    : { ...row, damaged: row.damaged + quantity, total: row.total + quantity, archived_at: null }

const broken = (message: string) => Effect.die(new UnexpectedDatabaseError(`stock store invariant: ${message}`))

export const StockSql = Layer.effect(
  Stock,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const rows = (statement: Effect.Effect<ReadonlyArray<StockRecord>, SqlError>) =>
      orDatabaseError(Effect.map(statement, (records) => records.map(toStockRow)))
    const single = (statement: Effect.Effect<ReadonlyArray<StockRecord>, SqlError>) =>
      Effect.map(rows(statement), (found) => Option.fromNullishOr(found[0]))
    const where = (key: StockKey) =>
      sql`organization_id = ${key.organization_id} AND variant_id = ${key.variant_id} AND warehouse_id = ${key.warehouse_id}`

    const lockRow = (key: StockKey) => single(sql<StockRecord>`SELECT * FROM stock WHERE ${where(key)} FOR UPDATE`)

    /**
     * Adds a signed quantity to one category and to total, creating or un-archiving the row.
     * The row is locked first so `before` is exactly what the update changed.
     */
    const change = (key: StockKey, delta: number, category: StockCategory): Effect.Effect<Option.Option<StockChange>, DatabaseError> =>
      atomically(sql, Effect.gen(function*() {
        const existing = yield* lockRow(key)
        if (Option.isSome(existing)) {
          const before = existing.value
          const wanted = add(before, delta, category)
          if (wanted.available < 0 || wanted.damaged < 0) return Option.none()
          const column = sql(category)
          const after = yield* single(sql<StockRecord>`
            UPDATE stock SET ${column} = ${column} + ${delta}, total = total + ${delta}, archived_at = NULL
            WHERE ${where(key)} RETURNING *`)
          if (Option.isNone(after)) return yield* broken(`row ${stockKeyString(key)} vanished while locked`)
          return Option.some({ before, after: after.value })
        }
        const before = newRow(key)
        const wanted = add(before, delta, category)
        if (wanted.available < 0 || wanted.damaged < 0) return Option.none()
        const inserted = yield* single(sql<StockRecord>`
          INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available, damaged)
          VALUES (${key.organization_id}, ${key.variant_id}, ${key.warehouse_id}, ${wanted.total}, ${wanted.available}, ${wanted.damaged})
          ON CONFLICT DO NOTHING RETURNING *`)
        if (Option.isSome(inserted)) return Option.some({ before, after: inserted.value })
        // Another unit created the row between our look and our insert: it exists now, go again.
        return yield* change(key, delta, category)
      }))

    return Stock.of({
      forVariants: (org, variantIds, options) =>
        rows(sql<StockRecord>`
          SELECT * FROM stock
          WHERE organization_id = ${org} AND variant_id = ANY(${[...variantIds]}::text[])
          ORDER BY organization_id, variant_id, warehouse_id
          ${sql.literal(options.lock ? "FOR UPDATE" : "")}`),

      // The warehouse is read, not locked, as a plain read of `warehouses` would be.
      candidates: (org, variantIds) =>
        rows(sql<StockRecord>`
          SELECT s.* FROM stock s
          JOIN warehouses w ON w.organization_id = s.organization_id AND w.warehouse_id = s.warehouse_id AND w.active
          WHERE s.organization_id = ${org} AND s.variant_id = ANY(${[...variantIds]}::text[]) AND s.archived_at IS NULL
          ORDER BY s.organization_id, s.variant_id, s.warehouse_id
          FOR UPDATE OF s`),

      initialize: (org, variantId, warehouseIds, levels) =>
        atomically(sql, Effect.gen(function*() {
          const ids = [...new Set(warehouseIds)].sort()
          yield* orDatabaseError(sql`
            UPDATE stock SET archived_at = NULL
            WHERE organization_id = ${org} AND variant_id = ${variantId} AND warehouse_id = ANY(${ids}::text[])
              AND archived_at IS NOT NULL AND total = 0 AND in_transit = 0`)
          const created = yield* orDatabaseError(sql`
            INSERT INTO stock (organization_id, variant_id, warehouse_id, min_stock, max_stock)
            SELECT ${org}, ${variantId}, w, ${levels.min}, ${levels.max} FROM unnest(${ids}::text[]) AS w ORDER BY w
            ON CONFLICT DO NOTHING RETURNING 1`)
          return created.length
        })),

      reserve: (key, quantity) =>
        single(sql<StockRecord>`
          UPDATE stock SET available = available - ${quantity}, reserved = reserved + ${quantity}
          WHERE ${where(key)} AND available >= ${quantity} AND archived_at IS NULL
          RETURNING *`),

      release: (key, quantity) =>
        Effect.flatMap(
          single(sql<StockRecord>`
            UPDATE stock SET available = available + ${quantity}, reserved = reserved - ${quantity}
            WHERE ${where(key)} AND reserved >= ${quantity}
            RETURNING *`),
          Option.match({
            onNone: () => broken(`release ${quantity} from ${stockKeyString(key)}`),
            onSome: Effect.succeed
          })
        ),

      ship: (key, quantity) =>
        Effect.flatMap(
          single(sql<StockRecord>`
            UPDATE stock SET reserved = reserved - ${quantity}, total = total - ${quantity}
            WHERE ${where(key)} AND reserved >= ${quantity}
            RETURNING *`),
          Option.match({
            onNone: () => broken(`ship ${quantity} from ${stockKeyString(key)}`),
            // One UPDATE changed exactly these two columns, so the row before it is implied.
            onSome: (after) =>
              Effect.succeed({ before: { ...after, reserved: after.reserved + quantity, total: after.total + quantity }, after })
          })
        ),

      receive: (key, quantity, category) =>
        Effect.flatMap(
          change(key, quantity, category),
          Option.match({ onNone: () => broken(`receive ${quantity} into ${stockKeyString(key)}`), onSome: Effect.succeed })
        ),

      adjust: (key, delta, category) => change(key, delta, category),

      archive: (org, variantId) =>
        Effect.flatMap(Clock.currentTimeMillis, (now) =>
          Effect.map(
            orDatabaseError(sql`
              UPDATE stock SET archived_at = ${new Date(now)}
              WHERE organization_id = ${org} AND variant_id = ${variantId} AND archived_at IS NULL
              RETURNING 1`),
            (archived) => archived.length
          )),

      list: (filter) => rows(sql<StockRecord>`SELECT * FROM stock WHERE ${filterClause(sql, filter)} ORDER BY organization_id, variant_id, warehouse_id`)
    })
  })
)

/** The WHERE clause of a `StockFilter` (every field optional). */
export const filterClause = (sql: SqlClient, filter: StockFilter) =>
  sql.and([
    ...(filter.organization_id !== undefined ? [sql`organization_id = ${filter.organization_id}`] : []),
    ...(filter.variant_id !== undefined ? [sql`variant_id = ${filter.variant_id}`] : []),
    ...(filter.warehouse_id !== undefined ? [sql`warehouse_id = ${filter.warehouse_id}`] : [])
  ])
