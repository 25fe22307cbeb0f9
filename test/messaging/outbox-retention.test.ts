import { assert, describe, it, layer } from "@effect/vitest"
import { Effect, Layer } from "effect"
import * as TestClock from "effect/testing/TestClock"
import { RuntimeConfig } from "../../src/config.ts"
import { type OutgoingMessage, Publisher, PublishError } from "../../src/messaging/publisher.ts"
import { OutboxRelay } from "../../src/messaging/relay.ts"
import { MemoryDatabase } from "../../src/stores/memory/MemoryDatabase.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { Outbox, type Stores } from "../../src/stores/services.ts"
import { outboxRow } from "../support/relays.ts"
import { sqlStoresLayer } from "../support/sql.ts"

const row = (id: string) => outboxRow(id)

const ids = Effect.flatMap(Outbox, (o) => o.pending(100)).pipe(Effect.map((rows) => rows.map((r) => r.event_id)))

/** Sent messages are deleted once past retention, oldest first, in batches; pending ones never. */
const storeSuite = <E>(name: string, stores: Layer.Layer<Stores, E>) =>
  layer(stores, { timeout: "60 seconds" })(name, (it) => {
    it.effect("purgeSent deletes sent messages sent before the cutoff, oldest first; never a pending one", () =>
      Effect.gen(function*() {
        const outbox = yield* Outbox
        yield* outbox.append(["r1", "r2", "r3", "r4"].map(row))
        const [p1, p2, p3] = (yield* outbox.pending(100)).map((r) => r.position)
        yield* TestClock.setTime(1_000)
        yield* outbox.markSent([p1!, p2!])
        yield* TestClock.setTime(5_000)
        yield* outbox.markSent([p3!])
        yield* outbox.markSent([p1!]) // sending again keeps the first time

        assert.strictEqual(yield* outbox.purgeSent(new Date(1_000), 10), 0, "sent at 1,000 is not before 1,000")
        assert.strictEqual(yield* outbox.purgeSent(new Date(2_000), 1), 1, "the limit holds")
        assert.strictEqual(yield* outbox.purgeSent(new Date(2_000), 10), 1, "then the other one sent at 1,000")
        assert.strictEqual(yield* outbox.purgeSent(new Date(10_000_000_000_000), 10), 1, "r3; r4 was never sent")
        assert.deepStrictEqual(yield* ids, ["r4"])
        assert.strictEqual(yield* outbox.pendingCount(), 1)
      }))
  })

describe("outbox retention", () => {
  storeSuite("memory store", MemoryStores.layer)
  storeSuite("PostgreSQL store", sqlStoresLayer("outbox_retention"))

  const accepting = Layer.succeed(Publisher, Publisher.of({
    publish: () => Effect.die("not used by the relay"),
    publishAll: (messages: ReadonlyArray<OutgoingMessage>) =>
      Effect.succeed(messages.map((m) =>
        m.options.messageId === "stuck" ? new PublishError({ exchange: m.exchange, routingKey: m.routingKey, message: "nacked" }) : undefined
      ))
  }))

  /** Every outbox row of the memory store, sent or not. */
  const rows = Effect.flatMap(MemoryDatabase, (db) => db.atomically((t) => t.outbox.map((m) => `${m.event_id}${m.sent_at === null ? "" : " (sent)"}`)))

  it.effect("the relay deletes what it sent once it is older than OUTBOX_RETENTION, every OUTBOX_PURGE_INTERVAL", () =>
    Effect.gen(function*() {
      const outbox = yield* Outbox
      yield* outbox.append([row("sent"), row("stuck")])
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(OutboxRelay.layer.pipe(Layer.provide(accepting)))
        // Published and marked sent at once; "stuck" is refused and stays pending.
        while ((yield* outbox.pendingCount()) > 1) yield* TestClock.adjust("1 millis")
        assert.deepStrictEqual(yield* rows, ["sent (sent)", "stuck"])
        yield* TestClock.adjust("50 minutes")
        assert.deepStrictEqual(yield* rows, ["sent (sent)", "stuck"], "the purge at 50 minutes: sent less than an hour ago")
        yield* TestClock.adjust("50 minutes")
        assert.deepStrictEqual(yield* rows, ["stuck"], "the purge at 100 minutes deleted it; the pending one stays")
      }))
    }).pipe(Effect.provide(Layer.mergeAll(
      MemoryStores.layer,
      RuntimeConfig.layerFrom({ OUTBOX_POLL_INTERVAL_MS: "60000", OUTBOX_RETENTION: "1 hour", OUTBOX_PURGE_INTERVAL: "50 minutes" })
    ))))
})
