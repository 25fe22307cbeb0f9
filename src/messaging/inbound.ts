import type amqp from "amqplib"
import type { Delivery } from "../pipeline/decode.ts"

/**
 * The channel a message came on. Acks and nacks go only there: once it closed, the broker has
 * already taken its unacknowledged messages back, and settling them elsewhere is impossible.
 */
export interface DeliveryChannel {
  readonly channel: amqp.Channel
  /** False from the moment the channel closed. */
  readonly isOpen: () => boolean
}

export const deliveryChannel = (channel: amqp.Channel): DeliveryChannel => {
  let open = true
  channel.once("close", () => {
    open = false
  })
  return { channel, isOpen: () => open }
}

/** One delivery with everything the runtime, the dead-letter path and tracing need. */
export interface InboundMessage {
  /** What the broker-free pipeline reads. */
  readonly delivery: Delivery
  readonly exchange: string
  readonly routingKey: string
  /** AMQP headers as received (`traceparent`, `x-delivery-count`, ...). */
  readonly headers: Readonly<Record<string, unknown>>
  readonly properties: amqp.MessageProperties
  readonly deliveryTag: number
  readonly redelivered: boolean
  readonly via: DeliveryChannel
  readonly raw: amqp.ConsumeMessage
}

/**
 * How a message ended for this delivery; each message is settled once. `retry` (basic.reject)
 * counts as a failed delivery in a quorum queue's `x-delivery-count` on every RabbitMQ version;
 * `requeue` (basic.nack) is for messages that did nothing wrong (shutdown, pause, order kept
 * behind a retried one), which RabbitMQ 4 does not count.
 */
export type Settlement = "ack" | "retry" | "requeue"

const settled = new WeakSet<InboundMessage>()

/**
 * Acks or requeues on the delivering channel. False when that channel is gone (the broker
 * redelivers the message) or it was settled before.
 */
export const settle = (message: InboundMessage, how: Settlement): boolean => {
  if (settled.has(message)) return false
  settled.add(message)
  if (!message.via.isOpen()) return false
  try {
    if (how === "ack") message.via.channel.ack(message.raw)
    else if (how === "retry") message.via.channel.reject(message.raw, true)
    else message.via.channel.nack(message.raw, false, true)
    return true
  } catch {
    // The channel closed under us: same as above.
    return false
  }
}

export const isSettled = (message: InboundMessage): boolean => settled.has(message)
