import { assert, describe, it, layer } from "@effect/vitest"
import { Duration, Effect, Layer } from "effect"
import * as TestClock from "effect/testing/TestClock"
import { RuntimeConfig } from "../../src/config.ts"
import { retentionLayer } from "../../src/messaging/deadLetterRecorder.ts"
import type { FailedEvent } from "../../src/stores/model.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { type FailedEventFilter, FailedEvents, type Stores } from "../../src/stores/services.ts"
import { freshOrg } from "../support/events.ts"
import { sqlStoresLayer } from "../support/sql.ts"

/**
 * `failed_events` on both stores: keyset paging in (failed_at, seq) order with the organization
 * filter (what `dlq list` and `dlq replay --all` walk), the purge past retention, and the
 * recorder's retention deleting on the test clock.
 */

const failed = (org: string, id: string, at: number, errorType = "InsufficientStock"): FailedEvent => ({
  id: `${org}-${id}`,
  event_id: id,
  event_type: "order.placed",
  organization_id: org,
  error_type: errorType,
  error_message: "refused",
  body: new TextEncoder().encode(`{"id":"${id}"}`),
  body_sha256: "0".repeat(64),
  body_length: 10,
  dlq_copied_at: new Date(at),
  content_type: "application/json",
  original_exchange: "order_events",
  original_routing_key: "order.placed",
  attempts: 1,
  failed_at: new Date(at),
  replay_count: 0,
  last_replayed_at: null,
  headers: {}
})

/** Every page of the filter, as the CLI walks them. */
const pages = (filter: FailedEventFilter, limit: number) =>
  Effect.gen(function*() {
    const store = yield* FailedEvents
    const out: Array<Array<string>> = []
    let after: FailedEventFilter["after"]
    while (true) {
      const rows = yield* store.list({ ...filter, ...(after ? { after } : {}), limit })
      // Bounded, so a cursor that does not advance fails the assertion instead of hanging.
      if (rows.length === 0 || out.length === 20) return out
      out.push(rows.map((r) => r.event_id!))
      after = { failed_at: rows[rows.length - 1]!.failed_at, seq: rows[rows.length - 1]!.seq }
    }
  })

const storeSuite = <E>(name: string, stores: Layer.Layer<Stores, E>) =>
  layer(stores, { timeout: "60 seconds" })(name, (it) => {
    it.effect("list pages in (failed_at, seq) order, ties in write order, one organization at a time", () =>
      Effect.gen(function*() {
        const store = yield* FailedEvents
        const org = freshOrg()
        const other = freshOrg()
        // Five at the same millisecond (only seq orders them), written out of time order.
        for (const id of ["t1", "t2", "t3", "t4", "t5"]) yield* store.record(failed(org, id, 2_000))
        yield* store.record(failed(org, "late", 3_000))
        yield* store.record(failed(org, "early", 1_000, "BrokerExpired"))
        yield* store.record(failed(other, "theirs", 1_500))
        // Recording an id again keeps its place.
        yield* store.record({ ...failed(org, "t2", 2_000), error_message: "again" })

        const all = ["early", "t1", "t2", "t3", "t4", "t5", "late"]
        assert.deepStrictEqual((yield* pages({ organization_id: org }, 100)).flat(), all)
        assert.deepStrictEqual(yield* pages({ organization_id: org }, 2), [["early", "t1"], ["t2", "t3"], ["t4", "t5"], ["late"]])
        assert.deepStrictEqual(yield* pages({ organization_id: org }, 1), all.map((id) => [id]))
        assert.deepStrictEqual((yield* pages({ organization_id: other }, 2)).flat(), ["theirs"])
        assert.deepStrictEqual((yield* pages({ organization_id: org, error_type: "BrokerExpired" }, 2)).flat(), ["early"])
        const everyone = (yield* store.list({})).map((r) => r.event_id)
        assert.isTrue(everyone.includes("theirs") && everyone.includes("late"))
      }))

    it.effect("purge deletes records that failed before the cutoff, oldest first, up to the limit", () =>
      Effect.gen(function*() {
        const store = yield* FailedEvents
        const org = freshOrg()
        // Far in the past, so the other test's rows (and other files') are never before the cutoff.
        const base = -10_000_000_000_000
        for (const [id, at] of [["a", 1], ["b", 2], ["c", 2], ["d", 5]] as const) yield* store.record(failed(org, id, base + at))
        yield* store.markReplayed(`${org}-b`, new Date(0))
        const left = () => Effect.map(store.list({ organization_id: org }), (rows) => rows.map((r) => r.event_id))

        assert.strictEqual(yield* store.purge(new Date(base + 1), 10), 0, "failed at the cutoff is not before it")
        assert.strictEqual(yield* store.purge(new Date(base + 3), 2), 2, "the limit holds")
        assert.deepStrictEqual(yield* left(), ["c", "d"], "oldest first; replayed or not")
        assert.strictEqual(yield* store.purge(new Date(base + 3), 10), 1)
        assert.deepStrictEqual(yield* left(), ["d"])
      }))
  })

describe("dead-letter retention and paging", () => {
  it.effect("defaults: records kept 30 days, purged hourly; the recorder queue bounded at 64 MiB", () =>
    Effect.gen(function*() {
      const config = yield* RuntimeConfig
      assert.strictEqual(Duration.toMillis(config.failedEvents.retention), Duration.toMillis(Duration.days(30)))
      assert.strictEqual(Duration.toMillis(config.failedEvents.purgeInterval), Duration.toMillis(Duration.hours(1)))
      assert.strictEqual(config.topology.deadLetterRecorderQueue, "inventory_dead_letter_recorder")
      assert.strictEqual(config.topology.deadLetterRecorderMaxBytes, 64 * 1024 * 1024)
    }).pipe(Effect.provide(RuntimeConfig.layerFrom({}))))

  storeSuite("memory store", MemoryStores.layer)
  storeSuite("PostgreSQL store", sqlStoresLayer("dead_letter_retention"))

  it.effect("the recorder deletes records older than FAILED_EVENTS_RETENTION, every FAILED_EVENTS_PURGE_INTERVAL", () =>
    Effect.gen(function*() {
      const store = yield* FailedEvents
      const ids = () => Effect.map(store.list({}), (rows) => rows.map((r) => r.event_id))
      yield* store.record(failed("org", "old", 0))
      yield* store.record(failed("org", "new", 40 * 60_000))
      yield* Effect.scoped(Effect.gen(function*() {
        yield* Layer.build(retentionLayer)
        yield* TestClock.adjust("50 minutes")
        assert.deepStrictEqual(yield* ids(), ["old", "new"], "the purge at 50 minutes: nothing failed an hour before")
        yield* TestClock.adjust("50 minutes")
        assert.deepStrictEqual(yield* ids(), ["new"], "the purge at 100 minutes deleted the one that failed at 0")
        yield* TestClock.adjust("50 minutes")
        assert.deepStrictEqual(yield* ids(), [], "and at 150 minutes the one that failed at 40")
      }))
    }).pipe(Effect.provide(Layer.mergeAll(
      MemoryStores.layer,
      RuntimeConfig.layerFrom({ FAILED_EVENTS_RETENTION: "1 hour", FAILED_EVENTS_PURGE_INTERVAL: "50 minutes" })
    ))))
})
