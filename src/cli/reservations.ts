import { Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import type { Reservation, ReservationItem, ReservationStatus } from "../stores/model.ts"
import { Reservations } from "../stores/services.ts"
import { Database } from "./environment.ts"
import * as Flags from "./flags.ts"
import { iso, minute, print, renderTable, shortId } from "./output.ts"

/** `inventory reservations list`. */

const statuses: ReadonlyArray<ReservationStatus> = ["active", "confirmed", "cancelled", "expired", "fulfilled"]

export interface ReservationJson {
  readonly organization_id: string
  readonly reservation_id: string
  readonly order_id: string
  readonly status: ReservationStatus
  readonly items: ReadonlyArray<ReservationItem>
  readonly expires_at: string | null
  readonly created_at: string
  readonly closed_reason: string | null
}

export const reservationJson = (r: Reservation): ReservationJson => ({
  organization_id: r.organization_id,
  reservation_id: r.reservation_id,
  order_id: r.order_id,
  status: r.status,
  items: r.items.map((i) => ({ variant_id: i.variant_id, warehouse_id: i.warehouse_id, quantity: i.quantity })),
  expires_at: iso(r.expires_at),
  created_at: r.created_at.toISOString(),
  closed_reason: r.closed_reason
})

const list = Command.make(
  "list",
  {
    org: Flags.organization,
    order: Flags.id("order", "Only this order").pipe(Flag.optional),
    status: Flag.Literals("status", statuses).pipe(Flag.withDescription("Only this status"), Flag.optional),
    json: Flags.json,
    wide: Flags.wide
  },
  ({ org, order, status, json, wide }) =>
    Effect.gen(function*() {
      const rows = yield* (yield* Reservations).list({
        organization_id: org,
        ...Option.match(order, { onNone: () => ({}), onSome: (order_id) => ({ order_id }) }),
        ...Option.match(status, { onNone: () => ({}), onSome: (s) => ({ status: s }) })
      })
      const items = (r: Reservation) => r.items.map((i) => `${i.variant_id}@${i.warehouse_id}x${i.quantity}`).join(", ")
      yield* print(json, rows, reservationJson, () =>
        renderTable(rows, wide
          ? [
            { header: "RESERVATION", value: (r) => r.reservation_id },
            { header: "ORDER", value: (r) => r.order_id },
            { header: "STATUS", value: (r) => r.status },
            { header: "ITEMS", value: items },
            { header: "EXPIRES_AT", value: (r) => iso(r.expires_at) },
            { header: "CREATED_AT", value: (r) => r.created_at.toISOString() }
          ]
          // Fits 120 columns: 8+24+9+16+16 and 5 gaps = 83, the items in the rest.
          : [
            { header: "RESERVATION", value: (r) => shortId(r.reservation_id) },
            { header: "ORDER", value: (r) => r.order_id, max: 24 },
            { header: "STATUS", value: (r) => r.status },
            { header: "EXPIRES_AT", value: (r) => minute(r.expires_at) },
            { header: "CREATED_AT", value: (r) => minute(r.created_at) },
            { header: "ITEMS", value: items, fill: true }
          ], `No reservations in ${org} for this filter.`))
    })
).pipe(
  Command.withDescription("List reservations of an organization, newest first"),
  Command.withExamples([{ command: "inventory reservations list --org acme --status active", description: "Live reservations" }]),
  Command.provide(Database)
)

export const reservations = Command.make("reservations").pipe(
  Command.withDescription("Look at reservations"),
  Command.withSubcommands([list])
)
