import { Context, Effect, Exit, Layer, ManagedRuntime, Scope } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import type { OutboundEvent } from "../../src/domain/published.ts"
import { Consumption } from "../../src/messaging/activity.ts"
import { Broker } from "../../src/messaging/connection.ts"
import { Publisher } from "../../src/messaging/publisher.ts"
import { OutboxRelay } from "../../src/messaging/relay.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Outbox, UnitOfWork, WorkingSet } from "../../src/stores/services.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import { createVhost, deleteVhost, eventually, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * The active relay runs on a replica that stands by, which no nudge from the consuming replica
 * reaches (issue 18): a commit that wrote outbox rows wakes it through PostgreSQL. Here the
 * relays poll once an hour and nothing nudges them, so a row published at all was published
 * because its commit woke the relay.
 */

const vhost = uniqueVhost("relay_wakeup")
const schema = uniqueSchema("mq_relay_wakeup")
const env = testEnv(vhost, { OUTBOX_POLL_INTERVAL_MS: "3600000", OUTBOX_RELAY_LOCK_INTERVAL: "100" })
const capture = "relay_wakeup_capture"

const database = ManagedRuntime.make(
  SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 6 }).pipe(Layer.provideMerge(RuntimeConfig.layerFrom(env))) as Layer.Layer<any, unknown>
)
const run = <A, E>(effect: Effect.Effect<A, E, any>) => database.runPromise(effect)

const relayLayer = OutboxRelay.layer.pipe(Layer.provideMerge(Publisher.layer), Layer.provideMerge(Broker.layer))

interface Replica {
  readonly relay: OutboxRelay["Service"]
  readonly stop: () => Promise<void>
}

/** A replica's relay; `consuming`: its consumers are its queue's active ones, else they stand by. */
const startRelay = (consuming: boolean): Promise<Replica> =>
  run(Effect.gen(function*() {
    const scope = yield* Scope.make()
    const layer = relayLayer.pipe(Layer.provide(Layer.succeed(Consumption, Consumption.of({
      consuming: () => consuming,
      standingBy: () => !consuming,
      register: () => Effect.void
    }))))
    const context = yield* Layer.buildWithScope(layer, scope)
    let stopping: Promise<void> | undefined
    return {
      relay: Context.get(context, OutboxRelay),
      stop: () => (stopping ??= run(Scope.close(scope, Exit.void)))
    }
  }))

const row = (id: string) => ({
  event_id: id,
  organization_id: "org",
  event_type: "inventory.stock.released" as const,
  aggregate_key: `org/order/${id}`,
  payload: { event: "inventory.stock.released", event_id: id } as unknown as OutboundEvent,
  traceparent: null,
  created_at: new Date(0)
})

const pending = () => run(Effect.flatMap(Outbox, (o) => o.pendingCount()))
const allSent = (label: string) => eventually(label, async () => (await pending()) === 0)

/** Rows written as a unit of work for one event writes them (`Outbox.append`). */
const appendInUnit = (ids: ReadonlyArray<string>) =>
  run(Effect.flatMap(UnitOfWork, (uow) => uow.transaction(Effect.flatMap(Outbox, (o) => o.append(ids.map(row))))))

/** Rows written as a group's save writes them (`WorkingSet.save`, one statement of CTEs). */
const saveInGroup = (ids: ReadonlyArray<string>) =>
  run(Effect.flatMap(UnitOfWork, (uow) =>
    uow.transaction(Effect.flatMap(WorkingSet, (ws) =>
      ws.save({
        stockUpdated: [],
        stockCreated: [],
        reservationsCreated: [],
        reservationsChanged: [],
        variants: [],
        movements: [],
        outbox: ids.map(row),
        forget: []
      })))))

const drainCapture = async () => {
  const client = await TestClient.connect(vhost)
  try {
    return (await client.drain(capture)).map((m) => String(m.properties.messageId))
  } finally {
    await client.close()
  }
}

/** Waits until the relay holds the lock and has listened for a while (its first round done). */
const settledActive = async (replica: Replica) => {
  await eventually("the relay active", () => run(replica.relay.active))
  await new Promise((r) => setTimeout(r, 500))
  expect(await pending()).toBe(0)
}

beforeAll(async () => {
  await createVhost(vhost)
  const client = await TestClient.connect(vhost)
  await client.channel.assertExchange("inventory_events", "topic", { durable: true })
  await client.channel.assertQueue(capture, { durable: true })
  await client.channel.bindQueue(capture, "inventory_events", "#")
  await client.close()
})

afterAll(async () => {
  await run(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await database.dispose()
  await deleteVhost(vhost)
})

describe("a commit that wrote outbox rows wakes the relay on another replica", () => {
  it("by a unit of work and by a group's save, on whichever replica holds the relay", async () => {
    const consuming = await startRelay(true)
    let standby: Replica | undefined
    try {
      // The replica that stands by takes the relay; the consuming one has it while alone.
      await settledActive(consuming)
      standby = await startRelay(false)
      await eventually("the relay moved to the replica that stands by", async () =>
        !(await run(consuming.relay.active)) && (await run(standby!.relay.active)))
      await settledActive(standby)

      await appendInUnit(["u1", "u2"])
      await allSent("rows of a unit of work sent")
      await saveInGroup(["g1", "g2", "g3"])
      await allSent("rows of a group sent")

      // The replica that stood by goes: the consuming one takes the relay back and listens in turn.
      await standby.stop()
      await settledActive(consuming)
      await appendInUnit(["after1"])
      await allSent("rows sent after the relay moved back")
      await consuming.stop()

      expect((await drainCapture()).sort()).toEqual(["after1", "g1", "g2", "g3", "u1", "u2"])
    } finally {
      await Promise.all([consuming.stop(), standby?.stop()]).catch(() => undefined)
    }
  })
})
