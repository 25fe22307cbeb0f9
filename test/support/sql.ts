import { type Duration, Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"

/** The test database: PostgreSQL on 127.0.0.1, user postgres, trust auth. */
export const testDatabaseUrl = process.env["TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test"

/** A schema no other run or file can be using: `t_<file>_<random>`. */
export const uniqueSchema = (file: string) =>
  `t_${file.toLowerCase().replace(/[^a-z0-9_]/g, "_")}_${process.pid.toString(36)}_${Math.random().toString(36).slice(2, 10)}`

/**
 * The SQL stores (and the raw client) in a fresh schema of the test database, migrated on
 * build and dropped on release, so test files never see each other's rows.
 * `layer(sqlStoresLayer("contract"))(...)` from @effect/vitest shares it between tests.
 */
export const sqlStoresLayer = (file: string, options: { readonly poolSize?: number; readonly responseTimeout?: Duration.Input } = {}) => {
  // Tests move the Effect clock (TestClock) by minutes or days at a time; a connection being
  // opened, or a unit of work waiting for its answer, at that moment must not count that as its
  // connect or response timeout (a test that wants the response timeout passes its own).
  const schema = uniqueSchema(file)
  const dropOnRelease = Layer.effectDiscard(Effect.gen(function*() {
    const sql = yield* SqlClient
    yield* Effect.addFinalizer(() => Effect.ignore(sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)))
  }))
  return dropOnRelease.pipe(
    Layer.provideMerge(SqlStores.layerWithClient({
      url: testDatabaseUrl,
      schema,
      poolSize: options.poolSize ?? 10,
      connectTimeout: "3650 days",
      responseTimeout: options.responseTimeout ?? "3650 days"
    }))
  )
}

/** SQL stores with the real TTL scheduler on top, as `test/support/memory.ts` wires the memory ones. */
export const sqlLayer = (file: string, options: { readonly poolSize?: number } = {}) =>
  Scheduler.layer({ sweepInterval: "60 seconds", sweepBatch: 500 }).pipe(Layer.provideMerge(sqlStoresLayer(file, options)))
