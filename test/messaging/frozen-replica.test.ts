import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { clientLayer } from "../../src/stores/sql/client.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Reconciliation, Warehouses } from "../../src/stores/services.ts"
import { createVhost, deleteVhost, eventually, freePort, returnEvent, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { killReplicas, type Replica, startReplica, stopReplica } from "../support/replicas.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * A replica that stops answering in the middle of a unit of work (SIGSTOP here; a VM paused, a
 * machine or network that dies without closing its sockets in production) must not stop the
 * others. The broker notices it by its missed heartbeats and hands its queue and unacked
 * messages to the standby; the standby's units of work then need the rows the frozen one locked,
 * in a transaction whose client never comes back. PostgreSQL ends that transaction once it has
 * been idle `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`, and the standby applies everything, each
 * event once. Without it the standby would wait on those locks for as long as the frozen
 * process lives (or, on a dead network, until TCP keepalive: two hours by default).
 */

const vhost = uniqueVhost("frozen_replica")
const schema = uniqueSchema("mq_frozen_replica")
const org = `org-frozen-${process.pid}`
// A database of its own: the sessions the test looks for are told apart from other files' by it.
const database = schema
const databaseUrl = `${testDatabaseUrl.slice(0, testDatabaseUrl.lastIndexOf("/"))}/${database}`

// The test database's client alone, without migrating anything there: it creates and drops ours.
const admin = ManagedRuntime.make(clientLayer({ url: testDatabaseUrl, schema: "public", poolSize: 1 }) as Layer.Layer<any, unknown>)
const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: databaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
const query = <A extends object>(text: string, params: ReadonlyArray<unknown> = []) =>
  look(Effect.flatMap(SqlClient, (sql) => sql.unsafe<A>(text, params as Array<any>)))
const applied = async () => Number((await query<{ n: string }>("SELECT count(*) AS n FROM event_log WHERE organization_id = $1", [org]))[0]!.n)

/** Sessions of the schema's consumers inside a transaction that has waited for its client at least `ms`. */
const stalledTransactions = async (ms: number) =>
  (await query<{ pid: number }>(
    `SELECT pid FROM pg_stat_activity
     WHERE datname = current_database() AND pid <> pg_backend_pid()
       AND state = 'idle in transaction' AND state_change < now() - make_interval(secs => $1::float8 / 1000)`,
    [ms]
  )).map((row) => row.pid)

const replicas: Array<Replica> = []
const start = async (name: string) =>
  startReplica(name, {
    ...testEnv(vhost, {
      // The broker gives up on a silent connection after about two heartbeats.
      AMQP_HEARTBEAT_SECONDS: "1",
      DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: "2000",
      CONSUMER_ROLE_CHECK_INTERVAL: "200",
      OUTBOX_RELAY_LOCK_INTERVAL: "200"
    }),
    DATABASE_URL: databaseUrl,
    DATABASE_SCHEMA: schema,
    HTTP_PORT: String(await freePort()),
    LOG_LEVEL: "info"
  }, replicas)

/** `count` returns (`returnEvent`) at once, numbered from `from`, each with an event id of its own. */
const publishReturns = (client: TestClient, from: number, count: number) =>
  Promise.all(Array.from({ length: count }, (_, i) => from + i).map((k) =>
    client.publish("order_events", "return.received", returnEvent(org, k, `evt-frozen-${k}`))))

beforeAll(async () => {
  await admin.runPromise(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`CREATE DATABASE ${database}`)))
  await createVhost(vhost)
  await look(Effect.flatMap(Warehouses, (w) => w.upsert({ organization_id: org, warehouse_id: "wh_1", name: "Main", active: true })))
})

afterAll(async () => {
  killReplicas(replicas)
  await inspect.dispose()
  await admin.runPromise(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`))).catch(() => undefined)
  await admin.dispose()
  await deleteVhost(vhost)
})

describe("a replica frozen inside a unit of work", () => {
  it("does not stop the standby: its transaction is ended and every event is applied once", async () => {
    const active = await start("a")
    const standby = await start("b")
    const client = await TestClient.connect(vhost)
    let published = 0
    // A steady stream of events (about 2,000 a second, at most 30,000 in all: a flood would have
    // the broker block the publisher), so the active replica is mostly inside a unit of work.
    let feeding = true
    const feeder = (async () => {
      while (feeding && published < 30_000) {
        await publishReturns(client, published, 50)
        published += 50
        await new Promise((r) => setTimeout(r, 20))
      }
    })()
    try {
      // Freeze the active replica until it is caught inside a transaction (its session idle in
      // it, waiting for the frozen client); otherwise let it go on and try again.
      await eventually("the active replica at work", async () => (await applied()) > 0, 30_000)
      let frozen: ReadonlyArray<number> = []
      for (let attempt = 0; attempt < 100 && frozen.length === 0; attempt++) {
        active.child.kill("SIGSTOP")
        await new Promise((r) => setTimeout(r, 300))
        frozen = await stalledTransactions(250)
        if (frozen.length > 0) break
        active.child.kill("SIGCONT")
        await new Promise((r) => setTimeout(r, 30 + Math.random() * 120))
      }
      console.info(`frozen-replica: caught inside a transaction (sessions ${frozen.join(", ")}) after ${published} events published`)
      expect(frozen.length).toBeGreaterThan(0)
      // Work keeps arriving while it is frozen.
      await new Promise((r) => setTimeout(r, 1_000))
      feeding = false
      await feeder

      console.info(`frozen-replica: ${published} published, ${await applied()} applied`)
      // The standby applies everything, the frozen replica's unacked messages included.
      await eventually("every event applied by the standby", async () => (await applied()) === published, 60_000, 200)
      // PostgreSQL ended the frozen transaction's session, which released its locks.
      const alive = await query<{ pid: number }>("SELECT pid FROM pg_stat_activity WHERE pid = ANY($1::int[])", [frozen])
      expect(alive).toEqual([])
    } finally {
      feeding = false
      await feeder.catch(() => undefined)
      await client.close()
      active.child.kill("SIGCONT")
    }

    // Once it runs again, the frozen replica finds its connections gone and goes on or stands by;
    // nothing it does then applies an event a second time.
    await new Promise((r) => setTimeout(r, 3_000))
    expect(await applied()).toBe(published)
    const movements = Number((await query<{ n: string }>("SELECT count(*) AS n FROM stock_movements WHERE organization_id = $1", [org]))[0]!.n)
    expect(movements).toBe(published)
    expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])

    for (const replica of [active, standby]) expect(await stopReplica(replica)).toBe(0)
  }, 180_000)
})
