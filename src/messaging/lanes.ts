import { Effect, FiberSet, type Scope } from "effect"

/** What became of one message its lane ran. */
export type Step =
  /** Settled for good (acked, dead-lettered, rejected). */
  | "done"
  /** Given back to the queue: the key's later messages must go back behind it. */
  | "requeued"
  /** Asked to be tried again once behind the key's other waiting messages. */
  | "deferred"

/** Why a waiting message is given up without being run. */
export type Dropped =
  /** The broker has taken it back already: it can be settled nowhere. */
  | "channel closed"
  /** Consumption holds until the database answers: back to the queue. */
  | "consumption paused"
  /** An earlier message of its key went back to the queue: so does it, to stay behind it. */
  | "kept behind a requeued message of its key"

/** Whether a lane may go on before its next message. */
export type Gate = "open" | "paused" | "closed"

export interface LaneRules<W, O, R> {
  /**
   * Applies a key's waiting messages, in order, as one chain: their outcomes, for the first of
   * them up to one whose outcome does not let the key go on (those after it were not applied).
   * It reads them (`waiting()`) when it takes them up, not when it is called: messages of the key
   * that arrive while the chain waits for its turn join it (up to `chain`), so an order's events
   * published back to back share a group rather than waiting for one another's (issue 18).
   */
  readonly apply: (waiting: () => ReadonlyArray<W>) => Effect.Effect<ReadonlyArray<O>, never, R>
  /**
   * Settles one message with its outcome. `canDefer` says whether others of its key wait
   * behind it and it was not deferred before.
   */
  readonly settle: (work: W, outcome: O, canDefer: boolean) => Effect.Effect<Step, never, R>
  /** Asked before each chain and before each settlement. */
  readonly gate: Effect.Effect<Gate>
  readonly drop: (work: W, why: Dropped) => Effect.Effect<void, never, R>
  /** Most messages of one key applied as one chain. */
  readonly chain: number
}

export interface Lanes<W, R> {
  /** Queues a message behind the others of its key; starts the key's lane when it was idle. */
  readonly offer: (key: string, work: W) => Effect.Effect<void, never, R>
  /** Completes when every lane ran dry. */
  readonly idle: Effect.Effect<void>
}

interface Waiting<W> {
  readonly work: W
  /** Moved behind the rest of its lane once already. */
  readonly deferred: boolean
}

/**
 * Per-key serial runner: messages of one key are applied in the order offered, different keys
 * in parallel (one fiber per busy key, interrupted when the scope closes). The messages waiting
 * in a key's lane are handed over together (`apply`, up to `chain` of them, as they stand when the
 * applier takes them up), so a group commit can apply a whole order's events in one unit of work,
 * still in order; each is then settled in turn. Its rules:
 * - a message that asks to defer goes once behind its key's other waiting messages: after a
 *   requeue or with a second consumer, the broker may deliver a key's events out of order, and
 *   the earlier one it needs may be waiting right here;
 * - after a message was requeued, the key's later messages go back behind it, never overtaking it;
 * - after a deferral, or a message whose outcome was not the last of its chain, the lane starts
 *   a new chain from its head: what was not applied is applied then;
 * - when the gate says paused, each waiting message goes back; when closed, the rest is given up.
 */
export const makeLanes = <W, O, R>(rules: LaneRules<W, O, R>): Effect.Effect<Lanes<W, R>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const lanes = new Map<string, Array<Waiting<W>>>()
    const fibers = yield* FiberSet.make<void, never>()

    /** Drops the rest of the lane if the gate is not open; false then. */
    const through = Effect.fnUntraced(function*(lane: Array<Waiting<W>>) {
      const gate = yield* rules.gate
      if (gate === "open") return true
      if (gate === "closed") {
        for (const waiting of lane.splice(0)) yield* rules.drop(waiting.work, "channel closed")
      } else {
        for (const waiting of lane.splice(0)) yield* rules.drop(waiting.work, "consumption paused")
      }
      return false
    })

    const runLane = Effect.fnUntraced(function*(key: string, lane: Array<Waiting<W>>) {
      while (lane.length > 0) {
        if (!(yield* through(lane))) break
        const outcomes = yield* rules.apply(() => lane.slice(0, Math.max(1, rules.chain)).map((waiting) => waiting.work))
        // The first of a chain always gets its outcome: without it the lane could never move.
        if (outcomes.length === 0) return yield* Effect.die(new Error(`lane ${key}: a chain's first message got no outcome`))
        for (const [i, outcome] of outcomes.entries()) {
          if (i > 0 && !(yield* through(lane))) break
          const head = lane[0]!
          const step = yield* rules.settle(head.work, outcome, !head.deferred && lane.length > 1)
          lane.shift()
          if (step === "deferred") {
            lane.push({ work: head.work, deferred: true })
            break
          }
          if (step === "requeued") {
            for (const waiting of lane.splice(0)) yield* rules.drop(waiting.work, "kept behind a requeued message of its key")
            break
          }
        }
      }
      lanes.delete(key)
    })

    return {
      offer: (key, work) =>
        Effect.suspend(() => {
          const lane = lanes.get(key)
          if (lane) {
            lane.push({ work, deferred: false })
            return Effect.void
          }
          const fresh = [{ work, deferred: false }]
          lanes.set(key, fresh)
          return Effect.asVoid(FiberSet.run(fibers, runLane(key, fresh)))
        }),
      idle: FiberSet.awaitEmpty(fibers)
    }
  })
