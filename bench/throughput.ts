/**
 * npm run bench — end-to-end throughput of the consumer against the real RabbitMQ and
 * PostgreSQL on this machine, against the conventional consumer a good team writes by hand
 * (bench/conventional/consumer.ts) and the seed's sketch taken literally (bench/naive/consumer.ts).
 *
 *   npm run bench                          three workloads, each through ours then the conventional one,
 *                                          with the ratio: order.placed alone (20,000 events over 1,000
 *                                          variants), the order lifecycle (6,000 orders: placed, confirmed,
 *                                          then shipped, or cancelled for one in ten, back to back), and a
 *                                          mixed run (every type); then the naive one on order.placed
 *   npm run bench -- --events 5000         events of the order.placed and mixed runs
 *   npm run bench -- --orders 300          orders of the lifecycle run (3 events each)
 *   npm run bench -- --runs lifecycle      only these workloads (comma-separated: placed,lifecycle,mixed)
 *   npm run bench -- --prefetch 500        the order queue's prefetch, for ours and the conventional one;
 *                                          default: what `npm start` uses (the consumer's own default, read
 *                                          back from the broker and printed)
 *   npm run bench -- --consumers 3         replicas: the lifecycle through 1 replica of ours, then through 3,
 *                                          one SIGKILLed after --kill-after seconds (default 4; 0: none) and started
 *                                          again; prints events/s for both, outbound events published twice
 *                                          (a capture queue bound to inventory_events), legitimate events
 *                                          dead-lettered, live reservations left and the reconciliation
 *   npm run bench -- --tenants 20          events spread over 20 organizations (an order's events, or a variant's,
 *                                          in one), each with the same warehouses and stock; default 1
 *   npm run bench -- --rounds 3            each workload 3 times through ours and the conventional one, in
 *                                          ABBA order (the conventional one first in every other round):
 *                                          prints the median of each and the ratio of every round, with
 *                                          their spread (the machine's speed drifts: one pair is one sample);
 *                                          with --consumers, 1 replica and N in turn, the same way
 *   npm run bench -- --rate 500            hold a publish rate (latency under load)
 *   npm run bench -- --half-peak           after the runs, the lifecycle through ours again, published at half
 *                                          the rate it just reached: p99 latency at a held half of the peak
 *                                          (once per round: the median p99 and each run's)
 *   npm run bench -- --skip-conventional   no conventional runs;  --skip-naive: no naive run
 *   npm run bench -- --unapplied           each workload also through ours with nothing applied
 *                                          (bench/unapplied/consumer.ts: received, decoded, traced and acked,
 *                                          no database): the message path's CPU per event alone; with the
 *                                          conventional runs, each ratio goal's CPU budget is printed too
 *   npm run bench -- --profile DIR         our consumer writes a V8 CPU profile (--cpu-prof) to DIR
 *   npm run bench -- --warmup 0            order.placed events sent (at the same rate) and applied before
 *                                          each run, not counted (default 1,000): a fresh process has no
 *                                          JIT-compiled code, prepared statements or open connections
 *   npm run bench -- --timeout 600         longest wait, in seconds, for a run's commits (default 1,800)
 *   npm run bench -- --per-second          latency of each second of publishing on its own (where the tail is)
 *   npm run bench -- --traces              our consumer exports its traces (OTLP/HTTP, as with Jaeger or Tempo)
 *                                          to a receiver in this process, which counts the spans that arrive;
 *                                          the conventional consumer traces nothing, so the ratio prices tracing
 *   BENCH_VERBOSE=1 npm run bench          show the consumers' logs
 *   BENCH_CONSUMER_FLAGS="--trace-gc" npm run bench   extra Node/V8 flags for our consumer processes
 *
 * Before the first run and after the last it prints the host's state (`npm run bench:host`, a
 * short form): how long a burst that touches 4 MB takes back to back (a gauge of the host's speed),
 * and how much slower it runs after 5 ms and 20 ms of idle time. A held rate, which leaves the
 * consumer idle between bursts, pays more of that than full speed does; both figures move within
 * minutes, as the host's other work does.
 *
 * With one replica, each run of ours also prints, from the consumer's own `/metrics` read before
 * the first publish and after the last commit, the share of that time its event loop was busy
 * (`nodejs_eventloop_busy_seconds_total`; the rest it waited for PostgreSQL or the broker) and the
 * garbage collector's pauses (`nodejs_gc_duration_seconds`): their count and time by kind, and
 * their share of the consumer's CPU. Every consumer's CPU is split too (/proc/<pid>/task): the
 * share spent off its main thread, in V8's background threads (concurrent marking, parallel
 * scavenging, sweeping, JIT compiling) and libuv's pool, where none of our JavaScript runs.
 *
 * Every consumer gets its own RabbitMQ vhost and database schema, dropped at the end; all are
 * fed by the same publisher (one confirm channel, an order's events back to back, in order) and
 * run on this machine one after the other. Ours runs as its own process (`node src/main.ts`, with
 * `npm start`'s Node flags), as in production. A run is timed from its first publish to its last
 * commit; latency is the time from an event's `timestamp` (set when it is published) to its unit
 * of work (`event_log.processed_at`, stamped as its group loads, before the commit), to its commit
 * (the commit time of the transaction that wrote that row, when PostgreSQL tracks commit times:
 * `ALTER SYSTEM SET track_commit_timestamp = on` and a restart) and to the broker's confirm of
 * what it announced. The machine is shared: figures are noisy. Prints figures;
 * asserts nothing except that the reconciliation is clean (exit 1 otherwise).
 */
import amqp from "amqplib"
import { type ChildProcess, execFileSync, spawn } from "node:child_process"
import { readdirSync, readFileSync } from "node:fs"
import { createServer } from "node:http"
import type { AddressInfo } from "node:net"
import { availableParallelism } from "node:os"
import pg from "pg"
import { createVhost, deleteVhost, rabbitmqctl } from "./chaos/infra.ts"
import { conventionalSchemaSql } from "./conventional/consumer.ts"
import { naiveSchemaSql } from "./naive/consumer.ts"
import { median } from "./stats.ts"

const argv = process.argv
const value = (name: string) => (argv.includes(`--${name}`) ? argv[argv.indexOf(`--${name}`) + 1] : undefined)
const arg = (name: string, fallback: number) => {
  const raw = value(name)
  const n = raw === undefined ? fallback : Number(raw)
  if (!Number.isFinite(n) || n < 0) throw new Error(`--${name} takes a number >= 0, got ${raw}`)
  return n
}
const flag = (name: string) => argv.includes(`--${name}`)

const PROFILE_DIR = value("profile")
const EVENTS = arg("events", 20_000)
const ORDERS = arg("orders", 6_000)
const CONSUMERS = arg("consumers", 1)
const KILL_AFTER_MS = arg("kill-after", 4) * 1000
/** Unset: the consumer's own default, i.e. what `npm start` does. */
const PREFETCH = value("prefetch") === undefined ? undefined : arg("prefetch", 0)
const RUNS = (value("runs") ?? "placed,lifecycle,mixed").split(",")
const VARIANTS = arg("variants", 1_000)
const RATE = arg("rate", 0)
/** The publish rate held right now: --rate, or half the measured peak for --half-peak's run. */
let publishRate = RATE
const WARMUP = arg("warmup", 1_000)
const PER_SECOND = flag("per-second")
const TRACES = flag("traces")
const UNAPPLIED = flag("unapplied")
const STOCK_PER_ROW = arg("stock", 1_000)
const TENANTS = arg("tenants", 1)
/** Each workload this many times through both consumers, in ABBA order: the ratio's spread. */
const ROUNDS = Math.max(1, arg("rounds", 1))
/** The organizations events are spread over (`--tenants`), each with the same warehouses and stock. */
const ORGS = TENANTS <= 1 ? ["bench_org"] : Array.from({ length: TENANTS }, (_, i) => `bench_org_${i}`)
const WAREHOUSES = ["wh_1", "wh_2"]
const tag = `${process.pid.toString(36)}${Date.now().toString(36)}`
/** Which round (`--rounds`) the workloads being built belong to: their order and variant ids are its own. */
let round = 0
const idTag = () => (round === 0 ? tag : `${tag}r${round}`)
const targets = { ours: `bench_${tag}`, conventional: `bench_conv_${tag}`, naive: `bench_naive_${tag}` }
const schema = targets.ours
const databaseUrl = process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres"
const vhostUrl = (vhost: string) => `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}`
const node = process.execPath
/**
 * The Node/V8 flags `npm start` runs the consumer with (package.json): the heap and GC settings
 * bound its RSS and shape its latency, so the bench measures exactly those.
 */
const startWords = (JSON.parse(readFileSync(new URL("../package.json", import.meta.url), "utf8")) as { scripts: { start: string } })
  .scripts.start.split(/\s+/)
const startFlags = startWords.filter((word) => word.startsWith("--"))
/** The environment `npm start` sets before `exec node` (the compile cache), so the bench runs with it too. */
const startEnv: Record<string, string> = Object.fromEntries(
  startWords.slice(0, Math.max(0, startWords.indexOf("exec"))).map((word) => [word.slice(0, word.indexOf("=")), word.slice(word.indexOf("=") + 1)])
)
/** Extra Node/V8 flags for the consumer, to try a setting without editing anything (e.g. "--trace-gc"). */
const extraFlags = (process.env["BENCH_CONSUMER_FLAGS"] ?? "").split(" ").filter((flag) => flag !== "")

const db = new pg.Pool({ connectionString: databaseUrl, max: 4 })
const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))
const fmt = (n: number, digits = 0) => n.toLocaleString("en-US", { maximumFractionDigits: digits, minimumFractionDigits: digits })
const count = async (sql: string, params: Array<unknown> = []) => Number((await db.query(sql, params)).rows[0].n)

// ---------------------------------------------------------------- event generation

let seq = 0
const pick = <A>(xs: ReadonlyArray<A>) => xs[Math.floor(Math.random() * xs.length)]!
const variant = () => `var_${Math.floor(Math.random() * VARIANTS)}`
/** An order's events (or a variant's) all belong to one organization, chosen by its id. */
const orgOf = (key: string) => {
  let h = 0
  for (let i = 0; i < key.length; i++) h = (h * 31 + key.charCodeAt(i)) | 0
  return ORGS[Math.abs(h) % ORGS.length]!
}
const envelope = <D extends { readonly order_id?: string; readonly variant_id?: string }>(event: string, data: D) => ({
  event,
  version: "1.0",
  timestamp: new Date().toISOString(),
  organization_id: orgOf(data.order_id ?? data.variant_id ?? ""),
  event_id: `${tag}-${++seq}`,
  data
})

/** `order`: the order the message is about, so the reservations it should leave live can be counted. */
type Outgoing = { readonly exchange: string; readonly routingKey: string; readonly order?: string; readonly body: () => object }
/** `announcements`: outbox rows the workload should write when applied in order (known for the lifecycle). */
type Workload = { readonly label: string; readonly messages: ReadonlyArray<Outgoing>; readonly orderPrefix: string; readonly announcements?: number }

const orderPlaced = (orderId: string): Outgoing => ({
  exchange: "order_events",
  routingKey: "order.placed",
  order: orderId,
  body: () => {
    const lines = 1 + Math.floor(Math.random() * 3)
    const items = Array.from({ length: lines }, () => ({ variant_id: variant(), quantity: 1 + Math.floor(Math.random() * 2), preferred_warehouse_id: pick(WAREHOUSES) }))
    return envelope("order.placed", { order_id: orderId, customer_id: "cust_1", items, reservation_ttl_minutes: 60 })
  }
})

const placedOnly = (n: number): Workload => ({
  label: "order.placed",
  orderPrefix: `ord_${idTag()}_`,
  messages: Array.from({ length: n }, (_, i) => orderPlaced(`ord_${idTag()}_${i}`))
})
/** Sent before a run and not counted; order ids of their own, so they never meet the measured ones. */
const warmup = (run: string): Array<Outgoing> => Array.from({ length: WARMUP }, (_, i) => orderPlaced(`warm_${run}_${idTag()}_${i}`))

/**
 * The order lifecycle as an Order service publishes it (issues 17, 18): `order.placed` (1-3 units
 * of one of the variants), `order.confirmed`, then `order.shipped` (nine in ten) or
 * `order.cancelled` (one in ten), back to back. Ships from the preferred warehouse, which always
 * has the stock here, so the shipment matches the reservation.
 */
const lifecycle = (orders: number, run: string): Workload => {
  const messages: Array<Outgoing> = []
  for (let i = 0; i < orders; i++) {
    const order = `lc_${run}_${idTag()}_${i}`
    const item = { variant_id: variant(), quantity: 1 + Math.floor(Math.random() * 3), warehouse_id: pick(WAREHOUSES) }
    messages.push({
      exchange: "order_events", routingKey: "order.placed", order,
      body: () => envelope("order.placed", { order_id: order, customer_id: "cust_1", reservation_ttl_minutes: 60,
        items: [{ variant_id: item.variant_id, quantity: item.quantity, preferred_warehouse_id: item.warehouse_id }] })
    })
    messages.push({ exchange: "order_events", routingKey: "order.confirmed", order, body: () => envelope("order.confirmed", { order_id: order, payment_confirmed: true }) })
    messages.push(Math.random() < 0.9
      ? { exchange: "order_events", routingKey: "order.shipped", order, body: () => envelope("order.shipped", { order_id: order, shipment_id: `s_${order}`, shipped_items: [item] }) }
      : { exchange: "order_events", routingKey: "order.cancelled", order, body: () => envelope("order.cancelled", { order_id: order, cancellation_reason: "customer_request" }) })
  }
  // One stock.reserved per order, then one movement.out (a single line) or one stock.released.
  return { label: run === "lifecycle" ? "lifecycle" : `lifecycle ${run}`, messages, orderPrefix: `lc_${run}_${idTag()}_`, announcements: 2 * orders }
}

/** Orders a workload leaves with a live reservation: placed, and neither cancelled nor shipped. */
const expectedLive = (messages: ReadonlyArray<Outgoing>) => {
  const placed = new Set<string>()
  const closed = new Set<string>()
  for (const m of messages) {
    if (m.order === undefined) continue
    if (m.routingKey === "order.placed") placed.add(m.order)
    if (m.routingKey === "order.cancelled" || m.routingKey === "order.shipped") closed.add(m.order)
  }
  return [...placed].filter((o) => !closed.has(o)).length
}

const mixed = (n: number): Workload => {
  const out: Array<Outgoing> = []
  let i = 0
  while (out.length < n) {
    const orderId = `mix_${idTag()}_${i++}`
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
      out.push({ exchange: "order_events", routingKey: "order.cancelled", order: orderId, body: () => envelope("order.cancelled", { order_id: orderId, cancellation_reason: "customer_request" }) })
    } else {
      out.push({ exchange: "order_events", routingKey: "order.confirmed", order: orderId, body: () => envelope("order.confirmed", { order_id: orderId, payment_confirmed: true }) })
      if (r < 0.75) {
        out.push({ exchange: "order_events", routingKey: "order.shipped", order: orderId, body: () => envelope("order.shipped", { order_id: orderId, shipment_id: `s_${orderId}`, shipped_items: items }) })
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
      const v = `new_var_${idTag()}_${i}`
      out.push({ exchange: "catalog_events", routingKey: "catalog.variant.created", body: () => envelope("catalog.variant.created", { variant_id: v, product_id: `prod_${i}`, sku: `SKU-${i}`, track_inventory: true }) })
      out.push({ exchange: "catalog_events", routingKey: "catalog.variant.updated", body: () => envelope("catalog.variant.updated", { variant_id: v, changes: { sku: { old: `SKU-${i}`, new: `SKU-${i}-B` } } }) })
    }
  }
  return { label: "mixed", messages: out.slice(0, n), orderPrefix: `mix_${idTag()}_` }
}

// ---------------------------------------------------------------- plumbing

const publishAll = async (vhost: string, messages: ReadonlyArray<Outgoing>, rate: number) => {
  const connection = await amqp.connect(vhostUrl(vhost))
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

/**
 * CPU ms so far of the process's threads other than its main one (/proc/<pid>/task): V8's
 * background threads (`V8Worker`: concurrent marking, parallel scavenging, sweeping and JIT
 * compiling) and libuv's pool, none of which runs our JavaScript. The consumer's CPU includes it.
 */
const backgroundMs = (child: ChildProcess) => {
  let ms = 0
  try {
    for (const tid of readdirSync(`/proc/${child.pid}/task`)) {
      if (tid === String(child.pid)) continue
      try {
        const fields = readFileSync(`/proc/${child.pid}/task/${tid}/stat`, "utf8").split(") ")[1]!.split(" ")
        ms += (Number(fields[11]) + Number(fields[12])) * 10
      } catch {
        // A thread that ended meanwhile.
      }
    }
  } catch {
    return 0
  }
  return ms
}

/**
 * CPU ticks so far of the services every consumer shares, by process name (/proc/<pid>/stat):
 * every `postgres` process (server and backends) and RabbitMQ's Erlang VM (`beam.smp`). A backend
 * that exits within a run takes its ticks with it; the pools here stay open for a whole run.
 */
const serviceTicks = () => {
  const ticks = { postgres: 0, rabbitmq: 0 }
  for (const pid of readdirSync("/proc")) {
    if (!/^\d+$/.test(pid)) continue
    let stat: string
    try {
      stat = readFileSync(`/proc/${pid}/stat`, "utf8")
    } catch {
      continue
    }
    const name = stat.slice(stat.indexOf("(") + 1, stat.lastIndexOf(")"))
    const service = name === "postgres" ? "postgres" : name === "beam.smp" ? "rabbitmq" : undefined
    if (service === undefined) continue
    const fields = stat.slice(stat.lastIndexOf(")") + 2).split(" ")
    ticks[service] += Number(fields[11]) + Number(fields[12])
  }
  return ticks
}

/** The whole machine's CPU ticks, busy and all (/proc/stat): how loaded the shared cores were. */
const machineTicks = () => {
  const [, ...ticks] = readFileSync("/proc/stat", "utf8").split("\n")[0]!.trim().split(/\s+/).map(Number)
  const all = ticks.reduce((a, b) => a + b, 0)
  const idle = ticks[3]! + ticks[4]!
  return { busy: all - idle, all }
}

const stderrTails = new WeakMap<ChildProcess, string>()
const start = (args: Array<string>, env: Record<string, string>) => {
  const child = spawn(node, args, { env: { ...process.env, ...env }, stdio: ["ignore", process.env["BENCH_VERBOSE"] ? "inherit" : "ignore", "pipe"] })
  stderrTails.set(child, "")
  child.stderr!.on("data", (chunk) => {
    stderrTails.set(child, ((stderrTails.get(child) ?? "") + String(chunk)).slice(-4000))
    if (process.env["BENCH_VERBOSE"]) process.stderr.write(chunk)
  })
  child.on("exit", (code) => { if (code !== 0 && code !== null) console.error(`process exited ${code}: ${stderrTails.get(child)}`) })
  return child
}

const stop = (child: ChildProcess) =>
  new Promise<void>((resolve) => {
    if (child.exitCode !== null || child.signalCode !== null) return resolve()
    child.once("exit", () => resolve())
    child.kill("SIGTERM")
  })

const TIMEOUT_MS = arg("timeout", 1_800) * 1000
const waitFor = async (what: string, current: () => Promise<number>, target: number, deadlineMs = TIMEOUT_MS, children: ReadonlyArray<ChildProcess> = []) => {
  const until = Date.now() + deadlineMs
  for (;;) {
    const n = await current()
    if (n >= target) return
    if (Date.now() > until) {
      const logs = children.map((c) => stderrTails.get(c) ?? "").filter((t) => t !== "").join("\n---\n")
      throw new Error(`${what}: ${n} of ${target} after ${deadlineMs} ms${logs === "" ? "" : `; consumer stderr:\n${logs}`}`)
    }
    await sleep(50)
  }
}

const percentile = (sorted: ReadonlyArray<number>, p: number) => sorted[Math.min(sorted.length - 1, Math.floor((p / 100) * sorted.length))] ?? NaN

/** The consumers subscribed in a vhost: queue and prefetch of each. */
const consumersIn = async (vhost: string) => {
  try {
    return (await rabbitmqctl("list_consumers", "-p", vhost, "--no-table-headers", "queue_name", "prefetch_count"))
      .split("\n").filter((l) => l.trim()).map((l) => { const [queue, prefetch] = l.trim().split(/\s+/); return { queue: queue!, prefetch: Number(prefetch) } })
  } catch {
    return []
  }
}

/**
 * Every message on `inventory_events` from now on, by messageId: what was published twice, and
 * which outbox rows written from now on never showed up.
 */
const captureOutbound = async (vhost: string) => {
  const from = await count(`SELECT coalesce(max(position), 0) AS n FROM ${schema}.outbox`)
  const connection = await amqp.connect(vhostUrl(vhost))
  const channel = await connection.createChannel()
  const { queue } = await channel.assertQueue("", { exclusive: true })
  await channel.bindQueue(queue, "inventory_events", "#")
  const seen = new Map<string, number>()
  let last = Date.now()
  await channel.consume(queue, (m) => {
    if (m === null) return
    last = Date.now()
    const id = typeof m.properties.messageId === "string" ? m.properties.messageId : String(JSON.parse(m.content.toString()).event_id)
    seen.set(id, (seen.get(id) ?? 0) + 1)
  }, { noAck: true })
  return {
    /** Once the outbox is empty, everything sent is on its way: wait for a quiet second. */
    finish: async () => {
      while (Date.now() - last < 1_000) await sleep(200)
      await connection.close()
      let total = 0
      let twice = 0
      for (const n of seen.values()) { total += n; if (n > 1) twice++ }
      const written = (await db.query(`SELECT event_id FROM ${schema}.outbox WHERE position > $1`, [from])).rows.map((r) => r.event_id as string)
      return { total, distinct: seen.size, twice, written: written.length, unseen: written.filter((id) => !seen.has(id)).length }
    }
  }
}

// ---------------------------------------------------------------- one measured run

/** Where the machine's CPU went during a run, in cores busy on average. */
type Split = { readonly consumer: number; readonly postgres: number; readonly rabbitmq: number; readonly publisher: number }

type Measured = { elapsed: number; publishMs: number; rss: number; cpu: { user: number; system: number }; cpuEach: ReadonlyArray<number>; background: number; machineBusy: number; split: Split; published: Map<string, number> }

/**
 * Starts `replicas` consumers, waits until they are subscribed, sends the warm-up and waits for
 * it, then publishes the workload and waits until `finished` has grown by its length (the last
 * commit). With `killAfterMs`, the first replica is SIGKILLed that long after the first publish
 * and started again at once.
 */
const measure = async (options: {
  readonly vhost: string
  readonly label: string
  readonly replicas: number
  readonly spawnOne: (index: number) => ChildProcess
  readonly subscriptions: number
  readonly finished: () => Promise<number>
  readonly messages: ReadonlyArray<Outgoing>
  readonly killAfterMs?: number
  readonly onReady?: () => Promise<void>
  /** Right before the first publish of the measured run (after the warm-up). */
  readonly onStart?: () => Promise<void>
  readonly settle?: () => Promise<void>
}): Promise<Measured> => {
  const consumers = Array.from({ length: options.replicas }, (_, i) => options.spawnOne(i))
  const everyone = [...consumers]
  let kill: NodeJS.Timeout | undefined
  try {
    await waitFor(`${options.label}: consumers subscribed`, async () => (await consumersIn(options.vhost)).length, options.subscriptions * options.replicas, 60_000, everyone)
    await options.onReady?.()
    if (WARMUP > 0) {
      const before = await options.finished()
      await publishAll(options.vhost, warmup(options.label.replace(/\W/g, "_")), publishRate)
      await waitFor(`${options.label}: warm-up`, async () => (await options.finished()) - before, WARMUP, TIMEOUT_MS, everyone)
    }
    // Every run starts from vacuumed tables with statistics that have seen rows (the warm-up's), as
    // autovacuum would leave them: a run after another would otherwise pay for its dead rows, and
    // where autovacuum is off (this machine's CI setting) plans made on never-analysed tables
    // would stay whatever the tables grow to. Statistics of empty tables would be as wrong the
    // other way, hence after the warm-up.
    await db.query("VACUUM (ANALYZE)")
    const published = new Map<string, number>()
    const recorded = options.messages.map((m) => ({
      ...m,
      body: () => {
        const body = m.body() as { event_id: string; timestamp: string }
        published.set(body.event_id, Date.parse(body.timestamp))
        return body
      }
    }))
    await options.onStart?.()
    const from = await options.finished()
    const t0 = Date.now()
    const cpu0 = consumers.map(cpuMs)
    const background0 = consumers.map(backgroundMs)
    const machine0 = machineTicks()
    const services0 = serviceTicks()
    const publisher0 = process.cpuUsage()
    let killedRss = 0
    kill = options.killAfterMs === undefined ? undefined : setTimeout(() => {
      killedRss = peakRss(consumers[0]!)
      consumers[0]!.kill("SIGKILL")
      consumers[0] = options.spawnOne(0)
      everyone.push(consumers[0])
      console.log(`  ${options.label}: replica 1 SIGKILLed ${fmt((Date.now() - t0) / 1000, 1)} s after the first publish, started again`)
    }, options.killAfterMs)
    const publishMs = await publishAll(options.vhost, recorded, publishRate)
    await waitFor(`${options.label}: commits`, async () => (await options.finished()) - from, options.messages.length, TIMEOUT_MS, everyone)
    const elapsed = Date.now() - t0
    clearTimeout(kill)
    await options.settle?.()
    const rss = Math.max(killedRss, ...consumers.map(peakRss))
    // A killed replica's CPU is lost with it: the sum is of the processes alive at the end.
    const each = consumers.map((c, i) => {
      const now = cpuMs(c)
      const was = c === everyone[i] ? cpu0[i]! : { user: 0, system: 0 }
      return { user: now.user - was.user, system: now.system - was.system }
    })
    const cpu = each.reduce((sum, c) => ({ user: sum.user + c.user, system: sum.system + c.system }), { user: 0, system: 0 })
    const background = consumers.reduce((sum, c, i) => sum + backgroundMs(c) - (c === everyone[i] ? background0[i]! : 0), 0)
    /** CPU ms of each replica alive at the end (a restarted one from its start). */
    const cpuEach = each.map((c) => c.user + c.system)
    const machine1 = machineTicks()
    const machineBusy = (machine1.busy - machine0.busy) / Math.max(1, machine1.all - machine0.all)
    const services1 = serviceTicks()
    const publisher = process.cpuUsage(publisher0)
    // Ticks of 10 ms (cpuMs) and µs (cpuUsage) over the run's wall time: cores busy on average.
    const split: Split = {
      consumer: (cpu.user + cpu.system) / elapsed,
      postgres: ((services1.postgres - services0.postgres) * 10) / elapsed,
      rabbitmq: ((services1.rabbitmq - services0.rabbitmq) * 10) / elapsed,
      publisher: (publisher.user + publisher.system) / 1000 / elapsed
    }
    return { elapsed, publishMs, rss, cpu, cpuEach, background, machineBusy, split, published }
  } finally {
    clearTimeout(kill)
    await Promise.all(everyone.map(stop))
  }
}

const rateOf = (messages: ReadonlyArray<unknown>, elapsed: number) => messages.length / (elapsed / 1000)

/** The machine's load and who carried it: which process was the bottleneck, seen from outside. */
const describeLoad = (run: Measured) =>
  `machine ${fmt(100 * run.machineBusy)}% busy (all cores, all processes); cores busy on average: consumer ${fmt(run.split.consumer, 2)}, ` +
  `PostgreSQL ${fmt(run.split.postgres, 2)}, RabbitMQ ${fmt(run.split.rabbitmq, 2)}, publisher ${fmt(run.split.publisher, 2)} (of ${availableParallelism()})`

/** Latency per event: commit time minus the `timestamp` the event was published with. */
/** Whether PostgreSQL records commit times (`track_commit_timestamp`, set by the operator, needs a restart). */
let commitTimes = false

const latencies = (published: Map<string, number>, rows: ReadonlyArray<{ event_id: string; processed_at: Date }>) =>
  rows.flatMap((r) => {
    const sent = published.get(r.event_id)
    return sent === undefined ? [] : [r.processed_at.getTime() - sent]
  }).sort((a, b) => a - b)

// ---------------------------------------------------------------- traces (--traces)

/**
 * What an OTLP/HTTP collector receives from our consumer: spans by name, counted as they arrive.
 * It answers each export at once, as a healthy collector does, so what it measures is the
 * consumer's cost of tracing, not a slow backend's.
 */
interface TraceSnapshot {
  readonly spans: ReadonlyMap<string, number>
  readonly bytes: number
}
const traceReceiver = async () => {
  const spans = new Map<string, number>()
  let bytes = 0
  const server = createServer((req, res) => {
    const chunks: Array<Buffer> = []
    req.on("data", (chunk: Buffer) => chunks.push(chunk))
    req.on("end", () => {
      const body = Buffer.concat(chunks)
      bytes += body.length
      try {
        const payload = JSON.parse(body.toString()) as { resourceSpans?: Array<{ scopeSpans?: Array<{ spans?: Array<{ name?: string }> }> }> }
        for (const rs of payload.resourceSpans ?? []) {
          for (const ss of rs.scopeSpans ?? []) for (const span of ss.spans ?? []) spans.set(String(span.name), (spans.get(String(span.name)) ?? 0) + 1)
        }
      } catch {
        spans.set("(unreadable export)", (spans.get("(unreadable export)") ?? 0) + 1)
      }
      res.writeHead(200, { "content-type": "application/json" })
      res.end("{}")
    })
  })
  await new Promise<void>((done) => server.listen(0, "127.0.0.1", done))
  server.unref()
  const snapshot = (): TraceSnapshot => ({ spans: new Map(spans), bytes })
  return { url: `http://127.0.0.1:${(server.address() as AddressInfo).port}`, snapshot }
}
const traces = TRACES ? await traceReceiver() : undefined
/** The spans received between two snapshots: in all, and the consumer spans (one per message). */
const describeTraces = (before: TraceSnapshot, after: TraceSnapshot, messages: number) => {
  let all = 0
  let consumer = 0
  for (const [name, n] of after.spans) {
    const delta = n - (before.spans.get(name) ?? 0)
    all += delta
    if (name.endsWith(" process")) consumer += delta
  }
  return `; traces exported: ${fmt(all)} spans, ${fmt((after.bytes - before.bytes) / 1048576, 1)} MB of OTLP/JSON, ` +
    `${fmt(consumer)} consumer spans for ${fmt(messages + WARMUP)} messages (warm-up included)`
}

// ---------------------------------------------------------------- our consumer

const ourEnv = {
  ...startEnv,
  AMQP_URL: vhostUrl(targets.ours),
  DATABASE_URL: databaseUrl,
  DATABASE_SCHEMA: schema,
  // No LOG_LEVEL: the bench measures what `npm start` runs, its logging included.
  ...(PREFETCH === undefined ? {} : { ORDER_PREFETCH: String(PREFETCH) }),
  HTTP_PORT: String(19000 + (process.pid % 1000)),
  ...(traces === undefined ? {} : { OTEL_EXPORTER_OTLP_ENDPOINT: traces.url })
}

const seedOurs = async () => {
  // The compile cache filled as the image fills it at build (Dockerfile), so that even a fresh
  // clone's first run measures a consumer that starts on a warm cache.
  if (startEnv["NODE_COMPILE_CACHE"] !== undefined) {
    execFileSync(node, ["--input-type=module", "-e", "await import('./src/main.ts')"], { env: { ...process.env, ...startEnv }, stdio: "ignore" })
  }
  execFileSync(node, ["src/migrate.ts"], { env: { ...process.env, ...ourEnv }, stdio: "ignore" })
  const client = await db.connect()
  try {
    await client.query(`SET search_path TO ${schema}`)
    await client.query(`
      INSERT INTO warehouses (organization_id, warehouse_id, name, active) SELECT o, w, w, true FROM unnest($1::text[]) o, unnest($2::text[]) w`,
      [ORGS, WAREHOUSES])
    await client.query(`
      INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
      SELECT o, 'var_' || v, w, $2, $2 FROM unnest($1::text[]) o, generate_series(0, $3 - 1) v, unnest($4::text[]) w`,
      [ORGS, STOCK_PER_ROW, VARIANTS, WAREHOUSES])
    // Opening balances are movements too, so the books balance (I8) from the first event.
    await client.query(`
      INSERT INTO stock_movements (movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change,
        quantity_before, quantity_after, category, reason, caused_by, created_at)
      SELECT 'open-' || variant_id || '-' || warehouse_id, organization_id, variant_id, warehouse_id, 'in', total, 0, total,
        'available', 'opening_balance', 'bench', now()
      FROM stock`)
  } finally {
    client.release()
  }
  await createVhost(targets.ours)
}

/** Events done with: committed, or dead-lettered (so a run with dead letters still ends). */
const oursFinished = () => count(`SELECT (SELECT count(*) FROM ${schema}.event_log) + (SELECT count(*) FROM ${schema}.failed_events) AS n`)
const outboxDrained = () => waitFor("outbox drained", async () => (await count(`SELECT count(*) AS n FROM ${schema}.outbox WHERE sent_at IS NULL`)) === 0 ? 1 : 0, 1)


/** The order queue's prefetch our consumer ran with, read back from the broker (the default is the consumer's). */
let ourPrefetch: number | undefined

/**
 * From a consumer's `/metrics`: its garbage-collection pauses so far, by kind
 * (`nodejs_gc_duration_seconds`), its event loop's busy time as of the scrape
 * (`nodejs_eventloop_busy_seconds_total`), with when it was read, and its group commits so far
 * with the events in them (`inventory_group_size`).
 */
interface RuntimeFigures {
  readonly pauses: ReadonlyMap<string, { readonly count: number; readonly seconds: number }>
  readonly busySeconds: number | undefined
  readonly at: number
  readonly groups: { readonly count: number; readonly events: number }
}
/** A consumer's `/metrics`, as Prometheus scrapes it. */
const metricsText = async (port: string) =>
  (await fetch(`http://127.0.0.1:${port}/metrics`, { signal: AbortSignal.timeout(5_000) })).text()

const runtimeFigures = async (port: string): Promise<RuntimeFigures | undefined> => {
  try {
    const at = Date.now()
    const text = await metricsText(port)
    const pauses = new Map<string, { count: number; seconds: number }>()
    for (const m of text.matchAll(/^nodejs_gc_duration_seconds_(sum|count)\{kind="(\w+)"\} (\S+)$/gm)) {
      const entry = pauses.get(m[2]!) ?? { count: 0, seconds: 0 }
      if (m[1] === "sum") entry.seconds = Number(m[3])
      else entry.count = Number(m[3])
      pauses.set(m[2]!, entry)
    }
    const busy = /^nodejs_eventloop_busy_seconds_total (\S+)$/m.exec(text)?.[1]
    const groups = {
      count: Number(/^inventory_group_size_count (\S+)$/m.exec(text)?.[1] ?? 0),
      events: Number(/^inventory_group_size_sum (\S+)$/m.exec(text)?.[1] ?? 0)
    }
    return { pauses, busySeconds: busy === undefined ? undefined : Number(busy), at, groups }
  } catch {
    return undefined
  }
}
/**
 * Over the measured run: the share of it the consumer's event loop ran code (the rest it waited,
 * for PostgreSQL or the broker), the GC's pauses with their share of the consumer's CPU, and how
 * many group commits carried the events (each costs a fixed part of CPU: `npm run bench:apply --
 * --postgres`, so small groups, at a held rate, cost more per event).
 */
const describeRuntime = (before: RuntimeFigures | undefined, after: RuntimeFigures | undefined, cpuMs: number) => {
  if (before === undefined || after === undefined) return ""
  const kinds = ["minor", "major", "incremental"].map((kind) => {
    const a = after.pauses.get(kind) ?? { count: 0, seconds: 0 }
    const b = before.pauses.get(kind) ?? { count: 0, seconds: 0 }
    return { kind, count: a.count - b.count, ms: (a.seconds - b.seconds) * 1000 }
  })
  const total = kinds.reduce((sum, k) => sum + k.ms, 0)
  const busy = before.busySeconds === undefined || after.busySeconds === undefined
    ? ""
    : `; event loop busy ${fmt((100 * (after.busySeconds - before.busySeconds) * 1000) / Math.max(1, after.at - before.at))}% of the run`
  const groups = after.groups.count - before.groups.count
  const grouped = groups > 0 ? `; ${fmt(groups)} group commits of ${fmt((after.groups.events - before.groups.events) / groups)} events on average` : ""
  return `${busy}; GC pauses ${fmt(total)} ms on the main thread, ${fmt((100 * total) / Math.max(1, cpuMs))}% of the consumer's CPU (` +
    kinds.map((k) => `${k.kind} ${fmt(k.count)} in ${fmt(k.ms)} ms`).join(", ") + ")" + grouped
}

type Outbound = { total: number; distinct: number; twice: number; written: number; unseen: number }
const runOurs = async (workload: Workload, replicas = 1, killAfterMs?: number) => {
  const profile = PROFILE_DIR === undefined ? [] : ["--cpu-prof", `--cpu-prof-dir=${PROFILE_DIR}`]
  let capture: Awaited<ReturnType<typeof captureOutbound>> | undefined
  let outbound: Outbound | undefined
  let drainMs = 0
  // Replica 1's GC pauses and event loop over the measured run (one replica: the whole consumer's).
  let runtimeBefore: RuntimeFigures | undefined
  let runtimeAfter: RuntimeFigures | undefined
  // Read after the run's processes stopped: each flushes its spans on the way out.
  const tracesBefore = traces?.snapshot()
  const run = await measure({
    vhost: targets.ours, label: workload.label, replicas, subscriptions: 2, finished: oursFinished, messages: workload.messages,
    ...(killAfterMs === undefined ? {} : { killAfterMs }),
    // Replicas share the queues; each gets its own HTTP port.
    spawnOne: (i) => start([...startFlags, ...profile, ...extraFlags, "src/main.ts"], { ...ourEnv, HTTP_PORT: String(Number(ourEnv.HTTP_PORT) + i) }),
    onReady: async () => {
      ourPrefetch ??= (await consumersIn(targets.ours)).find((c) => c.queue === "inventory_order_consumer")?.prefetch
      if (CONSUMERS > 1) capture = await captureOutbound(targets.ours)
    },
    onStart: async () => {
      if (replicas === 1) runtimeBefore = await runtimeFigures(ourEnv.HTTP_PORT)
    },
    // What the consumer announced must reach the broker too: how long the outbox takes to empty.
    settle: async () => {
      const t = Date.now()
      if (replicas === 1) runtimeAfter = await runtimeFigures(ourEnv.HTTP_PORT)
      await outboxDrained()
      drainMs = Date.now() - t
      outbound = await capture?.finish()
    }
  })
  const ids = [...run.published.keys()]
  const deadLettered = await count(`SELECT count(*) AS n FROM ${schema}.failed_events WHERE organization_id = ANY($1) AND event_id = ANY($2)`, [ORGS, ids])
  const live = await count(`SELECT count(*) AS n FROM ${schema}.reservations WHERE organization_id = ANY($1) AND order_id LIKE $2 AND status IN ('active', 'confirmed')`, [ORGS, `${workload.orderPrefix}%`])
  const rows = (await db.query(`SELECT event_id, processed_at${commitTimes ? ", pg_xact_commit_timestamp(xmin) AS committed_at" : ""} FROM ${schema}.event_log WHERE organization_id = ANY($1) AND event_id = ANY($2)`, [ORGS, ids])).rows
  const lat = latencies(run.published, rows)
  // Publish to commit, the issue's measure: the commit time of the transaction that wrote the event's log row.
  const committed = commitTimes ? latencies(run.published, rows.map((r) => ({ event_id: r.event_id, processed_at: r.committed_at }))) : undefined
  if (PER_SECOND) {
    // Where the tail is: each second of publishing on its own (GC pauses show as spikes).
    const first = Math.min(...run.published.values())
    const bySecond = new Map<number, Array<number>>()
    for (const r of rows) {
      const sent = run.published.get(r.event_id)
      if (sent === undefined) continue
      const second = Math.floor((sent - first) / 1000)
      bySecond.set(second, [...(bySecond.get(second) ?? []), r.processed_at.getTime() - sent])
    }
    for (const [second, list] of [...bySecond].sort((a, b) => a[0] - b[0])) {
      list.sort((a, b) => a - b)
      console.log(`  second ${second}: ${list.length} events, p50 ${percentile(list, 50)} ms, p99 ${percentile(list, 99)} ms, max ${list[list.length - 1]} ms, over 50 ms: ${list.filter((x) => x > 50).length}`)
    }
  }
  // An upper bound that includes the commit: the broker's confirm of what the event announced.
  const announced = (await db.query(`
    SELECT payload->>'causation_id' AS event_id, min(sent_at) AS processed_at FROM ${schema}.outbox
    WHERE payload->>'causation_id' = ANY($1) AND sent_at IS NOT NULL GROUP BY 1`, [ids])).rows
  const out = latencies(run.published, announced)
  const rate = rateOf(workload.messages, run.elapsed)
  const expected = expectedLive(workload.messages)
  const cpuTotal = run.cpu.user + run.cpu.system
  const who = replicas > 1 ? `ours ×${replicas}` : "ours"
  console.log(`${who.padEnd(13)} ${workload.label.padEnd(16)} ${fmt(rate)} events/s (${fmt(workload.messages.length)} in ${fmt(run.elapsed / 1000, 1)} s, first publish to last commit); ` +
    `latency p50 ${fmt(percentile(lat, 50))} ms, p99 ${fmt(percentile(lat, 99))} ms (to its unit of work), ` +
    (committed === undefined ? "" : `p50 ${fmt(percentile(committed, 50))} ms, p99 ${fmt(percentile(committed, 99))} ms (to its commit), `) +
    `p50 ${fmt(percentile(out, 50))} ms, p99 ${fmt(percentile(out, 99))} ms (to its announcement confirmed); ` +
    `peak RSS ${fmt(run.rss / 1048576, 1)} MB${replicas > 1 ? " (largest process)" : ""}; consumer CPU ${fmt(cpuTotal / 1000, 1)} s (${fmt((cpuTotal * 1000) / workload.messages.length)} µs/event, ${fmt((100 * run.cpu.system) / Math.max(1, cpuTotal))}% of it in the kernel, ${fmt((100 * run.background) / Math.max(1, cpuTotal))}% off the main thread${replicas > 1 ? `; by replica ${run.cpuEach.map((ms) => fmt(ms / 1000, 1)).join(" / ")} s` : ""}${killAfterMs === undefined ? "" : "; the killed replica's not counted"}); ` +
    `${describeLoad(run)}${describeRuntime(runtimeBefore, runtimeAfter, cpuTotal)}; publishing took ${fmt(run.publishMs / 1000, 1)} s; outbox empty ${fmt(drainMs / 1000, 1)} s after the last commit; ` +
    `live reservations left ${fmt(live)} (expected ${fmt(expected)}); legitimate events dead-lettered ${fmt(deadLettered)}` +
    (traces === undefined || tracesBefore === undefined ? "" : describeTraces(tracesBefore, traces.snapshot(), workload.messages.length)) +
    (outbound === undefined ? "" : `; outbound events: ${fmt(outbound.written)} outbox rows written${workload.announcements === undefined ? "" : ` (${fmt(workload.announcements + WARMUP)} if every order's events were applied in order, warm-up included)`}, ${fmt(outbound.total)} messages captured on inventory_events, ${fmt(outbound.distinct)} distinct, ${fmt(outbound.twice)} published twice or more, ${fmt(outbound.unseen)} rows never seen`))
  return {
    rate, live, expected, deadLettered, outbound, p99: percentile(lat, 99), p99Committed: committed === undefined ? undefined : percentile(committed, 99), p99Announced: percentile(out, 99),
    split: run.split, cpuPerEvent: (cpuTotal * 1000) / workload.messages.length
  }
}

/** Events our consumer with nothing applied acked so far: from its `/metrics`, as it writes no row. */
const unappliedFinished = async () => {
  const text = await metricsText(ourEnv.HTTP_PORT)
  let n = 0
  for (const m of text.matchAll(/^inventory_events_consumed_total\{[^}]*\} (\S+)$/gm)) n += Number(m[1])
  return n
}

/**
 * The workload through our consumer with nothing applied (bench/unapplied/consumer.ts), with
 * `npm start`'s flags, on ours' vhost (its queues are empty between runs): the message path alone.
 */
const runUnapplied = async (workload: Workload) => {
  const run = await measure({
    vhost: targets.ours, label: `unapplied ${workload.label}`, replicas: 1, subscriptions: 2, finished: unappliedFinished, messages: workload.messages,
    spawnOne: () => start([...startFlags, ...extraFlags, "bench/unapplied/consumer.ts"], ourEnv)
  })
  const rate = rateOf(workload.messages, run.elapsed)
  const cpuTotal = run.cpu.user + run.cpu.system
  const cpuPerEvent = (cpuTotal * 1000) / workload.messages.length
  console.log(`${"unapplied".padEnd(13)} ${workload.label.padEnd(16)} ${fmt(rate)} events/s (${fmt(workload.messages.length)} in ${fmt(run.elapsed / 1000, 1)} s, first publish to last ack; nothing applied); ` +
    `peak RSS ${fmt(run.rss / 1048576, 1)} MB; consumer CPU ${fmt(cpuTotal / 1000, 1)} s (${fmt(cpuPerEvent)} µs/event, ${fmt((100 * run.background) / Math.max(1, cpuTotal))}% off the main thread); ${describeLoad(run)}`)
  return { rate, cpuPerEvent }
}

const checkOurs = () => {
  try {
    execFileSync(node, ["src/cli/main.ts", "check"], { env: { ...process.env, ...ourEnv }, stdio: "pipe" })
    return "clean"
  } catch (error) {
    return `VIOLATIONS\n${String((error as { stdout?: Buffer }).stdout ?? error)}`
  }
}

// ---------------------------------------------------------------- the conventional consumer

const convSchema = targets.conventional

const seedConventional = async () => {
  for (const sql of conventionalSchemaSql(convSchema)) await db.query(sql)
  await db.query(`INSERT INTO ${convSchema}.stock (org, variant_id, warehouse_id, total, available)
    SELECT o, 'var_' || v, w, $2, $2 FROM unnest($1::text[]) o, generate_series(0, $3 - 1) v, unnest($4::text[]) w`,
    [ORGS, STOCK_PER_ROW, VARIANTS, WAREHOUSES])
  await db.query(`INSERT INTO ${convSchema}.movements (org, variant_id, warehouse_id, change, before, after, reason, caused_by)
    SELECT org, variant_id, warehouse_id, total, 0, total, 'opening_balance', 'bench' FROM ${convSchema}.stock`)
  await createVhost(targets.conventional)
}

const runConventional = async (workload: Workload) => {
  const finished = () => count(`SELECT count(*) AS n FROM ${convSchema}.processed_events`)
  const run = await measure({
    vhost: targets.conventional, label: `conventional ${workload.label}`, replicas: 1, subscriptions: 1, finished, messages: workload.messages,
    spawnOne: () => start(["bench/conventional/consumer.ts"], {
      AMQP_URL: vhostUrl(targets.conventional), DATABASE_URL: databaseUrl, CONVENTIONAL_SCHEMA: convSchema,
      CONVENTIONAL_PREFETCH: String(ourPrefetch ?? PREFETCH ?? 20), CONVENTIONAL_WAREHOUSES: WAREHOUSES.join(",")
    })
  })
  const live = await count(`SELECT count(*) AS n FROM ${convSchema}.reservations WHERE org = ANY($1) AND order_id LIKE $2 AND status IN ('active', 'confirmed')`, [ORGS, `${workload.orderPrefix}%`])
  const rate = rateOf(workload.messages, run.elapsed)
  const cpuTotal = run.cpu.user + run.cpu.system
  console.log(`${"conventional".padEnd(13)} ${workload.label.padEnd(16)} ${fmt(rate)} events/s (${fmt(workload.messages.length)} in ${fmt(run.elapsed / 1000, 1)} s); peak RSS ${fmt(run.rss / 1048576, 1)} MB; ` +
    `consumer CPU ${fmt(cpuTotal / 1000, 1)} s (${fmt((cpuTotal * 1000) / workload.messages.length)} µs/event, ${fmt((100 * run.background) / Math.max(1, cpuTotal))}% off the main thread); ${describeLoad(run)}; ` +
    `live reservations left ${fmt(live)} (expected ${fmt(expectedLive(workload.messages))})`)
  return rate
}

/** The same invariants on its tables: I3 (reserved = live reservation items) and I8 (movements sum to total). */
const checkConventional = async () => {
  const i3 = await count(`
    WITH held AS (SELECT r.org, i->>'variant_id' AS variant_id, i->>'warehouse_id' AS warehouse_id, sum((i->>'quantity')::int) AS q
                  FROM ${convSchema}.reservations r, jsonb_array_elements(r.items) i WHERE r.status IN ('active', 'confirmed') GROUP BY 1, 2, 3)
    SELECT count(*) AS n FROM ${convSchema}.stock s FULL JOIN held h USING (org, variant_id, warehouse_id) WHERE coalesce(s.reserved, -1) <> coalesce(h.q, 0)`)
  const i8 = await count(`
    SELECT count(*) AS n FROM ${convSchema}.stock s LEFT JOIN (SELECT org, variant_id, warehouse_id, sum(change) AS t FROM ${convSchema}.movements GROUP BY 1, 2, 3) m
      USING (org, variant_id, warehouse_id) WHERE s.total <> coalesce(m.t, 0)`)
  return i3 + i8 === 0 ? "clean" : `VIOLATIONS: I3 ${i3} rows, I8 ${i8} rows`
}

// ---------------------------------------------------------------- the naive consumer

const naiveSchema = targets.naive

const runNaive = async (workload: Workload) => {
  for (const sql of naiveSchemaSql(naiveSchema)) await db.query(sql)
  await db.query(`
    INSERT INTO ${naiveSchema}.stock (stock_id, organization_id, variant_id, warehouse_id, total_quantity, available_quantity, reserved_quantity)
    SELECT o || '/var_' || v || '@' || w, o, 'var_' || v, w, $2, $2, 0 FROM unnest($1::text[]) o, generate_series(0, $3 - 1) v, unnest($4::text[]) w`,
    [ORGS, STOCK_PER_ROW, VARIANTS, WAREHOUSES])
  await createVhost(targets.naive)
  const run = await measure({
    vhost: targets.naive, label: "naive order.placed", replicas: 1, subscriptions: 1, messages: workload.messages,
    finished: () => count(`SELECT count(*) AS n FROM ${naiveSchema}.reservations`),
    spawnOne: () => start(["bench/naive/consumer.ts"], { AMQP_URL: vhostUrl(targets.naive), DATABASE_URL: databaseUrl, NAIVE_SCHEMA: naiveSchema })
  })
  const drift = (await db.query(`
    SELECT (SELECT coalesce(sum(reserved_quantity), 0) FROM ${naiveSchema}.stock)::bigint AS counter,
           (SELECT coalesce(sum((i->>'quantity')::int), 0) FROM ${naiveSchema}.reservations, jsonb_array_elements(items) i)::bigint AS truth`)).rows[0]
  const rate = rateOf(workload.messages, run.elapsed)
  console.log(`${"naive".padEnd(13)} ${"order.placed".padEnd(16)} ${fmt(rate)} events/s (prefetch 20, its own); peak RSS ${fmt(run.rss / 1048576, 1)} MB; reserved counter ${fmt(Number(drift.counter))} vs reservations ${fmt(Number(drift.truth))}`)
  return rate
}

// ---------------------------------------------------------------- main

/** Issue 18's ratio goals: ours / conventional on each workload. */
const ratioGoals: Readonly<Record<string, number>> = { "order.placed": 3, lifecycle: 3, mixed: 2 }

/**
 * What each ratio goal leaves our consumer on this machine. At the goal's rate (the goal times the
 * conventional consumer's median), PostgreSQL, RabbitMQ and the publisher would take the cores they
 * took per event in ours' runs, times that rate (a linear estimate); the rest of the machine's
 * cores, over that rate, is the CPU per event ours may spend. Beside it: what ours spent, and
 * with nothing applied (`--unapplied`), the message path alone.
 */
const printBudgets = (summary: ReadonlyArray<{
  readonly label: string
  readonly theirs: ReadonlyArray<number>
  readonly runs: ReadonlyArray<{ readonly rate: number; readonly split: Split; readonly cpuPerEvent: number }>
  readonly unapplied: ReadonlyArray<{ readonly cpuPerEvent: number }>
}>) => {
  const cores = availableParallelism()
  for (const { label, theirs, runs, unapplied } of summary) {
    const goal = ratioGoals[label]
    if (goal === undefined || theirs.length === 0 || runs.length === 0) continue
    const target = goal * median([...theirs])
    const othersPerEvent = median(runs.map((r) => (r.split.postgres + r.split.rabbitmq + r.split.publisher) / r.rate))
    const others = othersPerEvent * target
    // One process: its thread and V8's helper reached at most this much in ours' runs.
    const reach = Math.max(...runs.map((r) => r.split.consumer))
    const left = Math.min(cores - others, reach)
    console.log(`${label}: ${fmt(goal, 1)} × conventional is ${fmt(target)} events/s; PostgreSQL, RabbitMQ and the publisher took ${fmt(othersPerEvent * 1000, 2)} cores ` +
      `per 1,000 events/s in ours' runs, ${fmt(others, 2)} at that rate, which leaves ${fmt(Math.max(0, cores - others), 2)} of ${cores} cores` +
      `${cores - others > reach ? ` (one process of ours reached ${fmt(reach, 2)})` : ""}: ` +
      (left > 0 ? `at most ${fmt((left / target) * 1e6)} µs of our consumer's CPU per event` : "no CPU for our consumer") +
      `; ours spent ${fmt(median(runs.map((r) => r.cpuPerEvent)))}` +
      (unapplied.length === 0 ? "" : `, ${fmt(median(unapplied.map((u) => u.cpuPerEvent)))} with nothing applied`))
  }
}

/** Each workload through ours then the conventional consumer, then the naive one; true when the reconciliation is clean. */
const compare = async () => {
  const conventional = !flag("skip-conventional")
  if (conventional) await seedConventional()
  /** Each workload's runs, one per round: ours, the conventional consumer's events/s, ours with nothing applied. */
  const summary: Array<{
    readonly label: string
    readonly theirs: Array<number>
    readonly runs: Array<Awaited<ReturnType<typeof runOurs>>>
    readonly unapplied: Array<Awaited<ReturnType<typeof runUnapplied>>>
  }> = []
  const kinds: Array<() => Workload> = []
  if (RUNS.includes("placed")) kinds.push(() => placedOnly(EVENTS))
  if (RUNS.includes("lifecycle")) kinds.push(() => lifecycle(ORDERS, "lifecycle"))
  if (RUNS.includes("mixed")) kinds.push(() => mixed(EVENTS))
  for (round = 0; round < ROUNDS; round++) {
    for (const [k, make] of kinds.entries()) {
      const workload = make()
      const entry = summary[k] ?? (summary[k] = { label: workload.label, theirs: [], runs: [], unapplied: [] })
      // ABBA: the conventional consumer goes first every other round, so neither always runs on
      // the other's leftovers (dead rows, a warmer cache) or at the same point of the machine's drift.
      const conventionalFirst = conventional && round % 2 === 1
      if (conventionalFirst) entry.theirs.push(await runConventional(workload))
      entry.runs.push(await runOurs(workload))
      if (UNAPPLIED) entry.unapplied.push(await runUnapplied(workload))
      if (conventional && !conventionalFirst) entry.theirs.push(await runConventional(workload))
    }
  }
  round = 0
  const check = checkOurs()
  console.log(`ours reconciliation (I1 I2 I3 I8 I9): ${check}`)
  let clean = check === "clean"
  if (conventional) {
    const convCheck = await checkConventional()
    console.log(`conventional reconciliation (I3 I8 on its tables): ${convCheck}`)
    clean &&= convCheck === "clean"
  }
  const lifecycleRuns = summary.find((entry) => entry.label === "lifecycle")?.runs.map((r) => r.rate)
  const lifecyclePeak = lifecycleRuns === undefined ? undefined : median(lifecycleRuns)
  const held: Array<{ readonly p99: number; readonly p99Committed: number | undefined; readonly p99Announced: number }> = []
  const heldRate = lifecyclePeak === undefined ? 0 : Math.max(1, Math.round(lifecyclePeak / 2))
  if (flag("half-peak") && lifecyclePeak !== undefined) {
    // Latency where production runs: a steady half of the peak just measured, not a backlog; held
    // once per round, since one held run's p99 is one sample of a tail that moves with the machine.
    publishRate = heldRate
    for (round = 0; round < ROUNDS; round++) held.push(await runOurs(lifecycle(ORDERS, "held")))
    round = 0
    publishRate = RATE
  }
  const naive = flag("skip-naive") ? undefined : await runNaive(placedOnly(EVENTS))
  console.log(`\nprefetch of the order queue: ${ourPrefetch}${PREFETCH === undefined ? " (what npm start uses, read from the broker)" : " (--prefetch)"}, the same for the conventional consumer` +
    `\n${"events/s (noisy)".padEnd(18)}${"ours".padStart(10)}${"conventional".padStart(14)}${"ratio".padStart(8)}`)
  for (const { label, runs, theirs } of summary) {
    const ours = runs.map((r) => r.rate)
    const ratios = theirs.map((t, i) => ours[i]! / t)
    console.log(`${label.padEnd(18)}${fmt(median(ours)).padStart(10)}${(theirs.length === 0 ? "-" : fmt(median(theirs))).padStart(14)}${(theirs.length === 0 ? "-" : fmt(median(ratios), 2)).padStart(8)}` +
      (ROUNDS > 1 && ratios.length > 0 ? `   (median of ${ROUNDS} rounds; ratios ${ratios.map((r) => fmt(r, 2)).join(", ")}; spread ${fmt(Math.min(...ratios), 2)}-${fmt(Math.max(...ratios), 2)})` : ""))
  }
  if (conventional) printBudgets(summary)
  if (held.length > 0) {
    /** The median of the held runs' p99s, and each run's when there are several. */
    const p99 = (values: ReadonlyArray<number>) => `${fmt(median([...values]))} ms` + (values.length > 1 ? ` (runs ${values.map((v) => fmt(v)).join(", ")})` : "")
    const committed = held.flatMap((h) => (h.p99Committed === undefined ? [] : [h.p99Committed]))
    console.log(`lifecycle held at half our peak (${fmt(heldRate)} events/s published${held.length > 1 ? `, ${held.length} runs` : ""}): p99 ${p99(held.map((h) => h.p99))} from publish to its unit of work, ` +
      `${committed.length === 0 ? "" : `${p99(committed)} to its commit, `}${p99(held.map((h) => h.p99Announced))} to its announcement confirmed`)
  }
  const placed = summary.find((entry) => entry.label === "order.placed")
  if (naive !== undefined && placed !== undefined) console.log(`ours / naive (order.placed): ${fmt(median(placed.runs.map((r) => r.rate)) / naive, 2)}`)
  return clean
}

/**
 * The host's state now: a burst touching 4 MB back to back, and after 5 and 20 ms idle. Context
 * for the figures, not one of them: if the probe fails, the bench says so and goes on.
 */
const printHostState = (when: string) => {
  try {
    const figures = JSON.parse(execFileSync(node, ["bench/host.ts", "--gaps", "0,5,20", "--bursts", "50", "--rounds", "3", "--sweep-only", "--json"], { encoding: "utf8" })) as ReadonlyArray<{
      readonly gap: number
      readonly sweepUs: number
    }>
    const base = figures.find((f) => f.gap === 0)!.sweepUs
    const after = figures.filter((f) => f.gap > 0).map((f) => `${fmt(f.sweepUs / base, 2)}x after ${f.gap} ms`).join(", ")
    console.log(`host ${when}: a burst touching 4 MB takes ${fmt(base)} µs back to back, ${after} of idle time (npm run bench:host)`)
  } catch (error) {
    console.log(`host ${when}: the probe failed (${error instanceof Error ? error.message.split("\n")[0] : String(error)})`)
  }
}

const main = async () => {
  const pgVersion = (await db.query("SHOW server_version")).rows[0].server_version
  commitTimes = (await db.query("SHOW track_commit_timestamp")).rows[0].track_commit_timestamp === "on"
  console.log(`bench: ${CONSUMERS > 1 ? `${fmt(ORDERS)} orders (lifecycle), 1 replica then ${CONSUMERS}${KILL_AFTER_MS > 0 ? ` with one SIGKILLed after ${fmt(KILL_AFTER_MS / 1000, 1)} s` : ", none killed"}` : `${fmt(EVENTS)} events (order.placed, mixed), ${fmt(ORDERS)} orders (lifecycle)`} over ${fmt(VARIANTS)} variants${ORGS.length > 1 ? ` in each of ${fmt(ORGS.length)} organizations` : ""}` +
    `${ROUNDS > 1 ? `, ${ROUNDS} rounds of each workload through both consumers in ABBA order` : ""}${RATE > 0 ? `, publish rate held at ${RATE}/s` : ""}${WARMUP > 0 ? `, each run after a warm-up of ${fmt(WARMUP)} order.placed (not counted)` : ""}; ` +
    `node ${process.version} ${[...startFlags, ...extraFlags].join(" ")}, PostgreSQL ${pgVersion}` +
    `${commitTimes ? " (commit timestamps tracked: latency to the commit is printed)" : " (track_commit_timestamp off: latency to the commit is not printed)"}` +
    `${traces === undefined ? "" : "; ours exports its traces over OTLP/HTTP to a receiver in the bench (the conventional consumer traces nothing)"}. Shared machine: figures are noisy.`)
  printHostState("before the runs")
  let clean = true
  try {
    await seedOurs()
    if (CONSUMERS > 1) {
      // As --rounds does for the comparison: one replica and N in turn, in ABBA order, each pair a sample.
      const pairs: Array<{ readonly one: Awaited<ReturnType<typeof runOurs>>; readonly many: Awaited<ReturnType<typeof runOurs>> }> = []
      const runMany = () => runOurs(lifecycle(ORDERS, `r${CONSUMERS}`), CONSUMERS, KILL_AFTER_MS > 0 ? KILL_AFTER_MS : undefined)
      for (round = 0; round < ROUNDS; round++) {
        const manyFirst = round % 2 === 1
        const first = manyFirst ? await runMany() : await runOurs(lifecycle(ORDERS, "r1"), 1)
        const second = manyFirst ? await runOurs(lifecycle(ORDERS, "r1"), 1) : await runMany()
        pairs.push(manyFirst ? { one: second, many: first } : { one: first, many: second })
      }
      round = 0
      const check = checkOurs()
      clean = check === "clean"
      const line = (name: string, r: (typeof pairs)[number]["one"]) =>
        `${name.padEnd(38)}${fmt(r.rate).padStart(10)}${fmt(r.outbound?.twice ?? NaN).padStart(16)}${fmt(r.deadLettered).padStart(15)}${`${fmt(r.live)} (${fmt(r.expected)})`.padStart(16)}`
      console.log(`\nlifecycle, ${fmt(ORDERS)} orders; prefetch of the order queue ${ourPrefetch}${PREFETCH === undefined ? " (what npm start uses, read from the broker)" : " (--prefetch)"}`)
      console.log(`${"(noisy)".padEnd(38)}${"events/s".padStart(10)}${"sent twice".padStart(16)}${"dead-lettered".padStart(15)}${"live (expected)".padStart(16)}`)
      for (const [i, { one, many }] of pairs.entries()) {
        const suffix = ROUNDS > 1 ? `, round ${i + 1}` : ""
        console.log(line(`1 replica${suffix}`, one))
        console.log(line(`${CONSUMERS} replicas${KILL_AFTER_MS > 0 ? ", one SIGKILLed" : ""}${suffix}`, many))
      }
      const ratios = pairs.map(({ one, many }) => many.rate / one.rate)
      console.log(`${CONSUMERS} replicas / 1 replica: ${fmt(median(ratios), 2)}` +
        (ROUNDS > 1 ? ` (median of ${ROUNDS} rounds; ratios ${ratios.map((r) => fmt(r, 2)).join(", ")}; spread ${fmt(Math.min(...ratios), 2)}-${fmt(Math.max(...ratios), 2)})` : ""))
      console.log(`ours reconciliation (I1 I2 I3 I8 I9): ${check}`)
    } else {
      clean = await compare()
    }
  } finally {
    for (const s of Object.values(targets)) await db.query(`DROP SCHEMA IF EXISTS ${s} CASCADE`).catch(() => undefined)
    await db.end()
    // One never created, or already gone, is passed over.
    for (const vhost of Object.values(targets)) await deleteVhost(vhost)
  }
  printHostState("after the runs")
  if (!clean) process.exitCode = 1
}

main().catch((error) => {
  console.error(error)
  process.exit(1)
})
