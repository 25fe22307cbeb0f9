import { Console, Effect } from "effect"
import { Command } from "effect/cli"
import { databaseSettings } from "../config.ts"
import { clientLayer, prepareSchema } from "../stores/sql/client.ts"

/** `inventory migrate`: creates the schema if missing and applies pending migrations. */
export const migrate = Command.make("migrate", {}, () =>
  Effect.gen(function*() {
    const options = yield* databaseSettings
    const applied = yield* prepareSchema(options.schema).pipe(Effect.provide(clientLayer(options)))
    yield* Console.log(
      applied.length === 0
        ? `Schema ${options.schema} is current; nothing to apply.`
        : `Applied to schema ${options.schema}: ${applied.map(([id, name]) => `${String(id).padStart(4, "0")}_${name}`).join(", ")}`
    )
  })).pipe(
    Command.withDescription("Create the schema (DATABASE_SCHEMA) if missing and apply pending migrations"),
    Command.withExamples([{ command: "inventory migrate", description: "Bring the database up to date" }])
  )
