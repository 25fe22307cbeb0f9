import { PgClient } from "@effect/sql-pg"
import { Cause, Clock, Context, Duration, Effect, FiberHandle, Layer, Metric, Option, Queue, Schedule, Semaphore } from "effect"
import * as Reactivity from "effect/reactivity/Reactivity"
import { RuntimeConfig } from "../config.ts"
import { Readiness } from "../observability/health.ts"
import { outboxPending, relayActive } from "../observability/metrics.ts"
import type { PendingOutboxMessage } from "../stores/model.ts"
import { Outbox } from "../stores/services.ts"
import { answeredWithin, outboxChannel, ResponseTimeout } from "../stores/sql/index.ts"
import { Consumption } from "./activity.ts"
import { type OutgoingMessage, Publisher } from "./publisher.ts"

export interface RelayRound {
  /** Rows confirmed by the broker and marked sent. */
  readonly published: number
  /** Rows that stay pending for the next round (broker away, or behind one that failed). */
  readonly held: number
}

/**
 * The outbox relay (SPEC 6): publishes pending rows to the events exchange with publisher
 * confirms, then marks them sent. Rows of one aggregate go out strictly one after another, each
 * confirmed before the next is sent; different aggregates in parallel. Nothing is lost to a
 * broker outage: unconfirmed rows stay pending and go out once it is back. Delivery is at least
 * once (a crash between confirm and `markSent` republishes; `messageId` = `event_id` lets
 * consumers deduplicate).
 *
 * It polls, and is woken after each commit: on PostgreSQL by the commit's notification, from
 * any replica (`wakeOnCommits`); over the memory outbox, which lives in this process, by `nudge`.
 * Nothing depends on either.
 *
 * With several replicas on one database, one relay is active and the others stand by (issue
 * 17), so each row is published once and an aggregate's rows keep their order: see `elect`.
 */
export class OutboxRelay extends Context.Service<OutboxRelay, {
  /**
   * Told after a commit in this process (cheap, never blocks): wakes a relay over the memory
   * outbox; on PostgreSQL the commit's own notification wakes the active relay, so this does
   * nothing (it would only add an empty round, issue 18).
   */
  readonly nudge: Effect.Effect<void>
  /** One publish round, as the loop runs it (nothing on a standby). */
  readonly publishPending: Effect.Effect<RelayRound>
  /** Whether this relay is the one publishing (it holds the relay lock), or stands by. */
  readonly active: Effect.Effect<boolean>
}>()("inventory/messaging/OutboxRelay") {
  static readonly layer = Layer.effect(
    OutboxRelay,
    Effect.gen(function*() {
      const config = yield* RuntimeConfig
      const publisher = yield* Publisher
      const outbox = yield* Outbox
      const { eventsExchange } = config.topology
      const wake = yield* Queue.sliding<void>(1)

      const toMessage = (row: PendingOutboxMessage): OutgoingMessage => ({
        exchange: eventsExchange,
        routingKey: row.event_type,
        body: Buffer.from(JSON.stringify(row.payload)),
        options: {
          persistent: true,
          messageId: row.event_id,
          contentType: "application/json",
          type: row.event_type,
          timestamp: Math.floor(row.created_at.getTime() / 1000),
          appId: "inventory-service"
        },
        causedBy: row.traceparent
      })

      const publishPending: Effect.Effect<RelayRound> = Effect.gen(function*() {
        const rows = yield* outbox.pending(config.relay.batchSize)
        if (rows.length === 0) {
          yield* Metric.update(outboxPending, 0)
          return { published: 0, held: 0 }
        }
        const aggregates = new Map<string, Array<PendingOutboxMessage>>()
        for (const row of rows) {
          const list = aggregates.get(row.aggregate_key)
          if (list) list.push(row)
          else aggregates.set(row.aggregate_key, [row])
        }
        // In waves: the first row of every aggregate together, then the second of those whose
        // first was confirmed, and so on. A later row of an aggregate never goes out before an
        // earlier one is confirmed.
        const sent: Array<number> = []
        let wave = [...aggregates.values()].map((list) => ({ list, next: 0 }))
        while (wave.length > 0) {
          const rows = wave.map((a) => a.list[a.next]!)
          const errors = yield* publisher.publishAll(rows.map(toMessage))
          const following: typeof wave = []
          for (const [i, aggregate] of wave.entries()) {
            const row = rows[i]!
            const error = errors[i]
            if (error !== undefined) {
              yield* Effect.logWarning("outbox row not published; it stays pending").pipe(
                Effect.annotateLogs({ event_id: row.event_id, event_type: row.event_type, error: error.message })
              )
              continue
            }
            sent.push(row.position)
            aggregate.next++
            if (aggregate.next < aggregate.list.length) following.push(aggregate)
          }
          wave = following
        }
        if (sent.length > 0) yield* outbox.markSent(sent)
        // A round that read fewer rows than it may saw every pending row: what it could not
        // publish is what is left (rows committed since come with the next round). Only under a
        // backlog is the table counted, which spares a statement per round otherwise (issue 8).
        const left = rows.length - sent.length
        yield* rows.length < config.relay.batchSize
          ? Metric.update(outboxPending, left)
          : outbox.pendingCount().pipe(Effect.flatMap((n) => Metric.update(outboxPending, n)), Effect.ignore)
        return { published: sent.length, held: left }
      }).pipe(
        Effect.catchCause((cause) =>
          Effect.logWarning("outbox relay round failed; rows stay pending").pipe(
            Effect.annotateLogs({ cause: Cause.pretty(cause) }),
            Effect.as({ published: 0, held: 1 })
          )
        )
      )

      const lock = yield* Semaphore.make(1)
      // A standby's rounds publish nothing; the loop below runs the same on every replica.
      let active = false
      const idle: RelayRound = { published: 0, held: 0 }
      const round = lock.withPermit(Effect.suspend(() => (active ? publishPending : Effect.succeed(idle))))

      const readiness = yield* Effect.serviceOption(Readiness)
      if (Option.isSome(readiness)) {
        yield* readiness.value.register(
          "outbox relay",
          Effect.sync(() => ({ ok: true, detail: active ? "active" : "standby (another replica holds the relay lock)" }))
        )
      }
      const setActive = (now: boolean) =>
        Effect.suspend(() => {
          active = now
          return Metric.update(relayActive, now ? 1 : 0)
        })
      const pg = yield* Effect.serviceOption(PgClient.PgClient)
      if (Option.isNone(pg)) {
        // A memory outbox lives in this process only: no other relay can see its rows.
        yield* setActive(true)
      } else {
        yield* setActive(false)
        const consumption = yield* Effect.serviceOption(Consumption)
        const listening = yield* FiberHandle.make<never>()
        const listen = wakeOnCommits(pg.value, Queue.offer(wake, undefined), config.relay.electionInterval)
        // Forked before the loop and the shutdown drain, so it is interrupted after them: the
        // last drain still runs under the lock.
        yield* elect(pg.value, config.relay.electionInterval, yield* ResponseTimeout, {
          onActive: setActive(true).pipe(
            Effect.andThen(Queue.offer(wake, undefined)),
            Effect.andThen(FiberHandle.run(listening, listen, { onlyIfMissing: true }))
          ),
          onStandby: setActive(false).pipe(Effect.andThen(FiberHandle.clear(listening))),
          consuming: () => Option.isSome(consumption) && consumption.value.consuming(),
          // Told nothing (no consumers in this runtime), a relay stands as before.
          standingBy: () => Option.isNone(consumption) || consumption.value.standingBy(),
          handOver: (release) => lock.withPermit(Effect.andThen(setActive(false), Effect.asVoid(release)))
        }).pipe(Effect.withTracerEnabled(false), Effect.forkScoped)
      }

      /** Rounds until the outbox is empty or a round makes no progress. */
      const drain = round.pipe(
        Effect.repeat({ until: (result) => result.held > 0 || result.published < config.relay.batchSize })
      )

      // While rounds fail (the broker is away) the wait doubles from twice the poll interval, up
      // to 32 times it and at most 30 s; a clean round waits for a nudge or the poll interval.
      const backoff = Schedule.min([
        Schedule.exponential(Duration.times(config.relay.pollInterval, 2)),
        Schedule.spaced(Duration.min(Duration.times(config.relay.pollInterval, 32), Duration.seconds(30)))
      ])
      yield* drain.pipe(
        Effect.repeat({ schedule: backoff, while: (result) => result.held > 0 }),
        Effect.andThen(Queue.take(wake).pipe(Effect.timeoutOption(config.relay.pollInterval))),
        Effect.forever,
        Effect.forkScoped
      )

      // Sent messages are kept `retention` (to inspect what went out), then deleted in batches,
      // so the table holds what is pending and a window of history, not everything ever sent.
      const purgeBatch = 1_000
      const purge = Effect.gen(function*() {
        const cutoff = new Date((yield* Clock.currentTimeMillis) - Duration.toMillis(config.relay.retention))
        let deleted = 0
        while (true) {
          const n = yield* outbox.purgeSent(cutoff, purgeBatch)
          deleted += n
          if (n < purgeBatch) break
        }
        if (deleted > 0) {
          yield* Effect.logInfo("sent outbox messages past retention deleted").pipe(
            Effect.annotateLogs({ deleted, sent_before: cutoff.toISOString() })
          )
        }
      }).pipe(
        Effect.catchCause((cause) =>
          Effect.logWarning("outbox purge failed; the next one retries").pipe(Effect.annotateLogs({ cause: Cause.pretty(cause) }))
        ),
        Effect.withSpan("outbox.purge")
      )
      // Only the active relay purges: replicas deleting the same batches would only contend.
      yield* Effect.suspend(() => (active ? purge : Effect.void)).pipe(Effect.repeat(Schedule.spaced(config.relay.purgeInterval)), Effect.forkScoped)

      // On shutdown (after the consumers stopped): one last drain, bounded by the deadline.
      yield* Effect.addFinalizer(() =>
        !active ? Effect.void : drain.pipe(
          Effect.timeoutOption(config.shutdownTimeout),
          Effect.flatMap((result) =>
            Option.match(result, {
              onNone: () => Effect.logWarning("outbox not drained before the shutdown deadline; rows stay pending"),
              onSome: (r) => Effect.logInfo("outbox drained").pipe(Effect.annotateLogs({ published: r.published, pending: r.held }))
            })
          )
        )
      )

      return OutboxRelay.of({
        nudge: Option.isNone(pg) ? Queue.offer(wake, undefined).pipe(Effect.asVoid) : Effect.void,
        publishPending: round,
        active: Effect.sync(() => active)
      })
    })
  )
}

/**
 * Wakes the relay (`wake`) whenever a commit wrote outbox rows in this deployment's schema, on
 * any replica (issue 18): the outbox's trigger notifies `outboxChannel` at commit. Under single
 * active consumer the relay runs on a replica that stands by (see `elect`), which no nudge from
 * the consuming one reaches: its rows waited for the poll, half of `OUTBOX_POLL_INTERVAL_MS` on
 * average. It listens on a connection of its own while active; a lost connection is listened
 * on again after `retry`, the poll covering the gap, so a missed notification only delays rows.
 */
const wakeOnCommits = (pg: PgClient.PgClient, wake: Effect.Effect<unknown>, retry: Duration.Duration): Effect.Effect<never> =>
  Effect.scoped(Effect.gen(function*() {
    const session = yield* PgClient.makeClient(pg.config)
    // A listening session never sends a statement, so it cannot end itself when idle as the lock
    // session does; the server's keepalive ends it once this process is gone without closing it,
    // rather than keep it (and the notifications it holds back) until the operating system's
    // default, hours. (Over TCP; a Unix socket needs none.)
    const seconds = String(Math.max(1, Math.round(Duration.toSeconds(retry))))
    const [row] = yield* session<{ readonly schema: string }>`SELECT current_schema() AS schema,
      set_config('tcp_keepalives_idle', ${String(Number(seconds) * 10)}, false), set_config('tcp_keepalives_interval', ${seconds}, false),
      set_config('tcp_keepalives_count', '3', false)`
    const notifications = yield* session.listen(outboxChannel)
    return yield* Effect.forever(Effect.flatMap(Queue.takeAll(notifications), (batch) =>
      batch.some((n) => n.payload === row?.schema) ? wake : Effect.void))
  })).pipe(
    Effect.provide(Reactivity.layer),
    Effect.catchCause((cause) =>
      Effect.logWarning("outbox relay not listening for commits; it polls until it listens again").pipe(
        Effect.annotateLogs({ cause: Cause.pretty(cause) })
      )),
    Effect.andThen(Effect.sleep(retry)),
    Effect.forever,
    Effect.withTracerEnabled(false)
  )

/** The relay lock: one per database and `search_path`, so deployments in other schemas elect their own. */
const relayKey = "hashtext('inventory_outbox_relay'), hashtext(current_setting('search_path'))"
/** Held (shared) by every replica of a deployment that is not consuming: it could take the relay over. */
const candidate = "inventory_outbox_relay_candidate"
const candidateKey = `hashtext('${candidate}'), hashtext(current_setting('search_path'))`

/** Candidates other than this session, as PostgreSQL's lock table shows them (a two-key advisory lock). */
const otherCandidates = `SELECT count(*)::int AS n FROM pg_locks
  WHERE locktype = 'advisory' AND granted AND pid <> pg_backend_pid()
    AND database = (SELECT oid FROM pg_database WHERE datname = current_database())
    AND classid = hashtext('${candidate}')::oid AND objid = hashtext(current_setting('search_path'))::oid AND objsubid = 2`

/**
 * One active relay across replicas (issue 17), elected with PostgreSQL session advisory locks
 * rather than a coordinator of our own. The locks are taken on a dedicated connection (not one of
 * the pool's, which come and go): a standby tries every `interval`; the holder keeps the lock as
 * long as its session lives and checks that session every `interval`. When the holder dies, its
 * session ends, the lock is free, and a standby takes it within about `interval`.
 *
 * The relay goes where the cores are free (issue 18). Under single active consumer one replica
 * consumes and the others stand by idle, while the relay is about a fifth of a consumer's CPU. So
 * a replica that stands by (subscribed, not consuming: `Consumption`) holds a shared "candidate"
 * lock; a consuming replica takes the relay lock only while no other replica is a candidate, and
 * hands it over, between two rounds, when one appears. So does a replica whose consumers are not
 * subscribed (its broker away, or paused for the database), which may not be able to publish. A
 * lone replica keeps the relay whatever it does.
 *
 * Rows are still read `WHERE sent_at IS NULL ORDER BY position` each round, so a row committed
 * late by a slow transaction is picked up, never skipped. A holder that dies between a confirm
 * and `markSent` leaves rows its successor publishes again with the same `messageId`: at least
 * once across crashes only. A holder whose lock session is cut off (the backend ended, the network
 * gone) counts itself active until its next check of that session fails, and may publish rounds
 * meanwhile while a standby has already taken the lock: at least once there too. A check waits
 * `responseTimeout` at most for its answer, so even on a path that died without a reset (where a
 * statement waits on TCP) that is within `interval` plus `responseTimeout`
 * (test/messaging/database-cut.test.ts). A handover waits for the round in flight (`handOver`), so
 * it publishes nothing twice.
 */
const elect = (
  pg: PgClient.PgClient,
  interval: Duration.Duration,
  responseTimeout: Duration.Duration,
  on: {
    readonly onActive: Effect.Effect<void>
    readonly onStandby: Effect.Effect<void>
    /** Whether this replica is consuming now. */
    readonly consuming: () => boolean
    /** Whether it stands by, free to take the relay over (see `Consumption`). */
    readonly standingBy: () => boolean
    /** Runs `release` once no round is in flight, this relay standing by from then on. */
    readonly handOver: <E>(release: Effect.Effect<unknown, E>) => Effect.Effect<void, E>
  }
): Effect.Effect<never> =>
  Effect.gen(function*() {
    while (true) {
      let held = false
      const ended = yield* Effect.scoped(Effect.gen(function*() {
        const client = yield* PgClient.makeClient(pg.config)
        const session = {
          unsafe: <A extends object = any>(statement: string, params?: ReadonlyArray<unknown>) =>
            answeredWithin(
              client.unsafe<A>(statement, params as Array<any> | undefined),
              responseTimeout,
              Effect.fail(new Error(`the relay lock session got no answer within ${Duration.format(responseTimeout)}`))
            )
        }
        // A holder whose machine or network dies leaves a session PostgreSQL would keep (and its
        // lock) until TCP keepalive notices, hours by default; this session is never idle longer
        // than `interval` while its process lives, so the server ends it after ten of those.
        // (PostgreSQL 14+; older servers refuse the setting and keep the keepalive behaviour.)
        yield* session.unsafe("SELECT set_config('idle_session_timeout', $1, false)", [String(Duration.toMillis(interval) * 10)]).pipe(
          Effect.ignore
        )
        yield* Effect.addFinalizer(() => (held ? on.onStandby : Effect.void))
        const othersWaiting = Effect.map(session.unsafe<{ n: number }>(otherCandidates), ([row]) => (row?.n ?? 0) > 0)
        let isCandidate = false
        while (true) {
          const consuming = on.consuming()
          const standingBy = !consuming && on.standingBy()
          if (standingBy && !isCandidate) {
            const [row] = yield* session.unsafe<{ locked: boolean }>(`SELECT pg_try_advisory_lock_shared(${candidateKey}) AS locked`)
            isCandidate = row?.locked === true
          } else if (!standingBy && isCandidate) {
            yield* session.unsafe(`SELECT pg_advisory_unlock_shared(${candidateKey})`)
            isCandidate = false
          }
          if (!held) {
            // A replica that does not stand by takes a free lock only when none does, so it
            // never takes what it would hand over at its next check.
            if (standingBy || !(yield* othersWaiting)) {
              const [row] = yield* session.unsafe<{ locked: boolean }>(`SELECT pg_try_advisory_lock(${relayKey}) AS locked`)
              if (row?.locked === true) {
                held = true
                yield* on.onActive
                yield* Effect.logInfo("outbox relay active: this replica holds the relay lock")
              }
            }
          } else if (!standingBy && (yield* othersWaiting)) {
            // Consuming (its cores are busy) or not subscribed (its broker likely away): a replica
            // that stands by is the better place.
            yield* on.handOver(session.unsafe(`SELECT pg_advisory_unlock(${relayKey})`))
            held = false
            yield* Effect.logInfo("outbox relay handed over to a replica that stands by").pipe(
              Effect.annotateLogs({ consuming })
            )
          } else {
            // Held until the session fails; then the lock is gone with it.
            yield* session.unsafe("SELECT 1")
          }
          yield* Effect.sleep(interval)
        }
      })).pipe(Effect.provide(Reactivity.layer), Effect.exit)
      // A standby that cannot reach the database says so once per attempt at debug level only:
      // the database check of /readyz reports that outage already.
      yield* (held ? Effect.logWarning("outbox relay lock lost with its session; standing by") : Effect.logDebug("outbox relay lock attempt failed")).pipe(
        Effect.annotateLogs({ cause: ended._tag === "Failure" ? Cause.pretty(ended.cause) : "" })
      )
      yield* Effect.sleep(interval)
    }
  })
