import type amqp from "amqplib"
import { Clock, Context, Deferred, Duration, Effect, Exit, Layer, Option, Schedule, Schema } from "effect"
import { formatTraceparent } from "../observability/spans.ts"
import { parseTraceparent } from "../observability/tracing.ts"
import { RuntimeConfig } from "../config.ts"
import { Broker } from "./connection.ts"
import { shortString, typedHeaders } from "./headers.ts"

/** A publish the broker did not confirm in time, refused, or could not take at all. */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  exchange: Schema.String,
  routingKey: Schema.String,
  message: Schema.String,
  /**
   * The message went out on the channel and no confirm came: the channel closed first, the
   * broker nacked it, or the deadline passed. The broker may have it all the same. Unset: it
   * never left (no channel, or one that refused it at once).
   */
  maybeDelivered: Schema.optional(Schema.Boolean)
}) {}

export interface OutgoingMessage {
  readonly exchange: string
  readonly routingKey: string
  readonly body: Uint8Array
  readonly options: amqp.Options.Publish
  /**
   * W3C traceparent of the work that caused this message when it is not the current span
   * (the outbox relay publishes rows written by earlier transactions).
   */
  readonly causedBy?: string | null | undefined
  /** Headers that must survive when the header table is cut to fit (the publisher's own). */
  readonly ownHeaders?: ReadonlyArray<string> | undefined
}

/** The AMQP short-string properties amqplib refuses past 255 bytes. */
const shortStringProperties = ["messageId", "correlationId", "replyTo", "contentType", "contentEncoding", "type", "appId", "userId", "expiration"] as const

/**
 * What amqplib is given: every header typed for all clients and the table cut to fit, short
 * strings cut to 255 bytes (see headers.ts). Nothing here makes a publish fail.
 */
export const encodable = (
  options: amqp.Options.Publish,
  ownHeaders: ReadonlyArray<string>
): { readonly options: amqp.Options.Publish; readonly dropped: ReadonlyArray<string> } => {
  const fitted = typedHeaders(options.headers ?? {}, (name) => name === "traceparent" || ownHeaders.includes(name))
  const out: Record<string, unknown> = { ...options, headers: fitted.headers }
  for (const property of shortStringProperties) {
    const value = out[property]
    if (typeof value === "string") out[property] = shortString(value)
  }
  return { options: out as amqp.Options.Publish, dropped: fitted.dropped }
}

/**
 * Publishing with publisher confirms on one shared confirm channel, kept open by a background
 * fiber across broker outages. `publish` succeeds only once the broker confirmed the message;
 * while the broker is away it waits at most the configured publish timeout, then fails with
 * `PublishError` (never hangs).
 */
export class Publisher extends Context.Service<Publisher, {
  publish(message: OutgoingMessage): Effect.Effect<void, PublishError>
  /** All at once, each confirmed or not on its own: the error of each message, or `undefined`. */
  publishAll(messages: ReadonlyArray<OutgoingMessage>): Effect.Effect<ReadonlyArray<PublishError | undefined>>
}>()("inventory/messaging/Publisher") {
  static readonly layer = Layer.effect(
    Publisher,
    Effect.gen(function*() {
      const broker = yield* Broker
      const config = yield* RuntimeConfig
      let current = Deferred.makeUnsafe<amqp.ConfirmChannel>()

      const keepOpen = Effect.scoped(Effect.gen(function*() {
        const channel = yield* broker.confirmChannel
        const closed = Deferred.makeUnsafe<void>()
        channel.once("close", () => {
          // Swapped at once, so no publish picks up a channel known to be dead.
          current = Deferred.makeUnsafe()
          Deferred.doneUnsafe(closed, Exit.void)
        })
        Deferred.doneUnsafe(current, Exit.succeed(channel))
        yield* Deferred.await(closed)
      }))
      yield* keepOpen.pipe(
        Effect.catchCause((cause) => Effect.logWarning("publisher channel failed").pipe(Effect.annotateLogs({ cause: String(cause) }))),
        Effect.repeat(Schedule.spaced("250 millis")),
        Effect.forkScoped
      )

      const timeout = config.broker.publishTimeout

      /**
       * Publishes every message on the confirm channel at once and waits for all their confirms
       * (or the timeout), with no fiber per message: the outbox relay sends whole rounds this
       * way (issue 8). Each message still gets its own producer span, whose traceparent it carries.
       */
      const publishAll = (messages: ReadonlyArray<OutgoingMessage>) =>
        Effect.gen(function*() {
          if (messages.length === 0) return []
          const fail = (message: OutgoingMessage, reason: string, maybeDelivered: boolean) =>
            new PublishError({ exchange: message.exchange, routingKey: message.routingKey, message: reason, ...(maybeDelivered ? { maybeDelivered } : {}) })
          const spans = yield* Effect.forEach(messages, (message) => {
            const parent = parseTraceparent(message.causedBy)
            const attributes = {
              "messaging.system": "rabbitmq",
              "messaging.operation": "publish",
              "messaging.operation.type": "send",
              "messaging.destination.name": message.exchange,
              "messaging.rabbitmq.destination.routing_key": message.routingKey,
              "messaging.message.id": typeof message.options.messageId === "string" ? message.options.messageId : ""
            }
            return Effect.makeSpan(
              `${message.exchange} publish`,
              Option.isSome(parent) ? { kind: "producer", parent: parent.value, attributes } : { kind: "producer", attributes }
            )
          })
          const unavailable = `no publisher confirm within ${Duration.format(timeout)} (broker unavailable?)`
          // One deadline for the whole call, on the Effect clock: waiting for a channel and for the confirms.
          const startedAt = yield* Clock.currentTimeMillis
          const channel = yield* Deferred.await(current).pipe(Effect.timeoutOption(timeout))
          const dropped: Array<{ readonly exchange: string; readonly headers: ReadonlyArray<string> }> = []
          // Filled by the confirm callbacks; null while a message waits for its confirm.
          const results = new Array<PublishError | undefined | null>(messages.length).fill(null)
          /** Handed to the channel: an answer that does not come leaves it maybe delivered. */
          const sent = new Array<boolean>(messages.length).fill(false)
          if (Option.isSome(channel)) {
            const left = startedAt + Duration.toMillis(timeout) - (yield* Clock.currentTimeMillis)
            const confirmed = Effect.callback<void>((resume) => {
              let waiting = messages.length
              const settle = (i: number, error: PublishError | undefined) => {
                if (results[i] !== null) return
                results[i] = error
                if (--waiting === 0) resume(Effect.void)
              }
              for (const [i, message] of messages.entries()) {
                try {
                  const body = message.body
                  const content = Buffer.isBuffer(body) ? body : Buffer.from(body.buffer, body.byteOffset, body.byteLength)
                  // The message carries its producer span's traceparent, so its consumers join the trace.
                  const traceparent = formatTraceparent(spans[i]!)
                  const headers = message.options.headers === undefined ? { traceparent } : { ...message.options.headers, traceparent }
                  const encoded = encodable({ ...message.options, headers }, message.ownHeaders ?? [])
                  if (encoded.dropped.length > 0) dropped.push({ exchange: message.exchange, headers: encoded.dropped })
                  channel.value.publish(message.exchange, message.routingKey, content, encoded.options, (error: unknown) => {
                    settle(i, error ? fail(message, `broker did not confirm: ${error instanceof Error ? error.message : String(error)}`, true) : undefined)
                  })
                  sent[i] = true
                } catch (error) {
                  settle(i, fail(message, error instanceof Error ? error.message : String(error), false))
                }
              }
            })
            yield* confirmed.pipe(Effect.timeoutOption(Duration.millis(Math.max(0, left))))
          }
          // Past the deadline (or with no channel) the rest fail; a confirm arriving later finds its result set.
          for (const [i, message] of messages.entries()) if (results[i] === null) results[i] = fail(message, unavailable, sent[i]!)
          for (const cut of dropped) {
            yield* Effect.logWarning("headers left out: the header table would exceed what AMQP can carry").pipe(
              Effect.annotateLogs({ exchange: cut.exchange, headers: cut.headers.slice(0, 20).map((name) => name.slice(0, 100)) })
            )
          }
          const now = yield* Clock.currentTimeNanos
          for (const [i, span] of spans.entries()) {
            const error = results[i]
            span.end(now, error === undefined ? Exit.void : Exit.fail(error))
          }
          return results as Array<PublishError | undefined>
        })

      const publish = (message: OutgoingMessage) =>
        Effect.flatMap(publishAll([message]), ([error]) => (error === undefined ? Effect.void : Effect.fail(error)))

      return Publisher.of({ publish, publishAll })
    })
  )
}
