import { type ChildProcess, spawn } from "node:child_process"
import { resolve } from "node:path"
import { eventually } from "./rabbit.ts"

/** A replica: `src/main.ts` as `npm start` runs it, in a process of its own. */
export interface Replica {
  readonly name: string
  readonly child: ChildProcess
  /** Everything it logged so far, stdout and stderr. */
  readonly output: () => string
}

/**
 * Starts a replica with `env` added to this process's environment, adds it to `started` (for
 * `killReplicas` at the end, even if it never comes up) and waits for its "consumer started" line.
 * `wrap` turns the command line into another (to run it inside a network namespace).
 */
export const startReplica = async (
  name: string,
  env: Record<string, string>,
  started: Array<Replica>,
  wrap: (command: string, args: ReadonlyArray<string>) => readonly [string, ReadonlyArray<string>] = (c, a) => [c, a]
): Promise<Replica> => {
  const [command, args] = wrap(resolve("node_modules/.bin/node"), ["src/main.ts"])
  const child = spawn(command, [...args], { env: { ...process.env, ...env }, stdio: ["ignore", "pipe", "pipe"] })
  let output = ""
  child.stdout!.on("data", (d) => (output += d))
  child.stderr!.on("data", (d) => (output += d))
  const replica = { name, child, output: () => output }
  started.push(replica)
  await eventually(`replica ${name} started`, () => output.includes("consumer started"), 60_000)
  return replica
}

/** SIGTERM, then its exit code, or "still running" after `withinMs`; its last output is shown unless it exited 0. */
export const stopReplica = async ({ name, child, output }: Replica, withinMs = 30_000): Promise<number | string | null> => {
  if (child.exitCode !== null || child.signalCode !== null) return child.exitCode ?? child.signalCode
  const exited = new Promise<number | null>((done) => child.on("exit", (code) => done(code)))
  child.kill("SIGTERM")
  const code = await Promise.race([exited, new Promise<string>((done) => setTimeout(() => done("still running"), withinMs))])
  if (code !== 0) console.info(`replica ${name} after SIGTERM: ${code}\n${output().slice(-6000)}`)
  return code
}

/** Whatever is still running is killed (a stopped one woken first), for a test's `afterAll`. */
export const killReplicas = (replicas: ReadonlyArray<Replica>) => {
  for (const { child } of replicas) {
    if (child.exitCode === null && child.signalCode === null) {
      child.kill("SIGCONT")
      child.kill("SIGKILL")
    }
  }
}
