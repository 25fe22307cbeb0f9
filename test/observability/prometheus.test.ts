import { assert, it } from "@effect/vitest"
import { Effect, Metric } from "effect"
import { renderPrometheus } from "../../src/observability/prometheus.ts"

/**
 * `/metrics` is effect's `PrometheusMetrics` reading a sorted copy of the registry. The
 * formatter alone would write labels in the order they were given (`{queue=…,error_type=…}`);
 * this pins the text as scraped: families by name, series by labels, labels alphabetical,
 * values escaped, buckets in `le` order.
 */
it.effect("writes families by name, labels alphabetically and escaped, histogram buckets in order", () =>
  Effect.gen(function*() {
    const deadLettered = Metric.counter("test_dead_lettered_total", { description: "dead letters", incremental: true })
    const seconds = Metric.histogram("test_seconds", { description: "a\\b\nc", boundaries: [0.5, 2] })
    const depth = Metric.gauge("test_depth")
    yield* Metric.update(Metric.withAttributes(deadLettered, { queue: "q\"1\\", error_type: "ValidationError" }), 2)
    yield* Metric.update(Metric.withAttributes(deadLettered, { queue: "a", error_type: "ValidationError" }), 1)
    yield* Metric.update(Metric.withAttributes(seconds, { event_type: "order.placed" }), 1)
    yield* Metric.update(depth, 3)
    assert.strictEqual(
      yield* renderPrometheus,
      [
        "# HELP test_dead_lettered_total dead letters",
        "# TYPE test_dead_lettered_total counter",
        `test_dead_lettered_total{error_type="ValidationError",queue="a"} 1`,
        `test_dead_lettered_total{error_type="ValidationError",queue="q\\"1\\\\"} 2`,
        "# TYPE test_depth gauge",
        "test_depth 3",
        "# HELP test_seconds a\\\\b\\nc",
        "# TYPE test_seconds histogram",
        `test_seconds_bucket{event_type="order.placed",le="0.5"} 0`,
        `test_seconds_bucket{event_type="order.placed",le="2"} 1`,
        `test_seconds_bucket{event_type="order.placed",le="+Inf"} 1`,
        `test_seconds_sum{event_type="order.placed"} 1`,
        `test_seconds_count{event_type="order.placed"} 1`,
        ""
      ].join("\n")
    )
  }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))
