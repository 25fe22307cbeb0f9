import { Context, Duration, Effect, Schedule } from "effect"
import { MAX_LINES_PER_EVENT } from "../domain/events.ts"

/**
 * How hard the pipeline tries before giving a message back (SPEC 5), and what one message may
 * cost (issue 9). Defaults are the contract's; tests and operators override them.
 */
export interface ProcessingPolicy {
  /** First in-process retry delay; each next one doubles (1 s, 2 s, 4 s). */
  readonly retryBaseDelay: Duration.Duration
  /** In-process retries of a transient failure before the message goes back to the queue. */
  readonly retries: number
  /** Deliveries after which a message that still fails transiently is dead-lettered. */
  readonly maxDeliveries: number
  /** Largest body accepted, checked before parsing. */
  readonly maxBodyBytes: number
  /** Most lines (items, variants) one event may carry; the schema's ceiling is `MAX_LINES_PER_EVENT`. */
  readonly maxLinesPerEvent: number
}

export const defaultProcessingPolicy: ProcessingPolicy = {
  retryBaseDelay: Duration.seconds(1),
  retries: 3,
  maxDeliveries: 5,
  maxBodyBytes: 1024 * 1024,
  maxLinesPerEvent: MAX_LINES_PER_EVENT
}

export const ProcessingPolicy = Context.Reference<ProcessingPolicy>("inventory/pipeline/ProcessingPolicy", {
  defaultValue: () => defaultProcessingPolicy
})

/**
 * How a wait for the database backs off while it is down: from 200 ms, doubling, at most 10 s
 * apart, jittered so that replicas do not knock in step. Paused consumption pings by it; a dead
 * letter already copied to the DLQ retries its mark by it.
 */
export const outageBackoff = Schedule.exponential("200 millis", 2).pipe(
  Schedule.modifyDelay(({ output }) => Effect.succeed(Duration.min(output, Duration.seconds(10)))),
  Schedule.jittered
)
