import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Effect } from "effect"
import { databaseSettings } from "./config.ts"
import { clientLayer, prepareSchema } from "./stores/sql/client.ts"

/**
 * `npm run migrate`: applies pending migrations to the configured database, then exits. An entry
 * point, so it reads its settings from src/config.ts as main.ts does.
 */
const program = Effect.gen(function*() {
  const options = yield* databaseSettings
  const applied = yield* prepareSchema(options.schema).pipe(Effect.provide(clientLayer(options)))
  yield* Effect.logInfo(applied.length === 0 ? "database schema is current" : "migrations applied").pipe(
    Effect.annotateLogs({ schema: options.schema, applied: applied.map(([id, name]) => `${id}_${name}`).join(", ") })
  )
})

NodeRuntime.runMain(program)
