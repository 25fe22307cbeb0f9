import { execFile } from "node:child_process"
import { promisify } from "node:util"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { createVhost, deleteVhost, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { cliSchema, cliWith, databaseUrl, dropSchema, expectCleanFailure, node, root, withDatabase } from "./support.ts"

/**
 * A command that cannot reach the broker or the database fails at once (no reconnect loop, no
 * WARN blocks) with one line naming which and why; and `dlq list` read in a real terminal
 * (tmux, 120 columns) does not wrap, its short ids naming the record to `dlq show` and `replay --id`.
 */

const schema = cliSchema("terminal")
const vhost = uniqueVhost("cli_terminal")
const env = { DATABASE_URL: databaseUrl, DATABASE_SCHEMA: schema, AMQP_URL: vhostUrl(vhost) }
const cli = cliWith(env)
const run = promisify(execFile)

beforeAll(async () => {
  await createVhost(vhost)
  const migrated = await cli("migrate")
  expect(migrated.code, migrated.stderr).toBe(0)
  // One dead letter with long fields, so replay has something to send and the table something to cut.
  await withDatabase((db) =>
    db.query(
      `INSERT INTO ${schema}.failed_events (id, event_id, event_type, organization_id, error_type, error_message, body,
         body_sha256, body_length, content_type, original_exchange, original_routing_key, attempts, failed_at, dlq_copied_at, headers)
       VALUES ('0b7d2c1e-5f7a-4c3b-9e1d-2a6f8c4b9d10', 'evt-1', 'order.placed', 'organization-with-a-long-name', 'InsufficientStock',
         $1, '\\x7b7d', encode(sha256('\\x7b7d'::bytea), 'hex'), 2, 'application/json', 'order_events', 'order.placed', 1, now(), now(), '{}')`,
      [`Insufficient stock for variant v-1 in warehouse wh-1: ${"requested more than there is; ".repeat(8)}`]
    ))
}, 120_000)

afterAll(async () => {
  await deleteVhost(vhost)
  await dropSchema(schema)
})

/** Exit 1 and exactly one line on stderr, which says this. */
const expectOneLine = (result: { code: number; stdout: string; stderr: string }, message: RegExp) => {
  expectCleanFailure(result, 1, message)
  expect(result.stderr.trimEnd().split("\n"), result.stderr).toHaveLength(1)
  expect(result.stdout).toBe("")
}

// Sequential: each case is a child process, and the machine is shared.
describe("an unreachable broker: one attempt, one line", () => {
  const replayWith = (amqpUrl: string) => cliWith({ ...env, AMQP_URL: amqpUrl })("dlq", "replay", "--all")

  it("wrong password", async () => {
    const result = await replayWith(`amqp://guest:not-the-pw@127.0.0.1:5672/${vhost}`)
    expectOneLine(result, new RegExp(`^inventory: broker amqp://guest:\\*\\*\\*@127\\.0\\.0\\.1:5672/${vhost}: wrong credentials`))
    expect(result.stderr).not.toContain("not-the-pw")
  }, 120_000)

  it("unknown vhost, the user named as it is (the password equal to it stays hidden)", async () => {
    const result = await replayWith("amqp://guest:guest@127.0.0.1:5672/no_such_vhost_here")
    expectOneLine(result, /^inventory: broker amqp:\/\/guest:\*\*\*@127\.0\.0\.1:5672\/no_such_vhost_here: unknown vhost "no_such_vhost_here"/)
  }, 120_000)

  it("nothing listening", async () => {
    expectOneLine(await replayWith("amqp://guest:guest@127.0.0.1:1/"), /^inventory: broker amqp:\/\/guest:\*\*\*@127\.0\.0\.1:1\/: nothing listening/)
  }, 120_000)

  it("the record is not marked replayed", async () => {
    const rows = await withDatabase((db) => db.query(`SELECT replay_count FROM ${schema}.failed_events`))
    expect(rows.rows).toEqual([{ replay_count: 0 }])
  })
})

describe("an unreachable database: one line that says why", () => {
  const listWith = (url: string) => cliWith({ ...env, DATABASE_URL: url })("dlq", "list")

  it("unknown database", async () => {
    expectOneLine(await listWith("postgres://postgres@127.0.0.1:5432/no_such_db_here"), /^inventory: database postgres:\/\/postgres@127\.0\.0\.1:5432\/no_such_db_here: unknown database/)
  }, 120_000)

  it("unknown user", async () => {
    const result = await listWith("postgres://nobody_here:pw-secret@127.0.0.1:5432/postgres")
    expectOneLine(result, /^inventory: database postgres:\/\/nobody_here:\*\*\*@127\.0\.0\.1:5432\/postgres: wrong credentials/)
    expect(result.stderr).not.toContain("pw-secret")
  }, 120_000)

  it("nothing listening", async () => {
    expectOneLine(await listWith("postgres://postgres@127.0.0.1:1/postgres"), /^inventory: database postgres:\/\/postgres@127\.0\.0\.1:1\/postgres: nothing listening/)
  }, 120_000)
})

describe("dlq list in a real terminal", () => {
  it("fits a 120-column tmux pane without wrapping", async () => {
    const session = `cli_${process.pid}_${Math.random().toString(36).slice(2, 8)}`
    const tmux = (...args: ReadonlyArray<string>) => run("tmux", ["-L", session, ...args], { cwd: root })
    // The command and its environment in a script, so the pane shows only its output.
    const command = [
      ...Object.entries(env).map(([k, v]) => `${k}='${v}'`),
      `'${node}' src/cli/main.ts dlq list; echo __done__; sleep 600`
    ].join(" ")
    await tmux("new-session", "-d", "-s", session, "-x", "120", "-y", "20", command)
    try {
      let screen = ""
      for (let i = 0; i < 240 && !screen.includes("__done__"); i++) {
        await new Promise((resolve) => setTimeout(resolve, 500))
        // -J joins wrapped lines: a row that wrapped comes back longer than the pane.
        screen = (await tmux("capture-pane", "-p", "-J", "-t", session)).stdout
      }
      const lines = screen.split("\n").filter((line) => line.trim() !== "" && line !== "__done__")
      expect(lines[0]).toMatch(/^ID\s+FAILED_AT\s+EVENT_TYPE\s+ORG\s+ERROR_TYPE\s+ATTEMPTS\s+REPLAYS\s+REASON$/)
      expect(lines[1]).toMatch(/^0b7d2c1e\s+\d{4}-\d\d-\d\d \d\d:\d\d\s+order\.placed\s+organizatio…\s+InsufficientStock\s+1\s+0\s+Insufficient stock .+…$/)
      expect(lines).toHaveLength(2)
      for (const line of lines) expect(line.length).toBeLessThanOrEqual(120)
    } finally {
      await tmux("kill-server").catch(() => undefined)
    }
  }, 180_000)
})

// After the terminal test: it adds a second record that shares the first one's short id.
describe("short ids name a record", () => {
  it("dlq show and replay --id take the 8 characters dlq list shows; an ambiguous start is refused", async () => {
    const shown = await cli("dlq", "show", "0b7d2c1e", "--json")
    expect(shown.code, shown.stderr).toBe(0)
    expect(JSON.parse(shown.stdout)).toMatchObject({ id: "0b7d2c1e-5f7a-4c3b-9e1d-2a6f8c4b9d10", event_id: "evt-1" })
    const dry = await cli("dlq", "replay", "--id", "0b7d2c1e", "--dry-run", "--json")
    expect(JSON.parse(dry.stdout)).toMatchObject([{ id: "0b7d2c1e-5f7a-4c3b-9e1d-2a6f8c4b9d10", replayed: false }])

    await withDatabase((db) =>
      db.query(
        `INSERT INTO ${schema}.failed_events (id, event_id, event_type, organization_id, error_type, error_message, body,
           body_sha256, body_length, content_type, original_exchange, original_routing_key, attempts, failed_at, dlq_copied_at, headers)
         SELECT '0b7d2c1e-0000-4000-8000-000000000000', 'evt-2', event_type, organization_id, error_type, error_message, body,
           body_sha256, body_length, content_type, original_exchange, original_routing_key, attempts, failed_at, dlq_copied_at, headers
         FROM ${schema}.failed_events WHERE id = '0b7d2c1e-5f7a-4c3b-9e1d-2a6f8c4b9d10'`
      ))
    expectOneLine(await cli("dlq", "show", "0b7d2c1e"), /^inventory: 0b7d2c1e is the start of more than one dead-letter id/)
    // A longer start, or the whole id, still names one.
    expect(JSON.parse((await cli("dlq", "show", "0b7d2c1e-5f", "--json")).stdout)).toMatchObject({ event_id: "evt-1" })
  }, 180_000)
})
