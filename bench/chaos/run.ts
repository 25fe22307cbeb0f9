/**
 * One chaos run: a fresh vhost and schema, seeded stock, the victim tenant's warm-up, then the
 * planned stream published at a held rate while faults happen at random moments; then the
 * audit. Everything it created is removed at the end, and PostgreSQL is always started again.
 */
import { execFile } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join } from "node:path"
import { promisify } from "node:util"
import amqp from "amqplib"
import pg from "pg"
import { audit, drainQueue, type Line, SEED_CAUSE, snapshotTenant } from "./audit.ts"
import {
  brokerMaxMessageSize,
  type ConsumerProcess,
  consumerCount,
  createVhost,
  deleteVhost,
  ensurePostgres,
  killConnections,
  Publisher,
  rabbitmqctl,
  sleep,
  startConsumer,
  stopConsumer,
  stopPostgres,
  vhostUrl,
  waitUntil
} from "./infra.ts"
import { ATTACKER, chaosStream, type Planned, seededRandom, VICTIM, type VictimState, victimWarmup, WAREHOUSES } from "./workload.ts"

const exec = promisify(execFile)

export interface ChaosOptions {
  readonly events: number
  /** How long publishing the stream takes; faults happen inside this window. */
  readonly publishSeconds: number
  readonly connectionKills: number
  /** How long PostgreSQL stays down (longer than the consumer's retry schedule). */
  readonly outageMs: number
  /** How long two consumer processes run side by side. */
  readonly pairMs: number
  readonly hugeCount: number
  readonly seed: number
  /** Repository root: where `src/main.ts` is. */
  readonly cwd: string
  /** Without a password, the run adds a probe password (ignored by trust auth) to prove redaction. */
  readonly databaseUrl: string
  /** How long the consumers may take to settle everything after the last publish. */
  readonly settleTimeoutMs: number
  readonly log: (line: string) => void
}

export interface ChaosResult {
  readonly lines: ReadonlyArray<Line>
  readonly ok: boolean
  readonly faults: ReadonlyArray<string>
  readonly brokerMaxMessageSize: number
  readonly hugeBytes: number
  readonly logDir: string
}

const MAX_BODY_BYTES = 1024 * 1024
const RETRY_BASE_DELAY_MS = 100
const RETRIES = 3
const LEGIT_ORGS = ["chaos_org_1", "chaos_org_2", "chaos_org_3", "chaos_org_4"]
const VARIANTS_PER_ORG = 200

export const withProbePassword = (url: string, secret: string) => {
  const parsed = new URL(url)
  if (parsed.password === "") {
    parsed.username = parsed.username || "postgres"
    parsed.password = secret
  }
  return parsed.toString()
}

export const runChaos = async (o: ChaosOptions): Promise<ChaosResult> => {
  const tag = `${process.pid.toString(36)}${Date.now().toString(36)}`
  const vhost = `chaos_${tag}`
  const schema = `chaos_${tag}`
  const secret = `chaos-probe-${Math.random().toString(36).slice(2, 10)}`
  const databaseUrl = withProbePassword(o.databaseUrl, secret)
  const secretInUse = new URL(databaseUrl).password
  const amqpUrl = vhostUrl(vhost)
  const logDir = mkdtempSync(join(tmpdir(), "chaos-"))
  const random = seededRandom(o.seed)
  const env: Record<string, string> = {
    AMQP_URL: amqpUrl,
    DATABASE_URL: databaseUrl,
    DATABASE_SCHEMA: schema,
    LOG_LEVEL: "Warn",
    RETRY_BASE_DELAY_MS: String(RETRY_BASE_DELAY_MS),
    RETRY_ATTEMPTS: String(RETRIES),
    MAX_BODY_BYTES: String(MAX_BODY_BYTES),
    OUTBOX_POLL_INTERVAL_MS: "200",
    AMQP_RECONNECT_INITIAL_DELAY_MS: "100",
    AMQP_RECONNECT_MAX_DELAY_MS: "2000",
    AMQP_HEARTBEAT_SECONDS: "5",
    SHUTDOWN_TIMEOUT_MS: "10000"
  }
  const faults: Array<string> = []
  const consumers: Array<ConsumerProcess> = []
  const running = () => consumers.filter((c) => !c.signalled && c.child.exitCode === null && c.child.signalCode === null)
  let started = 0
  const startOne = async () => {
    const c = await startConsumer(`consumer-${++started}`, o.cwd, logDir, env)
    consumers.push(c)
    return c
  }
  const t0 = Date.now()
  const note = (what: string) => {
    const line = `${((Date.now() - t0) / 1000).toFixed(1).padStart(6)} s  ${what}`
    faults.push(line)
    o.log(line)
  }
  // Every connection works in the run's schema.
  const db = new pg.Pool({ connectionString: databaseUrl, max: 4, options: `-c search_path=${schema}` })
  db.on("error", () => undefined)
  const query: Query = (sql, params = []) => db.query(sql, params)

  try {
    await ensurePostgres(databaseUrl)
    const maxMessage = await brokerMaxMessageSize()
    // 10 MB unless the broker refuses that much; then the largest it accepts (still above our limit).
    const hugeBytes = Math.min(10 * 1024 * 1024, maxMessage - 4096)
    await createVhost(vhost)
    await exec(process.execPath, ["src/migrate.ts"], { cwd: o.cwd, env: { ...process.env, ...env } })
    await seed(query)

    // A durable capture queue on the outbound exchange outlives the killed connections.
    const setup = await amqp.connect(amqpUrl)
    const ch = await setup.createChannel()
    await ch.assertExchange("inventory_events", "topic", { durable: true })
    await ch.assertQueue("chaos_capture", { durable: true })
    await ch.bindQueue("chaos_capture", "inventory_events", "#")
    await setup.close()

    await startOne()
    await waitUntil("the first consumer to subscribe", async () => (await consumerCount(vhost)) >= 2, 60_000)
    note("consumer-1 subscribed")

    // The victim's own events, applied and then frozen: nothing in the chaos window is theirs.
    const publisher = new Publisher(amqpUrl)
    const warmup = victimWarmup(tag, 20)
    await publisher.publishBatch(warmup)
    await waitUntil("the victim's warm-up", async () =>
      Number((await query(`SELECT count(*)::int AS n FROM event_log WHERE organization_id = $1`, [VICTIM])).rows[0].n) === warmup.length, 60_000)
    const victimState = await readVictim(query)
    const victimBefore = await snapshotTenant(db, VICTIM)

    const stream = chaosStream({
      events: o.events, tag, orgs: LEGIT_ORGS, variantsPerOrg: VARIANTS_PER_ORG, hugeBytes, hugeCount: o.hugeCount, random
    }, victimState)
    note(`publishing ${stream.length} messages over ${o.publishSeconds} s`)

    const publishMs = o.publishSeconds * 1000
    const publishing = publishStream(publisher, stream, publishMs)
    const chaos = runFaults(o, publishMs, random, {
      kill: async () => {
        await killConnections(vhost)
        note("closed every connection of the vhost")
      },
      outage: async () => {
        note(`PostgreSQL stopping for ${o.outageMs} ms`)
        await stopPostgres()
        await sleep(o.outageMs)
        await ensurePostgres(databaseUrl)
        note("PostgreSQL answering again")
      },
      restart: async () => {
        const old = running()[0]
        if (old) {
          const exit = await stopConsumer(old)
          note(`SIGTERM ${old.name}: exit ${exit}`)
        }
        const fresh = await startOne()
        await waitUntil("a restarted consumer", async () => (await consumerCount(vhost)) >= 2, 60_000)
        note(`${fresh.name} subscribed`)
      },
      pair: async () => {
        const second = await startOne()
        await waitUntil("a second consumer", async () => (await consumerCount(vhost)) >= 4, 60_000)
        note(`${second.name} subscribed: two consumers at once`)
        await sleep(o.pairMs)
        const older = running()[0]!
        const exit = await stopConsumer(older)
        note(`SIGTERM ${older.name}: exit ${exit}; one consumer again`)
      }
    })
    await Promise.all([publishing, chaos])
    await publisher.close()
    note(`published (${publisher.reconnects.length} publisher reconnects); waiting for every event to settle`)

    await ensurePostgres(databaseUrl)
    if (running().length === 0) await startOne()
    const planned = [...warmup, ...stream]
    const keys = [...new Set(planned.map((m) => m.key))]
    await waitUntil("every event applied or dead-lettered", async () => {
      const { rows } = await query(`
        SELECT count(*)::int AS n FROM unnest($1::text[]) k
        WHERE NOT EXISTS (SELECT 1 FROM event_log WHERE event_id = k) AND NOT EXISTS (SELECT 1 FROM failed_events WHERE event_id = k)`, [keys])
      return rows[0].n === 0
    }, o.settleTimeoutMs, 1000).catch((error) => note(String(error)))
    await waitUntil("queues empty and outbox sent", async () => {
      const quiet = async () => {
        const counts = await rabbitmqctl("list_queues", "-p", vhost, "--no-table-headers", "name", "messages_ready", "messages_unacknowledged")
        const busy = counts.split("\n").some((l) => /^inventory_(order|catalog)_consumer\s/.test(l) && !/\s0\s+0\s*$/.test(l))
        const unsent = Number((await query(`SELECT count(*)::int AS n FROM outbox WHERE sent_at IS NULL`)).rows[0].n)
        return !busy && unsent === 0
      }
      // Quorum queue statistics lag by a few seconds: quiet at both ends of a longer window.
      if (!(await quiet())) return false
      await sleep(6_000)
      return await quiet()
    }, o.settleTimeoutMs, 1000).catch((error) => note(String(error)))
    for (const c of running()) note(`SIGTERM ${c.name}: exit ${await stopConsumer(c)}`)

    const reconciliation = await exec(process.execPath, ["src/cli/main.ts", "check", "--json"], { cwd: o.cwd, env: { ...process.env, ...env } })
      .then((r) => ({ exitCode: 0, stdout: r.stdout }), (e: { code?: number; stdout?: string }) => ({ exitCode: e.code ?? 1, stdout: e.stdout ?? "[]" }))
    const violations = (() => {
      try {
        return (JSON.parse(reconciliation.stdout) as Array<unknown>).length
      } catch {
        return -1
      }
    })()
    const captured = await drainQueue(amqpUrl, "chaos_capture")
    const deadLettered = await drainQueue(amqpUrl, "inventory_failed_events")
    const lines = await audit({
      db,
      planned,
      attempts: publisher.attempts,
      victim: VICTIM,
      victimBefore,
      captured,
      deadLettered,
      reconciliation: { exitCode: reconciliation.exitCode, violations },
      consumers: await Promise.all(consumers.map(async (c) => ({ name: c.name, signalled: c.signalled, exit: await c.exited }))),
      logs: consumers.map((c) => readFileSync(c.logFile, "utf8")),
      secret: secretInUse,
      maxBodyBytes: MAX_BODY_BYTES
    })
    const ok = lines.every((l) => l.ok)
    return { lines, ok, faults, brokerMaxMessageSize: maxMessage, hugeBytes, logDir }
  } finally {
    for (const c of consumers) await stopConsumer(c).catch(() => undefined)
    await ensurePostgres(databaseUrl).catch((error) => o.log(`could not start PostgreSQL again: ${error}`))
    await query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`).catch(() => undefined)
    await db.end().catch(() => undefined)
    await deleteVhost(vhost)
    if (process.env["CHAOS_KEEP_LOGS"] === undefined) rmSync(logDir, { recursive: true, force: true })
  }
}

type Query = (sql: string, params?: Array<unknown>) => Promise<pg.QueryResult>

/** Warehouses for every tenant; plenty of stock for the legitimate ones (and opening movements, I8). */
const seed = async (query: Query) => {
  for (const org of [...LEGIT_ORGS, VICTIM]) {
    for (const w of WAREHOUSES) await query(`INSERT INTO warehouses VALUES ($1, $2, $2, true)`, [org, w])
  }
  await query(`INSERT INTO warehouses VALUES ($1, 'wh_1', 'wh_1', true)`, [ATTACKER])
  await query(`
    INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
    SELECT o, 'var_' || v, w, 1000000, 1000000 FROM unnest($1::text[]) o, generate_series(0, $2 - 1) v, unnest($3::text[]) w`,
    [LEGIT_ORGS, VARIANTS_PER_ORG, WAREHOUSES])
  await query(`
    INSERT INTO stock (organization_id, variant_id, warehouse_id, total, available)
    SELECT $1, 'var_' || v, w, 1000, 1000 FROM generate_series(0, 19) v, unnest($2::text[]) w`, [VICTIM, WAREHOUSES])
  await query(`
    INSERT INTO stock_movements (movement_id, organization_id, variant_id, warehouse_id, movement_type, quantity_change,
      quantity_before, quantity_after, category, reason, caused_by, created_at)
    SELECT 'open-' || organization_id || '-' || variant_id || '-' || warehouse_id, organization_id, variant_id, warehouse_id, 'in',
      total, 0, total, 'available', 'opening_balance', $1, now()
    FROM stock`, [SEED_CAUSE])
}

const readVictim = async (query: Query): Promise<VictimState> => {
  const { rows } = await query(`
    SELECT r.order_id, r.reservation_id,
      json_agg(json_build_object('variant_id', i.variant_id, 'warehouse_id', i.warehouse_id, 'quantity', i.quantity) ORDER BY i.position) AS items
    FROM reservations r JOIN reservation_items i USING (organization_id, reservation_id)
    WHERE r.organization_id = $1 GROUP BY r.order_id, r.reservation_id ORDER BY r.order_id`, [VICTIM])
  return { orders: rows.map((r) => ({ orderId: r.order_id, reservationId: r.reservation_id, items: r.items })) }
}

/** Publishes the stream spread evenly over `ms`, in batches every 100 ms. */
const publishStream = async (publisher: Publisher, stream: ReadonlyArray<Planned>, ms: number) => {
  const started = Date.now()
  let next = 0
  while (next < stream.length) {
    const due = Math.min(stream.length, Math.ceil(((Date.now() - started) / ms) * stream.length) + 1)
    if (due > next) {
      await publisher.publishBatch(stream.slice(next, due))
      next = due
    } else {
      await sleep(100)
    }
  }
}

interface FaultActions {
  readonly kill: () => Promise<void>
  readonly outage: () => Promise<void>
  readonly restart: () => Promise<void>
  readonly pair: () => Promise<void>
}

/** The faults, in random order at random moments of the publishing window, one at a time. */
const runFaults = async (o: ChaosOptions, windowMs: number, random: () => number, actions: FaultActions) => {
  const plan: Array<keyof FaultActions> = [
    ...Array.from({ length: o.connectionKills }, () => "kill" as const),
    "outage",
    "restart",
    "pair"
  ]
  for (let i = plan.length - 1; i > 0; i--) {
    const j = Math.floor(random() * (i + 1))
    ;[plan[i], plan[j]] = [plan[j]!, plan[i]!]
  }
  const times = plan.map(() => (0.05 + random() * 0.8) * windowMs).sort((a, b) => a - b)
  const started = Date.now()
  for (const [i, fault] of plan.entries()) {
    const wait = times[i]! - (Date.now() - started)
    if (wait > 0) await sleep(wait)
    await actions[fault]()
  }
}
