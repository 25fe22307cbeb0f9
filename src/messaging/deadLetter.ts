import type amqp from "amqplib"
import { Cause, DateTime, Duration, Effect, Exit, Metric, Option } from "effect"
import type { DeadLetterSettings, Topology } from "../config.ts"
import type { InventoryError } from "../domain/errors.ts"
import { fateOf, fates } from "../domain/fates.ts"
import { bodyDigest, deriveId } from "../domain/ids.ts"
import { type Decoded, peek } from "../pipeline/decode.ts"
import type { Failure } from "../pipeline/pipeline.ts"
import { outageBackoff } from "../pipeline/policy.ts"
import { eventsDeadLettered } from "../observability/metrics.ts"
import type { FailedEvent } from "../stores/model.ts"
import { FailedEvents } from "../stores/services.ts"
import type { InboundMessage } from "./inbound.ts"
import { Publisher, PublishError } from "./publisher.ts"

/** The headers SPEC 5 adds to a dead-lettered message. */
export const deadLetterHeaders = {
  errorType: "x-error-type",
  errorMessage: "x-error-message",
  originalExchange: "x-original-exchange",
  originalRoutingKey: "x-original-routing-key",
  failedAt: "x-failed-at",
  attempts: "x-attempts",
  /** The record's id: the dead-letter recorder marks the record copied when the copy reaches it. */
  id: "x-dead-letter-id"
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

/** Longest text kept in a record's fields; header values and error messages get more room. */
const fieldLimit = 255
const messageLimit = 2000
const headerValueLimit = 4096
/** The record's headers (jsonb) stay under this many characters of JSON. */
const headerRecordLimit = 64 * 1024

const loneSurrogate = /[\uD800-\uDBFF](?![\uDC00-\uDFFF])|(?<![\uD800-\uDBFF])[\uDC00-\uDFFF]/g

/**
 * Text PostgreSQL can always store (`text` and `jsonb` refuse NUL, `jsonb` lone surrogates): NUL
 * becomes a visible `\u0000`, a lone surrogate U+FFFD, and the result is cut to `limit`.
 */
export const storableText = (text: string, limit: number): string =>
  text.replace(loneSurrogate, "\uFFFD").replaceAll("\u0000", "\\u0000").slice(0, limit).replace(loneSurrogate, "")

/** Printable ASCII only, every other character as a visible `\uXXXX`: the parked record's fields. */
export const asciiText = (text: string, limit: number): string =>
  text.replace(/[^\x20-\x7e]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`).slice(0, limit)

const storableOrNull = (text: string | null | undefined, limit = fieldLimit) =>
  typeof text === "string" ? storableText(text, limit) : null

/**
 * The message's own headers with a plain value, for the record: `dlq replay` sends them again,
 * so a replayed event stays in its trace (`traceparent`) and keeps what its publisher attached.
 * Names and strings are made storable and cut; past the record's budget, headers are left out.
 */
export const carriedHeaders = (headers: Readonly<Record<string, unknown>>): Record<string, string | number | boolean> => {
  const carried: Record<string, string | number | boolean> = {}
  let size = 2
  for (const [rawName, value] of Object.entries(headers)) {
    if (bookkeeping.test(rawName)) continue
    const plain = typeof value === "string"
      ? storableText(value, headerValueLimit)
      : typeof value === "boolean" || (typeof value === "number" && Number.isFinite(value))
      ? value
      : undefined
    if (plain === undefined) continue
    const name = storableText(rawName, fieldLimit)
    const added = JSON.stringify(name).length + JSON.stringify(plain).length + 2
    if (size + added > headerRecordLimit) continue
    carried[name] = plain
    size += added
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

/** What became of a message on the dead-letter path; the consumer settles it accordingly. */
export type DeadLetterResult =
  /** Recorded and copied to the DLQ (now or on an earlier delivery): ack. */
  | { readonly _tag: "DeadLettered"; readonly parked: boolean }
  /** The database is down (its fate is `retry_until_healthy`): back to the queue, pause. */
  | { readonly _tag: "StoreUnavailable" }
  /** The DLQ copy was not confirmed even in its minimal form (broker away?): back to the queue, counted. */
  | { readonly _tag: "CopyUnconfirmed" }
  /** Not even the minimal record could be written: the broker dead-letters it (reject). */
  | { readonly _tag: "Unrecordable" }

/** What the dead-letter path needs from the settings. */
export interface DeadLetterConfig {
  readonly topology: Topology
  readonly deadLetter: DeadLetterSettings
}

interface Attempt {
  readonly id: string
  readonly record: FailedEvent
  /** The DLQ copy's properties and headers besides ours. */
  readonly carried: { readonly options: amqp.Options.Publish; readonly headers: Readonly<Record<string, unknown>> }
}

/**
 * How long a dead letter whose copy may already be in the DLQ waits for the recorder to say so
 * before it is copied again: long enough for a connection the broker closed to come back and the
 * recorder to read what it holds.
 */
const copySeenWait = Duration.seconds(5)
const copySeenPoll = Duration.millis(100)

/**
 * Whether the dead-letter recorder has marked the record copied within `copySeenWait`: it does
 * so for every copy of ours that reaches its queue, which is bound to the DLQ's exchange as the
 * DLQ is. In real time: it waits for another consumer, not for this fiber's clock.
 */
const seenByRecorder = (failedEvents: FailedEvents["Service"], id: string) =>
  Effect.gen(function*() {
    const deadline = Date.now() + Duration.toMillis(copySeenWait)
    while (true) {
      const record = yield* failedEvents.get(id)
      if (Option.isSome(record) && record.value.dlq_copied_at !== null) return true
      if (Date.now() >= deadline) return false
      yield* Effect.promise(() => new Promise<void>((resolve) => setTimeout(resolve, Duration.toMillis(copySeenPoll))))
    }
  })

/**
 * SPEC 5's protocol: record first (a redelivery finds the record of its first delivery), copy
 * to the DLQ once and wait for the confirm, then mark the record copied. A record already
 * copied means the ack was lost: nothing is copied again.
 *
 * A copy may also have reached the DLQ with nothing marked: the broker took it and its confirm
 * never came (the connection died first, or it came after the publish timeout), or the process
 * died between the confirm and the mark. Nothing on this side tells such a copy from a lost one,
 * but the recorder sees it (its queue is bound to the same exchange) and marks the record by the
 * copy's `x-dead-letter-id`. So when the record is an earlier delivery's, left unmarked, the
 * recorder's mark is waited for, up to `copySeenWait`, before copying again (`deadLetter` does
 * the same after a copy of this delivery went out unconfirmed). What is left of AMQP's window is
 * a recorder that does not read its queue within that wait.
 */
const recordThenCopy = (topology: Topology, message: InboundMessage, attempt: Attempt) =>
  Effect.gen(function*() {
    const publisher = yield* Publisher
    const failedEvents = yield* FailedEvents
    const stored = yield* failedEvents.record(attempt.record)
    if (stored.dlq_copied_at !== null) {
      yield* Effect.logInfo("message was dead-lettered before; acknowledging its redelivery").pipe(
        Effect.annotateLogs({ dead_letter_id: attempt.id, error_type: stored.error_type })
      )
      return false
    }
    // Every delivery stamps its attempt with its own `failed_at`; the stored record keeps the
    // first one's, so a different time means the record is an earlier delivery's.
    const earlier = stored.failed_at.getTime() !== attempt.record.failed_at.getTime()
    if (earlier && (yield* seenByRecorder(failedEvents, attempt.id))) {
      yield* Effect.logInfo("an earlier copy of this dead letter reached the DLQ; not copying it again").pipe(
        Effect.annotateLogs({ dead_letter_id: attempt.id, error_type: stored.error_type })
      )
      return true
    }
    yield* publisher.publish({
      exchange: topology.deadLetterExchange,
      routingKey: message.routingKey,
      body: message.delivery.body,
      ownHeaders: Object.values(deadLetterHeaders),
      options: {
        ...attempt.carried.options,
        persistent: true,
        headers: {
          ...attempt.carried.headers,
          [deadLetterHeaders.errorType]: stored.error_type,
          [deadLetterHeaders.errorMessage]: stored.error_message,
          [deadLetterHeaders.originalExchange]: message.exchange,
          [deadLetterHeaders.originalRoutingKey]: message.routingKey,
          [deadLetterHeaders.failedAt]: stored.failed_at.toISOString(),
          [deadLetterHeaders.attempts]: message.delivery.deliveryCount,
          [deadLetterHeaders.id]: attempt.id
        }
      }
    })
    // Once the DLQ has confirmed the copy its mark has to land: an outage here is waited out (the
    // message stays unsettled, as any other does during an outage), never answered by returning
    // the message, whose redelivery would find the record unmarked and copy it again.
    yield* failedEvents.markCopied(attempt.id, yield* DateTime.nowAsDate).pipe(
      Effect.tapError((error) =>
        Effect.logWarning("dead letter copied but not yet marked; waiting for the database").pipe(
          Effect.annotateLogs({ dead_letter_id: attempt.id, error_type: stored.error_type, cause: error.message })
        )
      ),
      Effect.retry(outageBackoff)
    )
    return true
  })

/** Whether a failure is an outage of the store, decided by the fate table (an outage never dead-letters). */
const storeDown = (cause: Cause.Cause<unknown>): boolean =>
  cause.reasons.some((r) =>
    Cause.isFailReason(r) && isInventoryError(r.error) && fateOf(r.error) === "retry_until_healthy"
  )
const publishFailed = (cause: Cause.Cause<unknown>): boolean =>
  cause.reasons.some((r) => Cause.isFailReason(r) && r.error instanceof PublishError)
/** A copy went out and no confirm came back: the DLQ may hold it. */
const maybeDelivered = (cause: Cause.Cause<unknown>): boolean =>
  cause.reasons.some((r) => Cause.isFailReason(r) && r.error instanceof PublishError && r.error.maybeDelivered === true)

const isInventoryError = (error: unknown): error is InventoryError =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" && Object.hasOwn(fates, error._tag)

/** The first line of a failure, for the parked record's reason. */
const reasonOf = (cause: Cause.Cause<unknown>): string => Cause.pretty(cause).split("\n")[0] ?? "unknown failure"

/**
 * Moves a message that failed for good to the DLQ, byte for byte, with the failure in its
 * headers, and into `FailedEvents`, so the DLQ's TTL and length cap never lose it; the caller
 * acks on `DeadLettered`. It always terminates (SPEC 5): the record is one the database can hold
 * (text escaped and cut, the body in `bytea` up to `DLQ_BODY_MAX_BYTES`); a failure that is not
 * an outage gets `DLQ_RECORD_ATTEMPTS` attempts, then the message is parked with a minimal
 * record (plain ASCII, no headers) and a copy with only our headers, so it is never requeued
 * without bound. An outage of the store still returns it to the queue and pauses.
 */
export const deadLetter = (config: DeadLetterConfig, message: InboundMessage, failure: Failure, decoded: Decoded | null) =>
  Effect.gen(function*() {
    const id = deadLetterId(message, decoded)
    const failedAt = yield* DateTime.nowAsDate
    const seen = peek(message.delivery.body, message.delivery.messageId)
    const body = message.delivery.body
    const cut = body.subarray(0, config.deadLetter.bodyMaxBytes)
    const full: FailedEvent = {
      id,
      event_id: storableOrNull(decoded?.eventId ?? seen.eventId, 512),
      event_type: storableOrNull(decoded?.event.event ?? seen.eventType),
      organization_id: storableOrNull(decoded?.event.organization_id ?? seen.organizationId),
      error_type: storableText(failure.errorType, fieldLimit),
      error_message: storableText(failure.message, messageLimit),
      body: cut,
      body_sha256: bodyDigest(body),
      body_length: body.length,
      content_type: storableOrNull(typeof message.properties.contentType === "string" ? message.properties.contentType : null),
      original_exchange: storableText(message.exchange, fieldLimit),
      original_routing_key: storableText(message.routingKey, fieldLimit),
      attempts: message.delivery.deliveryCount,
      failed_at: failedAt,
      replay_count: 0,
      last_replayed_at: null,
      dlq_copied_at: null,
      headers: carriedHeaders(message.headers)
    }
    // The copy never carries the broker's `x-death` headers: the recorder tells
    // the broker's dead letters from ours by it, whatever `x-error-type` a publisher forged.
    const carried = {
      options: carriedProperties(message.properties),
      headers: Object.fromEntries(Object.entries(message.headers).filter(([name]) => !/^x-(death|first-death-|last-death-)/.test(name)))
    }

    const attempt = Effect.exit(recordThenCopy(config.topology, message, { id, record: full, carried }))
    let first = yield* attempt
    // Another attempt only for what is neither an outage nor an unconfirmed copy: those would fail the same way now.
    for (let n = 1; n < config.deadLetter.attempts && Exit.isFailure(first) && !storeDown(first.cause) && !publishFailed(first.cause); n++) {
      first = yield* attempt
    }
    if (Exit.isSuccess(first)) return yield* counted(message, failure, first.value, false)
    const firstCause = first.cause
    if (storeDown(firstCause)) {
      yield* Effect.logWarning("dead-lettering waits for the database; message returned to the queue").pipe(
        Effect.annotateLogs({ dead_letter_id: id, error_type: full.error_type, cause: Cause.pretty(firstCause) })
      )
      return { _tag: "StoreUnavailable" } as DeadLetterResult
    }
    // The copy went out and its confirm did not come back (the connection died first, say): the
    // DLQ may hold it, and the recorder says so. Parking would copy it a second time.
    if (maybeDelivered(firstCause)) {
      const seen = yield* Effect.flatMap(FailedEvents, (failedEvents) => seenByRecorder(failedEvents, id)).pipe(Effect.orElseSucceed(() => false))
      if (seen) {
        yield* Effect.logInfo("the dead letter's copy was not confirmed, but it reached the DLQ").pipe(
          Effect.annotateLogs({ dead_letter_id: id, error_type: full.error_type })
        )
        return yield* counted(message, failure, true, false)
      }
    }

    // Parked: plain ASCII fields, no headers, a copy with only ours. The reason is kept.
    const reason = asciiText(reasonOf(firstCause), 500)
    yield* Effect.logError("dead-letter record or copy failed; parking the message with a minimal record").pipe(
      Effect.annotateLogs({ dead_letter_id: id, error_type: full.error_type, cause: Cause.pretty(firstCause) })
    )
    const minimal: FailedEvent = {
      ...full,
      event_id: full.event_id === null ? null : asciiText(full.event_id, fieldLimit),
      event_type: full.event_type === null ? null : asciiText(full.event_type, fieldLimit),
      organization_id: full.organization_id === null ? null : asciiText(full.organization_id, fieldLimit),
      error_type: asciiText(full.error_type, fieldLimit),
      error_message: asciiText(`${failure.message.slice(0, 1000)} [parked: ${reason}]`, messageLimit),
      content_type: null,
      original_exchange: asciiText(full.original_exchange, fieldLimit),
      original_routing_key: asciiText(full.original_routing_key, fieldLimit),
      headers: {}
    }
    const parked = yield* recordThenCopy(config.topology, message, { id, record: minimal, carried: { options: {}, headers: {} } }).pipe(
      Effect.exit
    )
    if (Exit.isSuccess(parked)) return yield* counted(message, failure, parked.value, true)
    const parkedCause = parked.cause
    yield* Effect.logError("parking the dead letter failed too").pipe(
      Effect.annotateLogs({ dead_letter_id: id, cause: Cause.pretty(parkedCause) })
    )
    if (storeDown(parkedCause)) return { _tag: "StoreUnavailable" } as DeadLetterResult
    if (publishFailed(parkedCause)) return { _tag: "CopyUnconfirmed" } as DeadLetterResult
    return { _tag: "Unrecordable" } as DeadLetterResult
  })

const counted = (message: InboundMessage, failure: Failure, copied: boolean, parked: boolean) =>
  Effect.as(
    copied
      ? Metric.update(Metric.withAttributes(eventsDeadLettered, { queue: message.delivery.queue, error_type: failure.errorType }), 1)
      : Effect.void,
    { _tag: "DeadLettered", parked } as DeadLetterResult
  )
