import { Effect, Layer, Option, type Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"

/** Where traces go (`tracingSettings` in src/config.ts reads the standard `OTEL_*` variables). */
export interface TracingSettings {
  /** The OTLP/HTTP traces URL; none: no exporter runs and nothing else changes. */
  readonly tracesUrl: Option.Option<string>
  readonly serviceName: string
}

/**
 * OpenTelemetry tracing over OTLP/HTTP. `OTEL_RESOURCE_ATTRIBUTES` is read by the library itself
 * (`NodeSdk`'s `Resource.layerFromEnv`), the one setting that does not pass through src/config.ts.
 */
export const layer = (settings: TracingSettings): Layer.Layer<never> => {
  if (Option.isNone(settings.tracesUrl)) return Layer.empty
  const url = settings.tracesUrl.value
  // Loaded only when traces are exported: the OpenTelemetry SDK is a few MB of resident memory
  // that a consumer without an endpoint never uses (issue 18's memory bound).
  return Layer.unwrap(Effect.gen(function*() {
    const [NodeSdk, { OTLPTraceExporter }, { BatchSpanProcessor }] = yield* Effect.promise(() =>
      Promise.all([
        import("@effect/opentelemetry/NodeSdk"),
        import("@opentelemetry/exporter-trace-otlp-http"),
        import("@opentelemetry/sdk-trace-base")
      ])
    )
    yield* Effect.logInfo("exporting traces").pipe(Effect.annotateLogs({ otlp_traces_url: url }))
    return NodeSdk.layer(() => ({
      resource: { serviceName: settings.serviceName },
      spanProcessor: new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 1000 }),
      shutdownTimeout: "5 seconds"
    }))
  }))
}

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
