import { Clock, Effect } from "effect"
import { deriveId } from "../domain/ids.ts"
import type { OutboundDraft, OutboundEvent } from "../domain/published.ts"
import { formatTraceparent } from "../observability/spans.ts"
import type { OutboxMessage } from "../stores/model.ts"
import { Outbox } from "../stores/services.ts"

/** What caused the work being done: the inbound event, or a reservation's expiry. */
export interface Causation {
  readonly organization_id: string
  readonly event_id: string
}

/** W3C `traceparent` of the current span, so the relay can publish into the same trace. */
export const currentTraceparent: Effect.Effect<string | null> = Effect.currentSpan.pipe(
  Effect.map(formatTraceparent),
  Effect.catch(() => Effect.succeed(null))
)

/**
 * The outbox rows for outbound events: each gets an `event_id` derived from its cause and
 * content, and `causation_id` = the cause's event id.
 */
export const outboxMessages = (
  cause: Causation,
  aggregateKey: string,
  drafts: ReadonlyArray<OutboundDraft>,
  now: Date,
  traceparent: string | null
): Array<OutboxMessage> =>
  drafts.map((draft): OutboxMessage => {
    const event_id = deriveId(cause.organization_id, draft.event, cause.event_id, JSON.stringify(draft.data))
    const payload = {
      event: draft.event,
      version: "1.0",
      timestamp: now.toISOString(),
      organization_id: cause.organization_id,
      event_id,
      causation_id: cause.event_id,
      data: draft.data
    } as OutboundEvent
    return {
      event_id,
      organization_id: cause.organization_id,
      event_type: draft.event,
      aggregate_key: `${cause.organization_id}/${aggregateKey}`,
      payload,
      traceparent,
      created_at: now
    }
  })

/** Writes outbound events to the outbox, inside the caller's unit of work, in the current trace. */
export const emit = Effect.fnUntraced(function*(
  cause: Causation,
  aggregateKey: string,
  drafts: ReadonlyArray<OutboundDraft>
) {
  if (drafts.length === 0) return
  const outbox = yield* Outbox
  const now = new Date(yield* Clock.currentTimeMillis)
  yield* outbox.append(outboxMessages(cause, aggregateKey, drafts, now, yield* currentTraceparent))
})

export const nowDate: Effect.Effect<Date> = Effect.map(Clock.currentTimeMillis, (ms) => new Date(ms))
