import { assert, describe, it } from "@effect/vitest"
import { Result, Schema } from "effect"
import { allocate, type Candidate, type Demand, sumByVariant } from "../../src/domain/allocation.ts"

/**
 * The allocation rule (SPEC 4, I6) on its own, without stores: a few variants and warehouses so
 * that generated lines collide on variants and generated rows compete for the same demand.
 */

const between = (minimum: number, maximum: number) =>
  Schema.Int.pipe(Schema.check(Schema.isBetween({ minimum, maximum })))

const Variant = Schema.Literals(["v1", "v2", "v3"])
const Warehouse = Schema.Literals(["w1", "w2", "w3", "w4"])

const Line = Schema.Struct({ variant_id: Variant, quantity: between(1, 6), preferred_warehouse_id: Schema.NullOr(Warehouse) })
const Lines = Schema.Array(Line).pipe(Schema.check(Schema.isBetweenLength(1, 6)))
const Rows = Schema.Array(Schema.Struct({ variant_id: Variant, warehouse_id: Warehouse, available: between(0, 12) })).pipe(
  Schema.check(Schema.isBetweenLength(0, 8))
)

const demand = (variant_id: string, quantity: number, preferred_warehouse_id: string | null = null): Demand => ({
  variant_id,
  quantity,
  preferred_warehouse_id
})
const row = (variant_id: string, warehouse_id: string, available: number): Candidate => ({ variant_id, warehouse_id, available })
const warehousesOf = (result: ReturnType<typeof allocate>) =>
  Result.isSuccess(result) ? result.success.map((item) => item.warehouse_id) : result.failure

describe("sumByVariant", () => {
  it("two lines of one variant become one demand of their sum (I6)", () => {
    assert.deepStrictEqual(
      sumByVariant([
        { variant_id: "v2", quantity: 1 },
        { variant_id: "v1", quantity: 3, preferred_warehouse_id: null },
        { variant_id: "v1", quantity: 4, preferred_warehouse_id: "w2" },
        { variant_id: "v1", quantity: 1, preferred_warehouse_id: "w3" }
      ]),
      [demand("v1", 8, "w2"), demand("v2", 1)]
    )
  })

  it.prop("one demand per variant, in variant order, quantities summed, the first named preference kept", { lines: Lines }, ({ lines }) => {
    const demands = sumByVariant(lines)
    const variants = [...new Set(lines.map((l) => l.variant_id))].sort()
    assert.deepStrictEqual(demands.map((d) => d.variant_id), variants)
    for (const d of demands) {
      const own = lines.filter((l) => l.variant_id === d.variant_id)
      assert.strictEqual(d.quantity, own.reduce((sum, l) => sum + l.quantity, 0))
      assert.strictEqual(d.preferred_warehouse_id, own.find((l) => l.preferred_warehouse_id !== null)?.preferred_warehouse_id ?? null)
    }
  })
})

describe("allocate", () => {
  it("the preferred warehouse serves when it can, even with less stock than another", () => {
    assert.deepStrictEqual(warehousesOf(allocate("org", "o1", [demand("v1", 2, "w1")], [row("v1", "w1", 2), row("v1", "w2", 9)])), ["w1"])
  })

  it("a preferred warehouse that cannot serve the whole quantity gives way to the one with most available", () => {
    assert.deepStrictEqual(
      warehousesOf(allocate("org", "o1", [demand("v1", 3, "w1")], [row("v1", "w1", 2), row("v1", "w2", 4), row("v1", "w3", 7)])),
      ["w3"]
    )
  })

  it("no split across warehouses: a demand no single warehouse covers fails with the most any one has", () => {
    const result = allocate("org", "o1", [demand("v1", 1), demand("v2", 5)], [row("v1", "w1", 1), row("v2", "w1", 3), row("v2", "w2", 4)])
    assert.isTrue(Result.isFailure(result))
    if (Result.isFailure(result)) {
      assert.deepInclude(result.failure, { _tag: "InsufficientStock", organization_id: "org", order_id: "o1", variant_id: "v2", requested: 5, available: 4 })
    }
  })

  it("lines of one variant are checked against their sum (I6): each fits alone, together they do not", () => {
    const rows = [row("v1", "w1", 5)]
    const line = { variant_id: "v1", quantity: 3 }
    assert.isTrue(Result.isSuccess(allocate("org", "o1", sumByVariant([line]), rows)))
    assert.isTrue(Result.isFailure(allocate("org", "o1", sumByVariant([line, line]), rows)))
  })

  it("a variant with no usable row fails with nothing available", () => {
    const result = allocate("org", "o1", [demand("v1", 1)], [row("v2", "w1", 10)])
    assert.isTrue(Result.isFailure(result) && result.failure.available === 0)
  })

  it.prop("serves every demand whole from one warehouse that can, by the rule, or refuses the first it cannot", { lines: Lines, rows: Rows }, (generated) => {
    // The store holds one row per (variant, warehouse): keep the first of each.
    const rows = generated.rows.filter((r, i, all) => all.findIndex((o) => o.variant_id === r.variant_id && o.warehouse_id === r.warehouse_id) === i)
    const demands = sumByVariant(generated.lines)
    const result = allocate("org", "o1", demands, rows)
    const canServe = (d: Demand) => rows.filter((r) => r.variant_id === d.variant_id && r.available >= d.quantity)
    const firstUnserved = demands.find((d) => canServe(d).length === 0)
    if (firstUnserved !== undefined) {
      assert.isTrue(Result.isFailure(result), "refused when some demand has no warehouse able to serve it whole")
      if (Result.isFailure(result)) {
        assert.strictEqual(result.failure.variant_id, firstUnserved.variant_id)
        assert.strictEqual(result.failure.requested, firstUnserved.quantity)
        const own = rows.filter((r) => r.variant_id === firstUnserved.variant_id)
        assert.strictEqual(result.failure.available, Math.max(0, ...own.map((r) => r.available)))
      }
      return
    }
    assert.isTrue(Result.isSuccess(result), "allocated when every demand has a warehouse able to serve it whole")
    if (Result.isFailure(result)) return
    assert.deepStrictEqual(result.success.map((i) => [i.variant_id, i.quantity]), demands.map((d) => [d.variant_id, d.quantity]))
    result.success.forEach((item, i) => {
      const d = demands[i]!
      const able = canServe(d)
      assert.isTrue(able.some((r) => r.warehouse_id === item.warehouse_id), "served by a warehouse that can serve it whole")
      if (able.some((r) => r.warehouse_id === d.preferred_warehouse_id)) {
        assert.strictEqual(item.warehouse_id, d.preferred_warehouse_id, "the preferred warehouse when it can")
      } else {
        const chosen = able.find((r) => r.warehouse_id === item.warehouse_id)!
        assert.strictEqual(chosen.available, Math.max(...able.map((r) => r.available)), "else the one with most available")
      }
    })
  })
})
