import { execFile } from "node:child_process"
import { fileURLToPath } from "node:url"
import pg from "pg"
import { expect } from "vitest"

/**
 * The operator CLI as operators run it: a child process on the pinned Node 24, configured only
 * through the environment, against the real PostgreSQL (one schema per test file) and, when a
 * test needs it, the real RabbitMQ (one vhost per test file, see ../support/rabbit.ts).
 */

export const root = fileURLToPath(new URL("../../", import.meta.url))
export const node = `${root}node_modules/.bin/node`
export const databaseUrl = "postgres://postgres@127.0.0.1:5432/postgres"

export interface CliResult {
  readonly code: number
  readonly stdout: string
  readonly stderr: string
}

/** A schema no other file or run uses; dropped by the test file at the end. */
export const cliSchema = (file: string) =>
  `t_cli_${file}_${process.pid.toString(36)}_${Math.random().toString(36).slice(2, 10)}`

/** Runs `inventory <args>` with exactly these variables (plus PATH), never throwing on a non-zero exit. */
export const runCli = (args: ReadonlyArray<string>, env: Record<string, string>): Promise<CliResult> =>
  new Promise((resolve) => {
    execFile(node, ["src/cli/main.ts", ...args], {
      cwd: root,
      env: { PATH: process.env["PATH"] ?? "", ...env },
      timeout: 60_000,
      maxBuffer: 16 * 1024 * 1024
    }, (error, stdout, stderr) => {
      const code = error === null ? 0 : typeof error.code === "number" ? error.code : -1
      resolve({ code, stdout, stderr })
    })
  })

/** A CLI bound to one environment. */
export const cliWith = (env: Record<string, string>) => (...args: ReadonlyArray<string>) => runCli(args, env)

/** Parses stdout as the command's JSON document, failing the test with the whole output if it is not. */
export const json = <A = unknown>(result: CliResult): A => {
  expect(result, `stderr: ${result.stderr}`).toMatchObject({ code: 0 })
  return JSON.parse(result.stdout) as A
}

/** A failure as the CLI promises it: the exit code, a message on stderr, and no stack trace. */
export const expectCleanFailure = (result: CliResult, code: number, message: string | RegExp) => {
  expect(result.code, `stdout: ${result.stdout}\nstderr: ${result.stderr}`).toBe(code)
  if (typeof message === "string") expect(result.stderr).toContain(message)
  else expect(result.stderr).toMatch(message)
  expect(`${result.stdout}\n${result.stderr}`).not.toMatch(/^\s+at .+:\d+:\d+\)?$/m)
  expect(`${result.stdout}\n${result.stderr}`).not.toMatch(/node_modules|file:\/\//)
}

/** Plain SQL on the test database, for what no command may do: corrupting a row, dropping the schema. */
export const withDatabase = async <A>(f: (client: pg.Client) => Promise<A>): Promise<A> => {
  const client = new pg.Client({ connectionString: databaseUrl })
  await client.connect()
  try {
    return await f(client)
  } finally {
    await client.end()
  }
}

export const dropSchema = (schema: string) => withDatabase((c) => c.query(`DROP SCHEMA IF EXISTS ${schema} CASCADE`))
