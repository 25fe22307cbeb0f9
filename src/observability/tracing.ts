import { Cause, Clock, Duration, Effect, Layer, Option, Tracer } from "effect"
import { Headers, HttpTraceContext } from "effect/http"
// Types only: the OpenTelemetry packages are loaded when traces are exported (see `layer`).
import type { DiagAPI, DiagLogLevel } from "@opentelemetry/api"

/** Where traces go (`tracingSettings` in src/config.ts reads the standard `OTEL_*` variables). */
export interface TracingSettings {
  /** The OTLP/HTTP traces URL; none: no exporter runs and nothing else changes. */
  readonly tracesUrl: Option.Option<string>
  readonly serviceName: string
}

/**
 * OpenTelemetry tracing over OTLP/HTTP. `OTEL_RESOURCE_ATTRIBUTES` (`Resource.layerFromEnv`) and
 * the sampler's `OTEL_TRACES_SAMPLER` / `OTEL_TRACES_SAMPLER_ARG` (the SDK) are read by the
 * libraries themselves: the settings that do not pass through src/config.ts.
 *
 * Built from `@effect/opentelemetry`'s parts rather than its `NodeSdk.layer`, for two reasons.
 * The Effect tracer that layer installs has a `context` hook, which the fiber runtime calls
 * around every primitive it evaluates while a span is current, to make that span OpenTelemetry's
 * active one (two `Context` copies and a `context.with` per primitive). Only OpenTelemetry's own
 * instrumentations read the active context, and this process has none; nor does it register a
 * context manager, so OpenTelemetry's active context stays empty whatever the hook does. The hook
 * measured 8% of the consumer's CPU with traces exported, and more of its garbage (issue 18).
 * Spans, their parents and the `traceparent` of what is published are Effect's and unchanged:
 * `withoutContextHook` keeps the same OpenTelemetry-backed tracer without the hook. The other
 * reason is the provider's release, below.
 */
export const layer = (settings: TracingSettings): Layer.Layer<never> => {
  if (Option.isNone(settings.tracesUrl)) return Layer.empty
  const url = settings.tracesUrl.value
  // Loaded only when traces are exported: the OpenTelemetry SDK is a few MB of resident memory
  // that a consumer without an endpoint never uses (issue 18's memory bound).
  return Layer.unwrap(Effect.gen(function*() {
    const [OtelApi, OtelTracer, Resource, { OTLPTraceExporter }, { BasicTracerProvider, BatchSpanProcessor }] = yield* Effect.promise(() =>
      Promise.all([
        import("@opentelemetry/api"),
        import("@effect/opentelemetry/OtelTracer"),
        import("@effect/opentelemetry/Resource"),
        import("@opentelemetry/exporter-trace-otlp-http"),
        import("@opentelemetry/sdk-trace-base")
      ])
    )
    yield* Effect.logInfo("exporting traces").pipe(Effect.annotateLogs({ otlp_traces_url: url }))
    // The provider of `NodeSdk.layerTracerProvider`, but released without failing: its last flush
    // rejects when the collector refuses the export, which there became a defect in the release,
    // and a SIGTERM then ended the process with exit 1 and no line saying why (seen with a
    // collector answering 400). Spans not delivered by then are lost, and said so.
    const provider = Layer.effect(
      OtelTracer.OtelTracerProvider,
      Effect.gen(function*() {
        const resource = yield* Resource.Resource
        return yield* Effect.acquireRelease(
          Effect.sync(() =>
            new BasicTracerProvider({
              resource,
              spanProcessors: [new BatchSpanProcessor(new OTLPTraceExporter({ url }), { scheduledDelayMillis: 1000 })]
            })
          ),
          (provider) =>
            Effect.tryPromise(() => provider.forceFlush().finally(() => provider.shutdown())).pipe(
              Effect.timeout(flushTimeout),
              Effect.catchCause((cause) =>
                Effect.logWarning("traces not all exported before exit").pipe(
                  Effect.annotateLogs({ otlp_traces_url: url, cause: Cause.pretty(cause).split("\n")[0] ?? "" })
                )
              )
            )
        )
      })
    ).pipe(Layer.provide(Resource.layerFromEnv(Resource.configToAttributes({ serviceName: settings.serviceName }))))
    return Layer.effect(Tracer.Tracer, Effect.map(OtelTracer.make, withoutContextHook)).pipe(
      Layer.provide(OtelTracer.layerTracer),
      Layer.provide(provider),
      // Built before the provider and released after it: its last flush still reports.
      Layer.provide(diagnostics(OtelApi.diag, OtelApi.DiagLogLevel.WARN, Duration.seconds(30)))
    )
  }))
}

/** How long the last flush of spans may hold up the exit. */
const flushTimeout = Duration.seconds(5)

/** A tracer's spans, without its per-primitive `context` hook (see `layer`). */
export const withoutContextHook = (tracer: Tracer.Tracer): Tracer.Tracer =>
  Tracer.make({ span: (options) => tracer.span(options) })

/**
 * OpenTelemetry's own warnings and errors into this service's log: a failed export (the
 * collector down or refusing), spans dropped because the export queue was full. Without a
 * logger they go nowhere, and traces missing in Jaeger or Tempo would be the only sign. A
 * collector that stays down fails an export every second or so: one line per `quiet`, which
 * counts the reports it stands for, keeps the log readable.
 */
const diagnostics = (diag: DiagAPI, level: DiagLogLevel, quiet: Duration.Duration) =>
  Layer.effectDiscard(Effect.gen(function*() {
    const run = Effect.runForkWith(yield* Effect.context<never>())
    let lastAt = Number.NEGATIVE_INFINITY
    let unreported = 0
    const report = (message: string, ...args: Array<unknown>) => {
      run(Effect.gen(function*() {
        unreported++
        const now = yield* Clock.currentTimeMillis
        if (now - lastAt < Duration.toMillis(quiet)) return
        const reports = unreported
        lastAt = now
        unreported = 0
        yield* Effect.logWarning(`OpenTelemetry: ${described(message)}`).pipe(
          Effect.annotateLogs({
            ...(args.length === 0 ? {} : { detail: args.map(String).join(" ").slice(0, 1000) }),
            reports_since_last_line: reports
          })
        )
      }))
    }
    const ignore = () => {}
    yield* Effect.acquireRelease(
      Effect.sync(() => diag.setLogger({ error: report, warn: report, info: ignore, debug: ignore, verbose: ignore }, level)),
      () => Effect.sync(() => diag.disable())
    )
  }))

/** A diagnostic's text: OpenTelemetry reports an exception as its JSON (stack included), of which the message says enough. */
const described = (message: unknown): string => {
  const text = String(message)
  if (text.startsWith("{")) {
    try {
      const parsed: unknown = JSON.parse(text)
      if (typeof parsed === "object" && parsed !== null && "message" in parsed && typeof parsed.message === "string") {
        return parsed.message.slice(0, 500)
      }
    } catch {
      // not JSON after all: the text as it is
    }
  }
  return text.slice(0, 500)
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
