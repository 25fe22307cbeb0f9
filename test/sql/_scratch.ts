import { Effect, Layer, Redacted } from "effect"
import { PgClient } from "@effect/sql-pg"
import { SqlClient } from "effect/sql"

const program = Effect.gen(function*() {
  const sql = yield* SqlClient.SqlClient
  const pg = yield* PgClient.PgClient
  console.log(yield* sql`SELECT 1::int8 AS a, 2::int4 AS b, '{"x":1}'::jsonb AS j, now() AS t, '\\x0102'::bytea AS by, 3::numeric AS n, current_setting('search_path') AS sp`)
  console.log(yield* sql`SELECT x FROM unnest(${["a", "b"]}::text[]) AS x WHERE x = ANY(${["a"]})`)
  console.log(yield* sql`SELECT ${pg.json({ a: 1 })}::jsonb AS j`)
  const e = yield* Effect.flip(sql`SELECT 1/0`)
  console.log(e._tag, e.reason._tag, (e.reason.cause as any).code, e.message, Object.keys(e.reason.cause as any))
  const f = yield* Effect.flip(sql`CREATE TEMP TABLE tt (a int check (a > 0)); INSERT INTO tt VALUES (-1)`.unprepared)
  console.log(f.reason._tag, (f.reason.cause as any).code, (f.reason.cause as any).constraint, String(f))
})
program.pipe(
  Effect.provide(PgClient.layer({ url: Redacted.make("postgres://postgres@127.0.0.1:5432/test"), startupParameters: { search_path: "foo, public" } })),
  Effect.runPromise
).then(() => process.exit(0), (e) => { console.error(e); process.exit(1) })
