import { assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), "utf8")

describe("deployment", () => {
  it("the image runs the consumer with the flags of npm start (heap bounds, V8 pool sized from the cores)", () => {
    // `exec` makes npm's shell become node, so npm's forwarded signals reach it (test/deploy/signals.test.ts).
    const start = (JSON.parse(read("package.json")) as { scripts: { start: string } }).scripts.start.replace(/^exec /, "").split(/\s+/)
    const cmd = /^CMD (\[.*\])$/m.exec(read("Dockerfile").split("\n").filter((line) => line.startsWith("CMD ")).at(-1) ?? "")
    assert.isNotNull(cmd, "the Dockerfile ends with an exec-form CMD")
    const image = JSON.parse(cmd![1]!) as Array<string>
    assert.deepStrictEqual(image, start)
    assert.includeMembers(start, ["--v8-pool-size=0"])
  })
})
