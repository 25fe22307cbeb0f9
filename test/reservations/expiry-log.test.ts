import { assert, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, References } from "effect"
import { TestClock } from "effect/testing"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { addWarehouse, freshOrg, noRetries, putStock, send } from "../support/events.ts"

/** A reservation that expires writes a log line naming it (SPEC 7: every state change is visible). */
const lines: Array<{ readonly message: unknown; readonly annotations: Record<string, unknown> }> = []
const capture = Logger.layer([Logger.make((options) => {
  lines.push({
    message: options.message,
    annotations: { ...Context.getOrElse(options.fiber.context, References.CurrentLogAnnotations, () => ({})) }
  })
})])

const timersOnly = Scheduler.layer({ sweepInterval: "1000 days", sweepBatch: 100 }).pipe(
  Layer.provideMerge(MemoryStores.layer),
  Layer.provide(capture)
)

it.effect("a reservation expired by its timer is logged with its organization and id", () =>
  noRetries(Effect.gen(function*() {
    const org = freshOrg()
    yield* addWarehouse(org, "w1").pipe(Effect.orDie)
    yield* putStock(org, "v1", "w1", 10)
    yield* send(org, "order.placed", { order_id: "o1", items: [{ variant_id: "v1", quantity: 1 }], reservation_ttl_minutes: 1 })
    lines.length = 0
    yield* TestClock.adjust("59 seconds")
    assert.isFalse(lines.some((line) => String(line.message).includes("reservation expired")))
    yield* TestClock.adjust("1 second")
    const expired = lines.filter((line) => String(line.message).includes("reservation expired"))
    assert.strictEqual(expired.length, 1)
    assert.strictEqual(expired[0]!.annotations["organization_id"], org)
    assert.isString(expired[0]!.annotations["reservation_id"])
  })).pipe(Effect.provide(Layer.merge(timersOnly, capture))))
