import { execFile } from "node:child_process"
import { promisify } from "node:util"
import pg from "pg"
import { afterAll, describe, expect, it } from "vitest"
import { freePort } from "../../bench/chaos/infra.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * Issue 9: credentials come only from the environment and never appear in logs or errors;
 * TLS URLs are honoured. The local PostgreSQL and RabbitMQ speak plaintext only, so what can
 * be proven here is that a URL asking for TLS gets TLS or nothing: `sslmode=require` against a
 * server without TLS fails with a TLS error and never falls back to a plaintext session, and
 * `amqps://` against a plaintext port fails in the TLS handshake. In both, the password stays out
 * of every line the process writes.
 */

const run = promisify(execFile)
const secret = `tls-probe-${Math.random().toString(36).slice(2, 10)}`
const schemas: Array<string> = []

/** Runs a repository entry point with `env`; resolves with its exit code and everything it wrote. */
const node = (script: string, env: Record<string, string>) =>
  run(process.execPath, [script], { env: { ...process.env, ...env }, timeout: 60_000 }).then(
    (r) => ({ code: 0, output: r.stdout + r.stderr }),
    (e: { code?: number; stdout?: string; stderr?: string }) => ({ code: e.code ?? -1, output: `${e.stdout ?? ""}${e.stderr ?? ""}` })
  )

const withPassword = (sslmode: string) => {
  const url = new URL(testDatabaseUrl)
  url.username ||= "postgres"
  url.password = secret
  url.searchParams.set("sslmode", sslmode)
  return url.toString()
}

const schemaExists = async (schema: string) => {
  const client = new pg.Client({ connectionString: testDatabaseUrl })
  await client.connect()
  try {
    return (await client.query(`SELECT 1 FROM information_schema.schemata WHERE schema_name = $1`, [schema])).rows.length === 1
  } finally {
    await client.end()
  }
}

afterAll(async () => {
  const client = new pg.Client({ connectionString: testDatabaseUrl })
  await client.connect()
  for (const schema of schemas) await client.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`)
  await client.end()
})

describe("credentials and TLS", () => {
  it("DATABASE_URL with sslmode=require never connects in plaintext and never prints the password", async () => {
    const schema = uniqueSchema("tls_require")
    schemas.push(schema)
    const { code, output } = await node("src/migrate.ts", { DATABASE_URL: withPassword("require"), DATABASE_SCHEMA: schema })
    expect(code).not.toBe(0)
    expect(output).toMatch(/refused TLS|does not support TLS/)
    expect(output).not.toContain(secret)
    // Nothing was done over plaintext: the schema the migration would create does not exist.
    expect(await schemaExists(schema)).toBe(false)
  })

  it("the same URL with sslmode=disable connects (the TLS request is what made the difference)", async () => {
    const schema = uniqueSchema("tls_disable")
    schemas.push(schema)
    const { code, output } = await node("src/migrate.ts", { DATABASE_URL: withPassword("disable"), DATABASE_SCHEMA: schema })
    expect(code).toBe(0)
    expect(output).not.toContain(secret)
    expect(await schemaExists(schema)).toBe(true)
  })

  it("the consumer refuses sslmode=require against a server without TLS, without printing the password", async () => {
    const { code, output } = await node("src/main.ts", {
      DATABASE_URL: withPassword("require"),
      DATABASE_SCHEMA: uniqueSchema("tls_consumer"),
      HTTP_PORT: String(await freePort()),
      AMQP_CONNECT_ATTEMPTS: "1"
    })
    expect(code).not.toBe(0)
    expect(output).toMatch(/refused TLS|does not support TLS/)
    expect(output).not.toContain(secret)
  })

  it("an amqps:// AMQP_URL speaks TLS (and fails against a plaintext port); logs show it redacted", async () => {
    const schema = uniqueSchema("tls_amqps")
    schemas.push(schema)
    const { code, output } = await node("src/main.ts", {
      AMQP_URL: `amqps://guest:${secret}@127.0.0.1:5672/`,
      AMQP_CONNECT_ATTEMPTS: "1",
      DATABASE_URL: testDatabaseUrl,
      DATABASE_SCHEMA: schema,
      HTTP_PORT: String(await freePort())
    })
    expect(code).not.toBe(0)
    expect(output).toMatch(/SSL routines|wrong version number|TLS/i)
    expect(output).toContain("amqps://guest:***@127.0.0.1:5672/")
    expect(output).not.toContain(secret)
  })
})
