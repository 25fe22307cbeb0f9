/**
 * Our consumer with nothing applied: every delivery is received, decoded, queued in its key's
 * lane, traced and acked as `npm start` does it, but its applier acks each event at once, with no
 * unit of work, no database and so nothing for the relay to publish. `npm run bench -- --unapplied`
 * runs it beside ours: what the message path costs alone (our code, amqplib and the broker), the
 * floor under ours' CPU per event, and what the broker and the publisher need per event without
 * the database's share.
 */
import { Context, Effect, Layer } from "effect"
import { consumer, run } from "../../src/main.ts"
import { EventApplier } from "../../src/pipeline/batch.ts"
import { Outcome } from "../../src/pipeline/pipeline.ts"

const nothingApplied = Layer.succeedContext(Context.make(EventApplier, {
  applyChain: (waiting) => Effect.sync(() => waiting().map((item) => Outcome.Ack({ decoded: item.decoded })))
}))

run(consumer(nothingApplied))
