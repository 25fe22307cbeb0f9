import amqp from "amqplib"
import { Writable } from "node:stream"
import { Context, Effect, FiberSet, Layer, Option, Redacted, Schema, type Scope } from "effect"
import { Readiness } from "../observability/health.ts"
import { type BrokerSettings, brokerUrls, displayUrl, RuntimeConfig, type Topology } from "../config.ts"
import { declareTopology } from "./topology.ts"

/**
 * Closes a channel; settles once it is closed, however that happens. amqplib's `close()` waits
 * for the broker's close-ok and never settles when the connection dies meanwhile: the channel is
 * closed with the connection, but the promise stays pending. A finalizer awaiting it then never
 * ended, nor did the shutdown of a replica paused past its heartbeats and let go
 * (test/messaging/frozen-replica.test.ts).
 */
export const closeChannel = (channel: amqp.Channel): Promise<void> =>
  new Promise<void>((resolve) => {
    const done = () => {
      channel.removeListener("close", done)
      resolve()
    }
    channel.once("close", done)
    channel.close().then(done, done)
  })

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

  /**
   * One attempt, no recovery: for operator commands, which should fail within seconds and say
   * why (wrong credentials, unknown vhost, nothing listening) rather than wait for the broker.
   */
  static readonly layerConnectOnce = Layer.effect(
    Broker,
    Effect.gen(function*() {
      const config = yield* RuntimeConfig
      return yield* make(config.broker, config.topology, { connectOnce: true })
    })
  )
}

/** One node as amqplib's connect options: the URL's fields, heartbeat from the URL or the settings. */
const dialTarget = (raw: string, heartbeatSeconds: number): amqp.Options.Connect => {
  const url = new URL(raw)
  const query = (name: string) => (url.searchParams.has(name) ? Number(url.searchParams.get(name)) : undefined)
  const target: amqp.Options.Connect = {
    protocol: url.protocol.replace(/:$/, ""),
    hostname: url.hostname.replace(/^\[|\]$/g, ""),
    // amqplib unescapes the vhost itself; "" is "/".
    vhost: url.pathname.slice(1),
    heartbeat: query("heartbeat") ?? heartbeatSeconds
  }
  if (url.port !== "") target.port = Number(url.port)
  // Neither given: amqplib's guest/guest, as for a URL without credentials.
  if (url.username !== "" || url.password !== "") {
    target.username = decodeURIComponent(url.username)
    target.password = decodeURIComponent(url.password)
  }
  const frameMax = query("frameMax")
  const channelMax = query("channelMax")
  const locale = url.searchParams.get("locale")
  if (frameMax !== undefined) target.frameMax = frameMax
  if (channelMax !== undefined) target.channelMax = channelMax
  if (locale !== null) target.locale = locale
  return target
}

/**
 * The broker nodes, tried in turn (issue 17): amqplib 2.3's recovering connection dials one
 * fixed target and takes no list, but reads that target's fields on every attempt. So it gets an
 * object whose fields are the current node's, and a failed attempt or a lost connection moves
 * to the next node: a cluster's nodes all serve the same queues, and the backoff still applies.
 */
const rotatingTarget = (settings: BrokerSettings) => {
  const urls = brokerUrls(Redacted.value(settings.url))
  const nodes = urls.map((url) => ({ target: dialTarget(url, settings.heartbeatSeconds), shown: displayUrl(Redacted.make(url)) }))
  let current = 0
  const node = () => nodes[current]!.target
  // amqplib reads an absent field as undefined (default port, guest/guest, its frame size).
  const target = {
    get protocol() { return node().protocol },
    get hostname() { return node().hostname },
    get port() { return node().port },
    get username() { return node().username },
    get password() { return node().password },
    get vhost() { return node().vhost },
    get heartbeat() { return node().heartbeat },
    get frameMax() { return node().frameMax },
    get channelMax() { return node().channelMax },
    get locale() { return node().locale }
  } as amqp.Options.Connect
  return {
    target,
    /** The node dialled now, password hidden. */
    shown: () => nodes[current]!.shown,
    next: () => {
      current = (current + 1) % nodes.length
    }
  }
}

/**
 * amqplib hands every frame to the socket with a `write` of its own (its Mux loops over the
 * channels' frames in one turn of the event loop), and each became a system call: a relay round
 * of 100 messages was 100 writes to the broker's socket, and the socket writes measured the
 * largest single share of the message path's CPU (issue 18). Corked from the first write of a turn
 * until the next tick, the frames written in one turn leave in one `writev`, in the same order
 * and before anything else runs. amqplib does not type its socket (`stream`); if it is not there,
 * or not a stream, nothing changes.
 */
const coalesced = new WeakSet<Writable>()
const coalesceWrites = (connection: amqp.Connection): void => {
  const socket = (connection as unknown as { readonly stream?: unknown }).stream
  if (!(socket instanceof Writable) || coalesced.has(socket)) return
  coalesced.add(socket)
  const write = socket.write
  let corked = false
  const uncork = () => {
    corked = false
    socket.uncork()
  }
  socket.write = function(this: Writable, ...args: Parameters<Writable["write"]>) {
    if (!corked) {
      corked = true
      socket.cork()
      process.nextTick(uncork)
    }
    return write.apply(this, args)
  } as Writable["write"]
}

const make = Effect.fnUntraced(function*(settings: BrokerSettings, topology: Topology, options: { readonly connectOnce?: boolean } = {}) {
  const connectOnce = options.connectOnce === true
  const run = yield* FiberSet.makeRuntime<never>()
  const log = (effect: Effect.Effect<void>) => {
    run(effect)
  }
  const nodes = rotatingTarget(settings)
  let connected = false

  const connection = yield* Effect.acquireRelease(
    Effect.tryPromise({
      try: async () => {
        const model = await amqp.connect(nodes.target, {
          timeout: 10_000,
          clientProperties: { connection_name: "inventory-event-consumer" },
          recovery: {
            initialDelay: settings.reconnectInitialDelayMs,
            maxDelay: settings.reconnectMaxDelayMs,
            factor: 2,
            jitter: 0.3,
            maxRetries: connectOnce ? 0 : Infinity,
            initialMaxRetries: connectOnce ? 0 : settings.connectAttempts === 0 ? Infinity : settings.connectAttempts,
            waitForConnect: false,
            setup: async (model: amqp.ChannelModel) => {
              const channel = await model.createChannel()
              try {
                await declareTopology(channel, topology)
              } finally {
                await closeChannel(channel)
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
        model.on("connect", () => log(Effect.logInfo("broker connected; topology declared").pipe(Effect.annotateLogs({ broker: nodes.shown() }))))
        model.on("disconnect", (error: Error) => {
          log(Effect.logWarning("broker connection lost").pipe(Effect.annotateLogs({ broker: nodes.shown(), reason: error.message })))
          nodes.next()
        })
        model.on("connect-failed", (error: Error) => {
          // Connecting once, the failure is the result: the caller reports it, once.
          if (!connectOnce) log(Effect.logWarning("broker connection attempt failed").pipe(Effect.annotateLogs({ broker: nodes.shown(), reason: error.message })))
          nodes.next()
        })
        model.on("reconnect-scheduled", (info: { attempt: number; delay: number }) =>
          log(Effect.logInfo("broker reconnect scheduled").pipe(Effect.annotateLogs({ broker: nodes.shown(), attempt: info.attempt, delay_ms: info.delay }))))
        model.on("reconnect-failed", (error: Error) =>
          connectOnce ? undefined : log(Effect.logError("broker recovery gave up").pipe(Effect.annotateLogs({ broker: nodes.shown(), reason: error.message }))))
        model.on("blocked", (reason: string) => log(Effect.logWarning("broker blocked publishing").pipe(Effect.annotateLogs({ reason }))))
        model.on("unblocked", () => log(Effect.logInfo("broker unblocked publishing")))
        // Errors also arrive as `disconnect`; a listener keeps them from crashing the process.
        model.on("error", () => undefined)
        await model.waitForConnect()
        connected = true
        return model
      },
      catch: (cause) => new BrokerError({ message: `Cannot connect to ${displayUrl(settings.url)}: ${brokerError(cause).message}` })
    }),
    // amqplib's close waits for the broker's close-ok, and never settles when the connection dies
    // meanwhile (as `closeChannel` says of channels): bounded, so shutdown goes on regardless.
    (model) => Effect.promise(() => model.close().catch(() => undefined)).pipe(Effect.timeoutOption("5 seconds"))
  )

  // Waiting for a channel stays interruptible (the broker may be away for long); a channel that
  // arrives after its waiter gave up is closed rather than leaked.
  const scopedChannel = <C extends amqp.Channel>(open: () => Promise<C>) =>
    Effect.uninterruptibleMask((restore) => {
      let opening: Promise<C> | undefined
      return restore(Effect.tryPromise({ try: () => (opening = open()), catch: brokerError })).pipe(
        Effect.onInterrupt(() =>
          Effect.sync(() => {
            opening?.then(closeChannel).catch(() => undefined)
          })
        ),
        Effect.tap((channel) => {
          // A channel error also closes it; the `close` event is what users watch.
          channel.on("error", () => undefined)
          // Every connection amqplib (re)opens serves channels: its socket is set up with the first.
          coalesceWrites(channel.connection)
          return Effect.addFinalizer(() => Effect.promise(() => closeChannel(channel)))
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
