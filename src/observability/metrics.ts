import { Metric } from "effect"

/** Every metric this service exports: one place for names, labels and descriptions (SPEC 7). */

export const eventsConsumed = Metric.counter("inventory_events_consumed_total", {
  description: "Events consumed, by event type and the service that emitted them",
  incremental: true
})

export const eventProcessingSeconds = Metric.histogram("inventory_event_processing_seconds", {
  description: "Time from delivery to outcome, by event type",
  boundaries: [0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10]
})

export const eventErrors = Metric.counter("inventory_event_errors_total", {
  description: "Event processing errors, by event type and error type",
  incremental: true
})

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
