import { PgTypes } from "@effect/sql-pg"
import { Result } from "effect"

/**
 * A `text[]` parameter typed by itself: the driver infers an array's type from its elements,
 * and an array holding only nulls (no reservation closed, no trace) has none to infer from.
 */
export const textArray = (values: ReadonlyArray<string | null>): PgTypes.Parameter => {
  const parameter = PgTypes.array(values, PgTypes.OID.text)
  // text[] is built in; the lookup cannot miss.
  if (Result.isFailure(parameter)) throw parameter.failure
  return parameter.success
}
