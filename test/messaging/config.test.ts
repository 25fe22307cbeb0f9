import { ConfigProvider, Duration, Effect, Exit, Redacted } from "effect"
import { describe, expect, it } from "vitest"
import { databaseSettings, displayUrl, runtimeSettings } from "../../src/config.ts"

const parse = (env: Record<string, string>) => Effect.runSyncExit(runtimeSettings.parse(ConfigProvider.fromEnv({ env })))
const failureText = (env: Record<string, string>) => {
  const exit = parse(env)
  return Exit.isFailure(exit) ? String(exit.cause) : "no failure"
}

describe("runtime configuration", () => {
  it("has the SPEC's defaults", () => {
    const exit = parse({})
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    const c = exit.value
    expect(Redacted.value(c.broker.url)).toBe("amqp://guest:guest@127.0.0.1:5672")
    expect(c.topology.catalog).toMatchObject({ queue: "inventory_catalog_consumer", exchange: "catalog_events", prefetch: 10 })
    expect(c.topology.orders).toMatchObject({ queue: "inventory_order_consumer", exchange: "order_events", prefetch: 500 })
    expect(c.topology).toMatchObject({
      eventsExchange: "inventory_events",
      deadLetterExchange: "inventory_dlq",
      deadLetterQueue: "inventory_failed_events",
      deadLetterTtlMs: 86_400_000,
      deadLetterMaxLength: 10_000,
      deadLetterMaxLengthBytes: 256 * 1024 * 1024,
      deliveryLimit: 20,
      queueType: "quorum"
    })
    expect(c.deadLetter).toEqual({ bodyMaxBytes: 1024 * 1024, attempts: 3 })
    expect(Duration.toMillis(c.processing.retryBaseDelay)).toBe(1000)
    expect(c.processing.maxDeliveries).toBe(5)
    expect(Duration.toMillis(c.reservations.sweepInterval)).toBe(60_000)
    // Not SPEC's: group commit (issues 8 and 18) is on, one group at a time.
    expect(c.batch).toEqual({ maxSize: 256, concurrency: 1 })
  })

  it("runs three transactions at once by default when grouping is off, and takes BATCH_CONCURRENCY as set", () => {
    const settings = (env: Record<string, string>) => {
      const exit = parse(env)
      if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
      return exit.value.batch
    }
    expect(settings({ BATCH_MAX_SIZE: "1" })).toEqual({ maxSize: 1, concurrency: 3 })
    expect(settings({ BATCH_MAX_SIZE: "64", BATCH_CONCURRENCY: "2" })).toEqual({ maxSize: 64, concurrency: 2 })
    expect(settings({ BATCH_MAX_SIZE: "1", BATCH_CONCURRENCY: "1" })).toEqual({ maxSize: 1, concurrency: 1 })
    expect(failureText({ BATCH_CONCURRENCY: "0" })).toContain("BATCH_CONCURRENCY must be a whole number >= 1")
  })

  it("keeps the broker's delivery limit above MAX_DELIVERIES whatever is set", () => {
    const exit = parse({ MAX_DELIVERIES: "8", QUEUE_DELIVERY_LIMIT: "4" })
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(exit.value.topology.deliveryLimit).toBe(9)
  })

  it("reads overrides, amqps URLs and durations", () => {
    const exit = parse({
      AMQP_URL: "amqps://user:secret@broker.example:5671/prod",
      QUEUE_TYPE: "classic",
      ORDER_PREFETCH: "50",
      RESERVATION_SWEEP_INTERVAL: "5 minutes",
      SHUTDOWN_TIMEOUT_MS: "1500"
    })
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(Redacted.value(exit.value.broker.url)).toBe("amqps://user:secret@broker.example:5671/prod")
    expect(exit.value.topology.queueType).toBe("classic")
    expect(exit.value.topology.orders.prefetch).toBe(50)
    expect(Duration.toMillis(exit.value.reservations.sweepInterval)).toBe(300_000)
    expect(Duration.toMillis(exit.value.shutdownTimeout)).toBe(1500)
  })

  it("reads a duration as words or as a plain number of milliseconds, and refuses one that is not positive and finite", () => {
    const exit = parse({ OUTBOX_RETENTION: "90000", OUTBOX_PURGE_INTERVAL: "1.5 seconds" })
    if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
    expect(Duration.toMillis(exit.value.relay.retention)).toBe(90_000)
    expect(Duration.toMillis(exit.value.relay.purgeInterval)).toBe(1500)
    for (const refused of ["0", "0 millis", "-5 seconds", "Infinity", "1e3"]) {
      expect(failureText({ OUTBOX_RETENTION: refused })).toContain("OUTBOX_RETENTION")
    }
  })

  // Each read as words or milliseconds; each refused at zero or below, naming its variable.
  for (const [variable, field, fallback, [set, setMillis], what] of [
    ["DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", "idleInTransactionTimeout", 15_000, ["2000", 2000], "idle in a transaction before PostgreSQL ends it"],
    ["DATABASE_RESPONSE_TIMEOUT", "responseTimeout", 10_000, ["30 seconds", 30_000], "waited for the database before a unit of work counts it unreachable"]
  ] as const) {
    it(`reads ${variable}: ${fallback / 1000} s ${what} by default`, () => {
      const database = (env: Record<string, string>) => Effect.runSyncExit(databaseSettings.parse(ConfigProvider.fromEnv({ env })))
      const millis = (env: Record<string, string>) => {
        const exit = database(env)
        if (!Exit.isSuccess(exit)) throw new Error(String(exit.cause))
        return Duration.toMillis(Duration.fromInputUnsafe(exit.value[field]!))
      }
      expect(millis({})).toBe(fallback)
      expect(millis({ [variable]: set })).toBe(setMillis)
      for (const refused of ["0", "-1"]) {
        const exit = database({ [variable]: refused })
        expect(Exit.isFailure(exit) ? String(exit.cause) : "no failure").toContain(variable)
      }
    })
  }

  it("refuses bad values with a message naming the variable, never echoing credentials", () => {
    expect(failureText({ CATALOG_PREFETCH: "ten" })).toContain("CATALOG_PREFETCH")
    expect(failureText({ ORDER_PREFETCH: "0" })).toContain("ORDER_PREFETCH")
    expect(failureText({ QUEUE_TYPE: "stream" })).toContain("QUEUE_TYPE")
    expect(failureText({ RESERVATION_SWEEP_INTERVAL: "soon" })).toContain("RESERVATION_SWEEP_INTERVAL")
    // The schema's ceiling on lines per event cannot be raised by configuration.
    expect(failureText({ MAX_LINES_PER_EVENT: "501" })).toContain("MAX_LINES_PER_EVENT must be a whole number from 1 to 500")
    expect(Exit.isSuccess(parse({ MAX_LINES_PER_EVENT: "50" }))).toBe(true)
    const bad = failureText({ AMQP_URL: "http://user:hunter2@host" })
    expect(bad).toContain("AMQP_URL")
    expect(bad).not.toContain("hunter2")
  })

  it("shows the broker URL with its password masked", () => {
    expect(displayUrl(Redacted.make("amqp://guest:guest@127.0.0.1:5672/v"))).toBe("amqp://guest:***@127.0.0.1:5672/v")
  })
})
