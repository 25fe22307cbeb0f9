import { Effect, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DatabaseError } from "../../src/domain/errors.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { EventLog, StoreHealth } from "../../src/stores/services.ts"
import { freshId, freshOrg, quantities } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * The circuit breaker of SPEC 5 against the real broker, without stopping PostgreSQL: memory
 * stores whose event log fails like a database outage for its first writes, and whose health
 * ping fails a few times. The message goes back to the queue, consumption pauses until the ping
 * answers, then resumes and applies the message once; nothing is dead-lettered.
 */

const vhost = uniqueVhost("pause")
const down = () => new DatabaseError({ reason: "connection", message: "connection refused" })
const calls = { record: 0, ping: 0 }

const stores = Layer.mergeAll(
  Layer.effect(EventLog, Effect.map(EventLog, (log) =>
    EventLog.of({
      ...log,
      record: (entry) => Effect.suspend(() => (++calls.record <= 2 ? Effect.fail(down()) : log.record(entry)))
    }))),
  Layer.succeed(StoreHealth, StoreHealth.of({ ping: Effect.suspend(() => (++calls.ping <= 3 ? Effect.fail(down()) : Effect.void)) }))
).pipe(Layer.provideMerge(MemoryStores.layer))

let runtime: ReturnType<typeof startRuntime<any, any>>

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(
    Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(Layer.provideMerge(stores)),
    testEnv(vhost, { RETRY_ATTEMPTS: "0" })
  )
  await runtime.runPromise(Effect.void)
})

afterAll(async () => {
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("a database outage", () => {
  it("returns the message, pauses until the database answers, then applies it once", async () => {
    const org = freshOrg()
    const client = await TestClient.connect(vhost)
    await client.publish("order_events", "return.received", {
      event: "return.received", version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id: freshId("evt"),
      data: { order_id: "o1", return_id: "r1", warehouse_id: "w1", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }] }
    })
    await client.close()
    const applied = await eventually("applied after the pause", async () => {
      const q = await runtime.runPromise(quantities(org, "v1", "w1"))
      return q?.total === 1 ? q : undefined
    })
    expect(applied).toEqual({ total: 1, available: 1, reserved: 0, damaged: 0 })
    // Paused after each failed delivery, and resumed only once the ping answered.
    expect(calls.record).toBeGreaterThanOrEqual(3)
    expect(calls.ping).toBeGreaterThanOrEqual(4)
  })
})
