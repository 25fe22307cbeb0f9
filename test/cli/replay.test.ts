import { type ChildProcess, spawn } from "node:child_process"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createVhost, deleteVhost, eventually, queuesSettled, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"
import type { FailedEventJson } from "../../src/cli/dlq.ts"
import { cliSchema, cliWith, databaseUrl, dropSchema, expectCleanFailure, json, node, root } from "./support.ts"

/**
 * Dead letters end to end: the real consumer (`node src/main.ts`) dead-letters an `order.placed`
 * it cannot serve; the CLI shows it, stock is put in with `stock adjust`, `dlq replay` sends it
 * back with publisher confirms, the consumer reserves it, and the dead letter shows the replay.
 */

const schema = cliSchema("replay")
const vhost = uniqueVhost("cli_replay")
const env = { DATABASE_URL: databaseUrl, DATABASE_SCHEMA: schema, ...testEnv(vhost) }
const cli = cliWith(env)
const org = "replay-org"


interface ReservationJson {
  readonly reservation_id: string
  readonly order_id: string
  readonly status: string
  readonly items: ReadonlyArray<{ readonly variant_id: string; readonly warehouse_id: string; readonly quantity: number }>
  readonly expires_at: string | null
}

let consumer: ChildProcess
let consumerOutput = ""
let client: TestClient

const orderPlaced = (orderId: string, variantId: string, quantity: number) => ({
  event: "order.placed",
  version: "1.0",
  timestamp: "2026-01-01T00:00:00Z",
  organization_id: org,
  event_id: `evt-${orderId}`,
  data: { order_id: orderId, items: [{ variant_id: variantId, quantity }] }
})

const deadLetters = async () => json<Array<FailedEventJson>>(await cli("dlq", "list", "--json")).filter((e) => e.organization_id === org)
const reservationsOf = async (orderId: string) =>
  json<Array<ReservationJson>>(await cli("reservations", "list", "--org", org, "--order", orderId, "--json"))
const settled = () => eventually("the order queue settled", () => queuesSettled(vhost, ["inventory_order_consumer"]), 60_000, 250)

beforeAll(async () => {
  await createVhost(vhost)
  const migrated = await cli("migrate")
  expect(migrated.code, migrated.stderr).toBe(0)
  consumer = spawn(node, ["src/main.ts"], { cwd: root, env: { PATH: process.env["PATH"] ?? "", ...env }, stdio: ["ignore", "pipe", "pipe"] })
  consumer.stdout!.on("data", (d) => (consumerOutput += d))
  consumer.stderr!.on("data", (d) => (consumerOutput += d))
  await eventually("the consumer started", () => consumerOutput.includes("consumer started") || consumer.exitCode !== null, 60_000)
  expect(consumer.exitCode, consumerOutput).toBeNull()
  client = await TestClient.connect(vhost)
})

afterAll(async () => {
  await client?.close()
  if (consumer !== undefined && consumer.exitCode === null) {
    const exited = new Promise((done) => consumer.once("exit", done))
    consumer.kill("SIGTERM")
    await Promise.race([exited, new Promise((r) => setTimeout(r, 20_000))])
    if (consumer.exitCode === null) consumer.kill("SIGKILL")
  }
  await deleteVhost(vhost)
  await dropSchema(schema)
})

describe("dlq with the running consumer", () => {
  it("a dead-lettered InsufficientStock order, replayed after stock arrives, is reserved and shows as replayed", async () => {
    expect((await cli("warehouse", "add", "--org", org, "--id", "wh-1", "--name", "Main")).code).toBe(0)
    const placed = orderPlaced("order-1", "v-1", 3)
    const body = JSON.stringify(placed)
    // What goes through order_events from here on: the original, then each replay.
    const sent = await client.bindCapture("order_events", "order.placed")
    const traceparent = "00-4bf92f3577b34da6a3ce929d0e0e4736-00f067aa0ba902b7-01"
    await client.publish("order_events", "order.placed", body, { headers: { traceparent, "x-tenant": "tenant-9" } })

    // The consumer refuses it (no stock anywhere) and dead-letters it at once.
    const [failed] = await eventually("the order dead-lettered", async () => {
      const rows = await deadLetters()
      return rows.length === 1 ? rows : undefined
    }, 60_000)
    expect(failed).toMatchObject({
      event_id: "evt-order-1",
      event_type: "order.placed",
      organization_id: org,
      error_type: "InsufficientStock",
      original_exchange: "order_events",
      original_routing_key: "order.placed",
      attempts: 1,
      replay_count: 0,
      last_replayed_at: null
    })
    expect(failed!.error_message).toContain("v-1")
    expect(Number.isNaN(Date.parse(failed!.failed_at))).toBe(false)
    expect(await reservationsOf("order-1")).toEqual([])

    // list: table and filters; show: the body byte for byte, table and JSON.
    // The default table fits 120 columns with a short id; --wide has every column in full.
    const narrow = await cli("dlq", "list")
    expect(narrow.stdout.split("\n")[0]).toMatch(/^ID\s+FAILED_AT\s+EVENT_TYPE\s+ORG\s+ERROR_TYPE\s+ATTEMPTS\s+REPLAYS\s+REASON$/)
    expect(narrow.stdout).toMatch(new RegExp(`^${failed!.id.slice(0, 8)}\\s+\\d{4}-\\d\\d-\\d\\d \\d\\d:\\d\\d\\s+order\\.placed\\s+${org}\\s+InsufficientStock\\s+1\\s+0\\s+Insufficient stock`, "m"))
    for (const line of narrow.stdout.trimEnd().split("\n")) expect(line.length).toBeLessThanOrEqual(120)
    const table = await cli("dlq", "list", "--wide")
    expect(table.stdout.split("\n")[0]).toMatch(/^ID\s+EVENT_TYPE\s+ORG\s+ERROR_TYPE\s+ATTEMPTS\s+FAILED_AT\s+EXCHANGE\s+ROUTING_KEY\s+REPLAYS\s+LAST_REPLAYED_AT\s+REASON$/)
    expect(table.stdout).toMatch(new RegExp(`^${failed!.id}\\s+order\\.placed\\s+${org}\\s+InsufficientStock\\s+1\\s+\\S+\\s+order_events\\s+order\\.placed\\s+0\\s+-\\s+Insufficient stock`, "m"))
    expect(json<Array<FailedEventJson>>(await cli("dlq", "list", "--event-type", "order.placed", "--error-type", "InsufficientStock", "--json")).map((e) => e.id)).toEqual([failed!.id])
    expect(json(await cli("dlq", "list", "--error-type", "ValidationError", "--json"))).toEqual([])
    expect(json(await cli("dlq", "list", "--event-type", "order.shipped", "--json"))).toEqual([])
    const detail = json<FailedEventJson & { body: string; body_encoding: string; content_type: string | null }>(await cli("dlq", "show", failed!.id, "--json"))
    expect(detail).toEqual({ ...failed, content_type: "application/json", headers: { traceparent, "x-tenant": "tenant-9" }, body, body_encoding: "utf8" })
    const shown = await cli("dlq", "show", failed!.id)
    expect(shown.stdout).toMatch(/^error_type:\s+InsufficientStock$/m)
    expect(shown.stdout).toMatch(/^original_routing_key:\s+order\.placed$/m)
    expect(shown.stdout).toContain(body)

    // A dry run sends nothing and marks nothing.
    const dry = json<Array<{ id: string; replayed: boolean }>>(await cli("dlq", "replay", "--id", failed!.id, "--dry-run", "--json"))
    expect(dry).toEqual([expect.objectContaining({ id: failed!.id, replayed: false, replay_count: 0 })])
    expect((await deadLetters())[0]!.replay_count).toBe(0)

    // Stock arrives; the replay goes back to order_events / order.placed and is reserved.
    expect((await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "5", "--reason", "goods received")).code).toBe(0)
    const replayed = await cli("dlq", "replay", "--id", failed!.id)
    expect(replayed.code, replayed.stderr).toBe(0)
    // The replay carries the message's own headers again (it stays in the original trace), and says it is a replay.
    const [again] = await eventually("the replay captured", async () => (sent.length === 2 ? [sent[1]!] : undefined), 30_000)
    expect(again!.body.toString()).toBe(body)
    expect(again!.headers).toMatchObject({ "x-tenant": "tenant-9", "x-replay-of": failed!.id, "x-replay-count": 1 })
    // Its producer span is a child in the original trace: same trace id, a span id of its own.
    const [, traceId, spanId] = String(again!.headers["traceparent"]).split("-")
    expect([traceId, spanId === traceparent.split("-")[2]]).toEqual([traceparent.split("-")[1], false])
    expect(replayed.stdout).toMatch(new RegExp(`^${failed!.id}\\s+order\\.placed\\s+order_events\\s+order\\.placed\\s+yes\\s+1$`, "m"))

    const [reservation] = await eventually("the replayed order reserved", async () => {
      const rows = await reservationsOf("order-1")
      return rows.length === 1 ? rows : undefined
    }, 60_000)
    expect(reservation).toMatchObject({ order_id: "order-1", status: "active", items: [{ variant_id: "v-1", warehouse_id: "wh-1", quantity: 3 }] })
    expect(Number.isNaN(Date.parse(reservation!.expires_at!))).toBe(false)
    const reservationsNarrow = await cli("reservations", "list", "--org", org, "--status", "active")
    expect(reservationsNarrow.stdout).toMatch(/^RESERVATION\s+ORDER\s+STATUS\s+EXPIRES_AT\s+CREATED_AT\s+ITEMS$/m)
    expect(reservationsNarrow.stdout).toMatch(
      new RegExp(`^${reservation!.reservation_id.slice(0, 8)}\\s+order-1\\s+active\\s+\\S+ \\S+\\s+\\S+ \\S+\\s+v-1@wh-1x3$`, "m")
    )
    const reservationsTable = await cli("reservations", "list", "--org", org, "--status", "active", "--wide")
    expect(reservationsTable.stdout).toMatch(/^RESERVATION\s+ORDER\s+STATUS\s+ITEMS\s+EXPIRES_AT\s+CREATED_AT$/m)
    expect(reservationsTable.stdout).toMatch(new RegExp(`^${reservation!.reservation_id}\\s+order-1\\s+active\\s+v-1@wh-1x3\\s+\\S+Z\\s+\\S+Z$`, "m"))
    expect(json(await cli("reservations", "list", "--org", org, "--status", "cancelled", "--json"))).toEqual([])

    const [after] = await deadLetters()
    expect(after).toMatchObject({ id: failed!.id, replay_count: 1 })
    expect(after!.last_replayed_at).not.toBeNull()
    expect(json(await cli("stock", "show", "--org", org, "--variant", "v-1", "--json"))).toEqual([
      expect.objectContaining({ total: 5, available: 2, reserved: 3 })
    ])

    // Replaying an event that has since succeeded changes nothing (the consumer's event log).
    expect((await cli("dlq", "replay", "--id", failed!.id)).code).toBe(0)
    await settled()
    expect(await reservationsOf("order-1")).toEqual([reservation])
    expect(json(await cli("stock", "show", "--org", org, "--variant", "v-1", "--json"))).toEqual([
      expect.objectContaining({ total: 5, available: 2, reserved: 3 })
    ])
    const twice = await deadLetters()
    expect(twice).toHaveLength(1)
    expect(twice[0]!.replay_count).toBe(2)

    // --all leaves replayed ones alone unless asked.
    expect((await cli("dlq", "replay", "--all")).stdout).toContain("Nothing to replay")
    expect(json<Array<{ id: string }>>(await cli("dlq", "replay", "--all", "--include-replayed", "--dry-run", "--json")).map((r) => r.id)).toEqual([failed!.id])

    const check = await cli("check", "--org", org)
    expect(check.code, check.stdout + check.stderr).toBe(0)
    // Some twenty child processes in a row, on a shared machine: the default 60 s is too tight.
  }, 180_000)

  it("replay --all with filters and --rate republishes each chosen event; still short of stock, they are dead-lettered again", async () => {
    await client.publish("order_events", "order.placed", JSON.stringify(orderPlaced("order-2", "v-1", 100)))
    await client.publish("order_events", "order.placed", JSON.stringify(orderPlaced("order-3", "v-1", 200)))
    const fresh = await eventually("two more dead letters", async () => {
      const rows = (await deadLetters()).filter((e) => e.replay_count === 0)
      return rows.length === 2 ? rows : undefined
    }, 60_000)

    const result = json<Array<{ id: string; replayed: boolean; replay_count: number }>>(
      await cli("dlq", "replay", "--all", "--event-type", "order.placed", "--error-type", "InsufficientStock", "--rate", "5", "--json")
    )
    expect(result.map((r) => r.id).sort()).toEqual(fresh.map((e) => e.id).sort())
    expect(result.every((r) => r.replayed && r.replay_count === 1)).toBe(true)

    // Processed again by the consumer: refused again, so dead-lettered again as new records.
    const all = await eventually("the replays dead-lettered again", async () => {
      const rows = await deadLetters()
      return rows.length === 5 ? rows : undefined
    }, 60_000)
    const byEvent = (eventId: string) => all.filter((e) => e.event_id === eventId).map((e) => e.replay_count).sort()
    expect(byEvent("evt-order-2")).toEqual([0, 1])
    expect(byEvent("evt-order-3")).toEqual([0, 1])
    expect(await reservationsOf("order-2")).toEqual([])
  }, 180_000)

  it("replay of an unknown id fails cleanly, and an unreachable broker is one line without the password", async () => {
    expectCleanFailure(await cli("dlq", "replay", "--id", "no-such-id"), 1, "No dead-lettered event with id no-such-id")

    const [one] = await deadLetters()
    const unreachable = await cliWith({
      ...env,
      AMQP_URL: "amqp://guest:hunter2-secret@127.0.0.1:1/nowhere",
      AMQP_CONNECT_ATTEMPTS: "1"
    })("dlq", "replay", "--id", one!.id)
    expectCleanFailure(unreachable, 1, /^inventory: broker amqp:\/\/guest:\*\*\*@127\.0\.0\.1:1\/nowhere: nothing listening/)
    expect(unreachable.stderr.trimEnd().split("\n")).toHaveLength(1)
    expect(unreachable.stderr).not.toContain("hunter2-secret")
    // Nothing went out, so nothing is marked.
    expect((await deadLetters()).find((e) => e.id === one!.id)!.replay_count).toBe(one!.replay_count)
  })
})
