import { assert, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, References, Tracer } from "effect"
import type { Decoded } from "../../src/pipeline/decode.ts"
import { finishDelivery, startDelivery } from "../../src/messaging/telemetry.ts"

/**
 * `finishDelivery` writes one line per event (SPEC 7) inside the message's span. Since it skips
 * building that line when `LOG_LEVEL` filters it out (issue 8), this pins what must not change:
 * at info every event is logged, at warn only failures, at the level their fate gives them.
 */
interface Line {
  readonly level: string
  readonly message: unknown
  readonly annotations: Record<string, unknown>
  readonly spanId: string | undefined
}
const lines: Array<Line> = []
const capture = Logger.layer([Logger.make((options) => {
  const span = Context.getOption(options.fiber.context, Tracer.ParentSpan)
  lines.push({
    level: options.logLevel,
    message: options.message,
    annotations: { ...Context.getOrElse(options.fiber.context, References.CurrentLogAnnotations, () => ({})) },
    spanId: span._tag === "Some" ? span.value.spanId : undefined
  })
})])

const decoded = {
  event: { event: "order.placed", organization_id: "org-1" },
  eventId: "evt-1"
} as unknown as Decoded

const deliver = (outcome: "ack" | "dead_letter") =>
  Effect.gen(function*() {
    const trace = yield* startDelivery({ queue: "q", exchange: "order_events", routingKey: "order.placed", headers: {} })
    yield* finishDelivery(trace, outcome === "ack"
      ? { _tag: "Ack", decoded }
      : { _tag: "DeadLetter", decoded, failure: { errorType: "InsufficientStock", message: "not enough" } })
    return trace.span.spanId
  })

it.effect("at info each event gets its line, in its message's span", () =>
  Effect.gen(function*() {
    lines.length = 0
    const spanId = yield* deliver("ack")
    assert.strictEqual(lines.length, 1)
    assert.deepStrictEqual(lines[0]!.message, ["event consumed"])
    assert.strictEqual(lines[0]!.level, "Info")
    assert.strictEqual(lines[0]!.annotations["event_id"], "evt-1")
    assert.strictEqual(lines[0]!.annotations["source"], "orders")
    assert.strictEqual(lines[0]!.spanId, spanId)
  }).pipe(Effect.provide(capture)))

it.effect("at warn the line of a consumed event is skipped, a failure's is written", () =>
  Effect.gen(function*() {
    lines.length = 0
    yield* deliver("ack")
    assert.strictEqual(lines.length, 0)
    yield* deliver("dead_letter")
    assert.strictEqual(lines.length, 1)
    assert.strictEqual(lines[0]!.level, "Error")
    assert.strictEqual(lines[0]!.annotations["error_type"], "InsufficientStock")
  }).pipe(Effect.provide(Layer.mergeAll(capture, Layer.succeed(References.MinimumLogLevel, "Warn")))))
