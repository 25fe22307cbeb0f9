import { Cause, Clock, Deferred, Duration, Effect, Layer, Metric, Option, Schedule, Stream } from "effect"
import { RuntimeConfig } from "../config.ts"
import { bodyDigest, deriveId } from "../domain/ids.ts"
import { eventsDeadLettered } from "../observability/metrics.ts"
import { peek } from "../pipeline/decode.ts"
import type { FailedEvent } from "../stores/model.ts"
import { FailedEvents } from "../stores/services.ts"
import { Broker, brokerError } from "./connection.ts"
import { carriedHeaders, deadLetterHeaders, storableText } from "./deadLetter.ts"
import { deliveries, deliveryChannel, deliveryCounter, type InboundMessage, settle } from "./inbound.ts"

/**
 * Dead letters the broker makes itself (a message's `expiration` passed, a quorum queue's
 * delivery limit, a length limit) reach the dead-letter exchange with only `x-death`: nothing of
 * ours recorded them. This feature consumes our own queue bound to that exchange with `#` and
 * records each of them in `failed_events` (so `dlq list` shows them and `dlq replay` sends them
 * back); the copies we publish ourselves carry `x-error-type` and were recorded when we made
 * them, so they are only acknowledged. It also deletes records older than the retention.
 */

/** The broker's `x-death` reasons, as the error types of their records. */
export const brokerErrorTypes = {
  expired: "BrokerExpired",
  delivery_limit: "BrokerDeliveryLimit",
  maxlen: "BrokerOverflow",
  rejected: "BrokerRejected"
} as const

/** A dead letter with no `x-death` reason we know (published to the exchange by hand, say). */
export const unknownBrokerErrorType = "BrokerDeadLettered"

const storableOrNull = (text: string | null | undefined, max = 255): string | null =>
  text === null || text === undefined ? null : storableText(text, max)

interface Death {
  readonly reason: string | null
  readonly queue: string | null
  readonly exchange: string | null
  readonly routingKey: string | null
  readonly count: number
  readonly time: Date | null
}

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)
const text = (u: unknown): string | null => (typeof u === "string" ? u : Buffer.isBuffer(u) ? u.toString("utf8") : null)

/** The most recent `x-death` entry (the broker puts it first), or null when there is none. */
const lastDeath = (headers: Readonly<Record<string, unknown>>): Death | null => {
  const deaths = headers["x-death"]
  const entry = Array.isArray(deaths) ? deaths[0] : undefined
  if (!isRecord(entry)) return null
  const keys = entry["routing-keys"]
  const time = entry["time"]
  // amqplib decodes an AMQP timestamp as { "!": "timestamp", value: seconds }.
  const seconds = isRecord(time) && typeof time["value"] === "number" ? time["value"] : typeof time === "number" ? time : null
  return {
    reason: text(entry["reason"]),
    queue: text(entry["queue"]),
    exchange: text(entry["exchange"]),
    routingKey: Array.isArray(keys) ? text(keys[0]) : null,
    count: typeof entry["count"] === "number" ? entry["count"] : 1,
    time: seconds !== null && Number.isFinite(seconds) && seconds > 0 ? new Date(seconds * 1000) : null
  }
}

const errorTypeOf = (reason: string | null): string =>
  reason !== null && Object.hasOwn(brokerErrorTypes, reason) ? brokerErrorTypes[reason as keyof typeof brokerErrorTypes] : unknownBrokerErrorType

/**
 * The record of a broker-made dead letter. Its id derives from what the broker wrote (queue,
 * reason, count) and the message's event id, so a redelivery of the same copy maps to the same
 * record; a replay that dies again counts in `x-replay-count` and gets its own.
 */
export const brokerDeadLetter = (message: InboundMessage, now: Date, bodyMaxBytes: number): FailedEvent => {
  const death = lastDeath(message.headers)
  const seen = peek(message.delivery.body, message.delivery.messageId)
  const replay = message.headers["x-replay-count"]
  const errorType = errorTypeOf(death?.reason ?? null)
  const queue = death?.queue ?? "unknown queue"
  const id = deriveId(
    seen.organizationId ?? "",
    "dead-letter",
    "broker",
    queue,
    death?.reason ?? "",
    String(death?.count ?? 0),
    seen.eventId ?? bodyDigest(message.delivery.body),
    String(typeof replay === "number" || typeof replay === "string" ? replay : 0)
  )
  const deliveries = message.headers["x-delivery-count"]
  const contentType = message.properties.contentType
  const body = message.delivery.body
  const failedAt = death?.time ?? now
  return {
    id,
    event_id: storableOrNull(seen.eventId, 512),
    event_type: storableOrNull(seen.eventType),
    organization_id: storableOrNull(seen.organizationId),
    error_type: errorType,
    error_message: storableText(
      death === null
        ? "Dead-lettered without x-death or x-error-type: the broker's reason is unknown"
        : `Dead-lettered by the broker (${death.reason ?? "no reason"}) from queue ${queue}, ${death.count} time(s)`,
      2000
    ),
    // Cut as our own records are (DLQ_BODY_MAX_BYTES); the DLQ holds the whole copy already.
    body: body.subarray(0, bodyMaxBytes),
    body_sha256: bodyDigest(body),
    body_length: body.length,
    content_type: typeof contentType === "string" ? storableText(contentType, 255) : null,
    original_exchange: storableText(death?.exchange ?? "", 255),
    original_routing_key: storableText(death?.routingKey ?? message.routingKey, 255),
    // The broker drops `x-delivery-count` when it dead-letters (RabbitMQ 3.10): 0 when unknown.
    attempts: typeof deliveries === "number" && Number.isSafeInteger(deliveries) && deliveries >= 0 ? deliveries : 0,
    failed_at: failedAt,
    replay_count: 0,
    last_replayed_at: null,
    // The broker put the copy on the DLQ when it dead-lettered the message.
    dlq_copied_at: failedAt,
    headers: carriedHeaders(message.headers)
  }
}

/** What became of one message of the recorder queue. */
export type Recorded = "ours" | "recorded" | "seen before"

/**
 * Records one message of the recorder queue unless it is ours or recorded already. One of ours
 * marks its record copied (by its `x-dead-letter-id`): the DLQ, bound to the same exchange,
 * holds it too, and a dead letter whose confirm was lost waits for that mark rather than copy
 * itself again (`deadLetter.ts`).
 */
export const recordDeadLetter = (message: InboundMessage, bodyMaxBytes: number) =>
  Effect.gen(function*() {
    const failedEvents = yield* FailedEvents
    // Ours carry `x-error-type` and never `x-death` (the dead-letter path drops it); a broker's
    // dead letter always has `x-death`, even of a message whose publisher set `x-error-type`.
    if (message.headers[deadLetterHeaders.errorType] !== undefined && message.headers["x-death"] === undefined) {
      const id = message.headers[deadLetterHeaders.id]
      if (typeof id === "string") yield* failedEvents.markCopied(id, new Date(yield* Clock.currentTimeMillis))
      return "ours" as Recorded
    }
    const record = brokerDeadLetter(message, new Date(yield* Clock.currentTimeMillis), bodyMaxBytes)
    if (Option.isSome(yield* failedEvents.get(record.id))) return "seen before" as Recorded
    yield* failedEvents.record(record)
    yield* Metric.update(
      Metric.withAttributes(eventsDeadLettered, { queue: lastDeath(message.headers)?.queue ?? "unknown", error_type: record.error_type }),
      1
    )
    yield* Effect.logWarning("dead letter made by the broker recorded").pipe(
      Effect.annotateLogs({
        dead_letter_id: record.id,
        error_type: record.error_type,
        event_id: record.event_id,
        event_type: record.event_type,
        organization_id: record.organization_id
      })
    )
    return "recorded" as Recorded
  })

const purgeBatch = 1_000

/** Consumes the recorder queue until the scope closes. */
export const recorderLayer = Layer.effectDiscard(Effect.gen(function*() {
  const broker = yield* Broker
  const config = yield* RuntimeConfig
  const failedEvents = yield* FailedEvents
  const { topology } = config
  const spec = { queue: topology.deadLetterRecorderQueue, exchange: topology.deadLetterExchange, eventTypes: [], prefetch: 50 }
  const counter = deliveryCounter(topology.queueType)
  let failures = 0

  const handle = (message: InboundMessage) =>
    recordDeadLetter(message, config.deadLetter.bodyMaxBytes).pipe(
      Effect.provideService(FailedEvents, failedEvents),
      Effect.matchCauseEffect({
        onSuccess: () =>
          Effect.sync(() => {
            failures = 0
            settle(message, "ack")
          }),
        // The database is away (or refused): back off, then the message goes back to the queue.
        onFailure: (cause) =>
          Effect.gen(function*() {
            failures++
            yield* Effect.logError("recording a dead letter failed; it goes back to its queue").pipe(
              Effect.annotateLogs({ cause: Cause.pretty(cause), failures })
            )
            yield* Effect.sleep(Duration.millis(Math.min(200 * 2 ** Math.min(failures, 8), 30_000)))
            settle(message, "requeue")
          })
      })
    )

  const session = Effect.scoped(Effect.gen(function*() {
    const via = deliveryChannel(yield* broker.channel)
    // Runs before the channel closes: acks held for coalescing go out.
    yield* Effect.addFinalizer(() => Effect.sync(() => via.flush()))
    yield* Effect.tryPromise({ try: () => via.channel.prefetch(spec.prefetch), catch: brokerError })
    const stop = yield* Deferred.make<void>()
    yield* deliveries(via, spec, counter, stop).pipe(Stream.runForEach(handle))
  }))

  yield* Effect.gen(function*() {
    while (true) {
      yield* session.pipe(
        Effect.catchCause((cause) => Effect.logWarning("dead-letter recorder session ended").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) })))
      )
      yield* Effect.sleep("250 millis")
    }
  }).pipe(Effect.annotateLogs({ queue: spec.queue }), Effect.forkScoped)
  yield* Effect.logInfo("dead-letter recorder started").pipe(Effect.annotateLogs({ queue: spec.queue }))
}))

/**
 * `failed_events` kept `FAILED_EVENTS_RETENTION`, then deleted in batches every
 * `FAILED_EVENTS_PURGE_INTERVAL` (as the relay does for the outbox), so the table does not
 * grow forever; replayed or not, a record past retention goes.
 */
export const retentionLayer = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RuntimeConfig
  const failedEvents = yield* FailedEvents
  const purge = Effect.gen(function*() {
    const cutoff = new Date((yield* Clock.currentTimeMillis) - Duration.toMillis(config.failedEvents.retention))
    let deleted = 0
    while (true) {
      const n = yield* failedEvents.purge(cutoff, purgeBatch)
      deleted += n
      if (n < purgeBatch) break
    }
    if (deleted > 0) {
      yield* Effect.logInfo("dead letters past retention deleted").pipe(Effect.annotateLogs({ deleted, failed_before: cutoff.toISOString() }))
    }
  }).pipe(
    Effect.catchCause((cause) =>
      Effect.logWarning("dead-letter purge failed; the next one retries").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) }))
    ),
    Effect.withSpan("failed_events.purge")
  )
  yield* purge.pipe(Effect.repeat(Schedule.spaced(config.failedEvents.purgeInterval)), Effect.forkScoped)
}))

/** The recorder and the retention, as the runtime starts them beside the consumers. */
export const layer = Layer.merge(recorderLayer, retentionLayer)
