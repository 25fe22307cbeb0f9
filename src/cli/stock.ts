import { randomUUID } from "node:crypto"
import { Console, Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { adjustStock } from "../handlers/returns.ts"
import type { Movement, StockRow } from "../stores/model.ts"
import { Stock, UnitOfWork, Warehouses } from "../stores/services.ts"
import { Database } from "./environment.ts"
import * as Flags from "./flags.ts"
import { failure, iso, print, printJson, renderTable, usage } from "./output.ts"

/** `inventory stock show|adjust`. */

export interface StockJson {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  readonly total: number
  readonly available: number
  readonly reserved: number
  readonly damaged: number
  readonly in_transit: number
  readonly min_stock: number
  readonly max_stock: number
  readonly archived: boolean
}

export const stockJson = (row: StockRow): StockJson => ({
  organization_id: row.organization_id,
  variant_id: row.variant_id,
  warehouse_id: row.warehouse_id,
  total: row.total,
  available: row.available,
  reserved: row.reserved,
  damaged: row.damaged,
  in_transit: row.in_transit,
  min_stock: row.min_stock,
  max_stock: row.max_stock,
  archived: row.archived_at !== null
})

export const stockTable = (rows: ReadonlyArray<StockRow>, empty: string) =>
  renderTable(rows, [
    { header: "VARIANT", value: (r) => r.variant_id },
    { header: "WAREHOUSE", value: (r) => r.warehouse_id },
    { header: "TOTAL", value: (r) => r.total, align: "right" },
    { header: "AVAILABLE", value: (r) => r.available, align: "right" },
    { header: "RESERVED", value: (r) => r.reserved, align: "right" },
    { header: "DAMAGED", value: (r) => r.damaged, align: "right" },
    { header: "IN_TRANSIT", value: (r) => r.in_transit, align: "right" },
    { header: "MIN", value: (r) => r.min_stock, align: "right" },
    { header: "MAX", value: (r) => r.max_stock, align: "right" },
    { header: "ARCHIVED", value: (r) => (r.archived_at === null ? "no" : "yes") }
  ], empty)

const show = Command.make(
  "show",
  {
    org: Flags.organization,
    variant: Flags.id("variant", "Only this variant").pipe(Flag.optional),
    warehouse: Flags.id("warehouse", "Only this warehouse").pipe(Flag.optional),
    json: Flags.json
  },
  ({ org, variant, warehouse, json }) =>
    Effect.gen(function*() {
      const rows = yield* (yield* Stock).list({
        organization_id: org,
        ...Option.match(variant, { onNone: () => ({}), onSome: (variant_id) => ({ variant_id }) }),
        ...Option.match(warehouse, { onNone: () => ({}), onSome: (warehouse_id) => ({ warehouse_id }) })
      })
      yield* print(json, rows, stockJson, () => stockTable(rows, `No stock rows in ${org} for this filter.`))
    })
).pipe(
  Command.withDescription("Show stock rows (archived ones included) of an organization"),
  Command.withExamples([{ command: "inventory stock show --org acme --variant v-1 --json", description: "One variant, as JSON" }]),
  Command.provide(Database)
)

export interface AdjustmentJson {
  readonly movement_id: string
  readonly movement_type: "in" | "out"
  readonly quantity_change: number
  readonly quantity_before: number
  readonly quantity_after: number
  readonly category: "available" | "damaged"
  readonly reason: string
  readonly reference_id: string | null
  readonly created_at: string | null
  readonly stock: StockJson
}

const adjustmentJson = (movement: Movement, after: StockRow): AdjustmentJson => ({
  movement_id: movement.movement_id,
  movement_type: movement.movement_type,
  quantity_change: movement.quantity_change,
  quantity_before: movement.quantity_before,
  quantity_after: movement.quantity_after,
  category: movement.category,
  reason: movement.reason,
  reference_id: movement.reference_id,
  created_at: iso(movement.created_at),
  stock: stockJson(after)
})

const adjust = Command.make(
  "adjust",
  {
    org: Flags.organization,
    variant: Flags.id("variant", "Variant id"),
    warehouse: Flags.id("warehouse", "Warehouse id (must exist in the organization)"),
    delta: Flag.Int("delta").pipe(Flag.withDescription("Signed whole number: +N puts stock in, -N takes it out")),
    reason: Flags.text("reason", "Why (kept on the movement)"),
    category: Flag.Literals("category", ["available", "damaged"]).pipe(
      Flag.withDescription("Which quantity changes (with total)"),
      Flag.withDefault("available" as const)
    ),
    reference: Flags.id("reference", "Reference kept on the movement (default: a new unique one)").pipe(Flag.optional),
    json: Flags.json
  },
  ({ org, variant, warehouse, delta, reason, category, reference, json }) =>
    Effect.gen(function*() {
      if (delta === 0 || !Number.isSafeInteger(delta)) return yield* usage("--delta must be a non-zero whole number")
      const known = yield* (yield* Warehouses).list(org)
      if (!known.some((w) => w.warehouse_id === warehouse)) {
        return yield* failure(`No warehouse ${warehouse} in organization ${org}; add it first with "inventory warehouse add".`)
      }
      const ref = Option.getOrElse(reference, () => `cli-adjust-${randomUUID()}`)
      const key = { organization_id: org, variant_id: variant, warehouse_id: warehouse }
      const uow = yield* UnitOfWork
      const { after, movement } = yield* uow.transaction(adjustStock(key, delta, category, reason, ref))
      if (json) return yield* printJson(adjustmentJson(movement, after))
      yield* Console.log(
        `Adjusted ${variant}@${warehouse} (${org}) by ${delta > 0 ? "+" : ""}${delta} ${category}: movement ${movement.movement_type} ${movement.movement_id}, reference ${ref}.`
      )
      yield* Console.log(stockTable([after], ""))
    }).pipe(
      // The refusal (a quantity would go below zero) is a one-line answer, not a crash.
      Effect.catchTag("ValidationError", (error) => Effect.fail(failure(error.message)))
    )
).pipe(
  Command.withDescription(
    "Adjust stock by a signed delta, written as an in/out movement with reason and reference; refused if a quantity would go below zero"
  ),
  Command.withExamples([
    { command: "inventory stock adjust --org acme --variant v-1 --warehouse wh-1 --delta 50 --reason \"initial count\"", description: "Put 50 units in" },
    { command: "inventory stock adjust --org acme --variant v-1 --warehouse wh-1 --delta -2 --reason breakage", description: "Take 2 out" }
  ]),
  Command.provide(Database)
)

export const stock = Command.make("stock").pipe(
  Command.withDescription("Look at and adjust stock rows"),
  Command.withSubcommands([show, adjust])
)

