import { assert, describe, it } from "@effect/vitest"
import { Deferred, Duration, Effect, Exit, Fiber } from "effect"
import { TestClock } from "effect/testing"
import { answeredWithin } from "../../src/stores/sql/client.ts"

/**
 * The deadline every unit of work and relay statement runs under (`answeredWithin`), on the
 * Effect clock: what it answers, and what becomes of the work it stops waiting for.
 */
describe("answeredWithin", () => {
  const timedOut = Effect.fail("no answer" as const)

  it.effect("passes the effect's own success and failure through, before the deadline", () =>
    Effect.gen(function*() {
      assert.strictEqual(yield* answeredWithin(Effect.succeed(1), Duration.seconds(1), timedOut), 1)
      const later = answeredWithin(Effect.as(Effect.sleep("100 millis"), 2), Duration.seconds(1), timedOut)
      const fiber = yield* Effect.forkChild(later)
      yield* TestClock.adjust("100 millis")
      assert.strictEqual(yield* Fiber.join(fiber), 2)
      const failed = yield* Effect.exit(answeredWithin(Effect.andThen(Effect.sleep("10 millis"), Effect.fail("boom")), Duration.seconds(1), timedOut).pipe(
        Effect.forkChild,
        Effect.tap(() => TestClock.adjust("10 millis")),
        Effect.flatMap(Fiber.join)
      ))
      assert.deepStrictEqual(failed, Exit.fail("boom"))
    }))

  it.effect("answers at the deadline while the work cannot be interrupted, and interrupts it once it can be", () =>
    Effect.gen(function*() {
      const release = yield* Deferred.make<void>()
      const ended = yield* Deferred.make<Exit.Exit<void>>()
      // As a COMMIT sent down a dead path: uninterruptible until its answer, which does not come.
      const stuck = Effect.uninterruptible(Deferred.await(release)).pipe(
        Effect.andThen(Effect.never),
        Effect.onExit((exit) => Deferred.succeed(ended, Exit.asVoid(exit)))
      )
      const fiber = yield* Effect.forkChild(Effect.exit(answeredWithin(stuck, Duration.seconds(5), timedOut)))
      yield* TestClock.adjust("4999 millis")
      assert.isUndefined(fiber.pollUnsafe(), "no answer before the deadline")
      yield* TestClock.adjust("1 millis")
      assert.deepStrictEqual(yield* Fiber.join(fiber), Exit.fail("no answer"))
      assert.isFalse(yield* Deferred.isDone(ended), "still in its uninterruptible region")
      yield* Deferred.succeed(release, undefined)
      assert.isTrue(Exit.hasInterrupts(yield* Deferred.await(ended)), "interrupted once it could be")
    }))

  it.effect("interrupted by its caller, it interrupts the work without waiting for it", () =>
    Effect.gen(function*() {
      const started = yield* Deferred.make<void>()
      const ended = yield* Deferred.make<Exit.Exit<void>>()
      const work = Deferred.succeed(started, undefined).pipe(
        Effect.andThen(Effect.never),
        Effect.onExit((exit) => Deferred.succeed(ended, Exit.asVoid(exit)))
      )
      const fiber = yield* Effect.forkChild(answeredWithin(work, Duration.hours(1), timedOut))
      yield* Deferred.await(started)
      yield* Fiber.interrupt(fiber)
      assert.isTrue(Exit.hasInterrupts(yield* Deferred.await(ended)))
    }))
})
