import { createServer, type IncomingMessage, type Server, type ServerResponse } from "node:http"
import type { AddressInfo } from "node:net"
import { ConfigProvider, Effect, Layer, Logger, ManagedRuntime } from "effect"
import { afterAll, beforeAll, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import { Broker } from "../../src/messaging/connection.ts"
import * as DlqMonitor from "../../src/messaging/dlqMonitor.ts"
import { createVhost, deleteVhost, eventually, TestClient, testEnv, uniqueVhost } from "../support/rabbit.ts"

/**
 * The DLQ alert webhook through effect's HttpClient, against the real broker: a 5xx answer and a
 * webhook that never answers (past ALERT_WEBHOOK_TIMEOUT) are each one warning, the monitor keeps
 * checking, and the next alert goes through carrying the client span's traceparent.
 */

const vhost = uniqueVhost("dlq_webhook")
const requests: Array<{ readonly body: Record<string, unknown>; readonly traceparent: string | undefined }> = []
const hung: Array<ServerResponse> = []
const warnings: Array<string> = []
let webhook: Server
let runtime: ManagedRuntime.ManagedRuntime<never, unknown>
let client: TestClient

const answer = (req: IncomingMessage, res: ServerResponse) => {
  let body = ""
  req.on("data", (chunk) => (body += chunk))
  req.on("end", () => {
    const traceparent = req.headers["traceparent"]
    requests.push({ body: JSON.parse(body), traceparent: typeof traceparent === "string" ? traceparent : undefined })
    // First a server error, then no answer at all, then accepted.
    if (requests.length === 1) res.writeHead(503).end()
    else if (requests.length === 2) hung.push(res)
    else res.writeHead(204).end()
  })
}

beforeAll(async () => {
  await createVhost(vhost)
  webhook = await new Promise<Server>((done) => {
    const server = createServer(answer)
    server.listen(0, "127.0.0.1", () => done(server))
  })
  const env = testEnv(vhost, {
    DLQ_CHECK_INTERVAL: "100 millis",
    DLQ_ALERT_THRESHOLD: "1",
    ALERT_WEBHOOK_URL: `http://127.0.0.1:${(webhook.address() as AddressInfo).port}/alert`,
    ALERT_WEBHOOK_TIMEOUT: "300 millis"
  })
  const capture = Logger.layer([Logger.make((options) => {
    if (options.logLevel === "Warn") warnings.push(String(Array.isArray(options.message) ? options.message[0] : options.message))
  })])
  // Broker.layer declares the topology, so the dead-letter queue exists before the first check.
  const layer = DlqMonitor.layer.pipe(
    Layer.provide(Broker.layer),
    Layer.provide(RuntimeConfig.layerFrom(env)),
    Layer.provide(ConfigProvider.layer(ConfigProvider.fromEnv({ env }))),
    Layer.provide(capture)
  )
  runtime = ManagedRuntime.make(layer as Layer.Layer<never, unknown>)
  await runtime.runPromise(Effect.void)
  client = await TestClient.connect(vhost)
  for (let i = 0; i < 2; i++) client.channel.sendToQueue("inventory_failed_events", Buffer.from(`dead ${i}`))
  await client.channel.waitForConfirms()
}, 60_000)

afterAll(async () => {
  for (const res of hung) res.destroy()
  await client?.close()
  await runtime?.dispose()
  webhook?.closeAllConnections()
  webhook?.close()
  await deleteVhost(vhost)
})

it("logs a refused and an unanswered alert, keeps checking, and sends the next one with a traceparent", async () => {
  const delivered = await eventually("an alert accepted after two failed ones", () => requests[2], 30_000)
  expect(delivered.body).toMatchObject({ level: "critical", queue: "inventory_failed_events", depth: 2, threshold: 1 })
  expect(delivered.traceparent).toMatch(/^00-[0-9a-f]{32}-[0-9a-f]{16}-0[01]$/)
  // One warning for the 503 and one for the webhook that never answered.
  expect(warnings.filter((w) => w === "DLQ alert webhook failed").length).toBeGreaterThanOrEqual(2)
})
