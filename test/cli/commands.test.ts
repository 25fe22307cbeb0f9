import { afterAll, beforeAll, describe, expect, it } from "vitest"
import type { StockJson } from "../../src/cli/stock.ts"
import { cliSchema, cliWith, databaseUrl, dropSchema, expectCleanFailure, json, withDatabase } from "./support.ts"

/**
 * Every command of the operator CLI as a child process against the real PostgreSQL: help,
 * table and JSON output, refusals, and bad arguments (exit code, one clear message, no stack).
 * Dead-letter replay with the running consumer and RabbitMQ is in replay.test.ts.
 */

const schema = cliSchema("commands")
const env = { DATABASE_URL: databaseUrl, DATABASE_SCHEMA: schema }
const cli = cliWith(env)
const org = "acme"


const ledger = (variant: string) =>
  withDatabase(async (c) => {
    const movements = await c.query(
      `SELECT movement_type, quantity_change, quantity_before, quantity_after, category, reason, reference_id
       FROM ${schema}.stock_movements WHERE organization_id = $1 AND variant_id = $2 ORDER BY position`,
      [org, variant]
    )
    const outbox = await c.query(`SELECT event_type, payload FROM ${schema}.outbox WHERE organization_id = $1 ORDER BY position`, [org])
    return { movements: movements.rows, outbox: outbox.rows }
  })

afterAll(async () => {
  await dropSchema(schema)
})

describe.concurrent("help", () => {
  const paths = [
    [],
    ["migrate"],
    ["warehouse"],
    ["warehouse", "add"],
    ["warehouse", "list"],
    ["warehouse", "deactivate"],
    ["stock"],
    ["stock", "show"],
    ["stock", "adjust"],
    ["reservations"],
    ["reservations", "list"],
    ["dlq"],
    ["dlq", "list"],
    ["dlq", "show"],
    ["dlq", "replay"],
    ["check"]
  ]
  const flags: Record<string, ReadonlyArray<string>> = {
    "warehouse add": ["--org", "--id", "--name"],
    "warehouse list": ["--org", "--json"],
    "warehouse deactivate": ["--org", "--id"],
    "stock show": ["--org", "--variant", "--warehouse", "--json"],
    "stock adjust": ["--org", "--variant", "--warehouse", "--delta", "--reason", "--category", "--reference"],
    "reservations list": ["--org", "--order", "--status", "--json"],
    "dlq list": ["--event-type", "--error-type", "--json"],
    "dlq replay": ["--id", "--all", "--event-type", "--error-type", "--dry-run", "--rate"],
    "check": ["--org", "--json"]
  }

  it.each(paths.map((p) => [p.join(" ") || "(root)", p] as const))("%s --help explains itself without touching the database", async (_, path) => {
    // An unreachable database: help must not need one.
    const result = await cliWith({ DATABASE_URL: "postgres://postgres@127.0.0.1:1/none", DATABASE_SCHEMA: schema })(...path, "--help")
    expect(result.code, result.stderr).toBe(0)
    expect(result.stdout).toContain("USAGE")
    expect(result.stdout).toContain(`inventory ${path.join(" ")}`.trim())
    for (const flag of flags[path.join(" ")] ?? []) expect(result.stdout).toContain(flag)
    expect(result.stderr).toBe("")
  })

  it("lists every command group at the root", async () => {
    const result = await cli("--help")
    for (const group of ["migrate", "warehouse", "stock", "reservations", "dlq", "check"]) expect(result.stdout).toContain(group)
  })
})

describe("commands on PostgreSQL", () => {
  beforeAll(async () => {
    const first = await cli("migrate")
    expect(first.code, first.stderr).toBe(0)
    expect(first.stdout).toContain(`Applied to schema ${schema}`)
  })

  it("migrate is idempotent", async () => {
    const again = await cli("migrate")
    expect(again.code).toBe(0)
    expect(again.stdout).toContain("nothing to apply")
  })

  it("warehouse add, list (table and JSON), deactivate", async () => {
    expect((await cli("warehouse", "add", "--org", org, "--id", "wh-1", "--name", "Main warehouse")).code).toBe(0)
    expect((await cli("warehouse", "add", "--org", org, "--id", "wh-2", "--name", "Overflow")).code).toBe(0)
    expect((await cli("warehouse", "add", "--org", "other-org", "--id", "wh-9", "--name", "Elsewhere")).code).toBe(0)

    const table = await cli("warehouse", "list", "--org", org)
    expect(table.code).toBe(0)
    expect(table.stdout.split("\n")[0]).toMatch(/^WAREHOUSE\s+NAME\s+ACTIVE$/)
    expect(table.stdout).toMatch(/^wh-1\s+Main warehouse\s+yes$/m)
    expect(table.stdout).not.toContain("wh-9")

    const deactivated = await cli("warehouse", "deactivate", "--org", org, "--id", "wh-2")
    expect(deactivated.code, deactivated.stderr).toBe(0)
    expect(json(await cli("warehouse", "list", "--org", org, "--json"))).toEqual([
      { organization_id: org, warehouse_id: "wh-1", name: "Main warehouse", active: true },
      { organization_id: org, warehouse_id: "wh-2", name: "Overflow", active: false }
    ])

    expectCleanFailure(await cli("warehouse", "deactivate", "--org", org, "--id", "wh-404"), 1, "No warehouse wh-404 in organization acme")
    expect(json(await cli("warehouse", "list", "--org", "nobody", "--json"))).toEqual([])
  })

  it("stock adjust writes a movement and an outbound event; stock show filters (table and JSON)", async () => {
    const added = await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "10", "--reason", "initial count", "--reference", "count-2026-01")
    expect(added.code, added.stderr).toBe(0)
    expect(added.stdout).toContain("reference count-2026-01")
    const damaged = json<{ movement_type: string; quantity_before: number; quantity_after: number; category: string; stock: StockJson }>(
      await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "2", "--reason", "dented in transit", "--category", "damaged", "--json")
    )
    expect(damaged).toMatchObject({ movement_type: "in", quantity_before: 10, quantity_after: 12, category: "damaged" })
    expect(damaged.stock).toMatchObject({ total: 12, available: 10, damaged: 2 })
    const out = await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "-3", "--reason", "breakage")
    expect(out.code, out.stderr).toBe(0)
    await cli("stock", "adjust", "--org", org, "--variant", "v-2", "--warehouse", "wh-2", "--delta", "4", "--reason", "count")

    const { movements, outbox } = await ledger("v-1")
    expect(movements).toEqual([
      expect.objectContaining({ movement_type: "in", quantity_change: "10", quantity_before: "0", quantity_after: "10", category: "available", reason: "initial count", reference_id: "count-2026-01" }),
      expect.objectContaining({ movement_type: "in", quantity_change: "2", quantity_before: "10", quantity_after: "12", category: "damaged", reason: "dented in transit" }),
      expect.objectContaining({ movement_type: "out", quantity_change: "-3", quantity_before: "12", quantity_after: "9", category: "available", reason: "breakage" })
    ])
    expect(outbox.map((m) => m.event_type)).toEqual(["inventory.movement.in", "inventory.movement.in", "inventory.movement.out", "inventory.movement.in"])

    const all = json<Array<StockJson>>(await cli("stock", "show", "--org", org, "--json"))
    expect(all).toEqual([
      { organization_id: org, variant_id: "v-1", warehouse_id: "wh-1", total: 9, available: 7, reserved: 0, damaged: 2, in_transit: 0, min_stock: 0, max_stock: 999999, archived: false },
      { organization_id: org, variant_id: "v-2", warehouse_id: "wh-2", total: 4, available: 4, reserved: 0, damaged: 0, in_transit: 0, min_stock: 0, max_stock: 999999, archived: false }
    ])
    expect(json<Array<StockJson>>(await cli("stock", "show", "--org", org, "--variant", "v-2", "--json")).map((r) => r.warehouse_id)).toEqual(["wh-2"])
    expect(json<Array<StockJson>>(await cli("stock", "show", "--org", org, "--warehouse", "wh-1", "--json")).map((r) => r.variant_id)).toEqual(["v-1"])
    expect(json(await cli("stock", "show", "--org", "other-org", "--json"))).toEqual([])

    const table = await cli("stock", "show", "--org", org, "--variant", "v-1")
    expect(table.code).toBe(0)
    const [header, row] = table.stdout.trim().split("\n")
    expect(header).toMatch(/^VARIANT\s+WAREHOUSE\s+TOTAL\s+AVAILABLE\s+RESERVED\s+DAMAGED\s+IN_TRANSIT\s+MIN\s+MAX\s+ARCHIVED$/)
    expect(row!.split(/\s+/)).toEqual(["v-1", "wh-1", "9", "7", "0", "2", "0", "0", "999999", "no"])
    expect((await cli("stock", "show", "--org", "nobody")).stdout).toContain("No stock rows")
  })

  it("an adjustment that would make stock negative is refused and changes nothing", async () => {
    const before = json(await cli("stock", "show", "--org", org, "--json"))
    const ledgerBefore = await ledger("v-1")

    expectCleanFailure(
      await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "-8", "--reason", "too many"),
      1,
      "inventory: Adjustment refused: -8 available on v-1@wh-1 would make stock negative"
    )
    expectCleanFailure(
      await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "-3", "--reason", "x", "--category", "damaged"),
      1,
      "would make stock negative"
    )
    // A row that does not exist yet cannot go below zero either, and is not created.
    expectCleanFailure(
      await cli("stock", "adjust", "--org", org, "--variant", "v-new", "--warehouse", "wh-1", "--delta", "-1", "--reason", "x"),
      1,
      "would make stock negative"
    )

    expect(json(await cli("stock", "show", "--org", org, "--json"))).toEqual(before)
    expect(await ledger("v-1")).toEqual(ledgerBefore)
    expect((await ledger("v-new")).movements).toEqual([])
  })

  it("stock adjust refuses an unknown warehouse and a zero delta", async () => {
    expectCleanFailure(
      await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-typo", "--delta", "5", "--reason", "x"),
      1,
      "No warehouse wh-typo in organization acme"
    )
    expectCleanFailure(await cli("stock", "adjust", "--org", org, "--variant", "v-1", "--warehouse", "wh-1", "--delta", "0", "--reason", "x"), 2, "--delta must be a non-zero whole number")
    expect((await ledger("v-1")).movements).toHaveLength(3)
  })

  it("reservations list answers (empty here; filled by the consumer in replay.test.ts)", async () => {
    expect(json(await cli("reservations", "list", "--org", org, "--json"))).toEqual([])
    const table = await cli("reservations", "list", "--org", org, "--status", "active")
    expect(table.code).toBe(0)
    expect(table.stdout).toContain("No reservations in acme")
  })

  it("dlq list and show on an empty dead-letter store", async () => {
    expect(json(await cli("dlq", "list", "--json"))).toEqual([])
    expect((await cli("dlq", "list", "--error-type", "InsufficientStock")).stdout).toContain("No dead-lettered events")
    expectCleanFailure(await cli("dlq", "show", "no-such-id"), 1, "No dead-lettered event with id no-such-id")
    // Nothing to replay needs no broker at all.
    const nothing = await cli("dlq", "replay", "--all")
    expect(nothing.code, nothing.stderr).toBe(0)
    expect(nothing.stdout).toContain("Nothing to replay")
    expect(json(await cli("dlq", "replay", "--all", "--dry-run", "--json"))).toEqual([])
  })

  it("check exits 0 on a clean database and 1, naming the row, on a row corrupted by hand", async () => {
    const clean = await cli("check")
    expect(clean.code, clean.stdout + clean.stderr).toBe(0)
    expect(clean.stdout).toContain("No violations")
    expect(json(await cli("check", "--org", org, "--json"))).toEqual([])

    // Stock appears without a movement: I1 and I2 still hold (the database enforces them), I8 breaks.
    await withDatabase((c) =>
      c.query(`UPDATE ${schema}.stock SET available = available + 5, total = total + 5 WHERE organization_id = $1 AND variant_id = 'v-2'`, [org]))
    const broken = await cli("check")
    expect(broken.code).toBe(1)
    expect(broken.stdout).toMatch(/^I8\s+acme\s+v-2\s+wh-2\s/m)
    expect(broken.stderr).toContain("1 invariant violation found")
    expect(broken.stderr).not.toMatch(/^\s+at /m)
    const report = await cli("check", "--org", org, "--json")
    expect(report.code).toBe(1)
    expect(JSON.parse(report.stdout)).toEqual([
      expect.objectContaining({ invariant: "I8", organization_id: org, variant_id: "v-2", warehouse_id: "wh-2" })
    ])
    // Scoped: another organization's books still balance.
    expect((await cli("check", "--org", "other-org")).code).toBe(0)

    await withDatabase((c) =>
      c.query(`UPDATE ${schema}.stock SET available = available - 5, total = total - 5 WHERE organization_id = $1 AND variant_id = 'v-2'`, [org]))
    expect((await cli("check")).code).toBe(0)
  })
})

/** The error first, then one line of hint naming the help to read; no help text, nothing on stdout. */
const expectUsageError = (result: { readonly stdout: string; readonly stderr: string }, message: string) => {
  expect(result.stdout).toBe("")
  const lines = result.stderr.trimEnd().split("\n")
  expect(lines[0]).toMatch(/^inventory: /)
  expect(lines[0]).toContain(message)
  expect(lines.at(-1)).toMatch(/^run `inventory( [a-z]+)* --help` for usage$/)
  // One line per error, and the hint: never the help's USAGE/FLAGS sections.
  expect(lines.length).toBeLessThanOrEqual(3)
  expect(result.stderr).not.toContain("USAGE")
}

describe.concurrent("bad arguments: a clear message and a non-zero exit, never a stack trace", () => {
  it.each([
    [["warehouse", "add", "--org", org, "--id", "wh-1"], "Missing required flag: --name"],
    [["warehouse", "add", "--org", "bad org", "--id", "wh-1", "--name", "x"], "Invalid value for flag --org"],
    [["warehouse", "list"], "Missing required flag: --org"],
    [["stock", "adjust", "--org", org, "--variant", "v", "--warehouse", "w", "--delta", "many", "--reason", "x"], "Invalid value for flag --delta"],
    [["stock", "adjust", "--org", org, "--variant", "v", "--warehouse", "w", "--delta", "1.5", "--reason", "x"], "Invalid value for flag --delta"],
    [["stock", "adjust", "--org", org, "--variant", "v", "--warehouse", "w", "--delta", "1", "--reason", "x", "--category", "lost"], "Invalid value for flag --category"],
    [["stock", "show", "--org", org, "--variant", "v'; drop table stock; --"], "Invalid value for flag --variant"],
    [["reservations", "list", "--org", org, "--status", "pending"], "Invalid value for flag --status"],
    [["dlq", "replay", "--all", "--rate", "0"], "Invalid value for flag --rate"],
    [["dlq", "show"], "Missing required argument: id"],
    [["stock", "explode"], "Unknown subcommand"],
    [["stock", "show", "--org", org, "--frobnicate"], "Unrecognized flag: --frobnicate"]
  ])("%j", async (args, message) => {
    const result = await cli(...args)
    expectCleanFailure(result, 2, message)
    expectUsageError(result, message)
  })

  it("dlq replay needs exactly one of --id and --all; filters go with --all", async () => {
    const result = await cli("dlq", "replay")
    expectCleanFailure(result, 2, "inventory: give exactly one of --id ID or --all")
    expectUsageError(result, "give exactly one of --id ID or --all")
    expect(result.stderr).toContain("run `inventory dlq replay --help` for usage")
    expectCleanFailure(await cli("dlq", "replay", "--id", "x", "--all"), 2, "give exactly one of --id ID or --all")
    expectCleanFailure(await cli("dlq", "replay", "--id", "x", "--error-type", "InsufficientStock"), 2, "go with --all")
  })

  it("an unreachable database is one line, without the password", async () => {
    const result = await cliWith({ DATABASE_URL: "postgres://postgres:s3cret-pw@127.0.0.1:1/postgres", DATABASE_SCHEMA: schema })("stock", "show", "--org", org)
    expectCleanFailure(result, 1, /^inventory: database postgres:\/\/postgres:\*\*\*@127\.0\.0\.1:1\/postgres: .+\n$/)
    expect(result.stderr).not.toContain("s3cret-pw")
    expect(result.stderr.trim().split("\n")).toHaveLength(1)
  })

  it("a bad setting names the variable", async () => {
    expectCleanFailure(await cliWith({ ...env, DATABASE_SCHEMA: "Not-An-Identifier" })("check"), 1, "DATABASE_SCHEMA must be a lower-case identifier")
    expectCleanFailure(await cliWith({ ...env, DATABASE_POOL_SIZE: "lots" })("check"), 1, "DATABASE_POOL_SIZE")
  })
})
