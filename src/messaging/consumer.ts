import type amqp from "amqplib"
import { Cause, Deferred, Duration, Effect, Exit, FiberSet, Metric, Option, Queue, Schedule, type Scope, Stream } from "effect"
import type { ConsumerQueue, QueueType, Topology } from "../config.ts"
import { RuntimeConfig } from "../config.ts"
import { orderingKey } from "../domain/events.ts"
import { bodyDigest } from "../domain/ids.ts"
import { abandonDelivery, type DeliveryTrace, finishDelivery, startDelivery, within } from "../observability/consumer.ts"
import { Readiness } from "../observability/health.ts"
import { consumerPaused } from "../observability/metrics.ts"
import { noStackTrace } from "../observability/spans.ts"
import { type Decoded, decodeDelivery, peek } from "../pipeline/decode.ts"
import { EventApplier } from "../pipeline/batch.ts"
import type { Outcome } from "../pipeline/pipeline.ts"
import { ProcessingPolicy } from "../pipeline/policy.ts"
import type { ReservationTimers } from "../reservations/ReservationTimers.ts"
import { type Stores, StoreHealth } from "../stores/services.ts"
import { describeRole, trackActivity } from "./activity.ts"
import { Broker, BrokerError, brokerError } from "./connection.ts"
import { deadLetter } from "./deadLetter.ts"
import { deliveryChannel, type DeliveryChannel, type InboundMessage, settle, type Settlement } from "./inbound.ts"
import type { Publisher } from "./publisher.ts"
import { OutboxRelay } from "./relay.ts"

/**
 * How many times a message has been delivered, 1 the first time.
 *
 * Quorum queues count for us (`x-delivery-count`, absent on the first delivery). Classic queues
 * only say `redelivered`, so the count is kept in this process, keyed by `messageId` (else the
 * body's digest). Its limitation: the count starts over when the process restarts or another
 * replica receives the message, so on classic queues `MAX_DELIVERIES` is a per-process bound.
 */
export interface DeliveryCounter {
  count(message: amqp.ConsumeMessage): number
  /** Forget a message that reached its final outcome. */
  forget(message: amqp.ConsumeMessage): void
}

const classicCounterLimit = 10_000

export const deliveryCounter = (queueType: QueueType): DeliveryCounter => {
  if (queueType === "quorum") {
    return {
      count: (message) => {
        const header = message.properties.headers?.["x-delivery-count"]
        const previous = typeof header === "number" ? header : typeof header === "bigint" ? Number(header) : 0
        return previous + 1
      },
      forget: () => undefined
    }
  }
  const counts = new Map<string, number>()
  const identity = (message: amqp.ConsumeMessage) =>
    typeof message.properties.messageId === "string" ? `id:${message.properties.messageId}` : `sha:${bodyDigest(message.content)}`
  return {
    count: (message) => {
      const key = identity(message)
      const count = message.fields.redelivered ? (counts.get(key) ?? 1) + 1 : 1
      counts.delete(key)
      counts.set(key, count)
      // Oldest first in a Map: bound memory when messages are never seen again.
      if (counts.size > classicCounterLimit) counts.delete(counts.keys().next().value!)
      return count
    },
    forget: (message) => {
      counts.delete(identity(message))
    }
  }
}

const toInbound = (via: DeliveryChannel, spec: ConsumerQueue, counter: DeliveryCounter, raw: amqp.ConsumeMessage): InboundMessage => ({
  delivery: {
    body: raw.content,
    messageId: typeof raw.properties.messageId === "string" ? raw.properties.messageId : undefined,
    headers: raw.properties.headers ?? {},
    deliveryCount: counter.count(raw),
    queue: spec.queue,
    accepts: spec.eventTypes
  },
  exchange: raw.fields.exchange,
  routingKey: raw.fields.routingKey,
  headers: raw.properties.headers ?? {},
  properties: raw.properties,
  deliveryTag: raw.fields.deliveryTag,
  redelivered: raw.fields.redelivered,
  via,
  raw
})

/**
 * The deliveries of one queue on one channel, with manual ack, as a stream. It ends when `stop`
 * completes (the consumer is cancelled first, so nothing more arrives), when the channel closes,
 * or when the broker cancels the consumer.
 */
export const deliveries = (
  via: DeliveryChannel,
  spec: ConsumerQueue,
  counter: DeliveryCounter,
  stop: Deferred.Deferred<void>
): Stream.Stream<InboundMessage, BrokerError> =>
  Stream.callback<InboundMessage, BrokerError>((queue) =>
    Effect.gen(function*() {
      const end = () => {
        Queue.endUnsafe(queue)
      }
      via.channel.once("close", end)
      yield* Effect.addFinalizer(() => Effect.sync(() => via.channel.removeListener("close", end)))
      if (!via.isOpen()) return end()
      const { consumerTag } = yield* Effect.tryPromise({
        try: () =>
          via.channel.consume(spec.queue, (raw) => {
            if (raw === null) return end()
            via.received(raw)
            Queue.offerUnsafe(queue, toInbound(via, spec, counter, raw))
          }, { noAck: false }),
        catch: brokerError
      })
      // After cancel-ok nothing more arrives for this consumer: every delivery is in the buffer.
      yield* Deferred.await(stop).pipe(
        Effect.andThen(Effect.tryPromise(() => via.channel.cancel(consumerTag)).pipe(Effect.ignore)),
        Effect.andThen(Queue.end(queue)),
        Effect.forkScoped
      )
    })
  )

type Work = {
  readonly message: InboundMessage
  readonly decoded: Decoded | null
  readonly failure: Outcome | null
  /** The message's consumer span, open from arrival to settlement. */
  readonly trace: DeliveryTrace
  /** Already moved behind the rest of its lane once (see `runLane`). */
  readonly deferred?: boolean
}

interface Round {
  /** Set when a message asked consumption to hold until the database answers. */
  pausing: boolean
  readonly stop: Deferred.Deferred<void>
}

const storeBackoff = Schedule.exponential("200 millis", 2).pipe(
  Schedule.modifyDelay(({ output }) => Effect.succeed(Duration.min(output, Duration.seconds(10)))),
  Schedule.jittered
)

/**
 * Consumes one queue until the scope closes (issue 4). Messages of one ordering key run one at
 * a time in delivery order; different keys run in parallel, up to the prefetch. Outcomes:
 * Ack/Duplicate ack; DeadLetter publishes to the DLQ, records, then acks; Retry requeues (and
 * requeues the key's later messages behind it, to keep their order), and with `pause` cancels
 * the subscription until `StoreHealth.ping` answers. A lost channel ends the session: what it
 * delivered is never settled elsewhere, and a new channel subscribes again.
 *
 * On scope close (SIGTERM) the subscription is cancelled, messages already delivered get
 * `shutdownTimeout` to finish, and whatever is left goes back to the queue.
 */
export const consume = (
  spec: ConsumerQueue
): Effect.Effect<void, never, Scope.Scope | Broker | Publisher | OutboxRelay | RuntimeConfig | Stores | ReservationTimers> =>
  Effect.gen(function*() {
    const broker = yield* Broker
    const config = yield* RuntimeConfig
    const relay = yield* OutboxRelay
    const health = yield* StoreHealth
    const counter = deliveryCounter(config.topology.queueType)
    const paused = Metric.withAttributes(consumerPaused, { queue: spec.queue })
    let isPaused = false
    yield* Metric.update(paused, 0)
    const activity = yield* trackActivity(spec, config.topology.singleActiveConsumer, config.consumerRoleCheckInterval)
    const readiness = yield* Effect.serviceOption(Readiness)
    if (Option.isSome(readiness)) {
      // A standby is ready: it takes over when the active replica goes.
      yield* readiness.value.register(
        `consumer ${spec.queue}`,
        Effect.sync(() => (isPaused ? "paused until the database answers" : { ok: true, detail: describeRole(activity.role()) }))
      )
    }
    const logged = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.annotateLogs(effect, { queue: spec.queue })

    const shutdown = Deferred.makeUnsafe<void>()
    const finished = Deferred.makeUnsafe<void>()
    let round: Round | undefined

    const session = Effect.scoped(Effect.gen(function*() {
      const via = deliveryChannel(yield* broker.channel)
      yield* Effect.tryPromise({ try: () => via.channel.prefetch(spec.prefetch), catch: brokerError })

      // Registered before the lanes, so it runs after they were interrupted and before the
      // channel closes: whatever is still unsettled goes back to the queue, in delivery order.
      const held = new Map<number, InboundMessage>()
      yield* Effect.addFinalizer(() =>
        Effect.sync(() => {
          via.flush()
          for (const tag of [...held.keys()].sort((a, b) => a - b)) settle(held.get(tag)!, "requeue")
          held.clear()
        })
      )
      const lanes = new Map<string, Array<Work>>()
      const fibers = yield* FiberSet.make<void, never>()

      const finish = (message: InboundMessage, how: Settlement) => {
        held.delete(message.deliveryTag)
        if (how === "ack" || how === "reject") counter.forget(message.raw)
        settle(message, how)
      }

      const act = (
        work: Work,
        current: Round,
        /** Asked when it fails: whether other messages of its key wait behind it now. */
        mayDefer: () => boolean
      ): Effect.Effect<"done" | "requeued" | "deferred", never, Stores | ReservationTimers | Publisher> =>
        Effect.gen(function*() {
          const { message } = work
          const outcome = work.failure ?? (yield* (yield* EventApplier).apply(work.decoded!, message.delivery.deliveryCount))
          switch (outcome._tag) {
            case "Ack":
              finish(message, "ack")
              yield* finishDelivery(work.trace, outcome)
              yield* relay.nudge
              return "done" as const
            case "Duplicate":
              finish(message, "ack")
              yield* finishDelivery(work.trace, outcome)
              return "done" as const
            case "DeadLetter": {
              const result = yield* deadLetter(config, message, outcome.failure, outcome.decoded).pipe(
                Effect.withSpan("inventory.dead_letter", { attributes: { "error.type": outcome.failure.errorType } }, noStackTrace)
              )
              switch (result._tag) {
                case "DeadLettered":
                  finish(message, "ack")
                  yield* finishDelivery(work.trace, outcome, outcome.decoded === null ? peek(message.delivery.body, message.delivery.messageId) : undefined)
                  return "done" as const
                case "StoreUnavailable":
                  // An outage is not the message's fault: back to the queue, uncounted, and pause.
                  current.pausing = true
                  finish(message, "requeue")
                  yield* abandonDelivery(work.trace, `dead-lettering waits for the database (${outcome.failure.errorType})`)
                  return "requeued" as const
                case "CopyUnconfirmed":
                  // Counted, so the queue's x-delivery-limit bounds it if the broker never confirms.
                  finish(message, "retry")
                  yield* abandonDelivery(work.trace, `dead-letter copy unconfirmed (${outcome.failure.errorType})`)
                  return "requeued" as const
                case "Unrecordable":
                  // The broker dead-letters it to the same DLQ (x-death says why): it terminates.
                  finish(message, "reject")
                  yield* abandonDelivery(work.trace, `dead-letter record impossible (${outcome.failure.errorType})`)
                  return "done" as const
              }
            }
            case "Retry":
              if (outcome.failure.errorType === "ReservationNotFound" && mayDefer()) {
                // What it needs (its order.placed) may be right behind it in this lane.
                return "deferred" as const
              }
              yield* Effect.logWarning("message returned to the queue").pipe(
                Effect.annotateLogs({
                  error_type: outcome.failure.errorType,
                  error: outcome.failure.message,
                  delivery_count: message.delivery.deliveryCount,
                  pause: outcome.pause
                })
              )
              if (outcome.pause) current.pausing = true
              // An outage is not the message's fault; a failure that may pass is, and counts.
              finish(message, outcome.pause ? "requeue" : "retry")
              yield* finishDelivery(work.trace, outcome)
              return "requeued" as const
          }
        }).pipe(
          within(work.trace),
          Effect.catchCause((cause) =>
            // A bug in the runtime itself: the message goes back, the consumer goes on.
            Effect.logError("message handling failed unexpectedly").pipe(
              Effect.annotateLogs({ cause: Cause.pretty(cause) }),
              Effect.andThen(Effect.sync(() => finish(work.message, "requeue"))),
              Effect.andThen(abandonDelivery(work.trace, "runtime defect")),
              Effect.as("requeued" as const)
            )
          )
        )

      // One fiber per busy key, working through that key's messages in delivery order.
      const runLane = (key: string, current: Round) =>
        Effect.gen(function*() {
          const lane = lanes.get(key)!
          while (lane.length > 0) {
            const work = lane[0]!
            if (!via.isOpen()) {
              // The broker has taken them back already; acking elsewhere is impossible.
              for (const w of lane) {
                held.delete(w.message.deliveryTag)
                yield* abandonDelivery(w.trace, "channel closed")
              }
              break
            }
            if (current.pausing) {
              finish(work.message, "requeue")
              yield* abandonDelivery(work.trace, "consumption paused")
              lane.shift()
              continue
            }
            // A message failing for want of an earlier event of its key goes once behind the
            // key's other waiting messages: after a requeue or a second consumer, the broker
            // may have delivered a key's events out of order, and the missing one may be here.
            const result = yield* act(work, current, () => work.deferred !== true && lane.length > 1)
            lane.shift()
            if (result === "deferred") {
              lane.push({ ...work, deferred: true })
              continue
            }
            if (result === "requeued") {
              // Later messages of the key go back behind it, so they never overtake it.
              for (const w of lane.splice(0)) {
                finish(w.message, "requeue")
                yield* abandonDelivery(w.trace, "kept behind a requeued message of its key")
              }
            }
            if (current.pausing) Deferred.doneUnsafe(current.stop, Exit.void)
          }
          lanes.delete(key)
        }).pipe(Effect.annotateLogs({ ordering_key: key }))

      const dispatch = (message: InboundMessage, current: Round) =>
        Effect.gen(function*() {
          held.set(message.deliveryTag, message)
          const trace = yield* startDelivery({
            queue: spec.queue,
            exchange: message.exchange,
            routingKey: message.routingKey,
            messageId: message.delivery.messageId,
            headers: message.headers
          })
          const decoded = yield* decodeDelivery(message.delivery).pipe(
            Effect.withSpan("inventory.decode", {}, noStackTrace),
            within(trace),
            Effect.result
          )
          const work: Work = decoded._tag === "Success"
            ? { message, decoded: decoded.success, failure: null, trace }
            : {
              message,
              decoded: null,
              failure: { _tag: "DeadLetter", decoded: null, failure: { errorType: decoded.failure._tag, message: decoded.failure.message } },
              trace
            }
          // Messages that cannot be decoded have no key: each gets its own lane.
          const key = work.decoded ? orderingKey(work.decoded.event) : `undecodable:${message.deliveryTag}`
          const lane = lanes.get(key)
          if (lane) {
            lane.push(work)
            return
          }
          lanes.set(key, [work])
          yield* FiberSet.run(fibers, runLane(key, current))
        })

      while (via.isOpen()) {
        const current: Round = { pausing: false, stop: Deferred.makeUnsafe<void>() }
        round = current
        if (Deferred.isDoneUnsafe(shutdown)) Deferred.doneUnsafe(current.stop, Exit.void)
        yield* activity.subscribed
        yield* deliveries(via, spec, counter, current.stop).pipe(
          Stream.runForEach((message) => Effect.andThen(activity.delivered, dispatch(message, current))),
          Effect.ensuring(activity.unsubscribed)
        )
        yield* FiberSet.awaitEmpty(fibers)
        if (Deferred.isDoneUnsafe(shutdown)) return
        if (!current.pausing) {
          // The broker cancelled us (queue deleted?) or the channel closed: start over.
          if (via.isOpen()) yield* logged(Effect.logWarning("subscription cancelled by the broker"))
          return
        }
        isPaused = true
        yield* Metric.update(paused, 1)
        yield* logged(Effect.logWarning("database unavailable: consumption paused"))
        yield* Effect.raceFirst(
          health.ping.pipe(Effect.retry(storeBackoff), Effect.orDie),
          Deferred.await(shutdown)
        )
        isPaused = false
        yield* Metric.update(paused, 0)
        if (Deferred.isDoneUnsafe(shutdown)) return
        yield* logged(Effect.logInfo("database answers again: consumption resumed"))
      }
    }))

    yield* Effect.gen(function*() {
      while (!Deferred.isDoneUnsafe(shutdown)) {
        yield* session.pipe(
          Effect.catchCause((cause) =>
            logged(Effect.logWarning("consumer session ended").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) })))
          )
        )
        if (!Deferred.isDoneUnsafe(shutdown)) yield* Effect.sleep("250 millis")
      }
    }).pipe(
      Effect.provideService(ProcessingPolicy, config.processing),
      Effect.ensuring(Deferred.succeed(finished, undefined)),
      logged,
      Effect.forkScoped
    )

    // Runs before the fiber above is interrupted: stop subscribing, let in-flight work finish.
    yield* Effect.addFinalizer(() =>
      Effect.gen(function*() {
        Deferred.doneUnsafe(shutdown, Exit.void)
        if (round) Deferred.doneUnsafe(round.stop, Exit.void)
        const done = yield* Deferred.await(finished).pipe(Effect.timeoutOption(config.shutdownTimeout))
        if (done._tag === "None") {
          yield* logged(Effect.logWarning("shutdown deadline passed: unfinished messages go back to the queue"))
        }
      })
    )
    yield* logged(Effect.logInfo("consumer started"))
  })

/** Both inbound queues, consumed until the layer's scope closes. */
export const consumeAll = (topology: Topology) =>
  Effect.forEach([topology.catalog, topology.orders], consume, { discard: true })

export { BrokerError }
