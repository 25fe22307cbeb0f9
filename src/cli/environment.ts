import { Cause, Effect, Layer, Redacted } from "effect"
import { brokerUrls, credentialedUrls, databaseSettings, displayUrl, rawBrokerUrl, rawDatabaseUrl, RuntimeConfig } from "../config.ts"
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

/** The stores and the raw client beside them, for the few reads no store offers (an id by its prefix). */
export const DatabaseWithClient = Layer.unwrap(Effect.map(databaseSettings, SqlStores.layerWithClient))

/** Publishing with confirms on the consumer's broker (declares the topology on connect). */
export const BrokerPublisher = Publisher.layer.pipe(
  // One attempt: a command that cannot reach the broker says why within seconds.
  Layer.provide(Broker.layerConnectOnce),
  Layer.provide(RuntimeConfig.layer)
)

/**
 * Replaces any credentialed URL from the environment by its display form (`displayUrl`, as the
 * consumer's logs show it) and its bare password by `***`. URLs go first, through placeholders,
 * so a password equal to the user name does not turn `guest:***@` into `***:***@`.
 */
export const redact = (text: string): string => {
  const urls = credentialedUrls()
  let out = text
  // The raw URLs and their display forms alike: both come out as the display form.
  urls.forEach((url, i) => {
    out = out.split(url).join(`\u0000${i}\u0000`).split(displayUrl(Redacted.make(url))).join(`\u0000${i}\u0000`)
  })
  for (const url of urls) {
    try {
      const password = decodeURIComponent(new URL(url).password)
      if (password.length >= 3) out = out.split(password).join("***")
    } catch {
      // not a URL: nothing more to hide
    }
  }
  urls.forEach((url, i) => {
    out = out.split(`\u0000${i}\u0000`).join(displayUrl(Redacted.make(url)))
  })
  return out
}

const databaseWhere = () => {
  const url = rawDatabaseUrl()
  return URL.canParse(url) ? displayUrl(Redacted.make(url)) : "<invalid DATABASE_URL>"
}

const brokerWhere = () => {
  const url = rawBrokerUrl()
  return displayUrl(Redacted.make(url))
}

/** The first broker node's vhost, to name it when the broker refuses it. */
const brokerVhost = () => {
  const first = brokerUrls(rawBrokerUrl())[0] ?? ""
  try {
    const url = new URL(first)
    return decodeURIComponent(url.pathname.slice(1)) || "/"
  } catch {
    return "/"
  }
}

/** Why a socket could not be opened, from Node's error codes; undefined when it is not that. */
const socketReason = (text: string): string | undefined => {
  if (/ECONNREFUSED/.test(text)) return "nothing listening (connection refused)"
  if (/ENOTFOUND|EAI_AGAIN/.test(text)) return "unknown host (name does not resolve)"
  if (/ETIMEDOUT|EHOSTUNREACH|ENETUNREACH|timed? ?out/i.test(text)) return "no answer (connection timed out)"
  if (/ECONNRESET|EPIPE/.test(text)) return "connection reset during the handshake"
  return undefined
}

/** The broker's refusal in words: credentials, vhost, or nothing there. */
const brokerReason = (raw: string): string => {
  const reason = raw.replace(/^Cannot connect to \S+: /, "")
  // The user is in the URL shown before this; naming it again could show a password equal to it.
  if (/ACCESS.REFUSED/.test(reason)) return "wrong credentials: the broker refused the login (ACCESS_REFUSED)"
  // amqplib drops the reply text here; RabbitMQ closes at connection.open for a vhost that does
  // not exist or that the user may not use (530 NOT_ALLOWED).
  if (/Expected ConnectionOpenOk; got <ConnectionClose/.test(reason)) {
    return `unknown vhost "${brokerVhost()}", or the user has no access to it (the broker closed the connection at open)`
  }
  return socketReason(reason) ?? reason
}

/** The driver's own error under the SqlError (the PostgreSQL error fields, or the socket error). */
const rootCause = (error: unknown): { readonly message: string; readonly code: string | undefined } | undefined => {
  let current: unknown = error
  let found: { message: string; code: string | undefined } | undefined
  for (let depth = 0; depth < 6 && typeof current === "object" && current !== null; depth++) {
    const { message, code } = current as { message?: unknown; code?: unknown }
    if (depth > 0 && typeof message === "string" && message !== "") found = { message, code: typeof code === "string" ? code : undefined }
    current = "reason" in current && current.reason !== undefined ? current.reason : (current as { cause?: unknown }).cause
  }
  return found
}

/** The database's refusal in words: unknown database, credentials, or nothing there. */
const databaseReason = (error: unknown): string => {
  const top = messageOf(error)
  const root = rootCause(error)
  if (root === undefined || root.message === top) return top
  switch (root.code) {
    case "3D000":
      return `unknown database: ${root.message}`
    case "28P01":
    case "28000":
      return `wrong credentials: ${root.message}`
  }
  return socketReason(`${root.code ?? ""} ${root.message}`) ?? `${top}: ${root.message}`
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
      return { message: one(`database ${databaseWhere()}: ${databaseReason(error)}`), exitCode: 1 }
    case "MigrationError":
      return { message: one(`database migration failed: ${messageOf(error)}`), exitCode: 1 }
    case "ConfigError":
      return { message: one(`configuration: ${messageOf(error)}`), exitCode: 1 }
    case "BrokerError":
      return { message: one(`broker ${brokerWhere()}: ${brokerReason(messageOf(error))}`), exitCode: 1 }
    case "PublishError":
      return { message: one(`broker: ${messageOf(error)}`), exitCode: 1 }
  }
  // Refusals (ValidationError) and defects alike: their message, on one line.
  return { message: one(messageOf(error)), exitCode: 1 }
}
