import { Layer } from "effect"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"

/** Memory stores with the real TTL scheduler on top, as a user would wire them in a test. */
export const memoryLayer = Scheduler.layer({ sweepInterval: "60 seconds", sweepBatch: 500 }).pipe(
  Layer.provideMerge(MemoryStores.layer)
)
