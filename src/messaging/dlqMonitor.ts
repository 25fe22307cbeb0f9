import * as NodeHttpClient from "@effect/platform-node/NodeHttpClient"
import { Cause, DateTime, Effect, Layer, Metric, Option, Redacted, Schedule } from "effect"
import { HttpClient, HttpClientRequest } from "effect/http"
import { RuntimeConfig } from "../config.ts"
import { dlqDepth, queueDepth } from "../observability/metrics.ts"
import { formatTraceparent } from "../observability/spans.ts"
import { Broker } from "./connection.ts"

/**
 * The DLQ monitor (SPEC 5): reads the dead-letter queue's depth every interval into the
 * `inventory_dlq_depth` gauge; above the threshold it logs a critical line and, when a webhook
 * is configured, POSTs one JSON alert per check (bounded by a timeout, never retried in a loop;
 * a failed POST is logged, not fatal).
 */
export const layer = Layer.effectDiscard(Effect.gen(function*() {
  const config = yield* RuntimeConfig
  const settings = config.dlqMonitor
  const queue = config.topology.deadLetterQueue
  const inbound = [config.topology.catalog.queue, config.topology.orders.queue].map((name) => ({
    name,
    depth: Metric.withAttributes(queueDepth, { queue: name })
  }))
  const broker = yield* Broker
  // A 4xx/5xx answer is a failed alert, as a refused connection is.
  const webhook = HttpClient.filterStatusOk(yield* HttpClient.HttpClient)

  const alert = (depth: number) =>
    Effect.gen(function*() {
      const body = {
        level: "critical",
        message: `Inventory DLQ has ${depth} failed events`,
        queue,
        depth,
        threshold: settings.threshold,
        action_required: "Review and reprocess failed events (inventory dlq list / dlq replay)",
        at: DateTime.formatIso(yield* DateTime.now)
      }
      yield* Effect.logError(body.message).pipe(Effect.annotateLogs({ alert: "critical", queue, depth, threshold: settings.threshold }))
      if (Option.isNone(settings.webhook)) return
      const url = Redacted.value(settings.webhook.value)
      // The client's own span records the full URL, and a webhook's path is often its secret
      // (Slack, Teams): our span names the host only, and carries the traceparent itself.
      yield* Effect.gen(function*() {
        const span = yield* Effect.currentSpan
        return yield* HttpClientRequest.post(url).pipe(
          HttpClientRequest.bodyJsonUnsafe(body),
          HttpClientRequest.setHeader("traceparent", formatTraceparent(span)),
          webhook.execute
        )
      }).pipe(
        Effect.withSpan("dlq.alert_webhook POST", { kind: "client", attributes: { "server.address": url.host, "http.request.method": "POST" } }),
        Effect.provideService(HttpClient.TracerDisabledWhen, () => true),
        // Read the (small) answer so the connection goes back to the pool.
        Effect.flatMap((response) => response.text),
        Effect.timeout(settings.webhookTimeout),
        Effect.catch((error) =>
          Effect.logWarning("DLQ alert webhook failed").pipe(Effect.annotateLogs({ reason: error.message, host: url.host })))
      )
    })

  const check = Effect.scoped(Effect.gen(function*() {
    const channel = yield* broker.channel
    const { messageCount } = yield* Effect.tryPromise(() => channel.checkQueue(queue))
    yield* Metric.update(dlqDepth, messageCount)
    if (messageCount > settings.threshold) yield* alert(messageCount)
    // The inbound queues' depth too: with the consumption rate it tells a stalled consumer.
    for (const q of inbound) {
      yield* Metric.update(q.depth, (yield* Effect.tryPromise(() => channel.checkQueue(q.name))).messageCount)
    }
  })).pipe(
    Effect.catchCause((cause) => Effect.logWarning("DLQ depth check failed").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) })))
  )

  yield* check.pipe(Effect.repeat(Schedule.spaced(settings.interval)), Effect.forkScoped)
})).pipe(Layer.provide(NodeHttpClient.layerUndici))
