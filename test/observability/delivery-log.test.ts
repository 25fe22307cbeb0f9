import { assert, it } from "@effect/vitest"
import { Context, Effect, Layer, Logger, References, Tracer } from "effect"
import type { Decoded } from "../../src/pipeline/decode.ts"
import { finishDelivery, startDelivery } from "../../src/messaging/telemetry.ts"

/**
 * `finishDelivery` writes one line per event (SPEC 7) inside the message's span, at the level
 * its outcome gives it: debug for a plain success (issue 18: at info, the default, a line per
 * message cost a third of the message path's CPU), info for a duplicate, error for a dead
 * letter, warn for a retry. Since it skips building that line when `LOG_LEVEL` filters it out
 * (issue 8), this pins what must not change.
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

const deliver = (outcome: "ack" | "duplicate" | "dead_letter") =>
  Effect.gen(function*() {
    const trace = yield* startDelivery({ queue: "q", exchange: "order_events", routingKey: "order.placed", headers: {} })
    yield* finishDelivery(trace, outcome === "ack"
      ? { _tag: "Ack", decoded }
      : outcome === "duplicate"
      ? { _tag: "Duplicate", decoded }
      : { _tag: "DeadLetter", decoded, failure: { errorType: "InsufficientStock", message: "not enough" } })
    return trace.span.spanId
  })

it.effect("at debug each event gets its line, in its message's span", () =>
  Effect.gen(function*() {
    lines.length = 0
    const spanId = yield* deliver("ack")
    assert.strictEqual(lines.length, 1)
    assert.deepStrictEqual(lines[0]!.message, ["event consumed"])
    assert.strictEqual(lines[0]!.level, "Debug")
    assert.strictEqual(lines[0]!.annotations["event_id"], "evt-1")
    assert.strictEqual(lines[0]!.annotations["source"], "orders")
    assert.strictEqual(lines[0]!.annotations["outcome"], "ack")
    assert.strictEqual(lines[0]!.spanId, spanId)
  }).pipe(Effect.provide(Layer.mergeAll(capture, Layer.succeed(References.MinimumLogLevel, "Debug")))))

it.effect("at info a plain success is not logged; a duplicate and a failure are, in their spans", () =>
  Effect.gen(function*() {
    lines.length = 0
    yield* deliver("ack")
    assert.strictEqual(lines.length, 0)
    const duplicate = yield* deliver("duplicate")
    assert.strictEqual(lines.length, 1)
    assert.strictEqual(lines[0]!.level, "Info")
    assert.strictEqual(lines[0]!.annotations["outcome"], "duplicate")
    assert.strictEqual(lines[0]!.annotations["event_id"], "evt-1")
    assert.strictEqual(lines[0]!.spanId, duplicate)
    const failed = yield* deliver("dead_letter")
    assert.strictEqual(lines.length, 2)
    assert.strictEqual(lines[1]!.level, "Error")
    assert.strictEqual(lines[1]!.spanId, failed)
  }).pipe(Effect.provide(capture)))

it.effect("at warn the line of a consumed or duplicate event is skipped, a failure's is written", () =>
  Effect.gen(function*() {
    lines.length = 0
    yield* deliver("ack")
    yield* deliver("duplicate")
    assert.strictEqual(lines.length, 0)
    yield* deliver("dead_letter")
    assert.strictEqual(lines.length, 1)
    assert.strictEqual(lines[0]!.level, "Error")
    assert.strictEqual(lines[0]!.annotations["error_type"], "InsufficientStock")
  }).pipe(Effect.provide(Layer.mergeAll(capture, Layer.succeed(References.MinimumLogLevel, "Warn")))))
