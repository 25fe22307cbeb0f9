import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import { Cause, Effect, Exit, Layer } from "effect"
import { defaultTeardown } from "effect/Runtime"
import { databaseSettings, httpSettings, loggingSettings, RuntimeConfig, tracingSettings } from "./config.ts"
import * as DlqMonitor from "./messaging/dlqMonitor.ts"
import * as Messaging from "./messaging/index.ts"
import * as Batch from "./pipeline/batch.ts"
import { httpLayer, Readiness } from "./observability/health.ts"
import * as Logging from "./observability/logging.ts"
import * as RuntimeMetrics from "./observability/runtime.ts"
import * as Tracing from "./observability/tracing.ts"
import * as Scheduler from "./reservations/scheduler.ts"
import * as SqlStores from "./stores/sql/index.ts"

// Each feature gets its own section of the settings; the broker side reads them all as RuntimeConfig.
const Stores = Layer.unwrap(Effect.map(databaseSettings, SqlStores.layer))

const Reservations = Layer.unwrap(
  Effect.map(RuntimeConfig, (config) => Scheduler.layer(config.reservations))
).pipe(Layer.provideMerge(Stores))

const Health = Readiness.layer.pipe(Layer.provideMerge(Reservations))

const Batching = Layer.unwrap(
  Effect.map(RuntimeConfig, (config) => (config.batch.maxSize > 1 ? Batch.batched(config.batch) : Layer.empty))
)

const Http = Layer.unwrap(Effect.map(httpSettings, httpLayer))

/**
 * The consumer, with `applying` deciding how decoded events are applied (`EventApplier`): group
 * commit as configured in production; the throughput bench swaps in an applier that applies
 * nothing, to measure the message path alone (bench/unapplied/consumer.ts).
 */
export const consumer = <E, R>(applying: Layer.Layer<never, E, R>) =>
  Layer.mergeAll(DlqMonitor.layer, Http, RuntimeMetrics.layer()).pipe(
    Layer.provideMerge(Messaging.layer),
    Layer.provide(applying),
    Layer.provide(Health),
    Layer.provide(RuntimeConfig.layer),
    Layer.provide(Layer.unwrap(Effect.map(tracingSettings, Tracing.layer))),
    Layer.provide(Layer.unwrap(Effect.map(loggingSettings, Logging.layer)))
  )

/** Runs a consumer until SIGTERM/SIGINT; a clean shutdown after a signal exits 0, not 130. */
export const run = <E>(app: Layer.Layer<never, E>) =>
  NodeRuntime.runMain(Layer.launch(app), {
    teardown: (exit, onExit) =>
      Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : defaultTeardown(exit, onExit)
  })

// Only as the entry point: imported, this module only loads the consumer's modules, which is how
// the image fills Node's compile cache at build (Dockerfile).
if (import.meta.main) run(consumer(Batching))
