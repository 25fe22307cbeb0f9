import { type ChildProcessWithoutNullStreams, spawn } from "node:child_process"
import { resolve } from "node:path"
import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { ReservationTimers } from "../../src/stores/services.ts"
import type { Captured, TestClient } from "../support/rabbit.ts"

/**
 * Helpers for the reservation-expiry integration tests (real PostgreSQL and RabbitMQ).
 *
 * Final state alone cannot show a double release: the outbox dedupes by `event_id` (derived
 * from the reservation), and a second release of the only reservation on a row trips the
 * `reserved >= 0` constraint. So the tests (a) keep another live reservation on the same rows,
 * and (b) record every committed change with test-owned triggers, then count rows.
 */

/** One committed status change of a reservation, as the audit trigger saw it. */
export interface Transition {
  readonly organization_id: string
  readonly reservation_id: string
  readonly order_id: string
  readonly from_status: string
  readonly to_status: string
  readonly closed_reason: string | null
  /** `application_name` of the connection that made the change (tells scheduler instances apart). */
  readonly client: string
}

/** One committed change of a stock row's available/reserved quantities. */
export interface StockChange {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  readonly d_available: number
  readonly d_reserved: number
  readonly d_total: number
}

/**
 * Test-owned audit tables and triggers in the current schema (the connection's search_path).
 * They observe, never change, what the consumer writes; rows of rolled-back units vanish with them.
 */
export const installAudit = Effect.gen(function*() {
  const sql = yield* SqlClient
  const [row] = yield* sql<{ readonly schema: string }>`SELECT current_schema() AS schema`
  const schema = row!.schema
  for (
    const statement of [
      `CREATE TABLE IF NOT EXISTS ${schema}.test_audit_transitions (
        seq bigserial PRIMARY KEY,
        organization_id text NOT NULL, reservation_id text NOT NULL, order_id text NOT NULL,
        from_status text NOT NULL, to_status text NOT NULL, closed_reason text,
        client text NOT NULL DEFAULT current_setting('application_name'))`,
      `CREATE OR REPLACE FUNCTION ${schema}.test_audit_transition() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO ${schema}.test_audit_transitions (organization_id, reservation_id, order_id, from_status, to_status, closed_reason)
          VALUES (NEW.organization_id, NEW.reservation_id, NEW.order_id, OLD.status, NEW.status, NEW.closed_reason);
          RETURN NULL;
        END $$`,
      `CREATE TRIGGER test_audit_transition AFTER UPDATE ON ${schema}.reservations FOR EACH ROW
        WHEN (OLD.status IS DISTINCT FROM NEW.status) EXECUTE FUNCTION ${schema}.test_audit_transition()`,
      `CREATE TABLE IF NOT EXISTS ${schema}.test_audit_stock (
        seq bigserial PRIMARY KEY,
        organization_id text NOT NULL, variant_id text NOT NULL, warehouse_id text NOT NULL,
        d_available bigint NOT NULL, d_reserved bigint NOT NULL, d_total bigint NOT NULL)`,
      `CREATE OR REPLACE FUNCTION ${schema}.test_audit_stock() RETURNS trigger LANGUAGE plpgsql AS $$
        BEGIN
          INSERT INTO ${schema}.test_audit_stock (organization_id, variant_id, warehouse_id, d_available, d_reserved, d_total)
          VALUES (NEW.organization_id, NEW.variant_id, NEW.warehouse_id,
            NEW.available - OLD.available, NEW.reserved - OLD.reserved, NEW.total - OLD.total);
          RETURN NULL;
        END $$`,
      `CREATE TRIGGER test_audit_stock AFTER UPDATE ON ${schema}.stock FOR EACH ROW
        WHEN (OLD.available IS DISTINCT FROM NEW.available OR OLD.reserved IS DISTINCT FROM NEW.reserved)
        EXECUTE FUNCTION ${schema}.test_audit_stock()`
    ]
  ) yield* sql.unsafe(statement)
})

export const transitionsOf = (organizationId: string) =>
  Effect.flatMap(SqlClient, (sql) =>
    sql<Transition>`
      SELECT organization_id, reservation_id, order_id, from_status, to_status, closed_reason, client
      FROM test_audit_transitions WHERE organization_id = ${organizationId} ORDER BY seq`)

export const stockChangesOf = (organizationId: string) =>
  Effect.flatMap(SqlClient, (sql) =>
    sql<StockChange>`
      SELECT organization_id, variant_id, warehouse_id,
        d_available::integer AS d_available, d_reserved::integer AS d_reserved, d_total::integer AS d_total
      FROM test_audit_stock WHERE organization_id = ${organizationId} ORDER BY seq`)

/** Every outbox row of the organization (sent or not), oldest first. */
export const outboxRowsOf = (organizationId: string) =>
  Effect.flatMap(SqlClient, (sql) =>
    sql<{ readonly event_id: string; readonly event_type: string; readonly payload: any; readonly sent: boolean }>`
      SELECT event_id, event_type, payload, sent_at IS NOT NULL AS sent
      FROM outbox WHERE organization_id = ${organizationId} ORDER BY position`)

/** Timers that do nothing: for placing reservations without any scheduler holding them. */
export const noTimers = Layer.succeed(ReservationTimers, ReservationTimers.of({
  schedule: () => Effect.void,
  cancel: () => Effect.void,
  pending: Effect.succeed(0),
  settled: Effect.void
}))

export const orderPlaced = (organizationId: string, eventId: string, data: unknown) => ({
  event: "order.placed",
  version: "1.0",
  timestamp: new Date().toISOString(),
  organization_id: organizationId,
  event_id: eventId,
  data
})

/**
 * A capture queue of the test's own, bound to `inventory_events`: unlike an exclusive
 * consumer it keeps what arrives while nobody reads, and draining it after the publisher
 * stopped gives an exact count.
 */
export const captureQueue = async (client: TestClient, name: string, exchange = "inventory_events") => {
  await client.channel.assertExchange(exchange, "topic", { durable: true })
  await client.channel.assertQueue(name, { durable: false, autoDelete: false, exclusive: false, arguments: { "x-queue-type": "classic" } })
  await client.channel.bindQueue(name, exchange, "inventory.#")
  const seen: Array<Captured> = []
  return {
    seen,
    /** Moves what the queue holds now into `seen`; returns `seen`. */
    collect: async () => {
      seen.push(...(await client.drain(name)))
      return seen
    }
  }
}

export const released = (messages: ReadonlyArray<Captured>) =>
  messages
    .filter((m) => m.routingKey === "inventory.stock.released")
    .map((m) => m.json as { readonly event_id: string; readonly timestamp: string; readonly data: { readonly reservation_id: string; readonly order_id: string; readonly reason: string } })

/** `node src/main.ts` as a child process (Node 24 from node_modules), output collected. */
export const startConsumer = (env: Record<string, string>) => {
  const child: ChildProcessWithoutNullStreams = spawn(resolve("node_modules/.bin/node"), ["src/main.ts"], {
    env: { ...process.env, ...env },
    stdio: ["pipe", "pipe", "pipe"]
  })
  let output = ""
  child.stdout.on("data", (d) => (output += d))
  child.stderr.on("data", (d) => (output += d))
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
  return {
    child,
    exited,
    output: () => output,
    /** SIGTERM, then the exit code. */
    stop: async () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGTERM")
      return await exited
    },
    kill: () => {
      if (child.exitCode === null && child.signalCode === null) child.kill("SIGKILL")
    }
  }
}

/** The `count` annotation of the "reservation timers recovered" log line, whatever the log format. */
export const recoveredCount = (output: string): number | undefined => {
  for (const line of output.split("\n")) {
    if (!line.includes("reservation timers recovered")) continue
    const match = /"?count"?\s*[=:]\s*"?(\d+)/.exec(line)
    if (match) return Number(match[1])
  }
  return undefined
}
