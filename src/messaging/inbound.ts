import type amqp from "amqplib"
import { Deferred, Effect, Queue, Stream } from "effect"
import type { ConsumerQueue, QueueType } from "../config.ts"
import { bodyDigest } from "../domain/ids.ts"
import type { Delivery } from "../pipeline/decode.ts"
import { type BrokerError, brokerError } from "./connection.ts"

/**
 * The channel a message came on. Acks and nacks go only there: once it closed, the broker has
 * already taken its unacknowledged messages back, and settling them elsewhere is impossible.
 *
 * Acks are coalesced (issue 8): an ack is held until the end of the current turn of the event
 * loop, then the longest run of settled deliveries from the oldest outstanding one goes in one
 * `basic.ack` with `multiple`, and acks past that run go one by one. A group commit of 200
 * events thus costs one ack frame, not 200. `multiple` acks everything outstanding up to its tag,
 * so it is only sent for a tag whose every earlier delivery on this channel is settled already;
 * an ack is never held past the turn, so a slow message never holds back the others' acks.
 */
export interface DeliveryChannel {
  readonly channel: amqp.Channel
  /** False from the moment the channel closed. */
  readonly isOpen: () => boolean
  /** Every delivery on the channel passes here first, in the order the broker sent them. */
  readonly received: (raw: amqp.ConsumeMessage) => void
  /** Sends the acks held for coalescing now (before the channel closes, say). */
  readonly flush: () => void
  /** Acks the message; it goes out with the next `flush`, at the latest at the end of this turn. */
  readonly ack: (raw: amqp.ConsumeMessage) => void
  /** A delivery was rejected or requeued: it no longer holds back a `multiple` ack. */
  readonly settledOtherwise: (raw: amqp.ConsumeMessage) => void
}

/** What became of a delivery the coalescer tracks: acked but not sent yet, or settled. */
const ACK_HELD = 1
const SETTLED = 2

export const deliveryChannel = (channel: amqp.Channel): DeliveryChannel => {
  let open = true
  /** Delivery tags in arrival order from `head`; the ones before `head` are settled. */
  let tags: Array<number> = []
  let head = 0
  const states = new Map<number, typeof ACK_HELD | typeof SETTLED>()
  let held: Array<amqp.ConsumeMessage> = []
  let scheduled = false

  const flush = () => {
    scheduled = false
    const acks = held
    if (acks.length === 0) return
    held = []
    if (!open) return
    // The run of settled deliveries from the oldest outstanding one; its last held ack is sent
    // with `multiple`, which covers the held acks before it.
    let upTo: number | undefined
    while (head < tags.length) {
      const tag = tags[head]!
      const state = states.get(tag)
      if (state === undefined) break
      if (state === ACK_HELD) upTo = tag
      states.delete(tag)
      head++
    }
    if (head > 1024 && head * 2 > tags.length) {
      tags = tags.slice(head)
      head = 0
    }
    try {
      if (upTo !== undefined) channel.ack(acks.find((raw) => raw.fields.deliveryTag === upTo)!, true)
      for (const raw of acks) {
        const tag = raw.fields.deliveryTag
        if (states.get(tag) === ACK_HELD) {
          states.set(tag, SETTLED)
          channel.ack(raw)
        }
      }
    } catch {
      // The channel closed under us: the broker redelivers what was not acked, and the event
      // log makes the redelivery a duplicate.
    }
  }

  channel.once("close", () => {
    open = false
    tags = []
    head = 0
    states.clear()
    held = []
  })
  return {
    channel,
    isOpen: () => open,
    received: (raw) => {
      tags.push(raw.fields.deliveryTag)
    },
    flush,
    ack: (raw) => {
      states.set(raw.fields.deliveryTag, ACK_HELD)
      held.push(raw)
      if (!scheduled) {
        scheduled = true
        setImmediate(flush)
      }
    },
    settledOtherwise: (raw) => {
      states.set(raw.fields.deliveryTag, SETTLED)
    }
  }
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
 * behind a retried one), which RabbitMQ 4 does not count. `reject` (basic.reject without requeue)
 * hands the message to the queue's dead-letter exchange: the last resort of the dead-letter path.
 */
export type Settlement = "ack" | "retry" | "requeue" | "reject"

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
    if (how === "ack") {
      message.via.ack(message.raw)
      return true
    }
    if (how === "retry") message.via.channel.reject(message.raw, true)
    else if (how === "reject") message.via.channel.reject(message.raw, false)
    else message.via.channel.nack(message.raw, false, true)
    message.via.settledOtherwise(message.raw)
    return true
  } catch {
    // The channel closed under us: same as above.
    return false
  }
}

export const isSettled = (message: InboundMessage): boolean => settled.has(message)

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
