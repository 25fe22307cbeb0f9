import { execFileSync } from "node:child_process"
import net from "node:net"

/**
 * A network namespace of the test's own, whose processes reach PostgreSQL and RabbitMQ over two
 * links of their own (veth pairs), and a link the test can cut without a word: its host end goes
 * down, so packets either way are dropped, with no reset and no error, as when a switch, a
 * firewall or a cable between a replica and its database dies. Restored, the link carries again,
 * and each side finds out what the other closed meanwhile (a reset on its next packet).
 *
 * The services listen on 127.0.0.1 only, which a namespace cannot reach; so each link's host end
 * carries a plain TCP relay to the service. The relay's side towards the service is never cut:
 * PostgreSQL sees a session that stays open and silent, and ends it only by its own timeouts.
 *
 * Needs root (`ip netns`, veth), as tests here run; `available()` says whether this process may.
 */

const ip = (...args: Array<string>) => execFileSync("ip", args, { stdio: ["ignore", "pipe", "pipe"] }).toString()

export const available = (): boolean => process.getuid?.() === 0

interface Link {
  readonly host: string
  readonly inside: string
  readonly device: string
}

export interface Partition {
  /** The command line that runs `command` inside the namespace (`ip netns exec`, which execs it: same pid). */
  readonly inside: (command: string, args: ReadonlyArray<string>) => readonly [string, ReadonlyArray<string>]
  /** Where a process inside reaches PostgreSQL's port 5432 (through the link the test cuts). */
  readonly databaseHost: string
  /** Where a process inside reaches RabbitMQ's port 5672 (never cut). */
  readonly brokerHost: string
  /** Where the test reaches a port a process inside listens on (over the broker's link). */
  readonly insideHost: string
  readonly cutDatabase: () => void
  readonly restoreDatabase: () => void
  readonly close: () => Promise<void>
}

/** Forwards every connection to `listen` on to 127.0.0.1:`port`; either side closing closes both. */
const relay = (listen: string, port: number) =>
  new Promise<{ readonly close: () => Promise<void> }>((resolve, reject) => {
    const sockets = new Set<net.Socket>()
    const server = net.createServer((client) => {
      const upstream = net.connect(port, "127.0.0.1")
      for (const [socket, other] of [[client, upstream], [upstream, client]] as const) {
        sockets.add(socket)
        socket.pipe(other)
        socket.on("error", () => other.destroy())
        socket.on("close", () => {
          sockets.delete(socket)
          other.destroy()
        })
      }
    })
    server.once("error", reject)
    server.listen(port, listen, () =>
      resolve({
        // A server closes once its connections have: they are ended first.
        close: () =>
          new Promise((done) => {
            server.close(() => done())
            for (const socket of sockets) socket.destroy()
          })
      }))
  })

export const makePartition = async (): Promise<Partition> => {
  // One namespace and two /30 networks per test process, named after its pid (device names are
  // at most 15 characters).
  const n = process.pid % 100_000
  const namespace = `invcut${n}`
  const links: Array<Link> = [0, 1].map((k) => {
    const octet = (n % 120) * 2 + k + 2
    return { host: `10.213.${octet}.1`, inside: `10.213.${octet}.2`, device: `icut${n}${k}` }
  })
  const [database, broker] = links as [Link, Link]
  const servers: Array<{ readonly close: () => Promise<void> }> = []
  const close = async () => {
    for (const server of servers) await server.close()
    for (const link of links) {
      try {
        ip("link", "del", `${link.device}h`)
      } catch {
        // Gone with the namespace, or never made.
      }
    }
    try {
      ip("netns", "del", namespace)
    } catch {
      // Never made.
    }
  }
  try {
    ip("netns", "add", namespace)
    ip("-n", namespace, "link", "set", "lo", "up")
    for (const link of links) {
      ip("link", "add", `${link.device}h`, "type", "veth", "peer", "name", `${link.device}n`)
      ip("link", "set", `${link.device}n`, "netns", namespace)
      ip("addr", "add", `${link.host}/30`, "dev", `${link.device}h`)
      ip("link", "set", `${link.device}h`, "up")
      ip("-n", namespace, "addr", "add", `${link.inside}/30`, "dev", `${link.device}n`)
      ip("-n", namespace, "link", "set", `${link.device}n`, "up")
    }
    servers.push(await relay(database.host, 5432), await relay(broker.host, 5672))
  } catch (error) {
    await close()
    throw error
  }
  return {
    inside: (command, args) => ["ip", ["netns", "exec", namespace, command, ...args]],
    databaseHost: database.host,
    brokerHost: broker.host,
    insideHost: broker.inside,
    cutDatabase: () => ip("link", "set", `${database.device}h`, "down"),
    // Up again, the host end gets its address's route back by itself.
    restoreDatabase: () => ip("link", "set", `${database.device}h`, "up"),
    close
  }
}
