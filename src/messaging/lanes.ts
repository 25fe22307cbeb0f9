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

export interface LaneRules<W, R> {
  /**
   * Runs one message. `canDefer`, asked once its outcome is known, says whether others of its key
   * wait behind it by then and it was not deferred before.
   */
  readonly run: (work: W, canDefer: Effect.Effect<boolean>) => Effect.Effect<Step, never, R>
  /** Asked before each message. */
  readonly gate: Effect.Effect<Gate>
  readonly drop: (work: W, why: Dropped) => Effect.Effect<void, never, R>
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
 * Per-key serial runner: messages of one key run one at a time in the order offered, different
 * keys in parallel (one fiber per busy key, interrupted when the scope closes). Its rules:
 * - a message that asks to defer goes once behind its key's other waiting messages: after a
 *   requeue or with a second consumer, the broker may deliver a key's events out of order, and
 *   the earlier one it needs may be waiting right here;
 * - after a message was requeued, the key's later messages go back behind it, never overtaking it;
 * - when the gate says paused, each waiting message goes back; when closed, the rest is given up.
 */
export const makeLanes = <W, R>(rules: LaneRules<W, R>): Effect.Effect<Lanes<W, R>, never, Scope.Scope> =>
  Effect.gen(function*() {
    const lanes = new Map<string, Array<Waiting<W>>>()
    const fibers = yield* FiberSet.make<void, never>()

    const runLane = Effect.fnUntraced(function*(key: string, lane: Array<Waiting<W>>) {
      while (lane.length > 0) {
        const head = lane[0]!
        const gate = yield* rules.gate
        if (gate === "closed") {
          for (const waiting of lane.splice(0)) yield* rules.drop(waiting.work, "channel closed")
          break
        }
        if (gate === "paused") {
          lane.shift()
          yield* rules.drop(head.work, "consumption paused")
          continue
        }
        const step = yield* rules.run(head.work, Effect.sync(() => !head.deferred && lane.length > 1))
        lane.shift()
        if (step === "deferred") lane.push({ work: head.work, deferred: true })
        else if (step === "requeued") {
          for (const waiting of lane.splice(0)) yield* rules.drop(waiting.work, "kept behind a requeued message of its key")
        }
      }
      lanes.delete(key)
    }, (effect, key) => Effect.annotateLogs(effect, { ordering_key: key }))

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
