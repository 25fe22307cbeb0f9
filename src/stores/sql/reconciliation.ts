import { Effect, Layer } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import { Reconciliation, type Violation } from "../services.ts"
import { orDatabaseError } from "./errors.ts"

interface RowAudit {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  // Compared in SQL; read back as text only to word the details.
  readonly total: string
  readonly available: string
  readonly reserved: string
  readonly damaged: string
  readonly in_transit: string
  readonly held: string
  readonly moved: string
  readonly negative: ReadonlyArray<string> | null
  readonly i2: boolean
  readonly i3: boolean
  readonly i8: boolean
  readonly i9: boolean
}

interface OrphanHold {
  readonly organization_id: string
  readonly variant_id: string
  readonly warehouse_id: string
  readonly held: string
}

/**
 * The operator's audit of SPEC 3, in SQL: the constraints make I1, I2 and I9 impossible on a
 * healthy database, but these queries look at the rows themselves, so they also find what a
 * dropped constraint or a hand-made UPDATE let through. Same violations, order and wording as
 * the memory store.
 */
export const ReconciliationSql = Layer.effect(
  Reconciliation,
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const scoped = (column: string, organizationId: string | undefined) =>
      organizationId === undefined ? sql`TRUE` : sql`${sql(column)} = ${organizationId}`

    const check = (organizationId?: string) =>
      Effect.gen(function*() {
        const held = sql`
          SELECT r.organization_id, i.variant_id, i.warehouse_id, sum(i.quantity) AS quantity
          FROM reservations r JOIN reservation_items i USING (organization_id, reservation_id)
          WHERE r.status IN ('active', 'confirmed') AND ${scoped("r.organization_id", organizationId)}
          GROUP BY r.organization_id, i.variant_id, i.warehouse_id`
        const rows = yield* sql<RowAudit>`
          WITH held AS (${held}),
          moved AS (
            SELECT organization_id, variant_id, warehouse_id, sum(quantity_change) AS quantity
            FROM stock_movements WHERE ${scoped("organization_id", organizationId)}
            GROUP BY organization_id, variant_id, warehouse_id
          ),
          audit AS (
            SELECT s.organization_id, s.variant_id, s.warehouse_id,
              s.total, s.available, s.reserved, s.damaged, s.in_transit,
              COALESCE(h.quantity, 0) AS held, COALESCE(m.quantity, 0) AS moved,
              array_remove(ARRAY[
                CASE WHEN s.total < 0 THEN 'total' END,
                CASE WHEN s.available < 0 THEN 'available' END,
                CASE WHEN s.reserved < 0 THEN 'reserved' END,
                CASE WHEN s.damaged < 0 THEN 'damaged' END,
                CASE WHEN s.in_transit < 0 THEN 'in_transit' END
              ], NULL) AS negative,
              s.total <> s.available + s.reserved + s.damaged AS i2,
              s.reserved <> COALESCE(h.quantity, 0) AS i3,
              s.total <> COALESCE(m.quantity, 0) AS i8,
              s.archived_at IS NOT NULL AND (s.total <> 0 OR s.in_transit <> 0) AS i9
            FROM stock s
            LEFT JOIN held h USING (organization_id, variant_id, warehouse_id)
            LEFT JOIN moved m USING (organization_id, variant_id, warehouse_id)
            WHERE ${scoped("s.organization_id", organizationId)}
          )
          SELECT organization_id, variant_id, warehouse_id,
            total::text, available::text, reserved::text, damaged::text, in_transit::text,
            held::text, moved::text, negative, i2, i3, i8, i9
          FROM audit
          WHERE cardinality(negative) > 0 OR i2 OR i3 OR i8 OR i9
          ORDER BY organization_id, variant_id, warehouse_id`
        const orphans = yield* sql<OrphanHold>`
          WITH held AS (${held})
          SELECT h.organization_id, h.variant_id, h.warehouse_id, h.quantity::text AS held FROM held h
          WHERE NOT EXISTS (
            SELECT 1 FROM stock s
            WHERE s.organization_id = h.organization_id AND s.variant_id = h.variant_id AND s.warehouse_id = h.warehouse_id)
          ORDER BY h.organization_id, h.variant_id, h.warehouse_id`

        const violations: Array<Violation> = []
        for (const row of rows) {
          const at = (invariant: Violation["invariant"], detail: string) =>
            violations.push({
              invariant,
              organization_id: row.organization_id,
              variant_id: row.variant_id,
              warehouse_id: row.warehouse_id,
              reservation_id: null,
              detail
            })
          if (row.negative !== null && row.negative.length > 0) at("I1", `not a whole number >= 0: ${row.negative.join(", ")}`)
          if (row.i2) at("I2", `total ${row.total} <> available ${row.available} + reserved ${row.reserved} + damaged ${row.damaged}`)
          if (row.i3) at("I3", `reserved ${row.reserved} <> live reservation items ${row.held}`)
          if (row.i8) at("I8", `total ${row.total} <> sum of movements ${row.moved}`)
          if (row.i9) at("I9", `archived with total ${row.total}`)
        }
        for (const hold of orphans) {
          violations.push({
            invariant: "I3",
            organization_id: hold.organization_id,
            variant_id: hold.variant_id,
            warehouse_id: hold.warehouse_id,
            reservation_id: null,
            detail: `live reservation items hold ${hold.held} of a missing stock row`
          })
        }
        return violations as ReadonlyArray<Violation>
      })

    return Reconciliation.of({ check: (organizationId) => orDatabaseError(check(organizationId)) })
  })
)
