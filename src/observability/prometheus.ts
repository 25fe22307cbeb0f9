import { Effect, Metric } from "effect"
import { PrometheusMetrics } from "effect/observability"

/**
 * Every registered metric in the Prometheus text exposition format (version 0.0.4), written by
 * effect's `PrometheusMetrics`. That formatter keeps labels in the order the attributes were
 * given and series in registration order; it reads a sorted copy of the registry so labels stay
 * alphabetical (`{error_type=…,queue=…}`, what dashboards and the tests match) and scrapes stable.
 */
export const renderPrometheus: Effect.Effect<string> = Effect.gen(function*() {
  const registry = yield* Metric.MetricRegistry
  const series = [...registry.values()].map((metric) => ({ metric, labels: sortedLabels(metric.attributes) }))
  series.sort((a, b) => compare(a.metric.id, b.metric.id) || compare(JSON.stringify(a.labels), JSON.stringify(b.labels)))
  const sorted: Metric.MetricRegistry = new Map(
    series.map(({ metric, labels }, i) => [String(i), { ...metric, attributes: Object.fromEntries(labels) }])
  )
  return yield* PrometheusMetrics.format().pipe(Effect.provideService(Metric.MetricRegistry, sorted))
})

const compare = (a: string, b: string) => (a < b ? -1 : a > b ? 1 : 0)

const sortedLabels = (attributes: Metric.Metric.AttributeSet | undefined) =>
  Object.entries(attributes ?? {}).sort(([a], [b]) => compare(a, b))
