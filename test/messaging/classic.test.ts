import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { addWarehouse, freshId, freshOrg, quantities } from "../support/events.ts"
import { memoryLayer } from "../support/memory.ts"
import { type Captured, createVhost, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * `QUEUE_TYPE=classic`, with every name configured: classic queues carry no delivery count, so
 * the in-process counter (keyed by message id) decides when MAX_DELIVERIES is reached.
 */

const vhost = uniqueVhost("classic")
const names = {
  CATALOG_EXCHANGE: "c_catalog_events",
  ORDER_EXCHANGE: "c_order_events",
  CATALOG_QUEUE: "c_catalog",
  ORDER_QUEUE: "c_orders",
  INVENTORY_EXCHANGE: "c_inventory_events",
  DLQ_EXCHANGE: "c_dlq",
  DLQ_QUEUE: "c_failed"
}
let runtime: ReturnType<typeof startRuntime<any, any>>
let client: TestClient
let dead: Array<Captured>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(memoryLayer, testEnv(vhost, { ...names, QUEUE_TYPE: "classic", MAX_DELIVERIES: "4" }))
  await runtime.runPromise(Effect.void)
  client = await TestClient.connect(vhost)
  dead = await client.bindCapture("c_dlq")
})

afterAll(async () => {
  await client?.close()
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("classic queues and configured names", () => {
  it("declares classic queues under the configured names and consumes from them", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    await client.publish("c_order_events", "return.received", {
      event: "return.received",
      version: "1.0",
      timestamp: "2026-01-01T00:00:00Z",
      organization_id: org,
      event_id: freshId("evt"),
      data: { order_id: "o1", return_id: "r1", warehouse_id: "wh_1", returned_items: [{ variant_id: "v1", quantity: 2, condition: "damaged" }] }
    })
    await eventually("applied", async () => (await run(quantities(org, "v1", "wh_1")))?.damaged === 2)
  })

  it("counts redeliveries in process and dead-letters at MAX_DELIVERIES", async () => {
    const org = freshOrg()
    const eventId = freshId("evt")
    await client.publish("c_order_events", "order.confirmed", {
      event: "order.confirmed",
      version: "1.0",
      timestamp: "2026-01-01T00:00:00Z",
      organization_id: org,
      event_id: eventId,
      data: { order_id: "o-ghost" }
    }, { messageId: eventId })
    const message = await eventually("dead letter", () => dead.find((m) => m.properties.messageId === eventId), 60_000)
    expect(message.headers["x-error-type"]).toBe("ReservationNotFound")
    expect(message.headers["x-attempts"]).toBe(4)
    expect(message.headers["x-original-exchange"]).toBe("c_order_events")
  })
})
