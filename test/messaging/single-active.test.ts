import { Deferred, Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import * as Messaging from "../../src/messaging/index.ts"
import { Readiness } from "../../src/observability/health.ts"
import { EventApplier, letsKeyGoOn } from "../../src/pipeline/batch.ts"
import type { Decoded } from "../../src/pipeline/decode.ts"
import { applyDecoded, type Outcome } from "../../src/pipeline/pipeline.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { FailedEvents } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities } from "../support/events.ts"
import { createVhost, declareTestTopology, deleteVhost, eventually, rabbitmqctl, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * Two replicas (two consumer runtimes on one vhost and one database). With single active
 * consumer only one of them receives an inbound queue's deliveries; the other stands by and
 * takes over when the active one's connection is closed, and each order's events are still
 * applied in publish order, with no retry on the way.
 *
 * Each runtime applies events through a recording `EventApplier`, so the test sees which
 * replica applied what, in which order. Replica "a" subscribes first, so the broker makes it
 * the active consumer; mid-run its applier holds (a unit of work in flight) while the test
 * closes its connection, then lets go: what it finishes after losing the queue is a duplicate
 * or comes before anything the other replica applies for that order.
 */

// RabbitMQ 3.8+ offers single active consumer on quorum and classic queues alike; both are run.
const suite = (queueType: "quorum" | "classic") => {
  const vhost = uniqueVhost(`single_active_${queueType}`)
  const schema = uniqueSchema(`mq_single_active_${queueType}`)
  const env = testEnv(vhost, { QUEUE_TYPE: queueType, ORDER_PREFETCH: "4", CONSUMER_ROLE_CHECK_INTERVAL: "200", OUTBOX_RELAY_LOCK_INTERVAL: "200" })
  const orderQueue = "inventory_order_consumer"

  const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
  const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)

  interface Applied {
    readonly replica: string
    readonly order: string
    readonly event: string
    readonly outcome: string
    readonly errorType: string | undefined
  }
  const applied: Array<Applied> = []

  /** Holds replica "a"'s applier after its `holdAfter`-th event until `release` is done. */
  const hold = { replica: "a", after: Number.POSITIVE_INFINITY, reached: Deferred.makeUnsafe<void>(), release: Deferred.makeUnsafe<void>() }

  const recordingApplier = (replica: string) =>
    Layer.succeed(EventApplier, {
      // One event at a time, as the default applier, each recorded.
      applyChain: (items) => Effect.gen(function*() {
        const outcomes: Array<Outcome> = []
        for (const { decoded, deliveryCount } of items()) {
          const outcome = yield* applyRecorded(replica, decoded, deliveryCount)
          outcomes.push(outcome)
          if (!letsKeyGoOn(outcome)) break
        }
        return outcomes
      })
    })

  const applyRecorded = (replica: string, decoded: Decoded, deliveryCount: number) =>
        Effect.gen(function*() {
          if (replica === hold.replica && applied.filter((a) => a.replica === replica).length >= hold.after) {
            yield* Deferred.succeed(hold.reached, undefined)
            yield* Deferred.await(hold.release)
          }
          const outcome = yield* applyDecoded(decoded, deliveryCount)
          const data = decoded.event.data as { readonly order_id?: string }
          applied.push({
            replica,
            order: data.order_id ?? "",
            event: decoded.event.event,
            outcome: outcome._tag,
            errorType: outcome._tag === "Retry" || outcome._tag === "DeadLetter" ? outcome.failure.errorType : undefined
          })
          return outcome
        })

  const startReplica = (replica: string) => {
    const stores = Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(
      Layer.provideMerge(SqlStores.layerWith({ url: testDatabaseUrl, schema, poolSize: 4 }))
    )
    const layer = Messaging.layer.pipe(
      Layer.provideMerge(Readiness.layer),
      Layer.provideMerge(stores),
      Layer.provideMerge(recordingApplier(replica)),
      Layer.provideMerge(RuntimeConfig.layerFrom(env))
    )
    return ManagedRuntime.make(layer as Layer.Layer<Readiness, unknown>)
  }

  /** What `/readyz` says about one of its checks on this replica. */
  const readiness = (runtime: ManagedRuntime.ManagedRuntime<Readiness, unknown>, check: string) =>
    runtime.runPromise(Effect.gen(function*() {
      return yield* (yield* Readiness).check
    })).then((checks) => checks.find((c) => c.name === check)?.detail ?? "absent")
  /** The order queue's consumer on this replica: active, standby, or subscribed and waiting. */
  const orderRole = (runtime: ManagedRuntime.ManagedRuntime<Readiness, unknown>) => readiness(runtime, `consumer ${orderQueue}`)
  /** The outbox relay on this replica: active, or standby. */
  const relayRole = (runtime: ManagedRuntime.ManagedRuntime<Readiness, unknown>) => readiness(runtime, "outbox relay")

  let a: ManagedRuntime.ManagedRuntime<Readiness, unknown> | undefined
  let b: ManagedRuntime.ManagedRuntime<Readiness, unknown> | undefined
  const org = freshOrg()
  const variants = ["v1", "v2", "v3"]

  beforeAll(async () => {
    await createVhost(vhost)
    await declareTestTopology(vhost, env)
    await look(Effect.gen(function*() {
      yield* addWarehouse(org, "wh_1").pipe(Effect.orDie)
      for (const v of variants) yield* putStock(org, v, "wh_1", 1_000)
    }))
  })

  afterAll(async () => {
    hold.after = Number.POSITIVE_INFINITY
    await Effect.runPromise(Deferred.succeed(hold.release, undefined))
    await Promise.all([a?.dispose(), b?.dispose()].map((p) => p?.catch(() => undefined)))
    await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
    await inspect.dispose()
    await deleteVhost(vhost)
  })

  /** Each order's lifecycle published back to back, as an Order service does: placed, confirmed, shipped. */
  const publishOrders = async (prefix: string, count: number) => {
    const client = await TestClient.connect(vhost)
    const envelope = (event: string, data: unknown) => ({
      event, version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id: freshId("evt"), data
    })
    try {
      for (let i = 0; i < count; i++) {
        const order = `${prefix}-${i}`
        await client.publish("order_events", "order.placed", envelope("order.placed", {
          order_id: order, items: [{ variant_id: variants[i % variants.length], quantity: 1 }]
        }))
        await client.publish("order_events", "order.confirmed", envelope("order.confirmed", { order_id: order, payment_confirmed: true }))
        await client.publish("order_events", "order.shipped", envelope("order.shipped", {
          order_id: order, shipment_id: `ship-${order}`, shipped_items: [{ variant_id: variants[i % variants.length], quantity: 1, warehouse_id: "wh_1" }]
        }))
      }
    } finally {
      await client.close()
    }
  }

  const lifecycle = ["order.placed", "order.confirmed", "order.shipped"]

  /** Per order, the events first applied (Ack) in the order they were applied. */
  const firstApplied = (prefix: string) => {
    const byOrder = new Map<string, Array<string>>()
    for (const entry of applied) {
      if (!entry.order.startsWith(`${prefix}-`) || entry.outcome !== "Ack") continue
      byOrder.set(entry.order, [...(byOrder.get(entry.order) ?? []), entry.event])
    }
    return byOrder
  }

  /** The connection of the order queue's active consumer, as the broker sees it. */
  const activeConnection = async () => {
    const consumers = await rabbitmqctl("list_consumers", "-p", vhost, "--no-table-headers", "queue_name", "channel_pid", "active")
    const line = consumers.split("\n").map((l) => l.trim().split(/\s+/)).find(([queue, , active]) => queue === orderQueue && active === "true")
    if (line === undefined) return undefined
    const channels = await rabbitmqctl("list_channels", "--no-table-headers", "pid", "connection")
    return channels.split("\n").map((l) => l.trim().split(/\s+/)).find(([pid]) => pid === line[1])?.[1]
  }

  describe(`two replicas on one ${queueType} queue (single active consumer)`, () => {
    it("one replica consumes, the other stands by and takes over with per-key order kept", async () => {
      a = startReplica("a")
      await a.runPromise(Effect.void)
      await eventually("a subscribed", async () => (await orderRole(a!)).startsWith("subscribed"))
      b = startReplica("b")
      await b.runPromise(Effect.void)
      await eventually("b subscribed", async () => (await orderRole(b!)).startsWith("subscribed"))

      // Phase 1: both up; every event goes to "a", the first subscriber.
      await publishOrders("p", 30)
      await eventually("phase 1 applied", () => [...firstApplied("p").values()].flat().length === 90)
      expect(new Set(applied.map((e) => e.replica))).toEqual(new Set(["a"]))
      expect(await orderRole(a)).toBe("active consumer")
      expect(await orderRole(b)).not.toBe("active consumer")
      // The relay goes to the replica that does not consume (issue 18).
      await eventually("the relay on b", async () => (await relayRole(b!)) === "active" && (await relayRole(a!)).startsWith("standby"))

      // Phase 2: "a" holds a unit of work mid-run while its connection is closed by the broker.
      hold.after = applied.length + 20
      const closing = publishOrders("q", 60)
      await Effect.runPromise(Deferred.await(hold.reached))
      const connection = await activeConnection()
      expect(connection).toBeDefined()
      await rabbitmqctl("close_connection", connection!, "test: the active replica dies")
      // "b" takes the queue while "a" still has its work in hand; then "a" lets go.
      await eventually("b receives", () => applied.some((e) => e.replica === "b"))
      await Effect.runPromise(Deferred.succeed(hold.release, undefined))
      await closing
      await eventually("phase 2 applied", () => [...firstApplied("q").values()].flat().length === 180, 60_000)

      for (const [order, events] of [...firstApplied("p"), ...firstApplied("q")]) {
        expect({ order, events }).toEqual({ order, events: lifecycle })
      }
      // No event overtook its predecessor: nothing retried for want of it, nothing dead-lettered.
      expect(applied.filter((e) => e.outcome === "Retry" || e.outcome === "DeadLetter")).toEqual([])
      expect((await look(Effect.flatMap(FailedEvents, (f) => f.list({})))).filter((f) => f.organization_id === org)).toEqual([])
      // After the switch "b" is the active consumer; "a" came back as a standby and received nothing.
      const afterSwitch = applied.slice(applied.findIndex((e) => e.replica === "b"))
      expect(afterSwitch.filter((e) => e.replica === "a" && e.outcome === "Ack").length).toBeLessThanOrEqual(4)
      await eventually("b reported active", async () => (await orderRole(b!)) === "active consumer")
      expect(await orderRole(a)).not.toBe("active consumer")
      // And the relay follows to "a", which no longer consumes.
      await eventually("the relay on a", async () => (await relayRole(a!)) === "active" && (await relayRole(b!)).startsWith("standby"))
      // 90 orders of one unit each, all shipped.
      let shipped = 0
      for (const v of variants) shipped += 1_000 - ((await look(quantities(org, v, "wh_1")))?.total ?? 1_000)
      expect(shipped).toBe(90)
    })
  })
}

suite("quorum")
suite("classic")
