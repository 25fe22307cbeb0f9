/**
 * Public API of the inventory event consumer: the contract (schemas, errors, fates), the
 * store services with their memory Layers (swap them into your own tests), the handlers,
 * the broker-free pipeline and the reservation scheduler.
 */
export * from "./domain/errors.ts"
export * from "./domain/events.ts"
export { type Fate, fateOf, fates } from "./domain/fates.ts"
export { bodyDigest, deriveId } from "./domain/ids.ts"
export * from "./domain/published.ts"
export { afterRollback, handleEvent } from "./handlers/dispatch.ts"
export { expireDue, expireOverdue, expireReservation } from "./handlers/expiry.ts"
export { adjustStock } from "./handlers/returns.ts"
export * as Metrics from "./observability/metrics.ts"
export { applyEvent, batched, type BatchSettings, type ChainItem, EventApplier, letsKeyGoOn } from "./pipeline/batch.ts"
export { type Decoded, decodeDelivery, type Delivery, peek } from "./pipeline/decode.ts"
export { applyDecoded, type Failure, type Outcome, processDelivery } from "./pipeline/pipeline.ts"
export { defaultProcessingPolicy, ProcessingPolicy } from "./pipeline/policy.ts"
export * as ReservationScheduler from "./reservations/scheduler.ts"
export { MemoryDatabase } from "./stores/memory/MemoryDatabase.ts"
export * as MemoryStores from "./stores/memory/stores.ts"
export type * from "./stores/model.ts"
export * from "./stores/services.ts"
