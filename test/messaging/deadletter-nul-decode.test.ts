import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { FailedEvents } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities } from "../support/events.ts"
import { consumerInVhost, eventually, queuesSettled } from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * Issue 15 item 1, the two cases decoding settles (SPEC 2: text PostgreSQL cannot store is a
 * ValidationError wherever it is): a NUL inside a field of a known event, and a NUL in the AMQP
 * `messageId` of a body without `event_id`. Each ends with one DLQ copy, one `failed_events` row,
 * and the consumer goes on.
 */

const stores = sqlLayer("mq_dlq_nul")

const consumer = consumerInVhost("dlq_nul", stores, { env: { MAX_DELIVERIES: "3" }, capture: ["inventory_dlq"] })
const { vhost, run } = consumer
const dlqCopies = () => consumer.captured["inventory_dlq"]!
const rowsOf = (org: string) => run(Effect.flatMap(FailedEvents, (f) => f.list({}))).then((rows) => rows.filter((r) => r.organization_id === org))

const returned = (org: string, variant: string) => ({
  event: "return.received",
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: freshId("evt"),
  data: { order_id: freshId("order"), return_id: freshId("ret"), warehouse_id: "wh_1", returned_items: [{ variant_id: variant, quantity: 1, condition: "good" }] }
})

const consumerGoesOn = async (org: string) => {
  await consumer.client.publish("order_events", "return.received", returned(org, "v-next"))
  await eventually("the next message applied", async () => (await run(quantities(org, "v-next", "wh_1")))?.total === 1)
  await eventually("queues settled", () => queuesSettled(vhost, ["inventory_order_consumer"]), 60_000)
}

describe("NUL where decoding must refuse it (issue 15)", () => {
  it("a NUL inside a field of a known event: one ValidationError dead letter, one row", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    await run(putStock(org, "v1", "wh_1", 5))
    const messageId = `${org}-nul-field`
    const placed = { event: "order.placed", version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, data: { order_id: "o\u0000", items: [{ variant_id: "v1", quantity: 1 }] } }
    await consumer.client.publish("order_events", "order.placed", placed, { messageId })
    await consumerGoesOn(org)
    const copies = dlqCopies().filter((m) => m.properties.messageId === messageId)
    expect(copies).toHaveLength(1)
    expect(copies[0]!.headers["x-error-type"]).toBe("ValidationError")
    expect(await rowsOf(org)).toHaveLength(1)
  })

  it("a NUL in the messageId of a body without event_id: one ValidationError dead letter, one row", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const messageId = `${org}-\u0000`
    const { event_id: _, ...body } = returned(org, "v-nul-id")
    await consumer.client.publish("order_events", "return.received", body, { messageId })
    await consumerGoesOn(org)
    const copies = dlqCopies().filter((m) => m.properties.messageId === messageId)
    expect(copies).toHaveLength(1)
    expect(copies[0]!.headers["x-error-type"]).toBe("ValidationError")
    expect(await rowsOf(org)).toHaveLength(1)
    expect((await run(quantities(org, "v-nul-id", "wh_1")))?.total ?? 0).toBe(0)
  })
})
