import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Config, Effect, Layer, Option, type Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"

/**
 * OpenTelemetry tracing over OTLP/HTTP, configured by the standard variables:
 * `OTEL_EXPORTER_OTLP_ENDPOINT` (or `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`), `OTEL_SERVICE_NAME`,
 * `OTEL_RESOURCE_ATTRIBUTES`. With no endpoint no exporter runs and nothing else changes.
 */
export const layer = Layer.unwrap(Effect.gen(function*() {
  const endpoint = yield* Config.option(Config.String("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))
  const base = yield* Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT"))
  const serviceName = yield* Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("inventory-event-consumer"))
  const url = Option.isSome(endpoint)
    ? Option.some(endpoint.value)
    : Option.map(base, (b) => `${b.replace(/\/+$/, "")}/v1/traces`)
  if (Option.isNone(url)) return Layer.empty
  yield* Effect.logInfo("exporting traces").pipe(Effect.annotateLogs({ otlp_traces_url: url.value }))
  return NodeSdk.layer(() => ({
    resource: { serviceName },
    spanProcessor: new BatchSpanProcessor(new OTLPTraceExporter({ url: url.value }), { scheduledDelayMillis: 1000 }),
    shutdownTimeout: "5 seconds"
  }))
}))

const utf8 = new TextDecoder("utf-8", { fatal: true })

/**
 * The remote parent named by a W3C `traceparent` header, when it is well formed. The value may be
 * a string or bytes: pika sends Python `bytes` as an AMQP byte array, which amqplib hands over as
 * a Buffer. Parsing is effect's own (`HttpTraceContext.w3c`); a header is at most 55 characters.
 */
export const parseTraceparent = (header: unknown): Option.Option<Tracer.ExternalSpan> => {
  let text: string
  if (typeof header === "string") text = header
  else if (header instanceof Uint8Array && header.length <= 256) {
    try {
      text = utf8.decode(header)
    } catch {
      return Option.none()
    }
  } else return Option.none()
  // Lenient on case and surrounding space, as the hand parser this replaces was.
  return HttpTraceContext.w3c(Headers.fromRecordUnsafe({ traceparent: text.trim().toLowerCase() }))
}
