import { configDefaults, defineConfig } from "vitest/config"

export default defineConfig({
  test: {
    // Integration suites share one PostgreSQL and one RabbitMQ; each file isolates itself
    // (own schema, own vhost or names), so files may run in parallel.
    testTimeout: 60_000,
    hookTimeout: 60_000,
    projects: [
      {
        extends: true,
        test: {
          name: "default",
          include: ["test/**/*.test.ts"],
          exclude: [...configDefaults.exclude, "test/**/*.isolated.test.ts"],
          sequence: { groupOrder: 0 }
        }
      },
      {
        // Files that disturb shared services (e.g. stop PostgreSQL) run alone, after the rest.
        extends: true,
        test: {
          name: "isolated",
          include: ["test/**/*.isolated.test.ts"],
          fileParallelism: false,
          sequence: { groupOrder: 1 }
        }
      }
    ]
  }
})
