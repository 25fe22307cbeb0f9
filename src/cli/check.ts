import { Console, Effect, Option } from "effect"
import { Command, Flag } from "effect/cli"
import { Reconciliation, type Violation } from "../stores/services.ts"
import { Database } from "./environment.ts"
import * as Flags from "./flags.ts"
import { failure, printJson, renderTable } from "./output.ts"

/** `inventory check`: the books-balance reconciliation of SPEC 3; exit 1 when anything is off. */

const invariants = "I1 quantities >= 0, I2 total = available + reserved + damaged, I3 reserved = live reservation items, I8 movements sum to total, I9 archived only when empty"

export const check = Command.make(
  "check",
  {
    org: Flags.id("org", "Only this organization (default: every organization)").pipe(Flag.optional),
    json: Flags.json
  },
  ({ org, json }) =>
    Effect.gen(function*() {
      const violations = yield* (yield* Reconciliation).check(Option.getOrUndefined(org))
      if (json) {
        yield* printJson(violations)
      } else {
        yield* Console.log(renderTable<Violation>(violations, [
          { header: "INVARIANT", value: (v) => v.invariant },
          { header: "ORG", value: (v) => v.organization_id },
          { header: "VARIANT", value: (v) => v.variant_id },
          { header: "WAREHOUSE", value: (v) => v.warehouse_id },
          { header: "RESERVATION", value: (v) => v.reservation_id },
          { header: "DETAIL", value: (v) => v.detail }
        ], `No violations: the books balance (${invariants}).`))
      }
      if (violations.length > 0) {
        return yield* failure(`${violations.length} invariant violation${violations.length === 1 ? "" : "s"} found.`)
      }
    })
).pipe(
  Command.withDescription(`Check the SPEC 3 invariants (${invariants}); print every violation; exit 1 if there is any`),
  Command.withExamples([{ command: "inventory check --org acme", description: "Reconcile one organization" }]),
  Command.provide(Database)
)
