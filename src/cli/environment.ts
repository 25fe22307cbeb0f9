import { Cause, Effect, Layer, Redacted } from "effect"
import { credentialedUrls, databaseSettings, displayUrl, rawDatabaseUrl, RuntimeConfig } from "../config.ts"
import { Broker } from "../messaging/connection.ts"
import { Publisher } from "../messaging/publisher.ts"
import * as SqlStores from "../stores/sql/index.ts"
import { CommandFailed } from "./output.ts"

/**
 * What the commands run against: the consumer's own database and broker settings, read from
 * the same environment variables (DATABASE_URL, DATABASE_SCHEMA, AMQP_URL, ...). Layers are
 * built per command, so `--help` and usage errors never touch either.
 */

/** Every store on PostgreSQL; migrates when built, as the consumer does. */
export const Database = Layer.unwrap(Effect.map(databaseSettings, SqlStores.layer))

/** Publishing with confirms on the consumer's broker (declares the topology on connect). */
export const BrokerPublisher = Publisher.layer.pipe(
  Layer.provide(Broker.layer),
  Layer.provide(RuntimeConfig.layer)
)

/** Replaces any credentialed URL (and its bare password) from the environment by its display form. */
export const redact = (text: string): string => {
  let out = text
  for (const url of credentialedUrls()) {
    out = out.split(url).join(displayUrl(Redacted.make(url)))
    try {
      const password = decodeURIComponent(new URL(url).password)
      if (password.length >= 3) out = out.split(password).join("***")
    } catch {
      // not a URL: nothing more to hide
    }
  }
  return out
}

const databaseWhere = () => {
  const url = rawDatabaseUrl()
  return URL.canParse(url) ? displayUrl(Redacted.make(url)) : "<invalid DATABASE_URL>"
}

const tagOf = (error: unknown): string | undefined =>
  typeof error === "object" && error !== null && "_tag" in error && typeof error._tag === "string" ? error._tag : undefined

const messageOf = (error: unknown): string => {
  if (error instanceof Error || (typeof error === "object" && error !== null && "message" in error)) {
    const message = (error as { message: unknown }).message
    if (typeof message === "string" && message !== "") return message
  }
  return String(error)
}

/** One line for whatever a command failed with (expected error or defect), credentials removed. */
export const describeFailure = (cause: Cause.Cause<unknown>): { readonly message: string; readonly exitCode: number } => {
  const error = Cause.squash(cause)
  if (error instanceof CommandFailed) return { message: redact(error.message), exitCode: error.exitCode }
  const one = (text: string) => redact(text.replace(/\s*\n\s*/g, "; ").trim())
  switch (tagOf(error)) {
    case "SqlError":
    case "DatabaseError":
      return { message: one(`database ${databaseWhere()}: ${messageOf(error)}`), exitCode: 1 }
    case "MigrationError":
      return { message: one(`database migration failed: ${messageOf(error)}`), exitCode: 1 }
    case "ConfigError":
      return { message: one(`configuration: ${messageOf(error)}`), exitCode: 1 }
    case "BrokerError":
    case "PublishError":
      return { message: one(`broker: ${messageOf(error)}`), exitCode: 1 }
  }
  // Refusals (ValidationError) and defects alike: their message, on one line.
  return { message: one(messageOf(error)), exitCode: 1 }
}
