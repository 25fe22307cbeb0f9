import { NodeRuntime } from "@effect/platform-node"
import { Effect } from "effect"
import { databaseConfig, prepareSchema, clientLayer } from "./client.ts"

/** `npm run migrate`: applies pending migrations to the configured database, then exits. */
const program = Effect.gen(function*() {
  const options = yield* databaseConfig
  const applied = yield* prepareSchema(options.schema).pipe(Effect.provide(clientLayer(options)))
  yield* Effect.logInfo(applied.length === 0 ? "database schema is current" : "migrations applied").pipe(
    Effect.annotateLogs({ schema: options.schema, applied: applied.map(([id, name]) => `${id}_${name}`).join(", ") })
  )
})

NodeRuntime.runMain(program)
