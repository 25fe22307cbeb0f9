import { Console, Effect, Schema } from "effect"

/**
 * How every operator command reports: a table (or key/value lines) for people, `--json` for
 * scripts, and failures as one line on stderr with a fixed exit code.
 */

/** The command ran but its answer is a failure: the reason is one line on stderr. */
export class CommandFailed extends Schema.TaggedError<CommandFailed>()("CommandFailed", {
  message: Schema.String,
  exitCode: Schema.Number
}) {}

/** Exit codes: 1 for a refused or failed operation (or a broken invariant), 2 for bad usage. */
export const exitCodes = { failure: 1, usage: 2 } as const

export const failure = (message: string) => new CommandFailed({ message, exitCode: exitCodes.failure })
export const usage = (message: string) => new CommandFailed({ message, exitCode: exitCodes.usage })

export interface Column<A> {
  readonly header: string
  readonly value: (row: A) => string | number | boolean | null
  readonly align?: "left" | "right"
}

// C1 controls too: a terminal may read U+009B as CSI, as it reads ESC [.
const cell = (value: string | number | boolean | null): string =>
  value === null ? "-" : typeof value === "string" ? value.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ") : String(value)

/** Aligned columns, two spaces apart, numbers right-aligned; `empty` when there are no rows. */
export const renderTable = <A>(rows: ReadonlyArray<A>, columns: ReadonlyArray<Column<A>>, empty: string): string => {
  if (rows.length === 0) return empty
  const cells = rows.map((row) => columns.map((column) => cell(column.value(row))))
  const widths = columns.map((column, i) => Math.max(column.header.length, ...cells.map((line) => line[i]!.length)))
  const line = (values: ReadonlyArray<string>) =>
    values
      .map((value, i) => (columns[i]!.align === "right" ? value.padStart(widths[i]!) : value.padEnd(widths[i]!)))
      .join("  ")
      .trimEnd()
  return [line(columns.map((c) => c.header)), ...cells.map(line)].join("\n")
}

/** `key: value` lines, keys aligned. */
export const renderRecord = (entries: ReadonlyArray<readonly [string, string | number | boolean | null]>): string => {
  const width = Math.max(...entries.map(([key]) => key.length))
  return entries.map(([key, value]) => `${`${key}:`.padEnd(width + 1)} ${cell(value)}`).join("\n")
}

/**
 * Indented JSON with DEL and the C1 controls escaped as well: JSON.stringify escapes only
 * U+0000-U+001F, and a terminal may act on the others.
 */
export const jsonText = (value: unknown): string =>
  JSON.stringify(value, null, 2).replace(/[\u007f-\u009f]/g, (c) => `\\u${c.charCodeAt(0).toString(16).padStart(4, "0")}`)

export const printJson = (value: unknown) => Console.log(jsonText(value))

/** The table or the JSON document, as `--json` asks. */
export const print = <A, J>(json: boolean, rows: ReadonlyArray<A>, toJson: (row: A) => J, table: () => string) =>
  json ? printJson(rows.map(toJson)) : Console.log(table())

export const iso = (date: Date | null): string | null => (date === null ? null : date.toISOString())

/** One line on stderr: for notes that must not mix with the data on stdout. */
export const note = (message: string) => Effect.sync(() => process.stderr.write(`${message}\n`))
