import { Schema } from "effect"

/**
 * What the model-based test does to the consumer: events of every consumed type over a few
 * organizations, variants, warehouses and orders, operator stock, clock advances and
 * redeliveries. Generated from these schemas (effect/Arbitrary), shrunk on failure.
 */

const between = (minimum: number, maximum: number) =>
  Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))

export const orgs = ["org_a", "org_b"] as const
export const variants = ["v1", "v2", "v3"] as const
export const warehouses = ["w1", "w2", "w3"] as const
/** w3 exists but is inactive: it may hold stock (returns) but is never reserved from. */
export const activeWarehouses = ["w1", "w2"] as const

const Org = Schema.Literals(orgs)
const Variant = Schema.Literals(variants)
const Warehouse = Schema.Literals(warehouses)
const Order = Schema.Literals(["o1", "o2", "o3", "o4"])

export const Command = Schema.Union([
  Schema.TaggedStruct("Stock", { org: Org, variant: Variant, warehouse: Warehouse, quantity: between(1, 10) }),
  Schema.TaggedStruct("VariantCreated", { org: Org, variant: Variant }),
  Schema.TaggedStruct("VariantUpdated", { org: Org, variant: Variant, track: Schema.Boolean }),
  Schema.TaggedStruct("VariantDeleted", { org: Org, variant: Variant }),
  Schema.TaggedStruct("ProductDeleted", {
    org: Org,
    variants: Schema.Array(Variant).pipe(Schema.check(Schema.isBetweenLength(1, 3)))
  }),
  Schema.TaggedStruct("Place", {
    org: Org,
    order: Order,
    lines: Schema.Array(Schema.Struct({ variant: Variant, quantity: between(1, 5), preferred: Schema.NullOr(Warehouse) })).pipe(
      Schema.check(Schema.isBetweenLength(1, 3))
    ),
    ttl: between(1, 30)
  }),
  Schema.TaggedStruct("Confirm", { org: Org, order: Order }),
  Schema.TaggedStruct("Cancel", { org: Org, order: Order }),
  /** Ships what the order holds at that moment: 0 all of it, 1 part of the first line, 2 one unit too many. */
  Schema.TaggedStruct("Ship", { org: Org, order: Order, part: between(0, 2) }),
  Schema.TaggedStruct("Return", {
    org: Org,
    order: Order,
    lines: Schema.Array(Schema.Struct({ variant: Variant, warehouse: Warehouse, quantity: between(1, 3), good: Schema.Boolean })).pipe(
      Schema.check(Schema.isBetweenLength(1, 2))
    )
  }),
  Schema.TaggedStruct("Advance", { minutes: between(1, 40) }),
  /** The same message again (same bytes, same event_id), sent `back` messages ago. */
  Schema.TaggedStruct("Redeliver", { back: between(1, 6) })
])
export type Command = typeof Command.Type

export const Commands = Schema.Array(Command).pipe(Schema.check(Schema.isBetweenLength(1, 40)))

/** A run: units on hand in every active warehouse to start with, then the commands. */
export const Scenario = Schema.Struct({ initialStock: between(0, 10), commands: Commands })
export type Scenario = typeof Scenario.Type
