import * as NodeRuntime from "@effect/platform-node/NodeRuntime"
import * as NodeServices from "@effect/platform-node/NodeServices"
import { readFileSync } from "node:fs"
import { Cause, Effect, Logger, References, Runtime, Schema } from "effect"
import { CliError, CliOutput, Command } from "effect/cli"
import { check } from "./check.ts"
import { dlq } from "./dlq.ts"
import { describeFailure } from "./environment.ts"
import { migrate } from "./migrate.ts"
import { exitCodes } from "./output.ts"
import { reservations } from "./reservations.ts"
import { stock } from "./stock.ts"
import { warehouse } from "./warehouse.ts"

/**
 * `npm run -s inventory -- <command>`: the operator CLI, against the consumer's database and
 * broker (same environment variables). Data goes to stdout; every failure is one line on
 * stderr, exit 1 (2 for bad usage), never a stack trace.
 */

const version: string = JSON.parse(readFileSync(new URL("../../package.json", import.meta.url), "utf8")).version

export const inventory = Command.make("inventory").pipe(
  Command.withDescription("Operate the inventory consumer: warehouses, stock, reservations, dead letters, reconciliation"),
  Command.withSubcommands([migrate, warehouse, stock, reservations, dlq, check])
)

/** The process outcome once everything worth saying has been said. */
class Finished extends Schema.TaggedError<Finished>()("Finished", { code: Schema.Number }) {
  override readonly [Runtime.errorReported] = false
  override get [Runtime.errorExitCode]() {
    return this.code
  }
}

// "Did you mean this?\n  list" reads as one sentence: a question joins its answer with a space.
const oneLine = (text: string) => text.trim().replace(/([?:])\s*\n\s*/g, "$1 ").replace(/\s*\n\s*/g, "; ")

const usageHint = (commandPath: ReadonlyArray<string>) => `run \`${commandPath.join(" ")} --help\` for usage`

/** The command as typed, up to its first flag: `inventory dlq replay`. */
const commandWords = () => {
  const args = process.argv.slice(2)
  const firstFlag = args.findIndex((arg) => arg.startsWith("-"))
  return ["inventory", ...(firstFlag === -1 ? args : args.slice(0, firstFlag))]
}

/**
 * A usage error is the error first and one line of hint, on stderr: the whole help (two dozen
 * lines) would push the error out of sight. `--help` and a bare command group still print help.
 */
const presenter: CliOutput.Presenter = {
  present: (event) =>
    event._tag === "InvalidInvocation"
      ? Effect.sync(() => {
        const errors = event.errors.map((error) => `inventory: ${oneLine(error.message)}\n`).join("")
        process.stderr.write(`${errors}${usageHint(event.commandPath)}\n`)
      })
      : CliOutput.defaultPresenter.present(event)
}

const reportFailure = (cause: Cause.Cause<unknown>) => {
  if (Cause.hasInterruptsOnly(cause)) return Effect.failCause(cause)
  const error = Cause.squash(cause)
  // The presenter has already printed the parse error (or the help): only the exit code is left to set.
  if (CliError.isCliError(error)) {
    return Effect.fail(new Finished({ code: error._tag === "ShowHelp" && error.errors.length === 0 ? 0 : exitCodes.usage }))
  }
  const { message, exitCode } = describeFailure(cause)
  // A usage error the command itself found gets the same hint as one the parser found.
  const hint = exitCode === exitCodes.usage ? `${usageHint(commandWords())}\n` : ""
  return Effect.andThen(
    Effect.sync(() => process.stderr.write(`inventory: ${message}\n${hint}`)),
    Effect.fail(new Finished({ code: exitCode }))
  )
}

Command.run(inventory, { version }).pipe(
  Effect.provideService(CliOutput.Presenter, presenter),
  Effect.catchCause(reportFailure),
  // stdout carries the data (tables, JSON): library logs go to stderr, warnings and worse only,
  // unless --log-level asks for more.
  Effect.provideService(Logger.LogToStderr, true),
  Effect.provideService(References.MinimumLogLevel, "Warn"),
  Effect.provide(NodeServices.layer),
  NodeRuntime.runMain
)
