import { NodeRuntime } from "@effect/platform-node"
import { Cause, Effect, Exit, Layer } from "effect"
import { defaultTeardown } from "effect/Runtime"
import { RuntimeConfig } from "./config.ts"
import * as DlqMonitor from "./messaging/dlqMonitor.ts"
import * as Messaging from "./messaging/index.ts"
import * as Batch from "./pipeline/batch.ts"
import { httpLayer, Readiness } from "./observability/health.ts"
import * as Logging from "./observability/logging.ts"
import * as Tracing from "./observability/tracing.ts"
import * as Scheduler from "./reservations/scheduler.ts"
import * as SqlStores from "./stores/sql/index.ts"

const Stores = SqlStores.layer

const Reservations = Layer.unwrap(
  Effect.map(RuntimeConfig, (config) => Scheduler.layer(config.reservations))
).pipe(Layer.provideMerge(Stores))

const Health = Readiness.layer.pipe(Layer.provideMerge(Reservations))

const Batching = Layer.unwrap(
  Effect.map(RuntimeConfig, (config) => (config.batch.maxSize > 1 ? Batch.batched(config.batch) : Layer.empty))
)

const App = Layer.mergeAll(DlqMonitor.layer, httpLayer).pipe(
  Layer.provideMerge(Messaging.layer),
  Layer.provide(Batching),
  Layer.provide(Health),
  Layer.provide(RuntimeConfig.layer),
  Layer.provide(Tracing.layer),
  Layer.provide(Logging.layer)
)

// SIGTERM/SIGINT interrupt the app; a clean shutdown after a signal exits 0, not 130.
NodeRuntime.runMain(Layer.launch(App), {
  teardown: (exit, onExit) =>
    Exit.isFailure(exit) && Cause.hasInterruptsOnly(exit.cause) ? onExit(0) : defaultTeardown(exit, onExit)
})
