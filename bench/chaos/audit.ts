/**
 * The audit after a chaos run, from the database (event_log, failed_events, movements,
 * reservations, outbox) and the broker (the DLQ and a capture queue on `inventory_events`).
 * Each line is one claim with what was found and what was expected; any mismatch fails the run.
 */
import amqp from "amqplib"
import type pg from "pg"
import type { Planned } from "./workload.ts"

export interface Line {
  readonly check: string
  readonly found: number | string
  readonly expected: number | string
  readonly ok: boolean
}

export const SEED_CAUSE = "chaos-seed"

export interface Snapshot {
  readonly stock: string
  readonly reservations: string
  readonly movements: string
  readonly eventLog: string
  readonly outbox: string
}

/** Everything of one tenant that an event could change, as comparable text. */
export const snapshotTenant = async (db: pg.PoolClient | pg.Pool, org: string): Promise<Snapshot> => {
  const text = async (query: string) => JSON.stringify((await db.query(query, [org])).rows)
  return {
    stock: await text(`SELECT variant_id, warehouse_id, total::text, available::text, reserved::text, damaged::text, archived_at
      FROM stock WHERE organization_id = $1 ORDER BY variant_id, warehouse_id`),
    reservations: await text(`SELECT r.reservation_id, r.order_id, r.status, r.expires_at,
        (SELECT json_agg(json_build_array(i.variant_id, i.warehouse_id, i.quantity) ORDER BY i.position)
         FROM reservation_items i WHERE i.organization_id = r.organization_id AND i.reservation_id = r.reservation_id) AS items
      FROM reservations r WHERE r.organization_id = $1 ORDER BY r.reservation_id`),
    movements: await text(`SELECT count(*)::int AS n, coalesce(max(position), 0)::text AS last FROM stock_movements WHERE organization_id = $1`),
    eventLog: await text(`SELECT count(*)::int AS n FROM event_log WHERE organization_id = $1`),
    outbox: await text(`SELECT count(*)::int AS n FROM outbox WHERE organization_id = $1`)
  }
}

interface Drained {
  readonly messageId: string | undefined
  readonly headers: Record<string, unknown>
}

/** Takes every message of a queue (they leave it). */
export const drainQueue = async (url: string, queue: string): Promise<Array<Drained>> => {
  const connection = await amqp.connect(url)
  try {
    const channel = await connection.createChannel()
    const out: Array<Drained> = []
    await channel.prefetch(500)
    await channel.consume(queue, (m) => {
      if (m === null) return
      out.push({ messageId: typeof m.properties.messageId === "string" ? m.properties.messageId : undefined, headers: m.properties.headers ?? {} })
      channel.ack(m)
    })
    let last = -1
    for (;;) {
      await new Promise((r) => setTimeout(r, 500))
      const { messageCount } = await channel.checkQueue(queue)
      if (messageCount === 0 && out.length === last) break
      last = out.length
    }
    return out
  } finally {
    await connection.close().catch(() => undefined)
  }
}

export interface AuditInput {
  readonly db: pg.Pool
  readonly planned: ReadonlyArray<Planned>
  /** Copies of each key sent to the broker (a reconnecting publisher may send one twice). */
  readonly attempts: ReadonlyMap<string, number>
  readonly victim: string
  readonly victimBefore: Snapshot
  readonly captured: ReadonlyArray<Drained>
  readonly deadLettered: ReadonlyArray<Drained>
  readonly reconciliation: { readonly exitCode: number; readonly violations: number }
  readonly consumers: ReadonlyArray<{ name: string; signalled: boolean; exit: number | string | null }>
  readonly logs: ReadonlyArray<string>
  readonly secret: string
  readonly maxBodyBytes: number
}

const count = <A>(xs: Iterable<A>, p: (a: A) => boolean) => {
  let n = 0
  for (const x of xs) if (p(x)) n++
  return n
}

export const audit = async (input: AuditInput): Promise<Array<Line>> => {
  const { db, planned } = input
  const lines: Array<Line> = []
  const line = (check: string, found: number | string, expected: number | string = 0) =>
    lines.push({ check, found, expected, ok: found === expected })
  const info = (check: string, found: number | string) => lines.push({ check, found, expected: "-", ok: true })

  const byKey = new Map<string, Planned>()
  for (const m of planned) if (!byKey.has(m.key)) byKey.set(m.key, m)
  const keys = [...byKey.values()]
  const legitKinds = new Set(["legit", "duplicate", "warmup"])

  const eventLog = (await db.query(`SELECT organization_id, event_id FROM event_log`)).rows as Array<{ organization_id: string; event_id: string }>
  const failed = (await db.query(`SELECT event_id, organization_id, error_type, error_message FROM failed_events`)).rows as Array<
    { event_id: string | null; organization_id: string | null; error_type: string; error_message: string }
  >
  const applied = new Map<string, Array<string>>()
  for (const r of eventLog) applied.set(r.event_id, [...(applied.get(r.event_id) ?? []), r.organization_id])
  const dead = new Map<string, Array<{ error_type: string; error_message: string }>>()
  for (const r of failed) if (r.event_id !== null) dead.set(r.event_id, [...(dead.get(r.event_id) ?? []), r])

  const kinds = ["warmup", "legit", "duplicate", "abusive", "cross_tenant"] as const
  for (const kind of kinds) info(`published: ${kind.replace("_", "-")} messages`, count(planned, (m) => m.kind === kind))
  info("published: distinct event ids", keys.length)
  info("published: copies re-sent after a killed publisher connection", [...input.attempts.values()].reduce((a, n) => a + n, 0) - planned.length)

  // ---- exactly once
  const appliedOf = (k: string) => applied.get(k)?.length ?? 0
  const deadOf = (k: string) => dead.get(k)?.length ?? 0
  info("outcome: event ids applied (event_log)", count(keys, (m) => appliedOf(m.key) > 0))
  info("outcome: event ids dead-lettered (failed_events)", count(keys, (m) => deadOf(m.key) > 0))
  line("event ids with no outcome (lost)", count(keys, (m) => appliedOf(m.key) === 0 && deadOf(m.key) === 0))
  line("event ids applied more than once", count(keys, (m) => appliedOf(m.key) > 1))
  line("event ids applied under another organization", count(keys, (m) => m.org !== null && (applied.get(m.key) ?? []).some((o) => o !== m.org)))
  const overDead = keys.filter((m) => deadOf(m.key) > (input.attempts.get(m.key) ?? 0) - appliedOf(m.key))
  line("event ids dead-lettered more often than re-sent", overDead.length)
  for (const m of overDead.slice(0, 5)) {
    info(`  ... ${m.kind} ${m.label}`, `sent ${input.attempts.get(m.key) ?? 0}, applied ${appliedOf(m.key)}, dead-lettered as ${(dead.get(m.key) ?? []).map((d) => d.error_type).join(" + ")}`)
  }
  const movementTwice = (await db.query(`
    SELECT count(*)::int AS n FROM (
      SELECT 1 FROM stock_movements WHERE caused_by <> $1
      GROUP BY organization_id, caused_by, variant_id, warehouse_id, movement_type, category, reason HAVING count(*) > 1) d`, [SEED_CAUSE])).rows[0].n as number
  line("movements written twice for one event and row", movementTwice)
  line("event_log rows of event ids never published", count(eventLog, (r) => !byKey.has(r.event_id)))
  line("failed_events rows of event ids never published", count(failed, (r) => r.event_id === null || !byKey.has(r.event_id)))

  // ---- legitimate events and outages
  const legit = keys.filter((m) => legitKinds.has(m.kind))
  line("legitimate events applied", count(legit, (m) => appliedOf(m.key) === 1), legit.length)
  line("legitimate events dead-lettered", count(legit, (m) => deadOf(m.key) > 0))
  const legitDeadTypes = new Map<string, number>()
  for (const m of legit) for (const d of dead.get(m.key) ?? []) legitDeadTypes.set(d.error_type, (legitDeadTypes.get(d.error_type) ?? 0) + 1)
  if (legitDeadTypes.size > 0) info("  ... by error type", [...legitDeadTypes].map(([t, n]) => `${t} ${n}`).join(", "))
  line("dead letters caused by an outage (DatabaseError)", count(failed, (r) => r.error_type === "DatabaseError"))
  line("dead letters caused by a consumer defect (Defect)", count(failed, (r) => r.error_type === "Defect"))

  // ---- abuse
  const abusive = keys.filter((m) => m.kind === "abusive")
  line("abusive messages dead-lettered as ValidationError", count(abusive, (m) => deadOf(m.key) > 0 && dead.get(m.key)!.every((d) => d.error_type === "ValidationError")), abusive.length)
  line("abusive messages applied", count(abusive, (m) => appliedOf(m.key) > 0))
  const oversized = abusive.filter((m) => m.body.length > input.maxBodyBytes)
  line(`bodies over MAX_BODY_BYTES (${input.maxBodyBytes}) refused by size before parsing`,
    count(oversized, (m) => (dead.get(m.key) ?? []).some((d) => d.error_message.includes("exceeds the limit"))), oversized.length)
  const tooManyLines = abusive.filter((m) => m.label === "more lines than MAX_LINES_PER_EVENT")
  line("events over MAX_LINES_PER_EVENT refused", count(tooManyLines, (m) => (dead.get(m.key) ?? []).some((d) => /at most \d+/.test(d.error_message))), tooManyLines.length)
  info("abusive kinds covered", new Set(abusive.map((m) => m.label)).size)

  // ---- tenants
  const cross = keys.filter((m) => m.kind === "cross_tenant")
  const crossDead = new Map<string, number>()
  for (const m of cross) for (const d of dead.get(m.key) ?? []) crossDead.set(d.error_type, (crossDead.get(d.error_type) ?? 0) + 1)
  info("cross-tenant messages (attacker org naming victim ids)", cross.length)
  info("  ... applied in the attacker's own tenant", count(cross, (m) => appliedOf(m.key) > 0))
  info("  ... dead-lettered", [...crossDead].map(([t, n]) => `${t} ${n}`).join(", ") || "0")
  const victimAfter = await snapshotTenant(db, input.victim)
  line("victim tenant: tables changed during the run", count(Object.keys(victimAfter) as Array<keyof Snapshot>, (k) => victimAfter[k] !== input.victimBefore[k]))
  const orgs = new Set([...planned.map((m) => m.org).filter((o): o is string => o !== null)])
  const causedRows = (await db.query(`
    SELECT 'movement' AS what, organization_id, caused_by AS cause FROM stock_movements WHERE caused_by <> $1
    UNION ALL SELECT 'reservation', organization_id, caused_by FROM reservations
    UNION ALL SELECT 'outbox', organization_id, payload->>'causation_id' FROM outbox
      WHERE NOT (event_type = 'inventory.stock.released' AND payload->'data'->>'reason' = 'expired')`, [SEED_CAUSE])).rows as Array<
    { what: string; organization_id: string; cause: string }
  >
  line("rows caused by another organization's event (or by no event)", count(causedRows, (r) => byKey.get(r.cause)?.org !== r.organization_id))
  const tenants = (await db.query(`
    SELECT organization_id FROM stock UNION SELECT organization_id FROM reservations UNION SELECT organization_id FROM stock_movements
    UNION SELECT organization_id FROM event_log UNION SELECT organization_id FROM outbox UNION SELECT organization_id FROM warehouses
    UNION SELECT organization_id FROM variants`)).rows as Array<{ organization_id: string }>
  line("organizations with rows that no valid event named", count(tenants, (t) => !orgs.has(t.organization_id)))

  // ---- outbound events
  const outbox = (await db.query(`
    SELECT event_id, organization_id, event_type, payload->>'causation_id' AS causation, payload->'data'->>'reason' AS reason,
      sent_at IS NOT NULL AS sent FROM outbox`)).rows as Array<
    { event_id: string; organization_id: string; event_type: string; causation: string; reason: string | null; sent: boolean }
  >
  const committed = new Set(eventLog.map((r) => `${r.organization_id}/${r.event_id}`))
  const refusedForStock = new Set(failed.filter((r) => r.error_type === "InsufficientStock").map((r) => `${r.organization_id}/${r.event_id}`))
  const capturedIds = new Set(input.captured.map((m) => m.messageId).filter((id): id is string => id !== undefined))
  const outboxIds = new Set(outbox.map((r) => r.event_id))
  info("outbound events in the outbox", outbox.length)
  line("outbox rows never marked sent", count(outbox, (r) => !r.sent))
  line("outbox events never seen on inventory_events", count(outbox, (r) => !capturedIds.has(r.event_id)))
  info("outbound messages seen on inventory_events (with repeats)", input.captured.length)
  line("messages on inventory_events not in the outbox", count(capturedIds, (id) => !outboxIds.has(id)))
  line("outbound events for work that rolled back", count(outbox, (r) => {
    const cause = `${r.organization_id}/${r.causation}`
    if (committed.has(cause)) return false
    if (r.event_type === "inventory.reservation.failed" && refusedForStock.has(cause)) return false
    return !(r.event_type === "inventory.stock.released" && r.reason === "expired")
  }))

  // ---- the broker's DLQ agrees with the database
  const brokerTypes = new Map<string, number>()
  for (const m of input.deadLettered) {
    const t = String(m.headers["x-error-type"] ?? "?")
    brokerTypes.set(t, (brokerTypes.get(t) ?? 0) + 1)
  }
  const dbTypes = new Map<string, number>()
  for (const r of failed) dbTypes.set(r.error_type, (dbTypes.get(r.error_type) ?? 0) + 1)
  info("dead letters in inventory_failed_events (broker)", input.deadLettered.length)
  line("dead letters in the broker's DLQ vs failed_events", input.deadLettered.length, failed.length)
  line("error types whose broker and database counts differ",
    count(new Set([...brokerTypes.keys(), ...dbTypes.keys()]), (t) => brokerTypes.get(t) !== dbTypes.get(t)))

  // ---- books and processes
  line("reconciliation check (I1 I2 I3 I8 I9) violations", input.reconciliation.violations)
  line("reconciliation check exit code", input.reconciliation.exitCode)
  info("consumer processes run", input.consumers.length)
  line("consumer exits not caused by SIGTERM, or non-zero", count(input.consumers, (c) => !c.signalled || c.exit !== 0))
  const logText = input.logs.join("\n")
  const logLines = logText.split("\n").filter((l) => l.trim() !== "")
  line("log lines reporting a defect", count(logLines, (l) => /handler defect|failed unexpectedly|"level":"(FATAL|Fatal)"/.test(l)))
  line("log lines that are not JSON", count(logLines, (l) => {
    try {
      JSON.parse(l)
      return false
    } catch {
      return true
    }
  }))
  line("log lines carrying a credential", count(logLines, (l) => l.includes(input.secret) || l.includes("guest:guest")))
  return lines
}

export const formatTable = (lines: ReadonlyArray<Line>) => {
  const width = Math.max(...lines.map((l) => l.check.length))
  const cell = (v: number | string) => String(v).padStart(12)
  const rows = lines.map((l) => `${l.ok ? "  ok " : " FAIL"}  ${l.check.padEnd(width)}  ${cell(l.found)}  ${l.expected === "-" ? "" : `expected ${l.expected}`}`)
  return [`       ${"check".padEnd(width)}  ${"found".padStart(12)}`, ...rows].join("\n")
}
