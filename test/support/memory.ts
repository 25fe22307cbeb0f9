import { Effect, Layer } from "effect"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import { ProcessingPolicy } from "../../src/pipeline/policy.ts"
import { Duration } from "effect"

/** Memory stores with the real TTL scheduler on top, as a user would wire them in a test. */
export const memoryLayer = Scheduler.layer({ sweepInterval: "60 seconds", sweepBatch: 500 }).pipe(
  Layer.provideMerge(MemoryStores.layer)
)

/** Short in-process retries so tests of transient failures stay fast. */
export const fastRetries = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, ProcessingPolicy, {
    retryBaseDelay: Duration.millis(5),
    retries: 3,
    maxDeliveries: 5,
    maxBodyBytes: 1024 * 1024,
    maxLinesPerEvent: 500
  })
