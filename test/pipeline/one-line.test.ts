import { assert, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import { inboundEventTypes } from "../../src/domain/events.ts"
import { processDelivery } from "../../src/pipeline/pipeline.ts"
import * as Scheduler from "../../src/reservations/scheduler.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"

const stores = Scheduler.layer({ sweepInterval: "1000 days", sweepBatch: 100 }).pipe(Layer.provideMerge(MemoryStores.layer))

/**
 * A refusal's message becomes the `x-error-message` header and a log line's message: one line,
 * though a schema's failure text spans several ("Missing key\n  at [...]").
 */
it.effect("a schema failure's message is one line, its path kept", () =>
  Effect.gen(function*() {
    const body = new TextEncoder().encode(JSON.stringify({ event: "order.placed", organization_id: "org_123", order_id: "o1" }))
    const outcome = yield* processDelivery({ body, deliveryCount: 1, queue: "q", accepts: inboundEventTypes })
    assert.strictEqual(outcome._tag, "DeadLetter")
    if (outcome._tag !== "DeadLetter") return
    assert.strictEqual(outcome.failure.errorType, "ValidationError")
    assert.notInclude(outcome.failure.message, "\n")
    assert.match(outcome.failure.message, /^Invalid order\.placed: Missing key at \["/)
  }).pipe(Effect.provide(stores)))
