import { assert, describe, it } from "@effect/vitest"
import { spawnSync } from "node:child_process"
import { mkdtempSync, readFileSync, rmSync } from "node:fs"
import { tmpdir } from "node:os"
import { join, resolve } from "node:path"

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), "utf8")
const node = resolve("node_modules/.bin/node")

/** The image's build step that fills the cache: the script it passes to `node -e`. */
const warmScript = /^RUN node --input-type=module -e "([^"]+)"/m.exec(read("Dockerfile"))?.[1]
/** `npm start`'s Node flags. */
const startFlags = (JSON.parse(read("package.json")) as { scripts: { start: string } }).scripts.start
  .split(/\s+/).filter((word) => word.startsWith("--"))

/** Whether the consumer, started as `npm start` starts it, loaded the TypeScript stripper (amaro). */
const stripperLoaded = (cache: string) => {
  // A malformed setting ends the process once every module is loaded, before it connects.
  const probe = `data:text/javascript,process.on("exit", () => process.stderr.write("stripper:" + process.moduleLoadList.some((m) => m.includes("amaro"))))`
  const run = spawnSync(node, [...startFlags, "--import", probe, "src/main.ts"], {
    env: { ...process.env, NODE_COMPILE_CACHE: cache, HTTP_PORT: "not-a-port" },
    encoding: "utf8",
    timeout: 60_000
  })
  const said = /stripper:(true|false)/.exec(run.stderr)
  assert.isNotNull(said, `the consumer ended without the probe's line: ${run.stderr.slice(-2000)}`)
  return said![1] === "true"
}

/**
 * `npm start` and the image run the consumer on Node's compile cache (`NODE_COMPILE_CACHE`), which
 * the image fills at build (Dockerfile). A process started on a warm cache never loads the
 * TypeScript stripper, which otherwise holds about 20 MB of RSS for the life of the process
 * (README, Throughput). The build step imports main.ts without the start flags; the consumer runs
 * with them, as its entry point: the cache serves both.
 */
describe("compile cache", () => {
  it("the image's build step loads the consumer without starting it and fills a cache on which the consumer, started with npm start's flags, never strips a type", () => {
    assert.isDefined(warmScript, "the Dockerfile fills the cache with `RUN node --input-type=module -e \"...\"`")
    const cache = mkdtempSync(join(tmpdir(), "compile-cache-"))
    try {
      assert.isTrue(stripperLoaded(cache), "on an empty cache the types are stripped")
      rmSync(cache, { recursive: true, force: true })
      // Were importing main.ts to start the consumer, this would not end before the timeout.
      const warm = spawnSync(node, ["--input-type=module", "-e", warmScript!], { env: { ...process.env, NODE_COMPILE_CACHE: cache }, timeout: 60_000 })
      assert.strictEqual(warm.status, 0, String(warm.stderr))
      assert.isFalse(stripperLoaded(cache), "on the cache the build step left, nothing is stripped")
    } finally {
      rmSync(cache, { recursive: true, force: true })
    }
  })
})
