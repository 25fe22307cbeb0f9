import { Cause, Context, Effect, Exit, Layer, Semaphore } from "effect"
import { isSqlError, type SqlError } from "effect/sql/SqlError"
import { SqlClient } from "effect/sql/SqlClient"
import { DatabaseError } from "../../domain/errors.ts"
import { PoolSize, responseBound } from "./client.ts"
import { UnitOfWork } from "../services.ts"
import { fromSqlError, isConnectionLoss } from "./errors.ts"

interface Unit {
  readonly afterCommit: Array<Effect.Effect<void>>
}

/** The outermost unit of work the current fiber runs in, if any (as in `MemoryDatabase`). */
const CurrentUnit = Context.Reference<Unit | undefined>("inventory/stores/sql/CurrentUnit", {
  defaultValue: () => undefined
})

/**
 * SQL failures of the transaction itself (BEGIN, SAVEPOINT, COMMIT) are translated like any
 * statement's. When the connection dies mid-unit, effect/sql's ROLLBACK dies too; the server
 * has rolled the work back already, so that is an outage (retryable), not a bug.
 */
const translate = <A, E, R>(effect: Effect.Effect<A, E | SqlError, R>): Effect.Effect<A, E | DatabaseError, R> =>
  Effect.catchCause(effect, (cause): Effect.Effect<never, E | DatabaseError> => {
    const lost = cause.reasons.some((reason) =>
      Cause.isDieReason(reason) && isSqlError(reason.defect) && isConnectionLoss(reason.defect)
    )
    if (lost) return Effect.fail(new DatabaseError({ reason: "connection", message: "database connection lost during a unit of work; it was rolled back" }))
    const failed = cause.reasons.find(Cause.isFailReason)
    if (failed !== undefined && isSqlError(failed.error)) return fromSqlError(failed.error)
    return Effect.failCause(cause as Cause.Cause<E>)
  })

/**
 * Runs several statements of one store call atomically: inside a unit of work they already
 * are (and no savepoint is spent on them); outside one they get their own transaction.
 */
export const atomically = <A, R>(sql: SqlClient, effect: Effect.Effect<A, DatabaseError, R>): Effect.Effect<A, DatabaseError, R> =>
  Effect.flatMap(CurrentUnit, (unit) => unit === undefined ? translate(sql.withTransaction(effect)) : effect)

/**
 * `sql.withTransaction` is the unit of work: the outermost call is BEGIN/COMMIT on one pooled
 * connection, nested calls are SAVEPOINTs (rolled back alone on failure). After-commit work
 * is kept here, not in `sql.afterCommit`, so it behaves exactly as the memory store: queued
 * in order, dropped with a rolled-back savepoint, run after the outermost COMMIT, and run at
 * once outside a unit of work.
 */
export const UnitOfWorkSql = Layer.effect(
  UnitOfWork,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    // A unit of work holds a pooled connection for its whole length, waiting on locks while it
    // does. Two connections stay out of the units' reach, so the outbox relay, the expiry sweep
    // and health checks never queue behind a backlog of them: with 500 messages in flight on 10
    // connections, the relay published nothing for as long as the backlog lasted (issue 8).
    const slots = yield* Semaphore.make(Math.max(1, (yield* PoolSize) - 2))
    // A unit of work the database does not answer within the response timeout is given up as an
    // outage (`responseBound`). Interrupted, the driver drops its connection unless the server
    // confirms the cancel; on a dead path the server ends the transaction itself
    // (`idle_in_transaction_session_timeout`). Its events go back to the queue; if its COMMIT did
    // reach the server, their ids are recorded and their next delivery is a duplicate.
    const bounded = yield* responseBound("the unit of work was given up")
    return UnitOfWork.of({
      transaction: <A, E, R>(effect: Effect.Effect<A, E, R>) =>
        Effect.flatMap(CurrentUnit, (outer): Effect.Effect<A, E | DatabaseError, R> => {
          if (outer !== undefined) {
            return Effect.suspend(() => {
              const hooks = outer.afterCommit.length
              return translate(sql.withTransaction(effect)).pipe(
                Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => { outer.afterCommit.length = hooks }))
              )
            })
          }
          return Effect.suspend(() => {
            const unit: Unit = { afterCommit: [] }
            return slots.withPermit(
              bounded(translate(sql.withTransaction(Effect.provideService(effect, CurrentUnit, unit))))
            ).pipe(
              Effect.tap(() => Effect.forEach(unit.afterCommit, (hook) => hook, { discard: true }))
            )
          })
        }),
      afterCommit: (effect) =>
        Effect.flatMap(CurrentUnit, (unit) => unit === undefined ? effect : Effect.sync(() => { unit.afterCommit.push(effect) }))
    })
  })
)
