/**
 * The chaos run's messages: a legitimate mixed workload over several organizations (order
 * lifecycles and catalog changes, each key's events spread apart in the stream), 5% of it
 * published a second time with the same `event_id`, 1% abusive messages, and a few messages of
 * an attacker organization naming a victim tenant's orders, reservations and variants.
 * Everything is planned up front, so the audit knows exactly what was sent and why.
 */

export type Kind = "legit" | "duplicate" | "abusive" | "cross_tenant" | "warmup"

export interface Planned {
  /** What the consumer will record the message under: `event_id`, else the `messageId` (SPEC 2). */
  readonly key: string
  /** The organization the body claims, when it names a valid one (`null` for abusive messages). */
  readonly org: string | null
  readonly kind: Kind
  /** For abusive messages: what is wrong with it; else the event type. */
  readonly label: string
  readonly exchange: string
  readonly routingKey: string
  readonly messageId: string
  readonly body: Buffer
  /** Relative position in the stream (0..1); the publisher sorts by it. */
  readonly at: number
}

export interface WorkloadOptions {
  readonly events: number
  readonly tag: string
  readonly orgs: ReadonlyArray<string>
  readonly variantsPerOrg: number
  /** Bodies of this size (bytes) are sent a few times; above the consumer's limit. */
  readonly hugeBytes: number
  readonly hugeCount: number
  readonly random: () => number
}

export const WAREHOUSES = ["wh_1", "wh_2"] as const
export const VICTIM = "chaos_victim"
export const ATTACKER = "chaos_mallory"
export const variantId = (i: number) => `var_${i}`

/** A deterministic PRNG (mulberry32): a seed reproduces a run's workload. */
export const seededRandom = (seed: number) => {
  let a = seed >>> 0
  return () => {
    a = (a + 0x6d2b79f5) >>> 0
    let t = a
    t = Math.imul(t ^ (t >>> 15), t | 1)
    t ^= t + Math.imul(t ^ (t >>> 7), t | 61)
    return ((t ^ (t >>> 14)) >>> 0) / 4294967296
  }
}

const json = (value: unknown) => Buffer.from(JSON.stringify(value))

const envelope = (org: string, eventId: string, event: string, data: unknown) => ({
  event,
  version: "1.0",
  timestamp: new Date().toISOString(),
  organization_id: org,
  event_id: eventId,
  data
})

const exchangeOf = (event: string) => (event.startsWith("catalog.") ? "catalog_events" : "order_events")

interface Step {
  readonly event: string
  readonly data: unknown
}

export interface VictimState {
  readonly orders: ReadonlyArray<{
    readonly orderId: string
    readonly reservationId: string
    readonly items: ReadonlyArray<{ variant_id: string; warehouse_id: string; quantity: number }>
  }>
}

/** The victim tenant's own events, applied before the chaos window starts (then frozen). */
export const victimWarmup = (tag: string, orders: number): Array<Planned> => {
  const out: Array<Planned> = []
  for (let i = 0; i < orders; i++) {
    const orderId = `vord_${i}`
    const steps: Array<Step> = [{
      event: "order.placed",
      data: {
        order_id: orderId,
        items: [{ variant_id: variantId(i % 20), quantity: 1 + (i % 3), preferred_warehouse_id: WAREHOUSES[i % 2] }],
        reservation_ttl_minutes: 10080
      }
    }]
    if (i % 2 === 0) steps.push({ event: "order.confirmed", data: { order_id: orderId, payment_confirmed: true } })
    for (const [j, step] of steps.entries()) {
      const key = `${tag}-victim-${i}-${j}`
      out.push({
        key, org: VICTIM, kind: "warmup", label: step.event, exchange: exchangeOf(step.event), routingKey: step.event,
        messageId: key, body: json(envelope(VICTIM, key, step.event, step.data)), at: 0
      })
    }
  }
  return out
}

/**
 * The legitimate workload: order lifecycles (placed; then cancelled, or confirmed and often
 * shipped and sometimes returned) and catalog changes (created, renamed, sometimes deleted).
 * Steps of one key are published far apart, so even two consumers rarely race on one key.
 */
const legitimate = (o: WorkloadOptions, count: number): Array<Planned> => {
  const chains: Array<{ org: string; steps: Array<Step> }> = []
  let total = 0
  let n = 0
  const r = o.random
  while (total < count) {
    const org = o.orgs[n % o.orgs.length]!
    const id = `${o.tag}_${n}`
    n++
    if (n % 40 === 0) {
      const v = `newvar_${id}`
      const steps: Array<Step> = [
        { event: "catalog.variant.created", data: { variant_id: v, product_id: `prod_${id}`, sku: `SKU-${id}`, track_inventory: true } },
        { event: "catalog.variant.updated", data: { variant_id: v, changes: { sku: { old: `SKU-${id}`, new: `SKU-${id}-B` } } } }
      ]
      if (r() < 0.5) steps.push({ event: "catalog.variant.deleted", data: { variant_id: v, product_id: `prod_${id}`, deletion_type: "soft" } })
      chains.push({ org, steps })
      total += steps.length
      continue
    }
    const orderId = `ord_${id}`
    const lineCount = 1 + Math.floor(r() * 3)
    const chosen = new Set<number>()
    while (chosen.size < lineCount) chosen.add(Math.floor(r() * o.variantsPerOrg))
    const items = [...chosen].map((v) => ({
      variant_id: variantId(v),
      quantity: 1 + Math.floor(r() * 3),
      warehouse_id: WAREHOUSES[Math.floor(r() * WAREHOUSES.length)]!
    }))
    const steps: Array<Step> = [{
      event: "order.placed",
      data: {
        order_id: orderId,
        customer_id: `cust_${n % 97}`,
        items: items.map((it) => ({ variant_id: it.variant_id, quantity: it.quantity, preferred_warehouse_id: it.warehouse_id })),
        reservation_ttl_minutes: 120
      }
    }]
    const fate = r()
    if (fate < 0.15) {
      steps.push({ event: "order.cancelled", data: { order_id: orderId, cancellation_reason: "customer_request" } })
    } else {
      steps.push({ event: "order.confirmed", data: { order_id: orderId, payment_confirmed: true } })
      if (fate < 0.75) {
        steps.push({ event: "order.shipped", data: { order_id: orderId, shipment_id: `ship_${id}`, shipped_items: items } })
        if (fate < 0.3) {
          steps.push({
            event: "return.received",
            data: {
              order_id: orderId,
              return_id: `ret_${id}`,
              warehouse_id: items[0]!.warehouse_id,
              returned_items: [{ variant_id: items[0]!.variant_id, quantity: 1, condition: r() < 0.8 ? "good" : "damaged" }]
            }
          })
        }
      }
    }
    chains.push({ org, steps })
    total += steps.length
  }
  // A key's steps sit ~`gap` chains apart: step j of chain c at (c + j * gap) / span.
  const gap = Math.max(5, Math.floor(chains.length / 60))
  const span = chains.length + 5 * gap
  const out: Array<Planned> = []
  let seq = 0
  for (const [c, chain] of chains.entries()) {
    for (const [j, step] of chain.steps.entries()) {
      const key = `${o.tag}-e${seq++}`
      out.push({
        key, org: chain.org, kind: "legit", label: step.event, exchange: exchangeOf(step.event), routingKey: step.event,
        messageId: key, body: json(envelope(chain.org, key, step.event, step.data)), at: (c + j * gap + r() * 0.5) / span
      })
    }
  }
  return out.slice(0, count)
}

/** The abusive catalogue; each is a `ValidationError` by SPEC 2 or the size limits. */
const abusiveBodies = (o: WorkloadOptions, key: string): Array<{ label: string; routingKey: string; body: Buffer; messageId?: string }> => {
  const org = o.orgs[0]!
  const placed = (patch: Record<string, unknown>, data: Record<string, unknown> = {}) =>
    json({
      ...envelope(org, key, "order.placed", {
        order_id: `abuse_${key}`,
        items: [{ variant_id: variantId(1), quantity: 1, preferred_warehouse_id: "wh_1" }],
        ...data
      }),
      ...patch
    })
  const item = (quantity: unknown) => ({ items: [{ variant_id: variantId(1), quantity, preferred_warehouse_id: "wh_1" }] })
  const depth = 200_000
  return [
    { label: "not JSON", routingKey: "order.placed", body: Buffer.from(`{"event": "order.placed", oops ${key}`) },
    { label: "invalid UTF-8", routingKey: "order.placed", body: Buffer.from([0x7b, 0xff, 0xfe, 0x22, 0x7d]) },
    { label: "empty body", routingKey: "order.cancelled", body: Buffer.alloc(0) },
    { label: "JSON array, not an object", routingKey: "order.placed", body: json([1, 2, 3]) },
    { label: "deeply nested JSON (200k levels)", routingKey: "order.placed", body: Buffer.from("[".repeat(depth) + "]".repeat(depth)) },
    {
      label: "deeply nested JSON inside a valid envelope",
      routingKey: "order.placed",
      body: Buffer.from(placed({}).toString().replace(`"quantity":1`, `"quantity":${"[".repeat(100_000)}${"]".repeat(100_000)}`))
    },
    { label: "unknown event type", routingKey: "order.placed", body: json(envelope(org, key, "inventory.hacked", { order_id: "x" })) },
    { label: "catalog event on the order queue", routingKey: "order.placed", body: json(envelope(org, key, "catalog.variant.created", { variant_id: "v", product_id: "p" })) },
    { label: "wrong type: quantity as string", routingKey: "order.placed", body: placed({}, item("5")) },
    { label: "wrong type: organization_id as number", routingKey: "order.placed", body: placed({ organization_id: 42 }) },
    { label: "wrong type: items as object", routingKey: "order.placed", body: placed({}, { items: { variant_id: "v" } }) },
    { label: "missing organization_id", routingKey: "order.cancelled", body: json({ event: "order.cancelled", version: "1.0", timestamp: "2026-01-01T00:00:00Z", event_id: key, data: { order_id: "o" } }) },
    { label: "negative quantity", routingKey: "order.placed", body: placed({}, item(-3)) },
    { label: "zero quantity", routingKey: "order.placed", body: placed({}, item(0)) },
    { label: "fractional quantity", routingKey: "order.placed", body: placed({}, item(1.5)) },
    { label: "2^53 quantity", routingKey: "order.placed", body: placed({}, item(2 ** 53)) },
    { label: "quantity 1e999 (Infinity)", routingKey: "order.placed", body: Buffer.from(placed({}).toString().replace(`"quantity":1`, `"quantity":1e999`)) },
    { label: "SQL in order_id", routingKey: "order.cancelled", body: json(envelope(org, key, "order.cancelled", { order_id: "o'; DROP TABLE stock; --" })) },
    { label: "SQL in organization_id", routingKey: "order.cancelled", body: json(envelope(`${org}' OR '1'='1`, key, "order.cancelled", { order_id: "o1" })) },
    { label: "SQL in variant_id", routingKey: "order.placed", body: placed({}, { items: [{ variant_id: "v'); DELETE FROM stock_movements; --", quantity: 1 }] }) },
    { label: "control characters in ids", routingKey: "order.placed", body: placed({}, { order_id: "ord\u0000\u001b[2J\nx" }) },
    { label: "SQL in event_id", routingKey: "order.cancelled", body: json(envelope(org, `${key}'; DELETE FROM event_log; --`, "order.cancelled", { order_id: "o2" })) },
    { label: "version 2.0", routingKey: "order.placed", body: placed({ version: "2.0" }) },
    { label: "version 0.9", routingKey: "order.cancelled", body: json({ ...envelope(org, key, "order.cancelled", { order_id: "o3" }), version: "0.9" }) },
    {
      label: "more lines than MAX_LINES_PER_EVENT",
      routingKey: "order.placed",
      body: placed({}, { items: Array.from({ length: 501 }, (_, i) => ({ variant_id: `v_${i}`, quantity: 1 })) })
    }
  ]
}

/** Mirrors the consumer's key for a message it cannot decode: the body's string `event_id` if readable, else `messageId`. */
export const recordedKey = (body: Buffer, messageId: string): string => {
  if (body.length > 1024 * 1024) return messageId
  try {
    const parsed: unknown = JSON.parse(new TextDecoder("utf-8", { fatal: true }).decode(body))
    if (typeof parsed === "object" && parsed !== null && !Array.isArray(parsed)) {
      const id = (parsed as Record<string, unknown>)["event_id"]
      if (typeof id === "string" && id.length <= 256) return id
    }
  } catch {
    // not JSON: the messageId stands
  }
  return messageId
}

const abusive = (o: WorkloadOptions, count: number): Array<Planned> => {
  const out: Array<Planned> = []
  const huge = (key: string) => {
    const envelopeText = JSON.stringify(envelope(o.orgs[0]!, key, "order.cancelled", { order_id: "huge", cancellation_reason: "" }))
    return Buffer.from(envelopeText.replace(`"cancellation_reason":""`, `"cancellation_reason":"${"x".repeat(o.hugeBytes)}"`))
  }
  for (let i = 0; out.length < count; i++) {
    const key = `${o.tag}-abuse${i}`
    const catalogue = abusiveBodies(o, key)
    const pick = i < o.hugeCount
      ? { label: `body of ${(o.hugeBytes / 1048576).toFixed(1)} MB`, routingKey: "order.cancelled", body: huge(key) }
      : catalogue[i % catalogue.length]!
    out.push({
      key: recordedKey(pick.body, key), org: null, kind: "abusive", label: pick.label, exchange: "order_events",
      routingKey: pick.routingKey, messageId: key, body: pick.body, at: 0.02 + o.random() * 0.96
    })
  }
  return out
}

/**
 * The attacker organization's events, naming the victim's orders, reservations, variants and
 * warehouses. Ids are scoped by organization, so these are about unknown things in the
 * attacker's tenant: whatever the handler does there, the victim's rows must not change.
 */
export const crossTenant = (o: WorkloadOptions, victim: VictimState, count: number): Array<Planned> => {
  const out: Array<Planned> = []
  for (let i = 0; out.length < count; i++) {
    const v = victim.orders[i % victim.orders.length]!
    const shapes: Array<Step> = [
      { event: "order.cancelled", data: { order_id: v.orderId, reservation_id: v.reservationId, cancellation_reason: "fraud" } },
      { event: "order.confirmed", data: { order_id: v.orderId, reservation_id: v.reservationId, payment_confirmed: true } },
      { event: "order.shipped", data: { order_id: v.orderId, reservation_id: v.reservationId, shipment_id: `x_${i}`, shipped_items: v.items } },
      {
        event: "return.received",
        data: { order_id: v.orderId, return_id: `x_ret_${i}`, warehouse_id: v.items[0]!.warehouse_id, returned_items: v.items.map((it) => ({ variant_id: it.variant_id, quantity: 1, condition: "good" })) }
      },
      { event: "order.placed", data: { order_id: v.orderId, items: v.items.map((it) => ({ variant_id: it.variant_id, quantity: it.quantity, preferred_warehouse_id: it.warehouse_id })) } },
      { event: "catalog.variant.deleted", data: { variant_id: v.items[0]!.variant_id } }
    ]
    const step = shapes[i % shapes.length]!
    const key = `${o.tag}-x${i}`
    out.push({
      key, org: ATTACKER, kind: "cross_tenant", label: step.event, exchange: exchangeOf(step.event), routingKey: step.event,
      messageId: key, body: json(envelope(ATTACKER, key, step.event, step.data)), at: 0.05 + o.random() * 0.9
    })
  }
  return out
}

/** The whole chaos stream, in publish order: `events` messages in all. */
export const chaosStream = (o: WorkloadOptions, victim: VictimState): Array<Planned> => {
  const abuseCount = Math.max(25, Math.round(o.events * 0.01))
  const duplicateCount = Math.round(o.events * 0.05)
  const crossCount = Math.max(12, Math.round(o.events * 0.002))
  const legit = legitimate(o, o.events - abuseCount - duplicateCount - crossCount)
  const duplicates: Array<Planned> = []
  const chosen = new Set<number>()
  while (chosen.size < duplicateCount) chosen.add(Math.floor(o.random() * legit.length))
  for (const i of chosen) {
    const original = legit[i]!
    // The same bytes and event_id again, somewhere later.
    duplicates.push({ ...original, kind: "duplicate", at: Math.min(1, original.at + o.random() * (1 - original.at)) })
  }
  return [...legit, ...duplicates, ...abusive(o, abuseCount), ...crossTenant(o, victim, crossCount)].sort((a, b) => a.at - b.at)
}
