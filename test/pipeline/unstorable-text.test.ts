import { assert, describe, it } from "@effect/vitest"
import { Cause, Effect, Exit, Schema } from "effect"
import { InboundEvent, type InboundEventType, inboundEventTypes } from "../../src/domain/events.ts"
import { decodeDelivery, type Delivery, peek } from "../../src/pipeline/decode.ts"
import { seedExamples } from "../support/seed.ts"

/**
 * SPEC 2, issue 15 items 1, 5 and 7: text PostgreSQL cannot store (a NUL, a lone surrogate) is a
 * `ValidationError` at decode wherever it is (body, messageId, a kept header), the error names
 * where, and the error's own message is storable. One id rule for the body's event_id and the
 * messageId that stands for it.
 */

const placed = seedExamples["order.placed"]

const delivery = (body: string | Uint8Array, options: Partial<Delivery> = {}): Delivery => ({
  body: typeof body === "string" ? new TextEncoder().encode(body) : body,
  deliveryCount: 1,
  queue: "test_queue",
  accepts: inboundEventTypes,
  ...options
})

/** What PostgreSQL refuses in text, checked independently of the code under test. */
const storable = (text: string) => !text.includes("\u0000") && text.isWellFormed()

/** Decodes and returns the ValidationError's message; fails the test on success or a defect. */
const refusal = (d: Delivery) =>
  Effect.gen(function*() {
    const exit = yield* Effect.exit(decodeDelivery(d))
    assert.isTrue(Exit.isFailure(exit), "expected a ValidationError, got a decoded event")
    if (Exit.isSuccess(exit)) return ""
    assert.isFalse(Cause.hasDies(exit.cause), `expected a ValidationError, got a defect: ${Cause.pretty(exit.cause)}`)
    const error = exit.cause.reasons.find((r) => r._tag === "Fail")
    assert.strictEqual(error?._tag === "Fail" ? error.error._tag : undefined, "ValidationError")
    const message = error?._tag === "Fail" ? error.error.message : ""
    assert.isTrue(storable(message), `the error message itself must be storable: ${JSON.stringify(message)}`)
    return message
  })

describe("text PostgreSQL cannot store", () => {
  // The reproductions, byte for byte as a publisher sends them.
  it.effect("a NUL as the event type is named, not echoed", () =>
    Effect.gen(function*() {
      const message = yield* refusal(delivery(`{"event":"\\u0000","organization_id":"org_a","data":{}}`))
      assert.strictEqual(message, "NUL character in event: PostgreSQL cannot store it")
    }))

  it.effect("a NUL inside a field", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ ...placed, data: { ...placed.data, order_id: "o\u0000" } })
      assert.include(body, "\\u0000")
      assert.strictEqual(yield* refusal(delivery(body)), "NUL character in data.order_id: PostgreSQL cannot store it")
    }))

  it.effect("a NUL in a line's id names the line", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ ...placed, data: { ...placed.data, items: [{ variant_id: "v1", quantity: 1 }, { variant_id: "v\u00002", quantity: 1 }] } })
      assert.match(yield* refusal(delivery(body)), /^NUL character in data\.items\[1\]\.variant_id:/)
    }))

  it.effect("a NUL in the messageId of a body without event_id", () =>
    Effect.gen(function*() {
      const message = yield* refusal(delivery(JSON.stringify(placed), { messageId: "m\u0000" }))
      assert.match(message, /^NUL character in the AMQP messageId/)
    }))

  it.effect("a NUL or lone surrogate in the messageId even when the body carries its own event_id", () =>
    Effect.gen(function*() {
      const body = JSON.stringify({ ...placed, event_id: "evt-1" })
      assert.match(yield* refusal(delivery(body, { messageId: "m\u0000" })), /^NUL character in the AMQP messageId/)
      assert.match(yield* refusal(delivery(body, { messageId: "m\ud800" })), /^lone surrogate in the AMQP messageId/)
    }))

  it.effect("lone surrogates in free text, which the Text schema lets through", () =>
    Effect.gen(function*() {
      const cancelled = seedExamples["order.cancelled"]
      for (const [text, at] of [["a\ud800b", "high"], ["a\udfffb", "low"], ["\ude00\ud83d", "reversed pair"]] as const) {
        const body = JSON.stringify({ ...cancelled, data: { ...cancelled.data, cancellation_reason: text } })
        assert.match(body, /\\ud[89a-f]/, "JSON.stringify escapes a lone surrogate")
        assert.match(yield* refusal(delivery(body)), /^lone surrogate in data\.cancellation_reason:/, at)
      }
    }))

  it.effect("in a field name, and in a field the schema would ignore, at any depth", () =>
    Effect.gen(function*() {
      const key = JSON.stringify({ ...placed, data: { ...placed.data, "x\u0000y": 1 } })
      assert.strictEqual(yield* refusal(delivery(key)), `NUL character in the field name "x\\u0000y" in data: PostgreSQL cannot store it`)
      const top = JSON.stringify({ ...placed, "\ud800": true })
      assert.match(yield* refusal(delivery(top)), /^lone surrogate in the field name "\\ud800" at the top of the body/)
      const ignored = JSON.stringify({ ...placed, extra: { notes: ["fine", { deeper: "\u0000" }] } })
      assert.match(yield* refusal(delivery(ignored)), /^NUL character in extra\.notes\[1\]\.deeper:/)
    }))

  it.effect("a NUL under 100,000 levels of nesting is a ValidationError with a bounded message", () =>
    Effect.gen(function*() {
      const depth = 100_000
      const body = JSON.stringify(placed).slice(0, -1) + `,"extra":${"[".repeat(depth)}"\\u0000"${"]".repeat(depth)}}`
      const message = yield* refusal(delivery(body, {}))
      assert.match(message, /^NUL character in extra\[0\]\[0\]/)
      assert.isAtMost(message.length, 1000)
    }))

  it.effect("valid surrogate pairs (emoji), raw or escaped, and an escaped backslash before u0000 still decode", () =>
    Effect.gen(function*() {
      const cancelled = seedExamples["order.cancelled"]
      const raw = JSON.stringify({ ...cancelled, data: { ...cancelled.data, cancellation_reason: "changed mind 😀" } })
      const escaped = raw.replace("😀", "\\ud83d\\ude00")
      const backslash = JSON.stringify({ ...cancelled, data: { ...cancelled.data, cancellation_reason: "path C:\\u0000" } })
      assert.include(backslash, "\\\\u0000")
      for (const body of [raw, escaped, backslash]) {
        const decoded = yield* decodeDelivery(delivery(body))
        assert.strictEqual(decoded.event.event, "order.cancelled")
      }
    }))

  it.effect("an unknown event type is quoted cut without splitting a surrogate pair", () =>
    Effect.gen(function*() {
      const type = "x".repeat(99) + "😀"
      const message = yield* refusal(delivery(JSON.stringify({ ...placed, event: type })))
      assert.match(message, /^Unknown event type 'x{99}'$/)
    }))

  it.effect("a kept header (a plain value) with a NUL in its value or name", () =>
    Effect.gen(function*() {
      const body = JSON.stringify(placed)
      assert.strictEqual(
        yield* refusal(delivery(body, { headers: { "x-tenant": "a\u0000" } })),
        `NUL character in header "x-tenant": PostgreSQL cannot store it`
      )
      assert.match(yield* refusal(delivery(body, { headers: { "x-\u0000": 1 } })), /^NUL character in the name of header "x-\\u0000"/)
      assert.match(yield* refusal(delivery(body, { headers: { note: "\udc00" } })), /^lone surrogate in header "note"/)
    }))

  it.effect("headers the dead-letter record does not keep (byte arrays, tables) are left alone", () =>
    Effect.gen(function*() {
      const decoded = yield* decodeDelivery(delivery(JSON.stringify(placed), {
        headers: {
          traceparent: "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01",
          blob: Buffer.from([0, 1, 2]),
          "x-death": [{ reason: "expired", queue: "q\u0000" }],
          count: 3,
          flag: true
        }
      }))
      assert.strictEqual(decoded.event.event, "order.placed")
    }))

  it.effect("peek hands the dead-letter record only storable text", () =>
    Effect.sync(() => {
      const seen = peek(new TextEncoder().encode(`{"event":"\\u0000","organization_id":"org\\ud800","event_id":"e1"}`), "m\u0000")
      assert.deepStrictEqual(seen, { eventType: null, organizationId: null, eventId: "e1" })
      assert.strictEqual(peek(new TextEncoder().encode("{}"), "m\u0000").eventId, null)
    }))
})

describe("one id rule for event_id, from the body or the messageId", () => {
  const id200 = "a".repeat(200)

  it.effect("a 200-character messageId standing for the event_id is refused, as the same id in the body is", () =>
    Effect.gen(function*() {
      const fromBody = yield* refusal(delivery(JSON.stringify({ ...placed, event_id: id200 })))
      assert.match(fromBody, /event_id/)
      const fromMessageId = yield* refusal(delivery(JSON.stringify(placed), { messageId: id200 }))
      assert.match(fromMessageId, /^AMQP messageId 'a{100}', used as the event_id, must be 1-128 characters/)
      const quoted = yield* refusal(delivery(JSON.stringify(placed), { messageId: "it's" }))
      assert.match(quoted, /messageId/)
    }))

  it.effect("a messageId is only checked when it stands for the event_id", () =>
    Effect.gen(function*() {
      const decoded = yield* decodeDelivery(delivery(JSON.stringify({ ...placed, event_id: "evt-1" }), { messageId: id200 }))
      assert.strictEqual(decoded.eventId, "evt-1")
      const valid = yield* decodeDelivery(delivery(JSON.stringify(placed), { messageId: "msg-1:a@b" }))
      assert.strictEqual(valid.eventId, "msg-1:a@b")
    }))

  it.effect("an empty messageId counts as unset: the body's digest is the id", () =>
    Effect.gen(function*() {
      const decoded = yield* decodeDelivery(delivery(JSON.stringify(placed), { messageId: "" }))
      assert.match(decoded.eventId, /^[0-9a-f]{64}$/)
    }))
})

// The property: a valid event of any type, with a NUL or a lone surrogate put into any one of its
// strings (a value or a field name, at any depth), is refused with where it was; never a defect.
type Slot = { readonly path: ReadonlyArray<string | number>; readonly inKey: boolean }

const slotsOf = (value: unknown, path: ReadonlyArray<string | number> = [], out: Array<Slot> = []): Array<Slot> => {
  if (typeof value === "string") out.push({ path, inKey: false })
  else if (Array.isArray(value)) value.forEach((v, i) => slotsOf(v, [...path, i], out))
  else if (typeof value === "object" && value !== null) {
    for (const [k, v] of Object.entries(value)) {
      out.push({ path: [...path, k], inKey: true })
      slotsOf(v, [...path, k], out)
    }
  }
  return out
}

const insert = (text: string, at: number, poison: string) => {
  const i = at % (text.length + 1)
  return text.slice(0, i) + poison + text.slice(i)
}

/** A copy of `value` with `poison` put into the string (or field name) at `slot`. */
const poisoned = (value: unknown, slot: Slot, at: number, poison: string, depth = 0): unknown => {
  if (depth === slot.path.length) return slot.inKey ? value : insert(value as string, at, poison)
  const step = slot.path[depth]!
  if (Array.isArray(value)) return value.map((v, i) => (i === step ? poisoned(v, slot, at, poison, depth + 1) : v))
  return Object.fromEntries(Object.entries(value as Record<string, unknown>).map(([k, v]) =>
    k === step
      ? [slot.inKey && depth === slot.path.length - 1 ? insert(k, at, poison) : k, poisoned(v, slot, at, poison, depth + 1)]
      : [k, v]
  ))
}

const pathText = (path: ReadonlyArray<string | number>) =>
  path.map((k, i) => (typeof k === "number" ? `[${k}]` : i === 0 ? k : `.${k}`)).join("")

const encodeEvent = Schema.encodeSync(InboundEvent)
const Index = Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum: 0, maximum: 100_000 })))

it.effect.prop(
  "any valid event decodes, and with a NUL or a lone surrogate in any string it is a ValidationError naming where",
  [InboundEvent, Index, Index, Schema.Literals(["\u0000", "\ud800", "\udbff", "\udc00", "\udfff"])],
  ([event, which, at, poison]) =>
    Effect.gen(function*() {
      const json = encodeEvent(event)
      const clean = yield* Effect.exit(decodeDelivery(delivery(JSON.stringify(json), { accepts: [json.event as InboundEventType] })))
      assert.isTrue(Exit.isSuccess(clean), `the valid event decodes: ${Exit.isFailure(clean) ? Cause.pretty(clean.cause) : ""}`)

      const slots = slotsOf(json)
      const slot = slots[which % slots.length]!
      const body = JSON.stringify(poisoned(json, slot, at, poison))
      const message = yield* refusal(delivery(body))
      const kind = poison === "\u0000" ? "NUL character" : "lone surrogate"
      if (slot.inKey) {
        assert.match(message, new RegExp(`^${kind} in the field name `))
      } else {
        assert.strictEqual(message, `${kind} in ${pathText(slot.path)}: PostgreSQL cannot store it`)
      }
    }),
  { arbitrary: { runs: 300 } }
)
