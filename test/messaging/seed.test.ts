import { Effect, Option } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { FailedEvents, Reservations, Variants } from "../../src/stores/services.ts"
import { addWarehouse, putStock, quantities } from "../support/events.ts"
import { type Captured, createVhost, queuesSettled, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { seedExamples, type SeedEventType } from "../support/seed.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * SPEC 1-6 end to end: every example of the seed, published to its exchange on a real broker,
 * consumed into real PostgreSQL, with the `inventory.*` events captured on `inventory_events`.
 */

const vhost = uniqueVhost("seed")
const org = "org_123"
let runtime: ReturnType<typeof startRuntime<any, any>>
let client: TestClient
let published: Array<Captured>
let dead: Array<Captured>

const exchangeOf = (type: SeedEventType) => (type.startsWith("catalog.") ? "catalog_events" : "order_events")
const publishSeed = (type: SeedEventType, eventId: string) =>
  client.publish(exchangeOf(type), type, { ...seedExamples[type], event_id: eventId })
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)
const outbound = (event: string) => published.filter((m) => m.routingKey === event)

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(sqlLayer("mq_seed"), testEnv(vhost))
  await runtime.runPromise(Effect.void)
  client = await TestClient.connect(vhost)
  published = await client.bindCapture("inventory_events")
  dead = await client.bindCapture("inventory_dlq")
})

afterAll(async () => {
  await client?.close()
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("the seed's events through RabbitMQ and PostgreSQL", () => {
  it("declares the topology of SPEC 1", async () => {
    // checkQueue/checkExchange fail (and close the channel) when something is missing.
    const probe = await TestClient.connect(vhost)
    try {
      for (const exchange of ["catalog_events", "order_events", "inventory_events", "inventory_dlq"]) {
        await probe.channel.checkExchange(exchange)
      }
      for (const queue of ["inventory_catalog_consumer", "inventory_order_consumer", "inventory_failed_events"]) {
        await probe.channel.checkQueue(queue)
      }
    } finally {
      await probe.close()
    }
  })

  it("applies every example in a realistic order and publishes what each one announces", async () => {
    await run(addWarehouse(org, "wh_101", { name: "Main" }))

    await publishSeed("catalog.variant.created", "evt-created")
    const row = await eventually("stock row of var_789", () => run(quantities(org, "var_789", "wh_101")).then((q) => q ?? undefined))
    expect(row).toEqual({ total: 0, available: 0, reserved: 0, damaged: 0 })
    const initialized = await eventually("inventory.stock.initialized", () => outbound("inventory.stock.initialized")[0])
    expect(initialized.json).toMatchObject({
      event: "inventory.stock.initialized",
      organization_id: org,
      causation_id: "evt-created",
      data: { variant_id: "var_789", stock_records_created: 1 }
    })
    // Relay contract: persistent JSON, messageId = the event's own event_id, routing key = event name.
    expect(initialized.properties.messageId).toBe((initialized.json as { event_id: string }).event_id)
    expect(initialized.properties.contentType).toBe("application/json")
    expect(initialized.properties.deliveryMode).toBe(2)

    await run(putStock(org, "var_789", "wh_101", 10))

    await publishSeed("order.placed", "evt-placed")
    await eventually("2 units reserved", async () => (await run(quantities(org, "var_789", "wh_101")))?.reserved === 2)
    const reserved = await eventually("inventory.stock.reserved", () => outbound("inventory.stock.reserved")[0])
    expect(reserved.json).toMatchObject({ causation_id: "evt-placed", data: { order_id: "order_456", items: [{ variant_id: "var_789", warehouse_id: "wh_101", quantity: 2 }] } })

    await publishSeed("order.confirmed", "evt-confirmed")
    await eventually("reservation confirmed", async () =>
      (await run(Effect.flatMap(Reservations, (r) => r.findByOrder(org, "order_456"))))[0]?.status === "confirmed")

    await publishSeed("order.shipped", "evt-shipped")
    await eventually("2 units shipped", async () => (await run(quantities(org, "var_789", "wh_101")))?.total === 8)
    expect(await run(quantities(org, "var_789", "wh_101"))).toEqual({ total: 8, available: 8, reserved: 0, damaged: 0 })
    const out = await eventually("inventory.movement.out", () => outbound("inventory.movement.out").find((m) => (m.json as any).causation_id === "evt-shipped"))
    expect(out.json).toMatchObject({ data: { variant_id: "var_789", warehouse_id: "wh_101" } })

    await publishSeed("return.received", "evt-return")
    await eventually("1 unit returned", async () => (await run(quantities(org, "var_789", "wh_101")))?.total === 9)
    expect(await run(quantities(org, "var_789", "wh_101"))).toEqual({ total: 9, available: 9, reserved: 0, damaged: 0 })
    await eventually("inventory.movement.in of the return", () =>
      outbound("inventory.movement.in").find((m) => (m.json as any).causation_id === "evt-return"))

    // Cancelling a shipped order releases nothing: a warning and an ack.
    await publishSeed("order.cancelled", "evt-cancelled")
    await publishSeed("catalog.variant.updated", "evt-updated")
    await eventually("SKU updated", async () =>
      Option.getOrUndefined(await run(Effect.flatMap(Variants, (v) => v.get(org, "var_789"))))?.sku === "PROD-001-ROJO-M")
    expect(await run(quantities(org, "var_789", "wh_101"))).toEqual({ total: 9, available: 9, reserved: 0, damaged: 0 })
    expect((await run(Effect.flatMap(Reservations, (r) => r.findByOrder(org, "order_456"))))[0]?.status).toBe("fulfilled")

    // Deleting a variant (or its product) that still has stock: StockNotZero, dead-lettered at once.
    await publishSeed("catalog.variant.deleted", "evt-deleted")
    await publishSeed("catalog.product.deleted", "evt-product-deleted")
    await eventually("both deletions dead-lettered", () => dead.length >= 2)
    expect(dead.map((m) => [m.routingKey, m.headers["x-error-type"], m.headers["x-attempts"]]).sort()).toEqual([
      ["catalog.product.deleted", "StockNotZero", 1],
      ["catalog.variant.deleted", "StockNotZero", 1]
    ])
    const rows = await eventually("failed events stored", async () => {
      const all = await run(Effect.flatMap(FailedEvents, (f) => f.list({ error_type: "StockNotZero" })))
      return all.length >= 2 ? all : undefined
    })
    expect(rows.map((r) => r.event_id).sort()).toEqual(["evt-deleted", "evt-product-deleted"])
    expect(await run(quantities(org, "var_789", "wh_101"))).toEqual({ total: 9, available: 9, reserved: 0, damaged: 0 })

    // Every message was acked: nothing ready or unacknowledged is left on either queue.
    await eventually("consumer queues empty", () => queuesSettled(vhost, ["inventory_catalog_consumer", "inventory_order_consumer"]))
  })
})
