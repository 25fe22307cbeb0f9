import { assert, describe, it } from "@effect/vitest"
import { Effect, Exit, Schema } from "effect"
import * as Arbitrary from "effect/Arbitrary"
import { catalogEventTypes, InboundEvent, type InboundEventType, inboundEventTypes, orderEventTypes } from "../../src/domain/events.ts"
import { compiledEventTypes, decodeCompiled, decodeDelivery } from "../../src/pipeline/decode.ts"
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

/**
 * Issue 18: a valid event is decoded by functions compiled from the schema's AST
 * (`decodeCompiled`), the schema's parser only for what they refuse. They must agree with the
 * schema exactly: the same value (key order included, which a JSON.stringify of it would show)
 * for every event the schema accepts, and no value for any it refuses. Events generated from each
 * schema, then with extra fields, then each with one field broken or removed.
 */
describe("the compiled decoder", () => {
  const schemaDecode = Schema.decodeUnknownExit(InboundEvent, { errors: "first", onExcessProperty: "ignore" })
  const members = InboundEvent.ast.types.map((ast) => {
    const tag = ast._tag === "Objects" ? ast.propertySignatures.find((p) => p.name === "event")?.type : undefined
    return { ast, type: tag?._tag === "Literal" ? String(tag.literal) : "" }
  })

  it("covers every inbound event type", () => {
    assert.deepStrictEqual([...compiledEventTypes()].sort(), [...inboundEventTypes].sort())
  })

  // Values that break one field or another: wrong types, ids out of their alphabet or length,
  // quantities out of range, fractional counts, control characters, empty and nested values.
  const breakers: ReadonlyArray<unknown> = [
    null, "", " ", "bad id!", "x".repeat(129), "a\u0001b", 0, -1, 1.5, 2 ** 53, 1_000_001, 1e9 + 1, 10_081, true, [], {},
    [{}], "2026-13-01", "1.0", "2.0", "order.placed"
  ]
  /** Every place in a JSON value: the parent and the key of each value inside it. */
  const places = (value: unknown, out: Array<{ parent: Record<string, unknown> | Array<unknown>; key: string | number }> = []) => {
    if (Array.isArray(value)) value.forEach((item, i) => (out.push({ parent: value, key: i }), places(item, out)))
    else if (typeof value === "object" && value !== null) {
      for (const [key, item] of Object.entries(value)) {
        out.push({ parent: value as Record<string, unknown>, key })
        places(item, out)
      }
    }
    return out
  }
  let seed = 18
  const random = (n: number) => (seed = (seed * 1103515245 + 12345) & 0x7fffffff) % n

  const agree = (type: string, json: unknown) => {
    const exit = schemaDecode(json)
    const compiled = decodeCompiled(type, json)
    if (Exit.isSuccess(exit)) {
      assert.isDefined(compiled, `the compiled decoder refused what the schema accepts: ${JSON.stringify(json)}`)
      assert.strictEqual(JSON.stringify(compiled), JSON.stringify(exit.value))
      assert.deepStrictEqual(compiled, exit.value)
    } else {
      assert.isUndefined(compiled, `the compiled decoder accepted what the schema refuses: ${JSON.stringify(json)}`)
    }
    return Exit.isSuccess(exit)
  }

  for (const { ast, type } of members) {
    it.effect(`agrees with the schema on generated ${type} events, valid and broken`, () =>
      Effect.gen(function*() {
        const samples = yield* Arbitrary.sampleEffect(Arbitrary.schema(Schema.make(ast)), { count: 150, seed: type })
        let accepted = 0
        let refused = 0
        for (const sample of samples) {
          const json = JSON.parse(JSON.stringify(sample)) as Record<string, unknown>
          assert.isTrue(agree(type, json))
          assert.isTrue(agree(type, { extra: 1, ...json, data: { ...(json["data"] as object), more: [1, { x: 2 }] }, tail: null }))
          for (let k = 0; k < 6; k++) {
            const broken = JSON.parse(JSON.stringify(json)) as Record<string, unknown>
            const all = places(broken)
            const { key, parent } = all[random(all.length)]!
            if (random(4) === 0 && !Array.isArray(parent)) delete parent[key as string]
            else (parent as Record<string | number, unknown>)[key] = breakers[random(breakers.length)]
            if (agree(type, broken)) accepted++
            else refused++
          }
        }
        // The broken ones exercise both answers (a field replaced by a value it allows stays valid).
        assert.isAbove(refused, 100)
        assert.isAbove(accepted, 0)
      }))
  }
})
