import { Effect, Exit, Result, Schema } from "effect"
import { ValidationError } from "../domain/errors.ts"
import { InboundEvent, type InboundEventType, inboundEventTypes } from "../domain/events.ts"
import { bodyDigest } from "../domain/ids.ts"
import { Id } from "../domain/primitives.ts"
import { ProcessingPolicy } from "./policy.ts"

/** A message as the broker hands it over, without anything broker-specific. */
export interface Delivery {
  readonly body: Uint8Array
  /** The AMQP `messageId` property, when the publisher set one. */
  readonly messageId?: string | undefined
  /**
   * The AMQP headers as received. Decoding refuses text PostgreSQL cannot store in the ones the
   * dead-letter record keeps; absent means none.
   */
  readonly headers?: Readonly<Record<string, unknown>> | undefined
  /** 1 on first delivery. */
  readonly deliveryCount: number
  /** The queue it came from, and the event types that queue accepts. */
  readonly queue: string
  readonly accepts: ReadonlyArray<InboundEventType>
}

export interface Decoded {
  readonly event: InboundEvent
  /** `event_id`, else the `messageId`, else the SHA-256 of the body (SPEC 2). */
  readonly eventId: string
}

/** What could be read of a message that failed to decode, for the dead-letter record. */
export interface Peek {
  readonly eventType: string | null
  readonly organizationId: string | null
  readonly eventId: string | null
}

const decodeEvent = Schema.decodeUnknownExit(InboundEvent, { errors: "first", onExcessProperty: "ignore" })
const decodeId = Schema.decodeUnknownExit(Id)
const utf8 = new TextDecoder("utf-8", { fatal: true })
const known = new Set<string>(inboundEventTypes)

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const parseFailure = Symbol("not JSON")
const parseText = (text: string): unknown => {
  try {
    return JSON.parse(text)
  } catch {
    return parseFailure
  }
}
const decodeUtf8 = (body: Uint8Array): string | typeof parseFailure => {
  try {
    return utf8.decode(body)
  } catch {
    return parseFailure
  }
}
const parseJson = (body: Uint8Array): unknown => {
  const text = decodeUtf8(body)
  return text === parseFailure ? parseFailure : parseText(text)
}

/** Why PostgreSQL would refuse this text (SQLSTATE 22021/22P05), or null when it can store it. */
export const unstorable = (text: string): "NUL character" | "lone surrogate" | null =>
  text.includes("\u0000") ? "NUL character" : text.isWellFormed() ? null : "lone surrogate"

/**
 * Cuts text to at most `max` UTF-16 units without splitting a surrogate pair: half a pair is a
 * lone surrogate, which PostgreSQL refuses in an error message as anywhere else.
 */
export const cut = (text: string, max: number): string => {
  if (text.length <= max) return text
  const last = text.charCodeAt(max - 1)
  return text.slice(0, last >= 0xd800 && last <= 0xdbff ? max - 1 : max)
}

/** A name from the message, quoted and escaped so that the error message itself is storable. */
const quote = (name: string) => cut(JSON.stringify(name), 80)

/**
 * Valid JSON text can carry a NUL or a lone surrogate only as a `\u0000` or `\uD800`-`\uDFFF`
 * escape: JSON refuses raw control characters and fatal UTF-8 decoding refuses raw surrogates.
 * A miss proves the parsed value clean; a hit (an escaped backslash, a valid pair) is settled by
 * `findUnstorable`.
 */
const suspectEscape = /\\u(?:0000|[dD][89a-fA-F])/

interface Path {
  readonly parent: Path | null
  readonly key: string | number
}

const identifier = /^[A-Za-z_$][A-Za-z0-9_$]{0,63}$/
const pathText = (path: Path | null): string => {
  const keys: Array<string | number> = []
  for (let p = path; p !== null; p = p.parent) keys.push(p.key)
  let text = ""
  for (let i = keys.length - 1; i >= 0; i--) {
    const key = keys[i]!
    text += typeof key === "number" ? `[${key}]` : identifier.test(key) ? (text === "" ? key : `.${key}`) : `[${quote(key)}]`
    // A path of attacker-chosen depth must not make the message unbounded.
    if (text.length > 300) return `${cut(text, 300)}...`
  }
  return text
}

/**
 * Where the first string (value or object key) PostgreSQL cannot store sits in a parsed JSON
 * value, as a message, or null. Iterative: the depth of the JSON is the sender's choice.
 */
const findUnstorable = (root: unknown): string | null => {
  const stack: Array<{ readonly value: unknown; readonly path: Path | null }> = [{ value: root, path: null }]
  while (stack.length > 0) {
    const { path, value } = stack.pop()!
    if (typeof value === "string") {
      const problem = unstorable(value)
      if (problem !== null) return `${problem} in ${path === null ? "the message body" : pathText(path)}`
    } else if (Array.isArray(value)) {
      for (let i = value.length - 1; i >= 0; i--) stack.push({ value: value[i], path: { parent: path, key: i } })
    } else if (typeof value === "object" && value !== null) {
      const keys = Object.keys(value)
      for (let i = keys.length - 1; i >= 0; i--) {
        const key = keys[i]!
        const problem = unstorable(key)
        if (problem !== null) {
          return `${problem} in the field name ${quote(key)} ${path === null ? "at the top of the body" : `in ${pathText(path)}`}`
        }
        stack.push({ value: (value as Record<string, unknown>)[key], path: { parent: path, key } })
      }
    }
  }
  return null
}

/**
 * Text PostgreSQL cannot store in the message's own id or in a header the dead-letter record
 * keeps (plain values, as `carriedHeaders` in messaging/deadLetter.ts keeps them), or null.
 */
const unstorableProperty = (delivery: Delivery): string | null => {
  if (delivery.messageId !== undefined) {
    const problem = unstorable(delivery.messageId)
    if (problem !== null) return `${problem} in the AMQP messageId`
  }
  const headers = delivery.headers
  if (headers === undefined) return null
  for (const name of Object.keys(headers)) {
    const value = headers[name]
    const kept = typeof value === "string" || typeof value === "boolean" || (typeof value === "number" && Number.isFinite(value))
    if (!kept) continue
    const inName = unstorable(name)
    if (inName !== null) return `${inName} in the name of header ${quote(name)}`
    const inValue = typeof value === "string" ? unstorable(value) : null
    if (inValue !== null) return `${inValue} in header ${quote(name)}`
  }
  return null
}

/** The first failure's message of a Schema decoding, in the schema's own words. */
const failureMessage = (exit: Exit.Exit<unknown, { readonly message: string }>): string => {
  if (Exit.isSuccess(exit)) return ""
  const error = exit.cause.reasons.find((r) => r._tag === "Fail")
  return error && error._tag === "Fail" ? error.error.message : "does not match its schema"
}

/** Best-effort look at a body, never failing: feeds dead-letter records and logs. Only storable text comes out. */
export const peek = (body: Uint8Array, messageId?: string): Peek => {
  const json = body.length <= 1024 * 1024 ? parseJson(body) : parseFailure
  const storable = (value: unknown): string | null =>
    typeof value === "string" && value.length <= 256 && unstorable(value) === null ? value : null
  const field = (name: string) => (isRecord(json) ? storable(json[name]) : null)
  return {
    eventType: field("event"),
    organizationId: field("organization_id"),
    eventId: field("event_id") ?? storable(messageId)
  }
}

/**
 * Bytes to one typed event, or a `ValidationError` that says what is wrong in words an
 * operator can act on. Never a defect, whatever the bytes; the message of the error never
 * carries text PostgreSQL cannot store.
 */
export const decodeDelivery = (delivery: Delivery): Effect.Effect<Decoded, ValidationError> =>
  Effect.flatMap(ProcessingPolicy, (policy) => Effect.fromResult(decodeWith(delivery, policy)))

/**
 * `decodeDelivery` as a plain function of the message and the policy: the consumer decodes each
 * message with it as it arrives, with no effect, span or context change of its own (issue 18).
 */
export const decodeWith = (delivery: Delivery, policy: ProcessingPolicy): Result.Result<Decoded, ValidationError> => {
  const property = unstorableProperty(delivery)
  if (property !== null) return invalid(`${property}: PostgreSQL cannot store it`)
  if (delivery.body.length === 0) return invalid("Empty message body")
  if (delivery.body.length > policy.maxBodyBytes) {
    return invalid(`Message body of ${delivery.body.length} bytes exceeds the limit of ${policy.maxBodyBytes}`)
  }
  const text = decodeUtf8(delivery.body)
  const json = text === parseFailure ? parseFailure : parseText(text)
  if (text === parseFailure || json === parseFailure) return invalid("Message body is not valid UTF-8 JSON")
  // `includes` first: a plain substring search is several times cheaper than the regex.
  if (text.includes("\\u") && suspectEscape.test(text)) {
    const problem = findUnstorable(json)
    if (problem !== null) return invalid(`${problem}: PostgreSQL cannot store it`)
  }
  if (!isRecord(json)) return invalid("Message body is not a JSON object")
  const type = json["event"]
  if (typeof type !== "string") return invalid("Field 'event' is missing or not a string")
  if (!known.has(type)) return invalid(`Unknown event type '${cut(type, 100)}'`)
  if (!delivery.accepts.includes(type as InboundEventType)) {
    return invalid(`Event type '${type}' does not belong on queue ${delivery.queue}`)
  }
  const version = json["version"]
  if (typeof version === "string" && !/^1(\.\d+){0,2}$/.test(version)) {
    return invalid(`Unsupported version '${cut(version, 20)}' of ${type}: this consumer reads 1.x`)
  }
  const exit = decodeEvent(json)
  if (Exit.isFailure(exit)) return invalid(`Invalid ${type}: ${failureMessage(exit)}`)
  const event = exit.value
  const lines = event.event === "order.placed"
    ? event.data.items.length
    : event.event === "order.shipped"
    ? event.data.shipped_items.length
    : event.event === "return.received"
    ? event.data.returned_items.length
    : event.event === "catalog.product.deleted"
    ? event.data.variant_ids.length
    : 0
  if (lines > policy.maxLinesPerEvent) {
    return invalid(`${type} carries ${lines} lines; at most ${policy.maxLinesPerEvent} are accepted`)
  }
  if (event.event_id !== undefined) return Result.succeed({ event, eventId: event.event_id })
  // The messageId stands for the event_id, so it follows the same rule (an empty one is unset).
  if (delivery.messageId !== undefined && delivery.messageId !== "") {
    const id = decodeId(delivery.messageId)
    if (Exit.isFailure(id)) {
      return invalid(`AMQP messageId '${cut(delivery.messageId, 100)}', used as the event_id, ${failureMessage(id)}`)
    }
    return Result.succeed({ event, eventId: id.value })
  }
  return Result.succeed({ event, eventId: bodyDigest(delivery.body) })
}

const invalid = (message: string): Result.Result<never, ValidationError> => Result.fail(new ValidationError({ message: cut(message, 1000) }))
