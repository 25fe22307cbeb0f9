import { spawn } from "node:child_process"
import { resolve } from "node:path"
import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Movements, Reconciliation, Warehouses } from "../../src/stores/services.ts"
import { createVhost, publishReturns, TestClient, deleteVhost, eventually, startRuntime, testEnv, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"

/**
 * Graceful shutdown (SPEC 5): `node src/main.ts` receives SIGTERM while a few hundred messages
 * are queued. It exits 0, and every message is either applied (and acked) or still in the
 * queue: a second consumer then applies exactly the rest, nothing twice, no book out of balance.
 */

const vhost = uniqueVhost("sigterm")
const schema = uniqueSchema("mq_sigterm")
const org = `org-sigterm-${process.pid}`
const total = 300

// The test's own view of the database (migrates the schema; dropped at the end).
const inspect = ManagedRuntime.make(
  SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>
)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
const applied = () => look(Effect.flatMap(Movements, (m) => m.list({ organization_id: org }))).then((rows) => rows.length)

beforeAll(async () => {
  await createVhost(vhost)
  await look(Effect.flatMap(Warehouses, (w) => w.upsert({ organization_id: org, warehouse_id: "wh_1", name: "Main", active: true })))
})

afterAll(async () => {
  await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await inspect.dispose()
  await deleteVhost(vhost)
})

describe("SIGTERM under load", () => {
  it("exits 0 with every message either applied and acked or still queued", async () => {
    const child = spawn(resolve("node_modules/.bin/node"), ["src/main.ts"], {
      env: {
        ...process.env,
        AMQP_URL: vhostUrl(vhost),
        DATABASE_URL: testDatabaseUrl,
        DATABASE_SCHEMA: schema,
        SHUTDOWN_TIMEOUT_MS: "10000",
        ORDER_PREFETCH: "20"
      },
      stdio: ["ignore", "pipe", "pipe"]
    })
    let output = ""
    child.stdout.on("data", (d) => (output += d))
    child.stderr.on("data", (d) => (output += d))
    const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))

    try {
      await eventually("consumer started", () => output.includes("consumer started"))
      await publishReturns(vhost, org, total)
      await eventually("work under way", async () => (await applied()) > 0)
      child.kill("SIGTERM")
      expect(await exited).toBe(0)
    } finally {
      if (child.exitCode === null) child.kill("SIGKILL")
    }

    const done = await applied()
    console.info(`sigterm: applied ${done} before exit`)
    const probe = await TestClient.connect(vhost)
    const left = await probe.depth("inventory_order_consumer")
    await probe.close()
    // Nothing lost: what was not applied went back to the queue (no consumer holds it now).
    expect(done + left).toBeGreaterThanOrEqual(total)
    // Nothing half-applied: every row balances against its movements and reservations.
    expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])

    // A second consumer takes the rest: exactly `total` applied in the end, none twice.
    const second = startRuntime(
      Scheduler.layer({ sweepInterval: "60 seconds", sweepBatch: 500 }).pipe(
        Layer.provideMerge(SqlStores.layerWith({ url: testDatabaseUrl, schema, poolSize: 4 }))
      ),
      testEnv(vhost)
    )
    try {
      await second.runPromise(Effect.void)
      await eventually("the rest applied", async () => (await applied()) === total, 60_000)
      await eventually("queue drained", async () => {
        const c = await TestClient.connect(vhost)
        try {
          return (await c.depth("inventory_order_consumer")) === 0
        } finally {
          await c.close()
        }
      })
      expect(await applied()).toBe(total)
      expect(await look(Effect.flatMap(Reconciliation, (r) => r.check(org)))).toEqual([])
    } finally {
      await second.dispose()
    }
  })
})
