import { Effect, Layer, ManagedRuntime } from "effect"
import { SqlClient } from "effect/sql/SqlClient"
import pg from "pg"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { RuntimeConfig } from "../../src/config.ts"
import * as SqlStores from "../../src/stores/sql/index.ts"
import { Outbox } from "../../src/stores/services.ts"
import { testDatabaseUrl, uniqueSchema } from "../support/sql.ts"
import { createVhost, deleteVhost, eventually, testEnv, uniqueVhost } from "../support/rabbit.ts"
import { captureAnnouncements, type Consumers, outboxRow, type Replica, startRelay as startRelayOn } from "../support/relays.ts"

/**
 * Two relays on one database (two replicas): one holds the PostgreSQL advisory lock and
 * publishes, the other stands by, so every outbox row reaches the events exchange once, each
 * aggregate's rows in order. When the active relay's scope closes, its session ends and the
 * standby takes over the rows that come after.
 */

const vhost = uniqueVhost("relay_election")
const schema = uniqueSchema("mq_relay_election")
const env = testEnv(vhost, { OUTBOX_POLL_INTERVAL_MS: "50", OUTBOX_BATCH_SIZE: "20", OUTBOX_RELAY_LOCK_INTERVAL: "100" })
const capture = captureAnnouncements(vhost, "relay_election_capture")

// One pool for both relays, as in one process: each relay still takes the lock on a dedicated
// connection of its own, so the two are as separate as two replicas' sessions.
const database = ManagedRuntime.make(
  SqlStores.layerWithClient({ url: testDatabaseUrl, schema, poolSize: 6 }).pipe(Layer.provideMerge(RuntimeConfig.layerFrom(env))) as Layer.Layer<any, unknown>
)
const run = <A, E>(effect: Effect.Effect<A, E, any>) => database.runPromise(effect)

const consumingReplica = (): Consumers => ({ consuming: true, standingBy: false })
const standbyReplica = (): Consumers => ({ consuming: false, standingBy: true })

/** A replica's relay; `consumers` stands for its consumers' state, none: not known. */
const startRelay = (consumers?: Consumers) => startRelayOn(run, consumers)

/** `count` rows for each of `aggregates`, appended in several commits as units of work would. */
const appendRows = (prefix: string, aggregates: number, count: number) =>
  run(Effect.gen(function*() {
    const outbox = yield* Outbox
    for (let n = 0; n < count; n++) {
      yield* outbox.append(Array.from({ length: aggregates }, (_, a) => outboxRow(`${prefix}${a}-${n}`, `${prefix}${a}`)))
    }
  }))

const pending = () => run(Effect.flatMap(Outbox, (o) => o.pendingCount()))
/** Waits until no outbox row is pending. */
const allSent = (label: string) => eventually(label, async () => (await pending()) === 0)

/** Every message in the capture queue, in queue order, by event id. */
const drainCapture = capture.drain

const activeOf = (replicas: ReadonlyArray<Replica>) => Promise.all(replicas.map((r) => run(r.relay.active)))

/** Waits until `to` holds the relay and `from` stands by. */
const handedOver = (from: Replica, to: Replica) =>
  eventually("the relay handed over", async () => {
    const [onFrom, onTo] = await activeOf([from, to])
    return !onFrom && onTo
  })

/** `read` 30 times, 20 ms apart: a state that must hold over several election intervals (100 ms). */
const sampled = async <A>(read: () => Promise<A>): Promise<Array<A>> => {
  const seen: Array<A> = []
  for (let i = 0; i < 30; i++) {
    seen.push(await read())
    await new Promise((r) => setTimeout(r, 20))
  }
  return seen
}

beforeAll(async () => {
  await createVhost(vhost)
  await capture.declare()
})

afterAll(async () => {
  await run(Effect.flatMap(SqlClient, (sql) => sql.unsafe(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))).catch(() => undefined)
  await database.dispose()
  await deleteVhost(vhost)
})

const expectOnceInOrder = (ids: ReadonlyArray<string>, prefix: string, aggregates: number, count: number) => {
  const expected = Array.from({ length: aggregates }, (_, a) => Array.from({ length: count }, (_, n) => `${prefix}${a}-${n}`)).flat()
  const counts = new Map<string, number>()
  for (const id of ids) counts.set(id, (counts.get(id) ?? 0) + 1)
  expect([...counts.keys()].filter((id) => id.startsWith(prefix)).sort()).toEqual([...expected].sort())
  expect([...counts.entries()].filter(([, n]) => n > 1)).toEqual([])
  // Per aggregate, the queue holds the rows in outbox order.
  for (let a = 0; a < aggregates; a++) {
    const mine = ids.filter((id) => id.startsWith(`${prefix}${a}-`))
    expect(mine).toEqual(Array.from({ length: count }, (_, n) => `${prefix}${a}-${n}`))
  }
}

describe("the outbox relay with two replicas on one database", () => {
  it("publishes every row once, in order per aggregate; the standby takes over when the active relay stops", async () => {
    const a = await startRelay()
    const b = await startRelay()
    try {
      // Exactly one of them takes the lock.
      const first = await eventually("one relay active", async () => {
        const states = await activeOf([a, b])
        return states.filter(Boolean).length === 1 ? states : undefined
      })
      const [active, standby] = first[0] ? [a, b] : [b, a]

      // Both poll every 50 ms, and each commit wakes the active one; only the active one publishes.
      await appendRows("p", 10, 15)
      await allSent("first rows sent")
      expect(await activeOf([active, standby])).toEqual([true, false])

      // The active relay's scope closes (SIGTERM, or its process dies: its session ends either way).
      await active.stop()
      await eventually("standby takes over", () => run(standby.relay.active))
      await appendRows("q", 10, 15)
      await allSent("later rows sent")
      await standby.stop()

      // Every relay has stopped, so whatever it published is confirmed and in the queue.
      const ids = await drainCapture()
      expectOnceInOrder(ids, "p", 10, 15)
      expectOnceInOrder(ids, "q", 10, 15)
      expect(ids.length).toBe(300)
    } finally {
      await Promise.all([a.stop(), b.stop()]).catch(() => undefined)
    }
  })

  it("moves the lock when the holder's session dies under it (PostgreSQL ends the session)", async () => {
    const a = await startRelay()
    const b = await startRelay()
    try {
      await eventually("one relay active", async () => (await activeOf([a, b])).filter(Boolean).length === 1)
      // What a crashed holder's server, or idle_session_timeout, does: the backend holding the lock ends.
      const [ended] = await run(Effect.flatMap(SqlClient, (sql) =>
        sql.unsafe<{ ended: boolean }>(
          `SELECT pg_terminate_backend(pid) AS ended FROM pg_locks
           WHERE locktype = 'advisory' AND granted AND classid = hashtext('inventory_outbox_relay')::oid
             AND objid = hashtext(current_setting('search_path'))::oid`
        )))
      expect(ended?.ended).toBe(true)
      // The holder notices at its next check (within an election interval) and stands by; until
      // then it still counts itself active and may publish beside the relay that took the lock
      // (at least once, relay.ts). So the rows come once one relay (either) holds the lock and
      // the same one has been the only active one over several checks: a single look could
      // fall between the new holder's lock and its own flag while the old one's is still up.
      const lockHeld = async () => {
        const [row] = await run(Effect.flatMap(SqlClient, (sql) =>
          sql.unsafe<{ n: number }>(
            `SELECT count(*)::int AS n FROM pg_locks WHERE locktype = 'advisory' AND granted
               AND classid = hashtext('inventory_outbox_relay')::oid AND objid = hashtext(current_setting('search_path'))::oid`
          )))
        return row?.n === 1
      }
      await eventually("the lock taken again, one relay active over several checks", async () => {
        if (!(await lockHeld())) return false
        const seen = await sampled(async () => (await activeOf([a, b])).join())
        return seen.every((s) => s === seen[0]) && seen[0]!.split(",").filter((x) => x === "true").length === 1 && (await lockHeld())
      })
      await appendRows("r", 5, 10)
      await allSent("rows sent")
    } finally {
      await Promise.all([a.stop(), b.stop()]).catch(() => undefined)
    }
    expectOnceInOrder(await drainCapture(), "r", 5, 10)
  })

  it("leaves the relay to a replica that is not consuming, between rounds, publishing nothing twice; a lone consuming replica keeps it", async () => {
    const a = await startRelay(consumingReplica())
    let b: Replica | undefined
    try {
      // Alone, the consuming replica takes the relay.
      await eventually("the consuming replica active", () => run(a.relay.active))
      // Rows keep coming while a replica that is not consuming starts: the relay moves to it.
      const writing = appendRows("h", 10, 30)
      b = await startRelay(standbyReplica())
      await handedOver(a, b)
      await writing
      await allSent("rows sent")
      // The idle replica goes: the consuming one is alone again and takes the relay back.
      await b.stop()
      await eventually("the consuming replica active again", () => run(a.relay.active))
      await appendRows("k", 5, 10)
      await allSent("later rows sent")
      await a.stop()
      const ids = await drainCapture()
      expectOnceInOrder(ids, "h", 10, 30)
      expectOnceInOrder(ids, "k", 5, 10)
    } finally {
      await Promise.all([a.stop(), b?.stop()]).catch(() => undefined)
    }
  })

  for (const [who, consumers] of [["a consuming replica", consumingReplica], ["a replica whose consumers are not subscribed", () => ({ consuming: false, standingBy: false })]] as const) {
    it(`${who} leaves a free relay lock to a candidate, and takes it once there is none`, async () => {
      // A replica that stands by, seen only through its candidate lock (its relay not started).
      const candidate = new pg.Client({ connectionString: testDatabaseUrl })
      await candidate.connect()
      await candidate.query(`SET search_path TO ${schema}`)
      await candidate.query("SELECT pg_advisory_lock_shared(hashtext('inventory_outbox_relay_candidate'), hashtext(current_setting('search_path')))")
      const a = await startRelay(consumers())
      try {
        // Never active meanwhile.
        expect((await sampled(() => run(a.relay.active))).filter(Boolean)).toEqual([])
        await candidate.end()
        await eventually("it takes the relay", () => run(a.relay.active))
      } finally {
        await candidate.end().catch(() => undefined)
        await a.stop()
      }
    })
  }

  it("does not hand the relay to a replica whose consumers are not subscribed (its broker away), only to one standing by", async () => {
    const a = await startRelay(consumingReplica())
    await eventually("the consuming replica active", () => run(a.relay.active))
    const other: Consumers = { consuming: false, standingBy: false }
    const b = await startRelay(other)
    try {
      // The relay stays where it can publish.
      expect((await sampled(() => activeOf([a, b]))).filter(([onA, onB]) => !onA || onB)).toEqual([])
      // Its consumers subscribe again: now it stands by, and the relay moves to it.
      other.standingBy = true
      await handedOver(a, b)
    } finally {
      await Promise.all([a.stop(), b.stop()]).catch(() => undefined)
    }
  })

  it("a holder whose consumers stop being subscribed (its broker away) hands the relay to a replica that stands by", async () => {
    const first = standbyReplica()
    const a = await startRelay(first)
    await eventually("the first replica active", () => run(a.relay.active))
    const b = await startRelay(standbyReplica())
    try {
      // Both stand by: the holder keeps the relay.
      expect((await sampled(() => activeOf([a, b]))).filter(([onA, onB]) => !onA || onB)).toEqual([])
      // The holder's consumers lose their subscription: it gives the relay to the other.
      first.standingBy = false
      await handedOver(a, b)
      await appendRows("m", 5, 10)
      await allSent("rows sent")
    } finally {
      await Promise.all([a.stop(), b.stop()]).catch(() => undefined)
    }
    expectOnceInOrder(await drainCapture(), "m", 5, 10)
  })
})
