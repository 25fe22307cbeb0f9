import { Config, ConfigProvider, Context, Duration, Effect, Layer, type LogLevel, Option, Redacted, Schema, SchemaTransformation } from "effect"
import { catalogEventTypes, type InboundEventType, MAX_LINES_PER_EVENT, orderEventTypes } from "./domain/events.ts"
import type { HttpSettings } from "./observability/health.ts"
import type { LoggingSettings } from "./observability/logging.ts"
import type { TracingSettings } from "./observability/tracing.ts"
import type { BatchSettings } from "./pipeline/batch.ts"
import { defaultProcessingPolicy, type ProcessingPolicy } from "./pipeline/policy.ts"
import { type DatabaseOptions, DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT, DEFAULT_RESPONSE_TIMEOUT } from "./stores/sql/client.ts"

/**
 * Every setting, and the only module that reads the environment: one section per feature, each
 * read once with the SPEC's defaults. A bad value stops start-up with a message naming the
 * variable; credentials only leave here redacted. The consumer's broker-side sections make up
 * `RuntimeConfig`; the database, HTTP, tracing and logging sections are read on their own, so an
 * operator command that needs only the database never fails on a broker setting.
 */

export type QueueType = "quorum" | "classic"

/** One inbound queue: its exchange, the event types bound to it (and accepted on it), its prefetch. */
export interface ConsumerQueue {
  readonly queue: string
  readonly exchange: string
  readonly eventTypes: ReadonlyArray<InboundEventType>
  readonly prefetch: number
}

/** The broker objects of SPEC 1. */
export interface Topology {
  readonly catalog: ConsumerQueue
  readonly orders: ConsumerQueue
  /** Where every `inventory.*` event goes, routing key = event name. */
  readonly eventsExchange: string
  readonly deadLetterExchange: string
  readonly deadLetterQueue: string
  readonly deadLetterTtlMs: number
  readonly deadLetterMaxLength: number
  /** `x-max-length-bytes` of the DLQ: its size bound whatever the size of the messages. */
  readonly deadLetterMaxLengthBytes: number
  /** `x-delivery-limit` of quorum inbound queues; always above `MAX_DELIVERIES` (see topology.ts). */
  readonly deliveryLimit: number
  /**
   * Our own queue on the dead-letter exchange (`#`), from which the dead letters the broker
   * makes itself (expired, delivery limit, overflow) are recorded; bounded in bytes.
   */
  readonly deadLetterRecorderQueue: string
  readonly deadLetterRecorderMaxBytes: number
  readonly queueType: QueueType
  /**
   * `x-single-active-consumer` on the inbound queues: one replica consumes a queue at a time, the
   * others wait as hot standbys, so a key's events never run on two replicas at once.
   */
  readonly singleActiveConsumer: boolean
}

/** The dead-letter path's own bounds (SPEC 5). */
export interface DeadLetterSettings {
  /** Stored dead-letter bodies are cut here (the DLQ copy keeps the whole body); SHA-256 and length describe the original. */
  readonly bodyMaxBytes: number
  /** Attempts at recording and copying a dead letter before it is parked with a minimal record. */
  readonly attempts: number
}

export interface BrokerSettings {
  /** One node's URL, or several comma-separated (`brokerUrls`): the consumer fails over between them. */
  readonly url: Redacted.Redacted<string>
  readonly heartbeatSeconds: number
  /** Reconnect backoff: first delay and cap; each attempt doubles, with jitter. */
  readonly reconnectInitialDelayMs: number
  readonly reconnectMaxDelayMs: number
  /** Failed attempts after which the very first connection gives up (0: keep trying). */
  readonly connectAttempts: number
  /** Longest wait for a publisher confirm, including waiting for the broker to come back. */
  readonly publishTimeout: Duration.Duration
}

export interface RelaySettings {
  /** How often the outbox is polled when nothing nudges the relay. */
  readonly pollInterval: Duration.Duration
  readonly batchSize: number
  /** How long a sent message stays in the outbox (for inspection) before it is deleted. */
  readonly retention: Duration.Duration
  /** How often sent messages past `retention` are deleted. */
  readonly purgeInterval: Duration.Duration
  /** How often a standby relay tries to take the relay lock, and the active one checks it holds it. */
  readonly electionInterval: Duration.Duration
}

export interface FailedEventRetentionSettings {
  /** How long a `failed_events` record is kept before it is deleted. */
  readonly retention: Duration.Duration
  /** How often records past `retention` are deleted. */
  readonly purgeInterval: Duration.Duration
}

/** The DLQ monitor (SPEC 5): how often it reads the DLQ's depth, above what it alerts, and where. */
export interface DlqMonitorSettings {
  readonly interval: Duration.Duration
  readonly threshold: number
  readonly webhook: Option.Option<Redacted.Redacted<URL>>
  readonly webhookTimeout: Duration.Duration
}

export interface ReservationSettings {
  readonly sweepInterval: Duration.Duration
  readonly sweepBatch: number
  /** Timers are held for reservations due within this; a refill every half of it arms the rest. */
  readonly horizon: Duration.Duration
}

export interface RuntimeSettings {
  readonly broker: BrokerSettings
  readonly topology: Topology
  readonly processing: ProcessingPolicy
  readonly relay: RelaySettings
  readonly failedEvents: FailedEventRetentionSettings
  readonly reservations: ReservationSettings
  readonly batch: BatchSettings
  readonly deadLetter: DeadLetterSettings
  /** How long in-flight messages may take on SIGTERM before the rest go back to the queue. */
  readonly shutdownTimeout: Duration.Duration
  /** How often each consumer works out whether it is its queue's active consumer (metrics, /readyz). */
  readonly consumerRoleCheckInterval: Duration.Duration
  readonly dlqMonitor: DlqMonitorSettings
}

const int = (variable: string, fallback: number, min = 1, max = Number.MAX_SAFE_INTEGER) =>
  Config.schema(
    Schema.Int.check(Schema.isBetween({ minimum: min, maximum: max }, {
      message: max === Number.MAX_SAFE_INTEGER ? `${variable} must be a whole number >= ${min}` : `${variable} must be a whole number from ${min} to ${max}`
    })),
    variable
  ).pipe(Config.withDefault(fallback))

const brokerName = (variable: string, fallback: string) =>
  Config.schema(
    Schema.String.check(
      Schema.isPattern(/^[A-Za-z0-9_.:-]{1,255}$/, { message: `${variable} must be 1 to 255 of A-Z a-z 0-9 _ . : -` })
    ),
    variable
  ).pipe(Config.withDefault(fallback))

const millis = (variable: string, fallback: number, min = 1) => Config.map(int(variable, fallback, min), Duration.millis)

/**
 * `60 seconds`, `5 minutes` (`Config.Duration`'s format), or a plain number of milliseconds as
 * documented before it, which `Config.Duration` alone refuses; positive and finite.
 */
const duration = (variable: string, fallback: Duration.Duration) =>
  Config.schema(
    Schema.String.pipe(
      Schema.decodeTo(Schema.DurationFromString, SchemaTransformation.transform({
        decode: (raw: string) => (/^\d+$/.test(raw.trim()) ? `${raw.trim()} millis` : raw.trim()),
        encode: (text: string) => text
      })),
      Schema.check(Schema.makeFilter((d: Duration.Duration) => Duration.isFinite(d) && Duration.isGreaterThan(d, Duration.zero)))
    ).annotate({ message: `${variable} must be a positive duration such as "60 seconds" or a number of milliseconds` }),
    variable
  ).pipe(Config.withDefault(fallback))

/**
 * The nodes of `AMQP_URL`: one URL, or several separated by commas (the nodes of a cluster).
 * Split only before a scheme, so a comma elsewhere in a URL stays where it is.
 */
export const brokerUrls = (raw: string): ReadonlyArray<string> =>
  raw.split(/,(?=\s*[a-z][a-z0-9+.-]*:\/\/)/i).map((url) => url.trim()).filter((url) => url !== "")

export const DEFAULT_AMQP_URL = "amqp://guest:guest@127.0.0.1:5672"

const amqpUrl = Config.schema(
  Schema.Redacted(Schema.String.check(Schema.makeFilter((raw: string) => {
    const urls = brokerUrls(raw)
    return urls.length > 0 && urls.every((url) => {
      try {
        const protocol = new URL(url).protocol
        return protocol === "amqp:" || protocol === "amqps:"
      } catch {
        return false
      }
    })
  }, { message: "AMQP_URL must be an amqp:// or amqps:// URL, or several separated by commas" }))),
  "AMQP_URL"
).pipe(Config.withDefault(Redacted.make(DEFAULT_AMQP_URL)))

const queueType = Config.schema(
  Schema.Literals(["quorum", "classic"]).annotate({ message: "QUEUE_TYPE must be quorum or classic" }),
  "QUEUE_TYPE"
).pipe(Config.withDefault("quorum" as const))

const brokerSettings: Config.Config<BrokerSettings> = Config.all({
  url: amqpUrl,
  heartbeatSeconds: int("AMQP_HEARTBEAT_SECONDS", 30, 0),
  reconnectInitialDelayMs: int("AMQP_RECONNECT_INITIAL_DELAY_MS", 200),
  reconnectMaxDelayMs: int("AMQP_RECONNECT_MAX_DELAY_MS", 30_000),
  connectAttempts: int("AMQP_CONNECT_ATTEMPTS", 10, 0),
  publishTimeout: millis("PUBLISH_TIMEOUT_MS", 10_000)
}).pipe(Config.map((c) => ({ ...c, reconnectMaxDelayMs: Math.max(c.reconnectMaxDelayMs, c.reconnectInitialDelayMs) })))

/** The topology as set; `deliveryLimit` is raised above `MAX_DELIVERIES` in `runtimeSettings`. */
const topologySettings: Config.Config<Topology> = Config.all({
  catalogExchange: brokerName("CATALOG_EXCHANGE", "catalog_events"),
  orderExchange: brokerName("ORDER_EXCHANGE", "order_events"),
  catalogQueue: brokerName("CATALOG_QUEUE", "inventory_catalog_consumer"),
  orderQueue: brokerName("ORDER_QUEUE", "inventory_order_consumer"),
  catalogPrefetch: int("CATALOG_PREFETCH", 10),
  // Chosen by measurement (SPEC 1; README, Throughput): an order's events arrive back to back and
  // run one at a time, so a group holds about a third of the prefetch.
  orderPrefetch: int("ORDER_PREFETCH", 500),
  eventsExchange: brokerName("INVENTORY_EXCHANGE", "inventory_events"),
  deadLetterExchange: brokerName("DLQ_EXCHANGE", "inventory_dlq"),
  deadLetterQueue: brokerName("DLQ_QUEUE", "inventory_failed_events"),
  deadLetterTtlMs: int("DLQ_MESSAGE_TTL_MS", 86_400_000),
  deadLetterMaxLength: int("DLQ_MAX_LENGTH", 10_000),
  deadLetterMaxLengthBytes: int("DLQ_MAX_LENGTH_BYTES", 256 * 1024 * 1024),
  deliveryLimit: int("QUEUE_DELIVERY_LIMIT", 20),
  deadLetterRecorderQueue: brokerName("DLQ_RECORDER_QUEUE", "inventory_dead_letter_recorder"),
  // Drained as fast as the database takes it; the bound only matters while the service is down.
  deadLetterRecorderMaxBytes: int("DLQ_RECORDER_MAX_LENGTH_BYTES", 64 * 1024 * 1024),
  queueType,
  singleActiveConsumer: Config.Boolean("SINGLE_ACTIVE_CONSUMER").pipe(Config.withDefault(true))
}).pipe(Config.map(({ catalogExchange, catalogPrefetch, catalogQueue, orderExchange, orderPrefetch, orderQueue, ...rest }): Topology => ({
  catalog: { queue: catalogQueue, exchange: catalogExchange, eventTypes: catalogEventTypes, prefetch: catalogPrefetch },
  orders: { queue: orderQueue, exchange: orderExchange, eventTypes: orderEventTypes, prefetch: orderPrefetch },
  ...rest
})))

const processingSettings: Config.Config<ProcessingPolicy> = Config.all({
  retryBaseDelay: millis("RETRY_BASE_DELAY_MS", Duration.toMillis(defaultProcessingPolicy.retryBaseDelay)),
  retries: int("RETRY_ATTEMPTS", defaultProcessingPolicy.retries, 0),
  maxDeliveries: int("MAX_DELIVERIES", defaultProcessingPolicy.maxDeliveries),
  maxBodyBytes: int("MAX_BODY_BYTES", defaultProcessingPolicy.maxBodyBytes),
  // The schema refuses more than MAX_LINES_PER_EVENT lines whatever is set: it is the ceiling.
  maxLinesPerEvent: int("MAX_LINES_PER_EVENT", defaultProcessingPolicy.maxLinesPerEvent, 1, MAX_LINES_PER_EVENT)
})

const relaySettings: Config.Config<RelaySettings> = Config.all({
  pollInterval: millis("OUTBOX_POLL_INTERVAL_MS", 1_000),
  batchSize: int("OUTBOX_BATCH_SIZE", 100),
  retention: duration("OUTBOX_RETENTION", Duration.days(7)),
  purgeInterval: duration("OUTBOX_PURGE_INTERVAL", Duration.hours(1)),
  electionInterval: duration("OUTBOX_RELAY_LOCK_INTERVAL", Duration.seconds(1))
})

const failedEventSettings: Config.Config<FailedEventRetentionSettings> = Config.all({
  retention: duration("FAILED_EVENTS_RETENTION", Duration.days(30)),
  purgeInterval: duration("FAILED_EVENTS_PURGE_INTERVAL", Duration.hours(1))
})

const reservationSettings: Config.Config<ReservationSettings> = Config.all({
  sweepInterval: duration("RESERVATION_SWEEP_INTERVAL", Duration.seconds(60)),
  sweepBatch: int("RESERVATION_SWEEP_BATCH", 500),
  horizon: duration("RESERVATION_TIMER_HORIZON", Duration.minutes(2))
})

/**
 * One group at a time unless told otherwise, measured (README, Throughput): groups of a busy
 * queue load and lock the same stock rows, so a second one waited for the first's commit (the
 * load statement averaged 66 ms against 5 ms alone) and throughput fell by 2-15%. Without grouping
 * (`BATCH_MAX_SIZE=1`) each transaction is one event's few rows, which rarely meet: three at once.
 */
const batchSettings: Config.Config<BatchSettings> = int("BATCH_MAX_SIZE", 256).pipe(
  Config.flatMap((maxSize) => Config.map(int("BATCH_CONCURRENCY", maxSize === 1 ? 3 : 1), (concurrency) => ({ maxSize, concurrency })))
)

const deadLetterSettings: Config.Config<DeadLetterSettings> = Config.all({
  bodyMaxBytes: int("DLQ_BODY_MAX_BYTES", 1024 * 1024, 0),
  attempts: int("DLQ_RECORD_ATTEMPTS", 3)
})

/** `DLQ_CHECK_INTERVAL` (default 60 s), `DLQ_ALERT_THRESHOLD` (100), `ALERT_WEBHOOK_URL` (none). */
const dlqMonitorSettings: Config.Config<DlqMonitorSettings> = Config.all({
  interval: Config.Duration("DLQ_CHECK_INTERVAL").pipe(Config.withDefault(Duration.seconds(60))),
  threshold: Config.Int("DLQ_ALERT_THRESHOLD").pipe(Config.withDefault(100)),
  webhook: Config.option(Config.URL("ALERT_WEBHOOK_URL").pipe(Config.map(Redacted.make))),
  webhookTimeout: Config.Duration("ALERT_WEBHOOK_TIMEOUT").pipe(Config.withDefault(Duration.seconds(5)))
})

/** The consumer's whole configuration (broker side and the features on it), as one `Config`. */
export const runtimeSettings: Config.Config<RuntimeSettings> = Config.all({
  broker: brokerSettings,
  topology: topologySettings,
  processing: processingSettings,
  relay: relaySettings,
  failedEvents: failedEventSettings,
  reservations: reservationSettings,
  batch: batchSettings,
  deadLetter: deadLetterSettings,
  dlqMonitor: dlqMonitorSettings,
  shutdownTimeout: millis("SHUTDOWN_TIMEOUT_MS", 30_000),
  consumerRoleCheckInterval: duration("CONSUMER_ROLE_CHECK_INTERVAL", Duration.seconds(5))
}).pipe(Config.map((c): RuntimeSettings => ({
  ...c,
  // The broker's limit must stay above the consumer's own, or the broker would decide first.
  topology: { ...c.topology, deliveryLimit: Math.max(c.topology.deliveryLimit, c.processing.maxDeliveries + 1) }
})))

export const DEFAULT_DATABASE_URL = "postgres://postgres@127.0.0.1:5432/postgres"

/**
 * `DATABASE_URL`, `DATABASE_POOL_SIZE`, `DATABASE_SCHEMA`, `DATABASE_IDLE_IN_TRANSACTION_TIMEOUT`
 * and `DATABASE_RESPONSE_TIMEOUT`, with local-development defaults.
 */
export const databaseSettings: Config.Config<DatabaseOptions> = Config.all({
  url: Config.Redacted("DATABASE_URL").pipe(Config.withDefault(Redacted.make(DEFAULT_DATABASE_URL))),
  poolSize: Config.Int("DATABASE_POOL_SIZE").pipe(Config.withDefault(10)),
  schema: Config.String("DATABASE_SCHEMA").pipe(Config.withDefault("public")),
  idleInTransactionTimeout: duration("DATABASE_IDLE_IN_TRANSACTION_TIMEOUT", DEFAULT_IDLE_IN_TRANSACTION_TIMEOUT),
  responseTimeout: duration("DATABASE_RESPONSE_TIMEOUT", DEFAULT_RESPONSE_TIMEOUT)
})

/** `HTTP_PORT` (default 9464) and `HTTP_HOST` (`0.0.0.0`) of `/healthz`, `/readyz`, `/metrics`. */
export const httpSettings: Config.Config<HttpSettings> = Config.all({
  port: Config.Port("HTTP_PORT").pipe(Config.withDefault(9464)),
  host: Config.String("HTTP_HOST").pipe(Config.withDefault("0.0.0.0"))
})

/**
 * The standard OpenTelemetry variables: `OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`, else
 * `OTEL_EXPORTER_OTLP_ENDPOINT` + `/v1/traces`; `OTEL_SERVICE_NAME`. No endpoint, no export.
 */
export const tracingSettings: Config.Config<TracingSettings> = Config.all({
  tracesEndpoint: Config.option(Config.String("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT")),
  endpoint: Config.option(Config.String("OTEL_EXPORTER_OTLP_ENDPOINT")),
  serviceName: Config.String("OTEL_SERVICE_NAME").pipe(Config.withDefault("inventory-event-consumer"))
}).pipe(Config.map(({ endpoint, serviceName, tracesEndpoint }): TracingSettings => ({
  tracesUrl: Option.isSome(tracesEndpoint) ? tracesEndpoint : Option.map(endpoint, (base) => `${base.replace(/\/+$/, "")}/v1/traces`),
  serviceName
})))

/** `LOG_LEVEL`: `trace` … `fatal`, `none`, in either case (default info). */
export const loggingSettings: Config.Config<LoggingSettings> = Config.all({
  level: Config.Literals(["All", "Trace", "Debug", "Info", "Warn", "Error", "Fatal", "None"], "LOG_LEVEL").pipe(
    Config.orElse(() =>
      Config.Literals(["all", "trace", "debug", "info", "warn", "error", "fatal", "none"], "LOG_LEVEL").pipe(
        Config.map((level) => (level[0]!.toUpperCase() + level.slice(1)) as LogLevel.LogLevel)
      )
    ),
    Config.withDefault("Info" as const)
  )
})

/**
 * The credentialed URLs as the environment spells them, unparsed: a failure is redacted with
 * them even when one of them is what failed validation.
 */
export const credentialedUrls = (): ReadonlyArray<string> =>
  [process.env["DATABASE_URL"], process.env["AMQP_URL"]].filter((url): url is string => url !== undefined && url !== "")

/** `AMQP_URL` as set (or its default), unparsed, to say which broker a failure was about. */
export const rawBrokerUrl = (): string => process.env["AMQP_URL"] ?? DEFAULT_AMQP_URL

/** `DATABASE_URL` as set (or its default), unparsed, to say which database a failure was about. */
export const rawDatabaseUrl = (): string => process.env["DATABASE_URL"] ?? DEFAULT_DATABASE_URL

/** The URL (or each of a list of broker nodes) with any password replaced, fit for logs and error messages. */
export const displayUrl = (url: Redacted.Redacted<string>): string => {
  const one = (raw: string) => {
    try {
      const parsed = new URL(raw)
      if (parsed.password !== "") parsed.password = "***"
      return parsed.toString()
    } catch {
      return "<invalid AMQP_URL>"
    }
  }
  const raw = Redacted.value(url)
  const urls = brokerUrls(raw)
  return urls.length > 1 ? urls.map(one).join(",") : one(raw)
}

/** The settings this process runs with. */
export class RuntimeConfig extends Context.Service<RuntimeConfig, RuntimeSettings>()("inventory/config/RuntimeConfig") {
  /** From the process environment (or whatever `ConfigProvider` is current). */
  static readonly layer = Layer.effect(RuntimeConfig, Effect.gen(function*() {
    return yield* runtimeSettings
  }))

  /** From explicit variables, as tests and tools pass them. */
  static readonly layerFrom = (env: Record<string, string>) =>
    Layer.effect(RuntimeConfig, runtimeSettings.parse(ConfigProvider.fromEnv({ env })))
}
