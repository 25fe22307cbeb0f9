import { type ChildProcess, execFile, spawn } from "node:child_process"
import { mkdtemp, readFile, rm, writeFile } from "node:fs/promises"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"
import { promisify } from "node:util"
import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { addWarehouse, freshId, freshOrg, putStock } from "../support/events.ts"
import { createVhost, deleteVhost, eventually, freePort, TestClient, uniqueVhost, vhostUrl } from "../support/rabbit.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import { startConsumer } from "../reservations/support.ts"

/**
 * The operators' side with the real tools of Debian's `prometheus` package: promtool checks the
 * compose Prometheus config and the alert rules and runs their unit tests; then the real
 * `prometheus` binary scrapes a running consumer under a little load, loads the same rules, and
 * every query of the Grafana dashboard is evaluated through its HTTP API and must return data.
 */

const run = promisify(execFile)
const file = (path: string) => resolve(path)
const rulesFile = file("deploy/prometheus/alerts.yml")
const dashboardFile = file("deploy/grafana/dashboards/inventory-consumer.json")

const promtool = (...args: Array<string>) => run("promtool", args, { timeout: 60_000 })

describe("promtool", () => {
  it("accepts the compose Prometheus config, with the rules file it loads", async () => {
    const { stdout } = await promtool("check", "config", file("deploy/prometheus/prometheus.yml"))
    expect(stdout).toMatch(/SUCCESS: 1 rule files found/)
    expect(stdout).toMatch(/is valid prometheus config file syntax/)
    const rules = await promtool("check", "rules", rulesFile)
    expect(rules.stdout).toMatch(/SUCCESS: 7 rules found/)
  })

  it("runs the rules' unit tests, in which every alert both fires and clears", async () => {
    const rules = await readFile(rulesFile, "utf8")
    const tests = await readFile(file("deploy/prometheus/alerts.test.yml"), "utf8")
    const alerts = [...rules.matchAll(/^\s*- alert: (\w+)$/gm)].map((m) => m[1]!)
    expect(alerts).toHaveLength(7)
    for (const alert of alerts) {
      expect(tests, `${alert} is shown quiet`).toContain(`alertname: ${alert}, exp_alerts: [] }`)
      expect(tests, `${alert} is shown firing`).toMatch(new RegExp(`alertname: ${alert}\\n\\s+exp_alerts:\\n\\s+- exp_labels:`))
    }
    // A failing unit test makes promtool exit non-zero, which rejects here.
    const { stdout } = await promtool("test", "rules", file("deploy/prometheus/alerts.test.yml"))
    expect(stdout).toMatch(/SUCCESS/)
  })

  it("compose mounts the dashboards where Grafana's provider reads them", async () => {
    const compose = await readFile(file("docker-compose.yml"), "utf8")
    const provider = await readFile(file("deploy/grafana/provisioning/dashboards/dashboards.yaml"), "utf8")
    const path = /^\s+path: (\S+)$/m.exec(provider)?.[1]
    expect(path).toBeDefined()
    expect(compose).toContain(`- ./deploy/grafana/dashboards:${path}:ro`)
    expect(compose).toContain("- ./otel-collector.yaml:/etc/otelcol/config.yaml:ro")
    expect(compose).toContain("- ./deploy/prometheus:/etc/prometheus:ro")
  })

  it("the dashboard names only the provisioned data sources: Prometheus for panels, Tempo for trace links", async () => {
    const sources = await readFile(file("deploy/grafana/provisioning/datasources/datasources.yaml"), "utf8")
    const uids = [...sources.matchAll(/^\s+uid: (\S+)$/gm)].map((m) => m[1]!)
    const text = await readFile(dashboardFile, "utf8")
    const used = new Set([...text.matchAll(/"uid": "([^"]+)"/g)].map((m) => m[1]!).filter((uid) => uid !== "inventory-consumer"))
    expect([...used].sort()).toEqual(["prometheus"])
    expect(uids).toEqual(expect.arrayContaining(["prometheus", "tempo"]))
    // The links open Tempo in Explore; the datasource uid sits in their URL-encoded pane state.
    const links = [...text.matchAll(/"url": "([^"]+)"/g)].map((m) => decodeURIComponent(m[1]!))
    expect(links.length).toBeGreaterThanOrEqual(4)
    for (const link of links) expect(link).toContain(`"datasource":{"type":"tempo","uid":"tempo"}`)
  })
})

interface Target {
  readonly panel: string
  readonly expr: string
  readonly legendFormat: string
}

/** Every query of the dashboard, with Grafana's interval variables as Grafana would fill them for this scrape rate. */
const dashboardTargets = async (): Promise<ReadonlyArray<Target>> => {
  const dashboard = JSON.parse(await readFile(dashboardFile, "utf8")) as {
    readonly panels: ReadonlyArray<{ readonly title: string; readonly targets: ReadonlyArray<{ readonly expr: string; readonly legendFormat: string }> }>
  }
  return dashboard.panels.flatMap((panel) =>
    panel.targets.map((t) => ({
      panel: panel.title,
      expr: t.expr.replaceAll("$__rate_interval", "30s").replaceAll("$__range", "10m"),
      legendFormat: t.legendFormat
    }))
  )
}

describe("the dashboard on a real Prometheus scraping the consumer", () => {
  const vhost = uniqueVhost("deploy_prom")
  const schema = uniqueSchema("deploy_prom")
  const org = freshOrg()
  const inspect = ManagedRuntime.make(SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 2 }) as Layer.Layer<any, unknown>)
  const look = <A, E>(effect: Effect.Effect<A, E, any>) => inspect.runPromise(effect)
  let dir = ""
  let prometheus: ChildProcess | undefined
  let prometheusLog = ""
  let consumer: ReturnType<typeof startConsumer> | undefined

  beforeAll(async () => {
    await createVhost(vhost)
    await look(addWarehouse(org, "wh"))
    await look(putStock(org, "v1", "wh", 100))
    dir = await mkdtemp(join(tmpdir(), "deploy-prom-"))
  })

  afterAll(async () => {
    consumer?.kill()
    if (prometheus && prometheus.exitCode === null && prometheus.signalCode === null) {
      const gone = new Promise((done) => prometheus!.once("exit", done))
      prometheus.kill("SIGTERM")
      await Promise.race([gone, new Promise((done) => setTimeout(done, 10_000))])
      if (prometheus.exitCode === null && prometheus.signalCode === null) prometheus.kill("SIGKILL")
    }
    if (dir) await rm(dir, { recursive: true, force: true })
    await look(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
    await inspect.dispose()
    await deleteVhost(vhost)
  })

  it("every panel's query returns data, with the labels its legend names; the alert rules load and evaluate", async () => {
    const httpPort = await freePort()
    consumer = startConsumer({
      AMQP_URL: vhostUrl(vhost),
      DATABASE_URL: testDatabaseUrl,
      DATABASE_SCHEMA: schema,
      DATABASE_POOL_SIZE: "4",
      HTTP_PORT: String(httpPort),
      HTTP_HOST: "127.0.0.1",
      DLQ_CHECK_INTERVAL: "1 second",
      RETRY_BASE_DELAY_MS: "10",
      SHUTDOWN_TIMEOUT_MS: "10000"
    })
    await eventually("consumer started", () => consumer!.output().includes("consumer started"), 30_000)

    // The compose config's rules, a scrape of this consumer every second, its own storage and port.
    const promPort = await freePort()
    await writeFile(
      join(dir, "prometheus.yml"),
      [
        "global:",
        "  scrape_interval: 1s",
        "  evaluation_interval: 1s",
        "rule_files:",
        `  - ${JSON.stringify(rulesFile)}`,
        "scrape_configs:",
        "  - job_name: inventory-event-consumer",
        "    static_configs:",
        `      - targets: ["127.0.0.1:${httpPort}"]`,
        ""
      ].join("\n")
    )
    prometheus = spawn("prometheus", [
      `--config.file=${join(dir, "prometheus.yml")}`,
      `--storage.tsdb.path=${join(dir, "data")}`,
      `--web.listen-address=127.0.0.1:${promPort}`
    ], { stdio: ["ignore", "pipe", "pipe"] })
    prometheus.stdout!.on("data", (d) => (prometheusLog += d))
    prometheus.stderr!.on("data", (d) => (prometheusLog += d))
    const api = async (path: string) => {
      const response = await fetch(`http://127.0.0.1:${promPort}/api/v1/${path}`, { signal: AbortSignal.timeout(5_000) })
      return (await response.json()) as { status: string; data: any; error?: string }
    }
    await eventually("prometheus ready", async () => (await fetch(`http://127.0.0.1:${promPort}/-/ready`)).ok, 30_000, 250)
      .catch((error) => {
        throw new Error(`${error}\n${prometheusLog.slice(-2000)}`)
      })

    // A little load: catalog and order events, reservations that lapse in about a second, and
    // a message that cannot be decoded (an error, a dead letter, a DLQ of one).
    const client = await TestClient.connect(vhost)
    try {
      await client.publish("catalog_events", "catalog.variant.created", {
        event: "catalog.variant.created",
        version: "1.0",
        timestamp: new Date().toISOString(),
        organization_id: org,
        event_id: freshId("evt"),
        data: { variant_id: "v1", product_id: "p1", sku: "SKU-1", track_inventory: true, default_min_stock: 1, default_max_stock: 10 }
      })
      for (let k = 0; k < 3; k++) {
        await client.publish("order_events", "order.placed", {
          event: "order.placed",
          version: "1.0",
          timestamp: new Date().toISOString(),
          organization_id: org,
          event_id: freshId("evt"),
          data: { order_id: `order-${k}`, customer_id: "c1", items: [{ variant_id: "v1", quantity: 1 }], reservation_ttl_minutes: 0.02 }
        })
      }
      for (let k = 0; k < 20; k++) {
        await client.publish("order_events", "return.received", {
          event: "return.received",
          version: "1.0",
          timestamp: new Date().toISOString(),
          organization_id: org,
          event_id: freshId("evt"),
          data: { order_id: "order-0", return_id: `ret-${k}`, warehouse_id: "wh", returned_items: [{ variant_id: "v1", quantity: 1, condition: "good" }] }
        })
      }
      await client.publish("order_events", "order.placed", "{ this is not json")
    } finally {
      await client.close()
    }

    const targets = await dashboardTargets()
    expect(targets.length).toBeGreaterThanOrEqual(13)
    // Each query, evaluated now: what is missing (no series, or a legend label the series lack).
    const missing = async () => {
      const out: Array<string> = []
      for (const target of targets) {
        const answer = await api(`query?query=${encodeURIComponent(target.expr)}`)
        if (answer.status !== "success") {
          out.push(`${target.panel}: ${target.expr}: ${answer.error}`)
          continue
        }
        const series = answer.data.result as ReadonlyArray<{ readonly metric: Record<string, string> }>
        if (series.length === 0) {
          out.push(`${target.panel}: ${target.expr}: no data`)
          continue
        }
        for (const [, label] of target.legendFormat.matchAll(/\{\{(\w+)\}\}/g)) {
          if (!series.every((s) => s.metric[label!] !== undefined)) out.push(`${target.panel}: ${target.expr}: no label ${label}`)
        }
      }
      return out
    }
    let last: ReadonlyArray<string> = []
    await eventually("every dashboard query answered", async () => {
      last = await missing()
      return last.length === 0
    }, 60_000, 1_000).catch((error) => {
      throw new Error(`${error}\n${last.join("\n")}\n--- consumer\n${consumer!.output().slice(-3000)}`)
    })
    expect(await missing()).toEqual([])

    // The rules the compose Prometheus loads: all seven evaluated on live data without error.
    const rules = await eventually("rules evaluated", async () => {
      const answer = await api("rules")
      const all = (answer.data.groups as ReadonlyArray<{ rules: ReadonlyArray<{ name: string; health: string; lastError?: string }> }>)
        .flatMap((g) => g.rules)
      return all.length === 7 && all.every((r) => r.health === "ok") ? all : undefined
    }, 30_000, 500)
    expect(rules.map((r) => r.name).sort()).toEqual([
      "InventoryConsumerDown",
      "InventoryConsumerPaused",
      "InventoryDLQDepthHigh",
      "InventoryEventErrorRate",
      "InventoryNoOutboxRelay",
      "InventoryOutboxNotDraining",
      "InventoryQueueStalled"
    ])

    expect(await consumer.stop()).toBe(0)
  }, 150_000)
})
