import { Effect, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { DatabaseError } from "../../src/domain/errors.ts"
import { EventLog, FailedEvents, Movements } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities } from "../support/events.ts"
import {
  type Captured,
  createVhost,
  deleteVhost,
  eventually,
  queuesSettled,
  startRuntime,
  TestClient,
  testEnv,
  uniqueVhost
} from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * SPEC 5 on a real broker and PostgreSQL: what is dead-lettered (at once, or after too many
 * deliveries), with which headers, what is retried, and that the consumer goes on afterwards.
 */

const vhost = uniqueVhost("dlq")

/** Event ids whose event-log write fails with a transient `DatabaseError` for their first N calls. */
const flaky = new Map<string, { failures: number; calls: number }>()
const base = sqlLayer("mq_dlq")
const flakyEventLog = Layer.effect(
  EventLog,
  Effect.map(EventLog, (log) =>
    EventLog.of({
      ...log,
      record: (entry) =>
        Effect.suspend(() => {
          const fault = flaky.get(entry.event_id)
          if (fault === undefined) return log.record(entry)
          fault.calls++
          return fault.calls <= fault.failures
            ? Effect.fail(new DatabaseError({ reason: "connection", message: "injected: connection reset" }))
            : log.record(entry)
        })
    }))
).pipe(Layer.provide(base))
const stores = flakyEventLog.pipe(Layer.provideMerge(base))

let runtime: ReturnType<typeof startRuntime<any, any>>
let client: TestClient
let dead: Array<Captured>
let published: Array<Captured>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

const envelope = (org: string, event: string, data: unknown, eventId = freshId("evt")) => ({
  event,
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: eventId,
  data
})
const returned = (org: string, variant: string, eventId?: string) =>
  envelope(org, "return.received", {
    order_id: freshId("order"),
    return_id: freshId("ret"),
    warehouse_id: "wh_1",
    returned_items: [{ variant_id: variant, quantity: 1, condition: "good" }]
  }, eventId)
const failedOf = (org: string) =>
  run(Effect.flatMap(FailedEvents, (f) => f.list({}))).then((rows) => rows.filter((r) => r.organization_id === org))

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(stores, testEnv(vhost, { MAX_DELIVERIES: "3" }))
  await runtime.runPromise(Effect.void)
  client = await TestClient.connect(vhost)
  dead = await client.bindCapture("inventory_dlq")
  published = await client.bindCapture("inventory_events")
})

afterAll(async () => {
  await client?.close()
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("dead-lettering and retries", () => {
  it("dead-letters malformed messages with the failure in their headers, stores them, and goes on", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const bad: Array<[string, Buffer]> = [
      ["not-json", Buffer.from("{this is not json")],
      ["invalid", Buffer.from(JSON.stringify(envelope(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: -1 }] })))],
      ["unknown", Buffer.from(JSON.stringify(envelope(org, "order.exploded", { order_id: "o1" })))],
      ["wrong-queue", Buffer.from(JSON.stringify(envelope(org, "catalog.variant.created", { variant_id: "v1", product_id: "p1" })))]
    ]
    for (const [id, body] of bad) {
      await client.publish("order_events", "order.placed", body, { messageId: `${org}-${id}`, headers: { "x-tenant-hint": org } })
    }
    const good = returned(org, "v-good")
    await client.publish("order_events", "return.received", good)

    await eventually("the good message applied", async () => (await run(quantities(org, "v-good", "wh_1")))?.total === 1)
    const mine = await eventually("4 dead letters", () => {
      const found = dead.filter((m) => m.headers["x-tenant-hint"] === org)
      return found.length === 4 ? found : undefined
    })
    for (const [id, body] of bad) {
      const message = mine.find((m) => m.properties.messageId === `${org}-${id}`)!
      expect(message.body.equals(body)).toBe(true) // byte for byte
      expect(message.routingKey).toBe("order.placed")
      expect(message.headers["x-error-type"]).toBe("ValidationError")
      expect(String(message.headers["x-error-message"]).length).toBeGreaterThan(0)
      expect(message.headers["x-original-exchange"]).toBe("order_events")
      expect(message.headers["x-original-routing-key"]).toBe("order.placed")
      expect(Number.isNaN(Date.parse(String(message.headers["x-failed-at"])))).toBe(false)
      expect(message.headers["x-attempts"]).toBe(1)
      expect(message.properties.contentType).toBe("application/json")
    }
    expect(mine.find((m) => m.properties.messageId === `${org}-unknown`)!.headers["x-error-message"]).toContain("order.exploded")
    expect(mine.find((m) => m.properties.messageId === `${org}-wrong-queue`)!.headers["x-error-message"]).toContain("does not belong")

    // Stored too, for when the DLQ's TTL or length cap drops them (the not-JSON one has no org).
    const stored = await eventually("failed events stored", async () => {
      const rows = (await run(Effect.flatMap(FailedEvents, (f) => f.list({ error_type: "ValidationError" }))))
        .filter((r) => r.event_id?.startsWith(org) || r.organization_id === org)
      return rows.length === 4 ? rows : undefined
    })
    for (const row of stored) {
      expect(row.original_exchange).toBe("order_events")
      expect(row.original_routing_key).toBe("order.placed")
      expect(row.attempts).toBe(1)
    }
    expect(Buffer.from(stored.find((r) => r.event_id === `${org}-not-json`)!.body).equals(bad[0]![1])).toBe(true)
    await eventually("queues settled", () => queuesSettled(vhost, ["inventory_order_consumer"]))
  })

  it("dead-letters InsufficientStock at once and still announces the failed reservation", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    await run(putStock(org, "v1", "wh_1", 1))
    const placed = envelope(org, "order.placed", { order_id: "o-big", items: [{ variant_id: "v1", quantity: 5 }] })
    await client.publish("order_events", "order.placed", placed)

    const message = await eventually("dead letter", () => dead.find((m) => (m.json as any)?.event_id === placed.event_id))
    expect(message.headers["x-error-type"]).toBe("InsufficientStock")
    expect(message.headers["x-attempts"]).toBe(1)
    await eventually("inventory.reservation.failed", () =>
      published.find((m) => m.routingKey === "inventory.reservation.failed" && (m.json as any).causation_id === placed.event_id))
    expect(await run(quantities(org, "v1", "wh_1"))).toEqual({ total: 1, available: 1, reserved: 0, damaged: 0 })
    const rows = await eventually("stored", async () => (await failedOf(org)).filter((r) => r.error_type === "InsufficientStock")[0])
    expect(rows.event_id).toBe(placed.event_id)
  })

  it("retries a transient database error in process and applies the event once", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const event = returned(org, "v-flaky")
    flaky.set(event.event_id, { failures: 2, calls: 0 })
    await client.publish("order_events", "return.received", event)
    await eventually("applied", async () => (await run(quantities(org, "v-flaky", "wh_1")))?.total === 1)
    expect(flaky.get(event.event_id)!.calls).toBe(3)
    expect(dead.filter((m) => (m.json as any)?.event_id === event.event_id)).toEqual([])
  })

  it("returns a message whose database errors outlive the retries, pauses, and applies it after the database answers", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const event = returned(org, "v-outage")
    // 1 attempt + 3 retries fail on the first delivery; the redelivery after the pause succeeds.
    flaky.set(event.event_id, { failures: 5, calls: 0 })
    await client.publish("order_events", "return.received", event)
    await eventually("applied", async () => (await run(quantities(org, "v-outage", "wh_1")))?.total === 1)
    expect(flaky.get(event.event_id)!.calls).toBe(6)
    expect(dead.filter((m) => (m.json as any)?.event_id === event.event_id)).toEqual([])
    const movements = await run(Effect.flatMap(Movements, (m) => m.list({ organization_id: org, variant_id: "v-outage" })))
    expect(movements).toHaveLength(1)
  })

  it("dead-letters a message that keeps failing with a retryable error once it reached MAX_DELIVERIES", async () => {
    const org = freshOrg()
    // No reservation for this order will ever appear: ReservationNotFound is worth a few deliveries only.
    const confirmed = envelope(org, "order.confirmed", { order_id: "o-ghost" })
    await client.publish("order_events", "order.confirmed", confirmed)
    const message = await eventually("dead letter after 3 deliveries", () =>
      dead.find((m) => (m.json as any)?.event_id === confirmed.event_id), 60_000)
    expect(message.headers["x-error-type"]).toBe("ReservationNotFound")
    expect(message.headers["x-attempts"]).toBe(3)
    expect(message.headers["x-delivery-count"]).toBe(2) // the quorum queue's own count, kept
  })

  it("applies an event published twice (same event_id) once, and acks both", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const event = returned(org, "v-dup")
    await client.publish("order_events", "return.received", event)
    await client.publish("order_events", "return.received", event)
    await eventually("applied", async () => (await run(quantities(org, "v-dup", "wh_1")))?.total === 1)
    await eventually("both acked", () => queuesSettled(vhost, ["inventory_order_consumer"]))
    expect(await run(quantities(org, "v-dup", "wh_1"))).toEqual({ total: 1, available: 1, reserved: 0, damaged: 0 })
    const movements = await run(Effect.flatMap(Movements, (m) => m.list({ organization_id: org, variant_id: "v-dup" })))
    expect(movements).toHaveLength(1)
    await eventually("one inventory.movement.in", () =>
      published.some((m) => m.routingKey === "inventory.movement.in" && (m.json as any).causation_id === event.event_id))
    expect(published.filter((m) => (m.json as any).causation_id === event.event_id)).toHaveLength(1)
  })
})
