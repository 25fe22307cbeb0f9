import { PgTypes } from "@effect/sql-pg"
import { Result } from "effect"

/**
 * A `text[]` parameter typed by itself: the driver infers an array's type from its elements,
 * and an array holding only nulls (no reservation closed, no trace) has none to infer from; the
 * working set types every text array this way (see `intArray`).
 */
export const textArray = (values: ReadonlyArray<string | null>): PgTypes.Parameter => {
  const parameter = PgTypes.array(values, PgTypes.OID.text)
  // text[] is built in; the lookup cannot miss.
  if (Result.isFailure(parameter)) throw parameter.failure
  return parameter.success
}

/**
 * An `integer[]` parameter typed by itself. Typing an array up front also spares the driver its
 * inference, which wraps every element in an object of its own: a group's statements carry tens of
 * values per event (issue 18).
 */
export const intArray = (values: ReadonlyArray<number>): PgTypes.Parameter => {
  const parameter = PgTypes.array(values, PgTypes.OID.int4)
  if (Result.isFailure(parameter)) throw parameter.failure
  return parameter.success
}
