import { execFile, spawn } from "node:child_process"
import { promisify } from "node:util"
import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { describe, expect, it } from "vitest"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Movements } from "../../src/stores/services.ts"
import { addWarehouse, freshOrg } from "../support/events.ts"
import { connectionCount, createVhost, freePort, publishReturns, TestClient, deleteVhost, eventually, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"

/**
 * `npm start` outside the image (issue 19): npm forwards SIGTERM and SIGINT to its script's
 * process, and `exec` in the script makes that process node itself rather than a shell that
 * would die and orphan node. A signal to the npm process alone (what a supervisor running
 * `npm start` sends) drains the consumer, node exits 0, and npm exits 0 with it.
 */

const run = promisify(execFile)
const total = 200

/** The pids whose parent is `pid` (procps `ps`). */
const childrenOf = async (pid: number): Promise<ReadonlyArray<number>> => {
  const { stdout } = await run("ps", ["-o", "pid=", "--ppid", String(pid)]).catch(() => ({ stdout: "" }))
  return stdout.split("\n").map((s) => Number(s.trim())).filter((n) => n > 0)
}

const alive = (pid: number) => {
  try {
    process.kill(pid, 0)
    return true
  } catch {
    return false
  }
}

describe("npm start and signals", () => {
  for (const signal of ["SIGTERM", "SIGINT"] as const) {
    it(`${signal} to the npm process drains the consumer; node and npm both exit 0`, async () => {
      const vhost = uniqueVhost(`signals_${signal.toLowerCase()}`)
      const schema = uniqueSchema(`signals_${signal.toLowerCase()}`)
      const org = freshOrg()
      const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
      const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
      const applied = () => look(Effect.flatMap(Movements, (m) => m.list({ organization_id: org }))).then((rows) => rows.length)
      await createVhost(vhost)
      await look(addWarehouse(org, "wh_1"))

      const npm = spawn("npm", ["start", "--silent"], {
        env: {
          ...process.env,
          AMQP_URL: vhostUrl(vhost),
          DATABASE_URL: testDatabaseUrl,
          DATABASE_SCHEMA: schema,
          HTTP_PORT: String(await freePort()),
          HTTP_HOST: "127.0.0.1",
          SHUTDOWN_TIMEOUT_MS: "10000",
          ORDER_PREFETCH: "20"
        },
        stdio: ["ignore", "pipe", "pipe"]
      })
      let output = ""
      npm.stdout.on("data", (d) => (output += d))
      npm.stderr.on("data", (d) => (output += d))
      const exited = new Promise<{ code: number | null; signal: string | null }>((done) => npm.on("exit", (code, sig) => done({ code, signal: sig })))
      let node: number | undefined
      const descendants: Array<number> = []
      try {
        await eventually("consumer started", () => output.includes("consumer started"), 45_000)
        // Every process under npm, to clean up whatever the signal leaves behind.
        const children = await childrenOf(npm.pid!)
        for (const pid of children) descendants.push(pid, ...(await childrenOf(pid)))
        for (const pid of descendants) {
          if (/^\S*node .*src\/main\.ts/.test((await run("ps", ["-o", "args=", "-p", String(pid)])).stdout.trim())) node = pid
        }
        expect(node, `node among ${descendants.join(", ")} under npm ${npm.pid}`).toBeDefined()

        await publishReturns(vhost, org, total)
        await eventually("work under way", async () => (await applied()) > 0)

        process.kill(npm.pid!, signal)
        const { code, signal: killedBy } = await Promise.race([
          exited,
          new Promise<never>((_, fail) => setTimeout(() => fail(new Error(`npm did not exit within 40 s\n${output.slice(-3000)}`)), 40_000))
        ])
        // npm exits with its script's status: 0 here means node's exit code was 0 too; a
        // non-zero status or a signal would print an "npm error" line.
        expect({ code, killedBy }).toEqual({ code: 0, killedBy: null })
        expect(output).not.toMatch(/npm error|Lifecycle script/)
        // node is gone with npm (not orphaned), and nothing of the vhost is still connected.
        await eventually("node gone", () => !alive(node!), 10_000)
        await eventually("no connection left", async () => (await connectionCount(vhost)) === 0, 15_000, 500)

        // Drained: what was not applied went back to the queue; nothing lost.
        const done = await applied()
        const probe = await TestClient.connect(vhost)
        const left = await probe.depth("inventory_order_consumer")
        await probe.close()
        expect(done + left).toBeGreaterThanOrEqual(total)
      } finally {
        if (npm.exitCode === null && npm.signalCode === null) npm.kill("SIGKILL")
        for (const pid of descendants) if (alive(pid)) process.kill(pid, "SIGKILL")
        await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
        await inspect.dispose()
        await deleteVhost(vhost)
      }
    }, 120_000)
  }
})
