import { Effect, Option } from "effect"
import { spanned } from "../observability/spans.ts"
import { DuplicateRecord, StockNotZero, type WarehouseWithStock } from "../domain/errors.ts"
import type { ProductDeleted, VariantCreated, VariantDeleted, VariantUpdated } from "../domain/events.ts"
import type { StockRow, Variant } from "../stores/model.ts"
import { Stock, Variants, Warehouses } from "../stores/services.ts"
import { type Causation, emit, nowDate } from "./outbound.ts"

/** Defaults of SPEC 4 when a variant names no thresholds. */
const DEFAULT_MIN_STOCK = 0
const DEFAULT_MAX_STOCK = 999_999

const hasStock = (row: StockRow) =>
  row.total !== 0 || row.available !== 0 || row.reserved !== 0 || row.damaged !== 0 || row.in_transit !== 0

/** Creates the variant's stock rows in every active warehouse and announces it. */
const initializeStock = Effect.fnUntraced(function*(
  cause: Causation,
  variantId: string,
  levels: { readonly min?: number | undefined; readonly max?: number | undefined }
) {
  const warehouses = yield* (yield* Warehouses).listActive(cause.organization_id)
  const created = yield* (yield* Stock).initialize(
    cause.organization_id,
    variantId,
    warehouses.map((w) => w.warehouse_id),
    { min: levels.min ?? DEFAULT_MIN_STOCK, max: levels.max ?? DEFAULT_MAX_STOCK }
  )
  yield* emit(cause, `variant/${variantId}`, [{
    event: "inventory.stock.initialized",
    data: { variant_id: variantId, warehouses_count: warehouses.length, stock_records_created: created }
  }])
  yield* Effect.logInfo("stock initialized").pipe(
    Effect.annotateLogs({ variant_id: variantId, warehouses: warehouses.length, created })
  )
})

/** Fails with `StockNotZero` when any of the rows still holds stock. */
const ensureNoStock = Effect.fnUntraced(function*(organizationId: string, rows: ReadonlyArray<StockRow>) {
  const withStock = rows.filter(hasStock)
  if (withStock.length === 0) return
  const names = new Map((yield* (yield* Warehouses).list(organizationId)).map((w) => [w.warehouse_id, w.name]))
  const warehouses_with_stock = withStock.map((row): WarehouseWithStock => ({
    variant_id: row.variant_id,
    warehouse_id: row.warehouse_id,
    warehouse_name: names.get(row.warehouse_id) ?? null,
    total_quantity: row.total,
    available: row.available,
    reserved: row.reserved
  }))
  return yield* new StockNotZero({
    variant_id: withStock[0]!.variant_id,
    warehouses_with_stock,
    action_required: "Clear all stock before deleting variant"
  })
})

const variantRecord = (
  existing: Option.Option<Variant>,
  organizationId: string,
  variantId: string,
  patch: Partial<Pick<Variant, "product_id" | "sku" | "tracked" | "deleted_at">>
): Variant => {
  const base: Variant = Option.getOrElse(existing, () => ({
    organization_id: organizationId,
    variant_id: variantId,
    product_id: null,
    sku: null,
    tracked: true,
    deleted_at: null
  }))
  return { ...base, ...patch }
}

export const variantCreated = Effect.fnUntraced(function*(event: VariantCreated, eventId: string) {
  const cause = { organization_id: event.organization_id, event_id: eventId }
  const { data } = event
  const variants = yield* Variants
  const existing = yield* variants.get(event.organization_id, data.variant_id)
  if (Option.isSome(existing) && existing.value.product_id !== null && existing.value.product_id !== data.product_id) {
    return yield* new DuplicateRecord({
      message: `Variant ${data.variant_id} already exists under product ${existing.value.product_id}, not ${data.product_id}`
    })
  }
  const tracked = data.track_inventory ?? true
  yield* variants.upsert(variantRecord(existing, event.organization_id, data.variant_id, {
    product_id: data.product_id,
    sku: data.sku ?? Option.match(existing, { onNone: () => null, onSome: (v) => v.sku }),
    tracked,
    deleted_at: null
  }))
  if (!tracked) {
    yield* Effect.logInfo("variant does not track inventory; skipping").pipe(Effect.annotateLogs({ variant_id: data.variant_id }))
    return
  }
  yield* initializeStock(cause, data.variant_id, { min: data.default_min_stock, max: data.default_max_stock })
}, spanned("catalog.variant.created"))

export const variantUpdated = Effect.fnUntraced(function*(event: VariantUpdated, eventId: string) {
  const cause = { organization_id: event.organization_id, event_id: eventId }
  const { data } = event
  const variants = yield* Variants
  const existing = yield* variants.get(event.organization_id, data.variant_id)
  const tracking = data.changes.track_inventory
  // What the store knows beats what the event claims was there before: events may arrive out of order.
  const wasTracked = Option.match(existing, { onNone: () => tracking?.old ?? true, onSome: (v) => v.tracked })
  const tracked = tracking?.new ?? wasTracked

  if (!wasTracked && tracked) {
    yield* initializeStock(cause, data.variant_id, { min: data.default_min_stock, max: data.default_max_stock })
  } else if (wasTracked && !tracked) {
    const rows = yield* (yield* Stock).forVariants(event.organization_id, [data.variant_id], { lock: true })
    yield* ensureNoStock(event.organization_id, rows)
  }
  const sku = data.changes.sku
  if (sku !== undefined) {
    yield* Effect.logInfo("variant SKU changed").pipe(
      Effect.annotateLogs({ variant_id: data.variant_id, sku_old: sku.old, sku_new: sku.new })
    )
  }
  yield* variants.upsert(variantRecord(existing, event.organization_id, data.variant_id, {
    ...(data.product_id !== undefined ? { product_id: data.product_id } : {}),
    ...(sku !== undefined ? { sku: sku.new } : {}),
    tracked
  }))
}, spanned("catalog.variant.updated"))

/** Archives every listed variant's stock, all or nothing. */
const archiveVariants = Effect.fnUntraced(function*(
  cause: Causation,
  variantIds: ReadonlyArray<string>,
  aggregateKey: string
) {
  const org = cause.organization_id
  const stock = yield* Stock
  const variants = yield* Variants
  const unique = [...new Set(variantIds)].sort()
  const rows = yield* stock.forVariants(org, unique, { lock: true })
  yield* ensureNoStock(org, rows)
  const now = yield* nowDate
  const archived: Array<{ variant_id: string; records_archived: number }> = []
  for (const variantId of unique) {
    const records_archived = yield* stock.archive(org, variantId)
    const existing = yield* variants.get(org, variantId)
    // Only a known variant is marked deleted: recording an unknown one would invent its tracking state.
    if (Option.isSome(existing)) yield* variants.upsert({ ...existing.value, deleted_at: now })
    archived.push({ variant_id: variantId, records_archived })
  }
  yield* emit(cause, aggregateKey, archived.map((data) => ({ event: "inventory.stock.archived" as const, data })))
})

export const variantDeleted = Effect.fnUntraced(function*(event: VariantDeleted, eventId: string) {
  yield* archiveVariants(
    { organization_id: event.organization_id, event_id: eventId },
    [event.data.variant_id],
    `variant/${event.data.variant_id}`
  )
}, spanned("catalog.variant.deleted"))

export const productDeleted = Effect.fnUntraced(function*(event: ProductDeleted, eventId: string) {
  yield* archiveVariants(
    { organization_id: event.organization_id, event_id: eventId },
    event.data.variant_ids,
    `product/${event.data.product_id}`
  )
}, spanned("catalog.product.deleted"))
