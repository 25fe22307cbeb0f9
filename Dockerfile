# The consumer runs its TypeScript directly on Node 24 (type stripping): no build stage.
FROM node:24-slim

# Node's compile cache, as `npm start` sets it: modules compiled with their types stripped.
ENV NODE_ENV=production NODE_COMPILE_CACHE=node_modules/.cache/node
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

COPY src ./src
# Filled at build, so that a container starts on a warm cache: it never loads the type stripper
# (about 20 MB of RSS for the life of the process) nor compiles its modules again. Importing
# main.ts loads every module of the consumer without starting it.
RUN node --input-type=module -e "await import('./src/main.ts')" && chown -R node node_modules/.cache

USER node
EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Exec form: node is PID 1's only process and receives SIGTERM itself, so the consumer drains.
# The flags are `npm start`'s (test/deploy/deployment.test.ts keeps them equal): a bounded heap, and V8's
# background pool sized from the cores (one thread on two), not Node's fixed four, so GC helpers
# do not crowd a small machine (README, Throughput).
CMD ["node", "--max-old-space-size=256", "--max-semi-space-size=4", "--v8-pool-size=0", "src/main.ts"]
