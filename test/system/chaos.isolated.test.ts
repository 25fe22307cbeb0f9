import { describe, expect, it } from "vitest"
import { formatTable } from "../../bench/chaos/audit.ts"
import { ensurePostgres } from "../../bench/chaos/infra.ts"
import { runChaos } from "../../bench/chaos/run.ts"

/**
 * The fault and abuse harness (issue 9), shortened: ~2,000 events with 5% sent twice, 1%
 * abusive (a 10 MB body among them) and cross-tenant messages, while the vhost's connections
 * are killed 3 times, PostgreSQL stops for longer than the retry schedule, the consumer is
 * replaced with SIGTERM and two consumers run at once. Every line of the audit must hold:
 * nothing lost, nothing applied twice, abuse dead-lettered as ValidationError, no outage in the
 * DLQ, outbound events published, no tenant's rows touched by another, books balanced, no crash.
 * Stops the shared PostgreSQL, so it runs alone (the `isolated` project).
 */

const databaseUrl = process.env["TEST_DATABASE_URL"] ?? "postgres://postgres@127.0.0.1:5432/test"

describe("chaos", () => {
  it("loses nothing, applies nothing twice and leaks nothing across tenants under faults and abuse", async () => {
    try {
      const result = await runChaos({
        events: 2_000,
        publishSeconds: 25,
        connectionKills: 3,
        outageMs: 4_000,
        pairMs: 5_000,
        hugeCount: 1,
        seed: 20_260_109,
        cwd: new URL("../..", import.meta.url).pathname,
        databaseUrl,
        settleTimeoutMs: 90_000,
        log: () => undefined
      })
      const report = `${formatTable(result.lines)}\n\nfaults:\n${result.faults.join("\n")}`
      expect(result.lines.filter((l) => !l.ok), report).toEqual([])
      // The run really did what it claims: every fault happened and the abuse reached the consumer.
      expect(result.faults.filter((f) => f.includes("closed every connection"))).toHaveLength(3)
      expect(result.faults.some((f) => f.includes("PostgreSQL answering again"))).toBe(true)
      expect(result.faults.some((f) => f.includes("two consumers at once"))).toBe(true)
      expect(result.lines.find((l) => l.check === "abusive messages dead-lettered as ValidationError")!.found).toBeGreaterThanOrEqual(25)
    } finally {
      await ensurePostgres(databaseUrl)
    }
  }, 240_000)
})
