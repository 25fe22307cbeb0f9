import { describe, expect, it } from "vitest"
import { formatTable } from "../../bench/chaos/audit.ts"
import { formatSamples, runFuzz } from "../../bench/chaos/fuzz.ts"

/**
 * The fuzz run, short (issue 15): a few hundred hostile messages (random bytes, mutated events
 * with NUL and lone surrogates, huge and deeply nested values, unknown and misrouted events,
 * headers of every AMQP type, odd `messageId`s) and valid events of every type, through amqplib
 * to a real consumer process in its own vhost and schema. Afterwards every message was acked or
 * dead-lettered exactly once, the queues are empty, the consumer still applies a valid event and
 * the books balance. `FUZZ_SEED=<n>` replays a failing run; `npm run chaos -- --fuzz <n>` runs long.
 */

const databaseUrl = process.env["TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test"
const seed = process.env["FUZZ_SEED"] === undefined ? 20_261_202 : Number(process.env["FUZZ_SEED"])

describe("fuzz", () => {
  it("acks or dead-letters every hostile message exactly once and keeps consuming", async () => {
    const result = await runFuzz({
      messages: 300,
      seed,
      cwd: new URL("../..", import.meta.url).pathname,
      databaseUrl,
      settleTimeoutMs: 30_000,
      log: () => undefined
    })
    const report = `fuzz seed ${result.seed} (FUZZ_SEED=${result.seed} replays it)\n${formatTable(result.lines)}\n\nsamples:\n${formatSamples(result.samples)}`
    expect(result.lines.filter((l) => !l.ok), report).toEqual([])
    // The run really reached the consumer: hostile messages were dead-lettered and valid ones applied.
    expect(Number(result.lines.find((l) => l.check === "hostile messages dead-lettered")!.found)).toBeGreaterThan(100)
    expect(Number(result.lines.find((l) => l.check === "valid events applied")!.found)).toBeGreaterThan(30)
  }, 120_000)
})
