import { assert, it } from "@effect/vitest"
import { Effect, Layer, Metric } from "effect"
import { renderPrometheus } from "../../src/observability/prometheus.ts"
import * as RuntimeMetrics from "../../src/observability/runtime.ts"

/** The value of one series in the exposition text (`name{labels} value`). */
const valueOf = (text: string, series: string): number => {
  const line = text.split("\n").find((l) => l.startsWith(`${series} `))
  assert.isDefined(line, `${series} is exported`)
  return Number(line!.slice(series.length + 1))
}

/**
 * The process's own figures under the names every Node dashboard reads, from this very process:
 * real collections of the garbage it makes here, its resident memory and CPU time, and a turn
 * of the event loop it holds up on purpose.
 */
it.live("exports the GC's pauses by kind, resident memory, heap, CPU time and the event loop's delay", () =>
  Effect.gen(function*() {
    const spentBefore = process.cpuUsage()
    yield* Layer.build(RuntimeMetrics.layer("1 second"))
    // Young garbage, a few times the semi-space: minor collections for the observer to see.
    let kept = 0
    for (let i = 0; i < 400_000; i++) kept += [i, { i }, `x${i}`].length
    assert.isAbove(kept, 0)
    // One long turn inside the first interval, once the monitor has ticked (its first tick only
    // sets its reference): the next sample reports it.
    yield* Effect.sleep("50 millis")
    const until = Date.now() + 60
    while (Date.now() < until) kept++
    // The sample at the end of that interval (about a second in) reports it until the next one:
    // looked at every 100 ms, so a slow machine's late sample is still seen.
    let text = ""
    for (let waited = 0; waited < 5_000; waited += 100) {
      yield* Effect.sleep("100 millis")
      text = yield* renderPrometheus
      if (valueOf(text, "nodejs_eventloop_lag_max_seconds") >= 0.04) break
    }
    assert.isAtLeast(valueOf(text, `nodejs_gc_duration_seconds_count{kind="minor"}`), 1)
    assert.isAbove(valueOf(text, `nodejs_gc_duration_seconds_sum{kind="minor"}`), 0)
    const rss = valueOf(text, "process_resident_memory_bytes")
    assert.isAbove(rss, 20 * 1024 * 1024)
    assert.isAtMost(rss, process.memoryUsage().rss * 2)
    assert.isAbove(valueOf(text, "nodejs_heap_size_used_bytes"), 0)
    assert.isAtLeast(valueOf(text, "nodejs_heap_size_total_bytes"), valueOf(text, "nodejs_heap_size_used_bytes"))
    assert.isAbove(valueOf(text, "nodejs_external_memory_bytes"), 0)
    // Since the process started (what the name says), not since the layer did; the loop above
    // alone used some 60 ms more.
    assert.isAtLeast(valueOf(text, "process_cpu_seconds_total"), (spentBefore.user + spentBefore.system) / 1e6 + 0.05)
    assert.isAtLeast(valueOf(text, "nodejs_eventloop_lag_max_seconds"), 0.04)
    assert.isAtLeast(valueOf(text, "nodejs_eventloop_lag_max_seconds"), valueOf(text, "nodejs_eventloop_lag_p99_seconds"))
    assert.match(text, /# TYPE nodejs_gc_duration_seconds histogram/)
    assert.match(text, /# TYPE process_cpu_seconds_total counter/)
  }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map())))
