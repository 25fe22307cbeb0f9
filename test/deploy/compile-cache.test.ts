import { assert, describe, it } from "@effect/vitest"
import { execFileSync } from "node:child_process"
import { mkdtempSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

/**
 * `npm start` and the image run the consumer on Node's compile cache (`NODE_COMPILE_CACHE`), which
 * the image fills at build by importing main.ts (Dockerfile). A process started on a warm cache
 * never loads the TypeScript stripper, which otherwise holds about 20 MB of RSS for the life of
 * the process (README, Throughput). Imported, main.ts only loads the consumer's modules: were it
 * to start the consumer, the process would not end and the call below would time out.
 */
describe("compile cache", () => {
  it("importing main.ts loads the consumer without starting it, and leaves a cache on which no module needs its types stripped", () => {
    const cache = mkdtempSync(join(tmpdir(), "compile-cache-"))
    try {
      const probe = "await import('./src/main.ts'); process.stdout.write(String(process.moduleLoadList.some((m) => m.includes('amaro'))))"
      const stripperLoaded = () =>
        execFileSync(resolve("node_modules/.bin/node"), ["--input-type=module", "-e", probe], {
          env: { ...process.env, NODE_COMPILE_CACHE: cache },
          encoding: "utf8",
          timeout: 60_000
        })
      assert.strictEqual(stripperLoaded(), "true", "on an empty cache the types are stripped")
      assert.strictEqual(stripperLoaded(), "false", "on the cache the first import left, nothing is stripped")
    } finally {
      rmSync(cache, { recursive: true, force: true })
    }
  })
})
