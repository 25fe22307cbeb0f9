import { Console, Effect } from "effect"
import { Command } from "effect/cli"
import type { Warehouse } from "../stores/model.ts"
import { Warehouses } from "../stores/services.ts"
import { Database } from "./environment.ts"
import * as Flags from "./flags.ts"
import { failure, print, renderTable } from "./output.ts"

/** `inventory warehouse add|list|deactivate`: only active warehouses get rows on `catalog.variant.created`. */

export interface WarehouseJson {
  readonly organization_id: string
  readonly warehouse_id: string
  readonly name: string
  readonly active: boolean
}

export const warehouseJson = (w: Warehouse): WarehouseJson => ({
  organization_id: w.organization_id,
  warehouse_id: w.warehouse_id,
  name: w.name,
  active: w.active
})

const add = Command.make(
  "add",
  {
    org: Flags.organization,
    id: Flags.id("id", "Warehouse id"),
    name: Flags.text("name", "Display name")
  },
  ({ org, id, name }) =>
    Effect.gen(function*() {
      yield* (yield* Warehouses).upsert({ organization_id: org, warehouse_id: id, name, active: true })
      yield* Console.log(`Warehouse ${id} (${name}) of ${org} is active.`)
    })
).pipe(
  Command.withDescription("Add a warehouse, active (an existing one is renamed and reactivated)"),
  Command.withExamples([{ command: "inventory warehouse add --org acme --id wh-1 --name \"Main\"", description: "Add a warehouse" }]),
  Command.provide(Database)
)

const list = Command.make(
  "list",
  { org: Flags.organization, json: Flags.json },
  ({ org, json }) =>
    Effect.gen(function*() {
      const rows = yield* (yield* Warehouses).list(org)
      yield* print(json, rows, warehouseJson, () =>
        renderTable(rows, [
          { header: "WAREHOUSE", value: (w) => w.warehouse_id },
          { header: "NAME", value: (w) => w.name },
          { header: "ACTIVE", value: (w) => (w.active ? "yes" : "no") }
        ], `No warehouses in ${org}.`))
    })
).pipe(
  Command.withDescription("List the organization's warehouses"),
  Command.provide(Database)
)

const deactivate = Command.make(
  "deactivate",
  { org: Flags.organization, id: Flags.id("id", "Warehouse id") },
  ({ org, id }) =>
    Effect.gen(function*() {
      const found = yield* (yield* Warehouses).setActive(org, id, false)
      if (!found) return yield* failure(`No warehouse ${id} in organization ${org}.`)
      yield* Console.log(`Warehouse ${id} of ${org} is inactive: new variants get no stock row there, orders are not served from it.`)
    })
).pipe(
  Command.withDescription("Deactivate a warehouse (its rows stay; it no longer serves orders or gets new variants)"),
  Command.provide(Database)
)

export const warehouse = Command.make("warehouse").pipe(
  Command.withDescription("Set up warehouses"),
  Command.withSubcommands([add, list, deactivate])
)
