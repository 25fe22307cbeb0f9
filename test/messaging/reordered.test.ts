import { Effect } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { FailedEvents } from "../../src/stores/services.ts"
import { addWarehouse, freshId, freshOrg, putStock, quantities, reservationsOf } from "../support/events.ts"
import { createVhost, declareTestTopology, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import { Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"

/**
 * A key's events delivered out of order (a requeue, a second consumer, a publisher that raced
 * itself): `order.confirmed` lands in the lane before its `order.placed`. The confirm steps
 * behind the placed once instead of dragging it back to the queue with it, so both apply and
 * nothing is dead-lettered.
 */

const vhost = uniqueVhost("reordered")
const env = testEnv(vhost, { MAX_DELIVERIES: "3" })
const schema = uniqueSchema("mq_reordered")
const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
let runtime: ReturnType<typeof startRuntime<any, any>>

beforeAll(async () => {
  await createVhost(vhost)
  // Queues first, so the events wait there together before any consumer runs.
  await declareTestTopology(vhost, env)
})

afterAll(async () => {
  await runtime?.dispose()
  await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await inspect.dispose()
  await deleteVhost(vhost)
})

describe("events of one key delivered out of order", () => {
  it("applies a confirm that arrived before its placed, without dead-lettering it", async () => {
    const org = freshOrg()
    await look(Effect.gen(function*() {
      yield* addWarehouse(org, "wh_1").pipe(Effect.orDie)
      yield* putStock(org, "v1", "wh_1", 5)
    }))
    const client = await TestClient.connect(vhost)
    const envelope = (event: string, data: unknown) => ({
      event, version: "1.0", timestamp: "2026-01-01T00:00:00Z", organization_id: org, event_id: freshId("evt"), data
    })
    await client.publish("order_events", "order.confirmed", envelope("order.confirmed", { order_id: "late-order", payment_confirmed: true }))
    await client.publish("order_events", "order.placed", envelope("order.placed", {
      order_id: "late-order", items: [{ variant_id: "v1", quantity: 2 }]
    }))
    await client.close()

    runtime = startRuntime(
      Scheduler.layer({ sweepInterval: "1 hour", sweepBatch: 100 }).pipe(
        Layer.provideMerge(SqlStores.layerWith({ url: testDatabaseUrl, schema, poolSize: 4 }))
      ),
      env
    )
    await runtime.runPromise(Effect.void)
    const run = look
    const reservations = await eventually("reservation confirmed", async () => {
      const rs = await run(reservationsOf(org, "late-order"))
      return rs.length > 0 && rs[0]!.status === "confirmed" ? rs : undefined
    })
    expect(reservations.map((r) => r.status)).toEqual(["confirmed"])
    expect(await run(quantities(org, "v1", "wh_1"))).toEqual({ total: 5, available: 3, reserved: 2, damaged: 0 })
    expect((await run(Effect.flatMap(FailedEvents, (f) => f.list({})))).filter((f) => f.organization_id === org)).toEqual([])
  })
})
