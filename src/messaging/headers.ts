/**
 * AMQP header values every common client decodes (issue 15 item 6). amqplib picks the smallest
 * integer type for a plain number (`b`, `s`), and py-amqp (kombu) reads `s` as a short string
 * and `b` as unsigned: a header of 200 fails kombu's `basic_get`. So every value we send carries
 * its type: signed 32-bit `I`, 64-bit `l` (non-negative only: py-amqp and pika read `l` unsigned),
 * doubles `d`, long strings `S`, booleans `t`, void `V`, byte arrays `x`, tables and arrays
 * typed recursively; decimals and timestamps keep their own type.
 *
 * amqplib encodes the header table into a 64 KiB buffer and short strings (`messageId`...) up to
 * 255 bytes, and throws past either: here they are cut to what fits, never a reason to fail.
 */

/** amqplib's encoding buffer for a field table (`SCRATCH` in amqplib/lib/defs.js). */
export const headerTableLimit = 65_536
const shortStringLimit = 255
/** Deeper than this a carried value is dropped: nothing real nests so far, and recursion stays bounded. */
const maxDepth = 32

const utf8 = (text: string) => Buffer.byteLength(text, "utf8")

/** `text` cut to at most `bytes` UTF-8 bytes, never inside a character. */
export const cutUtf8 = (text: string, bytes: number): string => {
  // A UTF-16 unit is at most 3 bytes of UTF-8 (a surrogate pair, two units, is 4): short text
  // fits without being measured, which is what nearly every property and header is.
  if (text.length * 3 <= bytes || utf8(text) <= bytes) return text
  let end = Math.min(text.length, bytes)
  while (end > 0 && utf8(text.slice(0, end)) > bytes) end--
  // Do not leave the high half of a surrogate pair behind.
  const last = text.charCodeAt(end - 1)
  if (last >= 0xd800 && last <= 0xdbff) end--
  return text.slice(0, end)
}

/** A string that fits an AMQP short string (a property such as `messageId`). */
export const shortString = (text: string): string => cutUtf8(text, shortStringLimit)

type Typed =
  | string
  | boolean
  | null
  | Buffer
  | { readonly "!": "int" | "long" | "double" | "timestamp" | "decimal"; readonly value: unknown }
  | ReadonlyArray<Typed>
  | { readonly [name: string]: Typed }

const int32 = (n: number) => n >= -0x80000000 && n <= 0x7fffffff

const typedNumber = (n: number): Typed => {
  if (Number.isInteger(n) && int32(n)) return { "!": "int", value: n }
  // Unsigned readers of `l` (py-amqp, pika) would misread a negative one: a double instead.
  if (Number.isSafeInteger(n) && n > 0) return { "!": "long", value: n }
  return { "!": "double", value: n }
}

const isTypedMarker = (value: object): value is { readonly "!": unknown; readonly value: unknown } => Object.hasOwn(value, "!")

/** One value with an explicit AMQP type, or `undefined` when it cannot be carried (dropped). */
export const typedValue = (value: unknown, depth = 0): Typed | undefined => {
  if (depth > maxDepth) return undefined
  switch (typeof value) {
    case "string":
    case "boolean":
      return value
    case "number":
      return typedNumber(value)
    case "bigint":
      // amqplib writes `long` with BigInt(value): exact for any non-negative int64.
      return value >= 0n && value <= 0x7fffffffffffffffn ? { "!": "long", value } : String(value)
    case "object": {
      if (value === null) return null
      if (Buffer.isBuffer(value)) return value
      if (value instanceof Uint8Array) return Buffer.from(value.buffer, value.byteOffset, value.byteLength)
      if (value instanceof Date) return { "!": "timestamp", value: Math.floor(value.getTime() / 1000) }
      if (Array.isArray(value)) {
        return value.map((item) => typedValue(item, depth + 1) ?? null)
      }
      if (isTypedMarker(value)) {
        // What amqplib decoded with a type we keep (decimal, timestamp), or a type we replace.
        if ((value["!"] === "decimal" || value["!"] === "timestamp") && typeof value.value === (value["!"] === "decimal" ? "object" : "number")) {
          return { "!": value["!"], value: value.value }
        }
        return typedValue(value.value, depth + 1)
      }
      const table: Record<string, Typed> = {}
      for (const [name, item] of Object.entries(value)) {
        if (utf8(name) > shortStringLimit) continue
        const typed = typedValue(item, depth + 1)
        if (typed !== undefined) table[name] = typed
      }
      return table
    }
    default:
      return undefined
  }
}

/** Bytes a typed value takes in a field table, tag included, as amqplib encodes it. */
const encodedSize = (value: Typed): number => {
  if (value === null) return 1
  if (typeof value === "string") return 5 + utf8(value)
  if (typeof value === "boolean") return 2
  if (Buffer.isBuffer(value)) return 5 + value.length
  if (Array.isArray(value)) return 5 + value.reduce((sum: number, item: Typed) => sum + encodedSize(item), 0)
  if (isTypedMarker(value)) {
    switch (value["!"]) {
      case "int":
        return 5
      case "decimal":
        return 6
      default:
        return 9
    }
  }
  return 1 + tableSize(value as { readonly [name: string]: Typed })
}

const entrySize = (name: string, value: Typed) => 1 + utf8(name) + encodedSize(value)
const tableSize = (table: { readonly [name: string]: Typed }): number =>
  Object.entries(table).reduce((sum, [name, value]) => sum + entrySize(name, value), 4)

/**
 * The headers, each value typed (see above), fitted into amqplib's table: the names in `keep`
 * (our own `x-*` headers, `traceparent`) first, then the others in order while they fit; a header
 * that does not fit is left out, and named in `dropped`.
 */
export const typedHeaders = (
  headers: Readonly<Record<string, unknown>>,
  keep: (name: string) => boolean
): { readonly headers: Record<string, Typed>; readonly dropped: ReadonlyArray<string> } => {
  const out: Record<string, Typed> = {}
  const dropped: Array<string> = []
  let size = 4
  const place = (name: string, value: unknown) => {
    const typed = utf8(name) <= shortStringLimit ? typedValue(value) : undefined
    const added = typed === undefined ? Infinity : entrySize(name, typed)
    if (typed === undefined || size + added > headerTableLimit) {
      dropped.push(name)
      return
    }
    out[name] = typed
    size += added
  }
  // One pass over the names: the kept ones placed at once, the others after them, in order.
  let others: Array<string> | undefined
  for (const name of Object.keys(headers)) {
    const value = headers[name]
    if (value === undefined) continue
    if (keep(name)) place(name, value)
    else (others ??= []).push(name)
  }
  if (others !== undefined) for (const name of others) place(name, headers[name])
  return { headers: out, dropped }
}
