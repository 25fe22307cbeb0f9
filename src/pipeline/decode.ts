import { Effect, Exit, Schema } from "effect"
import { ValidationError } from "../domain/errors.ts"
import { InboundEvent, type InboundEventType, inboundEventTypes } from "../domain/events.ts"
import { bodyDigest } from "../domain/ids.ts"
import { ProcessingPolicy } from "./policy.ts"

/** A message as the broker hands it over, without anything broker-specific. */
export interface Delivery {
  readonly body: Uint8Array
  /** The AMQP `messageId` property, when the publisher set one. */
  readonly messageId?: string | undefined
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
const utf8 = new TextDecoder("utf-8", { fatal: true })
const known = new Set<string>(inboundEventTypes)

const isRecord = (u: unknown): u is Record<string, unknown> => typeof u === "object" && u !== null && !Array.isArray(u)

const parseJson = (body: Uint8Array): unknown => {
  try {
    return JSON.parse(utf8.decode(body))
  } catch {
    return parseFailure
  }
}
const parseFailure = Symbol("not JSON")

/** Best-effort look at a body, never failing: feeds dead-letter records and logs. */
export const peek = (body: Uint8Array, messageId?: string): Peek => {
  const json = body.length <= 1024 * 1024 ? parseJson(body) : parseFailure
  const field = (name: string) =>
    isRecord(json) && typeof json[name] === "string" && (json[name] as string).length <= 256 ? (json[name] as string) : null
  return {
    eventType: field("event"),
    organizationId: field("organization_id"),
    eventId: field("event_id") ?? messageId ?? null
  }
}

/**
 * Bytes to one typed event, or a `ValidationError` that says what is wrong in words an
 * operator can act on. Never a defect, whatever the bytes.
 */
export const decodeDelivery = (delivery: Delivery): Effect.Effect<Decoded, ValidationError> =>
  Effect.flatMap(ProcessingPolicy, (policy) => {
    const invalid = (message: string) => Effect.fail(new ValidationError({ message }))
    if (delivery.body.length === 0) return invalid("Empty message body")
    if (delivery.body.length > policy.maxBodyBytes) {
      return invalid(`Message body of ${delivery.body.length} bytes exceeds the limit of ${policy.maxBodyBytes}`)
    }
    const json = parseJson(delivery.body)
    if (json === parseFailure) return invalid("Message body is not valid UTF-8 JSON")
    if (!isRecord(json)) return invalid("Message body is not a JSON object")
    const type = json["event"]
    if (typeof type !== "string") return invalid("Field 'event' is missing or not a string")
    if (!known.has(type)) return invalid(`Unknown event type '${type.slice(0, 100)}'`)
    if (!delivery.accepts.includes(type as InboundEventType)) {
      return invalid(`Event type '${type}' does not belong on queue ${delivery.queue}`)
    }
    const version = json["version"]
    if (typeof version === "string" && !/^1(\.\d+){0,2}$/.test(version)) {
      return invalid(`Unsupported version '${version.slice(0, 20)}' of ${type}: this consumer reads 1.x`)
    }
    const exit = decodeEvent(json)
    if (Exit.isFailure(exit)) {
      const error = exit.cause.reasons.find((r) => r._tag === "Fail")
      const detail = error && error._tag === "Fail" ? error.error.message : "does not match its schema"
      return invalid(`Invalid ${type}: ${detail}`.slice(0, 1000))
    }
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
    return Effect.succeed({ event, eventId: event.event_id ?? delivery.messageId ?? bodyDigest(delivery.body) })
  })
