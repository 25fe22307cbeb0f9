/**
 * Numbers from a bench's flags (parsed with `node:util`'s `parseArgs`): a comma-separated list, each
 * a finite number >= 0, or the bench stops with the flag's name rather than run on NaN.
 */
export const numbers = (flag: string, text: string): Array<number> => {
  const parts = text.split(",")
  const values = parts.map(Number)
  if (parts.some((part) => part.trim() === "") || !values.every((n) => Number.isFinite(n) && n >= 0)) {
    throw new Error(`--${flag} takes numbers >= 0 (comma-separated where several), got ${text}`)
  }
  return values
}

/** One number from a flag, as `numbers` checks it. */
export const number = (flag: string, text: string): number => {
  const values = numbers(flag, text)
  if (values.length !== 1) throw new Error(`--${flag} takes one number, got ${text}`)
  return values[0]!
}
