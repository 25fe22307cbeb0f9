import { Metric } from "effect"

/** Every metric this service exports: one place for names, labels and descriptions (SPEC 7). */

const consumed = {
  name: "inventory_events_consumed_total",
  options: { description: "Events consumed, by event type and the service that emitted them", incremental: true }
} as const
const processing = {
  name: "inventory_event_processing_seconds",
  options: {
    description: "Time from delivery to outcome, by event type",
    boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
  }
} as const
const errors = {
  name: "inventory_event_errors_total",
  options: { description: "Event processing errors, by event type and error type", incremental: true }
} as const

export const eventsConsumed = Metric.counter(consumed.name, consumed.options)
export const eventProcessingSeconds = Metric.histogram(processing.name, processing.options)
export const eventErrors = Metric.counter(errors.name, errors.options)

/**
 * The series of one label set of the per-message metrics above, as metrics of their own: the
 * same series as `Metric.withAttributes(eventsConsumed, labels)` (a series is named by the
 * metric and its labels), but an update does not add the labels to the fiber's context first,
 * which `withAttributes` does on every update (issue 18). Made once per label set.
 */
export const eventsConsumedFor = (labels: { readonly event_type: string; readonly source_service: string }) =>
  Metric.counter(consumed.name, { ...consumed.options, attributes: labels })
export const eventProcessingSecondsFor = (labels: { readonly event_type: string }) =>
  Metric.histogram(processing.name, { ...processing.options, attributes: labels })
export const eventErrorsFor = (labels: { readonly event_type: string; readonly error_type: string }) =>
  Metric.counter(errors.name, { ...errors.options, attributes: labels })

export const eventsDeadLettered = Metric.counter("inventory_events_dead_lettered_total", {
  description: "Messages moved to the dead-letter queue",
  incremental: true
})

export const dlqDepth = Metric.gauge("inventory_dlq_depth", {
  description: "Messages waiting in the dead-letter queue at the last check"
})

/** Labelled by `queue`: the inbound queues, so an alert can tell messages waiting from none consumed. */
export const queueDepth = Metric.gauge("inventory_queue_depth", {
  description: "Messages ready in an inbound queue at the last check"
})

export const outboxPending = Metric.gauge("inventory_outbox_pending", {
  description: "Outbox rows not yet confirmed by the broker"
})

export const consumerPaused = Metric.gauge("inventory_consumer_paused", {
  description: "1 while a consumer holds off because the database does not answer"
})

export const reservationsExpired = Metric.counter("inventory_reservations_expired_total", {
  description: "Reservations released because their hold lapsed",
  incremental: true
})

export const relayActive = Metric.gauge("inventory_relay_active", {
  description: "1 while this replica's outbox relay holds the relay lock and publishes; 0 while it stands by"
})

export const consumerActive = Metric.gauge("inventory_consumer_active", {
  description: "1 while this replica is the queue's active consumer (single active consumer), 0 while it stands by or is unsure"
})

/** Events per set-based unit of work (issue 18): how much group commit is carrying. */
export const groupSize = Metric.histogram("inventory_group_size", {
  description: "Events applied together in one unit of work",
  boundaries: [1, 2, 4, 8, 16, 32, 64, 128, 256, 512]
})

// The process's own figures (`runtime.ts`), under the names Prometheus and prom-client use for
// every Node service, so the usual panels and alerts read them.

export const gcDuration = Metric.histogram("nodejs_gc_duration_seconds", {
  description: "Garbage collection pauses, by kind (minor: scavenge, major: mark-compact, incremental: marking steps, weakcb)",
  boundaries: [0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25]
})
export const residentMemory = Metric.gauge("process_resident_memory_bytes", { description: "Resident set size" })
export const heapUsed = Metric.gauge("nodejs_heap_size_used_bytes", { description: "V8 heap in use" })
export const heapTotal = Metric.gauge("nodejs_heap_size_total_bytes", { description: "V8 heap reserved" })
export const externalMemory = Metric.gauge("nodejs_external_memory_bytes", {
  description: "Memory of buffers and other objects outside the V8 heap"
})
export const cpuSeconds = Metric.counter("process_cpu_seconds_total", {
  description: "User and system CPU time since the process started",
  incremental: true
})
export const eventLoopBusy = Metric.counter("nodejs_eventloop_busy_seconds_total", {
  description: "Time the event loop spent running code rather than waiting for I/O or timers, since the process started; its rate is the loop's utilization",
  incremental: true
})
export const eventLoopDelayP99 = Metric.gauge("nodejs_eventloop_lag_p99_seconds", {
  description: "99th percentile of the event loop's delay over the last interval"
})
export const eventLoopDelayMax = Metric.gauge("nodejs_eventloop_lag_max_seconds", {
  description: "Longest event loop delay over the last interval"
})
