import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { FailedEvents } from "../../src/stores/services.ts"
import { sqlLayer } from "../support/sql.ts"
import { freshId, freshOrg } from "../support/events.ts"
import { consumerInVhost, eventually, queuesSettled } from "../support/rabbit.ts"

/**
 * Issue 15 item 1 end to end on the real broker and PostgreSQL: a NUL as the event type, inside
 * a field, or in the messageId of a body without event_id used to loop between the DLQ and the
 * queue for ever. Each is now one ValidationError: one DLQ copy, one failed_events row, acked.
 */

const consumer = consumerInVhost("unstorable", sqlLayer("unstorable"), { capture: ["inventory_dlq"] })
const { vhost, run } = consumer
const dlqCopies = () => consumer.captured["inventory_dlq"]!

describe("text PostgreSQL cannot store, on the broker", () => {
  it("is dead-lettered once and recorded, never requeued", async () => {
    const org = freshOrg()
    const placed = (data: unknown, eventId?: string) =>
      JSON.stringify({
        event: "order.placed",
        version: "1.0",
        timestamp: "2026-01-01T00:00:00Z",
        organization_id: org,
        ...(eventId === undefined ? {} : { event_id: eventId }),
        data
      })
    // The bodies, as the publisher wrote them (JSON escapes, not raw bytes).
    await consumer.client.publish("order_events", "order.placed", `{"event":"\\u0000","organization_id":"${org}","data":{}}`, {
      messageId: freshId("nul-event")
    })
    await consumer.client.publish("order_events", "order.placed", placed({ order_id: "o\u0000", items: [{ variant_id: "v1", quantity: 1 }] }, freshId("nul-field")))
    await consumer.client.publish("order_events", "order.placed", placed({ order_id: "o1", items: [{ variant_id: "v1", quantity: 1 }] }), {
      messageId: `m\u0000${org}`
    })

    const rows = await eventually("three failed_events rows", async () => {
      const all = await run(Effect.flatMap(FailedEvents, (f) => f.list({})))
      const mine = all.filter((r) => r.organization_id === org)
      return mine.length >= 3 ? mine : undefined
    })
    await eventually("the order queue settled", () => queuesSettled(vhost, ["inventory_order_consumer"]))

    expect(rows.map((r) => r.error_type)).toEqual(["ValidationError", "ValidationError", "ValidationError"])
    expect(rows.map((r) => r.error_message).sort()).toEqual([
      "NUL character in data.order_id: PostgreSQL cannot store it",
      "NUL character in event: PostgreSQL cannot store it",
      "NUL character in the AMQP messageId: PostgreSQL cannot store it"
    ])
    const copies = dlqCopies().filter((m) => m.body.toString("utf8").includes(org))
    expect(copies).toHaveLength(3)
    expect(copies.every((m) => m.headers["x-error-type"] === "ValidationError")).toBe(true)
  })
})
