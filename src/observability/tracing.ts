import * as NodeSdk from "@effect/opentelemetry/NodeSdk"
import { OTLPTraceExporter } from "@opentelemetry/exporter-trace-otlp-http"
import { BatchSpanProcessor } from "@opentelemetry/sdk-trace-base"
import { Config, Effect, Layer, Option, Tracer } from "effect"

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

const TRACEPARENT = /^00-([0-9a-f]{32})-([0-9a-f]{16})-([0-9a-f]{2})$/

/** The remote parent named by a W3C `traceparent` header, when it is well formed. */
export const parseTraceparent = (header: unknown): Option.Option<Tracer.ExternalSpan> => {
  if (typeof header !== "string") return Option.none()
  const match = TRACEPARENT.exec(header.trim().toLowerCase())
  if (match === null || /^0+$/.test(match[1]!) || /^0+$/.test(match[2]!)) return Option.none()
  return Option.some(Tracer.externalSpan({
    traceId: match[1]!,
    spanId: match[2]!,
    sampled: (parseInt(match[3]!, 16) & 1) === 1
  }))
}
