import { activeWarehouses, type Command } from "./commands.ts"

/**
 * A small reference model of SPEC 4, written independently of the handlers: plain maps,
 * no stores, no effects. The property test checks the consumer against it after every step.
 */

export interface Row {
  total: number
  available: number
  reserved: number
  damaged: number
  archived: boolean
}

export type Status = "active" | "confirmed" | "cancelled" | "expired" | "fulfilled"

export interface Item {
  readonly variant: string
  readonly warehouse: string
  readonly quantity: number
}

export interface Res {
  status: Status
  readonly items: ReadonlyArray<Item>
  readonly expiresAt: number | null
}

/** What the consumer must answer: an outcome tag and, for failures, the error's tag. */
export interface Expected {
  readonly tag: "Ack" | "Duplicate" | "Retry" | "DeadLetter"
  readonly error?: string
}

const ack: Expected = { tag: "Ack" }
const dead = (error: string): Expected => ({ tag: "DeadLetter", error })
const live = (r: Res) => r.status === "active" || r.status === "confirmed"

export class Model {
  readonly rows = new Map<string, Row>()
  /** Per order, newest first. */
  readonly reservations = new Map<string, Array<Res>>()
  readonly tracked = new Map<string, boolean>()
  now = 0

  static key(...parts: ReadonlyArray<string>) {
    return parts.join("|")
  }

  row(org: string, variant: string, warehouse: string): Row | undefined {
    return this.rows.get(Model.key(org, variant, warehouse))
  }

  private ensureRow(org: string, variant: string, warehouse: string): Row {
    const k = Model.key(org, variant, warehouse)
    let row = this.rows.get(k)
    if (row === undefined) {
      row = { total: 0, available: 0, reserved: 0, damaged: 0, archived: false }
      this.rows.set(k, row)
    }
    return row
  }

  private rowsOf(org: string, variant: string): Array<[string, Row]> {
    const prefix = Model.key(org, variant, "")
    return [...this.rows.entries()].filter(([k]) => k.startsWith(prefix))
  }

  private find(org: string, order: string): Res | undefined {
    const all = this.reservations.get(Model.key(org, order)) ?? []
    return all.find(live) ?? all[0]
  }

  /** The reservation an order event would act on (for building ship lines). */
  current(org: string, order: string): Res | undefined {
    return this.find(org, order)
  }

  private push(org: string, order: string, res: Res) {
    const k = Model.key(org, order)
    this.reservations.set(k, [res, ...(this.reservations.get(k) ?? [])])
  }

  private initialize(org: string, variant: string) {
    for (const w of activeWarehouses) {
      const row = this.row(org, variant, w)
      if (row === undefined) this.ensureRow(org, variant, w)
      else if (row.archived && row.total === 0) row.archived = false
    }
  }

  private hasStock(org: string, variants: ReadonlyArray<string>) {
    return variants.some((v) => this.rowsOf(org, v).some(([, r]) => r.total !== 0 || r.available !== 0 || r.reserved !== 0 || r.damaged !== 0))
  }

  /**
   * Chooses a warehouse per variant (summed): the preferred one if it can serve all, else the
   * active one with most available (lowest id on ties). Undefined when any cannot be served.
   */
  private choose(org: string, demands: ReadonlyArray<{ variant: string; quantity: number; preferred: string | null }>) {
    const byVariant = new Map<string, { variant: string; quantity: number; preferred: string | null }>()
    for (const d of demands) {
      const seen = byVariant.get(d.variant)
      byVariant.set(d.variant, { variant: d.variant, quantity: (seen?.quantity ?? 0) + d.quantity, preferred: seen?.preferred ?? d.preferred })
    }
    const items: Array<Item> = []
    for (const d of [...byVariant.values()].sort((a, b) => (a.variant < b.variant ? -1 : 1))) {
      const candidates = activeWarehouses
        .map((w): readonly [string, Row | undefined] => [w, this.row(org, d.variant, w)])
        .filter((c): c is readonly [string, Row] => c[1] !== undefined && !c[1].archived)
      const preferred = candidates.find(([w, r]) => w === d.preferred && r.available >= d.quantity)
      let best = preferred
      if (best === undefined) {
        for (const c of candidates) if (c[1].available >= d.quantity && (best === undefined || c[1].available > best[1].available)) best = c
      }
      if (best === undefined) return undefined
      items.push({ variant: d.variant, warehouse: best[0], quantity: d.quantity })
    }
    return items
  }

  private reserve(org: string, items: ReadonlyArray<Item>) {
    for (const i of items) {
      const row = this.row(org, i.variant, i.warehouse)!
      row.available -= i.quantity
      row.reserved += i.quantity
    }
  }

  private release(org: string, res: Res, to: Status) {
    for (const i of res.items) {
      const row = this.row(org, i.variant, i.warehouse)!
      row.available += i.quantity
      row.reserved -= i.quantity
    }
    res.status = to
  }

  /** Lines a `Ship` command sends, given what the order holds now. */
  shipLines(org: string, order: string, part: number): ReadonlyArray<Item> {
    const res = this.find(org, order)
    const first = res?.items[0]
    if (res === undefined || first === undefined) return [{ variant: "v1", warehouse: "w1", quantity: 1 }]
    if (part === 0) return res.items
    if (part === 1) return [{ ...first, quantity: Math.ceil(first.quantity / 2) }]
    return [{ ...first, quantity: first.quantity + 1 }]
  }

  /** Applies one event-command; returns what the consumer must answer. */
  apply(command: Command, shipLines: ReadonlyArray<Item>): Expected {
    switch (command._tag) {
      case "Stock": {
        const row = this.ensureRow(command.org, command.variant, command.warehouse)
        row.available += command.quantity
        row.total += command.quantity
        row.archived = false
        return ack
      }
      case "VariantCreated": {
        this.tracked.set(Model.key(command.org, command.variant), true)
        this.initialize(command.org, command.variant)
        return ack
      }
      case "VariantUpdated": {
        const k = Model.key(command.org, command.variant)
        const was = this.tracked.get(k) ?? !command.track
        if (!was && command.track) this.initialize(command.org, command.variant)
        if (was && !command.track && this.hasStock(command.org, [command.variant])) return dead("StockNotZero")
        this.tracked.set(k, command.track)
        return ack
      }
      case "VariantDeleted":
      case "ProductDeleted": {
        const vs = command._tag === "VariantDeleted" ? [command.variant] : [...new Set(command.variants)]
        if (this.hasStock(command.org, vs)) return dead("StockNotZero")
        for (const v of vs) for (const [, r] of this.rowsOf(command.org, v)) r.archived = true
        return ack
      }
      case "Place": {
        if ((this.reservations.get(Model.key(command.org, command.order)) ?? []).length > 0) return ack
        const items = this.choose(command.org, command.lines)
        if (items === undefined) return dead("InsufficientStock")
        this.reserve(command.org, items)
        this.push(command.org, command.order, { status: "active", items, expiresAt: this.now + command.ttl * 60_000 })
        return ack
      }
      case "Confirm": {
        const res = this.find(command.org, command.order)
        if (res === undefined) return { tag: "Retry", error: "ReservationNotFound" }
        if (res.status === "active") res.status = "confirmed"
        if (res.status === "expired") {
          const items = this.choose(command.org, res.items.map((i) => ({ ...i, preferred: i.warehouse })))
          if (items === undefined) return dead("InsufficientStock")
          this.reserve(command.org, items)
          this.push(command.org, command.order, { status: "confirmed", items, expiresAt: null })
        }
        return ack
      }
      case "Cancel": {
        const res = this.find(command.org, command.order)
        if (res === undefined) {
          this.push(command.org, command.order, { status: "cancelled", items: [], expiresAt: null })
          return ack
        }
        if (live(res)) this.release(command.org, res, "cancelled")
        return ack
      }
      case "Ship": {
        let res = this.find(command.org, command.order)
        if (res === undefined) return { tag: "Retry", error: "ReservationNotFound" }
        if (res.status === "fulfilled") return ack
        if (res.status === "cancelled") return dead("ValidationError")
        let fresh: Res | undefined
        if (res.status === "expired") {
          const items = this.choose(command.org, shipLines.map((l) => ({ ...l, preferred: l.warehouse })))
          if (items === undefined) return dead("InsufficientStock")
          fresh = { status: "confirmed", items, expiresAt: null }
          res = fresh
        }
        const held = new Map<string, number>()
        for (const i of res.items) held.set(Model.key(i.variant, i.warehouse), (held.get(Model.key(i.variant, i.warehouse)) ?? 0) + i.quantity)
        const shipped = new Map<string, number>()
        for (const l of shipLines) shipped.set(Model.key(l.variant, l.warehouse), (shipped.get(Model.key(l.variant, l.warehouse)) ?? 0) + l.quantity)
        for (const [k, q] of shipped) if (q > (held.get(k) ?? 0)) return dead("ValidationError")
        if (fresh !== undefined) {
          this.reserve(command.org, fresh.items)
          this.push(command.org, command.order, fresh)
        }
        for (const [k, q] of held) {
          const [variant, warehouse] = k.split("|") as [string, string]
          const row = this.row(command.org, variant, warehouse)!
          const out = shipped.get(k) ?? 0
          row.reserved -= q
          row.total -= out
          row.available += q - out
        }
        res.status = "fulfilled"
        return ack
      }
      case "Return": {
        for (const l of command.lines) {
          const row = this.ensureRow(command.org, l.variant, l.warehouse)
          if (l.good) row.available += l.quantity
          else row.damaged += l.quantity
          row.total += l.quantity
          row.archived = false
        }
        return ack
      }
      case "Advance":
      case "Redeliver":
        throw new Error(`${command._tag} is not an event`)
    }
  }

  advance(minutes: number) {
    this.now += minutes * 60_000
    for (const [k, list] of this.reservations) {
      const org = k.split("|")[0]!
      for (const res of list) {
        if (res.status === "active" && res.expiresAt !== null && res.expiresAt <= this.now) this.release(org, res, "expired")
      }
    }
  }
}
