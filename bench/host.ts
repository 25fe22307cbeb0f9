/**
 * npm run bench:host — what idle time between bursts of work costs on this machine (issue 18).
 *
 * Held at half its peak, the consumer works in bursts (deliveries, a group's statements, a relay
 * round) with idle time between them, and it spent 1.5-1.7 times the CPU per event it spends at
 * full speed. Part of that is ours (a group's fixed cost, a relay round per group); this measures
 * the part that is the host's, with no code of ours, no allocation and no garbage collector: the
 * same burst of work, run back to back, then after each idle gap of --gaps milliseconds.
 *
 * - a sweep: read and write one byte per cache line of a --mb MB buffer, 4 times (what a burst that
 *   touches memory pays when its cache lines are gone);
 * - a loop that only uses registers (what it pays otherwise).
 *
 * The gaps take turns, --rounds times (the machine's speed drifts); each prints the median over the
 * rounds of the mean time per burst, its range, and its ratio to the back-to-back median. Where an
 * idle core's caches do not survive its idle time (the host's other work on that core, or a deep
 * sleep state), the sweep slows with the gap and the loop barely does: the work is the same, the
 * caches are not. Prints figures; asserts nothing.
 *
 *   npm run bench:host
 *   npm run bench:host -- --gaps 0,1,5,20 --mb 4 --bursts 100 --rounds 3
 *   npm run bench:host -- --json     the medians as one JSON array (what `npm run bench` reads)
 *   npm run bench:host -- --sweep-only                              without the registers-only loop
 */
import { setTimeout as sleep } from "node:timers/promises"
import { parseArgs } from "node:util"
import { number, numbers } from "./args.ts"
import { median } from "./stats.ts"

const { values: flags } = parseArgs({
  options: {
    gaps: { type: "string", default: "0,1,5,20" },
    mb: { type: "string", default: "4" },
    bursts: { type: "string", default: "100" },
    rounds: { type: "string", default: "3" },
    json: { type: "boolean", default: false },
    "sweep-only": { type: "boolean", default: false }
  }
})
const GAPS = numbers("gaps", flags.gaps)
const MB = number("mb", flags.mb)
const BURSTS = number("bursts", flags.bursts)
const ROUNDS = number("rounds", flags.rounds)
const JSON_OUTPUT = flags.json
const SWEEP_ONLY = flags["sweep-only"]
if (MB === 0 || BURSTS === 0 || ROUNDS === 0) throw new Error("--mb, --bursts and --rounds take numbers > 0")

const buffer = new Uint8Array(MB * 1024 * 1024)
let sink = 0

const sweep = () => {
  let sum = 0
  for (let pass = 0; pass < 4; pass++) {
    for (let i = 0; i < buffer.length; i += 64) {
      buffer[i]!++
      sum += buffer[i]!
    }
  }
  sink += sum
}

const registers = () => {
  let x = sink
  for (let i = 0; i < 1_000_000; i++) x = (x * 31 + i) | 0
  sink += x
}

/** Mean wall time of one burst, in µs, with `gap` ms of idle time after each (0: the next one at once). */
const measure = async (burst: () => void, gap: number) => {
  let busy = 0
  for (let b = 0; b < BURSTS; b++) {
    const start = performance.now()
    burst()
    busy += performance.now() - start
    // The same path with no gap: a turn of the event loop, never idle.
    await (gap > 0 ? sleep(gap) : new Promise<void>((resolve) => setImmediate(resolve)))
  }
  return (busy * 1000) / BURSTS
}

// Both compiled and the buffer's pages mapped before anything is counted.
await measure(sweep, 0)
if (!SWEEP_ONLY) await measure(registers, 0)

if (!JSON_OUTPUT) console.log(`bench:host: a ${MB} MB sweep${SWEEP_ONLY ? "" : " and a registers-only loop"}, ${BURSTS} bursts back to back and after each idle gap, ${ROUNDS} rounds`)
const runs = new Map(GAPS.map((gap) => [gap, { sweep: [] as Array<number>, registers: [] as Array<number> }]))
for (let round = 0; round < ROUNDS; round++) {
  for (const gap of GAPS) {
    const run = runs.get(gap)!
    run.sweep.push(await measure(sweep, gap))
    if (!SWEEP_ONLY) run.registers.push(await measure(registers, gap))
  }
}
if (JSON_OUTPUT) {
  console.log(JSON.stringify([...runs].map(([gap, run]) => ({ gap, sweepUs: median(run.sweep), ...(SWEEP_ONLY ? {} : { registersUs: median(run.registers) }) }))))
} else {
  const base = runs.get(0)
  const figure = (xs: ReadonlyArray<number>, of: ReadonlyArray<number> | undefined) =>
    `${median(xs).toFixed(0).padStart(6)} µs (${Math.min(...xs).toFixed(0)}-${Math.max(...xs).toFixed(0)})` +
    (of === undefined ? "" : ` ${(median(xs) / median(of)).toFixed(2)}x`)
  for (const [gap, run] of runs) {
    console.log(
      `${(gap === 0 ? "back to back" : `idle ${gap} ms`).padEnd(12)}  sweep ${figure(run.sweep, base?.sweep)}` +
        (SWEEP_ONLY ? "" : `   registers ${figure(run.registers, base?.registers)}`)
    )
  }
}
