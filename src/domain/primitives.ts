import { Schema } from "effect"

/**
 * Identifiers coming from other services. They are bounded and restricted to a conservative
 * alphabet: a message whose ids carry quotes, spaces or control characters is rejected at the
 * edge as a `ValidationError` instead of travelling into SQL, logs and outbound events.
 */
export const Id = Schema.String.pipe(
  Schema.check(
    Schema.isPattern(/^[A-Za-z0-9][A-Za-z0-9_.:@\-]{0,127}$/, {
      message: "must be 1-128 characters of letters, digits, '_', '-', '.', ':' or '@'"
    })
  )
)

/** Units of stock moved by one line: a whole number from 1 to one million. */
export const Quantity = Schema.Number.pipe(
  Schema.check(Schema.isInt({ message: "must be a whole number" })),
  Schema.check(Schema.isBetween({ minimum: 1, maximum: 1_000_000 }, { message: "must be between 1 and 1000000" }))
)

/** A stock threshold: a whole number from 0 to 10^9. */
export const StockLevel = Schema.Number.pipe(
  Schema.check(Schema.isInt({ message: "must be a whole number" })),
  Schema.check(Schema.isBetween({ minimum: 0, maximum: 1_000_000_000 }, { message: "must be between 0 and 1000000000" }))
)

/** Free text from another service (reasons, SKUs): bounded, no control characters. */
export const Text = Schema.String.pipe(
  Schema.check(Schema.isMaxLength(500)),
  Schema.check(Schema.isPattern(/^[^\u0000-\u001f\u007f]*$/, { message: "must not contain control characters" }))
)

/** ISO-8601 instant, as every envelope carries it. */
export const Timestamp = Schema.String.pipe(
  Schema.check(
    Schema.isPattern(/^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}(:\d{2}(\.\d{1,9})?)?(Z|[+-]\d{2}:?\d{2})?$/, {
      message: "must be an ISO-8601 date-time"
    })
  )
)

/** Envelope versions this consumer understands: major version 1. */
export const Version = Schema.String.pipe(
  Schema.check(Schema.isPattern(/^1(\.\d+){0,2}$/, { message: "must be a 1.x version" }))
)
