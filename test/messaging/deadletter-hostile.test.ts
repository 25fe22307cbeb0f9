import { execFile } from "node:child_process"
import { promisify } from "node:util"
import type amqp from "amqplib"
import { Effect } from "effect"
import { describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import { deadLetter } from "../../src/messaging/deadLetter.ts"
import type { InboundMessage } from "../../src/messaging/inbound.ts"
import { FailedEvents } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, quantities } from "../support/events.ts"
import { consumerInVhost, eventually, queuesSettled, rabbitmqctl, vhostUrl } from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * Issue 15 items 1, 5 and 6 on the real broker and PostgreSQL: hostile messages whose dead-letter
 * record PostgreSQL would refuse end with exactly one DLQ copy and one `failed_events` row, and
 * the consumer goes on; our DLQ copies decode in kombu and pika, the Python clients a Celery-based
 * Order service uses.
 */

const stores = sqlLayer("mq_dlq_hostile")

const consumer = consumerInVhost("dlq_hostile", stores, { env: { MAX_DELIVERIES: "3" }, capture: ["inventory_dlq"] })
const { vhost, run } = consumer
const dlqCopies = () => consumer.captured["inventory_dlq"]!

const envelope = (org: string, event: string, data: unknown, eventId = freshId("evt")) => ({
  event,
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: eventId,
  data
})
const returned = (org: string, variant: string) =>
  envelope(org, "return.received", {
    order_id: freshId("order"),
    return_id: freshId("ret"),
    warehouse_id: "wh_1",
    returned_items: [{ variant_id: variant, quantity: 1, condition: "good" }]
  })

const copiesOf = (messageId: string) => dlqCopies().filter((m) => m.properties.messageId === messageId)
const rowsWhere = (
  keep: (row: { readonly event_id: string | null; readonly organization_id: string | null; readonly headers: Readonly<Record<string, unknown>> }) => boolean
) =>
  run(Effect.flatMap(FailedEvents, (f) => f.list({}))).then((rows) => rows.filter(keep))

const python = promisify(execFile)
/** Every message of `queue` as the named Python client decodes it (left in the queue). */
export const readWithPython = async (pythonClient: "kombu" | "pika", queue: string) => {
  const script = new URL("./clients/read_queue.py", import.meta.url).pathname
  const { stdout } = await python("/usr/bin/python3", [script, pythonClient, vhostUrl(vhost), queue], { timeout: 60_000 })
  return JSON.parse(stdout) as Array<{ headers: Record<string, unknown>; message_id: string | null; body: string }>
}

/** The message is settled, a later message is applied, and nothing more reaches the DLQ. */
const consumerGoesOn = async (org: string) => {
  await run(addWarehouse(org, "wh_1"))
  await consumer.client.publish("order_events", "return.received", returned(org, "v-next"))
  await eventually("the next message applied", async () => (await run(quantities(org, "v-next", "wh_1")))?.total === 1)
  await eventually("queues settled", () => queuesSettled(vhost, ["inventory_order_consumer"]), 60_000)
}

describe("hostile messages on the dead-letter path (issue 15)", () => {
  it("a NUL in the event name: one DLQ copy, one failed_events row, and the consumer goes on", async () => {
    const org = freshOrg()
    const messageId = `${org}-nul-event`
    await consumer.client.publish("order_events", "order.placed", `{"event":"\\u0000","organization_id":"${org}","data":{}}`, { messageId })
    await consumerGoesOn(org)

    expect(copiesOf(messageId)).toHaveLength(1)
    expect(copiesOf(messageId)[0]!.headers["x-error-type"]).toBe("ValidationError")
    const rows = await rowsWhere((r) => r.organization_id === org)
    expect(rows).toHaveLength(1)
    // What the database cannot hold of it is left out (decode's `peek`), never stored raw.
    expect(rows[0]!.event_type ?? "").not.toContain("\u0000")
    expect(rows[0]!.dlq_copied_at).not.toBeNull()
    expect(Buffer.from(rows[0]!.body).equals(copiesOf(messageId)[0]!.body)).toBe(true)
  })

  it("a NUL in a string header of an invalid message: one DLQ copy, one row, the header kept escaped", async () => {
    const org = freshOrg()
    const messageId = `${org}-nul-header`
    await consumer.client.publish("order_events", "order.placed", "{not json", {
      messageId,
      headers: { "x-note": "before\u0000after", "x-tenant-hint": org }
    })
    await consumerGoesOn(org)

    expect(copiesOf(messageId)).toHaveLength(1)
    // The DLQ copy carries the header as sent: AMQP strings may hold NUL, only the record may not.
    expect(copiesOf(messageId)[0]!.headers["x-note"]).toBe("before\u0000after")
    const rows = await rowsWhere((r) => r.event_id === messageId)
    expect(rows).toHaveLength(1)
    expect(rows[0]!.headers["x-note"]).toBe("before\\u0000after")
    expect(rows[0]!.headers["x-tenant-hint"]).toBe(org)
  })

  it("dead letters with a header value of 200 decode in kombu and pika", async () => {
    const org = freshOrg()
    const messageId = `${org}-typed-headers`
    await consumer.client.publish("order_events", "order.placed", "{not json", {
      messageId,
      headers: { "x-count": 200, "x-big": 5_000_000_000, "x-ratio": 0.5, "x-flag": true, "x-text": "é" }
    })
    await eventually("the DLQ copy", () => copiesOf(messageId).length === 1)
    await eventually("in the DLQ", async () => (await consumer.client.depth("inventory_failed_events")) > 0)
    for (const pythonClient of ["kombu", "pika"] as const) {
      const read = await readWithPython(pythonClient, "inventory_failed_events")
      const copy = read.find((m) => m.message_id === messageId)
      expect(copy, pythonClient).toBeDefined()
      expect(copy!.headers).toMatchObject({
        "x-count": 200,
        "x-big": 5_000_000_000,
        "x-flag": true,
        "x-text": "é",
        "x-error-type": "ValidationError",
        "x-original-exchange": "order_events",
        "x-original-routing-key": "order.placed",
        "x-attempts": 1
      })
    }
  })
  it("x-attempts >= 128, nested tables, arrays and byte arrays decode in kombu and pika; so does an outbound event", async () => {
    const org = freshOrg()
    const headers = {
      "x-case": `${org}-many-deliveries`,
      "x-table": { depth: 300, inner: { ok: true, list: [1, 40_000, "s", null] } },
      "x-bytes": Buffer.from([0, 1, 254, 255]),
      "x-negative": -200,
      "x-delivery-count": 140
    }
    // A message redelivered 130 times: a delivery count no test can wait for, given to the dead-letter path directly.
    const inbound: InboundMessage = {
      delivery: { body: Buffer.from("{not json"), messageId: `${org}-many`, deliveryCount: 130, queue: "inventory_order_consumer", accepts: ["order.placed"] },
      exchange: "order_events",
      routingKey: "order.placed",
      headers,
      properties: { headers, messageId: `${org}-many`, contentType: "application/json" } as unknown as amqp.MessageProperties,
      deliveryTag: 0,
      redelivered: true,
      via: undefined as never, // never settled here
      raw: undefined as never
    }
    const result = await run(Effect.flatMap(RuntimeConfig, (config) =>
      deadLetter(config, inbound, { errorType: "ValidationError", message: "Message body is not valid UTF-8 JSON" }, null)))
    expect(result).toEqual({ _tag: "DeadLettered", parked: false })

    await consumer.client.channel.assertQueue("py_outbound", { durable: false })
    await consumer.client.channel.bindQueue("py_outbound", "inventory_events", "#")
    await run(addWarehouse(org, "wh_1"))
    const event = returned(org, "v-py")
    await consumer.client.publish("order_events", "return.received", event)
    await eventually("an outbound event", async () => (await consumer.client.depth("py_outbound")) > 0)
    await eventually("in the DLQ", async () => (await consumer.client.depth("inventory_failed_events")) > 0)

    for (const pythonClient of ["kombu", "pika"] as const) {
      const copy = (await readWithPython(pythonClient, "inventory_failed_events")).find((m) => m.message_id === `${org}-many`)
      expect(copy, pythonClient).toBeDefined()
      expect(copy!.headers).toMatchObject({
        "x-attempts": 130,
        "x-table": { depth: 300, inner: { ok: true, list: [1, 40_000, "s", null] } },
        "x-bytes": { bytes: Buffer.from([0, 1, 254, 255]).toString("base64") },
        "x-negative": -200
      })
      const outbound = (await readWithPython(pythonClient, "py_outbound")).filter((m) =>
        JSON.parse(Buffer.from(m.body, "base64").toString("utf8")).causation_id === event.event_id)
      expect(outbound.length, pythonClient).toBeGreaterThan(0)
      expect(outbound[0]!.headers["traceparent"], pythonClient).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/)
      expect(typeof outbound[0]!.message_id).toBe("string")
    }
  })

  it("a header table over 64 KiB and a messageId over 255 bytes are cut, never a reason to fail", async () => {
    const org = freshOrg()
    const messageId = `${org}-`.padEnd(300, "m")
    const headers = { "x-case": org, "x-a": "a".repeat(40_000), "x-b": "b".repeat(40_000) }
    const inbound: InboundMessage = {
      delivery: { body: Buffer.from("{not json"), messageId, deliveryCount: 1, queue: "inventory_order_consumer", accepts: ["order.placed"] },
      exchange: "order_events",
      routingKey: "order.placed",
      headers,
      properties: { headers, messageId, contentType: "application/json" } as unknown as amqp.MessageProperties,
      deliveryTag: 0,
      redelivered: false,
      via: undefined as never, // never settled here
      raw: undefined as never
    }
    const result = await run(Effect.flatMap(RuntimeConfig, (config) =>
      deadLetter(config, inbound, { errorType: "ValidationError", message: "Message body is not valid UTF-8 JSON" }, null)))
    expect(result).toEqual({ _tag: "DeadLettered", parked: false })
    const copy = await eventually("the DLQ copy", () => dlqCopies().find((m) => m.headers["x-case"] === org))
    expect(copy.properties.messageId).toBe(messageId.slice(0, 255))
    expect(copy.headers["x-a"]).toBe(headers["x-a"])
    expect(copy.headers["x-b"]).toBeUndefined()
    expect(copy.headers["x-error-type"]).toBe("ValidationError")
    expect(copy.headers["x-attempts"]).toBe(1)
    // A 300-character messageId breaks the event-id rule, so the record has no event_id: find it by its header.
    const rows = await rowsWhere((r) => r.headers["x-case"] === org)
    expect(rows).toHaveLength(1)
    expect(rows[0]!.dlq_copied_at).not.toBeNull()
  })
  it("declares x-delivery-limit above MAX_DELIVERIES on the quorum inbound queues and x-max-length-bytes on the DLQ", async () => {
    const lines = (await rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "arguments")).split("\n")
    const argumentsOf = (queue: string) => lines.find((line) => line.startsWith(`${queue}\t`)) ?? ""
    for (const queue of ["inventory_order_consumer", "inventory_catalog_consumer"]) {
      expect(argumentsOf(queue)).toMatch(/"x-delivery-limit",20\b/)
    }
    expect(argumentsOf("inventory_failed_events")).toMatch(/"x-max-length-bytes",268435456\b/)
    expect(argumentsOf("inventory_failed_events")).not.toContain("x-delivery-limit")
  })
})
