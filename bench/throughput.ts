/**
 * npm run bench — end-to-end throughput of the consumer against the real RabbitMQ and
 * PostgreSQL on this machine, and the same data shape through the naive seed-style consumer.
 *
 *   npm run bench                         20,000 order.placed over 1,000 variants, then a mixed run
 *   npm run bench -- --events 5000        fewer events
 *   npm run bench -- --rate 500           hold a publish rate (latency under load)
 *   npm run bench -- --skip-naive         ours only
 *   npm run bench -- --profile DIR        the consumer writes a V8 CPU profile (--cpu-prof) to DIR
 *   npm run bench -- --consumers 2        run that many consumer processes (replicas) side by side
 *   npm run bench -- --prefetch 20        the order queue's prefetch (default 500; SPEC's default is 20)
 *   npm run bench -- --warmup 0           order.placed events sent (at the same rate) and applied before
 *                                         the measured ones, not counted (default 1,000): a fresh process
 *                                         has no JIT-compiled code, prepared statements or open connections
 *   npm run bench -- --per-second         latency of each second of publishing on its own (where the tail is)
 *   BENCH_VERBOSE=1 npm run bench         show the consumers' logs
 *   BENCH_CONSUMER_FLAGS="--trace-gc" npm run bench   extra Node/V8 flags for the consumer processes
 *
 * Each run gets its own RabbitMQ vhost and database schemas, dropped at the end. The consumer
 * runs as its own process (`node src/main.ts`), as it would in production; latency is the time
 * from an event's `timestamp` (set when it is published) to its commit (`event_log.processed_at`).
 * Prints figures; asserts nothing (the reconciliation check must be clean).
 */
import amqp from "amqplib"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { readFileSync } from "node:fs"
import pg from "pg"
import { naiveSchemaSql } from "./naive/consumer.ts"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : fallback
}
const flag = (name: string) => process.argv.includes(`--${name}`)

const PROFILE_DIR = process.argv.includes("--profile") ? process.argv[process.argv.indexOf("--profile") + 1] : undefined
const EVENTS = arg("events", 20_000)
const CONSUMERS = arg("consumers", 1)
/** SPEC's default prefetch (20) caps an order.placed group at 20; the throughput setting is deeper. */
const PREFETCH = arg("prefetch", 500)
const VARIANTS = arg("variants", 1_000)
const RATE = arg("rate", 0)
const WARMUP = arg("warmup", 1_000)
const PER_SECOND = flag("per-second")
const STOCK_PER_ROW = arg("stock", 1_000)
const ORG = "bench_org"
const WAREHOUSES = ["wh_1", "wh_2"]
const tag = `${process.pid.toString(36)}${Date.now().toString(36)}`
const vhost = `bench_${tag}`
const schema = `bench_${tag}`
const naiveSchema = `bench_naive_${tag}`
const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"
const amqpUrl = `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}`
const node = process.execPath
/**
 * The Node/V8 flags `npm start` runs the consumer with (package.json): the heap and GC settings
 * bound its RSS and shape its latency, so the bench measures exactly those.
 */
const startFlags = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { scripts: { start: string } })
  .scripts.start.split(/\s+/).filter((word) => word.startsWith("--"))
/** Extra Node/V8 flags for the consumer, to try a setting without editing anything (e.g. "--trace-gc"). */
const extraFlags = (process.env["BENCH_CONSUMER_FLAGS"] ?? "").split(" ").filter((flag) => flag !== "")

const db = new pg.Pool({ connectionString: databaseUrl, max: 4 })
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const rabbitmqctl = (...args: Array<string>) => execFileSync("rabbitmqctl", ["-q", ...args], { encoding: "utf8" })
const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })

// ---------------------------------------------------------------- event generation

let seq = 0
const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(Math.random() * xs.length)]!
const variant = () => `var_${Math.floor(Math.random() * VARIANTS)}`
const envelope = (event: string, data: unknown) => ({
  event,
  version: "1.0",
  timestamp: new Date().toISOString(),
  organization_id: ORG,
  event_id: `${tag}-${++seq}`,
  data
})

type Outgoing = { readonly exchange: string; readonly routingKey: string; readonly body: () => object }

const orderPlaced = (orderId: string): Outgoing => ({
  exchange: "order_events",
  routingKey: "order.placed",
  body: () => {
    const lines = 1 + Math.floor(Math.random() * 3)
    const items = Array.from({ length: lines }, () => ({ variant_id: variant(), quantity: 1 + Math.floor(Math.random() * 2), preferred_warehouse_id: pick(WAREHOUSES) }))
    return envelope("order.placed", { order_id: orderId, customer_id: "cust_1", items, reservation_ttl_minutes: 60 })
  }
})

const placedOnly = (n: number): Array<Outgoing> => Array.from({ length: n }, (_, i) => orderPlaced(`ord_${tag}_${i}`))
/** Sent before a run and not counted; order ids of their own, so they never meet the measured ones. */
const warmup = (run: string): Array<Outgoing> => Array.from({ length: WARMUP }, (_, i) => orderPlaced(`warm_${run}_${tag}_${i}`))

/**
 * Every consumed type in rough production proportions: each order is placed; most are
 * confirmed and shipped, some cancelled; a few come back; the catalog adds and renames variants.
 * An order's events are published in lifecycle order (per-key ordering keeps them so).
 */
const mixed = (n: number): Array<Outgoing> => {
  const out: Array<Outgoing> = []
  let i = 0
  while (out.length < n) {
    const orderId = `mix_${tag}_${i++}`
    const placed = orderPlaced(orderId)
    let items: Array<{ variant_id: string; quantity: number; warehouse_id: string }> = []
    out.push({
      ...placed,
      body: () => {
        const body = placed.body() as { data: { items: Array<{ variant_id: string; quantity: number; preferred_warehouse_id: string }> } }
        // Single-variant lines keep "ship what was reserved" exact.
        const seen = new Set<string>()
        body.data.items = body.data.items.filter((it) => !seen.has(it.variant_id) && seen.add(it.variant_id))
        items = body.data.items.map((it) => ({ variant_id: it.variant_id, quantity: it.quantity, warehouse_id: it.preferred_warehouse_id }))
        return body
      }
    })
    const r = Math.random()
    if (r < 0.2) {
      out.push({ exchange: "order_events", routingKey: "order.cancelled", body: () => envelope("order.cancelled", { order_id: orderId, cancellation_reason: "customer_request" }) })
    } else {
      out.push({ exchange: "order_events", routingKey: "order.confirmed", body: () => envelope("order.confirmed", { order_id: orderId, payment_confirmed: true }) })
      if (r < 0.75) {
        out.push({ exchange: "order_events", routingKey: "order.shipped", body: () => envelope("order.shipped", { order_id: orderId, shipment_id: `s_${orderId}`, shipped_items: items }) })
        if (r < 0.3) {
          out.push({
            exchange: "order_events",
            routingKey: "return.received",
            body: () => envelope("return.received", {
              order_id: orderId, return_id: `r_${orderId}`, warehouse_id: items[0]?.warehouse_id ?? "wh_1",
              returned_items: items.slice(0, 1).map((it) => ({ variant_id: it.variant_id, quantity: 1, condition: Math.random() < 0.8 ? "good" : "damaged" }))
            })
          })
        }
      }
    }
    if (i % 25 === 0) {
      const v = `new_var_${tag}_${i}`
      out.push({ exchange: "catalog_events", routingKey: "catalog.variant.created", body: () => envelope("catalog.variant.created", { variant_id: v, product_id: `prod_${i}`, sku: `SKU-${i}`, track_inventory: true }) })
      out.push({ exchange: "catalog_events", routingKey: "catalog.variant.updated", body: () => envelope("catalog.variant.updated", { variant_id: v, changes: { sku: { old: `SKU-${i}`, new: `SKU-${i}-B` } } }) })
    }
  }
  return out.slice(0, n)
}

// ---------------------------------------------------------------- plumbing

const publishAll = async (messages: ReadonlyArray<Outgoing>, rate: number) => {
  const connection = await amqp.connect(amqpUrl)
  const channel = await connection.createConfirmChannel()
  await channel.assertExchange("order_events", "topic", { durable: true })
  await channel.assertExchange("catalog_events", "topic", { durable: true })
  const started = performance.now()
  let inFlight = 0
  for (const [i, m] of messages.entries()) {
    if (rate > 0) {
      const due = started + (i * 1000) / rate
      const wait = due - performance.now()
      if (wait > 0) await sleep(wait)
    }
    const body = m.body() as { event_id: string }
    inFlight++
    channel.publish(m.exchange, m.routingKey, Buffer.from(JSON.stringify(body)), {
      persistent: true, contentType: "application/json", messageId: body.event_id
    }, () => { inFlight-- })
    if (inFlight >= 500) await channel.waitForConfirms()
  }
  await channel.waitForConfirms()
  await connection.close()
  return performance.now() - started
}

const peakRss = (child: ChildProcess) => {
  try {
    const status = readFileSync(`/proc/${child.pid}/status`, "utf8")
    return Number(/VmHWM:\s+(\d+) kB/.exec(status)?.[1] ?? 0) * 1024
  } catch {
    return 0
  }
}

/** CPU time the process has used so far, in ms, user and system; /proc counts in ticks of 10 ms. */
const cpuMs = (child: ChildProcess) => {
  try {
    const fields = readFileSync(`/proc/${child.pid}/stat`, "utf8").split(") ")[1]!.split(" ")
    return { user: Number(fields[11]) * 10, system: Number(fields[12]) * 10 }
  } catch {
    return { user: 0, system: 0 }
  }
}

/** The whole machine's CPU ticks, busy and all (/proc/stat): how loaded the shared cores were. */
const machineTicks = () => {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number)
  const all = ticks.reduce((a, b) => a + b, 0)
  const idle = ticks[3]! + ticks[4]!
  return { busy: all - idle, all }
}

const start = (args: Array<string>, env: Record<string, string>) => {
  const child = spawn(node, args, { env: { ...process.env, ...env }, stdio: ["ignore", process.env["BENCH_VERBOSE"] ? "inherit" : "ignore", "pipe"] })
  let stderr = ""
  child.stderr!.on("data", (chunk) => { stderr = (stderr + String(chunk)).slice(-4000); if (process.env["BENCH_VERBOSE"]) process.stderr.write(chunk) })
  child.on("exit", (code) => { if (code !== 0 && code !== null) console.error(`process exited ${code}: ${stderr}`) })
  return child
}

const stop = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
  })

const waitFor = async (what: string, count: () => Promise<number>, target: number, deadlineMs: number) => {
  const until = Date.now() + deadlineMs
  let last = -1
  for (;;) {
    const n = await count()
    if (n >= target) return
    if (Date.now() > until) throw new Error(`${what}: ${n} of ${target} after ${deadlineMs} ms`)
    if (n !== last) last = n
    await sleep(50)
  }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN

// ---------------------------------------------------------------- our consumer

const consumerEnv = {
  AMQP_URL: amqpUrl,
  DATABASE_URL: databaseUrl,
  DATABASE_SCHEMA: schema,
  LOG_LEVEL: "Warn",
  ORDER_PREFETCH: String(PREFETCH),
  HTTP_PORT: String(19000 + (process.pid % 1000))
}

const seedOurs = async () => {
  execFileSync(node, ["src/stores/sql/migrate.ts"], { env: { ...process.env, ...consumerEnv }, stdio: "ignore" })
  await db.query(`SET search_path TO ${schema}`)
  const client = await db.connect()
  try {
    await client.query(`SET search_path TO ${schema}`)
    for (const w of WAREHOUSES) {
      await client.query(`INSERT INTO warehouses (organization_id, warehouse_id, name, active) VALUES ($1, $2, $2, true)`, [ORG, w])
    }
    await client.query(`
      INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
      SELECT $1, 'var_' || v, w, $2, $2 FROM generate_series(0, $3 - 1) v, unnest($4::text[]) w`, [ORG, STOCK_PER_ROW, VARIANTS, WAREHOUSES])
    // Opening balances are movements too, so the books balance (I8) from the first event.
    await client.query(`
      INSERT INTO stock_movements (movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change,
        quantity_before, quantity_after, category, reason, caused_by, created_at)
      SELECT 'open-' || variant_id || '-' || warehouse_id, organization_id, variant_id, warehouse_id, 'in', total, 0, total,
        'available', 'opening_balance', 'bench', now()
      FROM stock WHERE organization_id = $1`, [ORG])
  } finally {
    client.release()
  }
}

const committed = async () => {
  const { rows } = await db.query(`SELECT count(*)::int AS n FROM ${schema}.event_log`)
  return rows[0].n as number
}

const runOurs = async (label: string, messages: ReadonlyArray<Outgoing>) => {
  const before = await committed()
  const profile = PROFILE_DIR === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`]
  // Replicas share the queues; each gets its own HTTP port.
  const consumers = Array.from({ length: CONSUMERS }, (_, i) =>
    start([...startFlags, ...profile, ...extraFlags, "src/main.ts"], {
      ...consumerEnv,
      HTTP_PORT: String(Number(consumerEnv.HTTP_PORT) + i)
    }))
  // Ready once the topology exists and every replica is subscribed to both queues.
  await waitFor("consumer start", async () => {
    try {
      return rabbitmqctl("list_consumers", "-p", vhost, "--no-table-headers", "queue_name").split("\n").filter((l) => l.trim()).length
    } catch {
      return 0
    }
  }, 2 * CONSUMERS, 60_000)
  if (WARMUP > 0) {
    await publishAll(warmup(label), RATE)
    await waitFor(`${label}: warm-up`, async () => (await committed()) - before, WARMUP, 600_000)
  }
  const measuredFrom = await committed()
  const t0 = Date.now()
  const cpu0 = consumers.map(cpuMs)
  const machine0 = machineTicks()
  const publishMs = await publishAll(messages, RATE)
  await waitFor(`${label}: commits`, async () => (await committed()) - measuredFrom, messages.length, 600_000)
  const elapsed = Date.now() - t0
  // What the consumer announced must reach the broker too: how long the outbox takes to empty.
  await waitFor(`${label}: outbox drained`, async () =>
    (await db.query(`SELECT count(*)::int AS n FROM ${schema}.outbox WHERE sent_at IS NULL`)).rows[0].n === 0 ? 1 : 0, 1, 600_000)
  const drainMs = Date.now() - t0 - elapsed
  const rss = Math.max(...consumers.map(peakRss))
  // The consumers' own CPU from the first publish until the outbox emptied: a steadier figure
  // than events/s on a machine whose two cores are shared with the broker and the database.
  const cpu = consumers.reduce((sum, c, i) => {
    const now = cpuMs(c)
    return { user: sum.user + now.user - cpu0[i]!.user, system: sum.system + now.system - cpu0[i]!.system }
  }, { user: 0, system: 0 })
  const machine1 = machineTicks()
  const machineBusy = (machine1.busy - machine0.busy) / Math.max(1, machine1.all - machine0.all)
  await Promise.all(consumers.map(stop))
  return { elapsed, publishMs, drainMs, rss, cpu, machineBusy }
}

/** Latency per event: commit time minus the `timestamp` the event was published with. */
const latencies = (published: Map<string, number>, rows: ReadonlyArray<{ event_id: string; processed_at: Date }>) =>
  rows.flatMap((r) => {
    const sent = published.get(r.event_id)
    return sent === undefined ? [] : [r.processed_at.getTime() - sent]
  }).sort((a, b) => a - b)

// ---------------------------------------------------------------- naive consumer

const seedNaive = async () => {
  for (const sql of naiveSchemaSql(naiveSchema)) await db.query(sql)
  await db.query(`
    INSERT INTO ${naiveSchema}.stock (stock_id, organization_id, variant_id, warehouse_id, total_quantity, available_quantity, reserved_quantity)
    SELECT 'var_' || v || '@' || w, $1, 'var_' || v, w, $2, $2, 0 FROM generate_series(0, $3 - 1) v, unnest($4::text[]) w`,
    [ORG, STOCK_PER_ROW, VARIANTS, WAREHOUSES])
}

const runNaive = async (messages: ReadonlyArray<Outgoing>) => {
  const env = { AMQP_URL: amqpUrl, DATABASE_URL: databaseUrl, NAIVE_SCHEMA: naiveSchema, NAIVE_QUEUE: `naive_orders_${tag}` }
  const consumer = start(["bench/naive/consumer.ts"], env)
  await waitFor("naive start", async () => {
    try {
      return rabbitmqctl("list_consumers", "-p", vhost, "--no-table-headers", "queue_name").split("\n").filter((l) => l.includes("naive")).length
    } catch {
      return 0
    }
  }, 1, 60_000)
  const count = async () => Number((await db.query(`SELECT count(*)::int AS n FROM ${naiveSchema}.reservations`)).rows[0].n)
  if (WARMUP > 0) {
    await publishAll(warmup("naive"), RATE)
    await waitFor("naive: warm-up", count, WARMUP, 600_000)
  }
  const t0 = Date.now()
  await publishAll(messages, RATE)
  await waitFor("naive: reservations", count, WARMUP + messages.length, 600_000)
  const elapsed = Date.now() - t0
  const rss = peakRss(consumer)
  await stop(consumer)
  const drift = (await db.query(`
    SELECT (SELECT coalesce(sum(reserved_quantity), 0) FROM ${naiveSchema}.stock)::bigint AS counter,
           (SELECT coalesce(sum((i->>'quantity')::int), 0) FROM ${naiveSchema}.reservations, jsonb_array_elements(items) i)::bigint AS truth`)).rows[0]
  return { elapsed, rss, drift: { counter: Number(drift.counter), truth: Number(drift.truth) } }
}

// ---------------------------------------------------------------- main

const main = async () => {
  console.log(`bench: ${fmt(EVENTS)} events over ${fmt(VARIANTS)} variants${RATE > 0 ? `, publish rate held at ${RATE}/s` : ""}${WARMUP > 0 ? `, each run after a warm-up of ${fmt(WARMUP)} order.placed (not counted)` : ""}; ORDER_PREFETCH=${PREFETCH}${CONSUMERS > 1 ? `, ${CONSUMERS} consumer processes` : ""}; node ${process.version} ${[...startFlags, ...extraFlags].join(" ")}, ${(await db.query("SHOW server_version")).rows[0].server_version} PostgreSQL`)
  rabbitmqctl("add_vhost", vhost)
  rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
  try {
    await seedOurs()
    const runs: Array<[string, Array<Outgoing>]> = [["order.placed", placedOnly(EVENTS)]]
    if (!flag("skip-mixed")) runs.push(["mixed", mixed(EVENTS)])
    const results: Record<string, number> = {}
    for (const [label, messages] of runs) {
      const published = new Map<string, number>()
      const recorded = messages.map((m) => ({
        ...m,
        body: () => {
          const body = m.body() as { event_id: string; timestamp: string }
          published.set(body.event_id, Date.parse(body.timestamp))
          return body
        }
      }))
      const { elapsed, publishMs, drainMs, rss, cpu, machineBusy } = await runOurs(label, recorded)
      const cpuTotal = cpu.user + cpu.system
      const rows = (await db.query(`SELECT event_id, processed_at FROM ${schema}.event_log WHERE event_id = ANY($1)`, [[...published.keys()]])).rows
      const lat = latencies(published, rows)
      if (PER_SECOND) {
        // Where the tail is: each second of publishing on its own (GC pauses show as spikes).
        const first = Math.min(...published.values())
        const bySecond = new Map<number, Array<number>>()
        for (const r of rows) {
          const sent = published.get(r.event_id)
          if (sent === undefined) continue
          const second = Math.floor((sent - first) / 1000)
          const list = bySecond.get(second) ?? []
          list.push(r.processed_at.getTime() - sent)
          bySecond.set(second, list)
        }
        for (const [second, list] of [...bySecond].sort((a, b) => a[0] - b[0])) {
          list.sort((a, b) => a - b)
          console.log(`  second ${second}: ${list.length} events, p50 ${percentile(list, 50)} ms, p99 ${percentile(list, 99)} ms, max ${list[list.length - 1]} ms, over 50 ms: ${list.filter((x) => x > 50).length}`)
        }
      }
      // An upper bound that includes the commit: the broker's confirm of what the event announced.
      const announced = (await db.query(`
        SELECT payload->>'causation_id' AS event_id, min(sent_at) AS processed_at FROM ${schema}.outbox
        WHERE payload->>'causation_id' = ANY($1) AND sent_at IS NOT NULL GROUP BY 1`, [[...published.keys()]])).rows
      const out = latencies(published, announced)
      const rate = messages.length / (elapsed / 1000)
      results[label] = rate
      console.log(`ours  ${label.padEnd(12)} ${fmt(rate)} events/s end to end (${fmt(messages.length)} in ${fmt(elapsed / 1000, 1)} s); latency p50 ${fmt(percentile(lat, 50))} ms, p99 ${fmt(percentile(lat, 99))} ms (to its unit of work), p50 ${fmt(percentile(out, 50))} ms, p99 ${fmt(percentile(out, 99))} ms (to its announcement confirmed); peak RSS ${fmt(rss / 1048576, 1)} MB${CONSUMERS > 1 ? " (largest process)" : ""}; consumer CPU ${fmt(cpuTotal / 1000, 1)} s (${fmt((cpuTotal * 1000) / messages.length)} µs/event, ${fmt((100 * cpu.system) / Math.max(1, cpuTotal))}% of it in the kernel); machine ${fmt(100 * machineBusy)}% busy (all cores, all processes); publishing took ${fmt(publishMs / 1000, 1)} s; outbox empty ${fmt(drainMs / 1000, 1)} s after the last commit`)
    }
    const check = (() => {
      try {
        execFileSync(node, ["src/cli/main.ts", "check", "--org", ORG], { env: { ...process.env, ...consumerEnv }, stdio: "pipe" })
        return "clean"
      } catch (error) {
        return `VIOLATIONS\n${String((error as { stdout?: Buffer }).stdout ?? error)}`
      }
    })()
    console.log(`ours  reconciliation (I1 I2 I3 I8 I9): ${check}`)
    if (!flag("skip-naive")) {
      await seedNaive()
      const naive = await runNaive(placedOnly(EVENTS))
      const rate = EVENTS / (naive.elapsed / 1000)
      console.log(`naive order.placed   ${fmt(rate)} events/s end to end; peak RSS ${fmt(naive.rss / 1048576, 1)} MB; reserved counter ${fmt(naive.drift.counter)} vs reservations ${fmt(naive.drift.truth)}`)
      console.log(`ratio ours / naive (order.placed): ${fmt(results["order.placed"]! / rate, 2)}`)
    }
  } finally {
    await db.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined)
    await db.query(`DROP SCHEMA IF EXISTS ${naiveSchema} CASCADE`).catch(() => undefined)
    await db.end()
    try {
      rabbitmqctl("delete_vhost", vhost)
    } catch {
      // already gone
    }
  }
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
