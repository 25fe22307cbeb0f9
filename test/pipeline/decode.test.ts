import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit } from "effect"
import { catalogEventTypes, type InboundEventType, inboundEventTypes, orderEventTypes } from "../../src/domain/events.ts"
import { decodeDelivery } from "../../src/pipeline/decode.ts"
import { seedExamples } from "../support/seed.ts"

const bytes = (value: unknown) => new TextEncoder().encode(typeof value === "string" ? value : JSON.stringify(value))

const delivery = (value: unknown, accepts: ReadonlyArray<InboundEventType> = inboundEventTypes, messageId?: string) => ({
  body: bytes(value),
  messageId,
  deliveryCount: 1,
  queue: "test_queue",
  accepts
})

const decodeError = (value: unknown, accepts?: ReadonlyArray<InboundEventType>) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(decodeDelivery(delivery(value, accepts)))
    assert.isTrue(Exit.isFailure(exit), `expected a failure for ${JSON.stringify(value)?.slice(0, 200)}`)
    const error = yield* Effect.flip(decodeDelivery(delivery(value, accepts)))
    assert.strictEqual(error._tag, "ValidationError")
    return error.message
  })

describe("decoding", () => {
  for (const [type, example] of Object.entries(seedExamples)) {
    it.effect(`decodes the seed's ${type} example`, () =>
      Effect.gen(function*() {
        const decoded = yield* decodeDelivery(delivery(example))
        assert.strictEqual(decoded.event.event, type)
        assert.strictEqual(decoded.event.organization_id, "org_123")
      }))
  }

  it.effect("takes event_id from the body, then messageId, then a digest of the body", () =>
    Effect.gen(function*() {
      const withId = yield* decodeDelivery(delivery({ ...seedExamples["order.placed"], event_id: "evt-1" }, undefined, "msg-1"))
      assert.strictEqual(withId.eventId, "evt-1")
      const withMessageId = yield* decodeDelivery(delivery(seedExamples["order.placed"], undefined, "msg-1"))
      assert.strictEqual(withMessageId.eventId, "msg-1")
      const digest = yield* decodeDelivery(delivery(seedExamples["order.placed"]))
      assert.match(digest.eventId, /^[0-9a-f]{64}$/)
      const again = yield* decodeDelivery(delivery(seedExamples["order.placed"]))
      assert.strictEqual(again.eventId, digest.eventId)
    }))

  it.effect("ignores unknown extra fields", () =>
    Effect.gen(function*() {
      const decoded = yield* decodeDelivery(delivery({ ...seedExamples["order.cancelled"], extra: 1, data: { ...seedExamples["order.cancelled"].data, more: true } }))
      assert.strictEqual(decoded.event.event, "order.cancelled")
    }))

  it.effect("accepts fractional TTLs up to a week", () =>
    Effect.gen(function*() {
      const placed = seedExamples["order.placed"]
      const decoded = yield* decodeDelivery(delivery({ ...placed, data: { ...placed.data, reservation_ttl_minutes: 0.5 } }))
      assert.strictEqual(decoded.event.event === "order.placed" && decoded.event.data.reservation_ttl_minutes, 0.5)
    }))

  const placed = seedExamples["order.placed"]
  const withItem = (item: Record<string, unknown>) => ({ ...placed, data: { ...placed.data, items: [item] } })
  const malformed: ReadonlyArray<[string, unknown, RegExp]> = [
    ["not JSON", "{not json", /not valid UTF-8 JSON/],
    ["an empty body", "", /Empty message body/],
    ["a JSON array", [1, 2], /not a JSON object/],
    ["invalid UTF-8", new Uint8Array([0xff, 0xfe, 0x7b]), /not valid UTF-8 JSON/],
    ["an unknown event", { ...placed, event: "order.teleported" }, /Unknown event type 'order.teleported'/],
    ["a missing event", { ...placed, event: undefined }, /'event' is missing/],
    ["version 2.0", { ...placed, version: "2.0" }, /Unsupported version '2.0'/],
    ["a missing organization_id", { ...placed, organization_id: undefined }, /organization_id/],
    ["a missing version", { ...placed, version: undefined }, /version/],
    ["a missing data field", { ...placed, data: { ...placed.data, order_id: undefined } }, /order_id/],
    ["a quantity of zero", withItem({ variant_id: "v1", quantity: 0 }), /quantity/],
    ["a negative quantity", withItem({ variant_id: "v1", quantity: -3 }), /quantity/],
    ["a fractional quantity", withItem({ variant_id: "v1", quantity: 1.5 }), /quantity/],
    ["a quantity of 2^53", withItem({ variant_id: "v1", quantity: 2 ** 53 }), /quantity/],
    ["a quantity given as a string", withItem({ variant_id: "v1", quantity: "2" }), /quantity/],
    ["an id carrying SQL", withItem({ variant_id: "v1'; DROP TABLE stock; --", quantity: 1 }), /variant_id/],
    ["an id carrying control characters", { ...placed, organization_id: "org\u0000\n1" }, /organization_id/],
    ["no items", { ...placed, data: { ...placed.data, items: [] } }, /items/],
    ["a TTL of zero", { ...placed, data: { ...placed.data, reservation_ttl_minutes: 0 } }, /reservation_ttl_minutes/],
    ["a TTL over a week", { ...placed, data: { ...placed.data, reservation_ttl_minutes: 10081 } }, /reservation_ttl_minutes/]
  ]
  for (const [name, value, pattern] of malformed) {
    it.effect(`rejects ${name} as a ValidationError`, () =>
      Effect.gen(function*() {
        const message = yield* decodeError(value instanceof Uint8Array ? new TextDecoder("latin1").decode(value) : value)
        if (value instanceof Uint8Array) {
          const error = yield* Effect.flip(decodeDelivery({ body: value, deliveryCount: 1, queue: "q", accepts: inboundEventTypes }))
          assert.match(error.message, pattern)
        } else {
          assert.match(message, pattern)
        }
      }))
  }

  it.effect("rejects an event on the wrong queue", () =>
    Effect.gen(function*() {
      const message = yield* decodeError(seedExamples["order.placed"], catalogEventTypes)
      assert.match(message, /does not belong on queue/)
      const other = yield* decodeError(seedExamples["catalog.variant.created"], orderEventTypes)
      assert.match(other, /does not belong on queue/)
    }))

  it.effect("rejects a body over the size limit before parsing it", () =>
    Effect.gen(function*() {
      const big = "x".repeat(1024 * 1024 + 1)
      const message = yield* decodeError(big)
      assert.match(message, /exceeds the limit/)
    }))

  it.effect("survives deeply nested JSON", () =>
    Effect.gen(function*() {
      const deep = "[".repeat(200_000) + "]".repeat(200_000)
      yield* decodeError(deep)
    }))
})
