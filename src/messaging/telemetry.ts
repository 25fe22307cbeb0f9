import { Clock, Effect, Exit, LogLevel, Metric, Option, References, type Tracer } from "effect"
import { type InboundEventType, inboundEventTypes, sourceService } from "../domain/events.ts"
import type { Peek } from "../pipeline/decode.ts"
import { Outcome } from "../pipeline/pipeline.ts"
import { eventErrors, eventProcessingSeconds, eventsConsumed } from "../observability/metrics.ts"
import { noStackTrace } from "../observability/spans.ts"
import { parseTraceparent } from "../observability/tracing.ts"

/** Where a message came from, as the messaging semantic conventions name it. */
export interface MessageMeta {
  readonly queue: string
  readonly exchange: string
  readonly routingKey: string
  readonly messageId?: string | undefined
  readonly headers: Readonly<Record<string, unknown>>
}

export const outcomeLabel: (outcome: Outcome) => "ack" | "duplicate" | "retry" | "dead_letter" = Outcome.$match({
  Ack: () => "ack" as const,
  Duplicate: () => "duplicate" as const,
  Retry: () => "retry" as const,
  DeadLetter: () => "dead_letter" as const
})

/** One message's consumer span and clock, from its arrival to its settlement. */
export interface DeliveryTrace {
  readonly span: Tracer.Span
  readonly startedNanos: bigint
  readonly meta: MessageMeta
}

/**
 * Opens the consumer span of one message (kind consumer, child of its W3C `traceparent` when it
 * carries one) with the messaging semantic-convention attributes. Work for the message runs
 * inside it with `within`; `finish` records the outcome and closes it.
 */
export const startDelivery = (meta: MessageMeta): Effect.Effect<DeliveryTrace> =>
  Effect.gen(function*() {
    const span = yield* Effect.makeSpan(`${meta.queue} process`, {
      kind: "consumer",
      ...Option.match(parseTraceparent(meta.headers["traceparent"]), { onNone: () => ({}), onSome: (parent) => ({ parent }) }),
      attributes: {
        "messaging.system": "rabbitmq",
        "messaging.operation": "process",
        "messaging.operation.type": "process",
        "messaging.destination.name": meta.exchange,
        "messaging.rabbitmq.destination.routing_key": meta.routingKey,
        "messaging.message.id": meta.messageId ?? "",
        "messaging.consumer.group.name": meta.queue
      }
    })
    return { span, startedNanos: yield* Clock.currentTimeNanos, meta }
  })

/** Runs work for the message as a child of its consumer span. */
export const within = (trace: DeliveryTrace) => <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.withParentSpan(effect, trace.span, noStackTrace)

/**
 * The metrics of one label set, made once: `Metric.withAttributes` builds a new metric and
 * hashes its attributes on every call, which for every message measured as a visible share of
 * the consumer's allocations (issue 8). The label sets are few (event type, source, error tag).
 */
const attributed = <Labels extends ReadonlyArray<string>, M>(make: (...labels: Labels) => M) => {
  const cache = new Map<string, M>()
  return (...labels: Labels): M => {
    const key = labels.join("\u0000")
    let metric = cache.get(key)
    if (metric === undefined) {
      metric = make(...labels)
      cache.set(key, metric)
    }
    return metric
  }
}
/** Keyed by event type; "unknown" (nothing could be decoded) has no source either. */
const consumedFor = attributed((eventType: string) =>
  Metric.withAttributes(eventsConsumed, {
    event_type: eventType,
    source_service: eventType === "unknown" ? "unknown" : sourceService(eventType as InboundEventType)
  }))
const processingFor = attributed((eventType: string) => Metric.withAttributes(eventProcessingSeconds, { event_type: eventType }))
const errorsFor = attributed((eventType: string, errorType: string) =>
  Metric.withAttributes(eventErrors, { event_type: eventType, error_type: errorType }))

const knownTypes = new Set<string>(inboundEventTypes)

/**
 * Records what became of the message: on its span (outcome, event attributes, the error's
 * tag), in the metrics of SPEC 7, and in one structured log line; then closes the span.
 */
export const finishDelivery = (trace: DeliveryTrace, outcome: Outcome, seen?: Peek): Effect.Effect<void> =>
  Effect.gen(function*() {
    const now = yield* Clock.currentTimeNanos
    const seconds = Number(now - trace.startedNanos) / 1e9
    const decoded = outcome.decoded
    // An undecodable message is named by what its dead letter read from it (`peek`); a metric
    // label takes only a known type, so a stranger's body cannot mint label values.
    const peekedType = seen?.eventType !== undefined && seen.eventType !== null && knownTypes.has(seen.eventType)
      ? seen.eventType as InboundEventType
      : undefined
    const eventType = decoded?.event.event ?? peekedType ?? "unknown"
    const source = decoded === null ? (peekedType === undefined ? "unknown" : sourceService(peekedType)) : sourceService(decoded.event.event)
    const organizationId = decoded?.event.organization_id ?? seen?.organizationId ?? null
    const label = outcomeLabel(outcome)
    const failure = Outcome.$match(outcome, {
      Ack: () => undefined,
      Duplicate: () => undefined,
      Retry: ({ failure }) => failure,
      DeadLetter: ({ failure }) => failure
    })
    const span = trace.span
    span.attribute("inventory.event_type", eventType)
    span.attribute("inventory.event_id", decoded?.eventId ?? "")
    span.attribute("inventory.organization_id", organizationId ?? "")
    span.attribute("inventory.outcome", label)
    if (failure !== undefined) {
      span.attribute("error.type", failure.errorType)
      span.event("inventory.error", now, { "error.type": failure.errorType, "exception.message": failure.message })
    }
    yield* Metric.update(consumedFor(eventType), 1)
    yield* Metric.update(processingFor(eventType), seconds)
    if (failure !== undefined) yield* Metric.update(errorsFor(eventType, failure.errorType), 1)
    const level = failure === undefined ? "Info" : outcome._tag === "DeadLetter" ? "Error" : "Warn"
    // The line is not even built when the level filters it out (LOG_LEVEL=warn under load).
    if (LogLevel.isGreaterThanOrEqualTo(level, yield* References.MinimumLogLevel)) {
      const log = level === "Info" ? Effect.logInfo : level === "Error" ? Effect.logError : Effect.logWarning
      yield* log(failure === undefined ? "event consumed" : `event ${label}: ${failure.message}`).pipe(
        Effect.annotateLogs({
          event_type: decoded === null && peekedType === undefined ? seen?.eventType ?? eventType : eventType,
          event_id: decoded?.eventId ?? seen?.eventId ?? trace.meta.messageId ?? null,
          source,
          organization_id: organizationId,
          processing_time_ms: Math.round(seconds * 1e5) / 100,
          outcome: label,
          ...(failure === undefined ? {} : { error_type: failure.errorType })
        }),
        within(trace)
      )
    }
    span.end(now, failure === undefined ? Exit.void : Exit.fail(failure))
  })

/** Closes the span of a message given back to the queue without being worked on (pause, order kept, shutdown). */
export const abandonDelivery = (trace: DeliveryTrace, reason: string): Effect.Effect<void> =>
  Effect.flatMap(Clock.currentTimeNanos, (now) =>
    Effect.sync(() => {
      trace.span.attribute("inventory.outcome", "retry")
      trace.span.attribute("inventory.requeue_reason", reason)
      trace.span.end(now, Exit.void)
    }))
