import { Effect, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import { FailedEvents, Reservations } from "../../src/stores/services.ts"
import { sqlStoresLayer } from "../support/sql.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities } from "../support/events.ts"
import { type Captured, createVhost, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * Issue 15, items 2-4, on the real broker and PostgreSQL: two organizations send the same
 * `event_id` (ids are the publishers', so collisions across tenants happen). Each must get its
 * own effects, announcements, dead letter and reservation timer.
 */

const vhost = uniqueVhost("tenants")
// Timers only: a sweep far beyond the test, so an expiry here proves a timer fired.
const stores = Scheduler.layer({ sweepInterval: "1000 days", sweepBatch: 500 }).pipe(
  Layer.provideMerge(sqlStoresLayer("tenant_collisions"))
)

let runtime: ReturnType<typeof startRuntime<any, any>>
let client: TestClient
let published: Array<Captured>
let dead: Array<Captured>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

const envelope = (org: string, event: string, eventId: string, data: unknown) => ({
  event,
  version: "1.0",
  timestamp: new Date().toISOString(),
  organization_id: org,
  event_id: eventId,
  data
})

const organizationOf = (m: Captured) => (m.json as { readonly organization_id?: string } | undefined)?.organization_id
const of = (messages: ReadonlyArray<Captured>, org: string, routingKey?: string) =>
  messages.filter((m) => organizationOf(m) === org && (routingKey === undefined || m.routingKey === routingKey))

const reservationsOf = (org: string, orderId: string) =>
  run(Effect.flatMap(Reservations, (r) => r.findByOrder(org, orderId)))

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(stores, testEnv(vhost))
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

describe("two organizations sending the same event_id", () => {
  it("catalog.variant.created for v1: both get stock rows and both get inventory.stock.initialized", async () => {
    const [a, b] = [freshOrg(), freshOrg()]
    const eventId = freshId("evt-created")
    for (const org of [a, b]) await run(addWarehouse(org, "wh_1"))
    for (const org of [a, b]) {
      await client.publish("catalog_events", "catalog.variant.created",
        envelope(org, "catalog.variant.created", eventId, { variant_id: "v1", product_id: "p1", sku: "SKU-1" }))
    }
    for (const org of [a, b]) {
      await eventually(`${org}'s stock row`, async () => (await run(quantities(org, "v1", "wh_1"))) !== null)
      const announced = await eventually(`${org}'s inventory.stock.initialized`, () => {
        const found = of(published, org, "inventory.stock.initialized")
        return found.length > 0 ? found : undefined
      }, 15_000)
      expect(announced).toHaveLength(1)
      expect((announced[0]!.json as { causation_id: string }).causation_id).toBe(eventId)
    }
    const ids = [a, b].map((org) => (of(published, org, "inventory.stock.initialized")[0]!.json as { event_id: string }).event_id)
    expect(ids[0]).not.toBe(ids[1])
  })

  it("order.placed failing for stock in both: two DLQ copies and two failed_events rows, one per organization", async () => {
    const [a, b] = [freshOrg(), freshOrg()]
    const eventId = freshId("evt-placed")
    for (const org of [a, b]) await run(addWarehouse(org, "wh_1"))
    for (const org of [a, b]) {
      await client.publish("order_events", "order.placed",
        envelope(org, "order.placed", eventId, { order_id: "o1", items: [{ variant_id: "v-none", quantity: 1 }] }))
    }
    for (const org of [a, b]) {
      const copies = await eventually(`${org}'s dead letter`, () => {
        const found = of(dead, org)
        return found.length > 0 ? found : undefined
      }, 15_000)
      expect(copies).toHaveLength(1)
      expect(copies[0]!.headers["x-error-type"]).toBe("InsufficientStock")
      const rows = await eventually(`${org}'s failed_events row`, async () => {
        const found = (await run(Effect.flatMap(FailedEvents, (f) => f.list({})))).filter((r) => r.organization_id === org)
        return found.length > 0 ? found : undefined
      })
      expect(rows).toHaveLength(1)
      expect(rows[0]!.event_id).toBe(eventId)
      await eventually(`${org}'s inventory.reservation.failed`, () => of(published, org, "inventory.reservation.failed").length === 1, 15_000)
    }
    const [rowA, rowB] = await Promise.all([a, b].map(async (org) =>
      (await run(Effect.flatMap(FailedEvents, (f) => f.list({})))).find((r) => r.organization_id === org)!))
    expect(rowA!.id).not.toBe(rowB!.id)
  })

  it("org B's order.confirmed naming the same reservation and order ids leaves org A's timer: A's reservation still expires", async () => {
    const [a, b] = [freshOrg(), freshOrg()]
    const eventId = freshId("evt-placed")
    for (const org of [a, b]) {
      await run(addWarehouse(org, "wh_1"))
      await run(putStock(org, "v1", "wh_1", 10))
    }
    const place = (org: string, ttlMinutes: number) =>
      client.publish("order_events", "order.placed", envelope(org, "order.placed", eventId, {
        order_id: "o1",
        items: [{ variant_id: "v1", quantity: 2 }],
        reservation_ttl_minutes: ttlMinutes
      }))
    // Org A's reservation lives 3 seconds, org B's an hour.
    await place(a, 0.05)
    const [reservationA] = await eventually("org A's reservation", async () => {
      const found = await reservationsOf(a, "o1")
      return found.length > 0 ? found : undefined
    })
    await place(b, 60)
    await eventually("org B's reservation", async () => (await reservationsOf(b, "o1")).length > 0)
    await client.publish("order_events", "order.confirmed", envelope(b, "order.confirmed", freshId("evt-confirmed"), {
      order_id: "o1",
      reservation_id: reservationA!.reservation_id
    }))
    await eventually("org B's reservation confirmed", async () => (await reservationsOf(b, "o1"))[0]?.status === "confirmed")

    await eventually("org A's reservation expired by its timer", async () => (await reservationsOf(a, "o1"))[0]?.status === "expired", 20_000)
    expect(await run(quantities(a, "v1", "wh_1"))).toEqual({ total: 10, available: 10, reserved: 0, damaged: 0 })
    expect((await reservationsOf(b, "o1"))[0]?.status).toBe("confirmed")
    expect(await run(quantities(b, "v1", "wh_1"))).toEqual({ total: 10, available: 8, reserved: 2, damaged: 0 })
    const releasedA = await eventually("org A's inventory.stock.released", () => {
      const found = of(published, a, "inventory.stock.released")
      return found.length > 0 ? found : undefined
    }, 15_000)
    expect((releasedA[0]!.json as { data: { reason: string } }).data.reason).toBe("expired")
  })
})
