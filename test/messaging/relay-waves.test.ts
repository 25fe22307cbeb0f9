import { assert, it } from "@effect/vitest"
import { Effect, Layer, Metric } from "effect"
import { RuntimeConfig } from "../../src/config.ts"
import { type OutgoingMessage, Publisher, PublishError } from "../../src/messaging/publisher.ts"
import { OutboxRelay } from "../../src/messaging/relay.ts"
import { outboxPending } from "../../src/observability/metrics.ts"
import type { OutboundEvent } from "../../src/domain/published.ts"
import * as MemoryStores from "../../src/stores/memory/stores.ts"
import { Outbox } from "../../src/stores/services.ts"

/**
 * The relay publishes a round in waves (the first row of every aggregate together, then the
 * second, ...). A row the broker did not confirm holds back every later row of its aggregate,
 * and only those, until a later round gets it through. The broker here is a publisher that
 * refuses chosen message ids once: the point is the order the relay asks for, not the broker.
 */
const attempts: Array<{ readonly id: string; readonly ok: boolean }> = []
const refuseOnce = new Set(["a-1"])
/** Refused every time, until the test lets them through. */
const refuseAlways = new Set<string>()
const publisher = Layer.succeed(Publisher, Publisher.of({
  publish: () => Effect.die("not used by the relay"),
  publishAll: (messages: ReadonlyArray<OutgoingMessage>) =>
    Effect.sync(() =>
      messages.map((m) => {
        const id = String(m.options.messageId)
        const ok = !refuseOnce.delete(id) && !refuseAlways.has(id)
        attempts.push({ id, ok })
        return ok ? undefined : new PublishError({ exchange: m.exchange, routingKey: m.routingKey, message: "nacked" })
      })
    )
}))

const row = (aggregate: string, n: number) => ({
  event_id: `${aggregate}-${n}`,
  organization_id: "org",
  event_type: "inventory.stock.released" as const,
  aggregate_key: `org/order/${aggregate}`,
  payload: { event: "inventory.stock.released", event_id: `${aggregate}-${n}` } as unknown as OutboundEvent,
  traceparent: null,
  created_at: new Date()
})

it.live("a refused row holds back its aggregate's later rows, and only those", () =>
  Effect.gen(function*() {
    const outbox = yield* Outbox
    // Written before the relay starts, so its first round sees all of them.
    yield* outbox.append([row("a", 1), row("b", 1), row("a", 2), row("b", 2), row("c", 1), row("a", 3)])
    yield* Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(OutboxRelay.layer.pipe(Layer.provide(publisher)))
      while ((yield* outbox.pendingCount()) > 0) yield* Effect.sleep("10 millis")
    }))
    const order = attempts.map((a) => `${a.id}${a.ok ? "" : "!"}`)
    // First round: wave 1 = a-1 (refused), b-1, c-1; wave 2 = b-2 only. Next round: a-1, a-2, a-3.
    assert.deepStrictEqual(order.slice(0, 3).sort(), ["a-1!", "b-1", "c-1"])
    assert.strictEqual(order[3], "b-2")
    assert.deepStrictEqual(order.slice(4), ["a-1", "a-2", "a-3"])
  }).pipe(Effect.provide(Layer.mergeAll(
    MemoryStores.layer,
    RuntimeConfig.layerFrom({ OUTBOX_POLL_INTERVAL_MS: "10" })
  ))))

const gauge = Effect.map(Metric.value(outboxPending), (state) => state.value)

/** Runs the relay until the gauge reads `expected` (or 5 s pass), and returns what it read. */
const gaugeSettles = (rows: ReadonlyArray<ReturnType<typeof row>>, expected: number) =>
  Effect.gen(function*() {
    yield* (yield* Outbox).append(rows)
    return yield* Effect.scoped(Effect.gen(function*() {
      yield* Layer.build(OutboxRelay.layer.pipe(Layer.provide(publisher)))
      const deadline = Date.now() + 5_000
      while ((yield* gauge) !== expected && Date.now() < deadline) yield* Effect.sleep("10 millis")
      return yield* gauge
    }))
  })

it.live("the outbox_pending gauge shows what a round that saw every pending row left behind", () =>
  Effect.gen(function*() {
    refuseAlways.add("d-1")
    // d-1 refused, d-2 waits behind it; e-1 and f-1 go out.
    assert.strictEqual(yield* gaugeSettles([row("d", 1), row("d", 2), row("e", 1), row("f", 1)], 2), 2)
    assert.strictEqual(yield* (yield* Outbox).pendingCount(), 2)
    refuseAlways.clear()
  }).pipe(Effect.provide(Layer.mergeAll(MemoryStores.layer, RuntimeConfig.layerFrom({ OUTBOX_POLL_INTERVAL_MS: "10" })))))

it.live("under a backlog (a full round) the gauge counts the table, not just the round", () =>
  Effect.gen(function*() {
    refuseAlways.add("g-1")
    // Rounds of two: g-1 and g-2 fill every round, so h-1 and i-1 are never read, yet pending.
    assert.strictEqual(yield* gaugeSettles([row("g", 1), row("g", 2), row("h", 1), row("i", 1)], 4), 4)
    refuseAlways.clear()
  }).pipe(Effect.provide(Layer.mergeAll(
    MemoryStores.layer,
    RuntimeConfig.layerFrom({ OUTBOX_POLL_INTERVAL_MS: "10", OUTBOX_BATCH_SIZE: "2" })
  ))))
