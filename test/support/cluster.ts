import { type ChildProcess, execFile, spawn } from "node:child_process"
import { appendFileSync, chmodSync, closeSync, existsSync, mkdirSync, mkdtempSync, openSync, readFileSync, realpathSync, rmSync, writeFileSync } from "node:fs"
import { tmpdir } from "node:os"
import { delimiter, dirname, join } from "node:path"
import { promisify } from "node:util"
import { freePort } from "./rabbit.ts"

/**
 * A throwaway RabbitMQ cluster on this machine, beside (never instead of) the shared broker on
 * 5672: its own node names, ports, cookie, data and log directories under one temp directory,
 * all removed by `stop`. Each node runs the installed `rabbitmq-server` as the current user.
 * Checked on RabbitMQ 3.10.8 / Erlang 25.
 */

const run = promisify(execFile)

/** The installed scripts themselves. Debian's wrapper on PATH re-runs them as the `rabbitmq` user through `su`, which resets HOME (our cookie) and cannot write our temp directories. */
const binDir = (() => {
  for (const dir of (process.env["PATH"] ?? "").split(delimiter)) {
    const candidate = join(dir, "rabbitmq-server")
    if (dir !== "" && existsSync(candidate)) return dirname(realpathSync(candidate))
  }
  return "/usr/lib/rabbitmq/bin"
})()

export interface ClusterNode {
  /** Erlang node name, e.g. `rabbit-ct1-k3j9@localhost`. */
  readonly name: string
  readonly amqpPort: number
  readonly distPort: number
  /** AMQP URL of this node for `vhost` (guest/guest, from loopback). */
  readonly url: (vhost?: string) => string
}

export interface ClusterTimings {
  /** From spawning the nodes to every one of them running on its own. */
  readonly bootMs: number
  /** From there to every node running in one cluster. */
  readonly joinMs: number
}

interface Running {
  readonly node: ClusterNode
  readonly child: ChildProcess
  readonly exited: Promise<number | null>
  readonly log: string
}

/** Every cluster of this process not stopped yet: killed outright if the process exits first. */
const live = new Set<{ readonly dir: string; readonly children: Array<ChildProcess> }>()
process.once("exit", () => {
  for (const cluster of live) {
    for (const child of cluster.children) killGroup(child, "SIGKILL")
    rmSync(cluster.dir, { recursive: true, force: true })
  }
})

/**
 * Stops the nodes (each its own process group, listed in `<dir>/groups`) and removes the directory
 * once the test process is gone, however it went: a SIGKILLed or SIGTERMed runner runs no exit hook.
 */
const watchdogScript = `
parent=$1; dir=$2
while kill -0 "$parent" 2>/dev/null; do sleep 1; done
groups=$(cat "$dir/groups" 2>/dev/null)
for g in $groups; do kill -TERM "$g" 2>/dev/null; done
i=0
while [ $i -lt 20 ]; do
  alive=0
  for g in $groups; do kill -0 -- "-$g" 2>/dev/null && alive=1; done
  [ $alive = 0 ] && break
  sleep 1; i=$((i + 1))
done
for g in $groups; do kill -KILL -- "-$g" 2>/dev/null; done
rm -rf "$dir"
`

/** Signals the node's whole process group (the start script, the Erlang VM and its helpers). */
const killGroup = (child: ChildProcess, signal: NodeJS.Signals) => {
  if (child.pid === undefined) return
  try {
    process.kill(-child.pid, signal)
  } catch {
    // Already gone.
  }
}

const within = <A>(what: string, ms: number, promise: Promise<A>): Promise<A> => {
  let timer: ReturnType<typeof setTimeout> | undefined
  return Promise.race([
    promise,
    new Promise<never>((_, reject) => {
      timer = setTimeout(() => reject(new Error(`${what}: no answer within ${ms} ms`)), ms)
    })
  ]).finally(() => clearTimeout(timer))
}

export interface Cluster {
  readonly nodes: ReadonlyArray<ClusterNode>
  /** Boots every node and joins nodes 2..n to node 1 (`stop_app`, `join_cluster`, `start_app`). */
  readonly start: () => Promise<ClusterTimings>
  /** `rabbitmqctl -q -n <node> ...args`, bounded. */
  readonly ctl: (node: ClusterNode, ...args: ReadonlyArray<string>) => Promise<string>
  /** The node leading a quorum queue, as `via` sees it (undefined while there is none). */
  readonly leader: (via: ClusterNode, queue: string, vhost?: string) => Promise<ClusterNode | undefined>
  /** The nodes holding a client's connections, found by its `connection_name`, as `via` sees them. */
  readonly connectedTo: (via: ClusterNode, connectionName: string) => Promise<ReadonlyArray<ClusterNode>>
  /** The last lines of a node's log, for a failure message. */
  readonly logTail: (node: ClusterNode, lines?: number) => string
  /** Stops every node (gracefully, then killed), removes the directory. Safe to call at any point, and twice. */
  readonly stop: () => Promise<void>
}

/**
 * `size` nodes named `rabbit-<prefix><i>-<run>@localhost`; nothing runs until `start`. Ports are
 * picked free at `start`. A run suffix keeps the names apart from a node some earlier, killed run left behind.
 */
export const makeCluster = (options: { readonly size: number; readonly prefix?: string; readonly commandTimeoutMs?: number; readonly bootTimeoutMs?: number }): Cluster => {
  const prefix = options.prefix ?? "ct"
  const commandTimeoutMs = options.commandTimeoutMs ?? 60_000
  const bootTimeoutMs = options.bootTimeoutMs ?? 120_000
  const runId = `${process.pid.toString(36)}${Math.random().toString(36).slice(2, 6)}`
  const dir = mkdtempSync(join(tmpdir(), `rabbit-${prefix}-`))
  const home = join(dir, "home")
  const children: Array<ChildProcess> = []
  const entry = { dir, children }
  live.add(entry)

  const nodes: Array<ClusterNode> = []
  const running: Array<Running> = []
  let ctlPortMin = 0
  let stopped = false
  let watchdog: ChildProcess | undefined

  const nodeDir = (node: ClusterNode) => join(dir, node.name.split("@")[0]!)

  /** What every node and CLI call shares; the machine's own RabbitMQ and Erlang settings are left out. */
  const baseEnv = (): Record<string, string> => {
    const env: Record<string, string> = {}
    for (const [key, value] of Object.entries(process.env)) {
      if (value !== undefined && !key.startsWith("RABBITMQ_") && !key.startsWith("ERL_")) env[key] = value
    }
    return {
      ...env,
      // The cookie: $HOME/.erlang.cookie, read by nodes and CLI alike.
      HOME: home,
      // Our own (empty) env file, so /etc/rabbitmq/rabbitmq-env.conf's NODENAME is not read.
      RABBITMQ_CONF_ENV_FILE: join(dir, "rabbitmq-env.conf"),
      // The CLI's own distribution ports, apart from the ones other rabbitmqctl calls on this machine use.
      RABBITMQ_CTL_DIST_PORT_MIN: String(ctlPortMin),
      RABBITMQ_CTL_DIST_PORT_MAX: String(ctlPortMin + 10),
      ERL_EPMD_ADDRESS: "127.0.0.1",
      ERL_FLAGS: "-kernel inet_dist_use_interface {127,0,0,1}"
    }
  }

  const nodeEnv = (node: ClusterNode): Record<string, string> => {
    const own = nodeDir(node)
    return {
      ...baseEnv(),
      RABBITMQ_NODENAME: node.name,
      RABBITMQ_NODE_PORT: String(node.amqpPort),
      RABBITMQ_DIST_PORT: String(node.distPort),
      RABBITMQ_CONFIG_FILE: join(own, "rabbitmq.conf"),
      RABBITMQ_MNESIA_BASE: join(own, "mnesia"),
      RABBITMQ_LOG_BASE: join(own, "log"),
      RABBITMQ_PID_FILE: join(own, "node.pid"),
      // No plugins: no management or Prometheus listener to collide with the machine's broker.
      RABBITMQ_ENABLED_PLUGINS_FILE: join(own, "enabled_plugins"),
      RABBITMQ_PLUGINS_EXPAND_DIR: join(own, "plugins-expand")
    }
  }

  const ctl = async (node: ClusterNode, ...args: ReadonlyArray<string>): Promise<string> => {
    try {
      return (await run(join(binDir, "rabbitmqctl"), ["-q", "-n", node.name, ...args], { env: baseEnv(), timeout: commandTimeoutMs })).stdout
    } catch (error) {
      const failure = error as { stderr?: string; stdout?: string; message?: string }
      throw new Error(`rabbitmqctl -n ${node.name} ${args.join(" ")} failed: ${failure.stderr || failure.stdout || failure.message}`)
    }
  }

  const logTail = (node: ClusterNode, lines = 30) => {
    const file = join(nodeDir(node), "log", `${node.name}.log`)
    const output = running.find((r) => r.node === node)?.log
    const read = (path: string | undefined) => {
      try {
        return path === undefined ? "" : readFileSync(path, "utf8").split("\n").slice(-lines).join("\n")
      } catch {
        return ""
      }
    }
    return `${read(output)}\n${read(file)}`
  }

  const boot = async (node: ClusterNode): Promise<void> => {
    const own = nodeDir(node)
    mkdirSync(join(own, "log"), { recursive: true })
    mkdirSync(join(own, "mnesia"), { recursive: true })
    writeFileSync(join(own, "rabbitmq.conf"), `listeners.tcp.1 = 127.0.0.1:${node.amqpPort}\n`)
    writeFileSync(join(own, "enabled_plugins"), "[].\n")
    const log = join(own, "server.out")
    const fd = openSync(log, "a")
    // Its own process group, so `stop` reaches the VM and its helpers too.
    const child = spawn(join(binDir, "rabbitmq-server"), [], { env: nodeEnv(node), stdio: ["ignore", fd, fd], detached: true })
    closeSync(fd)
    children.push(child)
    const exited = new Promise<number | null>((resolve) => {
      child.once("exit", (code) => resolve(code))
      child.once("error", () => resolve(null))
    })
    if (child.pid !== undefined) appendFileSync(join(dir, "groups"), `${child.pid}\n`)
    running.push({ node, child, exited, log })
    // `wait` follows the pid file and then the boot; a node that dies on the way fails at once.
    await Promise.race([
      ctl(node, "wait", "--timeout", String(Math.ceil(bootTimeoutMs / 1000)), join(own, "node.pid")),
      exited.then((code) => {
        throw new Error(`node ${node.name} exited (${code}) while booting:\n${logTail(node)}`)
      })
    ])
  }

  const start = async (): Promise<ClusterTimings> => {
    ctlPortMin = await freePort()
    for (let i = 1; i <= options.size; i++) {
      const amqpPort = await freePort()
      const distPort = await freePort()
      nodes.push({
        name: `rabbit-${prefix}${i}-${runId}@localhost`,
        amqpPort,
        distPort,
        url: (vhost = "/") => `amqp://guest:guest@127.0.0.1:${amqpPort}/${encodeURIComponent(vhost)}`
      })
    }
    mkdirSync(home, { recursive: true })
    writeFileSync(join(home, ".erlang.cookie"), `CLUSTERTEST${runId.toUpperCase()}`)
    // Erlang refuses a cookie file others can read.
    chmodSync(join(home, ".erlang.cookie"), 0o400)
    writeFileSync(join(dir, "rabbitmq-env.conf"), "")
    watchdog = spawn("/bin/sh", ["-c", watchdogScript, "cluster-watchdog", String(process.pid), dir], { stdio: "ignore", detached: true })
    watchdog.unref()

    const started = Date.now()
    await Promise.all(nodes.map(boot))
    const booted = Date.now()
    const [seed, ...rest] = nodes
    // Each CLI call starts an Erlang VM (seconds on a busy machine), so the nodes stop and start
    // their app together; the joins themselves go one at a time, each seeing the one before.
    await Promise.all(rest.map((node) => ctl(node, "stop_app")))
    for (const node of rest) await ctl(node, "join_cluster", seed!.name)
    await Promise.all(rest.map((node) => ctl(node, "start_app")))
    const status = await ctl(seed!, "cluster_status", "--formatter", "json")
    const runningNodes = (JSON.parse(status) as { running_nodes: ReadonlyArray<string> }).running_nodes
    for (const node of nodes) {
      if (!runningNodes.includes(node.name)) throw new Error(`${node.name} is not running in the cluster: ${status}`)
    }
    return { bootMs: booted - started, joinMs: Date.now() - booted }
  }

  const leader = async (via: ClusterNode, queue: string, vhost = "/") => {
    const out = await ctl(via, "list_queues", "-p", vhost, "--no-table-headers", "name", "leader")
    for (const line of out.split("\n")) {
      const [name, node] = line.trim().split(/\s+/)
      if (name === queue) return nodes.find((n) => n.name === node)
    }
    return undefined
  }

  const connectedTo = async (via: ClusterNode, connectionName: string) => {
    const out = await ctl(via, "list_connections", "--no-table-headers", "pid", "client_properties")
    // A connection's pid names its node: <rabbit-ct1-x@localhost.123.456.0>.
    const names = out.split("\n")
      .filter((line) => line.includes(`{"connection_name","${connectionName}"}`))
      .map((line) => /^<([^@\s]+@[^.\s]+)\./.exec(line.trim())?.[1])
    return nodes.filter((n) => names.includes(n.name))
  }

  const stop = async () => {
    if (stopped) return
    stopped = true
    // SIGTERM makes the start script stop the broker cleanly; whatever is left after the bound is killed.
    for (const r of running) if (r.child.exitCode === null && r.child.signalCode === null) r.child.kill("SIGTERM")
    await within("cluster stop", 30_000, Promise.all(running.map((r) => r.exited))).catch(() => undefined)
    for (const r of running) killGroup(r.child, "SIGKILL")
    await within("cluster kill", 10_000, Promise.all(running.map((r) => r.exited))).catch(() => undefined)
    watchdog?.kill("SIGKILL")
    rmSync(dir, { recursive: true, force: true })
    live.delete(entry)
  }

  return { nodes, start, ctl, leader, connectedTo, logTail, stop }
}
