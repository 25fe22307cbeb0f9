import type amqp from "amqplib"
import { Effect, Metric, Option } from "effect"
import { bodyDigest, deriveId } from "../domain/ids.ts"
import type { Topology } from "../config.ts"
import { type Decoded, peek } from "../pipeline/decode.ts"
import type { Failure } from "../pipeline/pipeline.ts"
import { eventsDeadLettered } from "../observability/metrics.ts"
import { FailedEvents } from "../stores/services.ts"
import type { InboundMessage } from "./inbound.ts"
import { Publisher } from "./publisher.ts"

/** The headers SPEC 5 adds to a dead-lettered message. */
export const deadLetterHeaders = {
  errorType: "x-error-type",
  errorMessage: "x-error-message",
  originalExchange: "x-original-exchange",
  originalRoutingKey: "x-original-routing-key",
  failedAt: "x-failed-at",
  attempts: "x-attempts"
} as const

/** Properties carried over unchanged (not `expiration`, which would age it out of the DLQ, nor `userId`, which the broker checks against our login). */
const carriedProperties = (p: amqp.MessageProperties): amqp.Options.Publish => {
  const options: amqp.Options.Publish = {}
  if (p.contentType !== undefined) options.contentType = p.contentType
  if (p.contentEncoding !== undefined) options.contentEncoding = p.contentEncoding
  if (p.correlationId !== undefined) options.correlationId = p.correlationId
  if (p.replyTo !== undefined) options.replyTo = p.replyTo
  if (p.messageId !== undefined) options.messageId = p.messageId
  if (p.timestamp !== undefined) options.timestamp = p.timestamp
  if (p.type !== undefined) options.type = p.type
  if (p.appId !== undefined) options.appId = p.appId
  if (p.priority !== undefined) options.priority = p.priority
  return options
}

/** Headers the broker or a replay sets; a replay must not carry the old ones. */
const bookkeeping = /^x-(delivery-count|death|first-death-|last-death-|replay-)/

/**
 * The message's own headers with a plain value, for the record: `dlq replay` sends them again,
 * so a replayed event stays in its trace (`traceparent`) and keeps what its publisher attached.
 */
const carriedHeaders = (headers: Readonly<Record<string, unknown>>): Record<string, string | number | boolean> => {
  const carried: Record<string, string | number | boolean> = {}
  for (const [name, value] of Object.entries(headers)) {
    if (bookkeeping.test(name)) continue
    if (typeof value === "string" || typeof value === "boolean" || (typeof value === "number" && Number.isFinite(value))) {
      carried[name] = value
    }
  }
  return carried
}

/**
 * The dead-letter record's id: one per message and replay, so a message whose ack was lost after
 * it was dead-lettered (channel gone, shutdown) is recognised when it comes back and is not
 * dead-lettered twice. A replay (`inventory dlq replay`, which counts in `x-replay-count`) that
 * fails again gets a record of its own.
 */
export const deadLetterId = (message: InboundMessage, decoded: Decoded | null): string => {
  const replay = message.headers["x-replay-count"]
  const organization = decoded?.event.organization_id ?? peek(message.delivery.body, message.delivery.messageId).organizationId ?? ""
  return deriveId(
    organization,
    "dead-letter",
    message.delivery.queue,
    decoded?.eventId ?? message.delivery.messageId ?? bodyDigest(message.delivery.body),
    String(typeof replay === "number" || typeof replay === "string" ? replay : 0)
  )
}

/**
 * Moves a message that failed for good to the dead-letter exchange, byte for byte, with the
 * failure in its headers; waits for the publisher confirm; then stores it in `FailedEvents`,
 * so the DLQ's TTL and length cap never lose it. The caller acks only after both succeeded.
 * A message already dead-lettered (its ack was lost) is not moved again: the caller just acks.
 */
export const deadLetter = (topology: Topology, message: InboundMessage, failure: Failure, decoded: Decoded | null) =>
  Effect.gen(function*() {
    const publisher = yield* Publisher
    const failedEvents = yield* FailedEvents
    const id = deadLetterId(message, decoded)
    if (Option.isSome(yield* failedEvents.get(id))) {
      yield* Effect.logInfo("message was dead-lettered before; acknowledging its redelivery").pipe(
        Effect.annotateLogs({ dead_letter_id: id, error_type: failure.errorType })
      )
      return
    }
    const failedAt = new Date()
    const errorMessage = failure.message.slice(0, 2000)
    yield* publisher.publish({
      exchange: topology.deadLetterExchange,
      routingKey: message.routingKey,
      body: message.delivery.body,
      options: {
        ...carriedProperties(message.properties),
        persistent: true,
        headers: {
          ...message.headers,
          [deadLetterHeaders.errorType]: failure.errorType,
          [deadLetterHeaders.errorMessage]: errorMessage,
          [deadLetterHeaders.originalExchange]: message.exchange,
          [deadLetterHeaders.originalRoutingKey]: message.routingKey,
          [deadLetterHeaders.failedAt]: failedAt.toISOString(),
          [deadLetterHeaders.attempts]: message.delivery.deliveryCount
        }
      }
    })
    const seen = peek(message.delivery.body, message.delivery.messageId)
    yield* failedEvents.record({
      id,
      event_id: decoded?.eventId ?? seen.eventId,
      event_type: decoded?.event.event ?? seen.eventType,
      organization_id: decoded?.event.organization_id ?? seen.organizationId,
      error_type: failure.errorType,
      error_message: errorMessage,
      body: message.delivery.body,
      content_type: typeof message.properties.contentType === "string" ? message.properties.contentType : null,
      original_exchange: message.exchange,
      original_routing_key: message.routingKey,
      attempts: message.delivery.deliveryCount,
      failed_at: failedAt,
      replay_count: 0,
      last_replayed_at: null,
      headers: carriedHeaders(message.headers)
    })
    yield* Metric.update(Metric.withAttributes(eventsDeadLettered, { queue: message.delivery.queue, error_type: failure.errorType }), 1)
  })
