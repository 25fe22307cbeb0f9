import { describe, it, layer } from "@effect/vitest"
import { Effect } from "effect"
import { noRetries } from "../support/events.ts"
import { memoryLayer } from "../support/memory.ts"
import { sqlLayer } from "../support/sql.ts"
import { Scenario } from "./model/commands.ts"
import { runModel } from "./model/property.ts"

let run = 0
let pgRun = 0

describe("model-based test on the memory stores", () => {
  it.effect.prop(
    "model-based: any sequence of events, duplicates, reorderings and clock advances keeps I1-I9 and matches the model",
    [Scenario],
    ([scenario]) => noRetries(runModel(scenario, `run${run++}`)).pipe(Effect.provide(memoryLayer)),
    { timeout: 120_000, arbitrary: { runs: 300, size: 40 } }
  )
})

// The model-based property test of the core, on PostgreSQL (fewer runs than in memory).
layer(sqlLayer("model"), { timeout: "120 seconds" })("model-based test on PostgreSQL", (it) => {
  it.effect.prop(
    "any sequence of events keeps I1-I9 on PostgreSQL and matches the model",
    [Scenario],
    ([scenario]) => noRetries(runModel(scenario, `pg${process.pid.toString(36)}r${pgRun++}`)),
    { timeout: 240_000, arbitrary: { runs: 40, size: 40 } }
  )
})
