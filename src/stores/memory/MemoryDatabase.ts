import { Context, Effect, Exit, Layer, Semaphore } from "effect"
import type {
  EventLogEntry,
  FailedEvent,
  Movement,
  PendingOutboxMessage,
  Reservation,
  StockRow,
  Variant,
  Warehouse
} from "../model.ts"

/** Every table of the in-memory store. Rows are immutable values: a change replaces the row. */
export interface Tables {
  readonly warehouses: Map<string, Warehouse>
  readonly variants: Map<string, Variant>
  readonly stock: Map<string, StockRow>
  readonly reservations: Map<string, Reservation>
  readonly movements: Array<Movement>
  readonly eventLog: Map<string, EventLogEntry>
  readonly outbox: Array<PendingOutboxMessage & { readonly sent_at: Date | null }>
  /** With `seq`, the write order that breaks ties between dead letters of the same time. */
  readonly failedEvents: Map<string, FailedEvent & { readonly seq: number }>
}

const emptyTables = (): Tables => ({
  warehouses: new Map(),
  variants: new Map(),
  stock: new Map(),
  reservations: new Map(),
  movements: [],
  eventLog: new Map(),
  outbox: [],
  failedEvents: new Map()
})

const copy = (t: Tables): Tables => ({
  warehouses: new Map(t.warehouses),
  variants: new Map(t.variants),
  stock: new Map(t.stock),
  reservations: new Map(t.reservations),
  movements: t.movements.slice(),
  eventLog: new Map(t.eventLog),
  outbox: t.outbox.slice(),
  failedEvents: new Map(t.failedEvents)
})

interface Transaction {
  readonly afterCommit: Array<Effect.Effect<void>>
}

/** The unit of work the current fiber runs in, if any. */
const CurrentTransaction = Context.Reference<Transaction | undefined>("inventory/stores/memory/CurrentTransaction", {
  defaultValue: () => undefined
})

/**
 * The in-memory database behind every memory store. Units of work are serialised by one lock
 * and roll back by restoring a snapshot taken when they began (a savepoint when nested), so a
 * handler that fails half-way leaves nothing behind. A store call made outside a unit of work
 * takes the same lock, so nobody ever reads another unit's uncommitted rows.
 */
export class MemoryDatabase extends Context.Service<MemoryDatabase, {
  /** Runs `f` against the tables atomically with respect to units of work. */
  atomically<A>(f: (tables: Tables) => A): Effect.Effect<A>
  transaction<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R>
  afterCommit(effect: Effect.Effect<void>): Effect.Effect<void>
  nextOutboxPosition(): number
}>()("inventory/stores/memory/MemoryDatabase") {
  static readonly layer = Layer.effect(
    MemoryDatabase,
    Effect.gen(function*() {
      let tables = emptyTables()
      let outboxPosition = 0
      const lock = yield* Semaphore.make(1)

      const atomically = <A>(f: (tables: Tables) => A) =>
        Effect.flatMap(CurrentTransaction, (tx) =>
          tx === undefined ? lock.withPermit(Effect.sync(() => f(tables))) : Effect.sync(() => f(tables)))

      const transaction = <A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E, R> =>
        Effect.flatMap(CurrentTransaction, (outer) => {
          if (outer !== undefined) {
            // Savepoint: undo only this nested unit's rows and after-commit work on failure.
            return Effect.suspend(() => {
              const snapshot = copy(tables)
              const hooks = outer.afterCommit.length
              return Effect.onExit(effect, (exit) =>
                Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => {
                  tables = snapshot
                  outer.afterCommit.length = hooks
                }))
            })
          }
          return lock.withPermit(Effect.suspend(() => {
            const snapshot = copy(tables)
            const tx: Transaction = { afterCommit: [] }
            return effect.pipe(
              Effect.provideService(CurrentTransaction, tx),
              Effect.onExit((exit) => Exit.isSuccess(exit) ? Effect.void : Effect.sync(() => { tables = snapshot })),
              Effect.tap(() => Effect.forEach(tx.afterCommit, (hook) => hook, { discard: true }))
            )
          }))
        })

      const afterCommit = (effect: Effect.Effect<void>) =>
        Effect.flatMap(CurrentTransaction, (tx) =>
          tx === undefined ? effect : Effect.sync(() => { tx.afterCommit.push(effect) }))

      return MemoryDatabase.of({
        atomically,
        transaction,
        afterCommit,
        nextOutboxPosition: () => ++outboxPosition
      })
    })
  )
}
