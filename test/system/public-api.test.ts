import { assert, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import {
  adjustStock,
  inboundEventTypes,
  MemoryStores,
  processDelivery,
  ReservationScheduler,
  Stock,
  UnitOfWork,
  Warehouses
} from "inventory-event-consumer"

/** The README's "Using the memory stores in your own tests", through the package's own entry. */
const TestInventory = ReservationScheduler.layer({ sweepInterval: "1 minute", sweepBatch: 500 }).pipe(
  Layer.provideMerge(MemoryStores.layer)
)

it.effect("the public API runs an event through the pipeline on the memory stores", () =>
  Effect.gen(function*() {
    yield* (yield* Warehouses).upsert({ organization_id: "org_1", warehouse_id: "wh_1", name: "Main", active: true })
    yield* (yield* UnitOfWork).transaction(
      adjustStock({ organization_id: "org_1", variant_id: "var_1", warehouse_id: "wh_1" }, 5, "available", "opening", "ref-1")
    )
    const body = new TextEncoder().encode(JSON.stringify({
      event: "order.placed",
      version: "1.0",
      timestamp: "2026-01-01T00:00:00Z",
      organization_id: "org_1",
      data: { order_id: "order_1", items: [{ variant_id: "var_1", quantity: 2 }] }
    }))
    const outcome = yield* processDelivery({ body, deliveryCount: 1, queue: "inventory_order_consumer", accepts: inboundEventTypes })
    assert.strictEqual(outcome._tag, "Ack")
    const [row] = yield* (yield* Stock).list({ organization_id: "org_1" })
    assert.deepInclude(row!, { available: 3, reserved: 2, total: 5 })
  }).pipe(Effect.orDie, Effect.provide(TestInventory)))
