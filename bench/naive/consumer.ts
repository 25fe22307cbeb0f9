/**
 * The baseline of `npm run bench`: `order.placed` consumed the way the seed document sketches
 * it, taken literally. amqplib + node-postgres, prefetch 20, every statement awaited one after
 * the other, no transaction, no conditional decrement, no idempotency (only the obvious indexes
 * added). It is here to be measured against, and it oversells under contention: do not copy it.
 *
 * Env: AMQP_URL, DATABASE_URL, NAIVE_SCHEMA, NAIVE_QUEUE, NAIVE_EXCHANGE.
 */
import amqp from "amqplib"
import { randomUUID } from "node:crypto"
import pg from "pg"

const schema = process.env["NAIVE_SCHEMA"] ?? "naive"
const queue = process.env["NAIVE_QUEUE"] ?? "naive_order_consumer"
const exchange = process.env["NAIVE_EXCHANGE"] ?? "order_events"

export const naiveSchemaSql = (s: string) => [
  `CREATE SCHEMA IF NOT EXISTS ${s}`,
  `CREATE TABLE IF NOT EXISTS ${s}.stock (
    stock_id text PRIMARY KEY, organization_id text, variant_id text, warehouse_id text,
    total_quantity integer, available_quantity integer, reserved_quantity integer)`,
  `CREATE TABLE IF NOT EXISTS ${s}.reservations (
    reservation_id text PRIMARY KEY, order_id text, organization_id text, items jsonb,
    expires_at timestamptz, status text, event_timestamp timestamptz, created_at timestamptz DEFAULT clock_timestamp())`,
  // The obvious index for the sketch's lookups by (variant, warehouse, organization), so the
  // baseline is not slow for want of one.
  `CREATE INDEX IF NOT EXISTS stock_lookup ON ${s}.stock (organization_id, variant_id, warehouse_id)`,
  `CREATE INDEX IF NOT EXISTS reservations_by_order ON ${s}.reservations (organization_id, order_id)`
]

const main = async () => {
  const db = new pg.Pool({ connectionString: process.env["DATABASE_URL"], max: 10 })
  const connection = await amqp.connect(process.env["AMQP_URL"] ?? "amqp://guest:guest@127.0.0.1:5672")
  const channel = await connection.createChannel()
  await channel.assertExchange(exchange, "topic", { durable: true })
  await channel.assertQueue(queue, { durable: true })
  await channel.bindQueue(queue, exchange, "order.placed")
  await channel.prefetch(20)

  const handleOrderPlaced = async (event: any) => {
    const orderId = event.data.order_id
    const organizationId = event.organization_id
    const ttlMinutes = event.data.reservation_ttl_minutes ?? 15
    const reservationItems: Array<unknown> = []
    for (const item of event.data.items) {
      const warehouseId = item.preferred_warehouse_id
      const found = warehouseId
        ? await db.query(`SELECT * FROM ${schema}.stock WHERE variant_id = $1 AND warehouse_id = $2 AND organization_id = $3`, [item.variant_id, warehouseId, organizationId])
        : await db.query(`SELECT * FROM ${schema}.stock WHERE variant_id = $1 AND organization_id = $2 ORDER BY available_quantity DESC LIMIT 1`, [item.variant_id, organizationId])
      const stock = found.rows[0]
      if (!stock || stock.available_quantity < item.quantity) {
        await publish("inventory.reservation.failed", { order_id: orderId, variant_id: item.variant_id })
        throw new Error("InsufficientStockError")
      }
      reservationItems.push({ stock_id: stock.stock_id, variant_id: item.variant_id, warehouse_id: stock.warehouse_id, quantity: item.quantity })
    }
    const reservationId = randomUUID()
    await db.query(
      `INSERT INTO ${schema}.reservations (reservation_id, order_id, organization_id, items, expires_at, status, event_timestamp)
       VALUES ($1, $2, $3, $4, now() + ($5 || ' minutes')::interval, 'active', $6)`,
      [reservationId, orderId, organizationId, JSON.stringify(reservationItems), String(ttlMinutes), event.timestamp]
    )
    for (const item of reservationItems as Array<{ stock_id: string; quantity: number }>) {
      // Read-modify-write from the values read earlier, as the sketch's reserve_quantity does.
      const current = await db.query(`SELECT * FROM ${schema}.stock WHERE stock_id = $1`, [item.stock_id])
      const row = current.rows[0]
      await db.query(
        `UPDATE ${schema}.stock SET available_quantity = $2, reserved_quantity = $3 WHERE stock_id = $1`,
        [item.stock_id, row.available_quantity - item.quantity, row.reserved_quantity + item.quantity]
      )
    }
    await publish("inventory.stock.reserved", { reservation_id: reservationId, order_id: orderId, items: reservationItems })
  }

  const publish = async (routingKey: string, data: unknown) => {
    channel.publish("inventory_events_naive", routingKey, Buffer.from(JSON.stringify(data)))
  }
  await channel.assertExchange("inventory_events_naive", "topic", { durable: false })

  await channel.consume(queue, (message) => {
    if (message === null) return
    const event = JSON.parse(message.content.toString())
    handleOrderPlaced(event).then(
      () => channel.ack(message),
      () => channel.nack(message, false, false)
    ).catch(() => undefined) // the channel closed under us at shutdown
  })
  channel.on("error", () => undefined)
  connection.on("error", () => undefined)
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
