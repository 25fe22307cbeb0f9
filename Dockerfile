# The consumer runs its TypeScript directly on Node 24 (type stripping): no build stage.
FROM node:24-slim

ENV NODE_ENV=production
WORKDIR /app

COPY package.json package-lock.json ./
RUN npm ci --omit=dev --no-audit --no-fund && npm cache clean --force

COPY src ./src

USER node
EXPOSE 9464

HEALTHCHECK --interval=15s --timeout=3s --start-period=20s --retries=3 \
  CMD ["node", "-e", "fetch('http://127.0.0.1:' + (process.env.HTTP_PORT || 9464) + '/healthz').then((r) => process.exit(r.ok ? 0 : 1), () => process.exit(1))"]

# Exec form: node is PID 1's only process and receives SIGTERM itself, so the consumer drains.
# The flags are `npm start`'s (test/deploy/deployment.test.ts keeps them equal): a bounded heap, and V8's
# background pool sized from the cores (one thread on two), not Node's fixed four, so GC helpers
# do not crowd a small machine (README, Throughput).
CMD ["node", "--max-old-space-size=256", "--max-semi-space-size=4", "--v8-pool-size=0", "src/main.ts"]
