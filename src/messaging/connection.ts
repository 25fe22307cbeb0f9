import amqp from "amqplib"
import { Context, Effect, FiberSet, Layer, Option, Redacted, Schema, type Scope } from "effect"
import { Readiness } from "../observability/health.ts"
import { type BrokerSettings, displayUrl, RuntimeConfig, type Topology } from "../config.ts"
import { declareTopology } from "./topology.ts"

/** The broker could not be reached or refused an operation. */
export class BrokerError extends Schema.TaggedError<BrokerError>()("BrokerError", {
  message: Schema.String
}) {}

export const brokerError = (cause: unknown): BrokerError =>
  new BrokerError({ message: cause instanceof Error ? cause.message : String(cause) })

/**
 * One recovering AMQP connection (issue 4). amqplib reconnects by itself with exponential
 * backoff and jitter, and re-declares the topology before it hands the new connection out, so
 * whoever asks for a channel after an outage gets one on a connection that is ready. Channels
 * are never recovered: a consumer whose channel died asks for a new one.
 */
export class Broker extends Context.Service<Broker, {
  readonly topology: Topology
  /** A channel on the live connection, waiting while the broker is away; closed with the scope. */
  readonly channel: Effect.Effect<amqp.Channel, BrokerError, Scope.Scope>
  /** A confirm-mode channel, as `channel`. */
  readonly confirmChannel: Effect.Effect<amqp.ConfirmChannel, BrokerError, Scope.Scope>
  /** Whether the connection is up right now (false while recovery is under way). */
  readonly connected: Effect.Effect<boolean>
}>()("inventory/messaging/Broker") {
  static readonly layer = Layer.effect(
    Broker,
    Effect.gen(function*() {
      const config = yield* RuntimeConfig
      const broker = yield* make(config.broker, config.topology)
      const readiness = yield* Effect.serviceOption(Readiness)
      if (Option.isSome(readiness)) {
        yield* readiness.value.register("broker", Effect.map(broker.connected, (up) => (up ? true : "connection down; recovering")))
      }
      return broker
    })
  )
}

/** The URL amqplib dials: heartbeat as a query parameter, unless the URL sets one itself. */
const dialUrl = (settings: BrokerSettings): string => {
  const url = new URL(Redacted.value(settings.url))
  if (!url.searchParams.has("heartbeat")) url.searchParams.set("heartbeat", String(settings.heartbeatSeconds))
  return url.toString()
}

const make = Effect.fnUntraced(function*(settings: BrokerSettings, topology: Topology) {
  const run = yield* FiberSet.makeRuntime<never>()
  const log = (effect: Effect.Effect<void>) => {
    run(effect)
  }
  const where = displayUrl(settings.url)
  let connected = false

  const connection = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const model = await amqp.connect(dialUrl(settings), {
          timeout: 10_000,
          clientProperties: { connection_name: "inventory-event-consumer" },
          recovery: {
            initialDelay: settings.reconnectInitialDelayMs,
            maxDelay: settings.reconnectMaxDelayMs,
            factor: 2,
            jitter: 0.3,
            maxRetries: Infinity,
            initialMaxRetries: settings.connectAttempts === 0 ? Infinity : settings.connectAttempts,
            waitForConnect: false,
            setup: async (model: amqp.ChannelModel) => {
              const channel = await model.createChannel()
              try {
                await declareTopology(channel, topology)
              } finally {
                await channel.close().catch(() => undefined)
              }
            }
          }
        })
        model.on("connect", () => {
          connected = true
        })
        model.on("disconnect", () => {
          connected = false
        })
        model.on("connect", () => log(Effect.logInfo("broker connected; topology declared").pipe(Effect.annotateLogs({ broker: where }))))
        model.on("disconnect", (error: Error) =>
          log(Effect.logWarning("broker connection lost").pipe(Effect.annotateLogs({ broker: where, reason: error.message }))))
        model.on("connect-failed", (error: Error) =>
          log(Effect.logWarning("broker connection attempt failed").pipe(Effect.annotateLogs({ broker: where, reason: error.message }))))
        model.on("reconnect-scheduled", (info: { attempt: number; delay: number }) =>
          log(Effect.logInfo("broker reconnect scheduled").pipe(Effect.annotateLogs({ broker: where, attempt: info.attempt, delay_ms: info.delay }))))
        model.on("reconnect-failed", (error: Error) =>
          log(Effect.logError("broker recovery gave up").pipe(Effect.annotateLogs({ broker: where, reason: error.message }))))
        model.on("blocked", (reason: string) => log(Effect.logWarning("broker blocked publishing").pipe(Effect.annotateLogs({ reason }))))
        model.on("unblocked", () => log(Effect.logInfo("broker unblocked publishing")))
        // Errors also arrive as `disconnect`; a listener keeps them from crashing the process.
        model.on("error", () => undefined)
        await model.waitForConnect()
        connected = true
        return model
      },
      catch: (cause) => new BrokerError({ message: `Cannot connect to ${where}: ${brokerError(cause).message}` })
    }),
    (model) => Effect.promise(() => model.close().catch(() => undefined))
  )

  // Waiting for a channel stays interruptible (the broker may be away for long); a channel that
  // arrives after its waiter gave up is closed rather than leaked.
  const scopedChannel = <C extends amqp.Channel>(open: () => Promise<C>) =>
    Effect.uninterruptibleMask((restore) => {
      let opening: Promise<C> | undefined
      return restore(Effect.tryPromise({ try: () => (opening = open()), catch: brokerError })).pipe(
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            opening?.then((late) => late.close()).catch(() => undefined)
          })
        ),
        Effect.tap((channel) => {
          // A channel error also closes it; the `close` event is what users watch.
          channel.on("error", () => undefined)
          return Effect.addFinalizer(() => Effect.promise(() => channel.close().catch(() => undefined)))
        })
      )
    })

  return Broker.of({
    topology,
    channel: scopedChannel(() => connection.createChannel()),
    confirmChannel: scopedChannel(() => connection.createConfirmChannel()),
    connected: Effect.sync(() => connected)
  })
})
