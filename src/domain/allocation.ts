import { Result } from "effect"
import { InsufficientStock } from "./errors.ts"

/** What an order asks of one variant: its lines summed (I6), and the warehouse it prefers. */
export interface Demand {
  readonly variant_id: string
  readonly quantity: number
  readonly preferred_warehouse_id: string | null
}

/** One warehouse's stock of one variant, as the allocation rule sees it. */
export interface Candidate {
  readonly variant_id: string
  readonly warehouse_id: string
  readonly available: number
}

/** Where one demand is served from, and how much. */
export interface Allocation {
  readonly variant_id: string
  readonly warehouse_id: string
  readonly quantity: number
}

/**
 * One demand per variant, in variant order: lines naming the same variant are checked against
 * their summed quantity (I6); the first line that names a preferred warehouse sets it.
 */
export const sumByVariant = (
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

/**
 * Where each demand is served from (SPEC 4): the preferred warehouse if it can serve the whole
 * quantity, else the candidate with the most available stock that can (the first such on a tie).
 * `candidates` are the usable rows only (not archived, in an active warehouse); the first demand
 * none can serve fails the whole order, reporting the most any one of them has.
 */
export const allocate = (
  organizationId: string,
  orderId: string,
  demands: ReadonlyArray<Demand>,
  candidates: ReadonlyArray<Candidate>
): Result.Result<Array<Allocation>, InsufficientStock> => {
  const items: Array<Allocation> = []
  for (const demand of demands) {
    const rows = candidates.filter((row) => row.variant_id === demand.variant_id)
    const preferred = rows.find((row) => row.warehouse_id === demand.preferred_warehouse_id && row.available >= demand.quantity)
    const best = preferred ?? rows
      .filter((row) => row.available >= demand.quantity)
      .reduce<Candidate | undefined>((acc, row) => (acc === undefined || row.available > acc.available ? row : acc), undefined)
    if (best === undefined) {
      return Result.fail(new InsufficientStock({
        organization_id: organizationId,
        order_id: orderId,
        variant_id: demand.variant_id,
        requested: demand.quantity,
        available: rows.reduce((max, row) => Math.max(max, row.available), 0)
      }))
    }
    items.push({ variant_id: demand.variant_id, warehouse_id: best.warehouse_id, quantity: demand.quantity })
  }
  return Result.succeed(items)
}
