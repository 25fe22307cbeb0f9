import { assert, it } from "@effect/vitest"
import { Effect, Layer } from "effect"
import type amqp from "amqplib"
import { RuntimeConfig } from "../../src/config.ts"
import { deadLetter, deadLetterId } from "../../src/messaging/deadLetter.ts"
import type { InboundMessage } from "../../src/messaging/inbound.ts"
import { type OutgoingMessage, Publisher } from "../../src/messaging/publisher.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { FailedEvents } from "../../src/stores/services.ts"
import { DatabaseError } from "../../src/domain/errors.ts"

/**
 * A message whose ack was lost after it was dead-lettered (its channel died, or shutdown came
 * between the record and the ack) comes back: it must be acked, not dead-lettered a second time.
 * Found by the chaos harness. The publisher here only records what it is asked to send: the
 * point is what dead-lettering asks of it, not the broker.
 */
const recording = (sent: Array<OutgoingMessage>) =>
  Layer.succeed(Publisher, Publisher.of({
    publish: (m) => Effect.sync(() => { sent.push(m) }),
    publishAll: (ms) => Effect.sync(() => ms.map((m) => { sent.push(m); return undefined }))
  }))
const sent: Array<OutgoingMessage> = []

const message = (headers: Record<string, unknown> = {}): InboundMessage => ({
  delivery: {
    body: new TextEncoder().encode("{not json"),
    messageId: "msg-1",
    deliveryCount: 1,
    queue: "inventory_order_consumer",
    accepts: ["order.placed"]
  },
  exchange: "order_events",
  routingKey: "order.placed",
  headers,
  properties: { headers } as unknown as amqp.MessageProperties,
  deliveryTag: 1,
  redelivered: false,
  via: undefined as never, // dead-lettering never settles; the consumer does
  raw: undefined as never
})

it.effect("dead-letters a message once, however often it comes back; a replay that fails again is recorded again", () =>
  Effect.gen(function*() {
    const topology = yield* RuntimeConfig
    const failure = { errorType: "ValidationError" as const, message: "Message body is not valid UTF-8 JSON" }
    yield* deadLetter(topology, message(), failure, null)
    yield* deadLetter(topology, { ...message(), delivery: { ...message().delivery, deliveryCount: 2 } }, failure, null)
    assert.strictEqual(sent.length, 1, "published to the DLQ once")
    const records = yield* Effect.flatMap(FailedEvents, (f) => f.list({})).pipe(Effect.orDie)
    assert.deepStrictEqual(records.map((r) => r.id), [deadLetterId(message(), null)])

    yield* deadLetter(topology, message({ "x-replay-count": 1 }), failure, null)
    assert.strictEqual(sent.length, 2)
    assert.strictEqual((yield* Effect.flatMap(FailedEvents, (f) => f.list({})).pipe(Effect.orDie)).length, 2)
  }).pipe(
    Effect.provide(Layer.mergeAll(MemoryStores.layer, recording(sent), RuntimeConfig.layerFrom({})))
  ))

/**
 * The database goes away after the DLQ confirmed the copy and before the record is marked
 * copied. Returning the message then copied it again on its redelivery: a CI run of the chaos
 * harness, whose PostgreSQL stop came with a close of every connection, found 32 dead letters
 * in the DLQ for 31 records, and this is the window the stop could hit. The mark is waited for
 * instead, and the message is dead-lettered once.
 */
it.live("an outage between the DLQ's confirm and the record's mark is waited out, not answered by a second copy", () => {
  const copies: Array<OutgoingMessage> = []
  let refusals = 2
  const markFailsTwice = Layer.effect(FailedEvents, Effect.map(FailedEvents, (stores) => FailedEvents.of({
    ...stores,
    markCopied: (id, at) =>
      Effect.suspend(() =>
        refusals-- > 0
          ? Effect.fail(new DatabaseError({ reason: "connection", message: "connection refused" }))
          : stores.markCopied(id, at)
      )
  }))).pipe(Layer.provideMerge(MemoryStores.layer))
  return Effect.gen(function*() {
    const config = yield* RuntimeConfig
    const failure = { errorType: "ValidationError" as const, message: "Message body is not valid UTF-8 JSON" }
    const first = yield* deadLetter(config, message(), failure, null)
    assert.deepStrictEqual(first, { _tag: "DeadLettered", parked: false })
    assert.strictEqual(refusals, -1, "the mark was tried until the database answered")
    const again = yield* deadLetter(config, { ...message(), delivery: { ...message().delivery, deliveryCount: 2 } }, failure, null)
    assert.deepStrictEqual(again, { _tag: "DeadLettered", parked: false })
    assert.strictEqual(copies.length, 1, "copied to the DLQ once")
    const [record] = yield* Effect.flatMap(FailedEvents, (f) => f.list({})).pipe(Effect.orDie)
    assert.notStrictEqual(record?.dlq_copied_at, null)
  }).pipe(Effect.provide(Layer.mergeAll(markFailsTwice, recording(copies), RuntimeConfig.layerFrom({}))))
})
