import { createRequire } from "node:module"
import { dirname, join } from "node:path"
import { describe, expect, it } from "vitest"
import { cutUtf8, headerTableLimit, typedHeaders } from "../../src/messaging/headers.ts"
import { encodable } from "../../src/messaging/publisher.ts"

/**
 * Header typing and cutting against amqplib's own codec (the one that encodes what we publish):
 * every value gets a type all clients decode the same, and no header block or short string makes
 * amqplib throw.
 */
// Not an export of the package: loaded by path, as it is the codec amqplib itself uses.
const require = createRequire(import.meta.url)
const codec = require(join(dirname(require.resolve("amqplib")), "lib", "codec.js")) as {
  encodeTable(buffer: Buffer, value: unknown, offset: number): number
  decodeFields(slice: Buffer): Record<string, unknown>
}
const encode = (table: unknown) => {
  const buffer = Buffer.alloc(headerTableLimit)
  const size = codec.encodeTable(buffer, table, 0)
  return buffer.subarray(0, size)
}
/** The type tag amqplib wrote for the top-level header `name`. */
const tagOf = (encoded: Buffer, name: string) => {
  const at = encoded.indexOf(Buffer.concat([Buffer.from([name.length]), Buffer.from(name)]))
  return String.fromCharCode(encoded[at + 1 + name.length]!)
}

describe("typed headers", () => {
  it("gives every number a type py-amqp and pika read as amqplib meant it", () => {
    const { headers } = typedHeaders({ small: 1, mid: 200, attempts: 130, big: 2 ** 40, negBig: -(2 ** 40), ratio: 0.5, text: "é", yes: true, none: null }, () => false)
    const encoded = encode(headers)
    expect(["small", "mid", "attempts"].map((n) => tagOf(encoded, n))).toEqual(["I", "I", "I"])
    expect(tagOf(encoded, "big")).toBe("l")
    // py-amqp and pika read `l` unsigned: a negative one goes as a double, exact below 2^53.
    expect(tagOf(encoded, "negBig")).toBe("d")
    expect(["ratio", "text", "yes", "none"].map((n) => tagOf(encoded, n))).toEqual(["d", "S", "t", "V"])
    expect(codec.decodeFields(encoded.subarray(4))).toEqual({
      small: 1, mid: 200, attempts: 130, big: 2 ** 40, negBig: -(2 ** 40), ratio: 0.5, text: "é", yes: true, none: null
    })
  })

  it("types nested tables and arrays, and keeps byte arrays, decimals and timestamps", () => {
    const original = {
      table: { n: 300, inner: { list: [1, 200, "s", null, false] } },
      bytes: Buffer.from([0, 255]),
      price: { "!": "decimal", value: { places: 2, digits: 1999 } },
      at: { "!": "timestamp", value: 1_700_000_000 }
    }
    const { headers } = typedHeaders(codec.decodeFields(encode(original).subarray(4)), () => false)
    const encoded = encode(headers)
    expect([tagOf(encoded, "table"), tagOf(encoded, "bytes"), tagOf(encoded, "price"), tagOf(encoded, "at")]).toEqual(["F", "x", "D", "T"])
    expect(encoded.includes(Buffer.from([1, 110, 73]))).toBe(true) // "n" typed I inside the nested table
    expect(codec.decodeFields(encoded.subarray(4))).toEqual(original)
  })

  it("cuts a header block over 64 KiB to what amqplib can encode, keeping the headers named first", () => {
    const { headers, dropped } = typedHeaders(
      { "x-a": "a".repeat(40_000), "x-b": "b".repeat(40_000), "x-error-type": "ValidationError", ["n".repeat(300)]: 1 },
      (name) => name === "x-error-type"
    )
    expect(Object.keys(headers)).toEqual(["x-error-type", "x-a"])
    expect(dropped).toEqual(["x-b", "n".repeat(300)])
    expect(() => encode(headers)).not.toThrow()
  })

  it("cuts short-string properties to 255 bytes, never inside a character", () => {
    expect(Buffer.byteLength(cutUtf8("é".repeat(200), 255))).toBe(254)
    expect(cutUtf8("a" + "😀".repeat(100), 255)).toBe("a" + "😀".repeat(63))
    const { options } = encodable({ messageId: "m".repeat(300), correlationId: "é".repeat(200), headers: {} }, [])
    expect(options.messageId).toBe("m".repeat(255))
    expect(Buffer.byteLength(options.correlationId!)).toBe(254)
  })
})
