import { it } from "@effect/vitest"
import { Effect } from "effect"
import { Scenario } from "./model/commands.ts"
import { runModel } from "./model/property.ts"
import { noRetries } from "./support/events.ts"
import { memoryLayer } from "./support/memory.ts"

let run = 0

it.effect.prop(
  "model-based: any sequence of events, duplicates, reorderings and clock advances keeps I1-I9 and matches the model",
  [Scenario],
  ([scenario]) => noRetries(runModel(scenario, `run${run++}`)).pipe(Effect.provide(memoryLayer)),
  { timeout: 120_000, arbitrary: { runs: 300, size: 40 } }
)
