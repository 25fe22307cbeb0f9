import { Context, Effect, Exit, Layer, Scope } from "effect"
import type { OutboundEvent } from "../../src/domain/published.ts"
import { Consumption } from "../../src/messaging/activity.ts"
import { Broker } from "../../src/messaging/connection.ts"
import { Publisher } from "../../src/messaging/publisher.ts"
import { OutboxRelay } from "../../src/messaging/relay.ts"
import { TestClient } from "./rabbit.ts"

/** An outbox row of an announcement, its aggregate `org/order/<aggregate>` (its own id by default). */
export const outboxRow = (id: string, aggregate: string = id) => ({
  event_id: id,
  organization_id: "org",
  event_type: "inventory.stock.released" as const,
  aggregate_key: `org/order/${aggregate}`,
  payload: { event: "inventory.stock.released", event_id: id } as unknown as OutboundEvent,
  traceparent: null,
  created_at: new Date(0)
})

/** One replica's relay, built in its own scope: `stop` closes it as a SIGTERM would. */
export interface Replica {
  readonly relay: OutboxRelay["Service"]
  readonly stop: () => Promise<void>
}

/** What a replica's consumers are doing (`Consumption`), as the relay election asks. */
export interface Consumers {
  consuming: boolean
  standingBy: boolean
}

const relayLayer = OutboxRelay.layer.pipe(Layer.provideMerge(Publisher.layer), Layer.provideMerge(Broker.layer))

/**
 * A replica's relay on the runtime `run` runs in (its database and settings); `consumers` stands
 * for its consumers' state, read at each election check; none: not known.
 */
export const startRelay = (run: <A, E>(effect: Effect.Effect<A, E, any>) => Promise<A>, consumers?: Consumers): Promise<Replica> =>
  run(Effect.gen(function*() {
    const scope = yield* Scope.make()
    const layer = consumers === undefined
      ? relayLayer
      : relayLayer.pipe(Layer.provide(Layer.succeed(Consumption, Consumption.of({
        consuming: () => consumers.consuming,
        standingBy: () => consumers.standingBy,
        register: () => Effect.void
      }))))
    const context = yield* Layer.buildWithScope(layer, scope)
    let stopping: Promise<void> | undefined
    return {
      relay: Context.get(context, OutboxRelay),
      stop: () => (stopping ??= run(Scope.close(scope, Exit.void)))
    }
  }))

/** A durable queue `capture` bound to the events exchange of `vhost`, for what the relays publish. */
export const captureAnnouncements = (vhost: string, capture: string) => ({
  declare: async () => {
    const client = await TestClient.connect(vhost)
    await client.channel.assertExchange("inventory_events", "topic", { durable: true })
    await client.channel.assertQueue(capture, { durable: true })
    await client.channel.bindQueue(capture, "inventory_events", "#")
    await client.close()
  },
  /** Every message captured so far, in queue order, by its message id (the outbox's event id). */
  drain: async () => {
    const client = await TestClient.connect(vhost)
    try {
      return (await client.drain(capture)).map((m) => String(m.properties.messageId))
    } finally {
      await client.close()
    }
  }
})
