import { Schema } from "effect"
import { Flag } from "effect/cli"
import { Id, Text } from "../domain/primitives.ts"

/** Flags several commands share, validated with the domain's own schemas. */

/** An identifier flag: the same alphabet and length the consumer accepts in events. */
export const id = (name: string, description: string) =>
  Flag.String(name).pipe(Flag.withSchema(Id), Flag.withDescription(description))

export const organization = id("org", "Organization id")

export const json = Flag.Boolean("json").pipe(
  Flag.withDescription("Print JSON (the shapes are documented in the README) instead of a table"),
  Flag.withDefault(false)
)

export const text = (name: string, description: string) =>
  Flag.String(name).pipe(
    Flag.withSchema(Text.pipe(Schema.check(Schema.isMinLength(1, { message: "must not be empty" })))),
    Flag.withDescription(description)
  )

export const wide = Flag.Boolean("wide").pipe(
  Flag.withDescription("Every column, ids and text in full (the table no longer fits 120 columns)"),
  Flag.withDefault(false)
)
