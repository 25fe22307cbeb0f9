import { Cause, Context, Deferred, Effect, Fiber, Metric, Option, Result, Schedule, type Scope, Stream, SubscriptionRef } from "effect"
import type { ConsumerQueue, Topology } from "../config.ts"
import { RuntimeConfig } from "../config.ts"
import { orderingKey } from "../domain/events.ts"
import { Readiness } from "../observability/health.ts"
import { consumerPaused } from "../observability/metrics.ts"
import { noStackTrace } from "../observability/spans.ts"
import { EventApplier } from "../pipeline/batch.ts"
import { type Decoded, decodeWith, peek } from "../pipeline/decode.ts"
import { type Failure, Outcome, undecodable } from "../pipeline/pipeline.ts"
import { outageBackoff, ProcessingPolicy } from "../pipeline/policy.ts"
import { type ReservationTimers, type Stores, StoreHealth } from "../stores/services.ts"
import { Consumption, describeRole, trackActivity } from "./activity.ts"
import { Broker, BrokerError, brokerError } from "./connection.ts"
import { deadLetter } from "./deadLetter.ts"
import { deliveries, deliveryChannel, deliveryCounter, type DeliveryChannel, type InboundMessage, settle, type Settlement } from "./inbound.ts"
import { type Dropped, type Lanes, makeLanes, type Step } from "./lanes.ts"
import type { Publisher } from "./publisher.ts"
import { OutboxRelay } from "./relay.ts"
import { afterDeadLetter, isFinal, returnsToQueue, type Told, verdict, Verdict } from "./settlement.ts"
import { abandonDelivery, type DeliveryTrace, finishDelivery, markDecoded, startDelivery, within } from "./telemetry.ts"

type Work = {
  readonly message: InboundMessage
  /** The decoded event, or the dead letter of a message that could not be decoded. */
  readonly input: Result.Result<Decoded, Outcome>
  /** The message's consumer span, open from arrival to settlement. */
  readonly trace: DeliveryTrace
}

/** How a defect of the runtime is named where a message's failure is (DLQ headers, logs). */
const runtimeDefect = (cause: Cause.Cause<unknown>): Failure => ({ errorType: "Defect", message: Cause.pretty(cause).split("\n")[0]!.slice(0, 500) })

/** Messages of one key applied as one chain at most: a group commit takes whole chains. */
const CHAIN = 16

/**
 * Whether this queue consumes. A message that needs the database asks for `Pausing`: the
 * subscription is cancelled, what is delivered goes back, and once the lanes ran dry it is
 * `Paused` until `StoreHealth.ping` answers.
 */
type Pause = "Consuming" | "Pausing" | "Paused"

/** What ended a round of one subscription: the database answers again, or the session is over. */
type RoundEnd = "resumed" | "ended"

type Requirements = Scope.Scope | Broker | Publisher | OutboxRelay | RuntimeConfig | Stores | ReservationTimers

/**
 * Consumes one queue until the scope closes (issue 4). Messages of one ordering key run one at
 * a time in delivery order (see `lanes.ts`); different keys run in parallel, up to the prefetch.
 * What the broker is told comes from `settlement.ts`. A lost channel ends the session: what it
 * delivered is never settled elsewhere, and a new channel subscribes again.
 *
 * On scope close (SIGTERM) the subscription is cancelled, messages already delivered get
 * `shutdownTimeout` to finish, and whatever is left goes back to the queue.
 */
export const consume = (spec: ConsumerQueue): Effect.Effect<void, never, Requirements> =>
  Effect.gen(function*() {
    const broker = yield* Broker
    const config = yield* RuntimeConfig
    const relay = yield* OutboxRelay
    const health = yield* StoreHealth
    const applier = yield* EventApplier
    const counter = deliveryCounter(config.topology.queueType)
    const pausedGauge = Metric.withAttributes(consumerPaused, { queue: spec.queue })
    const pause = yield* SubscriptionRef.make<Pause>("Consuming")
    const shutdown = yield* Deferred.make<void>()
    yield* Metric.update(pausedGauge, 0)
    const activity = yield* trackActivity(spec, config.topology.singleActiveConsumer, config.consumerRoleCheckInterval)
    const consumption = yield* Effect.serviceOption(Consumption)
    if (Option.isSome(consumption)) yield* consumption.value.register(activity)
    const readiness = yield* Effect.serviceOption(Readiness)
    if (Option.isSome(readiness)) {
      // A standby is ready: it takes over when the active replica goes.
      yield* readiness.value.register(
        `consumer ${spec.queue}`,
        Effect.map(SubscriptionRef.get(pause), (state) =>
          state === "Paused" ? "paused until the database answers" : { ok: true, detail: describeRole(activity.role()) })
      )
    }
    const logged = <A, E, R>(effect: Effect.Effect<A, E, R>) => Effect.annotateLogs(effect, { queue: spec.queue })
    const requestPause = SubscriptionRef.update(pause, (state) => (state === "Consuming" ? "Pausing" : state))

    /** One channel: its subscription rounds, separated by pauses, until it closes or shutdown. */
    const session = Effect.fnUntraced(function*() {
      // Scope of the session: the channel, closed last.
      const via = deliveryChannel(yield* broker.channel)
      yield* Effect.tryPromise({ try: () => via.channel.prefetch(spec.prefetch), catch: brokerError })
      /** Delivered and not settled yet, by delivery tag. */
      const held = new Map<number, InboundMessage>()

      const finish = (message: InboundMessage, how: Settlement) => {
        held.delete(message.deliveryTag)
        if (isFinal(how)) counter.forget(message.raw)
        settle(message, how)
      }

      const tell = (work: Work, outcome: Outcome, told: Told): Effect.Effect<Step> => {
        const step: Step = returnsToQueue(told.how) ? "requeued" : "done"
        // Settled and its span closed in place; only what a message needs beyond that (a warning,
        // a pause, a wake-up of the relay) is an effect of its own (issue 18).
        let effect: Effect.Effect<void> = Effect.suspend(() => {
          finish(work.message, told.how)
          return told.trace._tag === "Finished"
            ? finishDelivery(work.trace, outcome, outcome.decoded === null ? peek(work.message.delivery.body, work.message.delivery.messageId) : undefined)
            : abandonDelivery(work.trace, told.trace.reason)
        })
        if (told.pause) effect = Effect.andThen(requestPause, effect)
        if (told.returned !== undefined) {
          effect = Effect.andThen(
            Effect.logWarning("message returned to the queue").pipe(
              Effect.annotateLogs({
                error_type: told.returned.errorType,
                error: told.returned.message,
                delivery_count: work.message.delivery.deliveryCount,
                pause: told.pause
              })
            ),
            effect
          )
        }
        if (told.nudgeRelay) effect = Effect.andThen(effect, relay.nudge)
        return Effect.as(effect, step)
      }

      /**
       * One key's waiting messages, applied in order (each in its own trace): a message that
       * could not be decoded has a lane of its own and is its own outcome.
       */
      const apply = (waiting: () => ReadonlyArray<Work>): Effect.Effect<ReadonlyArray<Outcome>, never, Stores | ReservationTimers> => {
        // The head stays the lane's until it is settled; the rest is read when the applier takes the chain up.
        const head = waiting()[0]!
        const first = head.input
        if (Result.isFailure(first)) return Effect.succeed([first.failure])
        return applier.applyChain(() =>
          waiting().flatMap((work) =>
            Result.isSuccess(work.input)
              ? [{ decoded: work.input.success, deliveryCount: work.message.delivery.deliveryCount, parent: Option.some(work.trace.span) }]
              : []
          )
        ).pipe(
          Effect.catchCause((cause) =>
            // A bug in the runtime itself: the first message goes back (and is parked after
            // MAX_DELIVERIES, as a handler's defect is); the key's others wait, the consumer goes on.
            Effect.logError("applying messages failed unexpectedly").pipe(
              Effect.annotateLogs({ cause: Cause.pretty(cause) }),
              Effect.as([
                head.message.delivery.deliveryCount >= config.processing.maxDeliveries
                  ? Outcome.DeadLetter({ decoded: first.success, failure: runtimeDefect(cause) })
                  : Outcome.Retry({ decoded: first.success, failure: runtimeDefect(cause), pause: false })
              ])
            )
          )
        )
      }

      const settleOne = (work: Work, outcome: Outcome, canDefer: boolean): Effect.Effect<Step, never, Stores | ReservationTimers | Publisher> =>
        Verdict.$match(verdict(outcome, canDefer), {
          Settle: ({ told }) => tell(work, outcome, told),
          Defer: () => Effect.succeed<Step>("deferred"),
          DeadLetter: ({ failure }) =>
            deadLetter(config, work.message, failure, outcome.decoded).pipe(
              Effect.withSpan("inventory.dead_letter", { attributes: { "error.type": failure.errorType } }, noStackTrace),
              Effect.flatMap((result) => tell(work, outcome, afterDeadLetter(result, failure)))
            )
        }).pipe(
          within(work.trace),
          Effect.catchCause((cause) =>
            // A bug in the runtime itself: the message goes back, the consumer goes on.
            Effect.logError("message handling failed unexpectedly").pipe(
              Effect.annotateLogs({ cause: Cause.pretty(cause) }),
              Effect.andThen(Effect.sync(() => finish(work.message, "requeue"))),
              Effect.andThen(abandonDelivery(work.trace, "runtime defect")),
              Effect.as<Step>("requeued")
            )
          )
        )

      const drop = (work: Work, why: Dropped) =>
        Effect.suspend(() => {
          // On a closed channel the broker has taken it back already: it can be settled nowhere.
          if (why === "channel closed") held.delete(work.message.deliveryTag)
          else finish(work.message, "requeue")
          return abandonDelivery(work.trace, why)
        })

      /**
       * One delivery: its consumer span opens, it is decoded in place (a plain function: no
       * effect, span or context change of its own, issue 18) and queued in its key's lane.
       */
      const dispatch = (lanes: Lanes<Work, Stores | ReservationTimers | Publisher>, message: InboundMessage) => {
        held.set(message.deliveryTag, message)
        return Effect.flatMap(
          startDelivery({
            queue: spec.queue,
            exchange: message.exchange,
            routingKey: message.routingKey,
            messageId: message.delivery.messageId,
            headers: message.headers
          }),
          (trace) => {
            const decoded = decodeWith(message.delivery, config.processing)
            // Messages that cannot be decoded have no key: each gets its own lane.
            if (Result.isFailure(decoded)) {
              return lanes.offer(`undecodable:${message.deliveryTag}`, { message, trace, input: Result.fail(undecodable(decoded.failure)) })
            }
            const event = decoded.success
            return Effect.andThen(
              markDecoded(trace),
              lanes.offer(orderingKey(event.event), { message, trace, input: Result.succeed(event) })
            )
          }
        )
      }

      /** One subscription, until the broker, a pause or shutdown ends it, then the pause if one was asked. */
      const round = (lanes: Lanes<Work, Stores | ReservationTimers | Publisher>) =>
        Effect.gen(function*() {
          const stop = yield* Deferred.make<void>()
          // A pause asked by a message, or shutdown, cancels the subscription.
          yield* Effect.raceFirst(
            SubscriptionRef.changes(pause).pipe(Stream.filter((state) => state === "Pausing"), Stream.runHead),
            Deferred.await(shutdown)
          ).pipe(Effect.andThen(Deferred.succeed(stop, undefined)), Effect.forkScoped)
          yield* activity.subscribed
          yield* deliveries(via, spec, counter, stop).pipe(
            Stream.runForEachArray((messages) =>
              Effect.andThen(activity.delivered, Effect.forEach(messages, (message) => Effect.suspend(() => dispatch(lanes, message)), { discard: true }))
            ),
            Effect.ensuring(activity.unsubscribed),
            // Every message's lane fiber starts from this context and adds to it (its log
            // annotation, its span, what its unit of work provides); past a few additions a
            // context copies its whole map of services on each one. A flat copy made here, once
            // per subscription, keeps those additions cheap (issue 18).
            Effect.updateContext((context: Context.Context<Requirements | Stores | ReservationTimers | Publisher>) => Context.mergeAll(context))
          )
          yield* lanes.idle
          if (yield* Deferred.isDone(shutdown)) return "ended" as const
          if ((yield* SubscriptionRef.get(pause)) !== "Pausing") {
            // The broker cancelled us (queue deleted?) or the channel closed: start over.
            if (via.isOpen()) yield* logged(Effect.logWarning("subscription cancelled by the broker"))
            return "ended" as const
          }
          yield* SubscriptionRef.set(pause, "Paused")
          yield* Metric.update(pausedGauge, 1)
          yield* logged(Effect.logWarning("database unavailable: consumption paused"))
          yield* Effect.raceFirst(health.ping.pipe(Effect.retry(outageBackoff), Effect.orDie), Deferred.await(shutdown))
          yield* SubscriptionRef.set(pause, "Consuming")
          yield* Metric.update(pausedGauge, 0)
          if (yield* Deferred.isDone(shutdown)) return "ended" as const
          yield* logged(Effect.logInfo("database answers again: consumption resumed"))
          return "resumed" as const
        }).pipe(Effect.scoped)

      const gate = Effect.map(SubscriptionRef.get(pause), (state) => (!via.isOpen() ? "closed" : state === "Consuming" ? "open" : "paused"))

      // Shutdown order inside a session: (1) the inner scope closes, interrupting the lanes;
      // (2) what they left unsettled goes back to the queue in delivery order; (3) the session's
      // scope closes the channel.
      yield* Effect.gen(function*() {
        const lanes = yield* makeLanes<Work, Outcome, Stores | ReservationTimers | Publisher>({ apply, settle: settleOne, gate, drop, chain: CHAIN })
        yield* round(lanes).pipe(Effect.repeat({ while: (end: RoundEnd) => end === "resumed" && via.isOpen() }))
      }).pipe(
        Effect.scoped,
        Effect.ensuring(Effect.sync(() => requeueHeld(via, held)))
      )
    }, Effect.scoped)

    // A session ends with its channel; a new one starts after a short breath, until shutdown.
    const sessions = Effect.gen(function*() {
      if (yield* Deferred.isDone(shutdown)) return
      yield* session().pipe(
        Effect.catchCause((cause) =>
          logged(Effect.logWarning("consumer session ended").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) })))
        )
      )
    }).pipe(
      Effect.repeat({ schedule: Schedule.spaced("250 millis"), while: () => Effect.map(Deferred.isDone(shutdown), (done) => !done) }),
      Effect.provideService(ProcessingPolicy, config.processing),
      logged
    )

    // Shutdown order of the consumer, stated in the release: (1) stop subscribing and let the
    // messages in flight finish within the deadline; (2) then interrupt the sessions, whose
    // scopes return the rest to the queue before their channels close.
    yield* Effect.acquireRelease(Effect.forkDetach(sessions), (fiber) =>
      Effect.gen(function*() {
        yield* Deferred.succeed(shutdown, undefined)
        const done = yield* Fiber.await(fiber).pipe(Effect.timeoutOption(config.shutdownTimeout))
        if (Option.isNone(done)) {
          yield* logged(Effect.logWarning("shutdown deadline passed: unfinished messages go back to the queue"))
        }
        yield* Fiber.interrupt(fiber)
      }))
    yield* logged(Effect.logInfo("consumer started"))
  })

/** Whatever is still unsettled on a channel goes back to the queue, in delivery order. */
const requeueHeld = (via: DeliveryChannel, held: Map<number, InboundMessage>) => {
  via.flush()
  for (const tag of [...held.keys()].sort((a, b) => a - b)) settle(held.get(tag)!, "requeue")
  held.clear()
}

/** Both inbound queues, consumed until the layer's scope closes. */
export const consumeAll = (topology: Topology) =>
  Effect.forEach([topology.catalog, topology.orders], consume, { discard: true })

export { BrokerError }
