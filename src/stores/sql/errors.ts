import { Effect } from "effect"
import type { SqlError } from "effect/sql/SqlError"
import { DatabaseError } from "../../domain/errors.ts"

/** The partial unique index that keeps one live reservation per order (see migrations.ts). */
export const liveReservationIndex = "reservations_one_live_per_order"

/** A statement the database refused for a reason retrying cannot fix: a bug, so a defect. */
export class UnexpectedDatabaseError extends Error {
  override readonly name = "UnexpectedDatabaseError"
}

interface PgFields {
  readonly code?: string | undefined
  readonly constraint?: string | undefined
  readonly table?: string | undefined
  readonly column?: string | undefined
  readonly message?: string | undefined
}

const fieldsOf = (error: SqlError): PgFields => {
  const cause: unknown = error.reason.cause
  return typeof cause === "object" && cause !== null ? (cause as PgFields) : {}
}

const transient = (reason: DatabaseError["reason"], message: string) =>
  Effect.fail(new DatabaseError({ reason, message }))

/**
 * The one translation of a driver failure (SPEC 5): what may pass (connection, timeout,
 * deadlock 40P01, serialization 40001, lock not available 55P03, a lost race for the
 * live-reservation index) becomes a retryable `DatabaseError`; anything else is a bug and dies.
 * Messages name the SQLSTATE, constraint and table, never the SQL text or its parameters.
 */
export const fromSqlError = (error: SqlError): Effect.Effect<never, DatabaseError> => {
  const fields = fieldsOf(error)
  const code = fields.code ?? "none"
  switch (error.reason._tag) {
    case "ConnectionError":
      return transient("connection", `database connection failed (${error.reason.operation ?? "query"})`)
    // Rejected credentials are an outage to the consumer: pause, do not dead-letter.
    case "AuthenticationError":
      return transient("connection", `database authentication failed (SQLSTATE ${code})`)
    case "StatementTimeoutError":
      return transient("timeout", `statement timed out (SQLSTATE ${code})`)
    case "LockTimeoutError":
      return transient("timeout", `lock not available (SQLSTATE ${code})`)
    case "DeadlockError":
      return transient("deadlock", `deadlock detected (SQLSTATE ${code})`)
    case "SerializationError":
      return transient("serialization", `serialization failure (SQLSTATE ${code})`)
    case "UniqueViolation":
      if (error.reason.constraint === liveReservationIndex) {
        return transient("conflict", `the order gained a live reservation concurrently (${liveReservationIndex})`)
      }
      break
    case "UnknownError":
      // Server shutting down, not yet accepting connections, or out of connections/resources.
      if (code.startsWith("57P") || code.startsWith("53")) {
        return transient("connection", `database unavailable (SQLSTATE ${code})`)
      }
      break
  }
  return Effect.die(new UnexpectedDatabaseError(describe(error.reason._tag, fields)))
}

/**
 * Whether the session is gone: the socket failed, or the server ended it (admin shutdown,
 * crash, not accepting connections, out of connections). The work in flight was rolled back.
 */
export const isConnectionLoss = (error: SqlError): boolean => {
  if (error.reason._tag === "ConnectionError") return true
  const code = fieldsOf(error).code ?? ""
  return code.startsWith("08") || code.startsWith("57P") || code.startsWith("53")
}

/** Integrity (23), missing objects (42, except syntax errors) and RAISE (P0) messages carry no data. */
const safeMessage = (fields: PgFields): string | undefined => {
  const code = fields.code ?? ""
  const safe = code.startsWith("23") || code.startsWith("P0") || (code.startsWith("42") && code !== "42601")
  return safe ? fields.message : undefined
}

const describe = (kind: string, fields: PgFields): string => {
  const parts = [`database rejected a statement: ${kind}`]
  if (fields.code !== undefined) parts.push(`SQLSTATE ${fields.code}`)
  if (fields.constraint !== undefined) parts.push(`constraint ${fields.constraint}`)
  if (fields.table !== undefined) parts.push(`table ${fields.table}`)
  if (fields.column !== undefined) parts.push(`column ${fields.column}`)
  const message = safeMessage(fields)
  if (message !== undefined) parts.push(`(${message})`)
  return parts.join(", ")
}

/** Runs a statement with its failures translated by `fromSqlError`. */
export const orDatabaseError = <A, R>(effect: Effect.Effect<A, SqlError, R>): Effect.Effect<A, DatabaseError, R> =>
  Effect.catchTag(effect, "SqlError", fromSqlError)
