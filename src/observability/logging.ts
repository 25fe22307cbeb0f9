import { Config, Context, Effect, Layer, Logger, References, Tracer } from "effect"

/**
 * One JSON line per log entry (SPEC 7): timestamp, level, message, every annotation as a
 * top-level field (the pipeline annotates `event_type`, `event_id`, `source`,
 * `organization_id`, `processing_time_ms`), and the `trace_id` / `span_id` of the span the
 * entry was written in, so a log line leads to its trace.
 */
export const jsonLogger = Logger.map(Logger.formatStructured, (entry) => {
  const line: Record<string, unknown> = {
    timestamp: entry.timestamp,
    level: entry.level,
    message: entry.message,
    ...entry.annotations
  }
  if (entry.cause !== undefined) line["cause"] = entry.cause
  return line
})

const withTrace = Logger.make<unknown, void>((options) => {
  const line = jsonLogger.log(options)
  const span = Context.getOption(options.fiber.context, Tracer.ParentSpan)
  if (span._tag === "Some") {
    line["trace_id"] = span.value.traceId
    line["span_id"] = span.value.spanId
  }
  process.stdout.write(`${safeJson(line)}\n`)
})

const safeJson = (value: unknown) => {
  try {
    return JSON.stringify(value, (_k, v) => (typeof v === "bigint" ? v.toString() : v))
  } catch {
    return JSON.stringify({ level: "ERROR", message: "unserialisable log entry" })
  }
}

const LogLevel = Config.Literals(["All", "Trace", "Debug", "Info", "Warn", "Error", "Fatal", "None"], "LOG_LEVEL").pipe(
  Config.orElse(() =>
    Config.Literals(["all", "trace", "debug", "info", "warn", "error", "fatal", "none"], "LOG_LEVEL").pipe(
      Config.map((level) => (level[0]!.toUpperCase() + level.slice(1)) as "All" | "Trace" | "Debug" | "Info" | "Warn" | "Error" | "Fatal" | "None")
    )
  ),
  Config.withDefault("Info" as const)
)

/** JSON logging at the level `LOG_LEVEL` names (default info). */
export const layer = Layer.unwrap(Effect.gen(function*() {
  const level = yield* LogLevel
  return Layer.mergeAll(
    Logger.layer([withTrace]),
    Layer.succeed(References.MinimumLogLevel, level)
  )
}))
