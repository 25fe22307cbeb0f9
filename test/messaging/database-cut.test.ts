import { spawn } from "node:child_process"
import { resolve } from "node:path"
import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { clientLayer } from "../../src/stores/sql/client.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Reconciliation, Warehouses } from "../../src/stores/services.ts"
import { available, makePartition, type Partition } from "../support/partition.ts"
import { createVhost, deleteVhost, eventually, freePort, returnEvent, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { killReplicas, type Replica, startReplica, stopReplica } from "../support/replicas.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * The consuming replica's path to PostgreSQL dies without a word (a switch, a firewall, a cable:
 * no reset, no error), while its broker connection stays up. The broker has no reason to move the
 * queue: under single active consumer the standby gets nothing for as long as the consuming
 * replica waits on the database. Its units of work wait for answers that never come: until TCP
 * gives up retransmitting (about 15 minutes) or, when its request was acknowledged, for ever.
 *
 * So a unit of work waits for the database `DATABASE_RESPONSE_TIMEOUT` at most. Past it the unit
 * fails as an outage (its messages back to the queue) and consumption pauses until the database
 * answers: the subscription is cancelled, and the broker hands the queue and its unacked messages
 * to the standby, which applies them, each once. The relay's statements and lock checks wait as
 * long at most, so the relay stands down too. When the path comes back, the cut replica resumes
 * (as the standby now). A connection that sends nothing has no answer to wait for: TCP keepalive
 * finds it dead.
 */

const vhost = uniqueVhost("database_cut")
const schema = uniqueSchema("mq_database_cut")
const org = `org-cut-${process.pid}`
const database = schema
const databaseUrl = (host: string) => `postgres://postgres@${host}:5432/${database}`

const admin = ManagedRuntime.make(clientLayer({ url: testDatabaseUrl, schema: "public", poolSize: 1 }) as Layer.Layer<any, unknown>)
const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: databaseUrl("127.0.0.1"), schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
const count = async (table: string, where = "true") =>
  Number((await look(Effect.flatMap(SqlClient, (sql) =>
    sql.unsafe<{ n: string }>(`SELECT count(*) AS n FROM ${table} WHERE organization_id = $1 AND (${where})`, [org]))))[0]!.n)

const replicas: Array<Replica> = []
let partition: Partition | undefined

const settings = async (databaseHost: string, brokerHost: string) => ({
  ...testEnv(vhost, {
    AMQP_URL: `amqp://guest:guest@${brokerHost}:5672/${encodeURIComponent(vhost)}`,
    DATABASE_RESPONSE_TIMEOUT: "2000",
    DATABASE_IDLE_IN_TRANSACTION_TIMEOUT: "2000",
    CONSUMER_ROLE_CHECK_INTERVAL: "200",
    OUTBOX_RELAY_LOCK_INTERVAL: "200"
  }),
  DATABASE_URL: databaseUrl(databaseHost),
  DATABASE_SCHEMA: schema,
  HTTP_PORT: String(await freePort()),
  LOG_LEVEL: "info"
})

beforeAll(async () => {
  if (!available()) {
    if (process.env["CI"] !== undefined) throw new Error("test/messaging/database-cut.test.ts needs root for ip netns and veth links")
    return
  }
  await admin.runPromise(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`CREATE DATABASE ${database}`)))
  await createVhost(vhost)
  await look(Effect.flatMap(Warehouses, (w) => w.upsert({ organization_id: org, warehouse_id: "wh_1", name: "Main", active: true })))
  partition = await makePartition()
})

afterAll(async () => {
  killReplicas(replicas)
  await partition?.close()
  await inspect.dispose()
  await admin.runPromise(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP DATABASE IF EXISTS ${database} WITH (FORCE)`))).catch(() => undefined)
  await admin.dispose()
  await deleteVhost(vhost)
})

// Network namespaces need root, as CI has (where it fails without them); elsewhere it is skipped.
describe.skipIf(!available() && process.env["CI"] === undefined)("the consuming replica cut off from PostgreSQL", () => {
  it("lets go of the queue: the standby applies every event once, and the cut replica resumes once the path is back", async () => {
    const net = partition!
    // Started first, so the broker makes it the single active consumer.
    const cutSettings = await settings(net.databaseHost, net.brokerHost)
    const cut = await startReplica("cut", cutSettings, replicas, net.inside)
    const cutMetrics = `http://${net.insideHost}:${cutSettings.HTTP_PORT}/metrics`
    const standbySettings = await settings("127.0.0.1", "127.0.0.1")
    const standby = await startReplica("standby", standbySettings, replicas)
    const relayActive = async (metrics: string) => /^inventory_relay_active(\{[^}]*\})? 1$/m.test(await (await fetch(metrics)).text())

    const client = await TestClient.connect(vhost)
    let published = 0
    let feeding = true
    const feeder = (async () => {
      while (feeding && published < 30_000) {
        await Promise.all(Array.from({ length: 50 }, (_, i) => published + i).map((k) =>
          client.publish("order_events", "return.received", returnEvent(org, k, `evt-cut-${k}`))))
        published += 50
        await new Promise((r) => setTimeout(r, 20))
      }
    })()
    try {
      await eventually("the first replica at work", async () => (await count("event_log")) > 0, 30_000)
      // It is the one consuming (the first to subscribe), not the standby.
      expect(await (await fetch(cutMetrics)).text()).toMatch(/inventory_events_consumed_total\{[^}]*\} [1-9]/)
      const relayWasCut = await relayActive(cutMetrics)
      net.cutDatabase()
      const cutAt = Date.now()
      // Work keeps arriving after the cut.
      await new Promise((r) => setTimeout(r, 1_000))
      feeding = false
      await feeder
      console.info(`database-cut: ${published} published, ${await count("event_log")} applied at the cut; the cut replica ${relayWasCut ? "held" : "did not hold"} the relay`)

      await eventually("every event applied by the standby", async () => (await count("event_log")) === published, 60_000, 200)
      console.info(`database-cut: every event applied ${Date.now() - cutAt} ms after the cut`)
      expect(cut.output()).toContain("database unavailable: consumption paused")
      // The relay too: whichever replica held it at the cut, the standby publishes every
      // announcement, and the cut replica no longer counts itself active (its lock checks wait
      // the response timeout at most, not TCP's).
      await eventually("every announcement sent", async () =>
        (await count("outbox")) === published && (await count("outbox", "sent_at IS NULL")) === 0, 60_000, 200)
      await eventually("the relay on the standby alone", async () =>
        (await relayActive(`http://127.0.0.1:${standbySettings.HTTP_PORT}/metrics`)) && !(await relayActive(cutMetrics)), 60_000, 200)
    } catch (error) {
      // What each replica said is the only account of why.
      for (const replica of [cut, standby]) console.info(`database-cut: replica ${replica.name} said\n${replica.output().slice(-8000)}`)
      throw error
    } finally {
      feeding = false
      await feeder.catch(() => undefined)
      await client.close()
      net.restoreDatabase()
    }

    // Back on its path, the cut replica resumes, finds the queue with the standby and stands by.
    await eventually("the cut replica resumed", () => cut.output().includes("database answers again: consumption resumed"), 60_000)
    expect(await count("event_log")).toBe(published)
    expect(await count("stock_movements")).toBe(published)
    expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])

    for (const replica of [cut, standby]) expect(await stopReplica(replica)).toBe(0)
  }, 240_000)

  it("finds an idle connection on the dead path dead by itself: TCP keepalive after the response timeout", async () => {
    // A connection that sends nothing (the relay's listener, a pooled connection between units)
    // gets no answer to miss; without keepalive it would stay open on a dead path for ever.
    const net = partition!
    const [command, args] = net.inside(resolve("node_modules/.bin/node"), ["test/messaging/clients/idle-listener.ts", databaseUrl(net.databaseHost), "1000"])
    const listener = spawn(command, [...args], { stdio: ["ignore", "pipe", "pipe"] })
    let output = ""
    listener.stdout.on("data", (d) => (output += d))
    listener.stderr.on("data", (d) => (output += d))
    try {
      await eventually("the listener listening", () => output.includes("listening"), 30_000)
      net.cutDatabase()
      // 1 s idle, then probes a second apart: ten unanswered, by the driver's account.
      await eventually("the listener failed", () => output.includes("listener failed"), 60_000)
      console.info(`database-cut: ${output.trim().split("\n").at(-1)}`)
    } finally {
      net.restoreDatabase()
      listener.kill("SIGKILL")
    }
  }, 120_000)
})
