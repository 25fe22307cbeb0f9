import { createHash } from "node:crypto"

/**
 * A UUID-shaped id derived from its parts. Ids of everything an event creates (reservations,
 * movements, outbound events) derive from the inbound `event_id`, so a retried or replayed
 * event produces the same ids and downstream consumers can deduplicate what they receive.
 */
export const deriveId = (...parts: ReadonlyArray<string>): string => {
  const hex = createHash("sha256").update(parts.join("\u0000")).digest("hex")
  // Version 8 ("custom") UUID layout, RFC 9562.
  return `${hex.slice(0, 8)}-${hex.slice(8, 12)}-8${hex.slice(13, 16)}-${((parseInt(hex[16]!, 16) & 0x3) | 0x8).toString(16)}${hex.slice(17, 20)}-${hex.slice(20, 32)}`
}

/** `event_id` of a message that carries none, nor a `messageId`: the SHA-256 of its body (SPEC 2). */
export const bodyDigest = (body: Uint8Array): string => createHash("sha256").update(body).digest("hex")
