import { assert, it } from "@effect/vitest"
import { Cause, Effect, Exit, Schema } from "effect"
import type { InventoryErrorTag } from "../../src/domain/errors.ts"
import { InboundEvent, type InboundEventType } from "../../src/domain/events.ts"
import * as catalog from "../../src/handlers/catalog.ts"
import { handleEvent } from "../../src/handlers/dispatch.ts"
import { orderCancelled } from "../../src/handlers/orders/cancelled.ts"
import { orderConfirmed } from "../../src/handlers/orders/confirmed.ts"
import { orderPlaced } from "../../src/handlers/orders/placed.ts"
import { orderShipped } from "../../src/handlers/orders/shipped.ts"
import * as returns from "../../src/handlers/returns.ts"
import { UnitOfWork } from "../../src/stores/services.ts"
import { Scenario } from "./model/commands.ts"
import { runModel } from "./model/property.ts"
import { noRetries } from "../support/events.ts"
import { memoryLayer } from "../support/memory.ts"

type ErrorTags<F extends (...args: any) => Effect.Effect<any, any, any>> = Effect.Error<ReturnType<F>>["_tag"]
type Equals<A, B> = [A] extends [B] ? ([B] extends [A] ? true : false) : false

/** What each handler declares it can fail with. */
const declared = {
  "catalog.variant.created": ["DuplicateRecord", "DatabaseError"],
  "catalog.variant.updated": ["StockNotZero", "DatabaseError"],
  "catalog.variant.deleted": ["StockNotZero", "DatabaseError"],
  "catalog.product.deleted": ["StockNotZero", "DatabaseError"],
  "order.placed": ["InsufficientStock", "DatabaseError"],
  "order.confirmed": ["ReservationNotFound", "InsufficientStock", "DatabaseError"],
  "order.cancelled": ["DatabaseError"],
  "order.shipped": ["ReservationNotFound", "ValidationError", "InsufficientStock", "DatabaseError"],
  "return.received": ["ValidationError", "DatabaseError"]
} as const satisfies { readonly [K in InboundEventType]: ReadonlyArray<InventoryErrorTag> }

// The table above is the handlers' error channels, checked by the compiler in both directions.
type Declared<K extends InboundEventType> = (typeof declared)[K][number]
const signatures: {
  readonly [K in InboundEventType]: true
} = {
  "catalog.variant.created": true satisfies Equals<ErrorTags<typeof catalog.variantCreated>, Declared<"catalog.variant.created">>,
  "catalog.variant.updated": true satisfies Equals<ErrorTags<typeof catalog.variantUpdated>, Declared<"catalog.variant.updated">>,
  "catalog.variant.deleted": true satisfies Equals<ErrorTags<typeof catalog.variantDeleted>, Declared<"catalog.variant.deleted">>,
  "catalog.product.deleted": true satisfies Equals<ErrorTags<typeof catalog.productDeleted>, Declared<"catalog.product.deleted">>,
  "order.placed": true satisfies Equals<ErrorTags<typeof orderPlaced>, Declared<"order.placed">>,
  "order.confirmed": true satisfies Equals<ErrorTags<typeof orderConfirmed>, Declared<"order.confirmed">>,
  "order.cancelled": true satisfies Equals<ErrorTags<typeof orderCancelled>, Declared<"order.cancelled">>,
  "order.shipped": true satisfies Equals<ErrorTags<typeof orderShipped>, Declared<"order.shipped">>,
  "return.received": true satisfies Equals<ErrorTags<typeof returns.returnReceived>, Declared<"return.received">>
}

/**
 * Folds the generated ids into the model's small universe, so generated events meet the state
 * the scenario built (same variants, warehouses, orders) instead of always missing it.
 */
const universe: Record<string, ReadonlyArray<string>> = {
  organization_id: ["org_a", "org_b"],
  variant_id: ["v1", "v2", "v3"],
  warehouse_id: ["w1", "w2", "w3"],
  preferred_warehouse_id: ["w1", "w2", "w3"],
  order_id: ["o1", "o2", "o3", "o4"]
}
const fold = (value: unknown, key = ""): unknown => {
  if (Array.isArray(value)) return value.map((v) => fold(v, key === "variant_ids" ? "variant_id" : key))
  if (typeof value === "object" && value !== null) {
    return Object.fromEntries(Object.entries(value).map(([k, v]) => [k, fold(v, k)]))
  }
  const choices = universe[key]
  if (typeof value === "string" && choices !== undefined) {
    let h = 0
    for (const c of value) h = (h * 31 + c.charCodeAt(0)) >>> 0
    return choices[h % choices.length]
  }
  return value
}

const decode = Schema.decodeUnknownSync(InboundEvent)
let run = 0

it.effect.prop(
  "for any event and store state, a handler succeeds or fails with a tag it declares, never a defect",
  [Scenario, Schema.Array(InboundEvent)],
  ([scenario, generated]) =>
    noRetries(Effect.gen(function*() {
      assert.isTrue(Object.values(signatures).every(Boolean))
      yield* runModel(scenario, `typed${run++}`)
      const uow = yield* UnitOfWork
      for (const [i, raw] of generated.entries()) {
        const event = decode(fold(Schema.encodeSync(InboundEvent)(raw)))
        const exit = yield* Effect.exit(uow.transaction(handleEvent(event, `gen-${run}-${i}`)))
        if (Exit.isSuccess(exit)) continue
        assert.isFalse(Cause.hasDies(exit.cause), `${event.event} died: ${Cause.pretty(exit.cause)}`)
        for (const reason of exit.cause.reasons) {
          if (!Cause.isFailReason(reason)) continue
          const allowed: ReadonlyArray<string> = declared[event.event]
          assert.include(allowed, reason.error._tag, `${event.event} failed with ${reason.error._tag}`)
        }
      }
    })).pipe(Effect.provide(memoryLayer)),
  { timeout: 120_000, arbitrary: { runs: 200, size: 20 } }
)
