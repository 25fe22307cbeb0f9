import { Effect, Layer, ManagedRuntime } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import type { FailedEventJson } from "../../src/cli/dlq.ts"
import { DatabaseError } from "../../src/domain/errors.ts"
import { Broker } from "../../src/messaging/connection.ts"
import * as DeadLetterRecorder from "../../src/messaging/deadLetterRecorder.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { FailedEvents, Reservations } from "../../src/stores/services.ts"
import { cliSchema, cliWith, databaseUrl, dropSchema, json } from "../cli/support.ts"
import { addWarehouse, freshId, freshOrg, putStock } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, queuesSettled, rabbitmqctl, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * Dead letters the broker makes itself (issue 15, item 8) on the real broker and PostgreSQL: a
 * message that expires while no consumer runs and one past a quorum queue's delivery limit are
 * recorded from our recorder queue with the broker's reason, listed by `dlq list` and replayed
 * by `dlq replay`; a redelivered copy is recorded once; our own copies are not recorded again.
 */

const vhost = uniqueVhost("broker_dlx")
const schema = cliSchema("broker_dlx")
const env = testEnv(vhost)
const cli = cliWith({ DATABASE_URL: databaseUrl, DATABASE_SCHEMA: schema, ...env })
const recorderQueue = "inventory_dead_letter_recorder"
const orderQueue = "inventory_order_consumer"

/** Organizations whose next `record` writes the row and then reports a failure, as a lost reply would. */
const failAfterWrite = new Set<string>()
const calls = { get: new Map<string, number>(), record: new Map<string, number>() }
const bump = (map: Map<string, number>, key: string | null) => map.set(key ?? "", (map.get(key ?? "") ?? 0) + 1)

const base = SqlStores.layerWithClient({ url: databaseUrl, schema, poolSize: 4 })
const watched = Layer.effect(
  FailedEvents,
  Effect.map(FailedEvents, (store) =>
    FailedEvents.of({
      ...store,
      get: (id) =>
        Effect.tap(store.get(id), () => Effect.sync(() => bump(calls.get, id))),
      record: (event) =>
        Effect.gen(function*() {
          bump(calls.record, event.organization_id)
          const stored = yield* store.record(event)
          if (event.organization_id !== null && failAfterWrite.delete(event.organization_id)) {
            return yield* Effect.fail(new DatabaseError({ reason: "connection", message: "injected: reply lost after the write" }))
          }
          return stored
        })
    }))
).pipe(Layer.provide(base))
const stores = watched.pipe(Layer.provideMerge(base))
const withTimers = Scheduler.layer({ sweepInterval: "60 seconds", sweepBatch: 500 }).pipe(Layer.provideMerge(stores))

/** The recorder alone: nothing consumes the inbound queues. */
const recorderOnly = () =>
  ManagedRuntime.make(
    DeadLetterRecorder.layer.pipe(
      Layer.provideMerge(Broker.layer),
      Layer.provideMerge(stores),
      Layer.provideMerge(RuntimeConfig.layerFrom(env))
    ) as Layer.Layer<FailedEvents | Broker | RuntimeConfig, unknown>
  )

let client: TestClient

/** Runs `test` with the recorder consuming, and stops it afterwards. */
const withRecorder = async (test: (run: <A, E>(effect: Effect.Effect<A, E, any>) => Promise<A>) => Promise<void>) => {
  const recorder = recorderOnly()
  try {
    await recorder.runPromise(Effect.void)
    await test((effect) => recorder.runPromise(effect))
  } finally {
    await recorder.dispose()
  }
}

const orderPlaced = (org: string, eventId: string, orderId: string) => ({
  event: "order.placed",
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: eventId,
  data: { order_id: orderId, items: [{ variant_id: "v1", quantity: 1 }] }
})

const listed = async (org: string) => json<Array<FailedEventJson>>(await cli("dlq", "list", "--org", org, "--json"))

beforeAll(async () => {
  await createVhost(vhost)
  // The whole runtime once: it declares the topology (recorder queue included), then stops.
  const runtime = startRuntime(withTimers, env)
  await runtime.runPromise(Effect.void)
  await runtime.dispose()
  client = await TestClient.connect(vhost)
})

afterAll(async () => {
  await client?.close()
  await deleteVhost(vhost)
  await dropSchema(schema)
})

// Each test runs several child processes (the CLI) or waits on the broker; the machine is shared.
describe("dead letters the broker makes", () => {
  it("a message that expires while no consumer runs is recorded as BrokerExpired (whatever x-error-type its publisher forged), listed, and replayed", async () => {
    const org = freshOrg()
    const eventId = freshId("evt")
    const body = JSON.stringify(orderPlaced(org, eventId, "order-1"))
    // A forged `x-error-type` must not pass it off as one of the consumer's own copies (the fuzz found it).
    await client.publish("order_events", "order.placed", body, { expiration: "50", headers: { "x-tenant": "t-1", "x-error-type": "Forged" } })
    // Expired in the order queue, its copy waits in the recorder queue for the service to start.
    await eventually("the copy in the recorder queue", async () => (await client.depth(recorderQueue)) === 1 && (await client.depth(orderQueue)) === 0)

    const runtime = startRuntime(withTimers, env)
    try {
      const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)
      await run(Effect.void)
      const rows = await eventually("recorded", async () => {
        const found = await listed(org)
        return found.length === 1 ? found : undefined
      })
      expect(rows[0]).toMatchObject({
        event_id: eventId,
        event_type: "order.placed",
        organization_id: org,
        error_type: "BrokerExpired",
        original_exchange: "order_events",
        original_routing_key: "order.placed",
        replay_count: 0
      })
      const stored = await run(Effect.flatMap(FailedEvents, (f) => f.get(rows[0]!.id)))
      expect(stored._tag).toBe("Some")
      if (stored._tag === "Some") {
        expect(Buffer.from(stored.value.body).toString("utf8")).toBe(body)
        expect(stored.value.headers).toEqual({ "x-tenant": "t-1", "x-error-type": "Forged" })
      }
      await eventually("the recorder queue emptied", async () => (await client.depth(recorderQueue)) === 0)

      // Replayed once there is stock: the running consumer reserves it.
      await run(addWarehouse(org, "wh-1"))
      await run(putStock(org, "v1", "wh-1", 5))
      const replayed = await cli("dlq", "replay", "--id", rows[0]!.id, "--json")
      expect(replayed.code, replayed.stderr).toBe(0)
      await eventually("reserved after the replay", async () =>
        (await run(Effect.flatMap(Reservations, (r) => r.findByOrder(org, "order-1")))).length === 1)
      expect((await listed(org)).map((e) => [e.error_type, e.replay_count])).toEqual([["BrokerExpired", 1]])
    } finally {
      await runtime.dispose()
    }
  }, 180_000)

  it("a message past the quorum queue's delivery limit is recorded as BrokerDeliveryLimit", async () => {
    const policy = `limit_${Math.random().toString(36).slice(2, 8)}`
    await rabbitmqctl("set_policy", "-p", vhost, policy, `^${orderQueue}$`, JSON.stringify({ "delivery-limit": 2 }), "--apply-to", "queues")
    const recorder = recorderOnly()
    const rejecter = await TestClient.connect(vhost)
    try {
      await recorder.runPromise(Effect.void)
      const org = freshOrg()
      const eventId = freshId("evt")
      let deliveries = 0
      // A consumer that rejects every delivery back to the queue, as a crashing one would.
      await rejecter.channel.consume(orderQueue, (message) => {
        if (message === null) return
        deliveries++
        rejecter.channel.nack(message, false, true)
      })
      await client.publish("order_events", "order.placed", JSON.stringify(orderPlaced(org, eventId, "order-2")))
      const rows = await eventually("recorded", async () => {
        const found = await listed(org)
        return found.length === 1 ? found : undefined
      })
      expect(deliveries).toBeGreaterThanOrEqual(3)
      expect(rows[0]).toMatchObject({
        event_id: eventId,
        organization_id: org,
        error_type: "BrokerDeliveryLimit",
        original_exchange: "order_events",
        original_routing_key: "order.placed"
      })
      expect(rows[0]!.error_message).toContain(`(delivery_limit) from queue ${orderQueue}`)
    } finally {
      await rejecter.close()
      await recorder.dispose()
      await rabbitmqctl("clear_policy", "-p", vhost, policy)
    }
  }, 180_000)

  it("records a redelivered copy once, stores text PostgreSQL would refuse, and leaves our own copies alone", () =>
    withRecorder(async (run) => {
      const org = freshOrg()
      // A NUL and a lone surrogate (a JSON escape in the body) in the event id, a NUL in a header:
      // PostgreSQL refuses both in text and jsonb. Without the header escaped, nothing is recorded.
      const eventId = `${freshId("evt")}\u0000\uD800x`
      const death = {
        count: 1,
        reason: "maxlen",
        queue: orderQueue,
        time: { "!": "timestamp", value: Math.floor(Date.now() / 1000) },
        exchange: "order_events",
        "routing-keys": ["order.placed"]
      }
      failAfterWrite.add(org)
      await client.publish("inventory_dlq", "order.placed", JSON.stringify(orderPlaced(org, eventId, "order-3")), {
        headers: { "x-death": [death], "x-note": "a\u0000b" }
      })
      // Ours (`x-error-type`, never `x-death`: the dead-letter path drops it): recorded when we made
      // it, so only acknowledged here.
      await client.publish("inventory_dlq", "order.placed", JSON.stringify(orderPlaced(org, freshId("evt"), "order-4")), {
        headers: { "x-error-type": "InsufficientStock" }
      })

      // Written once, the reply lost, the copy redelivered: found, not written again.
      const rows = await eventually("recorded, and its redelivery seen", async () => {
        const found = await run(Effect.flatMap(FailedEvents, (f) => f.list({ organization_id: org })))
        return found.length === 1 && calls.get.get(found[0]!.id) === 2 ? found : undefined
      })
      expect(rows.map((r) => [r.error_type, r.event_id, r.headers])).toEqual([
        // peek gives only storable text: the event id is left out, the header escaped.
        ["BrokerOverflow", null, { "x-note": "a\\u0000b" }]
      ])
      expect(calls.record.get(org)).toBe(1)
      // Both acknowledged (ours too), and ours left no record.
      await eventually("the recorder queue settled", () => queuesSettled(vhost, [recorderQueue]), 60_000, 250)
      expect(await run(Effect.flatMap(FailedEvents, (f) => f.list({ organization_id: org })))).toHaveLength(1)
    }), 180_000)

  it("marks the record of one of our copies copied, by its x-dead-letter-id: a copy whose confirm was lost is not made again", () =>
    withRecorder(async (run) => {
      const org = freshOrg()
      const id = freshId("dl")
      const body = new TextEncoder().encode(JSON.stringify(orderPlaced(org, freshId("evt"), "order-5")))
      // Recorded, then copied with its confirm lost: nothing marked it.
      await run(Effect.flatMap(FailedEvents, (f) =>
        f.record({
          id,
          event_id: null,
          event_type: "order.placed",
          organization_id: org,
          error_type: "ValidationError",
          error_message: "injected",
          body,
          body_sha256: "0".repeat(64),
          body_length: body.length,
          content_type: null,
          original_exchange: "order_events",
          original_routing_key: "order.placed",
          attempts: 1,
          failed_at: new Date(),
          replay_count: 0,
          last_replayed_at: null,
          dlq_copied_at: null,
          headers: {}
        })))
      await client.publish("inventory_dlq", "order.placed", Buffer.from(body), {
        headers: { "x-error-type": "ValidationError", "x-dead-letter-id": id }
      })
      const marked = await eventually("the record marked copied", async () => {
        const found = await run(Effect.flatMap(FailedEvents, (f) => f.get(id)))
        return found._tag === "Some" && found.value.dlq_copied_at !== null ? found.value : undefined
      })
      expect(marked.error_type).toBe("ValidationError")
      // Still ours: no record of its own.
      expect(await run(Effect.flatMap(FailedEvents, (f) => f.list({ organization_id: org })))).toHaveLength(1)
    }), 60_000)
})
