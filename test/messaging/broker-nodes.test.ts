import { ConfigProvider, Context, Duration, Effect, Exit, Layer, Redacted } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { brokerUrls, displayUrl, RuntimeConfig, runtimeSettings } from "../../src/config.ts"
import { Broker } from "../../src/messaging/connection.ts"
import { closeConnections, createVhost, deleteVhost, eventually, freePort as closedPort, TestClient, testEnv, uniqueVhost, vhostUrl } from "../support/rabbit.ts"

/**
 * `AMQP_URL` may name several broker nodes (issue 17): the connection dials them in turn, so a
 * node that is down is skipped and a lost connection is recovered on another node.
 */

const vhost = uniqueVhost("broker_nodes")

const parse = (env: Record<string, string>) => Effect.runSyncExit(runtimeSettings.parse(ConfigProvider.fromEnv({ env })))

beforeAll(() => createVhost(vhost))
afterAll(() => deleteVhost(vhost))

describe("AMQP_URL with several nodes", () => {
  it("is read as a list, each URL checked, passwords hidden in logs", () => {
    expect(brokerUrls("amqp://a:1@h1:5672/v, amqps://b:2@h2:5671/v")).toEqual(["amqp://a:1@h1:5672/v", "amqps://b:2@h2:5671/v"])
    expect(brokerUrls("amqp://h1:5672/v?locale=en,US")).toEqual(["amqp://h1:5672/v?locale=en,US"])
    const ok = parse({ AMQP_URL: "amqp://u:secret@h1:5672/prod,amqp://u:secret@h2:5672/prod" })
    if (!Exit.isSuccess(ok)) throw new Error(String(ok.cause))
    expect(displayUrl(ok.value.broker.url)).toBe("amqp://u:***@h1:5672/prod,amqp://u:***@h2:5672/prod")
    const bad = parse({ AMQP_URL: "amqp://u:secret@h1:5672/prod,http://u:secret@h2" })
    expect(Exit.isFailure(bad)).toBe(true)
    const text = Exit.isFailure(bad) ? String(bad.cause) : ""
    expect(text).toContain("AMQP_URL")
    expect(text).not.toContain("secret")
  })

  it("has the replica settings' defaults", () => {
    const exit = parse({})
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(exit.value.topology.singleActiveConsumer).toBe(true)
    expect(Duration.toMillis(exit.value.relay.electionInterval)).toBe(1000)
    const off = parse({ SINGLE_ACTIVE_CONSUMER: "false", OUTBOX_RELAY_LOCK_INTERVAL: "5 seconds" })
    if (!Exit.isSuccess(off)) throw new Error(String(off.cause))
    expect(off.value.topology.singleActiveConsumer).toBe(false)
    expect(Duration.toMillis(off.value.relay.electionInterval)).toBe(5000)
  })

  it("connects through the second node when the first is down, and recovers a lost connection on the next node", async () => {
    const down = `amqp://guest:guest@127.0.0.1:${await closedPort()}/${encodeURIComponent(vhost)}`
    const env = testEnv(vhost, { AMQP_URL: `${down},${vhostUrl(vhost)}`, AMQP_CONNECT_ATTEMPTS: "3" })
    await Effect.runPromise(Effect.scoped(Effect.gen(function*() {
      const context = yield* Layer.build(Broker.layer.pipe(Layer.provide(RuntimeConfig.layerFrom(env))))
      const broker = Context.get(context, Broker)
      expect(yield* broker.connected).toBe(true)
      // The topology was declared through the live node.
      const client = yield* Effect.promise(() => TestClient.connect(vhost))
      expect((yield* Effect.promise(() => client.channel.checkQueue("inventory_order_consumer"))).queue).toBe("inventory_order_consumer")
      yield* Effect.promise(() => client.close())

      // Lost: the next attempt goes to the dead node, fails, and the one after comes back here.
      yield* Effect.promise(() => closeConnections(vhost))
      yield* Effect.promise(() => eventually("connection lost", () => Effect.runPromise(Effect.map(broker.connected, (up) => !up))))
      yield* Effect.promise(() => eventually("reconnected", () => Effect.runPromise(broker.connected)))
      const channel = yield* broker.channel
      expect((yield* Effect.promise(() => channel.checkQueue("inventory_catalog_consumer"))).queue).toBe("inventory_catalog_consumer")
    })))
  })

  it("fails to start, naming every node without its password, when none answers", async () => {
    const a = `amqp://guest:hunter2@127.0.0.1:${await closedPort()}/x`
    const b = `amqp://guest:hunter2@127.0.0.1:${await closedPort()}/x`
    const env = testEnv(vhost, { AMQP_URL: `${a},${b}`, AMQP_CONNECT_ATTEMPTS: "2" })
    const exit = await Effect.runPromiseExit(Effect.scoped(Layer.build(Broker.layer.pipe(Layer.provide(RuntimeConfig.layerFrom(env))))))
    expect(Exit.isFailure(exit)).toBe(true)
    const text = Exit.isFailure(exit) ? String(exit.cause) : ""
    expect(text).toContain(displayUrl(Redacted.make(`${a},${b}`)))
    expect(text).not.toContain("hunter2")
  })
})
