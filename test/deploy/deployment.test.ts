import { assert, describe, it } from "@effect/vitest"
import { readFileSync } from "node:fs"

const read = (file: string) => readFileSync(new URL(`../../${file}`, import.meta.url), "utf8")

describe("deployment", () => {
  it("the image runs the consumer with the flags and compile cache of npm start (heap bounds, V8 pool sized from the cores)", () => {
    // `exec` makes npm's shell become node, so npm's forwarded signals reach it (test/deploy/signals.test.ts).
    const script = /^((?:[A-Z_]+=\S+ )*)exec (.*)$/.exec((JSON.parse(read("package.json")) as { scripts: { start: string } }).scripts.start)
    assert.isNotNull(script, "npm start is `NAME=value ... exec node ...`")
    const start = script![2]!.split(/\s+/)
    const dockerfile = read("Dockerfile")
    const cmd = /^CMD (\[.*\])$/m.exec(dockerfile.split("\n").filter((line) => line.startsWith("CMD ")).at(-1) ?? "")
    assert.isNotNull(cmd, "the Dockerfile ends with an exec-form CMD")
    const image = JSON.parse(cmd![1]!) as Array<string>
    assert.deepStrictEqual(image, start)
    assert.includeMembers(start, ["--v8-pool-size=0"])
    // The same environment, the compile cache among it.
    const env = script![1]!.trim().split(/\s+/).filter((word) => word !== "")
    assert.includeMembers(env, ["NODE_COMPILE_CACHE=node_modules/.cache/node"])
    const imageEnv = dockerfile.split("\n").filter((line) => line.startsWith("ENV ")).flatMap((line) => line.slice(4).trim().split(/\s+/))
    assert.includeMembers(imageEnv, env)
  })
})
