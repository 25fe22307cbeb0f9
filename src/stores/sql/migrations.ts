import { Effect } from "effect"
import * as Migrator from "effect/sql/Migrator"
import { SqlClient } from "effect/sql/SqlClient"
import { liveReservationIndex } from "./errors.ts"

/** The channel a commit that wrote outbox rows notifies, with the outbox's schema as payload (`0006_outbox_notify`). */
export const outboxChannel = "inventory_outbox"

/*
 * Types. Ids are `text COLLATE "C"` so that ORDER BY sorts them the way `compareStockKeys`
 * does (code-unit order), whatever the database's locale: rows are locked in that order.
 * Quantities moved by one line are bounded (1..10^6, SPEC 2) and fit `integer`; balances and
 * movement quantities are `bigint`, because a row's total grows without bound over years of
 * returns and adjustments, and operator adjustments carry any whole number. Sums are computed
 * in SQL (`sum(bigint)` is `numeric`), so they never overflow either.
 */

const statements = (...sql: ReadonlyArray<string>) =>
  Effect.flatMap(SqlClient, (client) => Effect.forEach(sql, (statement) => client.unsafe(statement), { discard: true }))

const id = `text COLLATE "C" NOT NULL`

const createTables = statements(
  `CREATE TABLE warehouses (
    organization_id ${id},
    warehouse_id ${id},
    name text NOT NULL,
    active boolean NOT NULL,
    PRIMARY KEY (organization_id, warehouse_id)
  )`,
  `CREATE TABLE variants (
    organization_id ${id},
    variant_id ${id},
    product_id text COLLATE "C",
    sku text,
    tracked boolean NOT NULL,
    deleted_at timestamptz,
    PRIMARY KEY (organization_id, variant_id)
  )`,
  `CREATE TABLE stock (
    organization_id ${id},
    variant_id ${id},
    warehouse_id ${id},
    total bigint NOT NULL DEFAULT 0,
    available bigint NOT NULL DEFAULT 0,
    reserved bigint NOT NULL DEFAULT 0,
    damaged bigint NOT NULL DEFAULT 0,
    in_transit bigint NOT NULL DEFAULT 0,
    min_stock integer NOT NULL DEFAULT 0 CHECK (min_stock >= 0),
    max_stock integer NOT NULL DEFAULT 999999 CHECK (max_stock >= 0),
    stock_strategy text NOT NULL DEFAULT 'FIFO' CHECK (stock_strategy = 'FIFO'),
    archived_at timestamptz,
    PRIMARY KEY (organization_id, variant_id, warehouse_id),
    CONSTRAINT stock_quantities_non_negative
      CHECK (total >= 0 AND available >= 0 AND reserved >= 0 AND damaged >= 0 AND in_transit >= 0),
    CONSTRAINT stock_total_balances CHECK (total = available + reserved + damaged),
    CONSTRAINT stock_archived_only_empty CHECK (archived_at IS NULL OR (total = 0 AND in_transit = 0))
  )`,
  `CREATE TABLE reservations (
    organization_id ${id},
    reservation_id ${id},
    order_id ${id},
    status text NOT NULL CHECK (status IN ('active', 'confirmed', 'cancelled', 'expired', 'fulfilled')),
    expires_at timestamptz,
    created_at timestamptz NOT NULL,
    caused_by text NOT NULL,
    closed_reason text,
    -- write order: breaks ties between reservations created in the same millisecond
    seq bigserial NOT NULL,
    PRIMARY KEY (organization_id, reservation_id)
  )`,
  `CREATE UNIQUE INDEX ${liveReservationIndex} ON reservations (organization_id, order_id)
    WHERE status IN ('active', 'confirmed')`,
  `CREATE INDEX reservations_by_order ON reservations (organization_id, order_id, created_at DESC)`,
  `CREATE INDEX reservations_due ON reservations (status, expires_at)`,
  `CREATE TABLE reservation_items (
    organization_id ${id},
    reservation_id ${id},
    position integer NOT NULL,
    variant_id ${id},
    warehouse_id ${id},
    quantity integer NOT NULL CHECK (quantity >= 0),
    PRIMARY KEY (organization_id, reservation_id, position),
    FOREIGN KEY (organization_id, reservation_id) REFERENCES reservations (organization_id, reservation_id) ON DELETE CASCADE
  )`,
  `CREATE INDEX reservation_items_by_stock ON reservation_items (organization_id, variant_id, warehouse_id)`,
  `CREATE TABLE stock_movements (
    position bigserial PRIMARY KEY,
    movement_id text NOT NULL,
    organization_id ${id},
    variant_id ${id},
    warehouse_id ${id},
    movement_type text NOT NULL CHECK (movement_type IN ('in', 'out')),
    quantity_change bigint NOT NULL,
    quantity_before bigint NOT NULL,
    quantity_after bigint NOT NULL,
    category text NOT NULL CHECK (category IN ('available', 'damaged')),
    reason text NOT NULL,
    reference_type text,
    reference_id text,
    notes text,
    caused_by text NOT NULL,
    created_at timestamptz NOT NULL
  )`,
  `CREATE INDEX stock_movements_by_row ON stock_movements (organization_id, variant_id, warehouse_id, position)`,
  // The ledger is append-only (SPEC 4): corrections are new movements.
  `CREATE FUNCTION stock_movements_append_only() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
      RAISE EXCEPTION 'stock_movements is append-only: % refused', TG_OP USING ERRCODE = 'integrity_constraint_violation';
    END
  $$`,
  `CREATE TRIGGER stock_movements_append_only BEFORE UPDATE OR DELETE ON stock_movements
    FOR EACH ROW EXECUTE FUNCTION stock_movements_append_only()`,
  `CREATE TRIGGER stock_movements_no_truncate BEFORE TRUNCATE ON stock_movements
    FOR EACH STATEMENT EXECUTE FUNCTION stock_movements_append_only()`,
  `CREATE TABLE event_log (
    organization_id ${id},
    event_id ${id},
    event_type text NOT NULL,
    processed_at timestamptz NOT NULL,
    PRIMARY KEY (organization_id, event_id)
  )`,
  `CREATE TABLE outbox (
    position bigserial PRIMARY KEY,
    event_id text NOT NULL UNIQUE,
    organization_id ${id},
    event_type text NOT NULL,
    aggregate_key text NOT NULL,
    payload jsonb NOT NULL,
    traceparent text,
    created_at timestamptz NOT NULL,
    sent_at timestamptz
  )`,
  `CREATE INDEX outbox_unsent ON outbox (position) WHERE sent_at IS NULL`,
  `CREATE TABLE failed_events (
    id text PRIMARY KEY,
    event_id text,
    event_type text,
    organization_id text,
    error_type text NOT NULL,
    error_message text NOT NULL,
    body bytea NOT NULL,
    content_type text,
    original_exchange text NOT NULL,
    original_routing_key text NOT NULL,
    attempts integer NOT NULL CHECK (attempts >= 0),
    failed_at timestamptz NOT NULL,
    replay_count integer NOT NULL DEFAULT 0 CHECK (replay_count >= 0),
    last_replayed_at timestamptz,
    seq bigserial NOT NULL
  )`,
  `CREATE INDEX failed_events_by_time ON failed_events (failed_at, seq)`
)

/** A dead letter keeps its message's headers, so `dlq replay` sends them again (traceparent included). */
const failedEventHeaders = statements(`ALTER TABLE failed_events ADD COLUMN headers jsonb NOT NULL DEFAULT '{}'::jsonb`)

/**
 * The dead-letter protocol (SPEC 5): the record is written first, the DLQ copy once, then
 * `dlq_copied_at` is set, so a redelivery knows whether to copy. The body is kept up to a cap,
 * with the original's SHA-256 and length. Rows written before were copied before their record.
 */
const failedEventCopies = statements(
  `ALTER TABLE failed_events
    ADD COLUMN dlq_copied_at timestamptz,
    ADD COLUMN body_sha256 text,
    ADD COLUMN body_length integer CHECK (body_length >= 0)`,
  `UPDATE failed_events SET dlq_copied_at = failed_at, body_sha256 = encode(sha256(body), 'hex'), body_length = length(body)`,
  `ALTER TABLE failed_events ALTER COLUMN body_sha256 SET NOT NULL, ALTER COLUMN body_length SET NOT NULL`
)

/** `dlq list --org` pages one organization's dead letters in (failed_at, seq) order without a sort. */
const failedEventsByOrganization = statements(
  `CREATE INDEX failed_events_by_organization ON failed_events (organization_id, failed_at, seq)`
)

/**
 * The relay marks each outbox row sent soon after it is written. With full pages the new version
 * of the row goes to another page, and the write-ahead log carries the whole row again, payload
 * included (about a quarter of all the WAL of a run, issue 18); half-full pages leave it room on
 * its own page, where PostgreSQL logs only what changed. It cannot be a HOT update either way
 * (`outbox_unsent`'s predicate names `sent_at`), so the index entries stay.
 */
const outboxFillfactor = statements(`ALTER TABLE outbox SET (fillfactor = 50)`)

/**
 * A commit that wrote outbox rows wakes the active relay wherever it runs (issue 18): with
 * several replicas the relay moves to one that stands by, which no in-process nudge reaches, and
 * its rows would otherwise wait for its poll. A statement trigger notifies at most once per
 * statement that inserted rows, with the outbox's schema as the payload (deployments in other
 * schemas share the channel); PostgreSQL delivers it at commit, and not at all on rollback.
 */
const outboxNotify = statements(
  `CREATE FUNCTION outbox_notify() RETURNS trigger LANGUAGE plpgsql AS $$
  BEGIN
    IF EXISTS (SELECT 1 FROM inserted) THEN
      PERFORM pg_notify('${outboxChannel}', TG_TABLE_SCHEMA);
    END IF;
    RETURN NULL;
  END $$`,
  `CREATE TRIGGER outbox_notify AFTER INSERT ON outbox REFERENCING NEW TABLE AS inserted
    FOR EACH STATEMENT EXECUTE FUNCTION outbox_notify()`
)

/** Every migration, in code: nothing is read from disk at run time. */
export const loader = Migrator.fromRecord({
  "0001_create_inventory_tables": createTables,
  "0002_failed_event_headers": failedEventHeaders,
  "0003_failed_event_copies": failedEventCopies,
  "0004_failed_events_by_organization": failedEventsByOrganization,
  "0005_outbox_fillfactor": outboxFillfactor,
  "0006_outbox_notify": outboxNotify
})

const run = Migrator.make({})

/** Applies the pending migrations; a no-op when the schema is current. */
export const migrate = run({ loader, table: "inventory_migrations" })
