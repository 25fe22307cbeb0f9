import * as NodeHttpServer from "@effect/platform-node/NodeHttpServer"
import { Context, Duration, Effect, Layer, Ref } from "effect"
import { HttpRouter, HttpServerResponse } from "effect/http"
import { createServer } from "node:http"
import { StoreHealth } from "../stores/services.ts"
import { renderPrometheus } from "./prometheus.ts"

export interface CheckResult {
  readonly name: string
  readonly ok: boolean
  readonly detail: string
}

/** What a check answers: true (ready), a string (not ready: why), or ready-ness with what it is doing. */
export type CheckAnswer = boolean | string | { readonly ok: boolean; readonly detail: string }

/**
 * What `/readyz` asks. Components register a check (the broker connection, each consumer's
 * pause state); the database check is built in from `StoreHealth`.
 */
export class Readiness extends Context.Service<Readiness, {
  register(name: string, check: Effect.Effect<CheckAnswer>): Effect.Effect<void>
  readonly check: Effect.Effect<ReadonlyArray<CheckResult>>
}>()("inventory/observability/Readiness") {
  static readonly layer = Layer.effect(
    Readiness,
    Effect.gen(function*() {
      const checks = yield* Ref.make<ReadonlyArray<readonly [string, Effect.Effect<CheckAnswer>]>>([])
      const health = yield* StoreHealth
      const database = health.ping.pipe(Effect.as(true as CheckAnswer), Effect.catch((e) => Effect.succeed(`database: ${e.message}`)))
      const run = (name: string, check: Effect.Effect<CheckAnswer>) =>
        check.pipe(
          Effect.timeoutOrElse({ duration: Duration.seconds(2), orElse: () => Effect.succeed("timed out" as CheckAnswer) }),
          Effect.map((r): CheckResult =>
            typeof r === "object"
              ? { name, ok: r.ok, detail: r.detail }
              : { name, ok: r === true, detail: r === true ? "ok" : r === false ? "not ready" : r }
          )
        )
      return Readiness.of({
        register: (name, check) => Ref.update(checks, (all) => [...all.filter(([n]) => n !== name), [name, check] as const]),
        check: Effect.flatMap(Ref.get(checks), (all) =>
          Effect.forEach([["database", database] as const, ...all], ([name, check]) => run(name, check), { concurrency: "unbounded" }))
      })
    })
  )
}

const routes = HttpRouter.use(Effect.fn(function*(router) {
  const readiness = yield* Readiness
  yield* router.add("GET", "/healthz", Effect.succeed(HttpServerResponse.text("ok\n")))
  yield* router.add(
    "GET",
    "/readyz",
    Effect.map(readiness.check, (results) =>
      HttpServerResponse.text(
        results.map((r) => `${r.ok ? "ok  " : "FAIL"} ${r.name}: ${r.detail}`).join("\n") + "\n",
        { status: results.every((r) => r.ok) ? 200 : 503 }
      ))
  )
  yield* router.add(
    "GET",
    "/metrics",
    Effect.map(renderPrometheus, (body) => HttpServerResponse.text(body, { contentType: "text/plain; version=0.0.4; charset=utf-8" }))
  )
}))

/** Where the HTTP endpoints listen (`httpSettings` in src/config.ts reads it). */
export interface HttpSettings {
  readonly port: number
  readonly host: string
}

/** `GET /healthz`, `/readyz` and `/metrics`. */
export const httpLayer = (settings: HttpSettings) =>
  HttpRouter.serve(routes, { disableLogger: true }).pipe(
    Layer.provide(NodeHttpServer.layer(createServer, { port: settings.port, host: settings.host }))
  )
