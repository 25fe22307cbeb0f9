import { createServer, type Server } from "node:http"
import type { AddressInfo } from "node:net"
import { Effect, Fiber, Logger, Option } from "effect"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { formatTraceparent } from "../../src/observability/spans.ts"
import * as Tracing from "../../src/observability/tracing.ts"
import { databaseUrl, dropSchema } from "../cli/support.ts"
import { startConsumer } from "../reservations/support.ts"
import { createVhost, deleteVhost, eventually, freePort, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { uniqueSchema } from "../support/sql.ts"

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
/** Exports the receiver refused (a collector answering 400 on `/refuse/`). */
let refused = 0
let server: Server

beforeAll(async () => {
  server = createServer((req, res) => {
    let body = ""
    req.on("data", (chunk) => (body += chunk))
    req.on("end", () => {
      if (req.url?.startsWith("/refuse/")) {
        refused++
        res.writeHead(400, { "content-type": "application/json" })
        res.end("{}")
        return
      }
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
  it("logs OpenTelemetry's own failures (an export the collector refused), one line for many", async () => {
    const url = `http://127.0.0.1:${(server.address() as AddressInfo).port}/refuse/v1/traces`
    const lines: Array<string> = []
    const capture = Logger.make((options) => {
      lines.push(String(Array.isArray(options.message) ? options.message[0] : options.message))
    })
    const before = refused
    // More spans than one export carries (512), each batch refused.
    const spans = Effect.forEach(Array.from({ length: 1_200 }, (_, i) => i), (i) => Effect.withSpan(Effect.void, `refused-${i}`), { discard: true })
    await Effect.runPromise(
      spans.pipe(
        Effect.provide(Tracing.layer({ tracesUrl: Option.some(url), serviceName: "tracing-test" })),
        Effect.provide(Logger.layer([capture]))
      )
    )
    // The lines are written by fibers of their own: wait for them briefly.
    for (let i = 0; i < 50 && !lines.some((line) => line.startsWith("OpenTelemetry:")); i++) await new Promise((done) => setTimeout(done, 20))
    expect(refused - before).toBeGreaterThanOrEqual(2)
    const reported = lines.filter((line) => line.startsWith("OpenTelemetry:"))
    expect(reported).toHaveLength(1)
  })
})

describe("the consumer with a collector that refuses its exports", () => {
  it("says so in its log, and still exits 0 on SIGTERM", async () => {
    const vhost = uniqueVhost("tracing")
    const schema = uniqueSchema("tracing")
    await createVhost(vhost)
    const consumer = startConsumer({
      AMQP_URL: vhostUrl(vhost),
      // The database `dropSchema` cleans up in.
      DATABASE_URL: databaseUrl,
      DATABASE_SCHEMA: schema,
      HTTP_PORT: String(await freePort()),
      HTTP_HOST: "127.0.0.1",
      OTEL_EXPORTER_OTLP_TRACES_ENDPOINT: `http://127.0.0.1:${(server.address() as AddressInfo).port}/refuse/v1/traces`,
      SHUTDOWN_TIMEOUT_MS: "10000"
    })
    try {
      await eventually("consumer started", () => consumer.output().includes("consumer started"), 45_000)
      // Its start-up spans were refused within the export interval: the log says so.
      await eventually("the refused export in the log", () => consumer.output().includes("OpenTelemetry: Bad Request"), 15_000)
      // What the shutdown itself traced (the relay's last drain) is refused too, at the last flush.
      expect(await consumer.stop(), consumer.output().split("\n").slice(-20).join("\n")).toBe(0)
      expect(consumer.output()).toContain("traces not all exported before exit")
    } finally {
      consumer.kill()
      await deleteVhost(vhost)
      await dropSchema(schema)
    }
  }, 90_000)
})
