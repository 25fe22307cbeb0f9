import { Context, Layer, type LogLevel, Logger, References, Tracer } from "effect"

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

/** The least severe level written (`loggingSettings` in src/config.ts reads `LOG_LEVEL`). */
export interface LoggingSettings {
  readonly level: LogLevel.LogLevel
}

/** JSON logging at the settings' level. */
export const layer = (settings: LoggingSettings) =>
  Layer.mergeAll(
    Logger.layer([withTrace]),
    Layer.succeed(References.MinimumLogLevel, settings.level)
  )
