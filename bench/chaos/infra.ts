/**
 * What the chaos harness does to the world: its own RabbitMQ vhost, PostgreSQL stopped and
 * started, consumer processes started and signalled, a publisher that survives its connection
 * being killed. Plain async TypeScript on amqplib, pg and child_process.
 */
import amqp from "amqplib"
import { type ChildProcess, execFile, spawn } from "node:child_process"
import { createWriteStream, readdirSync, type WriteStream } from "node:fs"
import { createServer } from "node:net"
import { join } from "node:path"
import { promisify } from "node:util"
import pg from "pg"
import type { Planned } from "./workload.ts"

const run = promisify(execFile)
export const sleep = (ms: number) => new Promise((r) => setTimeout(r, ms))

export const rabbitmqctl = async (...args: ReadonlyArray<string>): Promise<string> =>
  (await run("rabbitmqctl", ["-q", ...args], { timeout: 60_000 })).stdout

export const createVhost = async (vhost: string) => {
  await rabbitmqctl("add_vhost", vhost)
  await rabbitmqctl("set_permissions", "-p", vhost, "guest", ".*", ".*", ".*")
}

export const deleteVhost = (vhost: string) => rabbitmqctl("delete_vhost", vhost).then(() => undefined, () => undefined)

/** Kills every client connection of this vhost only (consumers and the harness's own). */
export const killConnections = (vhost: string) => rabbitmqctl("close_all_connections", "-p", vhost, "chaos harness")

/** The broker's own cap on one message, in bytes. */
export const brokerMaxMessageSize = async (): Promise<number> => {
  const out = await rabbitmqctl("eval", "application:get_env(rabbit, max_message_size).")
  const match = /\{ok,(\d+)\}/.exec(out)
  // RabbitMQ 3.8+ defaults to 128 MiB when it is not set explicitly.
  return match ? Number(match[1]) : 134_217_728
}

export const vhostUrl = (vhost: string) => `amqp://guest:guest@127.0.0.1:5672/${encodeURIComponent(vhost)}`

// ---------------------------------------------------------------- PostgreSQL

const cluster = () => readdirSync("/etc/postgresql")[0]!
const pgctl = async (action: "start" | "stop") => {
  await run("pg_ctlcluster", ["--skip-systemctl-redirect", cluster(), "main", action], { timeout: 120_000 })
}

export const stopPostgres = () => pgctl("stop")

/** Starts PostgreSQL if it is down and waits until it answers; safe to call at any time. */
export const ensurePostgres = async (databaseUrl: string, timeoutMs = 60_000) => {
  const answers = async () => {
    const client = new pg.Client({ connectionString: databaseUrl, connectionTimeoutMillis: 2_000 })
    client.on("error", () => undefined)
    try {
      await client.connect()
      await client.query("SELECT 1")
      return true
    } catch {
      return false
    } finally {
      await client.end().catch(() => undefined)
    }
  }
  if (await answers()) return
  await pgctl("start").catch(() => undefined)
  const deadline = Date.now() + timeoutMs
  while (!(await answers())) {
    if (Date.now() > deadline) throw new Error("PostgreSQL did not answer after start")
    await sleep(250)
  }
}

// ---------------------------------------------------------------- consumers

/** A local TCP port nothing listens on right now (the tests take theirs from here too). */
export const freePort = () =>
  new Promise<number>((resolve, reject) => {
    const server = createServer()
    server.once("error", reject)
    server.listen(0, "127.0.0.1", () => {
      const address = server.address()
      server.close(() => (typeof address === "object" && address !== null ? resolve(address.port) : reject(new Error("no port"))))
    })
  })

export interface ConsumerProcess {
  readonly name: string
  readonly child: ChildProcess
  readonly logFile: string
  /** Resolves with the exit code (or signal name) once the process ended. */
  readonly exited: Promise<number | string>
  /** Whether the harness sent it SIGTERM (an exit without one is a crash). */
  signalled: boolean
}

export const startConsumer = async (name: string, cwd: string, logDir: string, env: Record<string, string>): Promise<ConsumerProcess> => {
  const logFile = join(logDir, `${name}.log`)
  const log: WriteStream = createWriteStream(logFile)
  const child = spawn(process.execPath, ["src/main.ts"], {
    cwd,
    env: { ...process.env, ...env, HTTP_PORT: String(await freePort()), HTTP_HOST: "127.0.0.1" },
    stdio: ["ignore", "pipe", "pipe"]
  })
  child.stdout!.pipe(log, { end: false })
  child.stderr!.pipe(log, { end: false })
  const exited = new Promise<number | string>((resolve) => {
    child.once("exit", (code, signal) => {
      setTimeout(() => log.end(), 100)
      resolve(code ?? signal ?? "unknown")
    })
  })
  return { name, child, logFile, exited, signalled: false }
}

export const stopConsumer = async (consumer: ConsumerProcess) => {
  consumer.signalled = true
  if (consumer.child.exitCode === null && consumer.child.signalCode === null) consumer.child.kill("SIGTERM")
  return await consumer.exited
}

/** Consumers subscribed in the vhost, as the broker lists them. */
export const consumerCount = async (vhost: string) => {
  try {
    return (await rabbitmqctl("list_consumers", "-p", vhost, "--no-table-headers", "queue_name")).split("\n").filter((l) => l.trim()).length
  } catch {
    return 0
  }
}

export const waitUntil = async (what: string, check: () => Promise<boolean>, timeoutMs: number, intervalMs = 250) => {
  const deadline = Date.now() + timeoutMs
  for (;;) {
    if (await check().catch(() => false)) return
    if (Date.now() > deadline) throw new Error(`timed out after ${timeoutMs} ms waiting for ${what}`)
    await sleep(intervalMs)
  }
}

// ---------------------------------------------------------------- publishing

/**
 * Publishes the planned stream with publisher confirms at a held rate. When its connection is
 * killed (the harness kills every connection of the vhost) it reconnects and publishes again
 * every message of the batch that was not confirmed: a message may reach the broker twice,
 * never zero times. `attempts` counts the copies sent per key, the upper bound the audit uses.
 */
export class Publisher {
  readonly attempts = new Map<string, number>()
  /** When the publisher lost its connection (the harness kills it with the consumers'). */
  readonly reconnects: Array<string> = []
  private connection: amqp.ChannelModel | undefined
  private channel: amqp.ConfirmChannel | undefined
  private readonly url: string

  constructor(url: string) {
    this.url = url
  }

  private async open(): Promise<amqp.ConfirmChannel> {
    if (this.channel) return this.channel
    for (let attempt = 0; ; attempt++) {
      try {
        const connection = await amqp.connect(this.url)
        connection.on("error", () => undefined)
        const channel = await connection.createConfirmChannel()
        channel.on("error", () => undefined)
        const drop = () => {
          if (this.connection === connection) {
            this.reconnects.push(new Date().toISOString())
            this.connection = undefined
            this.channel = undefined
          }
        }
        connection.on("close", drop)
        channel.on("close", drop)
        this.connection = connection
        this.channel = channel
        return channel
      } catch (error) {
        if (attempt > 100) throw error
        await sleep(100)
      }
    }
  }

  /** Publishes `batch`, each waited for by its own confirm; retries the unconfirmed ones on a new connection. */
  async publishBatch(batch: ReadonlyArray<Planned>) {
    let pending = [...batch]
    while (pending.length > 0) {
      const channel = await this.open()
      const failed: Array<Planned> = []
      const waiting = new Map<Planned, () => void>()
      // A killed connection never confirms: everything still waiting then counts as failed.
      const onClose = () => {
        for (const [m, resolve] of waiting) {
          failed.push(m)
          resolve()
        }
        waiting.clear()
      }
      channel.once("close", onClose)
      await Promise.all(pending.map((m) => {
        this.attempts.set(m.key, (this.attempts.get(m.key) ?? 0) + 1)
        return new Promise<void>((resolve) => {
          waiting.set(m, resolve)
          const settle = (ok: boolean) => {
            if (!waiting.has(m)) return
            waiting.delete(m)
            if (!ok) failed.push(m)
            resolve()
          }
          try {
            channel.publish(m.exchange, m.routingKey, m.body, {
              persistent: true,
              contentType: "application/json",
              messageId: m.messageId
            }, (error: unknown) => settle(!error))
          } catch {
            settle(false)
          }
        })
      }))
      channel.removeListener("close", onClose)
      if (failed.length > 0) {
        this.channel = undefined
        await this.connection?.close().catch(() => undefined)
        this.connection = undefined
      }
      pending = failed
    }
  }

  async close() {
    await this.connection?.close().catch(() => undefined)
  }
}
