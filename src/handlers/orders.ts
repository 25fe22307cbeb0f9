import { Duration, Effect, Option, Result } from "effect"
import { InsufficientStock, ReservationNotFound, ValidationError } from "../domain/errors.ts"
import type { OrderCancelled, OrderConfirmed, OrderPlaced, OrderShipped } from "../domain/events.ts"
import { deriveId } from "../domain/ids.ts"
import type { OutboundDraft } from "../domain/published.ts"
import { ReservationTimers } from "../stores/services.ts"
import {
  compareStockKeys,
  liveStatuses,
  type Movement,
  type OutboxMessage,
  type Reservation,
  type ReservationItem,
  type ReservationStatus,
  type StockKey,
  stockKeyString,
  type StockRow
} from "../stores/model.ts"
import { type EventRef, EventLog, Movements, Outbox, Reservations, Stock, type StockLine, UnitOfWork } from "../stores/services.ts"
import { type Causation, emit, nowDate, outboxMessages } from "./outbound.ts"

export const DEFAULT_RESERVATION_TTL_MINUTES = 15

interface Demand {
  readonly variant_id: string
  readonly quantity: number
  readonly preferred_warehouse_id: string | null
}

/** Lines naming the same variant are checked against their summed quantity (I6). */
const sumByVariant = (
  lines: ReadonlyArray<{ readonly variant_id: string; readonly quantity: number; readonly preferred_warehouse_id?: string | null | undefined }>
): ReadonlyArray<Demand> => {
  const byVariant = new Map<string, Demand>()
  for (const line of lines) {
    const seen = byVariant.get(line.variant_id)
    byVariant.set(line.variant_id, {
      variant_id: line.variant_id,
      quantity: (seen?.quantity ?? 0) + line.quantity,
      preferred_warehouse_id: seen?.preferred_warehouse_id ?? line.preferred_warehouse_id ?? null
    })
  }
  return [...byVariant.values()].sort((a, b) => (a.variant_id < b.variant_id ? -1 : a.variant_id > b.variant_id ? 1 : 0))
}

const keyOf = (organizationId: string, item: ReservationItem): StockKey => ({
  organization_id: organizationId,
  variant_id: item.variant_id,
  warehouse_id: item.warehouse_id
})

const sortedItems = (organizationId: string, items: ReadonlyArray<ReservationItem>) =>
  [...items].sort((a, b) => compareStockKeys(keyOf(organizationId, a), keyOf(organizationId, b)))

/**
 * Where each demand is served from (SPEC 4): the preferred warehouse if it can serve the whole
 * quantity, else the usable warehouse with the most available stock that can. `rows` are the
 * organization's usable rows of the demanded variants as they stand (`Stock.candidates`: not
 * archived, in an active warehouse); nothing is written here.
 */
export const allocate = (
  organizationId: string,
  orderId: string,
  demands: ReadonlyArray<Demand>,
  rows: ReadonlyArray<StockRow>
): Result.Result<Array<ReservationItem>, InsufficientStock> => {
  const items: Array<ReservationItem> = []
  for (const demand of demands) {
    const candidates = rows.filter((row) => row.variant_id === demand.variant_id)
    const preferred = candidates.find((row) => row.warehouse_id === demand.preferred_warehouse_id && row.available >= demand.quantity)
    const best = preferred ?? candidates
      .filter((row) => row.available >= demand.quantity)
      .reduce<StockRow | undefined>((acc, row) => (acc === undefined || row.available > acc.available ? row : acc), undefined)
    if (best === undefined) {
      return Result.fail(new InsufficientStock({
        organization_id: organizationId,
        order_id: orderId,
        variant_id: demand.variant_id,
        requested: demand.quantity,
        available: candidates.reduce((max, row) => Math.max(max, row.available), 0)
      }))
    }
    items.push({ variant_id: demand.variant_id, warehouse_id: best.warehouse_id, quantity: demand.quantity })
  }
  return Result.succeed(items)
}

/**
 * Reserves every demand, all or nothing. Rows are locked in key order, and each decrement is
 * conditional, so racing consumers can never both take the last unit.
 */
const reserveDemands = Effect.fnUntraced(function*(
  organizationId: string,
  orderId: string,
  demands: ReadonlyArray<Demand>
) {
  const stock = yield* Stock
  const rows = yield* stock.candidates(organizationId, demands.map((d) => d.variant_id))
  const items = yield* Effect.fromResult(allocate(organizationId, orderId, demands, rows))
  for (const item of sortedItems(organizationId, items)) {
    const reserved = yield* stock.reserve(keyOf(organizationId, item), item.quantity)
    if (Option.isNone(reserved)) {
      const row = rows.find((r) => r.variant_id === item.variant_id && r.warehouse_id === item.warehouse_id)
      return yield* new InsufficientStock({
        organization_id: organizationId,
        order_id: orderId,
        variant_id: item.variant_id,
        requested: item.quantity,
        available: row?.available ?? 0
      })
    }
  }
  return items
})

/** Gives a reservation's items back to available and moves it out of the live states, once (I5). */
export const releaseReservation = Effect.fnUntraced(function*(
  reservation: Reservation,
  to: Extract<ReservationStatus, "cancelled" | "expired">,
  reason: string,
  cause: Causation
) {
  const moved = yield* (yield* Reservations).transition(
    reservation.organization_id,
    reservation.reservation_id,
    liveStatuses,
    to,
    reason
  )
  if (!moved) return false
  const stock = yield* Stock
  for (const item of sortedItems(reservation.organization_id, reservation.items)) {
    yield* stock.release(keyOf(reservation.organization_id, item), item.quantity)
  }
  yield* emit(cause, `order/${reservation.order_id}`, [{
    event: "inventory.stock.released",
    data: {
      reservation_id: reservation.reservation_id,
      order_id: reservation.order_id,
      reason,
      items_released: reservation.items.length,
      items: reservation.items
    }
  }])
  return true
})

const cancelTimerAfterCommit = Effect.fnUntraced(function*(reservation: Reservation) {
  const timers = yield* ReservationTimers
  yield* (yield* UnitOfWork).afterCommit(timers.cancel(reservation.organization_id, reservation.reservation_id))
})

/**
 * The reservation an order event refers to: by `reservation_id` when it names one of this
 * order's, else the order's live reservation, else its newest.
 */
const findReservation = Effect.fnUntraced(function*(
  organizationId: string,
  orderId: string,
  reservationId: string | null | undefined
) {
  const reservations = yield* Reservations
  if (reservationId) {
    const byId = yield* reservations.findById(organizationId, reservationId)
    if (Option.isSome(byId) && byId.value.order_id === orderId) return byId
  }
  const all = yield* reservations.findByOrder(organizationId, orderId)
  return Option.fromNullishOr(all.find((r) => liveStatuses.includes(r.status)) ?? all[0])
})

const reservedDraft = (reservation: Reservation): OutboundDraft => ({
  event: "inventory.stock.reserved",
  data: {
    reservation_id: reservation.reservation_id,
    order_id: reservation.order_id,
    items: reservation.items,
    expires_at: reservation.expires_at === null ? null : reservation.expires_at.toISOString()
  }
})

const failedDraft = (orderId: string, error: InsufficientStock): OutboundDraft => ({
  event: "inventory.reservation.failed",
  data: {
    order_id: orderId,
    variant_id: error.variant_id,
    requested: error.requested,
    available: error.available,
    reason: "insufficient_stock"
  }
})

/** Writes a new reservation for the order, reserves its stock and announces it. */
const createReservation = Effect.fnUntraced(function*(
  cause: Causation,
  orderId: string,
  demands: ReadonlyArray<Demand>,
  status: "active" | "confirmed",
  expiresAt: Date | null
) {
  const org = cause.organization_id
  const items = yield* reserveDemands(org, orderId, demands)
  const reservation: Reservation = {
    organization_id: org,
    reservation_id: deriveId(org, "reservation", cause.event_id),
    order_id: orderId,
    status,
    items,
    expires_at: expiresAt,
    created_at: yield* nowDate,
    caused_by: cause.event_id,
    closed_reason: null
  }
  const inserted = yield* (yield* Reservations).insert(reservation)
  if (!inserted) {
    // The order lock makes this unreachable unless a second writer ignores it; refuse to double-reserve.
    return yield* Effect.die(new Error(`order ${orderId} gained a live reservation while locked`))
  }
  yield* emit(cause, `order/${orderId}`, [reservedDraft(reservation)])
  if (status === "active" && expiresAt !== null) {
    const timers = yield* ReservationTimers
    yield* (yield* UnitOfWork).afterCommit(
      timers.schedule({ organization_id: org, reservation_id: reservation.reservation_id, expires_at: expiresAt })
    )
  }
  return reservation
})

export const orderPlaced = Effect.fn("order.placed")(function*(event: OrderPlaced, eventId: string) {
  const org = event.organization_id
  const { data } = event
  yield* (yield* Reservations).lockOrder(org, data.order_id)
  const existing = yield* (yield* Reservations).findByOrder(org, data.order_id)
  if (existing.length > 0) {
    // A re-sent order, or one cancelled before it was placed: reserve nothing more.
    yield* Effect.logWarning("order already has a reservation; nothing reserved").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_status: existing[0]!.status })
    )
    return
  }
  const ttl = data.reservation_ttl_minutes ?? DEFAULT_RESERVATION_TTL_MINUTES
  const now = yield* nowDate
  const expiresAt = new Date(now.getTime() + Duration.toMillis(Duration.minutes(ttl)))
  yield* createReservation({ organization_id: org, event_id: eventId }, data.order_id, sumByVariant(data.items), "active", expiresAt)
})

/** One `order.placed` of a group applied together, and the trace its outbound messages join. */
export interface PlacedEvent {
  readonly event: OrderPlaced
  readonly eventId: string
  readonly traceparent: string | null
}

/** What became of one event of the group; `InsufficientStock` left only its announcement. */
export type PlacedResult = "applied" | "duplicate" | InsufficientStock

/**
 * Many `order.placed` in one unit of work, in a fixed handful of statements however many there
 * are (issue 8). It leaves what applying them one at a time, in the given order, would leave:
 * the same duplicates, the same warehouse choices (`allocate` on the locked rows, which are
 * updated in memory as each event takes its share), the same refusals. An event refused for
 * stock leaves only its `inventory.reservation.failed`, and is not recorded as processed, so a
 * replay can apply it; the others are unaffected. Locks are taken as everywhere else: orders
 * first, then stock rows in key order.
 */
export const orderPlacedAll = Effect.fn("order.placed")(function*(placed: ReadonlyArray<PlacedEvent>) {
  const log = yield* EventLog
  const reservations = yield* Reservations
  const stock = yield* Stock
  const now = yield* nowDate
  const first = yield* log.recordAll(placed.map((p) => ({
    organization_id: p.event.organization_id,
    event_id: p.eventId,
    event_type: "order.placed",
    processed_at: now
  })))
  const results: Array<PlacedResult> = placed.map(() => "duplicate")
  // An id recorded before is a duplicate. One repeated within the group is decided in its turn:
  // a duplicate if its earlier copy was applied, a new attempt if that was refused (a refused
  // event is not recorded).
  const tenantKey = (org: string, id: string) => `${org}\u0000${id}`
  const eventKey = (p: PlacedEvent) => tenantKey(p.event.organization_id, p.eventId)
  const recordedHere = new Set<string>()
  const fresh = placed.flatMap((p, i) => {
    if (first[i]) recordedHere.add(eventKey(p))
    return recordedHere.has(eventKey(p)) ? [{ p, i }] : []
  })
  const orders = fresh.map(({ p }) => ({ organization_id: p.event.organization_id, order_id: p.event.data.order_id }))
  yield* reservations.lockOrders(orders)
  const newest = new Map<string, ReservationStatus>()
  for (const r of yield* reservations.findByOrders(orders)) {
    if (!newest.has(tenantKey(r.organization_id, r.order_id))) newest.set(tenantKey(r.organization_id, r.order_id), r.status)
  }

  // The locked rows as they stand, by key and by (organization, variant).
  const rows = new Map<string, StockRow>()
  const rowKeysByVariant = new Map<string, Array<string>>()
  for (const org of [...new Set(orders.map((o) => o.organization_id))].sort()) {
    const variants = new Set(fresh.flatMap(({ p }) => p.event.organization_id === org ? p.event.data.items.map((i) => i.variant_id) : []))
    for (const row of yield* stock.candidates(org, [...variants])) {
      rows.set(stockKeyString(row), row)
      const byVariant = tenantKey(org, row.variant_id)
      rowKeysByVariant.set(byVariant, [...(rowKeysByVariant.get(byVariant) ?? []), stockKeyString(row)])
    }
  }

  const lines: Array<StockLine> = []
  const created: Array<Reservation> = []
  const messages: Array<OutboxMessage> = []
  const attempts = new Map<string, { readonly cause: EventRef; refused: boolean }>()
  for (const { p, i } of fresh) {
    const org = p.event.organization_id
    const orderId = p.event.data.order_id
    const cause = { organization_id: org, event_id: p.eventId }
    const earlier = attempts.get(eventKey(p))
    if (earlier !== undefined && !earlier.refused) continue
    const attempt = { cause, refused: false }
    attempts.set(eventKey(p), attempt)
    results[i] = "applied"
    const status = newest.get(tenantKey(org, orderId))
    if (status !== undefined) {
      yield* Effect.logWarning("order already has a reservation; nothing reserved").pipe(
        Effect.annotateLogs({ order_id: orderId, reservation_status: status })
      )
      continue
    }
    const demands = sumByVariant(p.event.data.items)
    const candidates = demands.flatMap((d) => (rowKeysByVariant.get(tenantKey(org, d.variant_id)) ?? []).map((k) => rows.get(k)!))
    const allocation = allocate(org, orderId, demands, candidates)
    if (Result.isFailure(allocation)) {
      results[i] = allocation.failure
      attempt.refused = true
      messages.push(...outboxMessages(cause, `order/${orderId}`, [failedDraft(orderId, allocation.failure)], now, p.traceparent))
      continue
    }
    for (const item of allocation.success) {
      const key = keyOf(org, item)
      const row = rows.get(stockKeyString(key))!
      rows.set(stockKeyString(key), { ...row, available: row.available - item.quantity, reserved: row.reserved + item.quantity })
      lines.push({ key, quantity: item.quantity })
    }
    const ttl = p.event.data.reservation_ttl_minutes ?? DEFAULT_RESERVATION_TTL_MINUTES
    const reservation: Reservation = {
      organization_id: org,
      reservation_id: deriveId(org, "reservation", p.eventId),
      order_id: orderId,
      status: "active",
      items: allocation.success,
      expires_at: new Date(now.getTime() + Duration.toMillis(Duration.minutes(ttl))),
      created_at: now,
      caused_by: p.eventId,
      closed_reason: null
    }
    created.push(reservation)
    newest.set(tenantKey(org, orderId), "active")
    messages.push(...outboxMessages(cause, `order/${orderId}`, [reservedDraft(reservation)], now, p.traceparent))
  }

  if (!(yield* stock.reserveAll(lines))) {
    return yield* Effect.die(new Error("locked stock rows refused quantities checked against them"))
  }
  const inserted = yield* reservations.insertAll(created)
  if (inserted !== created.length) {
    // The order locks make this unreachable unless a second writer ignores them; refuse to double-reserve.
    return yield* Effect.die(new Error(`${created.length - inserted} orders gained a live reservation while locked`))
  }
  yield* (yield* Outbox).append(messages)
  yield* log.forget([...attempts.values()].flatMap((a) => (a.refused ? [a.cause] : [])))
  const timers = yield* ReservationTimers
  const uow = yield* UnitOfWork
  for (const r of created) {
    yield* uow.afterCommit(timers.schedule({ organization_id: r.organization_id, reservation_id: r.reservation_id, expires_at: r.expires_at! }))
  }
  return results
})

/**
 * What `order.placed` leaves behind when it fails for lack of stock: the reservation rolled
 * back, but the order service must still hear `inventory.reservation.failed` (SPEC 4). Runs in
 * its own unit of work, after the failed one.
 */
export const reservationFailed = Effect.fn("order.placed.failed")(function*(
  event: OrderPlaced,
  eventId: string,
  error: InsufficientStock
) {
  yield* emit({ organization_id: event.organization_id, event_id: eventId }, `order/${event.data.order_id}`, [failedDraft(event.data.order_id, error)])
})

export const orderConfirmed = Effect.fn("order.confirmed")(function*(event: OrderConfirmed, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  if (Option.isNone(found)) {
    return yield* new ReservationNotFound({ organization_id: org, order_id: data.order_id, reservation_id: data.reservation_id ?? null })
  }
  const reservation = found.value
  switch (reservation.status) {
    case "active": {
      yield* reservations.transition(org, reservation.reservation_id, ["active"], "confirmed", null)
      yield* cancelTimerAfterCommit(reservation)
      return
    }
    case "expired": {
      // Payment arrived after the hold lapsed: hold the same goods again if stock allows.
      yield* createReservation(
        { organization_id: org, event_id: eventId },
        data.order_id,
        sumByVariant(reservation.items.map((i) => ({ ...i, preferred_warehouse_id: i.warehouse_id }))),
        "confirmed",
        null
      )
      return
    }
    case "confirmed":
    case "fulfilled":
    case "cancelled": {
      yield* Effect.logWarning("order.confirmed for a reservation that is not active; nothing changed").pipe(
        Effect.annotateLogs({ order_id: data.order_id, reservation_id: reservation.reservation_id, status: reservation.status })
      )
      return
    }
  }
})

export const orderCancelled = Effect.fn("order.cancelled")(function*(event: OrderCancelled, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  const reason = data.cancellation_reason ?? "cancelled"
  if (Option.isNone(found)) {
    // Cancelled before it was placed: leave a tombstone so a late `order.placed` reserves nothing.
    yield* reservations.insert({
      organization_id: org,
      reservation_id: deriveId(org, "reservation", eventId),
      order_id: data.order_id,
      status: "cancelled",
      items: [],
      expires_at: null,
      created_at: yield* nowDate,
      caused_by: eventId,
      closed_reason: `cancelled_before_placed: ${reason}`
    })
    yield* Effect.logWarning("reservation not found for cancelled order; may be already released").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_id: data.reservation_id ?? null })
    )
    return
  }
  const released = yield* releaseReservation(found.value, "cancelled", reason, { organization_id: org, event_id: eventId })
  if (released) yield* cancelTimerAfterCommit(found.value)
  else {
    yield* Effect.logWarning("reservation already released; nothing changed").pipe(
      Effect.annotateLogs({ order_id: data.order_id, reservation_id: found.value.reservation_id, status: found.value.status })
    )
  }
})

export const orderShipped = Effect.fn("order.shipped")(function*(event: OrderShipped, eventId: string) {
  const org = event.organization_id
  const { data } = event
  const cause = { organization_id: org, event_id: eventId }
  const reservations = yield* Reservations
  yield* reservations.lockOrder(org, data.order_id)
  const found = yield* findReservation(org, data.order_id, data.reservation_id)
  if (Option.isNone(found)) {
    return yield* new ReservationNotFound({ organization_id: org, order_id: data.order_id, reservation_id: data.reservation_id ?? null })
  }
  let reservation = found.value
  switch (reservation.status) {
    case "fulfilled": {
      yield* Effect.logWarning("order already shipped; nothing changed").pipe(
        Effect.annotateLogs({ order_id: data.order_id, reservation_id: reservation.reservation_id })
      )
      return
    }
    case "cancelled":
      return yield* new ValidationError({ message: `Order ${data.order_id} was cancelled; it cannot be shipped` })
    case "expired": {
      // The goods left anyway: hold exactly what was shipped, where it was shipped from.
      const shippedDemands = data.shipped_items.map((i) => ({ ...i, preferred_warehouse_id: i.warehouse_id }))
      reservation = yield* createReservation(cause, data.order_id, sumByVariant(shippedDemands), "confirmed", null)
      break
    }
    case "active":
    case "confirmed":
      break
  }

  const key = (variantId: string, warehouseId: string) => `${variantId}\u0000${warehouseId}`
  const reserved = new Map<string, number>()
  for (const item of reservation.items) {
    reserved.set(key(item.variant_id, item.warehouse_id), (reserved.get(key(item.variant_id, item.warehouse_id)) ?? 0) + item.quantity)
  }
  const shipped = new Map<string, number>()
  for (const item of data.shipped_items) {
    shipped.set(key(item.variant_id, item.warehouse_id), (shipped.get(key(item.variant_id, item.warehouse_id)) ?? 0) + item.quantity)
  }
  for (const [k, quantity] of shipped) {
    const held = reserved.get(k) ?? 0
    if (quantity > held) {
      const [variant, warehouse] = k.split("\u0000")
      return yield* new ValidationError({
        message: `Shipping more than was reserved: ${quantity} of variant ${variant} from warehouse ${warehouse}, reserved ${held}`
      })
    }
  }

  const stock = yield* Stock
  const now = yield* nowDate
  const movements: Array<Movement> = []
  const reservedItems = [...reserved.entries()].map(([k, quantity]) => {
    const [variant_id, warehouse_id] = k.split("\u0000") as [string, string]
    return { variant_id, warehouse_id, quantity }
  })
  for (const item of sortedItems(org, reservedItems)) {
    const k = key(item.variant_id, item.warehouse_id)
    const out = shipped.get(k) ?? 0
    const rest = item.quantity - out
    if (out > 0) {
      const change = yield* stock.ship(keyOf(org, item), out)
      movements.push({
        movement_id: deriveId(org, "movement", eventId, item.variant_id, item.warehouse_id),
        organization_id: org,
        variant_id: item.variant_id,
        warehouse_id: item.warehouse_id,
        movement_type: "out",
        quantity_change: -out,
        quantity_before: change.before.total,
        quantity_after: change.after.total,
        category: "available",
        reason: "order_shipment",
        reference_type: "order",
        reference_id: data.order_id,
        notes: `Shipped via ${data.shipment_id}`,
        caused_by: eventId,
        created_at: now
      })
    }
    if (rest > 0) yield* stock.release(keyOf(org, item), rest)
  }
  yield* (yield* Movements).append(movements)
  yield* reservations.transition(org, reservation.reservation_id, liveStatuses, "fulfilled", `shipped:${data.shipment_id}`)
  yield* cancelTimerAfterCommit(reservation)
  yield* emit(cause, `order/${data.order_id}`, movements.map((m) => ({
    event: "inventory.movement.out" as const,
    data: {
      movement_id: m.movement_id,
      variant_id: m.variant_id,
      warehouse_id: m.warehouse_id,
      quantity: -m.quantity_change,
      reason: "order_shipment",
      order_id: data.order_id,
      reference_id: data.shipment_id
    }
  })))
})
