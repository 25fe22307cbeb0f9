import amqp from "amqplib"
import { ConfigProvider, Effect, Layer, References } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { runtimeSettings, type Topology } from "../../src/config.ts"
import { Broker } from "../../src/messaging/connection.ts"
import { FailedEvents, Outbox, Reconciliation } from "../../src/stores/services.ts"
import { makeCluster, type ClusterNode } from "../support/cluster.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities } from "../support/events.ts"
import { eventually, startRuntime, testEnv } from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * Issue 17, broker cluster: a three-node RabbitMQ cluster of its own on this machine (the shared
 * broker on 5672 is not touched), the consumer given all three nodes in AMQP_URL, quorum inbound
 * queues. Mid-load the node leading the order queue stops (`stop_app`); publishing goes on.
 * Every event is applied once, nothing is dead-lettered, the books balance, the queue gets a new
 * leader and the consumer keeps consuming through another node. Stops broker nodes, so it runs
 * alone (the `isolated` project).
 */

const orders = 300
/** Orders from here on are published only once the leader has stopped. */
const publishedAfterStop = 200
/** The leader stops once this many events are applied: mid-load, with most of the run still ahead. */
const stopAfterApplied = 120
const variants = Array.from({ length: 10 }, (_, i) => `v-${i}`)
const initialStock = 10_000

const cluster = makeCluster({ size: 3 })
/** The name src/messaging/connection.ts gives its connection. */
const consumerConnection = "inventory-event-consumer"
const vhost = "/"
const env = (nodes: ReadonlyArray<ClusterNode>) =>
  testEnv(vhost, {
    AMQP_URL: nodes.map((n) => n.url(vhost)).join(","),
    QUEUE_TYPE: "quorum",
    CONSUMER_ROLE_CHECK_INTERVAL: "200",
    OUTBOX_RELAY_LOCK_INTERVAL: "200",
    // A confirm may wait out a leader election.
    PUBLISH_TIMEOUT_MS: "10000"
  })

let runtime: ReturnType<typeof startRuntime<any, any>> | undefined
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime!.runPromise(effect)
let topology: Topology
let timings = ""

/** Publishes with confirms through one node; a refused or unconfirmed publish is sent again (same event id), as an upstream service would. */
class ClusterPublisher {
  private connection: amqp.ChannelModel | undefined
  private channel: amqp.ConfirmChannel | undefined
  readonly url: string

  constructor(url: string) {
    this.url = url
  }

  private async open(): Promise<amqp.ConfirmChannel> {
    if (this.channel !== undefined) return this.channel
    const connection = await amqp.connect(this.url)
    connection.on("error", () => undefined)
    const channel = await connection.createConfirmChannel()
    channel.on("error", () => undefined)
    channel.on("close", () => {
      if (this.channel === channel) this.channel = undefined
    })
    this.connection = connection
    this.channel = channel
    return channel
  }

  async publish(exchange: string, routingKey: string, body: object): Promise<void> {
    let lastError: unknown
    for (let attempt = 0; attempt < 5; attempt++) {
      try {
        const channel = await this.open()
        await new Promise<void>((resolve, reject) => {
          const timer = setTimeout(() => reject(new Error("no confirm within 15 s")), 15_000)
          channel.publish(exchange, routingKey, Buffer.from(JSON.stringify(body)), { persistent: true, contentType: "application/json" }, (error: unknown) => {
            clearTimeout(timer)
            if (error) reject(error)
            else resolve()
          })
        })
        return
      } catch (error) {
        lastError = error
        await this.close()
        await new Promise((r) => setTimeout(r, 500))
      }
    }
    throw new Error(`publish to ${exchange} ${routingKey} failed: ${lastError instanceof Error ? lastError.message : String(lastError)}`)
  }

  async channelNow(): Promise<amqp.ConfirmChannel> {
    return this.open()
  }

  async close(): Promise<void> {
    const connection = this.connection
    this.connection = undefined
    this.channel = undefined
    await connection?.close().catch(() => undefined)
  }
}

let publisher: ClusterPublisher | undefined

const within = <A>(what: string, ms: number, promise: Promise<A>) =>
  Promise.race([promise, new Promise<never>((_, reject) => setTimeout(() => reject(new Error(`${what} took over ${ms} ms`)), ms).unref())])

beforeAll(async () => {
  const started = await cluster.start()
  timings = `cluster of 3 up in ${((started.bootMs + started.joinMs) / 1000).toFixed(1)} s (boot ${(started.bootMs / 1000).toFixed(1)} s, join ${(started.joinMs / 1000).toFixed(1)} s)`
  const settings = await Effect.runPromise(runtimeSettings.parse(ConfigProvider.fromEnv({ env: env(cluster.nodes) })))
  topology = settings.topology
  // Warnings and errors only: a line per consumed event would bury the failover's own logs.
  runtime = startRuntime(Layer.merge(sqlLayer("mq_cluster"), Layer.succeed(References.MinimumLogLevel, "Warn")), env(cluster.nodes))
  await runtime.runPromise(Effect.void)
}, 300_000)

afterAll(async () => {
  try {
    await publisher?.close()
    await within("consumer shutdown", 30_000, runtime?.dispose() ?? Promise.resolve()).catch(() => undefined)
  } finally {
    await cluster.stop()
  }
}, 90_000)

describe("three-node RabbitMQ cluster", () => {
  it("loses nothing and applies nothing twice when the node leading the queues stops mid-load", async () => {
    const testStarted = Date.now()
    const org = freshOrg()
    const orderQueue = topology.orders.queue
    const [first] = cluster.nodes

    // The queues were declared through the node the consumer dialled first; find who leads them.
    const leader = await eventually("order queue leader", () => cluster.leader(first!, orderQueue), 30_000, 500)
    const catalogLeader = await cluster.leader(first!, topology.catalog.queue)
    const survivor = cluster.nodes.find((n) => n !== leader)!
    publisher = new ClusterPublisher(survivor.url(vhost))

    // Every outbound event the relay publishes, kept on a quorum queue led by a node that stays up.
    const outbound = "cluster_test_outbound"
    const setup = await publisher.channelNow()
    await setup.assertQueue(outbound, { durable: true, arguments: { "x-queue-type": "quorum" } })
    await setup.bindQueue(outbound, topology.eventsExchange, "#")
    // After the capture queue: the stock adjustments' outbound events are captured too.
    await run(Effect.gen(function*() {
      yield* addWarehouse(org, "wh_1").pipe(Effect.orDie)
      for (const v of variants) yield* putStock(org, v, "wh_1", initialStock)
    }))

    const published: Array<string> = []
    const shippedUnits = new Map<string, number>()
    const shippedOrders = new Set<string>()
    const cancelledOrders = new Set<string>()
    const envelope = (event: string, data: object) => {
      const event_id = freshId("evt")
      published.push(event_id)
      return { event, version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id, data }
    }

    let releasePublisher: () => void = () => undefined
    const leaderStopped = new Promise<void>((resolve) => {
      releasePublisher = resolve
    })
    const exchange = topology.orders.exchange
    const publishing = (async () => {
      for (let i = 0; i < orders; i++) {
        if (i === publishedAfterStop) await leaderStopped
        const order = `order-${i}`
        const variant = variants[i % variants.length]!
        const quantity = 1 + (i % 3)
        await publisher!.publish(exchange, "order.placed", envelope("order.placed", { order_id: order, items: [{ variant_id: variant, quantity }] }))
        await publisher!.publish(exchange, "order.confirmed", envelope("order.confirmed", { order_id: order, payment_confirmed: true }))
        if (i % 10 === 9) {
          cancelledOrders.add(order)
          await publisher!.publish(exchange, "order.cancelled", envelope("order.cancelled", { order_id: order, cancellation_reason: "customer" }))
        } else {
          shippedOrders.add(order)
          shippedUnits.set(variant, (shippedUnits.get(variant) ?? 0) + quantity)
          await publisher!.publish(exchange, "order.shipped", envelope("order.shipped", {
            order_id: order, shipment_id: `ship-${order}`, shipped_items: [{ variant_id: variant, quantity, warehouse_id: "wh_1" }]
          }))
        }
      }
    })()
    // Awaited below; until then an early failure must not surface as an unhandled rejection.
    publishing.catch(() => undefined)

    const applied = () =>
      run(Effect.flatMap(SqlClient, (sql) => sql<{ n: number }>`SELECT count(*)::int AS n FROM event_log WHERE organization_id = ${org}`)).then((rows) => rows[0]!.n)

    // Queues are placed on the node of the connection declaring them: the consumer's own node is the one to stop.
    expect(await cluster.connectedTo(survivor, consumerConnection)).toEqual([leader])
    await eventually("the first events applied", async () => (await applied()) >= stopAfterApplied, 60_000, 50)
    const appliedAtStop = await applied()
    const stopStarted = Date.now()
    await cluster.ctl(leader!, "stop_app")
    const stopMs = Date.now() - stopStarted
    const publishedBeforeStop = published.length
    releasePublisher()
    await within("publishing", 120_000, publishing)
    const total = orders * 3
    expect(published).toHaveLength(total)
    const afterStop = published.slice(publishedBeforeStop)
    expect(afterStop.length).toBeGreaterThanOrEqual((orders - publishedAfterStop) * 3)

    // The queue has a leader again, on a node still up.
    const newLeader = await eventually("a new order queue leader", async () => {
      const now = await cluster.leader(survivor, orderQueue)
      return now !== undefined && now !== leader ? now : undefined
    }, 60_000, 1_000)

    // Nothing lost: every published event is in the event log, including those published after the stop.
    await eventually("every event applied", async () => (await applied()) === total, 120_000, 250)
    const logged = await run(Effect.flatMap(SqlClient, (sql) => sql<{ event_id: string }>`SELECT event_id FROM event_log WHERE organization_id = ${org}`))
    const loggedIds = new Set(logged.map((r) => r.event_id))
    expect(loggedIds).toEqual(new Set(published))
    // Consumption resumed: what was published once the leader had stopped was applied too.
    expect(afterStop.filter((id) => !loggedIds.has(id))).toEqual([])

    // Nothing applied twice: one shipment movement per shipped order, none for a cancelled one.
    const movements = await run(Effect.flatMap(SqlClient, (sql) =>
      sql<{ reference_id: string; n: number }>`SELECT reference_id, count(*)::int AS n FROM stock_movements
        WHERE organization_id = ${org} AND reason = 'order_shipment' GROUP BY reference_id`))
    expect(movements.filter((m) => m.n !== 1)).toEqual([])
    expect(new Set(movements.map((m) => m.reference_id))).toEqual(shippedOrders)
    const live = await run(Effect.flatMap(SqlClient, (sql) =>
      sql<{ status: string; n: number }>`SELECT status, count(*)::int AS n FROM reservations WHERE organization_id = ${org} GROUP BY status ORDER BY status`))
    expect(live).toEqual([{ status: "cancelled", n: cancelledOrders.size }, { status: "fulfilled", n: shippedOrders.size }])
    for (const v of variants) {
      const left = initialStock - (shippedUnits.get(v) ?? 0)
      expect(await run(quantities(org, v, "wh_1"))).toEqual({ total: left, available: left, reserved: 0, damaged: 0 })
    }
    expect(await run(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])
    expect(await run(Effect.flatMap(FailedEvents, (f) => f.list({ organization_id: org })))).toEqual([])

    // The consumer is still running: connected, and the active consumer of the order queue on the cluster.
    const broker = await run(Effect.map(Broker, (b) => b))
    expect(await Effect.runPromise(broker.connected)).toBe(true)
    const reconnectedTo = await cluster.connectedTo(survivor, consumerConnection)
    expect(reconnectedTo).toHaveLength(1)
    expect(reconnectedTo[0]).not.toBe(leader)
    const consumers = await cluster.ctl(survivor, "list_consumers", "-p", vhost, "--no-table-headers", "queue_name", "active")
    expect(consumers.split("\n").some((line) => line.trim().split(/\s+/).join(" ") === `${orderQueue} true`)).toBe(true)
    const check = await publisher.channelNow()
    expect((await check.checkQueue(orderQueue)).messageCount).toBe(0)
    expect((await check.checkQueue(topology.deadLetterQueue)).messageCount).toBe(0)

    // The relay published every outbound row through the failover (at least once; duplicates are counted, not refused).
    await eventually("outbox drained", async () => (await run(Effect.flatMap(Outbox, (o) => o.pendingCount()))) === 0, 60_000, 250)
    const outboxIds = (await run(Effect.flatMap(SqlClient, (sql) => sql<{ event_id: string }>`SELECT event_id FROM outbox WHERE organization_id = ${org}`)))
      .map((r) => r.event_id)
    expect(outboxIds.length).toBeGreaterThan(0)
    const seen: Array<string> = []
    const capture = await check.consume(outbound, (message) => {
      if (message === null) return
      const body = JSON.parse(message.content.toString("utf8")) as { event_id?: string }
      if (body.event_id !== undefined) seen.push(body.event_id)
    }, { noAck: true })
    await eventually("every outbound event captured", () => outboxIds.every((id) => seen.includes(id)), 30_000, 250)
    await check.cancel(capture.consumerTag)

    console.info([
      timings,
      `order queue led by ${leader!.name} (catalog queue by ${catalogLeader?.name ?? "none"}); stop_app took ${(stopMs / 1000).toFixed(1)} s with ${appliedAtStop} of ${total} events applied`,
      `new leader ${newLeader.name}; ${total} events applied once; ${outboxIds.length} outbound rows, ${seen.length - new Set(seen).size} published more than once`,
      `test body ${((Date.now() - testStarted) / 1000).toFixed(1)} s`
    ].join("\n"))
  }, 300_000)
})
