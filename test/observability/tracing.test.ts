import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Fiber, Option } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { formatTraceparent } from "../../src/observability/spans.ts"
import * as Tracing from "../../src/observability/tracing.ts"

/**
 * Issue 18: with traces exported, the Effect tracer `Tracing.layer` installs is OpenTelemetry's
 * without the per-primitive `context` hook (8% of the consumer's CPU), and its spans still reach
 * an OTLP/HTTP receiver with their parents, across the fiber's asynchronous steps and forks.
 */

interface Received {
  readonly name: string
  readonly traceId: string
  readonly spanId: string
  readonly parentSpanId: string | undefined
}

const received: Array<Received> = []
let server: Server

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = ""
    req.on("data", (chunk) => (body += chunk))
    req.on("end", () => {
      const payload = JSON.parse(body) as { resourceSpans: Array<{ scopeSpans: Array<{ spans: Array<Record<string, string>> }> }> }
      for (const rs of payload.resourceSpans) {
        for (const ss of rs.scopeSpans) {
          for (const s of ss.spans) {
            received.push({ name: s["name"]!, traceId: s["traceId"]!, spanId: s["spanId"]!, parentSpanId: s["parentSpanId"] || undefined })
          }
        }
      }
      res.writeHead(200, { "content-type": "application/json" })
      res.end("{}")
    })
  })
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done))
})

afterAll(() => {
  server.close()
})

describe("Tracing.layer", () => {
  it("installs a tracer without a per-primitive context hook, whose spans are exported with their parents", async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`
    const program = Effect.gen(function*() {
      const tracer = yield* Effect.tracer
      const inner = Effect.sleep("5 millis").pipe(Effect.withSpan("inner"))
      const forked = Effect.sleep("5 millis").pipe(Effect.withSpan("forked"))
      yield* Effect.gen(function*() {
        yield* inner
        const fiber = yield* Effect.forkChild(forked)
        yield* Effect.sleep("5 millis")
        yield* Fiber.join(fiber)
      }).pipe(Effect.withSpan("outer"))
      return tracer
    })
    // The layer's scope ends with the program: the provider flushes what is left on the way out.
    const tracer = await Effect.runPromise(
      program.pipe(Effect.provide(Tracing.layer({ tracesUrl: Option.some(url), serviceName: "tracing-test" })))
    )
    expect(tracer.context).toBeUndefined()
    const byName = new Map(received.map((span) => [span.name, span]))
    const outer = byName.get("outer")
    expect(outer).toBeDefined()
    expect(outer!.parentSpanId).toBeUndefined()
    for (const name of ["inner", "forked"]) {
      const span = byName.get(name)
      expect(span, name).toMatchObject({ traceId: outer!.traceId, parentSpanId: outer!.spanId })
    }
  })

  it("samples as OTEL_TRACES_SAMPLER says: an unsampled span is not exported, and its traceparent says so", async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/v1/traces`
    process.env["OTEL_TRACES_SAMPLER"] = "always_off"
    try {
      const traceparent = await Effect.runPromise(
        Effect.map(Effect.makeSpan("unsampled"), formatTraceparent).pipe(
          Effect.provide(Tracing.layer({ tracesUrl: Option.some(url), serviceName: "tracing-test" }))
        )
      )
      expect(traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-00$/)
    } finally {
      delete process.env["OTEL_TRACES_SAMPLER"]
    }
    expect(received.map((span) => span.name)).not.toContain("unsampled")
    // The receiver is the same: the first test's spans did arrive.
    expect(received.map((span) => span.name)).toContain("outer")
  })
})
