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
  /** Cells longer than this end in `…` (narrow tables only). */
  readonly max?: number
  /** Takes what is left of `width` after the other columns (at least 12), for free text. */
  readonly fill?: boolean
}

/** Tables fit a 120-column terminal unless `--wide` asks for every column in full. */
export const tableWidth = 120

/** The first 8 characters: enough to tell ids apart on a screen (`--wide` shows them whole). */
export const shortId = (id: string): string => id.slice(0, 8)

const shorten = (text: string, max: number) => (text.length <= max ? text : `${text.slice(0, Math.max(0, max - 1))}…`)

// C1 controls too: a terminal may read U+009B as CSI, as it reads ESC [.
const cell = (value: string | number | boolean | null): string =>
  value === null ? "-" : typeof value === "string" ? value.replace(/[\u0000-\u001f\u007f-\u009f]/g, " ") : String(value)

/** Aligned columns, two spaces apart, numbers right-aligned; `empty` when there are no rows. */
export const renderTable = <A>(rows: ReadonlyArray<A>, columns: ReadonlyArray<Column<A>>, empty: string): string => {
  if (rows.length === 0) return empty
  const raw = rows.map((row) => columns.map((column) => cell(column.value(row))))
  const capped = raw.map((line) => line.map((value, i) => (columns[i]!.max !== undefined ? shorten(value, columns[i]!.max!) : value)))
  const natural = columns.map((column, i) => Math.max(column.header.length, ...capped.map((line) => line[i]!.length)))
  // A fill column gets the room the others leave on a `tableWidth` line.
  const others = natural.reduce((sum, width, i) => sum + (columns[i]!.fill === true ? 0 : width + 2), 0)
  const cells = capped.map((line) =>
    line.map((value, i) => (columns[i]!.fill === true ? shorten(value, Math.max(12, tableWidth - others)) : value))
  )
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

/** `2026-12-02 13:30`, UTC: a narrow table's time (`--wide` and `--json` give it to the millisecond). */
export const minute = (date: Date | null): string | null => (date === null ? null : date.toISOString().slice(0, 16).replace("T", " "))

/** One line on stderr: for notes that must not mix with the data on stdout. */
export const note = (message: string) => Effect.sync(() => process.stderr.write(`${message}\n`))
