import { Effect, Tracer } from "effect"

/**
 * For the spans opened for every message: Effect captures a stack trace per span by default,
 * which measured about 6% of the consumer's CPU under load (issue 8) and tells nothing a span's
 * name does not.
 */
export const noStackTrace: Tracer.TraceOptions = { captureStackTrace: false }

/** W3C `traceparent` of a span, for messages published on its behalf. */
export const formatTraceparent = (span: { readonly traceId: string; readonly spanId: string; readonly sampled: boolean }) =>
  `00-${span.traceId}-${span.spanId}-${span.sampled ? "01" : "00"}`

/**
 * A handler's span, piped into `Effect.fnUntraced`: what `Effect.fn("name")` gives each call (a
 * child span of the current one, the parent of what the handler does) without what else it does
 * on every call: capture a stack trace at the call site, and push a frame on the fiber's context,
 * both only to annotate a failure's stack trace, which a span's name already locates. Several
 * run per event (issue 18).
 */
export const spanned = (name: string) => <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
  Effect.useSpan(name, (span) => underSpan(effect, span))

/**
 * Runs `effect` as a child of `span`, provided as the parent directly: `Effect.withParentSpan`
 * also pushes a stack frame naming the span, which only annotates a failure's stack trace (none
 * of our log lines prints it) and changes the fiber's context a second time, for every message
 * and every event of a group (issue 18).
 */
export const underSpan = <A, E, R>(effect: Effect.Effect<A, E, R>, span: Tracer.AnySpan): Effect.Effect<A, E, R> =>
  Effect.provideService(effect, Tracer.ParentSpan, span)
