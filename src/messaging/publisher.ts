import type amqp from "amqplib"
import { Context, Deferred, Duration, Effect, Exit, Layer, Option, Schedule, Schema } from "effect"
import { formatTraceparent, noStackTrace } from "../observability/spans.ts"
import { parseTraceparent } from "../observability/tracing.ts"
import { RuntimeConfig } from "../config.ts"
import { Broker } from "./connection.ts"

/** A publish the broker did not confirm in time, refused, or could not take at all. */
export class PublishError extends Schema.TaggedError<PublishError>()("PublishError", {
  exchange: Schema.String,
  routingKey: Schema.String,
  message: Schema.String
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
}

/**
 * Publishing with publisher confirms on one shared confirm channel, kept open by a background
 * fiber across broker outages. `publish` succeeds only once the broker confirmed the message;
 * while the broker is away it waits at most the configured publish timeout, then fails with
 * `PublishError` (never hangs).
 */
export class Publisher extends Context.Service<Publisher, {
  publish(message: OutgoingMessage): Effect.Effect<void, PublishError>
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
      const publish = (message: OutgoingMessage) => {
        const fail = (reason: string) =>
          new PublishError({ exchange: message.exchange, routingKey: message.routingKey, message: reason })
        return Effect.gen(function*() {
          // The message carries the producer span's traceparent, so its consumers join the trace.
          const span = yield* Effect.currentSpan.pipe(Effect.option)
          const headers = { ...message.options.headers }
          if (span._tag === "Some") headers["traceparent"] = formatTraceparent(span.value)
          const options = { ...message.options, headers }
          const channel = yield* Deferred.await(current)
          yield* Effect.callback<void, PublishError>((resume) => {
            try {
              const content = Buffer.from(message.body.buffer, message.body.byteOffset, message.body.byteLength)
              channel.publish(message.exchange, message.routingKey, content, options, (error: unknown) => {
                resume(error ? Effect.fail(fail(`broker did not confirm: ${error instanceof Error ? error.message : String(error)}`)) : Effect.void)
              })
            } catch (error) {
              resume(Effect.fail(fail(error instanceof Error ? error.message : String(error))))
            }
          })
        }).pipe(
          Effect.timeoutOrElse({
            duration: timeout,
            orElse: () => Effect.fail(fail(`no publisher confirm within ${Duration.format(timeout)} (broker unavailable?)`))
          }),
          Effect.withSpan(`${message.exchange} publish`, {
            kind: "producer",
            ...Option.match(parseTraceparent(message.causedBy), { onNone: () => ({}), onSome: (parent) => ({ parent }) }),
            attributes: {
              "messaging.system": "rabbitmq",
              "messaging.operation": "publish",
              "messaging.operation.type": "send",
              "messaging.destination.name": message.exchange,
              "messaging.rabbitmq.destination.routing_key": message.routingKey,
              "messaging.message.id": typeof message.options.messageId === "string" ? message.options.messageId : ""
            }
          }, noStackTrace)
        )
      }

      return Publisher.of({ publish })
    })
  )
}
