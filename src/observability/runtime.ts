import { type Duration, Effect, Layer, Metric } from "effect"
import { constants, monitorEventLoopDelay, performance, PerformanceObserver } from "node:perf_hooks"
import {
  cpuSeconds,
  eventLoopBusy,
  eventLoopDelayMax,
  eventLoopDelayP99,
  externalMemory,
  gcDuration,
  heapTotal,
  heapUsed,
  residentMemory
} from "./metrics.ts"
import { collectOnScrape } from "./prometheus.ts"

/*
 * The process's own figures (their names and descriptions are in metrics.ts): the garbage
 * collector's pauses by kind, resident memory, the heap, CPU time, the event loop's busy time
 * and its delay.
 * Where a consumer's time and memory go is seen from outside the process (issue 18: under load
 * the GC's pauses are about a sixth of the consumer's CPU, and the peak RSS has a bound).
 */

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
 * Records every GC pause as it happens; memory, CPU and the event loop's busy time right before
 * each scrape (so a scrape sees them as they are, and a bench can take the difference of two
 * scrapes a few seconds apart); and every `interval` the event loop's delay, its p99 and maximum
 * over that interval. Stops with its scope.
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
    // From zero: the first reading counts the CPU and the loop's busy time since the process
    // started, as the names say.
    let cpu = { user: 0, system: 0 }
    let busyMs = 0
    const collect = Effect.suspend(() => {
      const memory = process.memoryUsage()
      const now = process.cpuUsage()
      const spent = (now.user - cpu.user + now.system - cpu.system) / 1e6
      cpu = now
      const active = performance.eventLoopUtilization().active
      const busy = (active - busyMs) / 1000
      busyMs = active
      return Effect.all([
        Metric.update(residentMemory, memory.rss),
        Metric.update(heapUsed, memory.heapUsed),
        Metric.update(heapTotal, memory.heapTotal),
        Metric.update(externalMemory, memory.external),
        Metric.update(cpuSeconds, spent),
        Metric.update(eventLoopBusy, busy)
      ], { discard: true })
    })
    yield* collectOnScrape(collect)
    // The delay's window is the interval's: a scrape reads it, it does not end it.
    const window = Effect.suspend(() => {
      const p99 = delay.count > 0 ? delay.percentile(99) / 1e9 : 0
      const max = delay.count > 0 ? delay.max / 1e9 : 0
      delay.reset()
      return Effect.all([Metric.update(eventLoopDelayP99, p99), Metric.update(eventLoopDelayMax, max)], { discard: true })
    })
    yield* window
    yield* Effect.forkScoped(Effect.forever(Effect.andThen(Effect.sleep(interval), window)))
  }))
