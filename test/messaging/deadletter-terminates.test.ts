import { assert, describe, it } from "@effect/vitest"
import { Effect, Layer, Option } from "effect"
import type amqp from "amqplib"
import { createHash } from "node:crypto"
import { RuntimeConfig } from "../../src/config.ts"
import { DatabaseError } from "../../src/domain/errors.ts"
import { deadLetter, deadLetterId } from "../../src/messaging/deadLetter.ts"
import type { InboundMessage } from "../../src/messaging/inbound.ts"
import { type OutgoingMessage, Publisher, PublishError } from "../../src/messaging/publisher.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { FailedEvents } from "../../src/stores/services.ts"

/**
 * SPEC 5: the dead-letter path terminates whatever fails. A record that keeps failing for a
 * reason that is not an outage gets DLQ_RECORD_ATTEMPTS attempts, then a minimal record; an
 * outage goes back to the queue; nothing loops. The broker is not the point here: the publisher
 * records what it is asked to send, or refuses it.
 */

type Fault = "none" | "full-record-dies" | "every-record-dies" | "store-down" | "publish-refused"

const run = (fault: Fault, inbound: InboundMessage, env: Record<string, string> = {}) => {
  const sent: Array<OutgoingMessage> = []
  let recordCalls = 0
  const publisher = Layer.succeed(Publisher, Publisher.of({
    publish: (m) =>
      fault === "publish-refused"
        ? Effect.fail(new PublishError({ exchange: m.exchange, routingKey: m.routingKey, message: "refused" }))
        : Effect.sync(() => { sent.push(m) }),
    publishAll: (ms) => Effect.sync(() => ms.map((m) => { sent.push(m); return undefined }))
  }))
  const failing = Layer.effect(
    FailedEvents,
    Effect.map(FailedEvents, (store) =>
      FailedEvents.of({
        ...store,
        record: (event) =>
          Effect.suspend(() => {
            recordCalls++
            if (fault === "store-down") return Effect.fail(new DatabaseError({ reason: "connection", message: "injected: connection refused" }))
            if (fault === "every-record-dies" || (fault === "full-record-dies" && Object.keys(event.headers).length > 0)) {
              return Effect.die(new Error("injected: SQLSTATE 22P05"))
            }
            return store.record(event)
          })
      }))
  ).pipe(Layer.provideMerge(MemoryStores.layer))
  return Effect.gen(function*() {
    const config = yield* RuntimeConfig
    const result = yield* deadLetter(config, inbound, { errorType: "ValidationError", message: "Message body is not valid UTF-8 JSON" }, null)
    const stored = yield* Effect.flatMap(FailedEvents, (f) => f.get(deadLetterId(inbound, null))).pipe(Effect.orDie)
    return { result, sent, stored: Option.getOrNull(stored), recordCalls }
  }).pipe(Effect.provide(Layer.mergeAll(failing, publisher, RuntimeConfig.layerFrom(env))))
}

const message = (body: Uint8Array, headers: Record<string, unknown> = { "x-note": "caf\u00e9", traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01" }, messageId = "msg-1"): InboundMessage => ({
  delivery: { body, messageId, deliveryCount: 1, queue: "inventory_order_consumer", accepts: ["order.placed"] },
  exchange: "order_events",
  routingKey: "order.placed",
  headers,
  properties: { headers, contentType: "application/json", messageId } as unknown as amqp.MessageProperties,
  deliveryTag: 1,
  redelivered: false,
  via: undefined as never, // dead-lettering never settles; the consumer does
  raw: undefined as never
})
const notJson = new TextEncoder().encode("{not json")

describe("the dead-letter path terminates", () => {
  it.effect("records, copies once and marks the record copied", () =>
    Effect.gen(function*() {
      const { result, sent, stored } = yield* run("none", message(notJson))
      assert.deepStrictEqual(result, { _tag: "DeadLettered", parked: false })
      assert.strictEqual(sent.length, 1)
      assert.isNotNull(stored!.dlq_copied_at)
      assert.strictEqual(sent[0]!.options.headers!["x-note"], "caf\u00e9")
    }))

  it.effect("parks a message whose full record keeps failing: a minimal ASCII record, a copy with our headers only", () =>
    Effect.gen(function*() {
      const { result, sent, stored, recordCalls } = yield* run("full-record-dies", message(notJson))
      assert.deepStrictEqual(result, { _tag: "DeadLettered", parked: true })
      assert.strictEqual(recordCalls, 3 + 1, "DLQ_RECORD_ATTEMPTS full attempts, then the minimal one")
      assert.strictEqual(sent.length, 1)
      assert.deepStrictEqual(Object.keys(sent[0]!.options.headers!).filter((h) => !h.startsWith("x-")), [])
      assert.deepStrictEqual(stored!.headers, {})
      assert.match(stored!.error_message, /\[parked: .*SQLSTATE 22P05/)
      assert.match(stored!.error_message, /^[\x20-\x7e]*$/)
      assert.isNotNull(stored!.dlq_copied_at)
    }))

  it.effect("hands a message no record can be written for to the broker (Unrecordable), after bounded attempts", () =>
    Effect.gen(function*() {
      const { result, sent, recordCalls } = yield* run("every-record-dies", message(notJson), { DLQ_RECORD_ATTEMPTS: "2" })
      assert.deepStrictEqual(result, { _tag: "Unrecordable" })
      assert.strictEqual(recordCalls, 2 + 1)
      assert.strictEqual(sent.length, 0)
    }))

  it.effect("returns a message to the queue while the store is down, and copies nothing", () =>
    Effect.gen(function*() {
      const { result, sent, recordCalls } = yield* run("store-down", message(notJson))
      assert.deepStrictEqual(result, { _tag: "StoreUnavailable" })
      assert.strictEqual(recordCalls, 1)
      assert.strictEqual(sent.length, 0)
    }))

  it.effect("reports an unconfirmed copy (counted requeue) and leaves the record uncopied for the redelivery", () =>
    Effect.gen(function*() {
      const { result, stored } = yield* run("publish-refused", message(notJson))
      assert.deepStrictEqual(result, { _tag: "CopyUnconfirmed" })
      assert.isNotNull(stored)
      assert.isNull(stored!.dlq_copied_at)
    }))

  it.effect("stores a body over DLQ_BODY_MAX_BYTES cut, with the original's SHA-256 and length; the copy keeps it whole", () =>
    Effect.gen(function*() {
      const body = new TextEncoder().encode(`{"event":"x","pad":"${"p".repeat(5000)}"}`)
      const { sent, stored } = yield* run("none", message(body), { DLQ_BODY_MAX_BYTES: "1000" })
      assert.strictEqual(stored!.body.length, 1000)
      assert.deepStrictEqual(Array.from(stored!.body), Array.from(body.subarray(0, 1000)))
      assert.strictEqual(stored!.body_length, body.length)
      assert.strictEqual(stored!.body_sha256, createHash("sha256").update(body).digest("hex"))
      assert.strictEqual(sent[0]!.body.length, body.length)
    }))

  it.effect("makes every text field storable: unstorable body fields left out, header text escaped (NUL visible, lone surrogates replaced), lengths capped", () =>
    Effect.gen(function*() {
      const body = new TextEncoder().encode(JSON.stringify({ event: "a\u0000b", organization_id: "org\ud800", event_id: "e\u0000" }))
      const { stored } = yield* run("none", message(body, { "na\u0000me": "v\u0000\udc00", n: 200, long: "l".repeat(10_000) }))
      // What decode's `peek` reads of a body leaves unstorable text out; headers are kept, escaped.
      assert.strictEqual(stored!.event_type, null)
      assert.strictEqual(stored!.organization_id, null)
      assert.strictEqual(stored!.event_id, "msg-1") // the messageId stands in for the unstorable event_id
      assert.deepStrictEqual(stored!.headers, { "na\\u0000me": "v\\u0000\ufffd", n: 200, long: "l".repeat(4096) })
    }))
})
