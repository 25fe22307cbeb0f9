import { Clock, Console, Duration, Effect, Option, Schema } from "effect"
import { Argument, Command, Flag } from "effect/cli"
import { SqlClient } from "effect/sql/SqlClient"
import { Id } from "../domain/primitives.ts"
import { Publisher } from "../messaging/publisher.ts"
import type { FailedEvent } from "../stores/model.ts"
import { type FailedEventFilter, type FailedEventPosition, FailedEvents, type ListedFailedEvent } from "../stores/services.ts"
import { BrokerPublisher, Database, DatabaseWithClient } from "./environment.ts"
import * as Flags from "./flags.ts"
import { type Column, failure, iso, jsonText, minute, printJson, renderRecord, renderTable, shortId, usage } from "./output.ts"

/**
 * `inventory dlq list|show|replay`: dead-lettered events as the database keeps them (after the
 * queue's TTL and length cap would have dropped them), and their replay to where they came from.
 */

export interface FailedEventJson {
  readonly id: string
  readonly event_id: string | null
  readonly event_type: string | null
  readonly organization_id: string | null
  readonly error_type: string
  readonly error_message: string
  readonly original_exchange: string
  readonly original_routing_key: string
  readonly attempts: number
  readonly failed_at: string
  readonly replay_count: number
  readonly last_replayed_at: string | null
}

export interface FailedEventDetailJson extends FailedEventJson {
  readonly content_type: string | null
  /** The message's own headers as stored (the broker's bookkeeping left out). */
  readonly headers: Readonly<Record<string, string | number | boolean>>
  /** The body as UTF-8 text, or base64 when it is not valid UTF-8 (see `body_encoding`). */
  readonly body: string
  readonly body_encoding: "utf8" | "base64"
}

export const failedEventJson = (e: FailedEvent): FailedEventJson => ({
  id: e.id,
  event_id: e.event_id,
  event_type: e.event_type,
  organization_id: e.organization_id,
  error_type: e.error_type,
  error_message: e.error_message,
  original_exchange: e.original_exchange,
  original_routing_key: e.original_routing_key,
  attempts: e.attempts,
  failed_at: e.failed_at.toISOString(),
  replay_count: e.replay_count,
  last_replayed_at: iso(e.last_replayed_at)
})

const utf8 = new TextDecoder("utf-8", { fatal: true })

const bodyText = (body: Uint8Array): { readonly body: string; readonly body_encoding: "utf8" | "base64" } => {
  try {
    return { body: utf8.decode(body), body_encoding: "utf8" }
  } catch {
    return { body: Buffer.from(body).toString("base64"), body_encoding: "base64" }
  }
}

const detailJson = (e: FailedEvent): FailedEventDetailJson => ({
  ...failedEventJson(e),
  content_type: e.content_type,
  headers: e.headers,
  ...bodyText(e.body)
})

const controls = /[\u0000-\u0008\u000b-\u001f\u007f-\u009f]/g
const controlsAndLines = /[\u0000-\u001f\u007f-\u009f]/g

/**
 * Control characters as visible `\xNN` escapes (C0, DEL and C1; newline and tab kept unless
 * `oneLine`): a dead letter's bytes are anyone's, and must not drive the operator's terminal.
 */
export const escapeControls = (text: string, options: { readonly oneLine?: boolean } = {}): string =>
  text.replace(options.oneLine === true ? controlsAndLines : controls, (c) => `\\x${c.charCodeAt(0).toString(16).padStart(2, "0")}`)

/**
 * Rows printed a page at a time, so a long listing never sits in memory whole: one JSON array
 * (as `--json` printed before paging), or one table whose header comes once. Each page is
 * aligned on its own.
 */
const pagedOutput = <A, J>(json: boolean, toJson: (row: A) => J, columns: ReadonlyArray<Column<A>>, empty: string) => {
  let printed = 0
  // The JSON of the page before, held until it is known whether a comma follows it.
  let held: string | null = null
  return {
    page: (rows: ReadonlyArray<A>) =>
      Effect.suspend(() => {
        if (rows.length === 0) return Effect.void
        const first = printed === 0
        printed += rows.length
        if (json) {
          const items = rows.map((row) => jsonText(toJson(row)).replace(/^/gm, "  ")).join(",\n")
          const before = held
          held = `${first ? "[\n" : ""}${items}`
          return before === null ? Effect.void : Console.log(`${before},`)
        }
        const table = renderTable(rows, columns, empty)
        return Console.log(first ? table : table.slice(table.indexOf("\n") + 1))
      }),
    end: Effect.suspend(() => {
      if (json) return Console.log(held === null ? "[]" : `${held}\n]`)
      return printed === 0 ? Console.log(empty) : Effect.void
    })
  }
}

/**
 * Every dead letter that matches, page by page in (failed_at, seq) order (keyset paging: each
 * page starts after the last row of the one before), never more than `pageSize` in memory.
 */
const eachPage = <E, R>(
  filter: FailedEventFilter,
  pageSize: number,
  /** False stops the paging. */
  f: (rows: ReadonlyArray<ListedFailedEvent>) => Effect.Effect<boolean, E, R>
) =>
  Effect.gen(function*() {
    const store = yield* FailedEvents
    let after: FailedEventPosition | undefined
    while (true) {
      const rows = yield* store.list({ ...filter, ...(after !== undefined ? { after } : {}), limit: pageSize })
      if (rows.length === 0) return
      const last = rows[rows.length - 1]!
      after = { failed_at: last.failed_at, seq: last.seq }
      if (!(yield* f(rows))) return
      if (rows.length < pageSize) return
    }
  })

/** Every column, ids and reason in full: `--wide`. */
const wideColumns: ReadonlyArray<Column<FailedEvent>> = [
  { header: "ID", value: (e) => e.id },
  { header: "EVENT_TYPE", value: (e) => e.event_type },
  { header: "ORG", value: (e) => e.organization_id },
  { header: "ERROR_TYPE", value: (e) => e.error_type },
  { header: "ATTEMPTS", value: (e) => e.attempts, align: "right" },
  { header: "FAILED_AT", value: (e) => e.failed_at.toISOString() },
  { header: "EXCHANGE", value: (e) => e.original_exchange },
  { header: "ROUTING_KEY", value: (e) => e.original_routing_key },
  { header: "REPLAYS", value: (e) => e.replay_count, align: "right" },
  { header: "LAST_REPLAYED_AT", value: (e) => iso(e.last_replayed_at) },
  { header: "REASON", value: (e) => e.error_message }
]

/**
 * What fits 120 columns: short ids, time to the minute (UTC), the origin left to `--wide` and
 * `dlq show`, the reason in whatever room is left. Caps: 8+16+18+12+20+8+7 and 7 gaps = 103.
 */
const narrowColumns: ReadonlyArray<Column<FailedEvent>> = [
  { header: "ID", value: (e) => shortId(e.id) },
  { header: "FAILED_AT", value: (e) => minute(e.failed_at) },
  { header: "EVENT_TYPE", value: (e) => e.event_type, max: 18 },
  { header: "ORG", value: (e) => e.organization_id, max: 12 },
  { header: "ERROR_TYPE", value: (e) => e.error_type, max: 20 },
  { header: "ATTEMPTS", value: (e) => e.attempts, align: "right" },
  { header: "REPLAYS", value: (e) => e.replay_count, align: "right" },
  { header: "REASON", value: (e) => e.error_message, fill: true }
]

const failedColumns = (wide: boolean) => (wide ? wideColumns : narrowColumns)

const organizationFlag = Flags.id("org", "Only this organization's dead letters").pipe(Flag.optional)

const filterFlags = {
  eventType: Flag.String("event-type").pipe(Flag.withDescription("Only this event type, e.g. order.placed"), Flag.optional),
  errorType: Flag.String("error-type").pipe(Flag.withDescription("Only this error type, e.g. InsufficientStock or BrokerExpired"), Flag.optional),
  org: organizationFlag
}

const PositivePageSize = Schema.Number.check(Schema.isBetween({ minimum: 1, maximum: 10_000 }, { message: "must be from 1 to 10000" }))

const pageSizeFlag = Flag.Int("page-size").pipe(
  Flag.withSchema(PositivePageSize),
  Flag.withDescription("Dead letters read from the database at a time, bodies included (default 200)"),
  Flag.withDefault(200)
)

const filterOf = (eventType: Option.Option<string>, errorType: Option.Option<string>, org: Option.Option<string>): FailedEventFilter => ({
  ...Option.match(eventType, { onNone: () => ({}), onSome: (event_type) => ({ event_type }) }),
  ...Option.match(errorType, { onNone: () => ({}), onSome: (error_type) => ({ error_type }) }),
  ...Option.match(org, { onNone: () => ({}), onSome: (organization_id) => ({ organization_id }) })
})

const list = Command.make(
  "list",
  { ...filterFlags, pageSize: pageSizeFlag, json: Flags.json, wide: Flags.wide },
  ({ eventType, errorType, org, pageSize, json, wide }) =>
    Effect.gen(function*() {
      const out = pagedOutput(json, failedEventJson, failedColumns(wide), "No dead-lettered events for this filter.")
      yield* eachPage(filterOf(eventType, errorType, org), pageSize, (rows) => Effect.as(out.page(rows), true))
      yield* out.end
    })
).pipe(
  Command.withDescription("List dead-lettered events, oldest first, with reason, attempts, time, origin and replays"),
  Command.withExamples([
    { command: "inventory dlq list --error-type InsufficientStock", description: "Events refused for lack of stock" },
    { command: "inventory dlq list --org acme --error-type BrokerExpired", description: "One organization's messages that expired in the queue" }
  ]),
  Command.provide(Database)
)

const failedEventId = Argument.String("id").pipe(
  Argument.withSchema(Id),
  Argument.withDescription("Dead-letter id, or its start as dlq list shows it (8 characters)")
)

/** The dead letter, which must belong to `org` when one is given. */
/**
 * The id as given, or the one id it is the start of: `dlq list` shows 8 characters, and they
 * must be enough to name the record. Two ids with that start: say so, rather than pick one.
 */
const resolveId = (id: string) =>
  Effect.gen(function*() {
    const sql = yield* SqlClient
    const exact = yield* sql<{ id: string }>`SELECT id FROM failed_events WHERE id = ${id}`
    if (exact.length > 0) return id
    const rows = yield* sql<{ id: string }>`SELECT id FROM failed_events WHERE starts_with(id, ${id}) ORDER BY id LIMIT 2`
    if (rows.length > 1) return yield* failure(`${id} is the start of more than one dead-letter id; give more of it (dlq list --wide shows them whole).`)
    return rows[0]?.id ?? id
  })

const findOrFail = (given: string, org: Option.Option<string>) =>
  Effect.gen(function*() {
    const id = yield* resolveId(given)
    const found = yield* (yield* FailedEvents).get(id)
    if (Option.isNone(found)) return yield* failure(`No dead-lettered event with id ${id}.`)
    if (Option.isSome(org) && found.value.organization_id !== org.value) {
      return yield* failure(`No dead-lettered event with id ${id} in organization ${org.value}.`)
    }
    return found.value
  })

const headerLines = (headers: Readonly<Record<string, string | number | boolean>>): string => {
  // Sorted: jsonb keeps its own key order, not the publisher's.
  const entries = Object.entries(headers).sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
  if (entries.length === 0) return "headers: -"
  return ["headers:", ...entries.map(([name, value]) =>
    `  ${escapeControls(name, { oneLine: true })}: ${typeof value === "string" ? escapeControls(value, { oneLine: true }) : String(value)}`
  )].join("\n")
}

const show = Command.make(
  "show",
  { id: failedEventId, org: organizationFlag, json: Flags.json },
  ({ id, org, json }) =>
    Effect.gen(function*() {
      const event = yield* findOrFail(id, org)
      if (json) return yield* printJson(detailJson(event))
      const detail = detailJson(event)
      yield* Console.log(renderRecord([
        ["id", event.id],
        ["event_id", event.event_id],
        ["event_type", event.event_type],
        ["organization_id", event.organization_id],
        ["error_type", event.error_type],
        ["error_message", event.error_message],
        ["attempts", event.attempts],
        ["failed_at", event.failed_at.toISOString()],
        ["original_exchange", event.original_exchange],
        ["original_routing_key", event.original_routing_key],
        ["content_type", event.content_type],
        ["replay_count", event.replay_count],
        ["last_replayed_at", iso(event.last_replayed_at)],
        ["body_encoding", detail.body_encoding]
      ]))
      yield* Console.log(headerLines(event.headers))
      yield* Console.log(`\n${escapeControls(detail.body)}`)
    })
).pipe(
  Command.withDescription("Show one dead-lettered event, its headers and body (control characters shown as \\xNN escapes)"),
  Command.provide(DatabaseWithClient)
)

export interface ReplayJson {
  readonly id: string
  readonly event_id: string | null
  readonly event_type: string | null
  readonly original_exchange: string
  readonly original_routing_key: string
  /** false on `--dry-run`. */
  readonly replayed: boolean
  readonly replay_count: number
}

/** Headers a replayed message carries, so the consumer's logs and traces can tell it apart. */
export const replayHeaders = { replayOf: "x-replay-of", replayCount: "x-replay-count" } as const

/** The original body to its original exchange and routing key, persistent, confirmed by the broker. */
const republish = (event: FailedEvent) =>
  Effect.gen(function*() {
    yield* (yield* Publisher).publish({
      exchange: event.original_exchange,
      routingKey: event.original_routing_key,
      body: event.body,
      options: {
        persistent: true,
        // The event's id as its messageId: decoding gives it the same event_id as the first time
        // (SPEC 2), so a replay of an event that has since succeeded is a duplicate and changes nothing.
        ...(event.event_id !== null ? { messageId: event.event_id } : {}),
        ...(event.content_type !== null ? { contentType: event.content_type } : {}),
        // The message's own headers again, and its traceparent as the producer span's parent:
        // the replay joins the original trace.
        headers: { ...event.headers, [replayHeaders.replayOf]: event.id, [replayHeaders.replayCount]: event.replay_count + 1 }
      },
      causedBy: typeof event.headers["traceparent"] === "string" ? event.headers["traceparent"] : null
    })
    yield* (yield* FailedEvents).markReplayed(event.id, new Date(yield* Clock.currentTimeMillis))
  })

const PositiveRate = Schema.Number.check(Schema.isGreaterThanOrEqualTo(1, { message: "must be at least 1 (messages per second)" }))

const replayColumns: ReadonlyArray<Column<ReplayJson>> = [
  { header: "ID", value: (r) => r.id },
  { header: "EVENT_TYPE", value: (r) => r.event_type },
  { header: "EXCHANGE", value: (r) => r.original_exchange },
  { header: "ROUTING_KEY", value: (r) => r.original_routing_key },
  { header: "REPLAYED", value: (r) => (r.replayed ? "yes" : "no (dry run)") },
  { header: "REPLAYS", value: (r) => r.replay_count, align: "right" }
]

const outcome = (e: FailedEvent, replayed: boolean): ReplayJson => ({
  id: e.id,
  event_id: e.event_id,
  event_type: e.event_type,
  original_exchange: e.original_exchange,
  original_routing_key: e.original_routing_key,
  replayed,
  replay_count: e.replay_count + (replayed ? 1 : 0)
})

const replay = Command.make(
  "replay",
  {
    id: Flags.id("id", "Replay this dead-lettered event (its id, or the start dlq list shows)").pipe(Flag.optional),
    all: Flag.Boolean("all").pipe(
      Flag.withDescription("Replay every dead-lettered event not replayed yet (narrowed by the filters)"),
      Flag.withDefault(false)
    ),
    includeReplayed: Flag.Boolean("include-replayed").pipe(
      Flag.withDescription("With --all: also events replayed before"),
      Flag.withDefault(false)
    ),
    ...filterFlags,
    pageSize: pageSizeFlag,
    dryRun: Flag.Boolean("dry-run").pipe(Flag.withDescription("Only list what would be replayed"), Flag.withDefault(false)),
    rate: Flag.Int("rate").pipe(
      Flag.withSchema(PositiveRate),
      Flag.withDescription("At most N messages per second (default: no limit)"),
      Flag.optional
    ),
    json: Flags.json
  },
  ({ id, all, includeReplayed, eventType, errorType, org, pageSize, dryRun, rate, json }) =>
    Effect.gen(function*() {
      if (Option.isSome(id) === all) return yield* usage("give exactly one of --id ID or --all")
      if (Option.isSome(id) && (Option.isSome(eventType) || Option.isSome(errorType) || includeReplayed)) {
        return yield* usage("--event-type, --error-type and --include-replayed go with --all, not with --id")
      }
      const out = pagedOutput(json, (r: ReplayJson) => r, replayColumns, "Nothing to replay.")
      const spacing = Option.map(rate, (n) => Duration.millis(1000 / n))
      let sent = 0

      /** Replays the rows in order; what went out is printed even when a later one fails. */
      const replayRows = (rows: ReadonlyArray<FailedEvent>) =>
        Effect.gen(function*() {
          if (dryRun) return yield* out.page(rows.map((e) => outcome(e, false)))
          const done: Array<ReplayJson> = []
          yield* Effect.forEach(rows, (event) =>
            Effect.gen(function*() {
              if (sent > 0 && Option.isSome(spacing)) yield* Effect.sleep(spacing.value)
              yield* republish(event)
              sent++
              done.push(outcome(event, true))
            }), { discard: true }).pipe(
              Effect.provide(BrokerPublisher),
              // What went out is marked; say so before failing, so the operator knows where it stopped.
              // Nothing sent yet (the broker unreachable, say): no "Nothing to replay." on the way out.
              Effect.catchCause((cause) =>
                Effect.andThen(sent > 0 ? Effect.andThen(out.page(done), out.end) : Effect.void, Effect.failCause(cause)))
            )
          yield* out.page(done)
        })

      if (Option.isSome(id)) {
        yield* replayRows([yield* findOrFail(id.value, org)])
        return yield* out.end
      }
      // Only what had failed when the command started: a replay that fails again is recorded
      // anew, after it in the list, and must not be replayed by the same run.
      const startedAt = new Date()
      yield* eachPage(filterOf(eventType, errorType, org), pageSize, (page) =>
        Effect.gen(function*() {
          const current = page.filter((e) => e.failed_at.getTime() <= startedAt.getTime())
          yield* replayRows(current.filter((e) => includeReplayed || e.replay_count === 0))
          return current.length === page.length
        }))
      yield* out.end
    })
).pipe(
  Command.withDescription(
    "Republish dead-lettered events to their original exchange and routing key (publisher confirms) and mark them replayed"
  ),
  Command.withExamples([
    { command: "inventory dlq replay --id 0b7d2c1e-5f7a-4c3b-9e1d-2a6f8c4b9d10", description: "Replay one event" },
    { command: "inventory dlq replay --all --error-type InsufficientStock --rate 10", description: "Replay a class of failures, 10 per second" },
    { command: "inventory dlq replay --all --org acme --dry-run", description: "See what --all would replay for one organization" }
  ]),
  Command.provide(DatabaseWithClient)
)

export const dlq = Command.make("dlq").pipe(
  Command.withDescription("Review and replay dead-lettered events"),
  Command.withSubcommands([list, show, replay])
)
