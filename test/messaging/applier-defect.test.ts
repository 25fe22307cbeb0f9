import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import * as Messaging from "../../src/messaging/index.ts"
import { EventApplier, letsKeyGoOn } from "../../src/pipeline/batch.ts"
import { applyDecoded, type Outcome } from "../../src/pipeline/pipeline.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { EventLog } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, putStock } from "../support/events.ts"
import { createVhost, declareTestTopology, deleteVhost, eventually, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * A defect in the applier itself (not in a handler: those become outcomes) must not leave a key's
 * messages held forever: the chain's first message goes back to the queue, the consumer goes on,
 * and the redelivery is applied.
 */
describe("an applier that dies", () => {
  const vhost = uniqueVhost("applier_defect")
  const schema = uniqueSchema("mq_applier_defect")
  const env = testEnv(vhost, { RETRY_BASE_DELAY_MS: "10" })
  const org = freshOrg()
  let calls = 0

  /** Dies on its first chain; then applies one event at a time, as the default applier does. */
  const dyingOnce = Layer.succeed(EventApplier, {
    applyChain: (items) =>
      calls++ === 0
        ? Effect.die(new Error("injected: the applier itself failed"))
        : Effect.gen(function*() {
          const outcomes: Array<Outcome> = []
          for (const { decoded, deliveryCount } of items()) {
            const outcome = yield* applyDecoded(decoded, deliveryCount)
            outcomes.push(outcome)
            if (!letsKeyGoOn(outcome)) break
          }
          return outcomes
        })
  })

  const stores = Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(
    Layer.provideMerge(SqlStores.layerWith({ url: testDatabaseUrl, schema, poolSize: 4 }))
  )
  const consumer = ManagedRuntime.make(
    Messaging.layer.pipe(
      Layer.provideMerge(stores),
      Layer.provideMerge(dyingOnce),
      Layer.provideMerge(RuntimeConfig.layerFrom(env))
    ) as Layer.Layer<any, unknown>
  )
  // Setup, checks and clean-up on a runtime of their own, so the schema goes after the consumer.
  const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
  const logged = (eventId: string) => inspect.runPromise(Effect.flatMap(EventLog, (log) => log.has(org, eventId)))

  beforeAll(async () => {
    await createVhost(vhost)
    await declareTestTopology(vhost, env)
    await inspect.runPromise(Effect.gen(function*() {
      yield* addWarehouse(org, "wh_1").pipe(Effect.orDie)
      yield* putStock(org, "v1", "wh_1", 10)
    }))
    await consumer.runPromise(Effect.void)
  })

  afterAll(async () => {
    await consumer.dispose().catch(() => undefined)
    await inspect.runPromise(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
    await inspect.dispose()
    await deleteVhost(vhost)
  })

  it("gives the message back to the queue, goes on, and applies its redelivery", async () => {
    const first = freshId("evt")
    const second = freshId("evt")
    const client = await TestClient.connect(vhost)
    const envelope = (eventId: string, order: string) => ({
      event: "order.placed", version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id: eventId,
      data: { order_id: order, items: [{ variant_id: "v1", quantity: 1 }] }
    })
    try {
      await client.publish("order_events", "order.placed", envelope(first, "o1"))
      await eventually("the first message applied after its redelivery", async () => (await logged(first)) ? true : undefined, 30_000)
      await client.publish("order_events", "order.placed", envelope(second, "o2"))
      await eventually("the consumer still applies what comes next", async () => (await logged(second)) ? true : undefined, 30_000)
    } finally {
      await client.close()
    }
    // The chain that died, the redelivery, the next message.
    expect(calls).toBeGreaterThanOrEqual(3)
  }, 90_000)
})
