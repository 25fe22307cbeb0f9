import { Effect, Layer, Option, Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"

/** Where traces go (`tracingSettings` in src/config.ts reads the standard `OTEL_*` variables). */
export interface TracingSettings {
  /** The OTLP/HTTP traces URL; none: no exporter runs and nothing else changes. */
  readonly tracesUrl: Option.Option<string>
  readonly serviceName: string
}

/**
 * OpenTelemetry tracing over OTLP/HTTP. `OTEL_RESOURCE_ATTRIBUTES` is read by the library itself
 * (`Resource.layerFromEnv`), the one setting that does not pass through src/config.ts; so are
 * the SDK's own `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG`.
 *
 * Built from `@effect/opentelemetry`'s parts rather than its `NodeSdk.layer`, for one reason: the
 * Effect tracer that layer installs has a `context` hook, which the fiber runtime calls around
 * every primitive it evaluates while a span is current, to make that span OpenTelemetry's active
 * one (two `Context` copies and a `context.with` per primitive). Only OpenTelemetry's own
 * instrumentations read the active context, and this process has none; nor does it register a
 * context manager, so OpenTelemetry's active context stays empty whatever the hook does. The hook
 * measured 8% of the consumer's CPU with traces exported, and more of its garbage (issue 18).
 * Spans, their parents and the `traceparent` of what is published are Effect's and unchanged:
 * `tracer` below is the same OpenTelemetry-backed tracer without the hook.
 */
export const layer = (settings: TracingSettings): Layer.Layer<never> => {
  if (Option.isNone(settings.tracesUrl)) return Layer.empty
  const url = settings.tracesUrl.value
  // Loaded only when traces are exported: the OpenTelemetry SDK is a few MB of resident memory
  // that a consumer without an endpoint never uses (issue 18's memory bound).
  return Layer.unwrap(Effect.gen(function*() {
    const [NodeSdk, OtelTracer, Resource, { OTLPTraceExporter }, { BatchSpanProcessor }] = yield* Effect.promise(() =>
      Promise.all([
        import("@effect/opentelemetry/NodeSdk"),
        import("@effect/opentelemetry/OtelTracer"),
        import("@effect/opentelemetry/Resource"),
        import("@opentelemetry/exporter-trace-otlp-http"),
        import("@opentelemetry/sdk-trace-base")
      ])
    )
    yield* Effect.logInfo("exporting traces").pipe(Effect.annotateLogs({ otlp_traces_url: url }))
    const provider = NodeSdk.layerTracerProvider(
      new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 1000 }),
      { shutdownTimeout: "5 seconds" }
    ).pipe(Layer.provide(Resource.layerFromEnv(Resource.configToAttributes({ serviceName: settings.serviceName }))))
    return Layer.effect(Tracer.Tracer, Effect.map(OtelTracer.make, withoutContextHook)).pipe(
      Layer.provide(OtelTracer.layerTracer),
      Layer.provide(provider)
    )
  }))
}

/** A tracer's spans, without its per-primitive `context` hook (see `layer`). */
export const withoutContextHook = (tracer: Tracer.Tracer): Tracer.Tracer =>
  Tracer.make({ span: (options) => tracer.span(options) })

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
