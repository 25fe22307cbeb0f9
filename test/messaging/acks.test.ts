import amqp from "amqplib"
import { afterAll, beforeAll, expect, it } from "vitest"
import { deliveryChannel, type DeliveryChannel, type InboundMessage, settle } from "../../src/messaging/inbound.ts"
import { createVhost, deleteVhost, vhostUrl, uniqueVhost } from "../support/rabbit.ts"

/**
 * Ack coalescing (issue 8) against the real broker: acks held to the end of the turn go out as
 * one `multiple` ack when every earlier delivery is settled, and one by one otherwise, so a
 * `multiple` ack never covers a message still being worked on. The proof is what the broker
 * gives back when the channel closes: whatever it still counted as unacknowledged.
 */

const vhost = uniqueVhost("acks")
let connection: amqp.ChannelModel

beforeAll(async () => {
  await createVhost(vhost)
  connection = await amqp.connect(vhostUrl(vhost))
})

afterAll(async () => {
  await connection?.close().catch(() => undefined)
  await deleteVhost(vhost)
})

const turn = () => new Promise((resolve) => setImmediate(resolve))

/** A queue holding `n` messages, consumed on a fresh channel; resolves once all n arrived. */
const consumeN = async (n: number) => {
  const queue = `acks_${Math.random().toString(36).slice(2, 8)}`
  const setup = await connection.createChannel()
  await setup.assertQueue(queue, { durable: false })
  for (let i = 0; i < n; i++) setup.sendToQueue(queue, Buffer.from(String(i)))
  await setup.close()

  const channel = await connection.createChannel()
  await channel.prefetch(n)
  const frames: Array<{ tag: number; multiple: boolean }> = []
  const ack = channel.ack.bind(channel)
  channel.ack = (message, allUpTo) => {
    ack(message, allUpTo)
    frames.push({ tag: message.fields.deliveryTag, multiple: allUpTo === true })
  }
  const via: DeliveryChannel = deliveryChannel(channel)
  const messages: Array<InboundMessage> = []
  await new Promise<void>((resolve) => {
    void channel.consume(queue, (raw) => {
      if (raw === null) return
      via.received(raw)
      messages.push({
        delivery: { body: raw.content, messageId: undefined, deliveryCount: 1, queue, accepts: [] },
        exchange: "",
        routingKey: queue,
        headers: {},
        properties: raw.properties,
        deliveryTag: raw.fields.deliveryTag,
        redelivered: raw.fields.redelivered,
        via,
        raw
      })
      if (messages.length === n) resolve()
    })
  })
  /** Closes the channel: the broker requeues what it still counts as unacknowledged. */
  const returned = async () => {
    await channel.close()
    const check = await connection.createChannel()
    const { messageCount } = await check.checkQueue(queue)
    const bodies: Array<string> = []
    for (let i = 0; i < messageCount; i++) {
      const got = await check.get(queue, { noAck: true })
      if (got) bodies.push(got.content.toString())
    }
    await check.close()
    return bodies.sort((a, b) => Number(a) - Number(b))
  }
  return { messages, frames, returned }
}

it("acks settled in one turn go out as a single multiple ack", async () => {
  const { messages, frames, returned } = await consumeN(50)
  for (const m of [...messages].reverse()) expect(settle(m, "ack")).toBe(true)
  expect(frames).toEqual([]) // held until the end of the turn
  await turn()
  expect(frames).toEqual([{ tag: messages[49]!.deliveryTag, multiple: true }])
  expect(await returned()).toEqual([])
})

it("a message still being worked on is never covered: the acks after it go one by one", async () => {
  const { messages, frames, returned } = await consumeN(20)
  for (const m of messages.slice(1)) settle(m, "ack")
  await turn()
  expect(frames.length).toBe(19)
  expect(frames.every((f) => !f.multiple)).toBe(true)
  expect(await returned()).toEqual(["0"])
})

it("the oldest one settling later releases a multiple ack up to the next outstanding one", async () => {
  const { messages, frames, returned } = await consumeN(10)
  // 5 is still outstanding; 3 was requeued (a nack, sent at once).
  for (const i of [1, 2, 4, 6, 7, 8, 9]) settle(messages[i]!, "ack")
  settle(messages[3]!, "requeue")
  await turn()
  frames.length = 0
  settle(messages[0]!, "ack")
  await turn()
  // 0 is the only held ack; 1..4 are settled already, so one multiple ack for 0 covers nothing else.
  expect(frames).toEqual([{ tag: messages[0]!.deliveryTag, multiple: true }])
  expect(await returned()).toEqual(["3", "5"])
})

it("held acks are sent by flush, and dropped without error when the channel closed first", async () => {
  const first = await consumeN(5)
  for (const m of first.messages) settle(m, "ack")
  first.messages[0]!.via.flush()
  expect(first.frames).toEqual([{ tag: first.messages[4]!.deliveryTag, multiple: true }])
  expect(await first.returned()).toEqual([])

  const second = await consumeN(5)
  for (const m of second.messages) settle(m, "ack")
  expect(await second.returned()).toEqual(["0", "1", "2", "3", "4"])
  await turn() // the scheduled flush finds the channel closed and sends nothing
  expect(second.frames).toEqual([])
})
