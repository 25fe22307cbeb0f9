import { Effect, Layer } from "effect"
import { RuntimeConfig } from "../config.ts"
import { Consumption } from "./activity.ts"
import { Broker } from "./connection.ts"
import { consumeAll } from "./consumer.ts"
import * as DeadLetterRecorder from "./deadLetterRecorder.ts"
import { Publisher } from "./publisher.ts"
import { OutboxRelay } from "./relay.ts"

export { Consumption } from "./activity.ts"
export { Broker, BrokerError } from "./connection.ts"
export { consume, consumeAll } from "./consumer.ts"
export { deadLetter, deadLetterHeaders } from "./deadLetter.ts"
export { brokerErrorTypes, recordDeadLetter } from "./deadLetterRecorder.ts"
export { deliveries, type DeliveryChannel, type DeliveryCounter, deliveryCounter, type InboundMessage, settle } from "./inbound.ts"
export { type OutgoingMessage, Publisher, PublishError } from "./publisher.ts"
export { OutboxRelay, type RelayRound } from "./relay.ts"
export { consumerQueues, declareTopology } from "./topology.ts"

/** Both consumers, running until the layer's scope closes. */
export const consumersLayer = Layer.effectDiscard(
  Effect.flatMap(RuntimeConfig, (config) => consumeAll(config.topology))
)

/**
 * The whole RabbitMQ runtime: connection (topology declared on every connect), publisher,
 * outbox relay, both consumers and the recorder of the broker's own dead letters. Torn down in the reverse order: consumers first (in-flight
 * messages finish), then the relay drains, then the connection closes. Needs the stores, the
 * reservation timers and `RuntimeConfig`.
 */
export const layer = Layer.merge(consumersLayer, DeadLetterRecorder.layer).pipe(
  Layer.provideMerge(OutboxRelay.layer),
  Layer.provideMerge(Publisher.layer),
  Layer.provideMerge(Broker.layer),
  // One per replica: its consumers say whether they are active, its relay asks.
  Layer.provideMerge(Consumption.layer)
)
