/**
 * The baseline of `npm run bench`: the consumer a competent team writes by hand (issue 18).
 * amqplib + node-postgres, one transaction per message: the idempotency row first
 * (`INSERT ... ON CONFLICT DO NOTHING`), conditional decrements on the stock primary key, the
 * reservation, movement and outbox rows, COMMIT, then the ack. Messages of one key (order or
 * variant) run one after another in process; different keys run concurrently up to the prefetch,
 * over a pool of 10. Handles order.placed, .confirmed, .cancelled, .shipped and, for the mixed
 * run, return.received and catalog.variant.created/updated; not catalog deletes. No relay (outbox
 * rows are written, not published), no TTL timers, no DLQ, every warehouse taken as active.
 *
 * Env: AMQP_URL, DATABASE_URL, CONVENTIONAL_SCHEMA, CONVENTIONAL_QUEUE, CONVENTIONAL_PREFETCH,
 * CONVENTIONAL_WAREHOUSES (comma-separated, for catalog.variant.created).
 */
import amqp from "amqplib"
import pg from "pg"

export const conventionalSchemaSql = (s: string) => [
  `CREATE SCHEMA IF NOT EXISTS ${s}`,
  `CREATE TABLE ${s}.stock (org text, variant_id text, warehouse_id text, total int NOT NULL, available int NOT NULL,
    reserved int NOT NULL DEFAULT 0, damaged int NOT NULL DEFAULT 0, PRIMARY KEY (org, variant_id, warehouse_id),
    CHECK (available >= 0 AND reserved >= 0 AND damaged >= 0 AND total = available + reserved + damaged))`,
  `CREATE TABLE ${s}.variants (org text, variant_id text, sku text, tracked boolean NOT NULL, PRIMARY KEY (org, variant_id))`,
  `CREATE TABLE ${s}.processed_events (org text, event_id text, event_type text NOT NULL, processed_at timestamptz NOT NULL DEFAULT clock_timestamp(), PRIMARY KEY (org, event_id))`,
  `CREATE TABLE ${s}.reservations (org text, order_id text, status text NOT NULL, items jsonb NOT NULL, expires_at timestamptz, PRIMARY KEY (org, order_id))`,
  `CREATE TABLE ${s}.movements (id bigserial PRIMARY KEY, org text, variant_id text, warehouse_id text, change int NOT NULL, before int NOT NULL, after int NOT NULL, reason text NOT NULL, caused_by text NOT NULL)`,
  `CREATE TABLE ${s}.outbox (id bigserial PRIMARY KEY, event_type text NOT NULL, payload jsonb NOT NULL, created_at timestamptz NOT NULL DEFAULT now())`
]

type Item = { variant_id: string; warehouse_id: string; quantity: number }
type Q = (text: string, values: Array<unknown>) => Promise<pg.QueryResult>
const sum = (items: Array<Item>) => { // I6: one line per (variant, warehouse), in primary-key order (no deadlocks)
  const m = new Map<string, Item>()
  for (const it of items) { const k = `${it.variant_id}\u0000${it.warehouse_id}`; m.set(k, { ...it, quantity: (m.get(k)?.quantity ?? 0) + it.quantity }) }
  return [...m].sort(([a], [b]) => (a < b ? -1 : 1)).map(([, it]) => it)
}
const outbox = (q: Q, type: string, payload: object) => q(`INSERT INTO outbox (event_type, payload) VALUES ($1, $2)`, [type, payload])
const live = (q: Q, org: string, order: string) =>
  q(`SELECT items FROM reservations WHERE org = $1 AND order_id = $2 AND status IN ('active', 'confirmed') FOR UPDATE`, [org, order]).then((r) => r.rows[0]?.items as Array<Item> | undefined)

const handlers: Record<string, (q: Q, e: any) => Promise<void>> = {
  "order.placed": async (q, { organization_id: org, data: d }) => {
    if ((await q(`SELECT 1 FROM reservations WHERE org = $1 AND order_id = $2`, [org, d.order_id])).rowCount) return // reserved or cancelled before
    const items: Array<Item> = []
    for (const it of sum(d.items.map((i: any) => ({ ...i, warehouse_id: i.preferred_warehouse_id ?? "" })))) {
      const r = await q(`UPDATE stock SET available = available - $4, reserved = reserved + $4 WHERE (org, variant_id, warehouse_id) = (
        SELECT org, variant_id, warehouse_id FROM stock WHERE org = $1 AND variant_id = $2 AND available >= $4 ORDER BY warehouse_id = $3 DESC, available DESC LIMIT 1)
        AND available >= $4 RETURNING warehouse_id`, [org, it.variant_id, it.warehouse_id, it.quantity])
      if (!r.rowCount) throw Object.assign(new Error(`insufficient stock for ${it.variant_id}`), { failed: d.order_id })
      items.push({ variant_id: it.variant_id, warehouse_id: r.rows[0].warehouse_id, quantity: it.quantity })
    }
    await q(`INSERT INTO reservations VALUES ($1, $2, 'active', $3, now() + make_interval(mins => $4))`, [org, d.order_id, JSON.stringify(items), d.reservation_ttl_minutes ?? 15])
    await outbox(q, "inventory.stock.reserved", { order_id: d.order_id, items })
  },
  "order.confirmed": async (q, { organization_id: org, data: d }) => {
    const r = await q(`UPDATE reservations SET status = 'confirmed' WHERE org = $1 AND order_id = $2 AND status IN ('active', 'confirmed')`, [org, d.order_id])
    if (!r.rowCount) throw new Error(`no live reservation for ${d.order_id}`)
  },
  "order.cancelled": async (q, { organization_id: org, data: d }) => {
    const items = await live(q, org, d.order_id)
    // Not found: a tombstone, so a late order.placed reserves nothing.
    if (!items) return void await q(`INSERT INTO reservations VALUES ($1, $2, 'cancelled', '[]') ON CONFLICT DO NOTHING`, [org, d.order_id])
    for (const it of sum(items)) await q(`UPDATE stock SET available = available + $4, reserved = reserved - $4 WHERE (org, variant_id, warehouse_id) = ($1, $2, $3)`, [org, it.variant_id, it.warehouse_id, it.quantity])
    await q(`UPDATE reservations SET status = 'cancelled' WHERE org = $1 AND order_id = $2`, [org, d.order_id])
    await outbox(q, "inventory.stock.released", { order_id: d.order_id, items, reason: d.cancellation_reason })
  },
  "order.shipped": async (q, { organization_id: org, event_id, data: d }) => {
    const items = await live(q, org, d.order_id)
    if (!items) throw new Error(`no live reservation for ${d.order_id}`)
    const shipped = new Map(sum(d.shipped_items).map((it) => [`${it.variant_id}\u0000${it.warehouse_id}`, it.quantity]))
    for (const it of sum(items)) {
      const out = shipped.get(`${it.variant_id}\u0000${it.warehouse_id}`) ?? 0
      if (out > it.quantity) throw new Error(`shipping more than was reserved for ${it.variant_id}`)
      const r = await q(`UPDATE stock SET total = total - $4, reserved = reserved - $5, available = available + $5 - $4
        WHERE (org, variant_id, warehouse_id) = ($1, $2, $3) RETURNING total`, [org, it.variant_id, it.warehouse_id, out, it.quantity])
      if (out === 0) continue
      await q(`INSERT INTO movements (org, variant_id, warehouse_id, change, before, after, reason, caused_by) VALUES ($1, $2, $3, $4, $5, $6, 'order_shipment', $7)`,
        [org, it.variant_id, it.warehouse_id, -out, r.rows[0].total + out, r.rows[0].total, event_id])
      await outbox(q, "inventory.movement.out", { order_id: d.order_id, variant_id: it.variant_id, warehouse_id: it.warehouse_id, quantity: out })
    }
    await q(`UPDATE reservations SET status = 'fulfilled' WHERE org = $1 AND order_id = $2`, [org, d.order_id])
  },
  "return.received": async (q, { organization_id: org, event_id, data: d }) => {
    const lines = d.returned_items.map((i: any) => ({ ...i, warehouse_id: i.warehouse_id ?? d.warehouse_id }))
    for (const it of lines.sort((a: Item, b: Item) => (`${a.variant_id}\u0000${a.warehouse_id}` < `${b.variant_id}\u0000${b.warehouse_id}` ? -1 : 1))) {
      const good = it.condition === "good"
      const r = await q(`INSERT INTO stock AS s VALUES ($1, $2, $3, $4, $5, 0, $6) ON CONFLICT (org, variant_id, warehouse_id) DO UPDATE
        SET total = s.total + $4, available = s.available + $5, damaged = s.damaged + $6 RETURNING total`, [org, it.variant_id, it.warehouse_id, it.quantity, good ? it.quantity : 0, good ? 0 : it.quantity])
      await q(`INSERT INTO movements (org, variant_id, warehouse_id, change, before, after, reason, caused_by) VALUES ($1, $2, $3, $4, $5, $6, 'customer_return', $7)`,
        [org, it.variant_id, it.warehouse_id, it.quantity, r.rows[0].total - it.quantity, r.rows[0].total, event_id])
      await outbox(q, "inventory.movement.in", { return_id: d.return_id, ...it })
    }
  },
  "catalog.variant.created": async (q, { organization_id: org, data: d }) => {
    await q(`INSERT INTO variants VALUES ($1, $2, $3, $4) ON CONFLICT DO NOTHING`, [org, d.variant_id, d.sku ?? null, d.track_inventory !== false])
    if (d.track_inventory === false) return
    const r = await q(`INSERT INTO stock (org, variant_id, warehouse_id, total, available) SELECT $1, $2, unnest($3::text[]), 0, 0 ON CONFLICT DO NOTHING`, [org, d.variant_id, warehouses])
    if (r.rowCount) await outbox(q, "inventory.stock.initialized", { variant_id: d.variant_id })
  },
  "catalog.variant.updated": async (q, { organization_id: org, data: d }) => { // the bench changes SKUs only
    if (d.changes?.sku) await q(`UPDATE variants SET sku = $3 WHERE org = $1 AND variant_id = $2`, [org, d.variant_id, d.changes.sku.new])
  }
}
const warehouses = (process.env["CONVENTIONAL_WAREHOUSES"] ?? "wh_1,wh_2").split(",")

const main = async () => {
  const db = new pg.Pool({ connectionString: process.env["DATABASE_URL"], max: 10, options: `-c search_path=${process.env["CONVENTIONAL_SCHEMA"] ?? "conventional"}` })
  const connection = await amqp.connect(process.env["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672")
  const channel = await connection.createChannel()
  const queue = process.env["CONVENTIONAL_QUEUE"] ?? "conventional_consumer"
  await channel.assertQueue(queue, { durable: true, arguments: { "x-queue-type": "quorum" } })
  for (const [exchange, keys] of [["order_events", ["order.*", "return.received"]], ["catalog_events", ["catalog.#"]]] as const) {
    await channel.assertExchange(exchange, "topic", { durable: true })
    for (const key of keys) await channel.bindQueue(queue, exchange, key)
  }
  await channel.prefetch(Number(process.env["CONVENTIONAL_PREFETCH"] ?? 20))

  const apply = async (message: amqp.ConsumeMessage, event: any) => {
    const client = await db.connect()
    const q: Q = (text, values) => client.query(text, values)
    try {
      await q("BEGIN", [])
      const fresh = await q(`INSERT INTO processed_events (org, event_id, event_type) VALUES ($1, $2, $3) ON CONFLICT DO NOTHING`, [event.organization_id, event.event_id ?? message.properties.messageId, event.event])
      if (fresh.rowCount) await handlers[event.event]!(q, event)
      await q("COMMIT", [])
      channel.ack(message)
    } catch (error) {
      await q("ROLLBACK", []).catch(() => undefined)
      // Deadlock or serialization failure: try again; anything else is permanent.
      const transient = ["40P01", "40001"].includes((error as { code?: string }).code ?? "")
      if (!transient) console.error(`conventional: ${event.event} ${event.event_id}: ${String(error)}`)
      // The failure is announced although the reservation rolled back (SPEC 4).
      const failed = (error as { failed?: string }).failed
      if (failed !== undefined) await outbox(q, "inventory.reservation.failed", { order_id: failed }).catch(() => undefined)
      channel.nack(message, false, transient)
    } finally {
      client.release()
    }
  }
  const tails = new Map<string, Promise<void>>() // per-key order: each message waits for its key's previous one
  await channel.consume(queue, (message) => {
    if (message === null) return
    const event = JSON.parse(message.content.toString())
    const key = `${event.organization_id}/${event.data.order_id ?? event.data.variant_id}`
    const next = (tails.get(key) ?? Promise.resolve()).then(() => apply(message, event)).catch(() => undefined)
    tails.set(key, next)
    void next.then(() => { if (tails.get(key) === next) tails.delete(key) })
  })
  const stop = async () => {
    await channel.close().catch(() => undefined)
    await connection.close().catch(() => undefined)
    await db.end()
    process.exit(0)
  }
  process.on("SIGTERM", stop)
  process.on("SIGINT", stop)
}

if (import.meta.main) {
  main().catch((error) => {
    console.error(error)
    process.exit(1)
  })
}
