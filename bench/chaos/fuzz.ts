/**
 * The fuzz run (issue 15): hostile messages published through amqplib to a real consumer
 * process in its own vhost and schema, then the invariants: the inbound queues are empty, every
 * message was acked or dead-lettered exactly once (one DLQ copy and one `failed_events` row, or
 * neither), the consumer is alive and still applies a valid event, reconciliation is clean.
 *
 * Everything is drawn from one seed, so a failure reproduces with `--seed`. Each message carries
 * its number in an `x-fuzz-seq` string header, which dead-lettered copies and
 * `failed_events.headers` carry on; a body digest is the fallback when a header was cut.
 */
import amqp from "amqplib"
import { createHash } from "node:crypto"
import { execFile } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import pg from "pg"
import type { Line } from "./audit.ts"
import { type ConsumerProcess, consumerCount, createVhost, deleteVhost, sleep, startConsumer, stopConsumer, vhostUrl, waitUntil } from "./infra.ts"
import { seededRandom } from "./workload.ts"

const exec = promisify(execFile)

export const SEQ_HEADER = "x-fuzz-seq"
export const FUZZ_ORG = "fuzz_org"
const WAREHOUSES = ["wh_1", "wh_2"]
const VARIANTS = 20
const MAX_BODY_BYTES = 1024 * 1024

const bindings: Record<string, ReadonlyArray<string>> = {
  catalog_events: ["catalog.variant.created", "catalog.variant.updated", "catalog.variant.deleted", "catalog.product.deleted"],
  order_events: ["order.placed", "order.confirmed", "order.cancelled", "order.shipped", "return.received"]
}
const exchangeOf = (event: string) => (event.startsWith("catalog.") ? "catalog_events" : "order_events")
const routed = (exchange: string, routingKey: string) => bindings[exchange]?.includes(routingKey) ?? false

export type FuzzKind = "valid" | "hostile"

export interface FuzzMessage {
  readonly seq: number
  /** `valid`: a well-formed event with a valid routing key (headers may still be hostile). */
  readonly kind: FuzzKind
  /** What was done to it, for the report. */
  readonly label: string
  readonly exchange: string
  readonly routingKey: string
  /** Whether a queue is bound to (exchange, routing key): an unroutable message never reaches the consumer. */
  readonly routed: boolean
  readonly body: Buffer
  readonly options: amqp.Options.Publish
  /** For valid events: the key the consumer logs it under. */
  readonly eventId?: string
}

// ---------------------------------------------------------------- random values

type Random = () => number
const int = (r: Random, lo: number, hi: number) => lo + Math.floor(r() * (hi - lo + 1))
const pick = <A>(r: Random, xs: ReadonlyArray<A>): A => xs[Math.floor(r() * xs.length)]!
const chance = (r: Random, p: number) => r() < p
/** A size between `lo` and `hi`, log-uniform: mostly small, sometimes huge, never all huge. */
const size = (r: Random, lo: number, hi: number) => Math.floor(lo * (hi / lo) ** r())

const nastyStrings = [
  "\u0000", "a\u0000b", "\ud800", "x\udfffy", "\u0000\ud800", "\u001b[2J\u0007", "line\nbreak", "'; DROP TABLE stock; --",
  "\u{1F4A9}", "\u202eevil", "\uffff\ufffe", "\ufeff", "%s%n%x", "{{7*7}}", "null", "", " ", "../../etc/passwd", "\\u0000"
]

const randomCodePoints = (r: Random, n: number) => {
  let s = ""
  for (let i = 0; i < n; i++) {
    const c = chance(r, 0.5) ? int(r, 0x20, 0x7e) : int(r, 0, 0x10ffff)
    // A value in the surrogate range becomes a lone surrogate: text PostgreSQL cannot store.
    s += c >= 0xd800 && c <= 0xdfff ? String.fromCharCode(c) : String.fromCodePoint(c)
  }
  return s
}

/** Any text: plain, unicode with lone surrogates, a known nasty one, a NUL somewhere, or huge. */
const randomText = (r: Random, hugeOk = true): string => {
  const x = r()
  if (x < 0.25) return `t${int(r, 0, 1e9).toString(36)}`
  if (x < 0.5) return randomCodePoints(r, int(r, 0, 40))
  if (x < 0.75) return pick(r, nastyStrings)
  if (x < 0.92 || !hugeOk) {
    const base = `v${int(r, 0, 1e6)}`
    const at = int(r, 0, base.length)
    return base.slice(0, at) + pick(r, ["\u0000", "\ud800", "\udc00", "\u0001"]) + base.slice(at)
  }
  return pick(r, ["x", "\u00e9", "\u{1F600}", "\u0000"]).repeat(size(r, 1_000, 200_000))
}

/** Marks where a deeply nested array goes: too deep to build as an object, spliced into the text. */
const deepMarker = (n: number) => `__fuzz_deep_${n}__`
const expandDeep = (text: string) => text.replace(/"__fuzz_deep_(\d+)__"/g, (_, n: string) => "[".repeat(Number(n)) + "]".repeat(Number(n)))

const randomJson = (r: Random, depth = 0): unknown => {
  const x = r()
  if (x < 0.1) return null
  if (x < 0.2) return chance(r, 0.5)
  if (x < 0.4) return pick(r, [0, -1, 1.5, 2 ** 53, -(2 ** 63), 1e308, Number.MIN_VALUE, int(r, -1e9, 1e9)])
  if (x < 0.65) return randomText(r, depth === 0)
  if (x < 0.75) return deepMarker(size(r, 100, 150_000))
  if (depth > 3) return "leaf"
  if (x < 0.87) return Array.from({ length: int(r, 0, 4) }, () => randomJson(r, depth + 1))
  const o: Record<string, unknown> = {}
  for (let i = int(r, 0, 4); i > 0; i--) o[randomText(r, false)] = randomJson(r, depth + 1)
  return o
}

// ---------------------------------------------------------------- AMQP headers and properties

/** A header value of one of amqplib's field types (lib/codec.js), chosen at random. */
const randomHeaderValue = (r: Random, depth = 0): unknown => {
  const types = ["byte", "short", "int", "long", "float", "double", "decimal", "timestamp", "bytes", "table", "array", "void", "boolean", "string", "plain"]
  switch (pick(r, types)) {
    case "byte":
      return { "!": "byte", value: int(r, -128, 127) }
    case "short":
      return { "!": "short", value: int(r, -32768, 32767) }
    case "int":
      return { "!": "int", value: int(r, -(2 ** 31), 2 ** 31 - 1) }
    case "long":
      return { "!": "long", value: pick(r, [0, -1, 2 ** 53 - 1, -(2 ** 53) + 1, int(r, -1e12, 1e12)]) }
    case "float":
      // No NaN or infinities: RabbitMQ 3.10 cannot parse them and closes the publisher's connection (541).
      return { "!": "float", value: pick(r, [0.5, -1.25, 3.4e38, -0, 1e-40]) }
    case "double":
      return { "!": "double", value: pick(r, [Math.PI, -0, Number.MIN_VALUE, -1e308, 1e308]) }
    case "decimal":
      return { "!": "decimal", value: { places: int(r, 0, 255), digits: int(r, 0, 2 ** 32 - 1) } }
    case "timestamp":
      return { "!": "timestamp", value: pick(r, [0, 1_700_000_000, 2 ** 40]) }
    case "bytes": {
      const n = chance(r, 0.1) ? int(r, 1_000, 20_000) : int(r, 0, 64)
      return Buffer.from(Array.from({ length: n }, () => int(r, 0, 255)))
    }
    case "table": {
      if (depth > 3) return {}
      const t: Record<string, unknown> = {}
      for (let i = int(r, 0, 3); i > 0; i--) t[headerName(r)] = randomHeaderValue(r, depth + 1)
      return t
    }
    case "array":
      return depth > 3 ? [] : Array.from({ length: int(r, 0, 4) }, () => randomHeaderValue(r, depth + 1))
    case "void":
      return null
    case "boolean":
      return chance(r, 0.5)
    case "string":
      return randomText(r, false)
    default:
      // An untyped JS number: amqplib picks the smallest integer type (200 becomes a short).
      return pick(r, [1, 127, 128, 200, 40_000, 2 ** 31, 0.5])
  }
}

/** A header name: a short string of up to 255 UTF-8 bytes, sometimes with NUL or a lone surrogate. */
const headerName = (r: Random): string => {
  const name = chance(r, 0.7) ? `h-${int(r, 0, 1e6).toString(36)}` : randomCodePoints(r, int(r, 1, 30))
  let cut = name
  while (Buffer.byteLength(cut) > 255) cut = cut.slice(0, -1)
  return cut === SEQ_HEADER ? "h" : cut
}

/** Headers another service could send, including names the broker and this consumer give meaning to. */
const randomHeaders = (r: Random, seq: number): Record<string, unknown> => {
  // The tag comes first, so a consumer that cuts an oversized header block keeps it.
  const headers: Record<string, unknown> = { [SEQ_HEADER]: String(seq) }
  if (chance(r, 0.3)) return headers
  for (let i = int(r, 1, 6); i > 0; i--) headers[headerName(r)] = randomHeaderValue(r)
  if (chance(r, 0.15)) {
    const traceparent = `00-${createHash("md5").update(String(seq)).digest("hex")}-${"ab".repeat(8)}-01`
    headers["traceparent"] = pick(r, [traceparent, Buffer.from(traceparent), randomText(r, false), 42])
  }
  if (chance(r, 0.05)) headers["x-delivery-count"] = pick(r, [0, 1, 4, 5, 1000, -1, "5", { "!": "long", value: 2 ** 40 }])
  if (chance(r, 0.05)) headers["x-replay-count"] = pick(r, [1, "2", -3, { "!": "double", value: 1.5 }, Buffer.from("1")])
  if (chance(r, 0.05)) headers["x-error-type"] = pick(r, ["Forged", "\u0000", "ValidationError", 7])
  if (chance(r, 0.04)) {
    // A header block near amqplib's own 64 KiB encoding limit: the consumer adds its own headers to it.
    headers[`h-huge-${seq}`] = "h".repeat(size(r, 20_000, 60_000))
  }
  return headers
}

/** A `messageId` (short string, at most 255 bytes): always unique to the message, else collisions would be legitimate de-duplication. */
const randomMessageId = (r: Random, seq: number): string | undefined => {
  const x = r()
  if (x < 0.3) return undefined
  if (x < 0.5) return `fuzz-${seq}`
  let id = `${seq}-${pick(r, ["\u0000", "\ud800", "é\u{1F600}", "'\"", "\u001b", " ", randomCodePoints(r, 20)])}`
  if (chance(r, 0.3)) id += "m".repeat(250)
  while (Buffer.byteLength(id) > 255) id = id.slice(0, -1)
  return id
}

// ---------------------------------------------------------------- events

interface Envelope {
  event: string
  version: string
  timestamp: string
  organization_id: string
  event_id: string
  data: Record<string, unknown>
}

const envelope = (event: string, eventId: string, data: Record<string, unknown>): Envelope => ({
  event,
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: FUZZ_ORG,
  event_id: eventId,
  data
})

/** A chain of valid events on one key, in the order they must be published. */
const validChain = (r: Random, n: number): Array<Envelope> => {
  const id = (step: number) => `fz-${n}-${step}`
  if (chance(r, 0.3)) {
    const v = `nv_${n}`
    const chain = [
      envelope("catalog.variant.created", id(0), { variant_id: v, product_id: `np_${n}`, sku: `SKU-${n}`, track_inventory: true }),
      envelope("catalog.variant.updated", id(1), { variant_id: v, changes: { sku: { old: `SKU-${n}`, new: `SKU-${n}-B` } } })
    ]
    if (chance(r, 0.5)) chain.push(envelope("catalog.variant.deleted", id(2), { variant_id: v, product_id: `np_${n}` }))
    else chain.push(envelope("catalog.product.deleted", id(2), { product_id: `np_${n}`, variant_ids: [v] }))
    return chain
  }
  const order = `ord_${n}`
  const items = [{ variant_id: `var_${int(r, 0, VARIANTS - 1)}`, quantity: int(r, 1, 3), warehouse_id: pick(r, WAREHOUSES) }]
  const chain = [envelope("order.placed", id(0), {
    order_id: order,
    items: items.map((i) => ({ variant_id: i.variant_id, quantity: i.quantity, preferred_warehouse_id: i.warehouse_id }))
  })]
  if (chance(r, 0.3)) {
    chain.push(envelope("order.cancelled", id(1), { order_id: order, cancellation_reason: "customer_request" }))
    return chain
  }
  chain.push(envelope("order.confirmed", id(1), { order_id: order, payment_confirmed: true }))
  chain.push(envelope("order.shipped", id(2), { order_id: order, shipment_id: `sh_${n}`, shipped_items: items }))
  if (chance(r, 0.5)) {
    chain.push(envelope("return.received", id(3), {
      order_id: order,
      return_id: `ret_${n}`,
      warehouse_id: items[0]!.warehouse_id,
      returned_items: [{ variant_id: items[0]!.variant_id, quantity: 1, condition: pick(r, ["good", "damaged"]) }]
    }))
  }
  return chain
}

type Path = Array<string | number>

const paths = (value: unknown, at: Path = [], out: Array<Path> = []): Array<Path> => {
  if (at.length > 0) out.push(at)
  if (Array.isArray(value)) value.forEach((v, i) => paths(v, [...at, i], out))
  else if (typeof value === "object" && value !== null) for (const [k, v] of Object.entries(value)) paths(v, [...at, k], out)
  return out
}
const getAt = (root: unknown, path: Path): unknown => path.reduce<any>((o, k) => (o == null ? undefined : o[k]), root)
const setAt = (root: any, path: Path, value: unknown) => {
  const parent = getAt(root, path.slice(0, -1)) as any
  parent[path.at(-1)!] = value
}
const deleteAt = (root: any, path: Path) => {
  const parent = getAt(root, path.slice(0, -1)) as any
  if (Array.isArray(parent)) parent.splice(path.at(-1) as number, 1)
  else delete parent[path.at(-1)!]
}

/** One random change to a valid envelope; says what it did. */
const mutate = (r: Random, e: any, seq: number): string => {
  const all = paths(e)
  const strings = all.filter((p) => typeof getAt(e, p) === "string")
  const path = pick(r, all)
  const name = path.join(".")
  const x = r()
  if (x < 0.2) {
    setAt(e, path, randomJson(r))
    // An event_id that is still valid must stay unique: a shared one is a legitimate duplicate.
    if (path.at(-1) === "event_id" && typeof getAt(e, path) === "string") setAt(e, path, `${getAt(e, path)}${seq}`)
    return `wrong type at ${name}`
  }
  if (x < 0.32) {
    deleteAt(e, path)
    return `missing ${name}`
  }
  if (x < 0.55 && strings.length > 0) {
    const p = pick(r, strings)
    const s = getAt(e, p) as string
    const at = int(r, 0, s.length)
    const bad = pick(r, ["\u0000", "\ud800", "\udfff", "\u0000\u0000"])
    setAt(e, p, s.slice(0, at) + bad + s.slice(at))
    return `${JSON.stringify(bad)} in ${p.join(".")}`
  }
  if (x < 0.62 && strings.length > 0) {
    const p = pick(r, strings)
    setAt(e, p, pick(r, ["x", "\u00e9", "\u0000"]).repeat(size(r, 1_000, 300_000)))
    return `huge string at ${p.join(".")}`
  }
  if (x < 0.7) {
    setAt(e, path, deepMarker(size(r, 1_000, 200_000)))
    return `deep nesting at ${name}`
  }
  if (x < 0.77) {
    e.event = pick(r, ["order.exploded", "inventory.stock.reserved", "", "ORDER.PLACED", randomText(r, false)])
    return "unknown event"
  }
  if (x < 0.84) {
    const other = exchangeOf(String(e.event)) === "order_events" ? bindings["catalog_events"]! : bindings["order_events"]!
    e.event = pick(r, other)
    return "event of the other queue"
  }
  if (x < 0.9) {
    e.version = pick(r, ["2.0", "0.9", "1", "1.0.0.0", "", "1.\u0000"])
    return `version ${JSON.stringify(e.version)}`
  }
  if (x < 0.95) {
    e[randomText(r, false)] = randomJson(r)
    return "extra field"
  }
  const items = e.data?.items ?? e.data?.shipped_items ?? e.data?.returned_items
  if (Array.isArray(items) && typeof items[0] === "object" && items[0] !== null) {
    items[0].quantity = pick(r, [0, -3, 1.5, 2 ** 53, "1", 1_000_001, 1_000_000])
    return `quantity ${JSON.stringify(items[0].quantity)}`
  }
  e.organization_id = pick(r, [42, "", "org a", "fuzz_org\u0000", "other_org"])
  return `organization_id ${JSON.stringify(e.organization_id)}`
}

/** Bytes that are not an event at all. */
const randomBody = (r: Random, seq: number): { label: string; body: Buffer } => {
  const x = r()
  if (x < 0.35) return { label: "random bytes", body: Buffer.from(Array.from({ length: int(r, 8, 2048) }, () => int(r, 0, 255))) }
  if (x < 0.55) return { label: "random JSON", body: Buffer.from(expandDeep(JSON.stringify({ fuzz: seq, v: randomJson(r) }))) }
  if (x < 0.7) {
    const text = JSON.stringify(envelope("order.cancelled", `fz-raw-${seq}`, { order_id: `o${seq}` }))
    return { label: "raw NUL byte in a JSON string", body: Buffer.from(text.replace(`"o${seq}"`, `"o${seq}\u0000"`)) }
  }
  if (x < 0.8) {
    const text = JSON.stringify(envelope("order.cancelled", `fz-raw-${seq}`, { order_id: `o${seq}` }))
    const [head, tail] = text.split(`o${seq}`) as [string, string]
    return { label: "invalid UTF-8 in a JSON string", body: Buffer.concat([Buffer.from(head), Buffer.from([0xc3, 0x28, 0xff]), Buffer.from(tail)]) }
  }
  if (x < 0.9) {
    return { label: "truncated JSON", body: Buffer.from(JSON.stringify(envelope("order.placed", `fz-raw-${seq}`, { order_id: `o${seq}` })).slice(0, int(r, 1, 60)) + seq) }
  }
  return { label: "JSON of the wrong shape", body: Buffer.from(JSON.stringify(pick(r, [[seq], `s${seq}`, seq, { event: seq }, { data: null, seq }]))) }
}

/**
 * `count` messages from `seed`: about a third valid events of every type (in per-key order),
 * the rest mutated events and raw bodies, with random headers, `messageId`s and routing.
 */
export const fuzzMessages = (seed: number, count: number): Array<FuzzMessage> => {
  const r = seededRandom(seed)
  // Valid chains are interleaved, each chain's steps in order (per-key order is a promise of one queue).
  const pending: Array<Array<Envelope>> = []
  let chains = 0
  const out: Array<FuzzMessage> = []
  for (let seq = 0; seq < count; seq++) {
    const options: amqp.Options.Publish = { persistent: true, headers: randomHeaders(r, seq) }
    const messageId = randomMessageId(r, seq)
    if (messageId !== undefined) options.messageId = messageId
    if (chance(r, 0.5)) options.contentType = pick(r, ["application/json", "text/plain", "application/octet-stream", "\u00e9/\u0001"])
    if (chance(r, 0.03)) options.expiration = pick(r, ["0", "1", "5"])
    if (chance(r, 0.05)) options.priority = int(r, 0, 255)
    if (chance(r, 0.05)) options.type = randomText(r, false).slice(0, 100)

    const x = r()
    if (x < 0.35) {
      if (pending.length < 8 || chance(r, 0.2)) pending.push(validChain(r, chains++))
      const i = int(r, 0, pending.length - 1)
      const event = pending[i]!.shift()!
      if (pending[i]!.length === 0) pending.splice(i, 1)
      // Valid events keep their routing; their headers may still be hostile.
      out.push({
        seq, kind: "valid", label: event.event, exchange: exchangeOf(event.event), routingKey: event.event, routed: true,
        body: Buffer.from(JSON.stringify(event)), options, eventId: event.event_id
      })
      continue
    }
    let label: string
    let body: Buffer
    let event = "order.placed"
    if (x < 0.8) {
      const e: any = validChain(r, 1_000_000 + seq)[int(r, 0, 1)]
      event = e.event
      e.event_id = `fz-h-${seq}`
      const changes = Array.from({ length: int(r, 1, 3) }, () => mutate(r, e, seq))
      label = changes.join("; ")
      body = Buffer.from(expandDeep(JSON.stringify(e)))
    } else {
      ;({ label, body } = randomBody(r, seq))
    }
    let exchange = exchangeOf(event)
    let routingKey = event
    const y = r()
    if (y < 0.1) routingKey = pick(r, bindings[exchange]!)
    else if (y < 0.15) exchange = exchange === "order_events" ? "catalog_events" : "order_events"
    else if (y < 0.2) routingKey = randomCodePoints(r, int(r, 0, 60)).slice(0, 100)
    while (Buffer.byteLength(routingKey) > 255) routingKey = routingKey.slice(0, -1)
    out.push({ seq, kind: "hostile", label, exchange, routingKey, routed: routed(exchange, routingKey), body, options })
  }
  return out
}

// ---------------------------------------------------------------- the run

export interface FuzzOptions {
  readonly messages: number
  readonly seed: number
  /** Repository root: where `src/main.ts` is. */
  readonly cwd: string
  readonly databaseUrl: string
  /** Longest wait for the inbound queues to empty; a consumer that loops fails here instead of hanging. */
  readonly settleTimeoutMs: number
  /** More consumer settings, e.g. `QUEUE_TYPE: "classic"`. */
  readonly env?: Readonly<Record<string, string>>
  readonly log: (line: string) => void
}

export interface FuzzResult {
  readonly seed: number
  readonly lines: ReadonlyArray<Line>
  readonly ok: boolean
  /** Examples of each failure, enough to reproduce one by hand. */
  readonly samples: ReadonlyArray<string>
}

interface DeadCopy {
  readonly seq: number | undefined
  readonly errorType: string | undefined
  /** The broker dead-lettered it (`x-death`) and the consumer did not (no `x-failed-at`; a publisher may forge `x-error-type`). */
  readonly byBroker: boolean
}

const digest = (body: Uint8Array) => createHash("sha256").update(body).digest("hex")

/** The `x-fuzz-seq` of a header value as amqplib or a jsonb column returns it. */
const seqOf = (value: unknown): number | undefined => {
  if (typeof value === "string" && /^\d+$/.test(value)) return Number(value)
  if (typeof value === "number") return value
  if (Buffer.isBuffer(value)) return seqOf(value.toString("utf8"))
  if (typeof value === "object" && value !== null && "value" in value) return seqOf((value as { value: unknown }).value)
  return undefined
}

/** Describes a message for a sample line: what it is and how to publish it again. */
export const describeMessage = (m: FuzzMessage) => {
  const show = (s: string) => JSON.stringify(s.length > 160 ? `${s.slice(0, 160)}…(${s.length} chars)` : s)
  const headers = Object.fromEntries(Object.entries(m.options.headers ?? {}).map(([k, v]) => {
    const text = Buffer.isBuffer(v) ? `<${v.length} bytes>` : JSON.stringify(v) ?? String(v)
    return [k.length > 40 ? `${k.slice(0, 40)}…` : k, text.length > 80 ? `${text.slice(0, 80)}…(${text.length})` : text]
  }))
  return `#${m.seq} ${m.kind} [${m.label}] to ${m.exchange}/${show(m.routingKey)}, messageId ${m.options.messageId === undefined ? "none" : show(m.options.messageId)}` +
    `${m.options.expiration === undefined ? "" : `, expiration ${m.options.expiration}`}, body ${show(m.body.toString("utf8"))}, headers ${JSON.stringify(headers)}`
}

/**
 * Where the consumer logs a message it accepted: its organization and `event_id`, else the
 * `messageId` (as it arrives, UTF-8 round trip included), else the body's SHA-256 (SPEC 2).
 */
const eventKey = (m: FuzzMessage): string | undefined => {
  try {
    const json = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(m.body)) as Record<string, unknown>
    const id = typeof json["event_id"] === "string" ? json["event_id"]
      : m.options.messageId !== undefined ? Buffer.from(m.options.messageId).toString("utf8")
      : digest(m.body)
    return `${String(json["organization_id"])}/${id}`
  } catch {
    return undefined
  }
}

/** One message in full, to publish it again by hand: typed headers as amqplib takes them, the body as text and base64. */
export const showMessage = (m: FuzzMessage) =>
  JSON.stringify({
    seq: m.seq,
    kind: m.kind,
    label: m.label,
    exchange: m.exchange,
    routingKey: m.routingKey,
    options: m.options,
    bodyText: m.body.length > 4096 ? `${m.body.toString("utf8", 0, 4096)}…` : m.body.toString("utf8"),
    bodyBytes: m.body.length,
    bodyBase64: m.body.length > 65536 ? "(over 64 KiB, not shown)" : m.body.toString("base64")
  }, (_, v) => (typeof v === "object" && v !== null && v.type === "Buffer" && Array.isArray(v.data) ? { bytes: Buffer.from(v.data).toString("base64") } : v), 2)

/** Publishes with confirms, one batch at a time; a message the broker refused or never confirmed is reported, not sent again. */
const publishAll = async (url: string, messages: ReadonlyArray<FuzzMessage>, log: (l: string) => void) => {
  const unconfirmed = new Set<number>()
  let connection: amqp.ChannelModel | undefined
  let channel: amqp.ConfirmChannel | undefined
  const open = async () => {
    connection = await amqp.connect(url)
    connection.on("error", () => undefined)
    channel = await connection.createConfirmChannel()
    channel.on("error", (e: unknown) => log(`fuzz publisher channel error: ${String(e)}`))
    return channel
  }
  try {
    for (let i = 0; i < messages.length; i += 50) {
      const batch = messages.slice(i, i + 50)
      const ch = channel ?? (await open())
      let closed = false
      const results = await new Promise<Array<boolean>>((resolve) => {
        const settled: Array<boolean | undefined> = batch.map(() => undefined)
        let left = batch.length
        const done = (k: number, ok: boolean) => {
          if (settled[k] !== undefined) return
          settled[k] = ok
          if (--left === 0) resolve(settled as Array<boolean>)
        }
        ch.once("close", () => {
          closed = true
          batch.forEach((_, k) => done(k, false))
        })
        batch.forEach((m, k) => {
          try {
            ch.publish(m.exchange, m.routingKey, m.body, m.options, (error: unknown) => done(k, !error))
          } catch (error) {
            log(`fuzz: amqplib refused #${m.seq}: ${String(error)}`)
            done(k, false)
          }
        })
      })
      ch.removeAllListeners("close")
      results.forEach((ok, k) => {
        if (!ok) unconfirmed.add(batch[k]!.seq)
      })
      if (closed) {
        await connection?.close().catch(() => undefined)
        channel = undefined
      }
    }
  } finally {
    await connection?.close().catch(() => undefined)
  }
  return unconfirmed
}

type Query = (sql: string, params?: Array<unknown>) => Promise<pg.QueryResult>

export const runFuzz = async (o: FuzzOptions): Promise<FuzzResult> => {
  const tag = `${process.pid.toString(36)}${Date.now().toString(36)}${Math.floor(Math.random() * 1e6).toString(36)}`
  const vhost = `fuzz_${tag}`
  const schema = `fuzz_${tag}`
  const url = vhostUrl(vhost)
  const logDir = mkdtempSync(join(tmpdir(), "fuzz-"))
  const env: Record<string, string> = {
    AMQP_URL: url,
    DATABASE_URL: o.databaseUrl,
    DATABASE_SCHEMA: schema,
    DATABASE_POOL_SIZE: "6",
    LOG_LEVEL: "Warn",
    RETRY_BASE_DELAY_MS: "10",
    MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    OUTBOX_POLL_INTERVAL_MS: "200",
    AMQP_RECONNECT_INITIAL_DELAY_MS: "100",
    AMQP_RECONNECT_MAX_DELAY_MS: "1000",
    SHUTDOWN_TIMEOUT_MS: "5000",
    ...o.env
  }
  const db = new pg.Pool({ connectionString: o.databaseUrl, max: 2, options: `-c search_path=${schema}` })
  db.on("error", () => undefined)
  const query: Query = (sql, params = []) => db.query(sql, params)
  const lines: Array<Line> = []
  const samples: Array<string> = []
  const line = (check: string, found: number | string, expected: number | string = 0) => lines.push({ check, found, expected, ok: found === expected })
  const info = (check: string, found: number | string) => lines.push({ check, found, expected: "-", ok: true })
  let consumer: ConsumerProcess | undefined
  const t0 = Date.now()
  const note = (what: string) => o.log(`${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`)

  try {
    const messages = fuzzMessages(o.seed, o.messages)
    await createVhost(vhost)
    note(`vhost ${vhost} created`)
    consumer = await startConsumer("consumer", o.cwd, logDir, env)
    await waitUntil("the consumer to subscribe", async () => (await consumerCount(vhost)) >= 2, 60_000)
    // The consumer migrates its schema before it subscribes; the stock it needs goes in before the first message.
    for (const w of WAREHOUSES) await query(`INSERT INTO warehouses VALUES ($1, $2, $2, true)`, [FUZZ_ORG, w])
    await query(`INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
      SELECT $1, 'var_' || v, w, 1000000, 1000000 FROM generate_series(0, $2 - 1) v, unnest($3::text[]) w`, [FUZZ_ORG, VARIANTS, WAREHOUSES])
    // Opening movements, so the books (I8) balance from the start.
    await query(`INSERT INTO stock_movements (movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change,
        quantity_before, quantity_after, category, reason, caused_by, created_at)
      SELECT 'open-' || variant_id || '-' || warehouse_id, organization_id, variant_id, warehouse_id, 'in', total, 0, total,
        'available', 'opening_balance', 'fuzz-seed', now() FROM stock`)

    note(`consumer subscribed; publishing ${messages.length} messages (seed ${o.seed})`)

    const unconfirmed = await publishAll(url, messages, note)
    note(`published (${unconfirmed.size} not confirmed by the broker); waiting for the queues to empty`)

    // Settled: both inbound queues read empty for 3 s in a row. A message that loops never lets them.
    const inbound = ["inventory_catalog_consumer", "inventory_order_consumer"]
    const probe = await amqp.connect(url)
    probe.on("error", () => undefined)
    const depth = async () => {
      const ch = await probe.createChannel()
      try {
        let n = 0
        for (const q of inbound) n += (await ch.checkQueue(q)).messageCount
        return n
      } finally {
        await ch.close().catch(() => undefined)
      }
    }
    let settled = true
    let quietSince: number | undefined
    const deadline = Date.now() + o.settleTimeoutMs
    for (;;) {
      if ((await depth()) === 0) quietSince ??= Date.now()
      else quietSince = undefined
      if (quietSince !== undefined && Date.now() - quietSince >= 3_000) break
      if (Date.now() > deadline) {
        settled = false
        break
      }
      await sleep(250)
    }
    note(settled ? "inbound queues empty" : `inbound queues still busy after ${o.settleTimeoutMs} ms: a message loops, or the consumer is stuck`)

    // Liveness: a valid event published last is still applied.
    const last = envelope("return.received", `fz-last-${tag}`, {
      order_id: "ord_last", return_id: "ret_last", warehouse_id: "wh_1", returned_items: [{ variant_id: "var_0", quantity: 1, condition: "good" }]
    })
    const lastCh = await probe.createConfirmChannel()
    await new Promise<void>((resolve, reject) =>
      lastCh.publish("order_events", "return.received", Buffer.from(JSON.stringify(last)), { persistent: true }, (e: unknown) => (e ? reject(e) : resolve())))
    const alive = await waitUntil("the last valid event applied", async () =>
      (await query(`SELECT 1 FROM event_log WHERE organization_id = $1 AND event_id = $2`, [FUZZ_ORG, last.event_id])).rowCount === 1, 20_000)
      .then(() => true, () => false)
    const runningBeforeStop = consumer.child.exitCode === null && consumer.child.signalCode === null
    const stopped = await Promise.race([stopConsumer(consumer), sleep(30_000).then(() => "no exit 30 s after SIGTERM")])
    if (typeof stopped === "string" && stopped.startsWith("no exit")) consumer.child.kill("SIGKILL")
    note(`consumer stopped: ${stopped}`)
    // With no consumer left, whatever was delivered but not settled is back in the queue: an exact count.
    const leftover = await depth()
    await probe.close().catch(() => undefined)
    const stuck = new Set<number>()
    for (const q of inbound) for (const m of await drain(url, q)) if (m.seq !== undefined) stuck.add(m.seq)

    const dead = await drain(url, "inventory_failed_events")
    const failed = (await query(`SELECT id, event_id, organization_id, error_type, error_message, headers, encode(sha256(body), 'hex') AS digest FROM failed_events`)).rows as Array<
      { id: string; event_id: string | null; error_type: string; error_message: string; headers: Record<string, unknown> | null; digest: string }
    >
    const logged = (await query(`SELECT organization_id, event_id FROM event_log`)).rows as Array<{ organization_id: string; event_id: string }>
    const applied = new Set(logged.filter((r) => r.organization_id === FUZZ_ORG).map((r) => r.event_id))
    const loggedKeys = new Set(logged.map((r) => `${r.organization_id}/${r.event_id}`))
    const unsent = Number((await query(`SELECT count(*)::int AS n FROM outbox WHERE sent_at IS NULL`)).rows[0].n)
    const reconciliation = await exec(process.execPath, ["src/cli/main.ts", "check", "--json"], { cwd: o.cwd, env: { ...process.env, ...env } })
      .then((r) => ({ exitCode: 0, stdout: r.stdout }), (e: { code?: number; stdout?: string }) => ({ exitCode: e.code ?? 1, stdout: e.stdout ?? "" }))
    const violations = (() => {
      try {
        return (JSON.parse(reconciliation.stdout) as Array<unknown>).length
      } catch {
        return -1
      }
    })()
    const logLines = readFileSync(consumer.logFile, "utf8").split("\n").filter((l) => l.trim() !== "")

    // ---- attribution: the tag, else a body digest that only one message has
    const byDigest = new Map<string, number | null>()
    for (const m of messages) {
      const d = digest(m.body)
      byDigest.set(d, byDigest.has(d) ? null : m.seq)
    }
    const copies = new Map<number, Array<DeadCopy>>()
    const rows = new Map<number, Array<(typeof failed)[number]>>()
    let untaggedCopies = 0
    let untaggedRows = 0
    for (const c of dead) {
      const seq = c.seq ?? byDigest.get(c.digest) ?? undefined
      if (seq === undefined) untaggedCopies++
      else copies.set(seq, [...(copies.get(seq) ?? []), c])
    }
    for (const row of failed) {
      const seq = seqOf(row.headers?.[SEQ_HEADER]) ?? byDigest.get(row.digest) ?? undefined
      if (seq === undefined) untaggedRows++
      else rows.set(seq, [...(rows.get(seq) ?? []), row])
    }
    const bySeq = new Map(messages.map((m) => [m.seq, m]))
    const sample = (what: string, seqs: Iterable<number>, detail: (seq: number) => string = () => "") => {
      for (const seq of [...seqs].slice(0, 3)) samples.push(`${what}: ${describeMessage(bySeq.get(seq)!)}${detail(seq) ? `\n    -> ${detail(seq)}` : ""}`)
    }
    const copiesOf = (seq: number) => copies.get(seq)?.length ?? 0
    const rowsOf = (seq: number) => rows.get(seq)?.length ?? 0
    const fate = (seq: number) =>
      `${copiesOf(seq)} DLQ copies (${[...new Set((copies.get(seq) ?? []).map((c) => (c.byBroker ? "by the broker: x-death" : c.errorType ?? "?")))].join(", ")}), ` +
      `${rowsOf(seq)} failed_events rows (${[...new Set((rows.get(seq) ?? []).map((r) => `${r.error_type}: ${r.error_message.slice(0, 120)}`))].join(" | ")})`

    // A message still in an inbound queue has no outcome yet: it is counted there, not as lost.
    const delivered = messages.filter((m) => m.routed && !unconfirmed.has(m.seq))
    info("seed", o.seed)
    info("messages published", messages.length)
    info("  ... valid events (possibly with hostile headers)", messages.filter((m) => m.kind === "valid").length)
    info("  ... hostile bodies", messages.filter((m) => m.kind === "hostile").length)
    info("  ... unroutable (no queue bound)", messages.filter((m) => !m.routed).length)
    info("  ... not confirmed by the broker", unconfirmed.size)
    line("inbound queues emptied (within the time bound)", settled ? "yes" : "no", "yes")
    line("messages left in the inbound queues after the consumer stopped", leftover)
    sample("left in an inbound queue", stuck, fate)
    line("consumer still running at the end", runningBeforeStop ? "yes" : "no", "yes")
    line("a valid event published last was applied", alive ? "yes" : "no", "yes")
    line("consumer exit on SIGTERM", String(stopped), "0")

    const many = [...copies.keys()].filter((s) => copiesOf(s) > 1)
    line("messages copied to the DLQ more than once", many.length)
    if (many.length > 0) info("  ... most copies of one message", Math.max(...many.map(copiesOf)))
    sample("copied to the DLQ more than once", many.sort((a, b) => copiesOf(b) - copiesOf(a)), fate)
    const manyRows = [...rows.keys()].filter((s) => rowsOf(s) > 1)
    line("messages with more than one failed_events row", manyRows.length)
    sample("more than one failed_events row", manyRows, fate)
    const copyNoRow = [...copies.keys()].filter((s) => rowsOf(s) === 0)
    line("DLQ copies with no failed_events row", copyNoRow.length)
    const byBroker = (s: number) => (copies.get(s) ?? []).every((c) => c.byBroker)
    sample("DLQ copy but no failed_events row", copyNoRow.filter((s) => !byBroker(s)), fate)
    sample("dead-lettered by the broker itself, no failed_events row", copyNoRow.filter(byBroker), fate)
    const rowNoCopy = [...rows.keys()].filter((s) => copiesOf(s) === 0)
    line("failed_events rows with no DLQ copy", rowNoCopy.length)
    sample("failed_events row but no DLQ copy", rowNoCopy, fate)
    line("DLQ copies that cannot be traced to a message", untaggedCopies)
    line("failed_events rows that cannot be traced to a message", untaggedRows)
    info("DLQ copies made by the broker (x-death, no x-failed-at)", dead.filter((c) => c.byBroker).length)

    const validLost = delivered.filter((m) => m.kind === "valid" && !stuck.has(m.seq) && !applied.has(m.eventId!) && copiesOf(m.seq) === 0 && rowsOf(m.seq) === 0)
    line("valid events neither applied nor dead-lettered (lost)", validLost.length)
    sample("valid event lost", validLost.map((m) => m.seq))
    const validBoth = delivered.filter((m) => m.kind === "valid" && applied.has(m.eventId!) && (copiesOf(m.seq) > 0 || rowsOf(m.seq) > 0))
    line("valid events both applied and dead-lettered", validBoth.length)
    sample("valid event applied and dead-lettered", validBoth.map((m) => m.seq), fate)
    info("valid events applied", delivered.filter((m) => m.kind === "valid" && applied.has(m.eventId!)).length)
    const hostile = delivered.filter((m) => m.kind === "hostile")
    info("hostile messages dead-lettered", hostile.filter((m) => copiesOf(m.seq) > 0 || rowsOf(m.seq) > 0).length)
    const acked = hostile.filter((m) => !stuck.has(m.seq) && copiesOf(m.seq) === 0 && rowsOf(m.seq) === 0)
    info("hostile messages acked without a dead letter (they decoded)", acked.length)
    const ackedUnlogged = acked.filter((m) => !loggedKeys.has(eventKey(m) ?? ""))
    line("hostile messages acked with no event_log row and no dead letter (lost)", ackedUnlogged.length)
    sample("acked with no event_log row and no dead letter", ackedUnlogged.map((m) => m.seq))
    const unroutedSeen = messages.filter((m) => !m.routed && (copiesOf(m.seq) > 0 || rowsOf(m.seq) > 0))
    line("unroutable messages that reached the consumer", unroutedSeen.length)

    const errorTypes = new Map<string, number>()
    for (const r of failed) errorTypes.set(r.error_type, (errorTypes.get(r.error_type) ?? 0) + 1)
    info("failed_events by error type", [...errorTypes].map(([t, n]) => `${t} ${n}`).join(", ") || "none")
    const defects = [...copies.entries()].filter(([, cs]) => cs.some((c) => !c.byBroker && c.errorType === "Defect")).map(([s]) => s)
    line("messages dead-lettered as Defect", new Set([...defects, ...[...rows.entries()].filter(([, rs]) => rs.some((r) => r.error_type === "Defect")).map(([s]) => s)]).size)
    sample("dead-lettered as Defect", defects, fate)
    line("dead letters of type DatabaseError", failed.filter((r) => r.error_type === "DatabaseError").length)
    line("outbox rows never sent", unsent)
    line("reconciliation check (I1 I2 I3 I8 I9) violations", violations)
    line("reconciliation check exit code", reconciliation.exitCode)
    line("log lines reporting a defect", logLines.filter((l) => /handler defect|failed unexpectedly|"level":"(FATAL|Fatal)"/.test(l)).length)
    return { seed: o.seed, lines, ok: lines.every((l) => l.ok), samples }
  } finally {
    if (consumer) await stopConsumer(consumer).catch(() => undefined)
    await query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined)
    await db.end().catch(() => undefined)
    await deleteVhost(vhost)
    if (process.env["FUZZ_KEEP_LOGS"] === undefined) rmSync(logDir, { recursive: true, force: true })
    else o.log(`consumer log: ${logDir}`)
  }
}

/**
 * Takes every message off a queue (they leave it), with its tag and failure headers. Consumes
 * rather than `basic.get`, which quorum queues with single active consumer refuse.
 */
const drain = async (url: string, queue: string): Promise<Array<DeadCopy & { digest: string }>> => {
  const connection = await amqp.connect(url)
  connection.on("error", () => undefined)
  try {
    const channel = await connection.createChannel()
    const out: Array<DeadCopy & { digest: string }> = []
    await channel.prefetch(500)
    await channel.consume(queue, (m) => {
      if (m === null) return
      const h = m.properties.headers ?? {}
      const errorType = h["x-error-type"]
      out.push({
        seq: seqOf(h[SEQ_HEADER]),
        errorType: typeof errorType === "string" ? errorType : errorType === undefined ? undefined : String(errorType),
        byBroker: h["x-death"] !== undefined && h["x-failed-at"] === undefined,
        digest: digest(m.content)
      })
      channel.ack(m)
    })
    // Done when the queue reads empty and nothing more arrived since the last look.
    let last = -1
    for (;;) {
      await sleep(300)
      const { messageCount } = await channel.checkQueue(queue)
      if (messageCount === 0 && out.length === last) return out
      last = out.length
    }
  } finally {
    await connection.close().catch(() => undefined)
  }
}

export const formatSamples = (samples: ReadonlyArray<string>) => samples.map((s) => `  ${s}`).join("\n")
