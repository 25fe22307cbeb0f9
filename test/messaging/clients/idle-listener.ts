import { PgClient } from "@effect/sql-pg"
import { Cause, Effect, Layer, Queue } from "effect"
import { clientLayer } from "../../../src/stores/sql/client.ts"

/**
 * A connection of the consumer's pool that sends nothing: it LISTENs, as the outbox relay's
 * listener does, and says when it fails. Run by test/messaging/database-cut.test.ts inside the
 * namespace whose database link it cuts: only TCP keepalive can find such a connection dead.
 * Arguments: the database URL, the response timeout in milliseconds (the keepalive's idle time).
 */
const [url, responseTimeout] = process.argv.slice(2)
const startedAt = Date.now()

const program = Effect.scoped(Effect.gen(function*() {
  const pg = yield* PgClient.PgClient
  const notifications = yield* pg.listen("idle_listener_probe")
  console.log("listening")
  yield* Queue.take(notifications).pipe(Effect.forever)
})).pipe(
  Effect.catchCause((cause) => Effect.sync(() => console.log(`listener failed after ${Date.now() - startedAt} ms: ${Cause.squash(cause)}`))),
  Effect.provide(clientLayer({ url: url!, schema: "public", poolSize: 1, responseTimeout: Number(responseTimeout) }) as Layer.Layer<PgClient.PgClient>)
)

Effect.runPromise(program).then(() => process.exit(0), (error) => {
  console.error(error)
  process.exit(1)
})
