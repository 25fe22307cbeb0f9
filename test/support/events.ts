import { Duration, Effect, Option } from "effect"
import { inboundEventTypes } from "../../src/domain/events.ts"
import { adjustStock } from "../../src/handlers/returns.ts"
import { processDelivery } from "../../src/pipeline/pipeline.ts"
import { ProcessingPolicy } from "../../src/pipeline/policy.ts"
import type { OutboxMessage, StockRow } from "../../src/stores/model.ts"
import { Outbox, Reservations, Stock, UnitOfWork, Warehouses } from "../../src/stores/services.ts"

let counter = 0
/** A fresh tenant per test keeps tests apart on a shared store. */
export const freshOrg = () => `org-${process.pid}-${Date.now().toString(36)}-${(counter++).toString(36)}`
export const freshId = (prefix: string) => `${prefix}-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`

export const envelopeBytes = (organizationId: string, event: string, data: unknown, eventId?: string) =>
  new TextEncoder().encode(JSON.stringify({
    event,
    version: "1.0",
    timestamp: "2026-01-01T00:00:00Z",
    organization_id: organizationId,
    ...(eventId === undefined ? {} : { event_id: eventId }),
    data
  }))

/** Feeds one event through the whole broker-free pipeline. */
export const send = (
  organizationId: string,
  event: string,
  data: unknown,
  options: { readonly eventId?: string; readonly deliveryCount?: number } = {}
) =>
  processDelivery({
    body: envelopeBytes(organizationId, event, data, options.eventId ?? freshId("evt")),
    deliveryCount: options.deliveryCount ?? 1,
    queue: "test",
    accepts: inboundEventTypes
  })

/** No in-process retries: the contract suite runs on the test clock. */
export const noRetries = <A, E, R>(effect: Effect.Effect<A, E, R>) =>
  Effect.provideService(effect, ProcessingPolicy, {
    retryBaseDelay: Duration.millis(1),
    retries: 0,
    maxDeliveries: 5,
    maxBodyBytes: 1024 * 1024,
    maxLinesPerEvent: 500
  })

export const addWarehouse = (organizationId: string, warehouseId: string, options: { name?: string; active?: boolean } = {}) =>
  Effect.flatMap(Warehouses, (w) =>
    w.upsert({
      organization_id: organizationId,
      warehouse_id: warehouseId,
      name: options.name ?? `Warehouse ${warehouseId}`,
      active: options.active ?? true
    }))

/** Puts `quantity` units on hand, as an operator adjustment (a movement keeps I8). */
export const putStock = (organizationId: string, variantId: string, warehouseId: string, quantity: number) =>
  Effect.flatMap(UnitOfWork, (uow) =>
    uow.transaction(adjustStock(
      { organization_id: organizationId, variant_id: variantId, warehouse_id: warehouseId },
      quantity,
      "available",
      "initial stock",
      freshId("adj")
    ))
  ).pipe(Effect.orDie)

export const stockRow = (organizationId: string, variantId: string, warehouseId: string) =>
  Effect.flatMap(Stock, (s) => s.list({ organization_id: organizationId, variant_id: variantId, warehouse_id: warehouseId })).pipe(
    Effect.map((rows): Option.Option<StockRow> => Option.fromNullishOr(rows[0])),
    Effect.orDie
  )

export const quantities = (organizationId: string, variantId: string, warehouseId: string) =>
  Effect.map(stockRow(organizationId, variantId, warehouseId), Option.match({
    onNone: () => null,
    onSome: (r) => ({ total: r.total, available: r.available, reserved: r.reserved, damaged: r.damaged })
  }))

/** Outbox rows of one tenant, in write order, sent or not. */
export const outboxOf = (organizationId: string) =>
  Effect.flatMap(Outbox, (o) => o.pending(100_000)).pipe(
    Effect.map((rows): ReadonlyArray<OutboxMessage> => rows.filter((r) => r.organization_id === organizationId)),
    Effect.orDie
  )

export const reservationsOf = (organizationId: string, orderId: string) =>
  Effect.flatMap(Reservations, (r) => r.findByOrder(organizationId, orderId)).pipe(Effect.orDie)
