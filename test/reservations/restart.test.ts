import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Outbox, Reconciliation } from "../../src/stores/services.ts"
import { addWarehouse, freshOrg, putStock, quantities, reservationsOf } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, TestClient, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import {
  captureQueue,
  installAudit,
  noTimers,
  orderPlaced,
  outboxRowsOf,
  recoveredCount,
  released,
  startConsumer,
  stockChangesOf,
  transitionsOf
} from "./support.ts"

/**
 * SPEC 4 across a restart: `node src/main.ts` reserves a few orders with TTLs of several
 * seconds and is stopped with SIGTERM before any is due. A new process must recover their
 * timers and release each one on time, exactly once. The sweep runs once an hour, so only the
 * recovered timers can do it (its start-up pass finds nothing due yet).
 */

const vhost = uniqueVhost("res_restart")
const schema = uniqueSchema("res_restart")
const org = freshOrg()
// Seconds until due, per order: long enough to outlive the first process, short enough to wait for.
const orders = [
  { order_id: "o1", quantity: 1, ttlMinutes: 0.3 },
  { order_id: "o2", quantity: 2, ttlMinutes: 0.35 },
  { order_id: "o3", quantity: 3, ttlMinutes: 0.4 },
  { order_id: "o4", quantity: 1, ttlMinutes: 0.4 },
  { order_id: "o5", quantity: 4, ttlMinutes: 0.45 }
]
const anchor = { order_id: "anchor", quantity: 5, ttlMinutes: 60 }

// The test's own view of the database (migrates the schema; dropped at the end). Its timers
// are inert: only the consumer processes may expire anything.
const inspect = ManagedRuntime.make(
  Layer.merge(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }), noTimers) as Layer.Layer<any, unknown>
)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)

const consumerEnv = {
  AMQP_URL: vhostUrl(vhost),
  DATABASE_URL: testDatabaseUrl,
  DATABASE_SCHEMA: schema,
  DATABASE_POOL_SIZE: "4",
  RESERVATION_SWEEP_INTERVAL: "1 hour",
  OUTBOX_POLL_INTERVAL_MS: "100",
  SHUTDOWN_TIMEOUT_MS: "10000"
}

let client: TestClient
const started: Array<ReturnType<typeof startConsumer>> = []
const consumer = () => {
  const c = startConsumer(consumerEnv)
  started.push(c)
  return c
}

beforeAll(async () => {
  await createVhost(vhost)
  await look(installAudit)
  await look(addWarehouse(org, "wh"))
  await look(putStock(org, "v1", "wh", 100))
  client = await TestClient.connect(vhost)
})

afterAll(async () => {
  for (const c of started) c.kill()
  await client?.close()
  await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await inspect.dispose()
  await deleteVhost(vhost)
})

const statuses = async () => {
  const out: Record<string, string | undefined> = {}
  for (const o of [...orders, anchor]) out[o.order_id] = (await look(reservationsOf(org, o.order_id)))[0]?.status
  return out
}

describe("reservation timers across a restart", () => {
  it("a process stopped while reservations are live: the next one releases each on time, once", async () => {
    const first = consumer()
    await eventually("first consumer started", () => first.output().includes("consumer started"), 60_000)
    // The capture queue exists before anything is published, and outlives both processes.
    const capture = await captureQueue(client, "test_capture")

    for (const o of [anchor, ...orders]) {
      await client.publish("order_events", "order.placed", orderPlaced(org, `evt-${o.order_id}`, {
        order_id: o.order_id,
        items: [{ variant_id: "v1", quantity: o.quantity }],
        reservation_ttl_minutes: o.ttlMinutes
      }))
    }
    await eventually("every order reserved", async () =>
      Object.values(await statuses()).every((s) => s === "active"))
    expect(await first.stop(), first.output()).toBe(0)

    // The premise: the first process left every reservation live (else this proves nothing).
    expect(await statuses()).toEqual({ o1: "active", o2: "active", o3: "active", o4: "active", o5: "active", anchor: "active" })
    const held = orders.reduce((n, o) => n + o.quantity, 0) + anchor.quantity
    expect(await look(quantities(org, "v1", "wh"))).toEqual({ total: 100, available: 100 - held, reserved: held, damaged: 0 })
    expect(await look(transitionsOf(org))).toEqual([])
    // SPEC 5: the outbox was flushed before the exit.
    expect(await look(Effect.flatMap(Outbox, (o) => o.pendingCount()))).toBe(0)

    const second = consumer()
    await eventually("second consumer started", () => second.output().includes("consumer started"), 60_000)
    // Every live reservation due within the timer horizon (RESERVATION_TIMER_HORIZON, 2 minutes)
    // got its timer back; the anchor's, due in an hour, is left to a later refill.
    expect(recoveredCount(second.output()), second.output()).toBe(orders.length)

    await eventually("every short reservation expired", async () => {
      const s = await statuses()
      return orders.every((o) => s[o.order_id] === "expired")
    }, 90_000)
    await eventually("outbox published", async () => (await look(Effect.flatMap(Outbox, (o) => o.pendingCount()))) === 0)
    expect(await second.stop(), second.output()).toBe(0)

    // Both processes are gone: the capture queue's content is final.
    const messages = await capture.collect()
    const releases = released(messages)
    const reservationIds = new Map<string, string>()
    for (const o of orders) reservationIds.set(o.order_id, (await look(reservationsOf(org, o.order_id)))[0]!.reservation_id)
    expect(releases.map((m) => m.data.order_id).sort()).toEqual(orders.map((o) => o.order_id).sort())
    expect(new Set(releases.map((m) => m.data.reservation_id))).toEqual(new Set(reservationIds.values()))
    expect(releases.every((m) => m.data.reason === "expired")).toBe(true)
    expect(messages.filter((m) => m.routingKey === "inventory.stock.reserved")).toHaveLength(orders.length + 1)
    for (const o of orders) {
      const [r] = await look(reservationsOf(org, o.order_id))
      const m = releases.find((x) => x.data.order_id === o.order_id)!
      // Not released before its deadline, though the process that set it was gone.
      expect(new Date(m.timestamp).getTime()).toBeGreaterThanOrEqual(r!.expires_at!.getTime())
    }

    // Counted: one committed active -> expired per reservation, one release of its units.
    const transitions = await look(transitionsOf(org))
    expect(transitions.map((t) => [t.order_id, t.from_status, t.to_status]).sort()).toEqual(
      orders.map((o) => [o.order_id, "active", "expired"]).sort()
    )
    const releasesOfStock = (await look(stockChangesOf(org))).filter((c) => c.d_available > 0)
    expect(releasesOfStock.map((c) => c.d_available).sort()).toEqual(orders.map((o) => o.quantity).sort())
    expect((await look(outboxRowsOf(org))).filter((m) => m.event_type === "inventory.stock.released")).toHaveLength(orders.length)

    expect(await statuses()).toMatchObject({ anchor: "active" })
    expect(await look(quantities(org, "v1", "wh"))).toEqual({
      total: 100,
      available: 100 - anchor.quantity,
      reserved: anchor.quantity,
      damaged: 0
    })
    expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])
  }, 180_000)
})
