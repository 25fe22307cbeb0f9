import { Effect, Layer } from "effect"
import type { ConfigError } from "effect/Config"
import type { MigrationError } from "effect/sql/Migrator"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { Stores } from "../services.ts"
import { databaseConfig, type DatabaseOptions, migratedClientLayer } from "./client.ts"
import { ReconciliationSql } from "./reconciliation.ts"
import { ReservationsSql } from "./reservations.ts"
import { StockSql } from "./stock.ts"
import { EventLogSql, FailedEventsSql, MovementsSql, OutboxSql, StoreHealthSql, VariantsSql, WarehousesSql } from "./stores.ts"
import { UnitOfWorkSql } from "./unitOfWork.ts"

export { DEFAULT_DATABASE_URL, type DatabaseOptions, databaseConfig } from "./client.ts"
export { fromSqlError, UnexpectedDatabaseError } from "./errors.ts"

/** Every store service on PostgreSQL, given a migrated `SqlClient` (and `PgClient`). */
export const storesLayer = Layer.mergeAll(
  UnitOfWorkSql,
  WarehousesSql,
  VariantsSql,
  StockSql,
  ReservationsSql,
  MovementsSql,
  EventLogSql,
  OutboxSql,
  FailedEventsSql,
  ReconciliationSql,
  StoreHealthSql
)

/**
 * The stores on one pool, with the raw client alongside, for tests and operator commands
 * that read or repair rows directly. Creates the schema if missing and migrates first.
 */
export const layerWithClient = (options: DatabaseOptions): Layer.Layer<Stores | SqlClient, SqlError | MigrationError> =>
  storesLayer.pipe(Layer.provideMerge(migratedClientLayer(options)))

// `layerWith` and `layer` keep the client in the context too: the outbox relay finds PgClient
// there and elects one active relay among replicas with an advisory lock (messaging/relay.ts).

/**
 * Every store on PostgreSQL at an explicit address and schema (tests give each file its own
 * schema): creates the schema if missing, migrates, provides the stores.
 */
export const layerWith = (options: {
  readonly url: string
  readonly schema: string
  readonly poolSize?: number | undefined
}): Layer.Layer<Stores, SqlError | MigrationError> => storesLayer.pipe(Layer.provideMerge(migratedClientLayer(options)))

/**
 * Every store on PostgreSQL as configured: `DATABASE_URL` (default
 * `postgres://postgres@127.0.0.1:5432/postgres`), `DATABASE_POOL_SIZE` (default 10),
 * `DATABASE_SCHEMA` (default `public`). Migrates when built.
 */
export const layer: Layer.Layer<Stores, ConfigError | SqlError | MigrationError> = Layer.unwrap(
  Effect.map(databaseConfig, (options) => storesLayer.pipe(Layer.provideMerge(migratedClientLayer(options))))
)
