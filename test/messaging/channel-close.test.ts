import amqp from "amqplib"
import { afterAll, beforeAll, describe, expect, it } from "vitest"
import { closeChannel } from "../../src/messaging/connection.ts"
import { createVhost, deleteVhost, uniqueVhost, vhostUrl } from "../support/rabbit.ts"

/**
 * A channel whose connection dies while it waits for the broker's close-ok: amqplib's `close()`
 * never settles then, and a finalizer awaiting it stalled a replica's shutdown for good (found by
 * test/messaging/frozen-replica.test.ts). `closeChannel` settles once the channel is closed,
 * however that happens.
 */

const vhost = uniqueVhost("channel_close")

beforeAll(() => createVhost(vhost))
afterAll(() => deleteVhost(vhost))

/** Whether `promise` settles within `ms`. */
const settlesWithin = (promise: Promise<unknown>, ms: number) =>
  Promise.race([promise.then(() => true, () => true), new Promise<boolean>((r) => setTimeout(() => r(false), ms))])

/** A channel, and a way to cut its connection's socket right after a close was asked (before any close-ok can arrive). */
const channelToCut = async () => {
  const connection = await amqp.connect(vhostUrl(vhost))
  connection.on("error", () => undefined)
  const channel = await connection.createChannel()
  channel.on("error", () => undefined)
  const socket = (connection as unknown as { readonly connection: { readonly stream: { destroy(error?: Error): void } } }).connection.stream
  return { connection, channel, cut: () => socket.destroy(new Error("connection reset (test)")) }
}

describe("closing a channel", () => {
  it("settles when the connection dies while the close waits for the broker", async () => {
    // The premise: amqplib's own close() stays pending in that case.
    const plain = await channelToCut()
    const pending = plain.channel.close()
    plain.cut()
    expect(await settlesWithin(pending, 1_000)).toBe(false)

    const ours = await channelToCut()
    const closing = closeChannel(ours.channel)
    ours.cut()
    expect(await settlesWithin(closing, 1_000)).toBe(true)
  })

  it("closes an open channel on a live connection, and settles for one already closed", async () => {
    const connection = await amqp.connect(vhostUrl(vhost))
    const channel = await connection.createChannel()
    let closed = false
    channel.on("close", () => (closed = true))
    expect(await settlesWithin(closeChannel(channel), 2_000)).toBe(true)
    expect(closed).toBe(true)
    expect(await settlesWithin(closeChannel(channel), 2_000)).toBe(true)
    await connection.close()
  })
})
