import { Effect, Metric, type Scope } from "effect"
import { PrometheusMetrics } from "effect/observability"

/** What brings a registry's figures up to date right before each scrape, by registry. */
const collectors = new WeakMap<Metric.MetricRegistry, Set<Effect.Effect<void>>>()

/**
 * Runs `collect` right before each scrape of the current registry, for as long as the scope
 * lasts (as prom-client's `collect`): figures read from the process (CPU, memory, the event
 * loop's busy time) are then as of the scrape, not of the last periodic sample.
 */
export const collectOnScrape = (collect: Effect.Effect<void>): Effect.Effect<void, never, Scope.Scope> =>
  Effect.flatMap(Metric.MetricRegistry, (registry) =>
    Effect.acquireRelease(
      Effect.sync(() => {
        const set = collectors.get(registry) ?? new Set()
        set.add(collect)
        collectors.set(registry, set)
      }),
      () => Effect.sync(() => collectors.get(registry)?.delete(collect))
    ))

/**
 * Every registered metric in the Prometheus text exposition format (version 0.0.4), written by
 * effect's `PrometheusMetrics` once what was registered with `collectOnScrape` ran. That
 * formatter keeps labels in the order the attributes were given and series in registration
 * order; it reads a sorted copy of the registry so labels stay alphabetical
 * (`{error_type=…,queue=…}`, what dashboards and the tests match) and scrapes stable.
 */
export const renderPrometheus: Effect.Effect<string> = Effect.gen(function*() {
  const registry = yield* Metric.MetricRegistry
  for (const collect of collectors.get(registry) ?? []) yield* collect
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
