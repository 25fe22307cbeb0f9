import { execFileSync } from "node:child_process"
import { readdirSync } from "node:fs"
import { Effect, Metric } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { consumerPaused } from "../../src/observability/metrics.ts"
import { FailedEvents, Movements } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, queuesSettled, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { sqlLayer } from "../support/sql.ts"

/**
 * The circuit breaker of SPEC 5: PostgreSQL stops for longer than the in-process retry schedule.
 * Nothing goes to the DLQ; consumption pauses and resumes by itself once the database is back,
 * and every message is applied once. Stops the shared PostgreSQL, so it runs alone (the
 * `isolated` vitest project, after every other file).
 */

const cluster = readdirSync("/etc/postgresql")[0]!
const pgctl = (action: "start" | "stop") =>
  execFileSync("pg_ctlcluster", ["--skip-systemctl-redirect", cluster, "main", action], { stdio: "ignore", timeout: 60_000 })
const startPostgres = () => {
  try {
    pgctl("start")
  } catch {
    // Already running.
  }
}

const vhost = uniqueVhost("pgoutage")
let runtime: ReturnType<typeof startRuntime<any, any>>
const run = <A, E>(effect: Effect.Effect<A, E, any>) => runtime.runPromise(effect)

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(sqlLayer("mq_pgoutage"), testEnv(vhost, { RETRY_BASE_DELAY_MS: "10" }))
  await runtime.runPromise(Effect.void)
})

afterAll(async () => {
  startPostgres()
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("PostgreSQL outage", () => {
  it("pauses instead of dead-lettering, and applies everything once the database is back", async () => {
    const org = freshOrg()
    await run(addWarehouse(org, "wh_1"))
    const client = await TestClient.connect(vhost)
    const publish = (k: number) =>
      client.publish("order_events", "return.received", {
        event: "return.received",
        version: "1.0",
        timestamp: "2026-01-01T00:00:00Z",
        organization_id: org,
        event_id: freshId("evt"),
        data: {
          order_id: `order-${k}`,
          return_id: `ret-${k}`,
          warehouse_id: "wh_1",
          returned_items: [{ variant_id: `v-${k % 4}`, quantity: 1, condition: "good" }]
        }
      })
    const applied = () => run(Effect.flatMap(Movements, (m) => m.list({ organization_id: org }))).then((rows) => rows.length)
    const paused = () => run(Metric.value(Metric.withAttributes(consumerPaused, { queue: "inventory_order_consumer" }))).then((s) => s.value)

    try {
      for (let k = 0; k < 5; k++) await publish(k)
      await eventually("first messages applied", async () => (await applied()) === 5)

      pgctl("stop")
      for (let k = 5; k < 25; k++) await publish(k)
      // The retry schedule (10, 20, 40 ms) is long spent once the consumer reports itself paused.
      await eventually("consumer paused", async () => (await paused()) === 1)
      // Paused: the messages wait in the queue (requeued), none in the DLQ.
      await eventually("messages back in the queue", async () => (await client.depth("inventory_order_consumer")) > 0)
      expect(await client.depth("inventory_failed_events")).toBe(0)
    } finally {
      startPostgres()
    }

    await eventually("every message applied after the outage", async () => (await applied()) === 25, 90_000)
    await eventually("consumer resumed", async () => (await paused()) === 0)
    await eventually("queue settled", () => queuesSettled(vhost, ["inventory_order_consumer"]))
    expect(await client.depth("inventory_failed_events")).toBe(0)
    expect((await run(Effect.flatMap(FailedEvents, (f) => f.list({})))).filter((r) => r.organization_id === org)).toEqual([])
    await client.close()
  })
})
