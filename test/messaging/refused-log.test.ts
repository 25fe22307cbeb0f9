import { assert, it } from "@effect/vitest"
import { Context, Effect, Logger, Metric, References } from "effect"
import { finishDelivery, startDelivery } from "../../src/messaging/telemetry.ts"
import { eventErrors } from "../../src/observability/metrics.ts"
import { peek } from "../../src/pipeline/decode.ts"

/**
 * A message refused before it decoded (ValidationError) is logged and counted under the type
 * and organization its dead-letter record names (`peek`), not as "unknown"/null; a type no
 * consumer knows stays "unknown" in the metric, so a body cannot mint label values.
 */
const lines: Array<{ readonly message: unknown; readonly annotations: Record<string, unknown> }> = []
const capture = Logger.layer([Logger.make((options) => {
  lines.push({
    message: options.message,
    annotations: { ...Context.getOrElse(options.fiber.context, References.CurrentLogAnnotations, () => ({})) }
  })
})])

const refuse = (body: string) =>
  Effect.gen(function*() {
    const trace = yield* startDelivery({ queue: "q", exchange: "order_events", routingKey: "order.placed", headers: {} })
    yield* finishDelivery(
      trace,
      { _tag: "DeadLetter", decoded: null, failure: { errorType: "ValidationError", message: "Invalid order.placed: items is missing" } },
      peek(new TextEncoder().encode(body))
    )
  })

const errorsOf = (eventType: string) =>
  Effect.map(Metric.value(Metric.withAttributes(eventErrors, { event_type: eventType, error_type: "ValidationError" })), (s) => s.count)

it.effect("names the event type and organization the body carried", () =>
  Effect.gen(function*() {
    lines.length = 0
    const before = yield* errorsOf("order.placed")
    yield* refuse(JSON.stringify({ event: "order.placed", organization_id: "org_123", event_id: "evt-9" }))
    assert.strictEqual(lines.length, 1)
    assert.strictEqual(lines[0]!.annotations["event_type"], "order.placed")
    assert.strictEqual(lines[0]!.annotations["organization_id"], "org_123")
    assert.strictEqual(lines[0]!.annotations["event_id"], "evt-9")
    assert.strictEqual(lines[0]!.annotations["source"], "orders")
    assert.strictEqual((yield* errorsOf("order.placed")) - before, 1)
  }).pipe(Effect.provide(capture)))

it.effect("an unknown type is logged as sent but counted as unknown", () =>
  Effect.gen(function*() {
    lines.length = 0
    const before = yield* errorsOf("unknown")
    yield* refuse(JSON.stringify({ event: "made.up", organization_id: "org_123" }))
    assert.strictEqual(lines[0]!.annotations["event_type"], "made.up")
    assert.strictEqual(lines[0]!.annotations["organization_id"], "org_123")
    assert.strictEqual((yield* errorsOf("unknown")) - before, 1)
    assert.strictEqual(yield* errorsOf("made.up"), 0)
  }).pipe(Effect.provide(capture)))

it.effect("a body with nothing to read stays unknown and null", () =>
  Effect.gen(function*() {
    lines.length = 0
    yield* refuse("{definitely not json")
    assert.strictEqual(lines[0]!.annotations["event_type"], "unknown")
    assert.strictEqual(lines[0]!.annotations["organization_id"], null)
  }).pipe(Effect.provide(capture)))
