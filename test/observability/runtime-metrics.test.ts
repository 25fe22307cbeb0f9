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

/**
 * A scrape reads CPU, memory and the event loop's busy time as they are at that moment, not as
 * the last periodic sample left them: the bench takes the difference of two scrapes a few seconds
 * apart. The interval here is an hour, so only the scrape can bring them up to date.
 */
it.live("brings CPU and the event loop's busy time up to date at each scrape", () =>
  Effect.gen(function*() {
    yield* Layer.build(RuntimeMetrics.layer("1 hour"))
    const first = yield* renderPrometheus
    const busyBefore = valueOf(first, "nodejs_eventloop_busy_seconds_total")
    const cpuBefore = valueOf(first, "process_cpu_seconds_total")
    // Since the process started, as the name says: at least what this test file took so far.
    assert.isAbove(busyBefore, 0)
    assert.isAtMost(busyBefore, process.uptime())
    assert.match(first, /# TYPE nodejs_eventloop_busy_seconds_total counter/)
    // 300 ms of the loop held in one turn, then 200 ms of it waiting on a timer.
    const until = Date.now() + 300
    let spins = 0
    while (Date.now() < until) spins++
    assert.isAbove(spins, 0)
    yield* Effect.sleep("200 millis")
    const second = yield* renderPrometheus
    const busy = valueOf(second, "nodejs_eventloop_busy_seconds_total") - busyBefore
    assert.isAtLeast(busy, 0.29)
    // The timer's wait is not busy time.
    assert.isBelow(busy, 0.49)
    assert.isAtLeast(valueOf(second, "process_cpu_seconds_total") - cpuBefore, 0.2)
  }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map())))

/** What a layer registered for its scrapes goes with its scope. */
it.live("stops collecting at scrapes once the layer's scope closes", () =>
  Effect.gen(function*() {
    const whileRunning = yield* Effect.scoped(Effect.andThen(Layer.build(RuntimeMetrics.layer("1 hour")), renderPrometheus))
    const before = valueOf(whileRunning, "nodejs_eventloop_busy_seconds_total")
    assert.isAbove(before, 0)
    const until = Date.now() + 100
    while (Date.now() < until) {
      // held on purpose
    }
    assert.strictEqual(valueOf(yield* renderPrometheus, "nodejs_eventloop_busy_seconds_total"), before)
  }).pipe(Effect.provideService(Metric.MetricRegistry, new Map())))

/**
 * The delay's figures cover one interval: a long turn shows until the next sample, then is gone
 * (the monitor is reset each interval, not at each scrape). Scraped every 100 ms meanwhile.
 */
it.live("reports the event loop's delay over the last interval only", () =>
  Effect.gen(function*() {
    yield* Layer.build(RuntimeMetrics.layer("500 millis"))
    yield* Effect.sleep("50 millis")
    const until = Date.now() + 80
    while (Date.now() < until) {
      // held on purpose
    }
    // Seen at a scrape once the interval it fell in is sampled...
    let seen = false
    for (let waited = 0; waited < 5_000 && !seen; waited += 100) {
      yield* Effect.sleep("100 millis")
      seen = valueOf(yield* renderPrometheus, "nodejs_eventloop_lag_max_seconds") >= 0.06
    }
    assert.isTrue(seen, "the long turn shows in the interval's maximum")
    // ...and gone once a later interval with no long turn is sampled.
    let gone = false
    for (let waited = 0; waited < 5_000 && !gone; waited += 100) {
      yield* Effect.sleep("100 millis")
      gone = valueOf(yield* renderPrometheus, "nodejs_eventloop_lag_max_seconds") < 0.06
    }
    assert.isTrue(gone, "a later interval without it reports a shorter maximum")
  }).pipe(Effect.scoped, Effect.provideService(Metric.MetricRegistry, new Map())))
