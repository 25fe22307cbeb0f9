import { PgClient } from "@effect/sql-pg"
import { Context, type Duration, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { migrate } from "./migrations.ts"

/** The database section of the settings (`databaseSettings` in src/config.ts reads it). */
export interface DatabaseOptions {
  readonly url: Redacted.Redacted | string
  /** Every table lives here; it is the connections' `search_path`. */
  readonly schema: string
  readonly poolSize?: number | undefined
  /** How long opening a connection may take (default 10 s); measured on the Effect clock. */
  readonly connectTimeout?: Duration.Input | undefined
}

/**
 * How many connections the pool was built with, provided by `clientLayer` next to the client:
 * units of work leave two of them free (`UnitOfWorkSql`). A client built elsewhere gets the
 * driver's default of 10.
 */
export const PoolSize = Context.Reference<number>("inventory/stores/sql/PoolSize", { defaultValue: () => 10 })

// A plain identifier keeps the search_path value and CREATE SCHEMA free of quoting games.
const schemaName = /^[a-z_][a-z0-9_]{0,62}$/

/**
 * The pool behind every SQL store. Each physical connection starts with `search_path` set to
 * the schema, so unqualified table names resolve there (tests give each file its own schema).
 */
export const clientLayer = (options: DatabaseOptions): Layer.Layer<PgClient.PgClient | SqlClient, SqlError> =>
  Layer.unwrap(Effect.suspend(() =>
    schemaName.test(options.schema)
      ? Effect.succeed(Layer.merge(
        PgClient.layer({
          url: typeof options.url === "string" ? Redacted.make(options.url) : options.url,
          maxConnections: options.poolSize ?? 10,
          connectTimeout: options.connectTimeout ?? "10 seconds",
          applicationName: "inventory-event-consumer",
          startupParameters: { search_path: options.schema }
        }),
        Layer.succeed(PoolSize, options.poolSize ?? 10)
      ))
      : Effect.die(new Error(`DATABASE_SCHEMA must be a lower-case identifier, got ${JSON.stringify(options.schema)}`))
  ))

/** Creates the schema if it is missing and applies pending migrations; re-running is a no-op. */
export const prepareSchema = (schema: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    if (schema !== "public") yield* sql.unsafe(`CREATE SCHEMA IF NOT EXISTS ${schema}`)
    return yield* migrate
  })

/** A migrated database: the client, once the schema is current. */
export const migratedClientLayer = (options: DatabaseOptions) =>
  Layer.effectDiscard(prepareSchema(options.schema)).pipe(Layer.provideMerge(clientLayer(options)))
