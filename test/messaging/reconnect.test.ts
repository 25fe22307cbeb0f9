import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { Movements } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg } from "../support/events.ts"
import {
  closeConnections,
  createVhost,
  deleteVhost,
  eventually,
  queuesSettled,
  returnReceived,
  startRuntime,
  TestClient,
  testEnv,
  uniqueVhost
} from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * Connection recovery (SPEC 5) under load: every client connection of the vhost is killed
 * twice while messages are in flight. The consumer reconnects by itself, nothing is lost,
 * nothing is applied twice, messages of one key stay in order, and the relay publishes every
 * outbox row once the broker is back.
 */

const vhost = uniqueVhost("reconnect")
let runtime: ReturnType<typeof startRuntime<any, any>>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(sqlLayer("mq_reconnect"), testEnv(vhost))
  await runtime.runPromise(Effect.void)
})

afterAll(async () => {
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("connection recovery", () => {
  it("resumes consuming after its connections are killed mid-stream, losing and repeating nothing", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const setup = await TestClient.connect(vhost)
    // A durable capture queue outlives the killed connections; it is drained at the end.
    const capture = `capture_${freshId("q")}`
    await setup.channel.assertQueue(capture, { durable: true })
    await setup.channel.bindQueue(capture, "inventory_events", "inventory.movement.in")

    // 20 keys (orders) x 15 returns; within an order the quantities are 1, 2, ..., 15 in publish
    // order, so the sequence of movements on its row shows the order they were applied in.
    const keys = 20
    const perKey = 15
    const eventIds: Array<string> = []
    for (let i = 1; i <= perKey; i++) {
      for (let k = 0; k < keys; k++) {
        const eventId = freshId("evt")
        eventIds.push(eventId)
        await setup.publish("order_events", "return.received",
          returnReceived(org, eventId, { order: `order-${k}`, returnId: `ret-${k}-${i}`, variant: `v-${k}`, quantity: i }))
      }
    }
    await setup.close()

    const applied = () => run(Effect.flatMap(Movements, (m) => m.list({ organization_id: org }))).then((rows) => rows.length)
    await eventually("some progress", async () => (await applied()) >= 20)
    await closeConnections(vhost)
    await eventually("progress after the first kill", async () => (await applied()) >= 120)
    await closeConnections(vhost)

    await eventually("every event applied", async () => (await applied()) === keys * perKey, 60_000)
    await eventually("queue empty and nothing unacked", () => queuesSettled(vhost, ["inventory_order_consumer"]), 60_000)

    const movements = await run(Effect.flatMap(Movements, (m) => m.list({ organization_id: org })))
    expect(movements).toHaveLength(keys * perKey)
    for (let k = 0; k < keys; k++) {
      const row = movements.filter((m) => m.variant_id === `v-${k}`).sort((a, b) => a.quantity_before - b.quantity_before)
      // Applied exactly in publish order: 1, 2, ..., 15.
      expect(row.map((m) => m.quantity_change)).toEqual(Array.from({ length: perKey }, (_, i) => i + 1))
    }

    // Every outbox row went out despite the kills (at least once: count distinct event ids).
    const reader = await TestClient.connect(vhost)
    try {
      const seen = new Set<string>()
      await eventually("every movement published", async () => {
        for (const m of await reader.drain(capture)) seen.add(String(m.properties.messageId))
        return seen.size === keys * perKey
      }, 60_000)
      expect(seen.size).toBe(keys * perKey)
    } finally {
      await reader.close()
    }
  })
})
