import { Context, Duration, Effect, Layer, Metric, Schedule, type Scope } from "effect"
import type { ConsumerQueue } from "../config.ts"
import { consumerActive } from "../observability/metrics.ts"
import { Broker } from "./connection.ts"

/** What this replica is doing on one inbound queue. */
export type QueueRole =
  | { readonly _tag: "Active" }
  | { readonly _tag: "Standby"; readonly consumers: number; readonly ready: number }
  | { readonly _tag: "Waiting"; readonly consumers: number | undefined }
  | { readonly _tag: "NotConsuming" }

/**
 * Whether this replica is a queue's active consumer (issue 17). AMQP 0-9-1 does not tell a
 * consumer it became the single active one, so it is inferred:
 *
 * - a subscription that has received a delivery is active until it ends: the broker moves a
 *   single-active queue to another consumer only when the active one cancels or its channel
 *   closes, and every delivery of such a queue goes to the active consumer;
 * - a subscription with no delivery yet, while the broker reports messages ready, is a standby
 *   (someone else is being served);
 * - a subscription with no delivery yet on an empty queue is "waiting": active on an idle queue
 *   and standby cannot be told apart until a message comes;
 * - without single active consumer every subscribed replica is active.
 *
 * The broker's consumer count goes into the description only: quorum queues count the active
 * consumer alone under single active consumer, classic queues count the standbys too.
 */
export interface QueueActivity {
  /** A subscription started: nothing received on it yet. */
  readonly subscribed: Effect.Effect<void>
  readonly delivered: Effect.Effect<void>
  /** The subscription ended (channel closed, paused, cancelled, shutting down). */
  readonly unsubscribed: Effect.Effect<void>
  /** The role as of the last check, for `/readyz`. */
  readonly role: () => QueueRole
}

export const describeRole = (role: QueueRole): string => {
  switch (role._tag) {
    case "Active":
      return "active consumer"
    case "Standby":
      return `standby (${role.ready} ready go to another consumer; the broker reports ${role.consumers} active/waiting)`
    case "Waiting":
      return `subscribed, no delivery yet (standby, or active on an idle queue${
        role.consumers === undefined ? "" : `; the broker reports ${role.consumers} consumer(s)`
      })`
    case "NotConsuming":
      return "not subscribed"
  }
}

/**
 * Tracks one queue's subscription and, every `interval`, updates `inventory_consumer_active`:
 * only a subscription still waiting for its first delivery asks the broker (a passive declare).
 */
export const trackActivity = (
  spec: ConsumerQueue,
  singleActive: boolean,
  interval: Duration.Duration
): Effect.Effect<QueueActivity, never, Broker | Scope.Scope> =>
  Effect.gen(function*() {
    const broker = yield* Broker
    const gauge = Metric.withAttributes(consumerActive, { queue: spec.queue })
    let subscribed = false
    let received = false
    let role: QueueRole = { _tag: "NotConsuming" }

    const settle = (next: QueueRole) =>
      Effect.suspend(() => {
        role = next
        return Metric.update(gauge, next._tag === "Active" ? 1 : 0)
      })

    const ask = Effect.scoped(Effect.gen(function*() {
      const channel = yield* broker.channel
      return yield* Effect.tryPromise(() => channel.checkQueue(spec.queue))
    })).pipe(Effect.timeoutOption(Duration.seconds(5)))

    const check = Effect.gen(function*() {
      if (!subscribed) return yield* settle({ _tag: "NotConsuming" })
      if (received || !singleActive) return yield* settle({ _tag: "Active" })
      const answer = yield* ask
      // A delivery may have come while we asked; the broker is not reachable: keep what we had.
      if (received || answer._tag === "None") return
      const { consumerCount, messageCount } = answer.value
      return yield* settle(
        messageCount > 0 ? { _tag: "Standby", consumers: consumerCount, ready: messageCount } : { _tag: "Waiting", consumers: consumerCount }
      )
    }).pipe(Effect.ignore)

    yield* settle(role)
    yield* check.pipe(Effect.repeat(Schedule.spaced(interval)), Effect.forkScoped)

    const delivered = Effect.suspend(() => {
      if (received) return Effect.void
      received = true
      return settle({ _tag: "Active" })
    })
    return {
      subscribed: Effect.suspend(() => {
        subscribed = true
        received = false
        // Without single active consumer, subscribed is active; with it, the next check asks.
        return settle(singleActive ? { _tag: "Waiting", consumers: undefined } : { _tag: "Active" })
      }),
      delivered,
      unsubscribed: Effect.suspend(() => {
        subscribed = false
        received = false
        return settle({ _tag: "NotConsuming" })
      }),
      role: () => role
    }
  })

/**
 * What this replica's consumers are doing, for the outbox relay (`relay.ts`, `elect`): under
 * single active consumer one replica consumes and the others stand by with their cores free, so
 * the relay goes to one of those.
 */
export class Consumption extends Context.Service<Consumption, {
  /** The active consumer of one of its queues right now. */
  readonly consuming: () => boolean
  /**
   * Subscribed and not consuming: its broker connection is up and its cores are free. A replica
   * whose consumers are not subscribed (broker unreachable, paused for the database) is neither.
   */
  readonly standingBy: () => boolean
  /** Counts the queue's activity in for as long as the scope lives. */
  readonly register: (activity: QueueActivity) => Effect.Effect<void, never, Scope.Scope>
}>()("inventory/messaging/Consumption") {
  static readonly layer = Layer.sync(Consumption, () => {
    const activities = new Set<QueueActivity>()
    const anyIn = (tags: ReadonlyArray<QueueRole["_tag"]>) => {
      for (const activity of activities) if (tags.includes(activity.role()._tag)) return true
      return false
    }
    return {
      consuming: () => anyIn(["Active"]),
      standingBy: () => !anyIn(["Active"]) && anyIn(["Standby", "Waiting"]),
      register: (activity) =>
        Effect.acquireRelease(Effect.sync(() => activities.add(activity)), () => Effect.sync(() => activities.delete(activity))).pipe(
          Effect.asVoid
        )
    }
  })
}
