import { assert, describe, it } from "@effect/vitest"
import { deriveId } from "../../src/domain/ids.ts"

/**
 * Derived ids must not change between releases: an event redelivered across an upgrade has to
 * produce the ids its first attempt wrote (event log, movements, outbound `event_id`s), or
 * downstream consumers see a second announcement. These values were computed by the first
 * implementation (one SHA-256 `update` per length-prefixed part).
 */
describe("deriveId", () => {
  it("gives the ids it always gave", () => {
    assert.strictEqual(deriveId("org-1", "outbound", "e-1", "{\"a\":1}"), "ca4d2c54-a584-8c9e-9614-80a556c2a2c3")
    assert.strictEqual(deriveId("org-ü", "movement", "évènement", "v1", "w1"), "1e6b158f-6918-8c73-9160-f4eb0afbadeb")
    assert.strictEqual(deriveId("o", "k"), "64899052-871d-8a74-a817-b81e18d95f39")
  })

  it("is UUID-shaped, version 8, RFC 9562 variant", () => {
    for (const id of [deriveId("o", "k"), deriveId("org", "reservation", "x".repeat(1_000))]) {
      assert.match(id, /^[0-9a-f]{8}-[0-9a-f]{4}-8[0-9a-f]{3}-[89ab][0-9a-f]{3}-[0-9a-f]{12}$/)
    }
  })

  it("keeps parts apart: moving a boundary gives another id", () => {
    assert.notStrictEqual(deriveId("o", "k", "ab", "c"), deriveId("o", "k", "a", "bc"))
    assert.notStrictEqual(deriveId("o", "k", "a;1:b"), deriveId("o", "k", "a", "b"))
  })
})
