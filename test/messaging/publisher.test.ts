import { Effect, Layer, ManagedRuntime } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import { Broker } from "../../src/messaging/connection.ts"
import { Publisher } from "../../src/messaging/publisher.ts"
import { createVhost, deleteVhost, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * `PublishError.maybeDelivered` on the real broker: a message that went out on the channel and
 * got no positive confirm may be in a queue, and says so. The dead-letter path waits for the
 * recorder's word on such a copy before copying again (`deadLetter.ts`).
 */

const vhost = uniqueVhost("publisher")
const env = testEnv(vhost, { PUBLISH_TIMEOUT_MS: "3000" })
let client: TestClient
let runtime: ManagedRuntime.ManagedRuntime<Publisher, unknown>

beforeAll(async () => {
  await createVhost(vhost)
  client = await TestClient.connect(vhost)
  // A queue that takes nothing: the broker nacks what is routed to it.
  await client.channel.assertExchange("full_exchange", "fanout", { durable: false })
  await client.channel.assertQueue("full_queue", { durable: false, arguments: { "x-max-length": 0, "x-overflow": "reject-publish" } })
  await client.channel.bindQueue("full_queue", "full_exchange", "")
  runtime = ManagedRuntime.make(
    Publisher.layer.pipe(Layer.provideMerge(Broker.layer), Layer.provideMerge(RuntimeConfig.layerFrom(env))) as Layer.Layer<Publisher, unknown>
  )
})

afterAll(async () => {
  await runtime?.dispose()
  await client?.close()
  await deleteVhost(vhost)
})

const publish = (exchange: string) =>
  runtime.runPromise(
    Effect.flatMap(Publisher, (p) =>
      p.publishAll([{ exchange, routingKey: "k", body: new TextEncoder().encode("{}"), options: { persistent: true } }])
    )
  )

describe("Publisher", () => {
  it("a message the broker nacked, or whose channel closed before its confirm, may have been delivered; a confirmed one has no error", async () => {
    const [nacked] = await publish("full_exchange")
    expect(nacked?._tag).toBe("PublishError")
    expect(nacked?.maybeDelivered).toBe(true)
    // The exchange does not exist: the broker closes the channel, the confirm never comes.
    const [closed] = await publish("no_such_exchange")
    expect(closed?._tag).toBe("PublishError")
    expect(closed?.maybeDelivered).toBe(true)
    // The channel comes back: a routable message is confirmed.
    await client.channel.assertExchange("open_exchange", "fanout", { durable: false })
    await client.channel.assertQueue("open_queue", { durable: false })
    await client.channel.bindQueue("open_queue", "open_exchange", "")
    const deadline = Date.now() + 10_000
    let confirmed = await publish("open_exchange")
    while (confirmed[0] !== undefined && Date.now() < deadline) confirmed = await publish("open_exchange")
    expect(confirmed).toEqual([undefined])
  }, 30_000)
})
