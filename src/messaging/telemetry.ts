import { Clock, Effect, Exit, LogLevel, Option, References, Tracer } from "effect"
import { type InboundEventType, inboundEventTypes, sourceService } from "../domain/events.ts"
import type { Peek } from "../pipeline/decode.ts"
import { Outcome } from "../pipeline/pipeline.ts"
import { eventErrorsFor, eventProcessingSecondsFor, eventsConsumedFor } from "../observability/metrics.ts"
import { underSpan } from "../observability/spans.ts"
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
export const startDelivery = (meta: MessageMeta): Effect.Effect<DeliveryTrace> => {
  const parent = parseTraceparent(meta.headers["traceparent"])
  const attributes = {
    "messaging.system": "rabbitmq",
    "messaging.operation": "process",
    "messaging.operation.type": "process",
    "messaging.destination.name": meta.exchange,
    "messaging.rabbitmq.destination.routing_key": meta.routingKey,
    "messaging.message.id": meta.messageId ?? "",
    "messaging.consumer.group.name": meta.queue
  }
  const span = Effect.makeSpan(
    `${meta.queue} process`,
    Option.isSome(parent) ? { kind: "consumer", parent: parent.value, attributes } : { kind: "consumer", attributes }
  )
  return Effect.withFiber((fiber) =>
    Effect.map(span, (span): DeliveryTrace => ({ span, startedNanos: fiber.getRef(Clock.Clock).currentTimeNanosUnsafe(), meta }))
  )
}

/** Runs work for the message as a child of its consumer span. */
export const within = (trace: DeliveryTrace) => <A, E, R>(effect: Effect.Effect<A, E, R>) => underSpan(effect, trace.span)

/** The message decoded: an event on its span marks when (the decode span of before, issue 18). */
export const markDecoded = (trace: DeliveryTrace): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    trace.span.event("inventory.decoded", fiber.getRef(Clock.Clock).currentTimeNanosUnsafe())
    return Effect.void
  })

/**
 * The metrics of one label set, made once: a metric made per message hashes its attributes on
 * every update (issue 8), and one made with `Metric.withAttributes` adds them to the context on
 * every update (issue 18). The label sets are few (event type, source, error tag).
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
  eventsConsumedFor({
    event_type: eventType,
    source_service: eventType === "unknown" ? "unknown" : sourceService(eventType as InboundEventType)
  }))
const processingFor = attributed((eventType: string) => eventProcessingSecondsFor({ event_type: eventType }))
const errorsFor = attributed((eventType: string, errorType: string) => eventErrorsFor({ event_type: eventType, error_type: errorType }))

const knownTypes = new Set<string>(inboundEventTypes)

const failureOf = (outcome: Outcome) =>
  outcome._tag === "Retry" || outcome._tag === "DeadLetter" ? outcome.failure : undefined

/**
 * Records what became of the message: on its span (outcome, event attributes, the error's
 * tag), in the metrics of SPEC 7, and in one structured log line (at debug for a plain
 * success); then closes the span. Done in
 * place on the calling fiber: only the log line, when its level is written, is an effect.
 */
export const finishDelivery = (trace: DeliveryTrace, outcome: Outcome, seen?: Peek): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    const now = fiber.getRef(Clock.Clock).currentTimeNanosUnsafe()
    const seconds = Number(now - trace.startedNanos) / 1e9
    const decoded = outcome.decoded
    // An undecodable message is named by what its dead letter read from it (`peek`); a metric
    // label takes only a known type, so a stranger's body cannot mint label values.
    const peekedType = seen?.eventType !== undefined && seen.eventType !== null && knownTypes.has(seen.eventType)
      ? seen.eventType as InboundEventType
      : undefined
    const eventType = decoded?.event.event ?? peekedType ?? "unknown"
    const organizationId = decoded?.event.organization_id ?? seen?.organizationId ?? null
    const label = outcomeLabel(outcome)
    const failure = failureOf(outcome)
    const span = trace.span
    span.attribute("inventory.event_type", eventType)
    span.attribute("inventory.event_id", decoded?.eventId ?? "")
    span.attribute("inventory.organization_id", organizationId ?? "")
    span.attribute("inventory.outcome", label)
    if (failure !== undefined) {
      span.attribute("error.type", failure.errorType)
      span.event("inventory.error", now, { "error.type": failure.errorType, "exception.message": failure.message })
    }
    const context = fiber.context
    consumedFor(eventType).updateUnsafe(1, context)
    processingFor(eventType).updateUnsafe(seconds, context)
    if (failure !== undefined) errorsFor(eventType, failure.errorType).updateUnsafe(1, context)
    const exit = failure === undefined ? Exit.void : Exit.fail(failure)
    // A plain success (applied and acked) is logged at debug: at info, the default, one line per
    // message measured 20-30 µs of the consumer's CPU per message, a third of its message path
    // (issue 18); its span and metrics record it. A duplicate, a retry and a dead letter keep
    // their lines at info, warn and error.
    const level = outcome._tag === "Ack" ? "Debug" : failure === undefined ? "Info" : outcome._tag === "DeadLetter" ? "Error" : "Warn"
    // The line is not even built when the level filters it out.
    if (!LogLevel.isGreaterThanOrEqualTo(level, fiber.getRef(References.MinimumLogLevel))) {
      span.end(now, exit)
      return Effect.void
    }
    const source = decoded === null ? (peekedType === undefined ? "unknown" : sourceService(peekedType)) : sourceService(decoded.event.event)
    const log = level === "Debug" ? Effect.logDebug : level === "Info" ? Effect.logInfo : level === "Error" ? Effect.logError : Effect.logWarning
    return log(failure === undefined ? "event consumed" : `event ${label}: ${failure.message}`).pipe(
      Effect.annotateLogs({
        event_type: decoded === null && peekedType === undefined ? seen?.eventType ?? eventType : eventType,
        event_id: decoded?.eventId ?? seen?.eventId ?? trace.meta.messageId ?? null,
        source,
        organization_id: organizationId,
        processing_time_ms: Math.round(seconds * 1e5) / 100,
        outcome: label,
        ...(failure === undefined ? {} : { error_type: failure.errorType })
      }),
      within(trace),
      Effect.andThen(Effect.sync(() => span.end(now, exit)))
    )
  })

/** Closes the span of a message given back to the queue without being worked on (pause, order kept, shutdown). */
export const abandonDelivery = (trace: DeliveryTrace, reason: string): Effect.Effect<void> =>
  Effect.withFiber((fiber) => {
    trace.span.attribute("inventory.outcome", "retry")
    trace.span.attribute("inventory.requeue_reason", reason)
    trace.span.end(fiber.getRef(Clock.Clock).currentTimeNanosUnsafe(), Exit.void)
    return Effect.void
  })
