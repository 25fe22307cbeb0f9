import { defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    include: ["test/**/*.test.ts"],
    // Integration suites share one PostgreSQL and one RabbitMQ; each file isolates itself
    // (own schema, own vhost or names), so files may run in parallel.
    testTimeout: 60_000,
    hookTimeout: 60_000
  }
})
