/**
 * npm run chaos — the fault and abuse harness (issue 9). Publishes a mixed workload over several
 * organizations (5% sent twice with the same event_id, 1% abusive, a few cross-tenant) while,
 * at random moments, it kills the vhost's broker connections, stops PostgreSQL for longer than
 * the retry schedule, replaces the consumer with SIGTERM, and runs two consumers at once. Then
 * it audits the database and the broker, prints the table and exits 1 on any failed line.
 *
 *   npm run chaos                          20,000 events, 10 connection kills
 *   npm run chaos -- --events 2000 --kills 3 --seconds 25 --seed 7
 *
 * Stops the machine's PostgreSQL for a few seconds: run it alone. CHAOS_KEEP_LOGS=1 keeps the
 * consumers' logs (their directory is printed).
 *
 *   npm run chaos -- --fuzz 20000 [--seed 7] [--settle-seconds 600] [--classic]
 *
 * runs the fuzz instead (issue 15, bench/chaos/fuzz.ts): that many hostile and valid messages to
 * one consumer, no faults (PostgreSQL keeps running), then the exactly-once audit with samples;
 * `--classic` declares classic queues instead of quorum ones (delivery counts kept in process).
 * FUZZ_KEEP_LOGS=1 keeps the consumer's log. `--fuzz N --seed S --show K` prints message #K of
 * that run in full (routing, properties, headers, body) instead of running it.
 */
import { formatTable } from "./chaos/audit.ts"
import { formatSamples, fuzzMessages, runFuzz, showMessage } from "./chaos/fuzz.ts"
import { runChaos } from "./chaos/run.ts"

const arg = (name: string, fallback: number) => {
  const i = process.argv.indexOf(`--${name}`)
  return i >= 0 ? Number(process.argv[i + 1]) : fallback
}

const seed = arg("seed", Date.now() % 1_000_000)
const fuzz = arg("fuzz", 0)
const show = arg("show", -1)
if (fuzz > 0 && show >= 0) {
  // A run's messages are a prefix-stable function of the seed: #K is the same whatever N.
  console.log(showMessage(fuzzMessages(seed, Math.max(fuzz, show + 1))[show]!))
  process.exit(0)
}
if (fuzz > 0) {
  const result = await runFuzz({
    messages: fuzz,
    seed,
    cwd: new URL("..", import.meta.url).pathname,
    databaseUrl: process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres",
    // A loop never lets the queues empty: the run gives up after this long and reports it.
    settleTimeoutMs: arg("settle-seconds", Math.max(60, Math.round(fuzz / 20))) * 1000,
    env: process.argv.includes("--classic") ? { QUEUE_TYPE: "classic" } : {},
    log: (line) => console.log(line)
  }).catch((error: unknown) => {
    console.error("chaos --fuzz: the run itself failed:", error)
    process.exit(2)
  })
  console.log(`\n${formatTable(result.lines)}`)
  if (result.samples.length > 0) console.log(`\nsamples (seed ${result.seed}; --seed ${result.seed} replays the run):\n${formatSamples(result.samples)}`)
  console.log(result.ok ? "\nchaos --fuzz: every check passed" : `\nchaos --fuzz: FAILED (seed ${result.seed})`)
  process.exit(result.ok ? 0 : 1)
}

const events = arg("events", 20_000)
const result = await runChaos({
  events,
  publishSeconds: arg("seconds", Math.max(20, Math.round(events / 200))),
  connectionKills: arg("kills", 10),
  outageMs: arg("outage-ms", 6_000),
  pairMs: arg("pair-ms", 15_000),
  hugeCount: arg("huge", 2),
  seed,
  cwd: new URL("..", import.meta.url).pathname,
  databaseUrl: process.env["DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/postgres",
  settleTimeoutMs: arg("settle-seconds", 300) * 1000,
  log: (line) => console.log(line)
}).catch((error: unknown) => {
  console.error("chaos: the run itself failed:", error)
  process.exit(2)
})

console.log(`\nseed ${seed}; broker max_message_size ${result.brokerMaxMessageSize} bytes, so the oversized bodies were ${result.hugeBytes} bytes`)
console.log(formatTable(result.lines))
if (process.env["CHAOS_KEEP_LOGS"] !== undefined) console.log(`consumer logs: ${result.logDir}`)
console.log(result.ok ? "\nchaos: every check passed" : "\nchaos: FAILED")
process.exit(result.ok ? 0 : 1)
