import { Effect, Layer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import { Reconciliation, ReservationTimers } from "../../src/stores/services.ts"
import { addWarehouse, freshOrg, putStock, quantities, reservationsOf } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { sqlStoresLayer } from "../support/sql.ts"
import { captureQueue, installAudit, orderPlaced, outboxRowsOf, released, stockChangesOf, transitionsOf } from "./support.ts"

/**
 * SPEC 4, reservation expiry, end to end on the real services: an `order.placed` with a TTL of
 * 3 s (`reservation_ttl_minutes: 0.05`) published to `order_events` is reserved by the real
 * consumer and released by its TTL timer alone (the sweep runs once an hour here), with
 * `inventory.stock.released` (reason `expired`) on `inventory_events`.
 */

const vhost = uniqueVhost("res_expiry")
// Timers only: the start-up sweep finds nothing due, the next one is an hour away.
const stores = Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(
  Layer.provideMerge(sqlStoresLayer("res_expiry", { poolSize: 6 }))
)
let runtime: ReturnType<typeof startRuntime<any, any>>
let client: TestClient
let capture: Awaited<ReturnType<typeof captureQueue>>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(stores, testEnv(vhost))
  await run(installAudit)
  client = await TestClient.connect(vhost)
  capture = await captureQueue(client, "test_capture")
})

afterAll(async () => {
  await client?.close()
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("reservation TTL on RabbitMQ and PostgreSQL", () => {
  it("a 3 s reservation placed through the consumer expires by itself, once, and is announced", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh"))
    await run(putStock(org, "v1", "wh", 10))

    // A long hold on the same row: were the expiry applied twice, it would not trip the
    // reserved >= 0 constraint but would show in the quantities and in the audit.
    await client.publish("order_events", "order.placed", orderPlaced(org, "evt-anchor", {
      order_id: "anchor",
      items: [{ variant_id: "v1", quantity: 2 }],
      reservation_ttl_minutes: 60
    }))
    await eventually("anchor reserved", async () => (await run(reservationsOf(org, "anchor")))[0]?.status === "active")

    await client.publish("order_events", "order.placed", orderPlaced(org, "evt-short", {
      order_id: "short",
      items: [{ variant_id: "v1", quantity: 3 }],
      reservation_ttl_minutes: 0.05
    }))
    const expired = await eventually("the 3 s reservation expired", async () => {
      const [r] = await run(reservationsOf(org, "short"))
      return r?.status === "expired" ? r : undefined
    }, 90_000)
    expect(expired.closed_reason).toBe("expired")
    // The TTL is the fractional one from the event, not the 15-minute default.
    const ttlMs = expired.expires_at!.getTime() - expired.created_at.getTime()
    expect(ttlMs).toBeGreaterThan(0)
    expect(ttlMs).toBeLessThanOrEqual(3_000)

    const messages = await eventually("inventory.stock.released on inventory_events", async () => {
      const all = await capture.collect()
      return released(all).some((m) => m.data.reservation_id === expired.reservation_id) ? all : undefined
    }, 30_000)
    const releases = released(messages)
    expect(releases).toHaveLength(1)
    expect(releases[0]).toMatchObject({
      organization_id: org,
      data: { reservation_id: expired.reservation_id, order_id: "short", reason: "expired", items: [{ variant_id: "v1", warehouse_id: "wh", quantity: 3 }] }
    })
    // Released at or after the deadline, never before (both times come from the consumer's clock).
    expect(new Date(releases[0]!.timestamp).getTime()).toBeGreaterThanOrEqual(expired.expires_at!.getTime())
    expect(messages.filter((m) => m.routingKey === "inventory.stock.reserved")).toHaveLength(2)

    // Stock back to available, the anchor's hold untouched.
    expect(await run(quantities(org, "v1", "wh"))).toEqual({ total: 10, available: 8, reserved: 2, damaged: 0 })
    expect((await run(reservationsOf(org, "anchor")))[0]?.status).toBe("active")

    // Counted, not inferred: one committed transition, one committed release of 3 units.
    await run(Effect.flatMap(ReservationTimers, (t) => t.settled))
    const transitions = await run(transitionsOf(org))
    expect(transitions.map((t) => [t.order_id, t.from_status, t.to_status, t.closed_reason])).toEqual([
      ["short", "active", "expired", "expired"]
    ])
    const changes = await run(stockChangesOf(org))
    expect(changes.filter((c) => c.d_available > 0).map((c) => [c.d_available, c.d_reserved, c.d_total])).toEqual([[3, -3, 0]])
    expect(changes).toHaveLength(3) // anchor reserve, short reserve, short release
    const outbox = await run(outboxRowsOf(org))
    expect(outbox.filter((m) => m.event_type === "inventory.stock.released")).toHaveLength(1)
    expect(await run(Effect.flatMap(ReservationTimers, (t) => t.pending))).toBe(1) // the anchor's
    expect(await run(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])
  })
})
