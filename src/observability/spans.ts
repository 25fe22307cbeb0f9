import type { Tracer } from "effect"

/**
 * For the spans opened for every message: Effect captures a stack trace per span by default,
 * which measured about 6% of the consumer's CPU under load (issue 8) and tells nothing a span's
 * name does not.
 */
export const noStackTrace: Tracer.TraceOptions = { captureStackTrace: false }

/** W3C `traceparent` of a span, for messages published on its behalf. */
export const formatTraceparent = (span: { readonly traceId: string; readonly spanId: string; readonly sampled: boolean }) =>
  `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`
