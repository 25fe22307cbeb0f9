import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Outbox, UnitOfWork, WorkingSet } from "../../src/stores/services.ts"
import { createVhost, deleteVhost, eventually, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { captureAnnouncements, outboxRow, type Replica, startRelay } from "../support/relays.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * The active relay runs on a replica that stands by, which no nudge from the consuming replica
 * reaches (issue 18): a commit that wrote outbox rows wakes it through PostgreSQL. Here the
 * relays poll once an hour and nothing nudges them, so a row published at all was published
 * because its commit woke the relay.
 */

const vhost = uniqueVhost("relay_wakeup")
const schema = uniqueSchema("mq_relay_wakeup")
const env = testEnv(vhost, { OUTBOX_POLL_INTERVAL_MS: "3600000", OUTBOX_RELAY_LOCK_INTERVAL: "100" })
const capture = captureAnnouncements(vhost, "relay_wakeup_capture")

const database = ManagedRuntime.make(
  SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 6 }).pipe(Layer.provideMerge(RuntimeConfig.layerFrom(env))) as Layer.Layer<any, unknown>
)
const run = <A, E>(effect: Effect.Effect<A, E, any>) => database.runPromise(effect)

const pending = () => run(Effect.flatMap(Outbox, (o) => o.pendingCount()))
const allSent = (label: string) => eventually(label, async () => (await pending()) === 0)

/** Rows written as a unit of work for one event writes them (`Outbox.append`). */
const appendInUnit = (ids: ReadonlyArray<string>) =>
  run(Effect.flatMap(UnitOfWork, (uow) => uow.transaction(Effect.flatMap(Outbox, (o) => o.append(ids.map((id) => outboxRow(id)))))))

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
        outbox: ids.map((id) => outboxRow(id)),
        forget: []
      })))))

/**
 * Waits until the relay holds the lock, then half a second more: its first round (woken on
 * taking the lock) is over, so it cannot be what publishes the rows written next, and its
 * listener is registered, so their notification is not missed (that would fail the test, not
 * pass it).
 */
const settledActive = async (replica: Replica) => {
  await eventually("the relay active", () => run(replica.relay.active))
  await new Promise((r) => setTimeout(r, 500))
  expect(await pending()).toBe(0)
}

beforeAll(async () => {
  await createVhost(vhost)
  await capture.declare()
})

afterAll(async () => {
  await run(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await database.dispose()
  await deleteVhost(vhost)
})

describe("a commit that wrote outbox rows wakes the relay on another replica", () => {
  it("by a unit of work and by a group's save, on whichever replica holds the relay", async () => {
    const consuming = await startRelay(run, { consuming: true, standingBy: false })
    let standby: Replica | undefined
    try {
      // The replica that stands by takes the relay; the consuming one has it while alone.
      await settledActive(consuming)
      standby = await startRelay(run, { consuming: false, standingBy: true })
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

      expect((await capture.drain()).sort()).toEqual(["after1", "g1", "g2", "g3", "u1", "u2"])
    } finally {
      await Promise.all([consuming.stop(), standby?.stop()]).catch(() => undefined)
    }
  })
})
