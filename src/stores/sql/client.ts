import { PgClient } from "@effect/sql-pg"
import { Context, Duration, Effect, Layer, Redacted } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import type { SqlError } from "effect/sql/SqlError"
import { DatabaseError } from "../../domain/errors.ts"
import { migrate } from "./migrations.ts"

/** The database section of the settings (`databaseSettings` in src/config.ts reads it). */
export interface DatabaseOptions {
  readonly url: Redacted.Redacted | string
  /** Every table lives here; it is the connections' `search_path`. */
  readonly schema: string
  readonly poolSize?: number | undefined
  /** How long opening a connection may take (default 10 s); measured on the Effect clock. */
  readonly connectTimeout?: Duration.Input | undefined
  /**
   * How long a session may wait for this process inside a transaction before PostgreSQL ends it
   * (`idle_in_transaction_session_timeout`; default 15 s). See `clientLayer`.
   */
  readonly idleInTransactionTimeout?: Duration.Input | undefined
  /**
   * How long a unit of work, or a statement the consumer sends outside one, waits for the database
   * before it counts it as unreachable (default 10 s); also the idle time before TCP keepalive
   * probes. See `ResponseTimeout`.
   */
  readonly responseTimeout?: Duration.Input | undefined
}

/**
 * A unit of work waits for this process only while it applies events in memory: milliseconds.
 * One whose process stopped answering (paused, or its machine or network gone without closing
 * the socket) would otherwise keep its transaction and the rows it locked for as long as that
 * process is paused, or until TCP keepalive notices a dead peer, two hours by default; the
 * replica the broker hands its queue to would wait on those rows all that time. The broker gives
 * up on a silent connection after its heartbeat timeout (`AMQP_HEARTBEAT_SECONDS`, 30 s: two
 * heartbeats missed, sent every 15 s); half of that here, so the locks are released before the
 * standby takes the messages over. Still a thousand times what a unit of work waits for us.
 */
export const DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT = Duration.seconds(15)

/**
 * A path to the database that dies without a reset (a switch, a firewall, a cable) leaves a
 * statement in flight waiting on TCP: until it gives up retransmitting (about 15 minutes on
 * Linux), or for ever when the request was acknowledged and only the answer is lost. Meanwhile the
 * replica keeps its broker connection, so under single active consumer the broker keeps the queue
 * with it, and no replica applies anything. So a unit of work (`UnitOfWorkSql`), the statements
 * the consumer sends outside one (health checks, the relay's, the dead-letter path's:
 * `boundedStatements` in stores.ts) and the relay's lock checks (messaging/relay.ts) wait this
 * long at most, then fail: the consumer pauses and lets go of the queue, the relay stands down
 * (test/messaging/database-cut.test.ts). A unit of work waits milliseconds for rows another one
 * holds. Longer only behind a replica frozen inside a unit of work, until PostgreSQL ends that
 * transaction (`DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT`, 15 s); a standby taking over its queue comes
 * after that (the broker's 30 s heartbeat timeout), but another queue's consumer may be caught
 * waiting: it times out here and its retry finds the rows free. A retry, nothing lost.
 */
export const DEFAULT_RESPONSE_TIMEOUT = Duration.seconds(10)

/** How long the database may take to answer, provided by `clientLayer` next to the client. */
export const ResponseTimeout = Context.Reference<Duration.Duration>("inventory/stores/sql/ResponseTimeout", {
  defaultValue: () => DEFAULT_RESPONSE_TIMEOUT
})

/**
 * `effect`, or `onTimeout` once `duration` passed without its answer. Unlike `Effect.timeout`,
 * which waits for what it interrupts to finish, this answers at once: effect/sql sends a
 * transaction's BEGIN and COMMIT uninterruptibly, so one sent down a dead path would keep the
 * caller waiting as long as TCP does (seen in test/messaging/database-cut.test.ts). The abandoned
 * effect is interrupted in the background and ends when its statement or connection does.
 *
 * Two fibers started at once and their observers, rather than `Effect.timeoutOption` over a join:
 * its race forks two more, and every unit of work and relay statement pays for this (4.4 against
 * 10.5 µs of CPU a call in a local micro-benchmark, 2026-12-06). The timer sleeps on the Effect
 * clock, so `TestClock` drives it (test/stores/answered-within.test.ts).
 */
export const answeredWithin = <A, E, R, E2>(effect: Effect.Effect<A, E, R>, duration: Duration.Duration, onTimeout: Effect.Effect<never, E2>) =>
  // Uninterruptible until the wait, which a caller's interruption leaves at once: both fibers are
  // interrupted then, never waited for.
  Effect.uninterruptibleMask((restore) =>
    Effect.flatMap(Effect.forkDetach(effect, { startImmediately: true }), (work): Effect.Effect<A, E | E2> => {
      // Answered without waiting (nothing asynchronous in it): no timer.
      const answered = work.pollUnsafe()
      if (answered !== undefined) return answered
      return Effect.flatMap(Effect.forkDetach(Effect.sleep(duration), { startImmediately: true }), (timer) =>
        restore(Effect.callback<A, E | E2>((resume) => {
          const offWork = work.addObserver((exit) => {
            offTimer()
            timer.interruptUnsafe()
            resume(exit)
          })
          const offTimer = timer.addObserver(() => {
            offWork()
            work.interruptUnsafe()
            resume(onTimeout)
          })
          return Effect.sync(() => {
            offWork()
            offTimer()
          })
        })).pipe(Effect.onInterrupt(() =>
          Effect.sync(() => {
            timer.interruptUnsafe()
            work.interruptUnsafe()
          })
        )))
    }))

/**
 * `answeredWithin` at the `ResponseTimeout`, given up as an outage: a `DatabaseError` with reason
 * `timeout`, whose message says what was given up. What units of work (`UnitOfWorkSql`) and the
 * statements sent outside them (`boundedStatements` in stores.ts) wait under.
 */
export const responseBound = (givenUp: string) =>
  Effect.map(ResponseTimeout, (timeout) => {
    const unanswered = Effect.fail(new DatabaseError({
      reason: "timeout",
      message: `no answer from the database within ${Duration.format(timeout)}: ${givenUp}`
    }))
    return <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | DatabaseError, R> => answeredWithin(effect, timeout, unanswered)
  })

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
 * the schema, so unqualified table names resolve there (tests give each file its own schema),
 * and with `idle_in_transaction_session_timeout`, so a transaction whose client stopped answering
 * does not hold its locks past that (`DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT`). Idle connections send
 * TCP keepalive probes after `responseTimeout`, so one whose path died fails by itself (ten
 * unanswered probes a second apart: 11 s after a cut with a 1 s timeout, in
 * test/messaging/database-cut.test.ts) rather than when a unit of work picks it up.
 */
export const clientLayer = (options: DatabaseOptions): Layer.Layer<PgClient.PgClient | SqlClient, SqlError> =>
  Layer.unwrap(Effect.suspend(() => {
    const responseTimeout = Duration.fromInputUnsafe(options.responseTimeout ?? DEFAULT_RESPONSE_TIMEOUT)
    return schemaName.test(options.schema)
      ? Effect.succeed(Layer.mergeAll(
        PgClient.layer({
          url: typeof options.url === "string" ? Redacted.make(options.url) : options.url,
          maxConnections: options.poolSize ?? 10,
          connectTimeout: options.connectTimeout ?? "10 seconds",
          applicationName: "inventory-event-consumer",
          // The driver counts it in whole seconds, one at least.
          keepAlive: Duration.max(responseTimeout, Duration.seconds(1)),
          startupParameters: {
            search_path: options.schema,
            idle_in_transaction_session_timeout: String(Duration.toMillis(options.idleInTransactionTimeout ?? DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT))
          }
        }),
        Layer.succeed(PoolSize, options.poolSize ?? 10),
        Layer.succeed(ResponseTimeout, responseTimeout)
      ))
      : Effect.die(new Error(`DATABASE_SCHEMA must be a lower-case identifier, got ${JSON.stringify(options.schema)}`))
  }))

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
