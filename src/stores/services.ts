import { Context, type Effect, type Option, type Stream } from "effect"
import type { DatabaseError } from "../domain/errors.ts"
import type {
  EventLogEntry,
  FailedEvent,
  Movement,
  OutboxMessage,
  PendingOutboxMessage,
  Reservation,
  ReservationSchedule,
  ReservationStatus,
  StockCategory,
  StockKey,
  StockRow,
  Variant,
  Warehouse
} from "./model.ts"

/**
 * The store services handlers depend on. Two implementations sit behind them: `memory/`
 * (for tests, including users' own) and `sql/` (PostgreSQL). Every operation may fail with
 * `DatabaseError` only; domain decisions belong to the handlers.
 */

type Db<A> = Effect.Effect<A, DatabaseError>

/**
 * One event's whole effect as one unit: every store call made inside `transaction` commits
 * together or not at all. Nested calls become savepoints, so a batch can roll back one event
 * and keep the others. `afterCommit` work runs only once the outermost unit committed.
 */
export class UnitOfWork extends Context.Service<UnitOfWork, {
  transaction<A, E, R>(effect: Effect.Effect<A, E, R>): Effect.Effect<A, E | DatabaseError, R>
  afterCommit(effect: Effect.Effect<void>): Effect.Effect<void>
}>()("inventory/stores/UnitOfWork") {}

export class Warehouses extends Context.Service<Warehouses, {
  upsert(warehouse: Warehouse): Db<void>
  setActive(organizationId: string, warehouseId: string, active: boolean): Db<boolean>
  list(organizationId: string): Db<ReadonlyArray<Warehouse>>
  listActive(organizationId: string): Db<ReadonlyArray<Warehouse>>
}>()("inventory/stores/Warehouses") {}

export class Variants extends Context.Service<Variants, {
  get(organizationId: string, variantId: string): Db<Option.Option<Variant>>
  upsert(variant: Variant): Db<void>
}>()("inventory/stores/Variants") {}

/** One order of one organization. */
export interface OrderRef {
  readonly organization_id: string
  readonly order_id: string
}

/** One reservation of one organization. */
export interface ReservationRef {
  readonly organization_id: string
  readonly reservation_id: string
}

/** One event of one organization. */
export interface EventRef {
  readonly organization_id: string
  readonly event_id: string
}

export interface StockChange {
  readonly before: StockRow
  readonly after: StockRow
}

export interface StockFilter {
  readonly organization_id?: string
  readonly variant_id?: string
  readonly warehouse_id?: string
}

export class Stock extends Context.Service<Stock, {
  /**
   * The rows of these variants, archived ones included, in primary-key order. With `lock`
   * they are locked for the rest of the unit of work (in that order, so two units touching
   * the same rows never deadlock).
   */
  forVariants(organizationId: string, variantIds: ReadonlyArray<string>, options: { readonly lock: boolean }): Db<ReadonlyArray<StockRow>>
  /**
   * The rows of these variants that can serve an order (not archived, in an active warehouse),
   * locked for the rest of the unit of work in primary-key order. One step where reading the
   * active warehouses and then `forVariants` would take two (issue 8).
   */
  candidates(organizationId: string, variantIds: ReadonlyArray<string>): Db<ReadonlyArray<StockRow>>
  /** Creates missing rows (zero quantities), un-archives archived empty ones; returns how many it created. */
  initialize(organizationId: string, variantId: string, warehouseIds: ReadonlyArray<string>, levels: { readonly min: number; readonly max: number }): Db<number>
  /** available -> reserved, only while `available >= quantity` and the row is live. None when refused. */
  reserve(key: StockKey, quantity: number): Db<Option.Option<StockRow>>
  /** reserved -> available. */
  release(key: StockKey, quantity: number): Db<StockRow>
  /** reserved and total both fall by `quantity` (goods left the warehouse). */
  ship(key: StockKey, quantity: number): Db<StockChange>
  /** Adds to `available` or `damaged` and to total, creating (or un-archiving) the row. */
  receive(key: StockKey, quantity: number, category: StockCategory): Db<StockChange>
  /**
   * Signed change to `available` or `damaged` and total, creating the row if needed. None
   * when it would take a quantity below zero.
   */
  adjust(key: StockKey, delta: number, category: StockCategory): Db<Option.Option<StockChange>>
  /** Archives the variant's live rows; returns how many. */
  archive(organizationId: string, variantId: string): Db<number>
  list(filter: StockFilter): Db<ReadonlyArray<StockRow>>
}>()("inventory/stores/Stock") {}

export class Reservations extends Context.Service<Reservations, {
  /** Serialises every order event of one order for the rest of the unit of work. */
  lockOrder(organizationId: string, orderId: string): Db<void>
  /** The reservation, locked for the rest of the unit of work. */
  lockById(organizationId: string, reservationId: string): Db<Option.Option<Reservation>>
  findById(organizationId: string, reservationId: string): Db<Option.Option<Reservation>>
  /** Every reservation of the order, newest first. */
  findByOrder(organizationId: string, orderId: string): Db<ReadonlyArray<Reservation>>
  /** False when the order already has a live reservation (nothing written). */
  insert(reservation: Reservation): Db<boolean>
  /** Moves the reservation to `to` only from one of `from`; false when it was elsewhere. */
  transition(organizationId: string, reservationId: string, from: ReadonlyArray<ReservationStatus>, to: ReservationStatus, reason: string | null): Db<boolean>
  /** Active reservations past due, locked, skipping any another process holds. */
  lockDue(now: Date, limit: number): Db<ReadonlyArray<Reservation>>
  /**
   * Of `refs`, the active reservations past due, locked (`claimed`), skipping without waiting any
   * whose row or order another transaction holds (another replica expiring it, a group working on
   * its order): those that still looked active and past due come back as `busy`, to try again.
   */
  lockDueAmong(refs: ReadonlyArray<ReservationRef>, now: Date): Db<{
    readonly claimed: ReadonlyArray<Reservation>
    readonly busy: ReadonlyArray<ReservationRef>
  }>
  /**
   * Active reservations' expiries, for the timers, as a stream: one statement and one pass over
   * the rows, in no particular order, so the reader holds what one read brings, not the table
   * (the SQL store's driver pauses the socket when the reader falls behind). With `due`, only
   * those expiring after `due.after` (null: any time before) and at `due.upTo` or earlier.
   */
  activeSchedules(due?: { readonly after: Date | null; readonly upTo: Date }): Stream.Stream<ReservationSchedule, DatabaseError>
  list(filter: { readonly organization_id: string; readonly order_id?: string; readonly status?: ReservationStatus }): Db<ReadonlyArray<Reservation>>
}>()("inventory/stores/Reservations") {}

/**
 * One cancellable timer per live reservation, keyed by (organization, reservation id): ids are
 * scoped by organization (SPEC 3), so one organization's confirm never cancels another's timer.
 * Handlers schedule a timer when they reserve and cancel it on confirm, cancel and ship;
 * `reservations/scheduler.ts` implements it and expires the reservation when the timer fires.
 * It sits here, beside the stores, so handlers require it and the scheduler provides it with
 * neither importing the other's folder upwards (issue 16).
 */
export class ReservationTimers extends Context.Service<ReservationTimers, {
  schedule(reservation: ReservationSchedule): Effect.Effect<void>
  cancel(organizationId: string, reservationId: string): Effect.Effect<void>
  /** How many timers the scheduler holds: one per scheduled reservation, a cancelled one gone at once. */
  readonly pending: Effect.Effect<number>
  /** Completes once every timer due by now has fired and its expiry has finished. */
  readonly settled: Effect.Effect<void>
}>()("inventory/reservations/ReservationTimers") {}

export class Movements extends Context.Service<Movements, {
  append(movements: ReadonlyArray<Movement>): Db<void>
  list(filter: StockFilter): Db<ReadonlyArray<Movement>>
}>()("inventory/stores/Movements") {}

export class EventLog extends Context.Service<EventLog, {
  /** Records a processed event; false when it was recorded before (a duplicate). */
  record(entry: EventLogEntry): Db<boolean>
  has(organizationId: string, eventId: string): Db<boolean>
}>()("inventory/stores/EventLog") {}

export class Outbox extends Context.Service<Outbox, {
  append(messages: ReadonlyArray<OutboxMessage>): Db<void>
  /** Unsent messages in write order. */
  pending(limit: number): Db<ReadonlyArray<PendingOutboxMessage>>
  markSent(positions: ReadonlyArray<number>): Db<void>
  pendingCount(): Db<number>
  /**
   * Deletes up to `limit` messages sent before `sentBefore`, oldest first, and returns how many.
   * A message not yet sent is never deleted, however old.
   */
  purgeSent(sentBefore: Date, limit: number): Db<number>
}>()("inventory/stores/Outbox") {}

/** Where a dead letter sits in the list: its time, then its write order (`seq`) to break ties. */
export interface FailedEventPosition {
  readonly failed_at: Date
  readonly seq: number
}

/** A dead letter as `list` returns it, with its position for the next page. */
export interface ListedFailedEvent extends FailedEvent {
  readonly seq: number
}

export interface FailedEventFilter {
  readonly event_type?: string
  readonly error_type?: string
  readonly organization_id?: string
  /** Keyset paging: only dead letters after this position in (failed_at, seq) order. */
  readonly after?: FailedEventPosition
  /** At most this many (default: every match). */
  readonly limit?: number
}

export class FailedEvents extends Context.Service<FailedEvents, {
  /**
   * Stores a dead letter unless its id is stored already, and returns the stored one: a
   * redelivery finds the record (and whether it was copied to the DLQ) of its first delivery.
   */
  record(event: FailedEvent): Db<FailedEvent>
  get(id: string): Db<Option.Option<FailedEvent>>
  /** The record's copy was confirmed on the DLQ: a redelivery is only acknowledged. */
  markCopied(id: string, at: Date): Db<void>
  /** Oldest first, in (failed_at, seq) order; page with `after` and `limit`. */
  list(filter: FailedEventFilter): Db<ReadonlyArray<ListedFailedEvent>>
  markReplayed(id: string, at: Date): Db<void>
  /** Deletes up to `limit` dead letters that failed before `failedBefore`, oldest first, and returns how many. */
  purge(failedBefore: Date, limit: number): Db<number>
}>()("inventory/stores/FailedEvents") {}

/** One broken invariant of SPEC 3, found on one row or reservation. */
export interface Violation {
  readonly invariant: "I1" | "I2" | "I3" | "I8" | "I9"
  readonly organization_id: string
  readonly variant_id: string | null
  readonly warehouse_id: string | null
  readonly reservation_id: string | null
  readonly detail: string
}

/**
 * The books-balance check (SPEC 3): every violation of I1 (quantities >= 0), I2 (total =
 * available + reserved + damaged), I3 (reserved = live reservation items), I8 (movements sum
 * to total) and I9 (archived only when empty), per row.
 */
export class Reconciliation extends Context.Service<Reconciliation, {
  check(organizationId?: string): Db<ReadonlyArray<Violation>>
}>()("inventory/stores/Reconciliation") {}

/** One variant of one organization. */
export interface VariantRef {
  readonly organization_id: string
  readonly variant_id: string
}

/**
 * What a group of events may read (issue 18): the rows of these orders, reservations, variants
 * and organizations. The event-log entries are recorded on loading, each as `EventLog.record` would.
 */
export interface WorkingSetDemand {
  readonly events: ReadonlyArray<EventLogEntry>
  readonly organizations: ReadonlyArray<string>
  readonly orders: ReadonlyArray<OrderRef>
  readonly reservations: ReadonlyArray<ReservationRef>
  /** Their stock rows are loaded, and those of every variant the loaded reservations hold. */
  readonly variants: ReadonlyArray<VariantRef>
  /** Variants whose catalog rows are read (catalog events). */
  readonly catalog: ReadonlyArray<VariantRef>
}

/** The rows a demand covers, as they stood once locked. */
export interface WorkingSetRows {
  /** One flag per demanded event, as `EventLog.record` answers: false for a duplicate, and for an id repeated in the list after its first. */
  readonly recorded: ReadonlyArray<boolean>
  /** Every warehouse of the demanded organizations. */
  readonly warehouses: ReadonlyArray<Warehouse>
  /** The demanded variants' catalog rows that exist. */
  readonly variants: ReadonlyArray<Variant>
  /** Every stock row of the demanded variants and of the loaded reservations' variants, locked. */
  readonly stock: ReadonlyArray<StockRow>
  /** Every reservation of the demanded orders, and those with the demanded ids, in write order. */
  readonly reservations: ReadonlyArray<Reservation>
  /** The variants whose stock rows were loaded (the demanded ones and those the reservations hold). */
  readonly stockVariants: ReadonlyArray<VariantRef>
}

/** What a group's events changed, to be written in a constant number of statements. */
export interface WorkingSetChanges {
  /** Existing rows (loaded and locked) with their new values. */
  readonly stockUpdated: ReadonlyArray<StockRow>
  /** Rows that did not exist when loaded. */
  readonly stockCreated: ReadonlyArray<StockRow>
  readonly reservationsCreated: ReadonlyArray<Reservation>
  /** Existing reservations with a new status or closing reason. */
  readonly reservationsChanged: ReadonlyArray<Reservation>
  readonly variants: ReadonlyArray<Variant>
  readonly movements: ReadonlyArray<Movement>
  readonly outbox: ReadonlyArray<OutboxMessage>
  /** Event-log entries recorded on loading whose events' effects were all rolled back. */
  readonly forget: ReadonlyArray<EventRef>
}

/**
 * Set-based units of work (issue 18): a group of events reads the rows it may touch in a few
 * statements (`load`, which locks them in the one fixed order: orders, then stock rows by
 * primary key), is applied in memory one event at a time, and writes what changed in a few more
 * (`save`). Both run inside the caller's unit of work. `save` fails with `DatabaseError` when a
 * write finds the rows other than loaded (a row created meanwhile), so the group rolls back.
 */
export class WorkingSet extends Context.Service<WorkingSet, {
  load(demand: WorkingSetDemand): Db<WorkingSetRows>
  save(changes: WorkingSetChanges): Db<void>
}>()("inventory/stores/WorkingSet") {}

/** Whether the store answers at all: the circuit breaker and `/readyz` ask it. */
export class StoreHealth extends Context.Service<StoreHealth, {
  readonly ping: Db<void>
}>()("inventory/stores/StoreHealth") {}

/** Every store service, as one requirement. */
export type Stores =
  | UnitOfWork
  | Warehouses
  | Variants
  | Stock
  | Reservations
  | Movements
  | EventLog
  | Outbox
  | FailedEvents
  | Reconciliation
  | StoreHealth
  | WorkingSet
