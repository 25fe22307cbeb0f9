import { createHash, hash } from "node:crypto"

/**
 * The one way the service derives an id (SPEC 3): event-log keys, dead letters, outbound
 * `event_id`s, reservation, movement and adjustment ids, timer keys. Every id is scoped by the
 * organization, because `event_id`s are the publishers' and two organizations may send the same
 * one; each must get its own effects, announcements and dead letter.
 *
 * Ids derive from the inbound `event_id`, so a retried or replayed event produces the same ids and
 * downstream consumers can deduplicate what they receive. The result is UUID-shaped (version 8,
 * "custom", RFC 9562). Parts are length-prefixed, so no choice of parts can collide with another.
 */
export const deriveId = (organizationId: string, kind: string, ...parts: ReadonlyArray<string>): string => {
  let text = `${organizationId.length}:${organizationId};${kind.length}:${kind};`
  for (const part of parts) text += `${part.length}:${part};`
  // One-shot: no Hash object per id (a group derives thousands).
  const hex = hash("sha256", text, "hex")
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${((parseInt(hex[16]!, 16) & 0x3) | 0x8).toString(16)}${hex.slice(17, 20)}-${hex.slice(20, 32)}`
}

/** `event_id` of a message that carries none, nor a `messageId`: the SHA-256 of its body (SPEC 2). */
export const bodyDigest = (body: Uint8Array): string => createHash("sha256").update(body).digest("hex")
