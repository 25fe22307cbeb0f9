import { assert, describe, it } from "@effect/vitest"
import { Effect } from "effect"
import { awaitsPredecessor, fates } from "../../src/domain/fates.ts"
import { inboundEventTypes } from "../../src/domain/events.ts"
import type { InventoryErrorTag } from "../../src/domain/errors.ts"
import { afterDeadLetter, returnsToQueue, Trace, verdict, Verdict } from "../../src/messaging/settlement.ts"
import { decodeDelivery } from "../../src/pipeline/decode.ts"
import { type Failure, Outcome } from "../../src/pipeline/pipeline.ts"
import { envelopeBytes, freshOrg } from "../support/events.ts"

const decodedEvent = decodeDelivery({
  body: envelopeBytes(freshOrg(), "order.cancelled", { order_id: "o1" }, "e1"),
  deliveryCount: 1,
  queue: "test",
  accepts: inboundEventTypes
})

const failure = (errorType: Failure["errorType"]): Failure => ({ errorType, message: "failed" })

describe("what the broker is told", () => {
  it.effect("acks applied and duplicate events; only an applied one wakes the relay", () =>
    Effect.gen(function*() {
      const decoded = yield* decodedEvent
      assert.deepStrictEqual(
        verdict(Outcome.Ack({ decoded }), true),
        Verdict.Settle({ told: { how: "ack", pause: false, trace: Trace.Finished(), nudgeRelay: true, returned: undefined } })
      )
      assert.deepStrictEqual(
        verdict(Outcome.Duplicate({ decoded }), true),
        Verdict.Settle({ told: { how: "ack", pause: false, trace: Trace.Finished(), nudgeRelay: false, returned: undefined } })
      )
    }))

  it.effect("a failure that may await its key's predecessor defers when it can, by the fate table alone", () =>
    Effect.gen(function*() {
      const decoded = yield* decodedEvent
      for (const tag of Object.keys(fates) as Array<InventoryErrorTag>) {
        if (fates[tag] === "dead_letter") continue
        const retry = Outcome.Retry({ decoded, failure: failure(tag), pause: fates[tag] === "retry_until_healthy" })
        assert.strictEqual(verdict(retry, true)._tag, awaitsPredecessor[tag] ? "Defer" : "Settle", tag)
        assert.strictEqual(verdict(retry, false)._tag, "Settle", tag)
      }
      assert.strictEqual(verdict(Outcome.Retry({ decoded, failure: failure("Defect"), pause: false }), true)._tag, "Settle")
    }))

  it.effect("a retry counts (reject) unless the database is down, which requeues uncounted and pauses", () =>
    Effect.gen(function*() {
      const decoded = yield* decodedEvent
      assert.deepStrictEqual(
        verdict(Outcome.Retry({ decoded, failure: failure("ReservationNotFound"), pause: false }), false),
        Verdict.Settle({ told: { how: "retry", pause: false, trace: Trace.Finished(), nudgeRelay: false, returned: failure("ReservationNotFound") } })
      )
      assert.deepStrictEqual(
        verdict(Outcome.Retry({ decoded, failure: failure("DatabaseError"), pause: true }), true),
        Verdict.Settle({ told: { how: "requeue", pause: true, trace: Trace.Finished(), nudgeRelay: false, returned: failure("DatabaseError") } })
      )
    }))

  it("a dead letter goes through the dead-letter path first; its result decides the settlement", () => {
    const why = failure("InsufficientStock")
    assert.deepStrictEqual(verdict(Outcome.DeadLetter({ decoded: null, failure: why }), true), Verdict.DeadLetter({ failure: why }))
    assert.deepStrictEqual(afterDeadLetter({ _tag: "DeadLettered", parked: false }, why), {
      how: "ack", pause: false, trace: Trace.Finished(), nudgeRelay: false, returned: undefined
    })
    const unavailable = afterDeadLetter({ _tag: "StoreUnavailable" }, why)
    assert.deepStrictEqual([unavailable.how, unavailable.pause], ["requeue", true])
    assert.deepStrictEqual(unavailable.trace, Trace.Abandoned({ reason: "dead-lettering waits for the database (InsufficientStock)" }))
    const unconfirmed = afterDeadLetter({ _tag: "CopyUnconfirmed" }, why)
    assert.deepStrictEqual([unconfirmed.how, unconfirmed.pause], ["retry", false])
    const unrecordable = afterDeadLetter({ _tag: "Unrecordable" }, why)
    assert.deepStrictEqual([unrecordable.how, unrecordable.pause], ["reject", false])
    assert.deepStrictEqual([unavailable, unconfirmed, unrecordable].map((t) => returnsToQueue(t.how)), [true, true, false])
  })
})
