import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { FailedEventDetailJson, FailedEventJson, ReplayJson } from "../../src/cli/dlq.ts"
import { createVhost, deleteVhost, TestClient, testEnv, uniqueVhost, eventually } from "../support/rabbit.ts"
import { cliSchema, cliWith, databaseUrl, dropSchema, expectCleanFailure, json, withDatabase } from "./support.ts"

/**
 * `dlq list` and `dlq replay --all` walk the table a page at a time (`--page-size`) and take
 * `--org`; `dlq show` shows the stored headers and never writes a control character raw.
 * Dead letters are written with plain SQL, as the consumer would have stored them.
 */

const schema = cliSchema("dlq_paging")
const vhost = uniqueVhost("cli_dlq_paging")
const cli = cliWith({ DATABASE_URL: databaseUrl, DATABASE_SCHEMA: schema, ...testEnv(vhost) })
const orgA = "paging-a"
const orgB = "paging-b"

interface Row {
  readonly id: string
  readonly org: string
  readonly at: number
  readonly body?: Buffer
  readonly headers?: Record<string, unknown>
}

const insert = (rows: ReadonlyArray<Row>) =>
  withDatabase(async (db) => {
    for (const row of rows) {
      await db.query(
        `INSERT INTO ${schema}.failed_events (id, event_id, event_type, organization_id, error_type, error_message, body,
           body_sha256, body_length, content_type, original_exchange, original_routing_key, attempts, failed_at, dlq_copied_at, headers)
         VALUES ($1, $1, 'order.placed', $2, 'InsufficientStock', 'refused', $3, encode(sha256($3), 'hex'), length($3),
           'application/json', 'order_events', 'order.placed', 1, $4, $4, $5::jsonb)`,
        [row.id, row.org, row.body ?? Buffer.from(JSON.stringify({ id: row.id })), new Date(row.at), JSON.stringify(row.headers ?? {})]
      )
    }
  })

// Seven for A (three at one instant: only the write order separates them), two for B, interleaved.
const rowsA = ["a1", "a2", "a3", "a4", "a5", "a6", "a7"]
const seeded: ReadonlyArray<Row> = [
  { id: "a1", org: orgA, at: 1_000 },
  { id: "b1", org: orgB, at: 1_500 },
  { id: "a2", org: orgA, at: 2_000 },
  { id: "a3", org: orgA, at: 2_000 },
  { id: "a4", org: orgA, at: 2_000 },
  { id: "b2", org: orgB, at: 2_500 },
  { id: "a5", org: orgA, at: 3_000 },
  { id: "a6", org: orgA, at: 4_000 },
  { id: "a7", org: orgA, at: 5_000 }
]

beforeAll(async () => {
  await createVhost(vhost)
  const migrated = await cli("migrate")
  expect(migrated.code, migrated.stderr).toBe(0)
  await insert(seeded)
})

afterAll(async () => {
  await deleteVhost(vhost)
  await dropSchema(schema)
})

// Each test runs several child processes (the CLI) or waits on the broker; the machine is shared.
describe("dlq paging and --org", () => {
  it("list reads more records than one page and prints them all, once, oldest first", async () => {
    const listed = json<Array<FailedEventJson>>(await cli("dlq", "list", "--page-size", "2", "--json"))
    expect(listed.map((e) => e.id)).toEqual(seeded.map((r) => r.id))
    // The same with a page of one, and the table: its header once, every id on its own line.
    expect(json<Array<FailedEventJson>>(await cli("dlq", "list", "--page-size", "1", "--json")).map((e) => e.id))
      .toEqual(seeded.map((r) => r.id))
    const table = await cli("dlq", "list", "--page-size", "2")
    expect(table.code, table.stderr).toBe(0)
    const lines = table.stdout.trimEnd().split("\n")
    expect(lines.filter((line) => line.startsWith("ID "))).toHaveLength(1)
    expect(lines.slice(1).map((line) => line.split(/\s+/)[0])).toEqual(seeded.map((r) => r.id))
  }, 180_000)

  it("--org keeps one organization's records, on list and replay --all", async () => {
    expect(json<Array<FailedEventJson>>(await cli("dlq", "list", "--org", orgA, "--page-size", "3", "--json")).map((e) => e.id)).toEqual(rowsA)
    expect(json<Array<FailedEventJson>>(await cli("dlq", "list", "--org", orgB, "--json")).map((e) => e.id)).toEqual(["b1", "b2"])
    expect(json<Array<FailedEventJson>>(await cli("dlq", "list", "--org", "paging-nobody", "--json"))).toEqual([])
    const none = await cli("dlq", "list", "--org", "paging-nobody")
    expect(none.stdout).toContain("No dead-lettered events for this filter.")

    const dry = json<Array<ReplayJson>>(await cli("dlq", "replay", "--all", "--org", orgB, "--dry-run", "--json"))
    expect(dry.map((r) => [r.id, r.replayed])).toEqual([["b1", false], ["b2", false]])
  }, 180_000)

  it("replay --all pages through and republishes every match, and only those", async () => {
    const client = await TestClient.connect(vhost)
    try {
      const sent = await client.bindCapture("order_events", "#")
      const replayed = json<Array<ReplayJson>>(await cli("dlq", "replay", "--all", "--org", orgA, "--page-size", "2", "--json"))
      expect(replayed.map((r) => [r.id, r.replayed, r.replay_count])).toEqual(rowsA.map((id) => [id, true, 1]))
      await eventually("seven republished", () => sent.length === 7)
      expect(sent.map((m) => m.properties.messageId)).toEqual(rowsA)
      const after = json<Array<FailedEventJson>>(await cli("dlq", "list", "--json"))
      expect(after.map((e) => [e.id, e.replay_count])).toEqual(seeded.map((r) => [r.id, r.org === orgA ? 1 : 0]))
      // Replayed already: a second --all finds nothing for A.
      expect(json<Array<ReplayJson>>(await cli("dlq", "replay", "--all", "--org", orgA, "--json"))).toEqual([])
    } finally {
      await client.close()
    }
  }, 180_000)

  it("show escapes control characters of the body and headers, and shows the headers", async () => {
    const body = Buffer.from('{"note":"\u001b[31mred\u001b[0m","csi":"\u009b2J","line":"one\ntwo"}', "utf8")
    await insert([{ id: "esc", org: orgB, at: 9_000, body, headers: { traceparent: "00-abc-01", "x-note": "\u001b]0;title\u0007", "x-n": 7 } }])
    const shown = await cli("dlq", "show", "esc")
    expect(shown.code, shown.stderr).toBe(0)
    expect(shown.stdout).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/)
    expect(shown.stdout).toContain("\\x1b[31mred\\x1b[0m")
    expect(shown.stdout).toContain("\\x9b2J")
    expect(shown.stdout).toContain('"line":"one\ntwo"')
    expect(shown.stdout).toMatch(/^headers:\n {2}traceparent: 00-abc-01\n {2}x-n: 7\n {2}x-note: \\x1b\]0;title\\x07$/m)

    const detail = json<FailedEventDetailJson>(await cli("dlq", "show", "esc", "--json"))
    expect(detail.body).toBe(body.toString("utf8"))
    expect(detail.headers).toEqual({ traceparent: "00-abc-01", "x-note": "\u001b]0;title\u0007", "x-n": 7 })
    const raw = (await cli("dlq", "show", "esc", "--json")).stdout
    expect(raw).not.toMatch(/[\u0000-\u0009\u000b-\u001f\u007f-\u009f]/)

    expectCleanFailure(await cli("dlq", "show", "esc", "--org", orgA), 1, `No dead-lettered event with id esc in organization ${orgA}`)
    expect((await cli("dlq", "show", "esc", "--org", orgB)).code).toBe(0)
  }, 180_000)
})
