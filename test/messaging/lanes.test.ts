import { assert, describe, it } from "@effect/vitest"
import { Deferred, Effect, Ref } from "effect"
import { type Dropped, type Gate, makeLanes, type Step } from "../../src/messaging/lanes.ts"

type Event = readonly ["run", string, boolean] | readonly ["drop", string, Dropped]

/**
 * Lanes whose `settle` answers from a script by message name, recording every call in order (as
 * "run": the step the consumer takes for a message). Chains wait for `start`, so that every
 * message is in its lane before the first one is applied.
 */
const scripted = (script: Record<string, ReadonlyArray<Step>>, gate: () => Gate = () => "open") =>
  Effect.gen(function*() {
    const events = yield* Ref.make<ReadonlyArray<Event>>([])
    const start = yield* Deferred.make<void>()
    const calls = new Map<string, number>()
    const made = yield* makeLanes<string, string, never>({
      apply: (waiting) => Effect.as(Deferred.await(start), waiting()),
      settle: (name, _outcome, canDefer) =>
        Effect.gen(function*() {
          yield* Ref.update(events, (e) => [...e, ["run", name, canDefer] as const])
          const n = calls.get(name) ?? 0
          calls.set(name, n + 1)
          return script[name]?.[n] ?? "done"
        }),
      gate: Effect.sync(gate),
      drop: (name, why) => Ref.update(events, (e) => [...e, ["drop", name, why] as const]),
      chain: 16
    })
    const lanes = { offer: made.offer, idle: Effect.andThen(Deferred.succeed(start, undefined), made.idle) }
    return { lanes, events }
  })

describe("keyed lanes", () => {
  it.effect("runs one key's messages one at a time, in the order offered", () =>
    Effect.gen(function*() {
      const { events, lanes } = yield* scripted({})
      yield* Effect.forEach(["a1", "a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* lanes.idle
      assert.deepStrictEqual(yield* Ref.get(events), [["run", "a1", true], ["run", "a2", true], ["run", "a3", false]])
    }))

  it.effect("runs different keys in parallel: a blocked key does not hold another back", () =>
    Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const ran: Array<string> = []
      const lanes = yield* makeLanes<string, string, never>({
        apply: (waiting) => Effect.sync(waiting),
        settle: (name) =>
          Effect.gen(function*() {
            ran.push(name)
            if (name === "a1") yield* Deferred.await(release)
            if (name === "b1") yield* Deferred.succeed(release, undefined)
            return "done" as const
          }),
        gate: Effect.succeed("open"),
        drop: () => Effect.void,
        chain: 16
      })
      yield* lanes.offer("a", "a1")
      yield* lanes.offer("a", "a2")
      yield* lanes.offer("b", "b1")
      // Without parallel lanes b1 would wait for a1, which waits for b1: this would never end.
      yield* lanes.idle
      assert.deepStrictEqual(ran.filter((n) => n.startsWith("a")), ["a1", "a2"])
      assert.include(ran, "b1")
    }))

  it.effect("a message that defers goes once behind its key's waiting messages, then runs where it is", () =>
    Effect.gen(function*() {
      const { events, lanes } = yield* scripted({ a1: ["deferred"], a2: ["deferred"] })
      yield* Effect.forEach(["a1", "a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* lanes.idle
      // Back in line, a1 may not defer again although a2 still waits behind it.
      assert.deepStrictEqual(yield* Ref.get(events), [
        ["run", "a1", true],
        ["run", "a2", true],
        ["run", "a3", true],
        ["run", "a1", false],
        ["run", "a2", false]
      ])
    }))

  it.effect("a message alone in its lane may not defer", () =>
    Effect.gen(function*() {
      const { events, lanes } = yield* scripted({})
      yield* lanes.offer("a", "a1")
      yield* lanes.idle
      assert.deepStrictEqual(yield* Ref.get(events), [["run", "a1", false]])
    }))

  it.effect("after a requeue the key's later messages go back behind it; other keys go on", () =>
    Effect.gen(function*() {
      const { events, lanes } = yield* scripted({ a1: ["requeued"] })
      yield* Effect.forEach(["a1", "a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* lanes.idle
      assert.deepStrictEqual(yield* Ref.get(events), [
        ["run", "a1", true],
        ["drop", "a2", "kept behind a requeued message of its key"],
        ["drop", "a3", "kept behind a requeued message of its key"]
      ])
      // The key's lane is free again: a new message runs.
      yield* lanes.offer("a", "a4")
      yield* lanes.idle
      assert.deepStrictEqual((yield* Ref.get(events)).at(-1), ["run", "a4", false])
    }))

  it.effect("on a closed channel the rest of the lane is given up, the next message included", () =>
    Effect.gen(function*() {
      const { events, lanes } = yield* scripted({}, () => "closed")
      yield* Effect.forEach(["a1", "a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* lanes.idle
      assert.deepStrictEqual(yield* Ref.get(events), [
        ["drop", "a1", "channel closed"],
        ["drop", "a2", "channel closed"],
        ["drop", "a3", "channel closed"]
      ])
    }))

  it.effect("while paused each waiting message goes back to the queue without being run", () =>
    Effect.gen(function*() {
      let gate: Gate = "open"
      const events: Array<string> = []
      const lanes = yield* makeLanes<string, string, never>({
        apply: (waiting) => Effect.sync(waiting),
        settle: (name) =>
          Effect.sync(() => {
            events.push(`run ${name}`)
            // The first message asks for a pause (say, the database went away).
            if (name === "a1") gate = "paused"
            return "done" as const
          }),
        gate: Effect.sync(() => gate),
        drop: (name, why) => Effect.sync(() => events.push(`${why}: ${name}`)),
        chain: 16
      })
      yield* Effect.forEach(["a1", "a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* lanes.offer("b", "b1")
      yield* lanes.idle
      assert.deepStrictEqual(events.filter((e) => e.endsWith("a2") || e.endsWith("a3") || e.endsWith("a1")), [
        "run a1",
        "consumption paused: a2",
        "consumption paused: a3"
      ])
    }))
})

describe("keyed lanes: chains", () => {
  it.effect("a key's waiting messages are applied together, in order; those after a short answer are applied again", () =>
    Effect.gen(function*() {
      const chains: Array<ReadonlyArray<string>> = []
      const settled: Array<string> = []
      const start = yield* Deferred.make<void>()
      const lanes = yield* makeLanes<string, string, never>({
        // Each chain is read when it is handed over. The first waits for `start` while a2 and a3
        // arrive; the second is answered short (say, a2 must be retried), so a3 is applied again
        // in a third.
        apply: (waiting) => {
          const names = waiting()
          return Effect.as(Deferred.await(start), chains.push(names) === 2 ? names.slice(0, 1) : names)
        },
        settle: (name) => Effect.sync(() => settled.push(name)).pipe(Effect.as("done" as const)),
        gate: Effect.succeed("open"),
        drop: () => Effect.void,
        chain: 16
      })
      yield* lanes.offer("a", "a1")
      yield* Effect.yieldNow
      yield* Effect.forEach(["a2", "a3"], (name) => lanes.offer("a", name), { discard: true })
      yield* Deferred.succeed(start, undefined)
      yield* lanes.idle
      assert.deepStrictEqual(chains, [["a1"], ["a2", "a3"], ["a3"]])
      assert.deepStrictEqual(settled, ["a1", "a2", "a3"])
    }))

  it.effect("a chain is at most `chain` messages long", () =>
    Effect.gen(function*() {
      const chains: Array<ReadonlyArray<string>> = []
      const start = yield* Deferred.make<void>()
      const lanes = yield* makeLanes<string, string, never>({
        apply: (waiting) => {
          const names = waiting()
          return Effect.as(Deferred.await(start), (chains.push(names), names))
        },
        settle: () => Effect.succeed("done" as const),
        gate: Effect.succeed("open"),
        drop: () => Effect.void,
        chain: 2
      })
      yield* lanes.offer("a", "a1")
      yield* Effect.yieldNow
      yield* Effect.forEach(["a2", "a3", "a4"], (name) => lanes.offer("a", name), { discard: true })
      yield* Deferred.succeed(start, undefined)
      yield* lanes.idle
      assert.deepStrictEqual(chains, [["a1"], ["a2", "a3"], ["a4"]])
    }))

  it.effect("messages of the key that arrive while its chain waits to be taken up join it", () =>
    Effect.gen(function*() {
      const chains: Array<ReadonlyArray<string>> = []
      const start = yield* Deferred.make<void>()
      const lanes = yield* makeLanes<string, string, never>({
        // Read once the applier takes the chain up (a group commit, when its group starts).
        apply: (waiting) =>
          Effect.map(Deferred.await(start), () => {
            const names = waiting()
            chains.push(names)
            return names
          }),
        settle: () => Effect.succeed("done" as const),
        gate: Effect.succeed("open"),
        drop: () => Effect.void,
        chain: 3
      })
      yield* lanes.offer("a", "a1")
      yield* Effect.yieldNow
      yield* Effect.forEach(["a2", "a3", "a4"], (name) => lanes.offer("a", name), { discard: true })
      yield* Deferred.succeed(start, undefined)
      yield* lanes.idle
      assert.deepStrictEqual(chains, [["a1", "a2", "a3"], ["a4"]])
    }))
})
