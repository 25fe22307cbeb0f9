import type { InventoryError, InventoryErrorTag } from "./errors.ts"

/**
 * What becomes of a message whose handling failed, decided by the error's tag alone (SPEC 5):
 * - `dead_letter`: permanent; to the DLQ at once;
 * - `retry`: transient; retried in process, then returned to the queue;
 * - `retry_until_healthy`: the store is down; like `retry`, and consumption pauses until the
 *   database answers again, so an outage never moves a message to the DLQ.
 */
export type Fate = "dead_letter" | "retry" | "retry_until_healthy"

/** The one routing table. A new error without a fate here does not type-check. */
export const fates = {
  ValidationError: "dead_letter",
  InsufficientStock: "dead_letter",
  StockNotZero: "dead_letter",
  DuplicateRecord: "dead_letter",
  // The `order.placed` it depends on may still be in flight: worth another delivery.
  ReservationNotFound: "retry",
  DatabaseError: "retry_until_healthy"
} as const satisfies { readonly [Tag in InventoryErrorTag]: Fate }

export const fateOf = (error: InventoryError): Fate => fates[error._tag]

/**
 * Failures that may only mean an earlier event of the same ordering key is not applied yet (a
 * cancel delivered before its `order.placed`): the consumer tries such a message once more behind
 * the key's other waiting messages before giving it back to the queue.
 */
export const awaitsPredecessor = {
  ValidationError: false,
  InsufficientStock: false,
  StockNotZero: false,
  DuplicateRecord: false,
  ReservationNotFound: true,
  DatabaseError: false
} as const satisfies { readonly [Tag in InventoryErrorTag]: boolean }

/** Whether a failure, by its tag, may be waiting for its key's predecessor; a defect never is. */
export const mayAwaitPredecessor = (errorType: InventoryErrorTag | "Defect"): boolean =>
  errorType !== "Defect" && awaitsPredecessor[errorType]
