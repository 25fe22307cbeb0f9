import { Layer } from "effect"
import type { MigrationError } from "effect/sql/Migrator"
import type { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import type { Stores } from "../services.ts"
import { type DatabaseOptions, migratedClientLayer } from "./client.ts"
import { ReconciliationSql } from "./reconciliation.ts"
import { ReservationsSql } from "./reservations.ts"
import { StockSql } from "./stock.ts"
import { EventLogSql, FailedEventsSql, MovementsSql, OutboxSql, StoreHealthSql, VariantsSql, WarehousesSql } from "./stores.ts"
import { UnitOfWorkSql } from "./unitOfWork.ts"
import { WorkingSetSql } from "./workingSet.ts"

export { answeredWithin, ResponseTimeout, type DatabaseOptions } from "./client.ts"
export { fromSqlError, UnexpectedDatabaseError } from "./errors.ts"
export { outboxChannel } from "./migrations.ts"

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
  StoreHealthSql,
  WorkingSetSql.pipe(Layer.provide(Layer.mergeAll(EventLogSql, ReservationsSql)))
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

/** Every store on PostgreSQL with the database section of the settings. Migrates when built. */
export const layer = (options: DatabaseOptions): Layer.Layer<Stores, SqlError | MigrationError> =>
  storesLayer.pipe(Layer.provideMerge(migratedClientLayer(options)))
