import { type Duration, Effect, Layer, Metric } from "effect"
import { constants, monitorEventLoopDelay, PerformanceObserver } from "node:perf_hooks"

/**
 * The process's own figures, under the names Prometheus and prom-client use for every Node
 * service, so the usual panels and alerts read them: the garbage collector's pauses by kind,
 * resident memory, the heap, CPU time and the event loop's delay. Where a consumer's time and
 * memory go is seen from outside the process (issue 18: under load the old generation is
 * collected every few hundred ms, and the peak RSS has a bound).
 */

const gcDuration = Metric.histogram("nodejs_gc_duration_seconds", {
  description: "Garbage collection pauses, by kind (minor: scavenge, major: mark-compact, incremental: marking steps, weakcb)",
  boundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]
})
const residentMemory = Metric.gauge("process_resident_memory_bytes", { description: "Resident set size" })
const heapUsed = Metric.gauge("nodejs_heap_size_used_bytes", { description: "V8 heap in use" })
const heapTotal = Metric.gauge("nodejs_heap_size_total_bytes", { description: "V8 heap reserved" })
const externalMemory = Metric.gauge("nodejs_external_memory_bytes", { description: "Memory of buffers and other objects outside the V8 heap" })
const cpuSeconds = Metric.counter("process_cpu_seconds_total", { description: "User and system CPU time", incremental: true })
const loopDelayP99 = Metric.gauge("nodejs_eventloop_lag_p99_seconds", { description: "99th percentile of the event loop's delay over the last interval" })
const loopDelayMax = Metric.gauge("nodejs_eventloop_lag_max_seconds", { description: "Longest event loop delay over the last interval" })

/** Node's `gc` entry kinds, as prom-client labels them. */
const kinds: ReadonlyMap<number, string> = new Map([
  [constants.NODE_PERFORMANCE_GC_MINOR, "minor"],
  [constants.NODE_PERFORMANCE_GC_MAJOR, "major"],
  [constants.NODE_PERFORMANCE_GC_INCREMENTAL, "incremental"],
  [constants.NODE_PERFORMANCE_GC_WEAKCB, "weakcb"]
])
/** One labelled series per kind, made once: labels added per update would cost every pause. */
const gcByKind = new Map([...kinds.values()].map((kind) => [kind, Metric.withAttributes(gcDuration, { kind })] as const))

/**
 * Records every GC pause as it happens, and every `interval` the memory, CPU and event-loop
 * figures (the delay's p99 and maximum over that interval). Stops with its scope.
 */
export const layer = (interval: Duration.Input = "5 seconds"): Layer.Layer<never> =>
  Layer.effectDiscard(Effect.gen(function*() {
    const context = yield* Effect.context<never>()
    const record = Effect.runSyncWith(context)
    const observer = new PerformanceObserver((list) => {
      for (const entry of list.getEntries()) {
        const detail = (entry as { readonly detail?: { readonly kind?: number } }).detail
        const kind = kinds.get(detail?.kind ?? -1) ?? "other"
        const series = gcByKind.get(kind) ?? Metric.withAttributes(gcDuration, { kind })
        record(Metric.update(series, entry.duration / 1000))
      }
    })
    yield* Effect.acquireRelease(
      Effect.sync(() => observer.observe({ entryTypes: ["gc"] })),
      () => Effect.sync(() => observer.disconnect())
    )
    // 10 ms resolution: the delays worth seeing here are GC pauses and long turns.
    const delay = monitorEventLoopDelay({ resolution: 10 })
    yield* Effect.acquireRelease(Effect.sync(() => delay.enable()), () => Effect.sync(() => delay.disable()))
    let cpu = process.cpuUsage()
    const sample = Effect.suspend(() => {
      const memory = process.memoryUsage()
      const now = process.cpuUsage()
      const spent = (now.user - cpu.user + now.system - cpu.system) / 1e6
      cpu = now
      const p99 = delay.count > 0 ? delay.percentile(99) / 1e9 : 0
      const max = delay.count > 0 ? delay.max / 1e9 : 0
      delay.reset()
      return Effect.all([
        Metric.update(residentMemory, memory.rss),
        Metric.update(heapUsed, memory.heapUsed),
        Metric.update(heapTotal, memory.heapTotal),
        Metric.update(externalMemory, memory.external),
        Metric.update(cpuSeconds, spent),
        Metric.update(loopDelayP99, p99),
        Metric.update(loopDelayMax, max)
      ], { discard: true })
    })
    yield* sample
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(interval), sample)))
  }))
