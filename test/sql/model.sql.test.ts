import { layer } from "@effect/vitest"
import { Scenario } from "../model/commands.ts"
import { runModel } from "../model/property.ts"
import { noRetries } from "../support/events.ts"
import { sqlLayer } from "./support.ts"

let run = 0

// The model-based property test of the core, on PostgreSQL (fewer runs than in memory).
layer(sqlLayer("model"), { timeout: "120 seconds" })("model-based test on PostgreSQL", (it) => {
  it.effect.prop(
    "any sequence of events keeps I1-I9 on PostgreSQL and matches the model",
    [Scenario],
    ([scenario]) => noRetries(runModel(scenario, `pg${process.pid.toString(36)}r${run++}`)),
    { timeout: 240_000, arbitrary: { runs: 40, size: 40 } }
  )
})
