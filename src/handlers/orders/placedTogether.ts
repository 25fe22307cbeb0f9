import { Effect, Result } from "effect"
import { allocate, sumByVariant } from "../../domain/allocation.ts"
import type { InsufficientStock } from "../../domain/errors.ts"
import type { OrderPlaced } from "../../domain/events.ts"
import { deriveId } from "../../domain/ids.ts"
import { type OutboxMessage, type ReservationStatus, stockKeyString, type StockRow } from "../../stores/model.ts"
import { type EventRef, EventLog, Outbox, Reservations, Stock, type StockLine } from "../../stores/services.ts"
import { nowDate, outboxMessages } from "../outbound.ts"
import { type ActiveReservation, expiresAfter, failedDraft, keyOf, reservedDraft, scheduleTimersAfterCommit } from "./lifecycle.ts"

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
  const created: Array<ActiveReservation> = []
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
    const expiresAt = expiresAfter(now, p.event.data.reservation_ttl_minutes)
    const reservation: ActiveReservation = {
      organization_id: org,
      reservation_id: deriveId(org, "reservation", p.eventId),
      order_id: orderId,
      status: "active",
      items: allocation.success,
      expires_at: expiresAt,
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
  yield* scheduleTimersAfterCommit(created)
  return results
})
