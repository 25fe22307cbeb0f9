import { Effect, Layer } from "effect"
import { describe, expect, it } from "vitest"
import { FailedEvents } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, quantities } from "../support/events.ts"
import { consumerInVhost, eventually, queuesSettled } from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * SPEC 5, the last resort on the real broker: a dead letter for which not even the minimal record
 * can be written (here every record of it dies, as a bug would) is not requeued without bound; after
 * DLQ_RECORD_ATTEMPTS it is rejected, and the broker dead-letters it to the same DLQ (`x-death`).
 */

const base = sqlLayer("mq_dlq_unrecordable")
let recordCalls = 0
const poisoned = Layer.effect(
  FailedEvents,
  Effect.map(FailedEvents, (store) =>
    FailedEvents.of({
      ...store,
      record: (event) =>
        Effect.suspend(() => {
          if (!event.event_id?.includes("poison")) return store.record(event)
          // The recorder of the broker's dead letters meets the same refusal; count the consumer's tries.
          if (!event.error_type.startsWith("Broker")) recordCalls++
          return Effect.die(new Error("injected: the record of this message always fails"))
        })
    }))
).pipe(Layer.provide(base))
const stores = poisoned.pipe(Layer.provideMerge(base))

const consumer = consumerInVhost("dlq_unrecordable", stores, { env: { DLQ_RECORD_ATTEMPTS: "2" }, capture: ["inventory_dlq"] })
const { vhost, run } = consumer
const dlqCopies = () => consumer.captured["inventory_dlq"]!

describe("a dead letter that cannot be recorded at all", () => {
  it("is handed to the broker's dead-lettering once, and the consumer goes on", async () => {
    const org = freshOrg()
    const messageId = `${org}-poison`
    await consumer.client.publish("order_events", "order.placed", "{not json", { messageId })
    await run(addWarehouse(org, "wh_1"))
    await consumer.client.publish("order_events", "return.received", {
      event: "return.received", version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id: freshId("evt"),
      data: { order_id: freshId("order"), return_id: freshId("ret"), warehouse_id: "wh_1", returned_items: [{ variant_id: "v-next", quantity: 1, condition: "good" }] }
    })
    await eventually("the next message applied", async () => (await run(quantities(org, "v-next", "wh_1")))?.total === 1)
    await eventually("queues settled", () => queuesSettled(vhost, ["inventory_order_consumer"]), 60_000)

    const copies = dlqCopies().filter((m) => m.properties.messageId === messageId)
    expect(copies).toHaveLength(1)
    expect(copies[0]!.headers["x-error-type"]).toBeUndefined()
    const death = (copies[0]!.headers["x-death"] as Array<Record<string, unknown>>)[0]!
    expect(death["reason"]).toBe("rejected")
    expect(death["queue"]).toBe("inventory_order_consumer")
    // Two full attempts and the minimal one, on one delivery: nothing went back to the queue.
    expect(recordCalls).toBe(3)
  })
})
