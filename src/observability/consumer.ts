import { Clock, Effect, Metric, Option } from "effect"
import { sourceService } from "../domain/events.ts"
import type { Outcome } from "../pipeline/pipeline.ts"
import { eventErrors, eventProcessingSeconds, eventsConsumed } from "./metrics.ts"
import { parseTraceparent } from "./tracing.ts"

/** Where a message came from, as the messaging semantic conventions name it. */
export interface MessageMeta {
  readonly queue: string
  readonly exchange: string
  readonly routingKey: string
  readonly messageId?: string | undefined
  readonly headers: Readonly<Record<string, unknown>>
}

export const outcomeLabel = (outcome: Outcome): "ack" | "duplicate" | "retry" | "dead_letter" => {
  switch (outcome._tag) {
    case "Ack":
      return "ack"
    case "Duplicate":
      return "duplicate"
    case "Retry":
      return "retry"
    case "DeadLetter":
      return "dead_letter"
  }
}

/**
 * Runs the handling of one message inside its consumer span (a child of the message's W3C
 * `traceparent` when it has one), then records the outcome on the span, in the metrics of
 * SPEC 7 and in one structured log line.
 */
export const observeDelivery = <R>(meta: MessageMeta, handle: Effect.Effect<Outcome, never, R>): Effect.Effect<Outcome, never, R> =>
  Effect.gen(function*() {
    const started = yield* Clock.currentTimeNanos
    const outcome = yield* handle
    const seconds = Number((yield* Clock.currentTimeNanos) - started) / 1e9
    const decoded = outcome._tag === "DeadLetter" ? outcome.decoded : outcome.decoded
    const eventType = decoded?.event.event ?? "unknown"
    const source = decoded === null ? "unknown" : sourceService(decoded.event.event)
    const label = outcomeLabel(outcome)
    const failure = outcome._tag === "Retry" || outcome._tag === "DeadLetter" ? outcome.failure : undefined

    yield* Effect.annotateCurrentSpan({
      "inventory.event_type": eventType,
      "inventory.event_id": decoded?.eventId ?? "",
      "inventory.organization_id": decoded?.event.organization_id ?? "",
      "inventory.outcome": label,
      ...(failure === undefined ? {} : { "error.type": failure.errorType, "inventory.error_message": failure.message })
    })
    yield* Metric.update(Metric.withAttributes(eventsConsumed, { event_type: eventType, source_service: source }), 1)
    yield* Metric.update(Metric.withAttributes(eventProcessingSeconds, { event_type: eventType }), seconds)
    if (failure !== undefined) {
      yield* Metric.update(Metric.withAttributes(eventErrors, { event_type: eventType, error_type: failure.errorType }), 1)
    }
    const log = failure === undefined ? Effect.logInfo : outcome._tag === "DeadLetter" ? Effect.logError : Effect.logWarning
    yield* log(failure === undefined ? "event consumed" : `event ${label}: ${failure.message}`).pipe(
      Effect.annotateLogs({
        event_type: eventType,
        event_id: decoded?.eventId ?? meta.messageId ?? null,
        source,
        organization_id: decoded?.event.organization_id ?? null,
        processing_time_ms: Math.round(seconds * 1e5) / 100,
        outcome: label,
        ...(failure === undefined ? {} : { error_type: failure.errorType })
      })
    )
    return outcome
  }).pipe(
    Effect.withSpan(`${meta.queue} process`, {
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
  )
