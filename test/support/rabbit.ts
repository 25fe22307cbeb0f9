import amqp from "amqplib"
import { ConfigProvider, Effect, Layer, ManagedRuntime } from "effect"
import { afterAll, beforeAll } from "vitest"
import { RuntimeConfig, runtimeSettings } from "../../src/config.ts"
import { declareTopology } from "../../src/messaging/topology.ts"
import * as Messaging from "../../src/messaging/index.ts"

/**
 * Integration helpers against the real RabbitMQ on 127.0.0.1:5672 (guest/guest). Each test file
 * gets its own vhost, created with `rabbitmqctl` and deleted at the end, so files never see
 * each other's queues and may run in parallel.
 */

// One `rabbitmqctl` and one free-port helper for the tests and the benches: the chaos harness's,
// which tests import already.
import { freePort, rabbitmqctl } from "../../bench/chaos/infra.ts"
export { freePort, rabbitmqctl }

export const uniqueVhost = (file: string) => `test_${file}_${process.pid.toString(36)}_${Math.random().toString(36).slice(2, 8)}`

export const createVhost = async (vhost: string): Promise<void> => {
  await rabbitmqctl("add_vhost", vhost)
  await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
}

export const deleteVhost = async (vhost: string): Promise<void> => {
  await rabbitmqctl("delete_vhost", vhost).catch(() => undefined)
}

/** Kills every client connection of the vhost, as a broker restart or a network cut would. */
export const closeConnections = (vhost: string) => rabbitmqctl("close_all_connections", "-p", vhost, "test")

export const connectionCount = async (vhost: string): Promise<number> =>
  (await rabbitmqctl("list_connections", "vhost")).split("\n").filter((line) => line.trim() === vhost).length

/** Every queue of the vhost with its ready and unacknowledged message counts, as the broker sees them. */
export const queueCounts = async (vhost: string): Promise<Record<string, { ready: number; unacked: number }>> => {
  const out: Record<string, { ready: number; unacked: number }> = {}
  for (const line of (await rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")).split("\n")) {
    const [name, ready, unacked] = line.trim().split(/\s+/)
    if (name && ready !== undefined && unacked !== undefined) out[name] = { ready: Number(ready), unacked: Number(unacked) }
  }
  return out
}

/** The broker emits quorum-queue statistics every few seconds (5 s by default); they lag by that much. */
const statisticsLag = 6_000

/**
 * True once the named queues hold nothing, neither ready nor delivered-but-unacknowledged.
 * `messages_ready` is read exactly (queue.declare-ok); the unacknowledged count only exists in
 * the lagging statistics, so it must read 0 at both ends of a window longer than their lag.
 */
export const queuesSettled = async (vhost: string, queues: ReadonlyArray<string>): Promise<boolean> => {
  const client = await TestClient.connect(vhost)
  try {
    const quiet = async () => {
      const counts = await queueCounts(vhost)
      for (const q of queues) {
        if ((await client.depth(q)) !== 0) return false
        if (counts[q] === undefined || counts[q].unacked !== 0 || counts[q].ready !== 0) return false
      }
      return true
    }
    if (!(await quiet())) return false
    await new Promise((r) => setTimeout(r, statisticsLag))
    return await quiet()
  } finally {
    await client.close()
  }
}

export const vhostUrl = (vhost: string) => `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}`

/** Runtime settings for tests: the vhost, short retries and timeouts, anything else overridable. */
export const testEnv = (vhost: string, overrides: Record<string, string> = {}): Record<string, string> => ({
  AMQP_URL: vhostUrl(vhost),
  RETRY_BASE_DELAY_MS: "10",
  OUTBOX_POLL_INTERVAL_MS: "100",
  PUBLISH_TIMEOUT_MS: "3000",
  SHUTDOWN_TIMEOUT_MS: "5000",
  AMQP_RECONNECT_INITIAL_DELAY_MS: "100",
  AMQP_RECONNECT_MAX_DELAY_MS: "1000",
  AMQP_HEARTBEAT_SECONDS: "5",
  ...overrides
})

/**
 * The whole messaging runtime on the given stores, as one `ManagedRuntime`: building it starts
 * the consumers; `dispose` shuts it down as SIGTERM would.
 */
export const startRuntime = <S, E>(stores: Layer.Layer<S, E>, env: Record<string, string>) => {
  const layer = Messaging.layer.pipe(
    Layer.provideMerge(stores),
    Layer.provideMerge(RuntimeConfig.layerFrom(env))
  )
  return ManagedRuntime.make(layer as Layer.Layer<Layer.Success<typeof layer>, unknown>)
}

/** A `return.received` of one organization: `quantity` of `variant` back into `wh_1`, for `order`. */
export const returnReceived = (
  org: string,
  eventId: string,
  line: { readonly order: string; readonly returnId: string; readonly variant: string; readonly quantity: number }
) => ({
  event: "return.received",
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: eventId,
  data: {
    order_id: line.order,
    return_id: line.returnId,
    warehouse_id: "wh_1",
    returned_items: [{ variant_id: line.variant, quantity: line.quantity, condition: "good" }]
  }
})

/**
 * The `k`-th `return.received` of one organization: one unit of `v-{k % 10}` back into `wh_1`,
 * for order `order-{k % 25}`. Load for tests that count what was applied: every one applies, and
 * each group of them locks stock rows.
 */
export const returnEvent = (org: string, k: number, eventId = `evt-${org}-${k}-${Math.random().toString(36).slice(2, 8)}`) =>
  returnReceived(org, eventId, { order: `order-${k % 25}`, returnId: `ret-${k}`, variant: `v-${k % 10}`, quantity: 1 })

/** `count` of `returnEvent`, one after another: load for the shutdown tests. */
export const publishReturns = async (vhost: string, org: string, count: number): Promise<void> => {
  const client = await TestClient.connect(vhost)
  for (let k = 0; k < count; k++) await client.publish("order_events", "return.received", returnEvent(org, k))
  await client.close()
}

/**
 * One test file's consumer: a vhost of its own, the messaging runtime on `stores`, a test client,
 * and a capture queue on each named exchange, set up before the file's tests and torn down after.
 * Read the fields inside tests (they are set in `beforeAll`).
 */
export const consumerInVhost = <S, E>(
  name: string,
  stores: Layer.Layer<S, E>,
  options: { readonly env?: Record<string, string>; readonly capture?: ReadonlyArray<string> } = {}
) => {
  const vhost = uniqueVhost(name)
  const fixture = {
    vhost,
    runtime: undefined as unknown as ReturnType<typeof startRuntime<S, E>>,
    client: undefined as unknown as TestClient,
    /** What reached each captured exchange, in arrival order. */
    captured: {} as Record<string, Array<Captured>>,
    run: <A, E2>(effect: Effect.Effect<A, E2, any>): Promise<A> => fixture.runtime.runPromise(effect)
  }
  beforeAll(async () => {
    await createVhost(vhost)
    fixture.runtime = startRuntime(stores, testEnv(vhost, options.env))
    await fixture.runtime.runPromise(Effect.void)
    fixture.client = await TestClient.connect(vhost)
    for (const exchange of options.capture ?? []) fixture.captured[exchange] = await fixture.client.bindCapture(exchange)
  })
  afterAll(async () => {
    await fixture.client?.close()
    await fixture.runtime?.dispose()
    await deleteVhost(vhost)
  })
  return fixture
}

export interface Captured {
  readonly routingKey: string
  readonly body: Buffer
  readonly json: unknown
  readonly properties: amqp.MessageProperties
  readonly headers: Record<string, unknown>
}

const capture = (message: amqp.Message): Captured => {
  let json: unknown = undefined
  try {
    json = JSON.parse(message.content.toString("utf8"))
  } catch {
    json = undefined
  }
  return {
    routingKey: message.fields.routingKey,
    body: message.content,
    json,
    properties: message.properties,
    headers: (message.properties.headers ?? {}) as Record<string, unknown>
  }
}

/** A plain amqplib client for the test side: publish as the upstream services do, and look at queues. */
export class TestClient {
  readonly connection: amqp.ChannelModel
  readonly channel: amqp.ConfirmChannel

  private constructor(connection: amqp.ChannelModel, channel: amqp.ConfirmChannel) {
    this.connection = connection
    this.channel = channel
  }

  static async connect(vhost: string): Promise<TestClient> {
    const connection = await amqp.connect(vhostUrl(vhost))
    connection.on("error", () => undefined)
    const channel = await connection.createConfirmChannel()
    channel.on("error", () => undefined)
    return new TestClient(connection, channel)
  }

  /** Publishes and waits for the broker's confirm. */
  async publish(exchange: string, routingKey: string, body: Buffer | string | object, options: amqp.Options.Publish = {}) {
    const content = Buffer.isBuffer(body) ? body : Buffer.from(typeof body === "string" ? body : JSON.stringify(body))
    await new Promise<void>((resolve, reject) =>
      this.channel.publish(exchange, routingKey, content, { persistent: true, contentType: "application/json", ...options }, (error: unknown) =>
        error ? reject(error) : resolve())
    )
  }

  /** Everything published to `exchange` from now on (routing `pattern`), collected into an array. */
  async bindCapture(exchange: string, pattern = "#"): Promise<Array<Captured>> {
    const received: Array<Captured> = []
    await this.channel.assertExchange(exchange, "topic", { durable: true })
    const { queue } = await this.channel.assertQueue("", { exclusive: true, autoDelete: true })
    await this.channel.bindQueue(queue, exchange, pattern)
    await this.channel.consume(queue, (message) => {
      if (message) received.push(capture(message))
    }, { noAck: true })
    return received
  }

  /** Takes every message currently in a queue (acked: they leave the queue). */
  async drain(queue: string): Promise<Array<Captured>> {
    const out: Array<Captured> = []
    while (true) {
      const message = await this.channel.get(queue, { noAck: true })
      if (message === false) return out
      out.push(capture(message))
    }
  }

  async depth(queue: string): Promise<number> {
    return (await this.channel.checkQueue(queue)).messageCount
  }

  async close(): Promise<void> {
    await this.connection.close().catch(() => undefined)
  }
}

/** Polls until `check` returns a value other than `undefined`/`false`, or fails after `timeoutMs`. */
export const eventually = async <A>(
  what: string,
  check: () => Promise<A | undefined | false> | A | undefined | false,
  timeoutMs = 30_000,
  intervalMs = 100
): Promise<A> => {
  const deadline = Date.now() + timeoutMs
  let last: unknown
  while (true) {
    try {
      const value = await check()
      if (value !== undefined && value !== false) return value
      last = value
    } catch (error) {
      last = error
    }
    if (Date.now() > deadline) throw new Error(`Timed out waiting for ${what}; last: ${last instanceof Error ? last.message : JSON.stringify(last)}`)
    await new Promise((r) => setTimeout(r, intervalMs))
  }
}

/** Runs an Effect against a started runtime (stores and all). */
export const runWith = <R, ER>(runtime: ManagedRuntime.ManagedRuntime<R, ER>) => <A, E>(effect: Effect.Effect<A, E, R>) =>
  runtime.runPromise(effect)

/** Declares the topology `env` configures in the vhost, before any consumer runs (so messages can wait in its queues). */
export const declareTestTopology = async (vhost: string, env: Record<string, string>) => {
  const settings = await Effect.runPromise(runtimeSettings.parse(ConfigProvider.fromEnv({ env })))
  const client = await TestClient.connect(vhost)
  try {
    await declareTopology(client.channel, settings.topology)
  } finally {
    await client.close()
  }
}
