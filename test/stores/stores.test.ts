import { assert, layer } from "@effect/vitest"
import { Cause, Deferred, Effect, Exit, Fiber, Option, Ref } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import * as TestClock from "effect/testing/TestClock"
import { DatabaseError } from "../../src/domain/errors.ts"
import type { Reservation, StockKey } from "../../src/stores/model.ts"
import {
  FailedEvents,
  Movements,
  Outbox,
  Reconciliation,
  Reservations,
  Stock,
  StoreHealth,
  UnitOfWork,
  Warehouses
} from "../../src/stores/services.ts"
import { fromSqlError, UnexpectedDatabaseError } from "../../src/stores/sql/index.ts"
import { sqlStoresLayer } from "../support/sql.ts"

let counter = 0
const freshOrg = () => `org-${(counter++).toString(36)}-${Math.random().toString(36).slice(2, 8)}`
const key = (organization_id: string, variant_id: string, warehouse_id = "wh"): StockKey => ({ organization_id, variant_id, warehouse_id })

const warehouse = (org: string, id: string) =>
  Effect.flatMap(Warehouses, (w) => w.upsert({ organization_id: org, warehouse_id: id, name: id, active: true }))
const warehouseIds = (org: string) => Effect.map(Effect.flatMap(Warehouses, (w) => w.list(org)), (ws) => ws.map((w) => w.warehouse_id))

const reservation = (org: string, orderId: string, id: string, items: Reservation["items"], status: Reservation["status"] = "active"): Reservation => ({
  organization_id: org,
  reservation_id: id,
  order_id: orderId,
  status,
  items,
  expires_at: new Date(60_000),
  created_at: new Date(0),
  caused_by: `evt-${id}`,
  closed_reason: null
})

/**
 * Runs `lock` in a transaction of its own and keeps it open, as another process would: returns
 * once the lock is held, with the effect that commits it. On its own connection, not one of the
 * units of work's slots, so the units under test are not kept waiting for one.
 */
const holding = <A, E, R>(lock: Effect.Effect<A, E, R>) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const held = yield* Deferred.make<void>()
    const release = yield* Deferred.make<void>()
    const holder = yield* Effect.forkChild(sql.withTransaction(
      lock.pipe(Effect.andThen(Deferred.succeed(held, undefined)), Effect.andThen(Deferred.await(release)))
    ))
    yield* Deferred.await(held)
    return Effect.andThen(Deferred.succeed(release, undefined), Fiber.join(holder))
  })

/** The defect a failed effect died with, if it died. */
const defectOf = <A, E>(exit: Exit.Exit<A, E>): unknown =>
  Exit.isFailure(exit) ? exit.cause.reasons.find(Cause.isDieReason)?.defect : undefined
const failureOf = <A, E>(exit: Exit.Exit<A, E>): E | undefined =>
  Exit.isFailure(exit) ? exit.cause.reasons.find(Cause.isFailReason)?.error : undefined

layer(sqlStoresLayer("stores", { poolSize: 4 }), { timeout: "60 seconds" })("SQL stores", (it) => {
  it.effect("units of work leave two pooled connections free, so the relay is never queued behind them", () =>
    TestClock.withLive(Effect.gen(function*() {
      const uow = yield* UnitOfWork
      const release = yield* Deferred.make<void>()
      // As many open units as the pool has connections (4): two hold one, two wait their turn.
      const units = yield* Effect.forkChild(Effect.forEach([1, 2, 3, 4], () =>
        uow.transaction(Effect.flatMap(SqlClient, (sql) => Effect.andThen(sql`SELECT 1`, Deferred.await(release)))),
        { concurrency: "unbounded", discard: true }))
      yield* Effect.sleep("300 millis")
      const relayQuery = yield* Effect.flatMap(Outbox, (o) => o.pendingCount()).pipe(Effect.timeoutOption("3 seconds"))
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(units)
      assert.isTrue(Option.isSome(relayQuery), "the outbox answered while the units were open")
    })))

  it.effect("every pooled session starts with PostgreSQL's idle-in-transaction timeout, 15 s by default", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const rows = yield* sql<{ readonly idle_in_transaction_session_timeout: string }>`SHOW idle_in_transaction_session_timeout`
      assert.strictEqual(rows[0]?.idle_in_transaction_session_timeout, "15s")
    }))

  it.effect("a nested unit that fails rolls back to its savepoint; the outer unit keeps its work", () =>
    Effect.gen(function*() {
      const org = freshOrg()
      const uow = yield* UnitOfWork
      yield* uow.transaction(Effect.gen(function*() {
        yield* warehouse(org, "kept")
        const nested = yield* Effect.exit(uow.transaction(Effect.gen(function*() {
          yield* warehouse(org, "undone")
          return yield* Effect.fail("nested failure" as const)
        })))
        assert.isTrue(Exit.isFailure(nested))
        assert.deepStrictEqual(yield* warehouseIds(org), ["kept"], "inside the unit, the savepoint is already undone")
        yield* uow.transaction(warehouse(org, "nested-ok"))
      }))
      assert.deepStrictEqual(yield* warehouseIds(org), ["kept", "nested-ok"])

      const failed = yield* Effect.exit(uow.transaction(Effect.andThen(warehouse(org, "outer-rolled-back"), Effect.fail("boom" as const))))
      assert.strictEqual(failureOf(failed), "boom")
      assert.deepStrictEqual(yield* warehouseIds(org), ["kept", "nested-ok"])
    }))

  it.effect("after-commit work runs after the outermost commit only, never on rollback", () =>
    Effect.gen(function*() {
      const uow = yield* UnitOfWork
      const log = yield* Ref.make<ReadonlyArray<string>>([])
      const note = (s: string) => Ref.update(log, (l) => [...l, s])
      const org = freshOrg()

      yield* uow.transaction(Effect.gen(function*() {
        yield* uow.afterCommit(note("outer"))
        yield* uow.transaction(uow.afterCommit(note("nested kept")))
        yield* Effect.exit(uow.transaction(Effect.andThen(uow.afterCommit(note("nested rolled back")), Effect.fail("x"))))
        yield* warehouse(org, "w")
        assert.deepStrictEqual(yield* Ref.get(log), [], "nothing runs before COMMIT")
      }))
      assert.deepStrictEqual(yield* Ref.get(log), ["outer", "nested kept"])

      yield* Ref.set(log, [])
      yield* Effect.exit(uow.transaction(Effect.andThen(uow.afterCommit(note("rolled back")), Effect.fail("x"))))
      assert.deepStrictEqual(yield* Ref.get(log), [])

      yield* uow.afterCommit(note("no unit: at once"))
      assert.deepStrictEqual(yield* Ref.get(log), ["no unit: at once"])
    }))

  it.effect("the CHECK constraints refuse rows breaking I1 and I2, and the defect names the constraint only", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const org = freshOrg()
      yield* Effect.flatMap(Stock, (s) => s.receive(key(org, "v"), 5, "available"))
      const refusedBy = (statement: string) =>
        Effect.map(Effect.flip(sql.unsafe(statement, [org])), (e) => (e.reason.cause as { constraint?: string }).constraint)
      assert.strictEqual(yield* refusedBy(`UPDATE stock SET available = -1, total = -1 WHERE organization_id = $1`), "stock_quantities_non_negative")
      assert.strictEqual(yield* refusedBy(`UPDATE stock SET total = 6 WHERE organization_id = $1`), "stock_total_balances")
      assert.strictEqual(yield* refusedBy(`UPDATE stock SET archived_at = now() WHERE organization_id = $1`), "stock_archived_only_empty")

      // Through the store mapping: a constraint violation is a defect naming the constraint, not the data.
      const mapped = yield* Effect.exit(
        sql.unsafe(`UPDATE stock SET total = 123456 WHERE organization_id = $1`, [org]).pipe(Effect.catchTag("SqlError", fromSqlError))
      )
      const defect = defectOf(mapped)
      assert.instanceOf(defect, UnexpectedDatabaseError)
      assert.include((defect as Error).message, "stock_total_balances")
      assert.include((defect as Error).message, "23514")
      assert.notInclude((defect as Error).message, "123456", "no parameters or row data")
      assert.notInclude((defect as Error).message, "UPDATE", "no SQL text")

      const rows = yield* Effect.flatMap(Stock, (s) => s.list({ organization_id: org }))
      assert.deepStrictEqual(rows.map((r) => [r.total, r.available]), [[5, 5]])
    }))

  it.effect("stock movements are append-only: UPDATE and DELETE are refused", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const org = freshOrg()
      yield* Effect.flatMap(Movements, (m) =>
        m.append([{
          movement_id: "m1", organization_id: org, variant_id: "v", warehouse_id: "wh", movement_type: "in",
          quantity_change: 3, quantity_before: 0, quantity_after: 3, category: "available", reason: "test",
          reference_type: null, reference_id: null, notes: null, caused_by: "e1", created_at: new Date(0)
        }]))
      const update = yield* Effect.flip(sql.unsafe(`UPDATE stock_movements SET quantity_change = 30 WHERE organization_id = $1`, [org]))
      assert.strictEqual((update.reason.cause as { code?: string }).code, "23000")
      const remove = yield* Effect.flip(sql.unsafe(`DELETE FROM stock_movements WHERE organization_id = $1`, [org]))
      assert.strictEqual((remove.reason.cause as { code?: string }).code, "23000")
      const left = yield* Effect.flatMap(Movements, (m) => m.list({ organization_id: org }))
      assert.deepStrictEqual(left.map((m) => m.quantity_change), [3])
    }))

  it.effect("stock: rows in code-unit key order, conditional reserve, initialize counts and un-archives", () =>
    Effect.gen(function*() {
      const stock = yield* Stock
      const org = freshOrg()
      // "B" < "a" in code-unit order, as compareStockKeys sorts: the database must agree.
      assert.strictEqual(yield* stock.initialize(org, "v", ["a", "B", "a"], { min: 1, max: 9 }), 2)
      assert.strictEqual(yield* stock.initialize(org, "v", ["a", "B", "c"], { min: 1, max: 9 }), 1)
      const rows = yield* stock.forVariants(org, ["v"], { lock: false })
      assert.deepStrictEqual(rows.map((r) => r.warehouse_id), ["B", "a", "c"])
      assert.deepStrictEqual([rows[0]!.min_stock, rows[0]!.max_stock, rows[0]!.stock_strategy], [1, 9, "FIFO"])

      yield* stock.receive(key(org, "v", "a"), 2, "available")
      assert.isTrue(Option.isNone(yield* stock.reserve(key(org, "v", "a"), 3)), "refused: only 2 available")
      const reserved = yield* stock.reserve(key(org, "v", "a"), 2)
      assert.deepStrictEqual(Option.map(reserved, (r) => [r.available, r.reserved, r.total]), Option.some([0, 2, 2]))
      assert.isTrue(Option.isNone(yield* stock.reserve(key(org, "v", "missing"), 1)))

      const shipped = yield* stock.ship(key(org, "v", "a"), 2)
      assert.deepStrictEqual([shipped.before.total, shipped.before.reserved, shipped.after.total, shipped.after.reserved], [2, 2, 0, 0])
      assert.isTrue(Option.isNone(yield* stock.adjust(key(org, "v", "a"), -1, "available")), "would go below zero")
      assert.isTrue(Option.isNone(yield* stock.adjust(key(org, "v", "new"), -1, "damaged")), "no row created for a refusal")
      assert.strictEqual((yield* stock.list({ organization_id: org, warehouse_id: "new" })).length, 0)

      assert.strictEqual(yield* stock.archive(org, "v"), 3)
      assert.strictEqual(yield* stock.archive(org, "v"), 0)
      assert.isTrue(Option.isNone(yield* stock.reserve(key(org, "v", "B"), 0)), "an archived row is not reservable")
      assert.strictEqual(yield* stock.initialize(org, "v", ["B"], { min: 0, max: 0 }), 0)
      const after = yield* stock.forVariants(org, ["v"], { lock: false })
      assert.deepStrictEqual(after.map((r) => r.archived_at === null), [true, false, false], "only the named empty row un-archived")

      const received = yield* stock.receive(key(org, "v", "c"), 4, "damaged")
      assert.isNotNull(received.before.archived_at)
      assert.deepStrictEqual([received.after.damaged, received.after.total, received.after.archived_at], [4, 4, null])
      const released = yield* Effect.exit(stock.release(key(org, "v", "c"), 1))
      assert.instanceOf(defectOf(released), UnexpectedDatabaseError, "releasing what is not reserved is a bug")
    }))

  it.effect("stock candidates: live rows in active warehouses only, in key order, locked for the unit", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const uow = yield* UnitOfWork
      const stock = yield* Stock
      const warehouses = yield* Warehouses
      const org = freshOrg()
      for (const id of ["B", "a", "c", "off"]) yield* warehouse(org, id)
      yield* warehouses.setActive(org, "off", false)
      for (const [variant, wh] of [["v", "a"], ["v", "B"], ["v", "c"], ["v", "off"], ["gone", "a"], ["w", "a"], ["other", "a"]] as const) {
        yield* stock.receive(key(org, variant, wh), 0, "available")
      }
      yield* stock.archive(org, "gone")
      yield* stock.initialize(org, "v", ["nowhere"], { min: 0, max: 0 }) // a row whose warehouse was never declared

      const rows = yield* uow.transaction(stock.candidates(org, ["w", "v", "gone"]))
      assert.deepStrictEqual(rows.map((r) => `${r.variant_id}@${r.warehouse_id}`), ["v@B", "v@a", "v@c", "w@a"])

      // Held until the unit ends: another session cannot lock them, and can lock the rest.
      const locked = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(uow.transaction(Effect.gen(function*() {
        yield* stock.candidates(org, ["v"])
        yield* Deferred.succeed(locked, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(locked)
      const lockable = (variant: string, wh: string) =>
        uow.transaction(Effect.andThen(
          sql.unsafe(`SET LOCAL lock_timeout = '50ms'`),
          sql`SELECT 1 FROM stock WHERE organization_id = ${org} AND variant_id = ${variant} AND warehouse_id = ${wh} FOR UPDATE`
        )).pipe(Effect.as(true), Effect.catch(() => Effect.succeed(false)))
      assert.isFalse(yield* lockable("v", "a"), "a candidate is locked")
      assert.isTrue(yield* lockable("v", "off"), "a row in an inactive warehouse is not")
      assert.isTrue(yield* lockable("w", "a"), "a variant not asked for is not")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)
    }))

  it.effect("reservations: one live per order, items kept in order, conditional transitions, newest first", () =>
    Effect.gen(function*() {
      const reservations = yield* Reservations
      const org = freshOrg()
      const items = [{ variant_id: "v2", warehouse_id: "w", quantity: 1 }, { variant_id: "v1", warehouse_id: "w", quantity: 2 }]
      assert.isTrue(yield* reservations.insert(reservation(org, "o1", "r1", items)))
      assert.isFalse(yield* reservations.insert(reservation(org, "o1", "r2", items)), "a second live one is refused")
      assert.isFalse(yield* reservations.insert(reservation(org, "o2", "r1", items, "cancelled")), "same id")
      assert.isTrue(yield* reservations.insert({ ...reservation(org, "o1", "r3", [], "cancelled"), created_at: new Date(5) }))
      assert.isTrue(Option.isNone(yield* reservations.findById(org, "r2")))

      const found = yield* reservations.findById(org, "r1")
      assert.deepStrictEqual(Option.map(found, (r) => r.items), Option.some(items))
      assert.deepStrictEqual((yield* reservations.findByOrder(org, "o1")).map((r) => r.reservation_id), ["r3", "r1"])

      assert.isFalse(yield* reservations.transition(org, "r1", ["confirmed"], "fulfilled", "x"))
      assert.isTrue(yield* reservations.transition(org, "r1", ["active"], "confirmed", null))
      assert.isTrue(yield* reservations.transition(org, "r1", ["active", "confirmed"], "cancelled", "why"))
      const closed = yield* reservations.findById(org, "r1")
      assert.deepStrictEqual(Option.map(closed, (r) => [r.status, r.closed_reason]), Option.some(["cancelled", "why"]))
      assert.isTrue(yield* reservations.insert(reservation(org, "o1", "r4", items)), "live again once the first closed")

      // Reviving a closed one while another is live loses to the index: a retryable conflict.
      const revived = yield* Effect.flip(reservations.transition(org, "r1", ["cancelled"], "active", null))
      assert.instanceOf(revived, DatabaseError)
      assert.strictEqual(revived.reason, "conflict")

      assert.deepStrictEqual((yield* reservations.list({ organization_id: org, status: "cancelled" })).map((r) => r.reservation_id), ["r3", "r1"])
    }))

  it.effect("lockDue skips reservations another unit holds", () =>
    Effect.gen(function*() {
      const reservations = yield* Reservations
      const uow = yield* UnitOfWork
      const org = freshOrg()
      yield* reservations.insert(reservation(org, "o1", "due1", []))
      yield* reservations.insert({ ...reservation(org, "o2", "due2", []), expires_at: new Date(30_000) })
      const release = yield* holding(reservations.lockById(org, "due1"))
      const due = yield* uow.transaction(reservations.lockDue(new Date(60_000), 10))
      const mine = due.filter((r) => r.organization_id === org).map((r) => r.reservation_id)
      assert.deepStrictEqual(mine, ["due2"])
      yield* release
      const later = (yield* uow.transaction(reservations.lockDue(new Date(60_000), 1000))).filter((r) => r.organization_id === org)
      assert.deepStrictEqual(later.map((r) => r.reservation_id), ["due2", "due1"], "by expires_at")
    }))

  it.effect("lockDueAmong claims the given reservations that are due and free, and names the held ones busy without waiting", () =>
    Effect.gen(function*() {
      const reservations = yield* Reservations
      const uow = yield* UnitOfWork
      const org = freshOrg()
      yield* reservations.insert(reservation(org, "o1", "row-held", []))
      yield* reservations.insert(reservation(org, "o2", "order-held", []))
      yield* reservations.insert(reservation(org, "o3", "free", []))
      yield* reservations.insert({ ...reservation(org, "o4", "not-due", []), expires_at: new Date(120_000) })
      yield* reservations.insert(reservation(org, "o5", "confirmed", [], "confirmed"))
      yield* reservations.insert(reservation(org, "o6", "not-asked", []))
      const refs = ["row-held", "order-held", "free", "not-due", "confirmed", "missing"].map((id) => ({ organization_id: org, reservation_id: id }))
      // One transaction holds a reservation's row (an expiry on another replica), the other only its order (a group on it).
      const releaseRow = yield* holding(reservations.lockById(org, "row-held"))
      const releaseOrder = yield* holding(reservations.lockOrder(org, "o2"))
      const now = new Date(60_000)
      const first = yield* uow.transaction(reservations.lockDueAmong(refs, now))
      assert.deepStrictEqual(first.claimed.map((r) => r.reservation_id), ["free"])
      assert.deepStrictEqual(first.busy.map((r) => r.reservation_id).sort(), ["order-held", "row-held"])
      yield* releaseRow
      yield* releaseOrder
      const second = yield* uow.transaction(reservations.lockDueAmong(refs, now))
      assert.deepStrictEqual(second.claimed.map((r) => r.reservation_id).sort(), ["free", "order-held", "row-held"])
      assert.deepStrictEqual(second.busy, [])
    }))

  it.effect("lockDue holds the order locks of its batch only, not of the whole backlog", () =>
    Effect.gen(function*() {
      const reservations = yield* Reservations
      const uow = yield* UnitOfWork
      const sql = yield* SqlClient
      const org = freshOrg()
      for (let i = 0; i < 60; i++) yield* reservations.insert(reservation(org, `backlog-${i}`, `b${i}`, []))
      const advisory = yield* uow.transaction(Effect.gen(function*() {
        const due = yield* reservations.lockDue(new Date(60_000), 5)
        assert.strictEqual(due.length, 5)
        const rows = yield* sql<{ readonly n: number }>`
          SELECT count(*)::integer AS n FROM pg_locks WHERE locktype = 'advisory' AND pid = pg_backend_pid()`
        return rows[0]!.n
      }))
      assert.isAtMost(advisory, 5, "advisory locks taken for the batch only")
    }))

  it.effect("deadlock, lock timeout and a killed connection become retryable DatabaseErrors", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const uow = yield* UnitOfWork
      const stock = yield* Stock
      const org = freshOrg()
      yield* stock.receive(key(org, "a"), 1, "available")
      yield* stock.receive(key(org, "b"), 1, "available")

      // Two units taking the same rows in opposite order, on purpose: PostgreSQL aborts one.
      const first = yield* Deferred.make<void>()
      const second = yield* Deferred.make<void>()
      const crossing = (mine: string, theirs: string, locked: Deferred.Deferred<void>, other: Deferred.Deferred<void>) =>
        Effect.exit(uow.transaction(Effect.gen(function*() {
          yield* stock.forVariants(org, [mine], { lock: true })
          yield* Deferred.succeed(locked, undefined)
          yield* Deferred.await(other)
          yield* stock.forVariants(org, [theirs], { lock: true })
        })))
      const exits = yield* Effect.all([crossing("a", "b", first, second), crossing("b", "a", second, first)], { concurrency: 2 })
      const errors = exits.map(failureOf).filter((e) => e !== undefined)
      assert.strictEqual(errors.length, 1, "exactly one of the two is aborted")
      assert.instanceOf(errors[0], DatabaseError)
      assert.strictEqual((errors[0] as DatabaseError).reason, "deadlock")

      // A row held elsewhere, with a lock timeout: 55P03.
      const held = yield* Deferred.make<void>()
      const release = yield* Deferred.make<void>()
      const holder = yield* Effect.forkChild(uow.transaction(Effect.gen(function*() {
        yield* stock.forVariants(org, ["a"], { lock: true })
        yield* Deferred.succeed(held, undefined)
        yield* Deferred.await(release)
      })))
      yield* Deferred.await(held)
      const timedOut = yield* Effect.flip(uow.transaction(Effect.andThen(
        sql.unsafe(`SET LOCAL lock_timeout = '50ms'`).pipe(Effect.orDie),
        stock.forVariants(org, ["a"], { lock: true })
      )))
      assert.strictEqual(timedOut._tag === "DatabaseError" && timedOut.reason, "timeout")
      yield* Deferred.succeed(release, undefined)
      yield* Fiber.join(holder)

      // The server ends our session mid-unit.
      const killed = yield* Effect.flip(uow.transaction(Effect.gen(function*() {
        const [{ pid }] = (yield* sql.unsafe<{ pid: number }>(`SELECT pg_backend_pid() AS pid`).pipe(Effect.orDie)) as [{ pid: number }]
        yield* Effect.scoped(Effect.flatMap(sql.reserve, (other) => other.executeUnprepared(`SELECT pg_terminate_backend(${Number(pid)})`, [], undefined))).pipe(Effect.orDie)
        yield* stock.list({ organization_id: org })
      })))
      assert.strictEqual(killed._tag === "DatabaseError" && killed.reason, "connection")
      // The pool may hand out the dead session once more (it learns on use); that, too, is a retryable error.
      yield* Effect.flatMap(StoreHealth, (h) => h.ping).pipe(Effect.retry({ times: 2, while: (e) => e.reason === "connection" }))
    }))

  it.effect("outbox, event log and failed events round-trip", () =>
    Effect.gen(function*() {
      const outbox = yield* Outbox
      const org = freshOrg()
      const message = (id: string) => ({
        event_id: `${org}-${id}`,
        organization_id: org,
        event_type: "inventory.stock.archived" as const,
        aggregate_key: `${org}/variant/v`,
        payload: { event: "inventory.stock.archived", version: "1.0", timestamp: "t", organization_id: org, event_id: id, causation_id: "c", data: { variant_id: "v", records_archived: 1 } } as never,
        traceparent: null,
        created_at: new Date(0)
      })
      const before = yield* outbox.pendingCount()
      yield* outbox.append([message("a"), message("b")])
      yield* outbox.append([message("a")])
      const pending = (yield* outbox.pending(10_000)).filter((m) => m.organization_id === org)
      assert.deepStrictEqual(pending.map((m) => m.event_id), [`${org}-a`, `${org}-b`])
      assert.deepStrictEqual(pending[0]!.payload, message("a").payload)
      assert.isTrue(pending[0]!.position < pending[1]!.position)
      assert.strictEqual(yield* outbox.pendingCount(), before + 2)
      yield* outbox.markSent([pending[0]!.position])
      assert.deepStrictEqual((yield* outbox.pending(10_000)).filter((m) => m.organization_id === org).map((m) => m.event_id), [`${org}-b`])

      const failed = yield* FailedEvents
      const body = new Uint8Array([0, 255, 10, 123])
      const event = {
        id: `${org}-f1`, event_id: null, event_type: "order.placed", organization_id: org, error_type: "ValidationError",
        error_message: "bad", body, body_sha256: "ab".repeat(32), body_length: 9, content_type: "application/json",
        original_exchange: "order_events", original_routing_key: "order.placed", attempts: 1, failed_at: new Date(1000),
        replay_count: 0, last_replayed_at: null, dlq_copied_at: null,
        headers: { traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01", "x-tenant": "t-1", priority: 3, urgent: true }
      }
      assert.deepStrictEqual({ ...(yield* failed.record(event)), body: Array.from(body) }, { ...event, body: Array.from(body) })
      // A redelivery finds the first record, not its own, and learns whether it was copied.
      const again = yield* failed.record({ ...event, error_message: "second", attempts: 2 })
      assert.deepStrictEqual([again.error_message, again.attempts, again.dlq_copied_at], ["bad", 1, null])
      yield* failed.markCopied(event.id, new Date(1500))
      yield* failed.markCopied(event.id, new Date(9999))
      assert.deepStrictEqual((yield* failed.record({ ...event, error_message: "third" })).dlq_copied_at, new Date(1500))
      yield* failed.markReplayed(event.id, new Date(2000))
      const stored = yield* failed.get(event.id)
      assert.deepStrictEqual(Option.map(stored, (e) => [Array.from(e.body), e.replay_count, e.last_replayed_at]), Option.some([[0, 255, 10, 123], 1, new Date(2000)]))
      assert.deepStrictEqual(Option.map(stored, (e) => e.headers), Option.some(event.headers))
      assert.isTrue((yield* failed.list({ error_type: "ValidationError" })).some((e) => e.id === event.id))
    }))

  it.effect("the relay's sent mark keeps each outbox row on its page, so the write-ahead log does not carry the row again", () =>
    Effect.gen(function*() {
      const outbox = yield* Outbox
      const sql = yield* SqlClient
      const org = freshOrg()
      // Rows the size of a real announcement (about 700 bytes), enough to fill several pages.
      const items = Array.from({ length: 8 }, (_, i) => ({ variant_id: `variant-${i}`, warehouse_id: "warehouse-main", quantity: i + 1 }))
      yield* outbox.append(Array.from({ length: 60 }, (_, i) => ({
        event_id: `${org}-${i}`,
        organization_id: org,
        event_type: "inventory.stock.reserved" as const,
        aggregate_key: `${org}/order/o${i}`,
        payload: { event: "inventory.stock.reserved", version: "1.0", timestamp: "t", organization_id: org, event_id: `${i}`, causation_id: "c", data: { order_id: `o${i}`, items } } as never,
        traceparent: "00-0af7651916cd43dd8448eb211c80319c-b7ad6b7169203331-01",
        created_at: new Date(0)
      })))
      const pages = () =>
        Effect.map(
          sql<{ event_id: string; page: number }>`SELECT event_id, (ctid::text::point)[0]::int AS page FROM outbox WHERE organization_id = ${org} ORDER BY position`,
          (rows) => rows.map((r) => `${r.event_id}@${r.page}`)
        )
      const before = yield* pages()
      assert.isAbove(new Set(before.map((p) => p.split("@")[1])).size, 3)
      const positions = (yield* outbox.pending(10_000)).filter((m) => m.organization_id === org).map((m) => m.position)
      yield* outbox.markSent(positions)
      assert.strictEqual((yield* outbox.pending(10_000)).filter((m) => m.organization_id === org).length, 0)
      // Full pages (the default fillfactor) would have moved the new versions elsewhere.
      assert.deepStrictEqual(yield* pages(), before)
    }))
})

layer(sqlStoresLayer("reconciliation", { poolSize: 2 }), { timeout: "60 seconds" })("SQL reconciliation", (it) => {
  it.effect("finds nothing on a clean database, and each kind of violation on rows corrupted by hand", () =>
    Effect.gen(function*() {
      const sql = yield* SqlClient
      const uow = yield* UnitOfWork
      const stock = yield* Stock
      const reconciliation = yield* Reconciliation
      const org = freshOrg()
      const other = freshOrg()
      // Honest work: stock received with movements, a live reservation holding some of it.
      const honest = (o: string, v: string) =>
        uow.transaction(Effect.gen(function*() {
          const change = yield* stock.receive(key(o, v), 10, "available")
          yield* Effect.flatMap(Movements, (m) => m.append([{
            movement_id: `m-${v}`, organization_id: o, variant_id: v, warehouse_id: "wh", movement_type: "in",
            quantity_change: 10, quantity_before: change.before.total, quantity_after: change.after.total, category: "available",
            reason: "test", reference_type: null, reference_id: null, notes: null, caused_by: "e", created_at: new Date(0)
          }]))
          yield* stock.reserve(key(o, v), 3)
          yield* Effect.flatMap(Reservations, (r) => r.insert(reservation(o, `order-${v}`, `res-${v}`, [{ variant_id: v, warehouse_id: "wh", quantity: 3 }])))
        }))
      for (const v of ["i1", "i2", "i3", "i8", "i9"]) yield* honest(org, v)
      yield* honest(other, "i1")
      assert.deepStrictEqual(yield* reconciliation.check(), [])
      assert.deepStrictEqual(yield* reconciliation.check(org), [])

      // What only a dropped constraint or a hand-made UPDATE can do.
      const exec = (statement: string, params: ReadonlyArray<unknown> = []) => Effect.orDie(sql.unsafe(statement, params))
      yield* exec(`ALTER TABLE stock DROP CONSTRAINT stock_quantities_non_negative`)
      yield* exec(`ALTER TABLE stock DROP CONSTRAINT stock_total_balances`)
      yield* exec(`ALTER TABLE stock DROP CONSTRAINT stock_archived_only_empty`)
      const row = (v: string) => [org, v]
      // I1 alone: total 10 = -1 + 3 + 8, reserved and movements still agree.
      yield* exec(`UPDATE stock SET available = -1, damaged = 8 WHERE organization_id = $1 AND variant_id = $2`, row("i1"))
      // I2 alone: available grows without total.
      yield* exec(`UPDATE stock SET available = available + 1 WHERE organization_id = $1 AND variant_id = $2`, row("i2"))
      // I3 alone: a live reservation item grows, the row's reserved does not.
      yield* exec(`UPDATE reservation_items SET quantity = 4 WHERE organization_id = $1 AND reservation_id = 'res-i3'`, [org])
      // I8 alone: a movement that never happened.
      yield* Effect.flatMap(Movements, (m) => m.append([{
        movement_id: "m-ghost", organization_id: org, variant_id: "i8", warehouse_id: "wh", movement_type: "in",
        quantity_change: 5, quantity_before: 10, quantity_after: 15, category: "available",
        reason: "ghost", reference_type: null, reference_id: null, notes: null, caused_by: "e", created_at: new Date(0)
      }]))
      // I9 alone: archived while it still holds stock.
      yield* exec(`UPDATE stock SET archived_at = now() WHERE organization_id = $1 AND variant_id = $2`, row("i9"))
      // I3 on a missing row: a live reservation holding stock that does not exist.
      yield* Effect.flatMap(Reservations, (r) => r.insert(reservation(org, "order-ghost", "res-ghost", [{ variant_id: "zz", warehouse_id: "wh", quantity: 2 }])))

      const violations = yield* reconciliation.check(org)
      assert.deepStrictEqual(violations.map((v) => [v.invariant, v.variant_id, v.detail]), [
        ["I1", "i1", "not a whole number >= 0: available"],
        ["I2", "i2", "total 10 <> available 8 + reserved 3 + damaged 0"],
        ["I3", "i3", "reserved 3 <> live reservation items 4"],
        ["I8", "i8", "total 10 <> sum of movements 15"],
        ["I9", "i9", "archived with total 10"],
        ["I3", "zz", "live reservation items hold 2 of a missing stock row"]
      ])
      assert.isTrue(violations.every((v) => v.organization_id === org && v.warehouse_id === "wh" && v.reservation_id === null))
      assert.deepStrictEqual(yield* reconciliation.check(other), [], "scoped by organization")
      assert.strictEqual((yield* reconciliation.check()).length, violations.length)
    }))
})

// The live clock: the response timeout is measured on the Effect clock.
layer(sqlStoresLayer("response_timeout", { poolSize: 3, responseTimeout: "300 millis" }), { timeout: "60 seconds", excludeTestServices: true })("SQL unit of work, database not answering", (it) => {
  // effect/sql sends BEGIN and COMMIT uninterruptibly: on a dead network path a unit of work whose
  // BEGIN or COMMIT got no answer could not be interrupted, and `Effect.timeout` would wait for
  // it as long as TCP does (test/messaging/database-cut.test.ts). An uninterruptible statement
  // that takes its time stands in for that here.
  it.effect("fails as a timeout at the response timeout, while the statement it gave up on is still running", () =>
    Effect.gen(function*() {
      const uow = yield* UnitOfWork
      const sql = yield* SqlClient
      const tag = `response_timeout_${Math.random().toString(36).slice(2, 8)}`
      const exit = yield* Effect.exit(uow.transaction(Effect.uninterruptible(sql.unsafe(`SELECT pg_sleep(3), '${tag}'`))))
      const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
      assert.instanceOf(error, DatabaseError)
      assert.strictEqual((error as DatabaseError).reason, "timeout")
      // Answered before the statement ended: it still runs on the server.
      const running = yield* sql<{ readonly n: number }>`
        SELECT count(*)::int AS n FROM pg_stat_activity WHERE state = 'active' AND query LIKE ${`%${tag}%`} AND pid <> pg_backend_pid()`
      assert.strictEqual(running[0]?.n, 1)
    }))

  // Every pooled connection busy: each statement waits for one, past the response timeout.
  const statements = {
    "a health check": Effect.flatMap(StoreHealth, (h) => h.ping),
    "the relay's read": Effect.flatMap(Outbox, (o) => o.pending(10)),
    "the relay's count": Effect.flatMap(Outbox, (o) => o.pendingCount()),
    "the relay's sent mark": Effect.flatMap(Outbox, (o) => o.markSent([1])),
    "the dead-letter path's copied mark": Effect.flatMap(FailedEvents, (f) => f.markCopied("no-such-record", new Date(0)))
  }
  for (const [name, statement] of Object.entries(statements)) {
    it.effect(`${name}, sent outside a unit of work, fails as a timeout when the database does not answer`, () =>
      Effect.gen(function*() {
        const sql = yield* SqlClient
        const busy = yield* Effect.forkChild(Effect.all(Array.from({ length: 3 }, () => sql`SELECT pg_sleep(1)`), { concurrency: 3 }))
        yield* Effect.sleep("100 millis")
        const exit = yield* Effect.exit(statement as Effect.Effect<unknown, DatabaseError, any>)
        const error = Exit.isFailure(exit) ? Cause.squash(exit.cause) : undefined
        assert.instanceOf(error, DatabaseError)
        assert.strictEqual((error as DatabaseError).reason, "timeout")
        yield* Fiber.join(busy)
      }))
  }
})
