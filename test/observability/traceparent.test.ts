import { Effect, Layer, Option, Tracer } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { startDelivery } from "../../src/messaging/telemetry.ts"
import { parseTraceparent } from "../../src/observability/tracing.ts"
import { sqlLayer } from "../support/sql.ts"
import { freshId, freshOrg } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, startRuntime, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * Issue 15 item 7: a `traceparent` header sent as a byte array (pika's `bytes`, which amqplib
 * hands over as a Buffer) parents the consumer span as a string one does.
 */

const traceId = "4bf92f3577b34da6a3ce929d0e0e4736"
const spanId = "00f067aa0ba902b7"
const header = `00-${traceId}-${spanId}-01`

const parentOf = (span: Tracer.Span) => Option.getOrUndefined(span.parent)

describe("parseTraceparent", () => {
  it("reads a string, a Buffer and a Uint8Array alike", () => {
    for (const value of [header, Buffer.from(header), new TextEncoder().encode(header), ` ${header.toUpperCase()} `]) {
      const parent = Option.getOrUndefined(parseTraceparent(value))
      expect(parent).toMatchObject({ _tag: "ExternalSpan", traceId, spanId, sampled: true })
    }
    expect(Option.getOrUndefined(parseTraceparent(`00-${traceId}-${spanId}-00`))?.sampled).toBe(false)
  })

  it("ignores what is not a well-formed version 00 traceparent", () => {
    const bad: ReadonlyArray<unknown> = [
      undefined,
      42,
      { traceparent: header },
      Buffer.from([0xff, 0xfe]),
      Buffer.from(header + "x".repeat(300)),
      `01-${traceId}-${spanId}-01`,
      `00-${"0".repeat(32)}-${spanId}-01`,
      `00-${traceId}-${"0".repeat(16)}-01`,
      `00-${traceId}-${spanId}`,
      `00-${traceId.slice(1)}-${spanId}-01`
    ]
    for (const value of bad) expect(Option.isNone(parseTraceparent(value)), String(value)).toBe(true)
  })

  it("makes a byte-array traceparent the consumer span's parent", async () => {
    const trace = await Effect.runPromise(
      startDelivery({ queue: "q", exchange: "x", routingKey: "r", headers: { traceparent: Buffer.from(header) } })
    )
    expect(parentOf(trace.span)).toMatchObject({ traceId, spanId })
    expect(trace.span.traceId).toBe(traceId)
  })
})

// End to end: published by amqplib with a Buffer header (AMQP type `x`, as pika sends bytes),
// consumed by the whole runtime on the real broker and database, spans recorded in process.
const vhost = uniqueVhost("traceparent")
const spans: Array<Tracer.Span> = []
const recording = Tracer.make({
  span(options) {
    const span = Tracer.nativeTracer.span(options)
    spans.push(span)
    return span
  }
})
let runtime: ReturnType<typeof startRuntime<any, any>>

beforeAll(async () => {
  await createVhost(vhost)
  runtime = startRuntime(Layer.merge(sqlLayer("traceparent"), Layer.succeed(Tracer.Tracer, recording)), testEnv(vhost))
  await runtime.runPromise(Effect.void)
})

afterAll(async () => {
  await runtime?.dispose()
  await deleteVhost(vhost)
})

describe("traceparent over the broker", () => {
  it("a traceparent header published as a byte array parents the consumer span", async () => {
    const client = await TestClient.connect(vhost)
    const eventId = freshId("evt-bytes")
    await client.publish("catalog_events", "catalog.variant.created", {
      event: "catalog.variant.created",
      version: "1.0",
      timestamp: "2026-01-01T00:00:00Z",
      organization_id: freshOrg(),
      event_id: eventId,
      data: { variant_id: freshId("v"), product_id: "p1" }
    }, { headers: { traceparent: Buffer.from(header) } })
    await client.close()
    const consumer = await eventually("consumer span of the message", () =>
      spans.find((s) => s.name === "inventory_catalog_consumer process" && s.attributes.get("inventory.event_id") === eventId))
    expect(parentOf(consumer)).toMatchObject({ _tag: "ExternalSpan", traceId, spanId })
    expect(consumer.traceId).toBe(traceId)
  })
})
