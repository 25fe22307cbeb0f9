import type { Channel } from "amqplib"
import type { ConsumerQueue, Topology } from "../config.ts"

/** Both inbound queues, in declaration order. */
export const consumerQueues = (topology: Topology): ReadonlyArray<ConsumerQueue> => [topology.catalog, topology.orders]

/** Arguments shared by every queue we declare; a queue type that differs from an existing queue's is refused by the broker. */
const queueArguments = (topology: Topology) => ({ "x-queue-type": topology.queueType })

/**
 * Per-key order across replicas (SPEC 1, issue 17): with single active consumer the broker
 * delivers an inbound queue to one replica at a time and switches to a waiting one within
 * seconds of the active one's connection closing; inside that replica, per-key lanes keep order
 * and run keys in parallel. Chosen over partitioning by a consistent-hash exchange because it
 * needs no routing stage of ours and a key never waits on another replica's retries; the cost is
 * that a queue's throughput is one replica's (the others are standbys). RabbitMQ 3.8+ supports
 * it on quorum and classic queues (checked on 3.10.8). The broker refuses to change the argument
 * on an existing queue (PRECONDITION_FAILED), so a queue declared without it must be recreated,
 * or `SINGLE_ACTIVE_CONSUMER=false` set to match it.
 */
const singleActive = (topology: Topology) => (topology.singleActiveConsumer ? { "x-single-active-consumer": true } : {})

/**
 * Declares SPEC 1's exchanges, queues and bindings. Every call is idempotent, so it runs on each
 * (re)connection; a queue that exists with other arguments makes the broker close the channel,
 * which surfaces as a failed (re)connection with the broker's reason.
 */
export const declareTopology = async (channel: Channel, topology: Topology): Promise<void> => {
  await channel.assertExchange(topology.deadLetterExchange, "topic", { durable: true })
  await channel.assertQueue(topology.deadLetterQueue, {
    durable: true,
    arguments: {
      ...queueArguments(topology),
      "x-message-ttl": topology.deadLetterTtlMs,
      "x-max-length": topology.deadLetterMaxLength,
      "x-max-length-bytes": topology.deadLetterMaxLengthBytes
    }
  })
  await channel.bindQueue(topology.deadLetterQueue, topology.deadLetterExchange, "#")
  // A copy of every dead letter for the recorder (src/messaging/deadLetterRecorder.ts): the broker's
  // own dead letters reach failed_events from here. Oldest dropped first past the byte bound.
  await channel.assertQueue(topology.deadLetterRecorderQueue, {
    durable: true,
    arguments: { ...queueArguments(topology), "x-max-length-bytes": topology.deadLetterRecorderMaxBytes }
  })
  await channel.bindQueue(topology.deadLetterRecorderQueue, topology.deadLetterExchange, "#")

  await channel.assertExchange(topology.eventsExchange, "topic", { durable: true })

  for (const consumer of consumerQueues(topology)) {
    await channel.assertExchange(consumer.exchange, "topic", { durable: true })
    await channel.assertQueue(consumer.queue, {
      durable: true,
      arguments: {
        ...queueArguments(topology),
        ...singleActive(topology),
        "x-dead-letter-exchange": topology.deadLetterExchange,
        // The consumer decides every dead letter (MAX_DELIVERIES, counted the same on 3.10 and
        // 4.x, where requeues count differently); the broker's limit, above it, is the last bound
        // should the consumer itself keep failing on a message.
        ...(topology.queueType === "quorum" ? { "x-delivery-limit": topology.deliveryLimit } : {})
      }
    })
    for (const routingKey of consumer.eventTypes) {
      await channel.bindQueue(consumer.queue, consumer.exchange, routingKey)
    }
  }
}
