import { Effect, Metric } from "effect"

/** Every registered metric in the Prometheus text exposition format (version 0.0.4). */
export const renderPrometheus: Effect.Effect<string> = Effect.map(Metric.snapshot, (snapshots) => {
  const families = new Map<string, { type: string; help: string | undefined; lines: Array<string> }>()
  const family = (name: string, type: string, help: string | undefined) => {
    let f = families.get(name)
    if (f === undefined) {
      f = { type, help, lines: [] }
      families.set(name, f)
    }
    return f
  }
  for (const s of snapshots) {
    const name = sanitize(s.id)
    const attrs = s.attributes ?? {}
    switch (s.type) {
      case "Counter":
        family(name, "counter", s.description).lines.push(`${name}${labels(attrs)} ${num(s.state.count)}`)
        break
      case "Gauge":
        family(name, "gauge", s.description).lines.push(`${name}${labels(attrs)} ${num(s.state.value)}`)
        break
      case "Histogram": {
        const f = family(name, "histogram", s.description)
        for (const [boundary, count] of s.state.buckets) {
          f.lines.push(`${name}_bucket${labels({ ...attrs, le: String(boundary) })} ${count}`)
        }
        f.lines.push(`${name}_bucket${labels({ ...attrs, le: "+Inf" })} ${s.state.count}`)
        f.lines.push(`${name}_sum${labels(attrs)} ${num(s.state.sum)}`)
        f.lines.push(`${name}_count${labels(attrs)} ${s.state.count}`)
        break
      }
      case "Frequency": {
        const f = family(name, "counter", s.description)
        for (const [key, count] of s.state.occurrences) f.lines.push(`${name}${labels({ ...attrs, key })} ${count}`)
        break
      }
      case "Summary": {
        const f = family(name, "summary", s.description)
        for (const [q, value] of s.state.quantiles) {
          if (value !== undefined) f.lines.push(`${name}${labels({ ...attrs, quantile: String(q) })} ${num(value)}`)
        }
        f.lines.push(`${name}_sum${labels(attrs)} ${num(s.state.sum)}`)
        f.lines.push(`${name}_count${labels(attrs)} ${s.state.count}`)
        break
      }
    }
  }
  let out = ""
  for (const [name, f] of [...families.entries()].sort(([a], [b]) => (a < b ? -1 : 1))) {
    if (f.help !== undefined) out += `# HELP ${name} ${f.help.replace(/\\/g, "\\\\").replace(/\n/g, "\\n")}\n`
    out += `# TYPE ${name} ${f.type}\n`
    out += f.lines.sort().join("\n") + "\n"
  }
  return out
})

const sanitize = (name: string) => name.replace(/[^a-zA-Z0-9_:]/g, "_").replace(/^([^a-zA-Z_:])/, "_$1")

const num = (n: number | bigint) => (typeof n === "bigint" ? n.toString() : Number.isFinite(n) ? String(n) : n > 0 ? "+Inf" : n < 0 ? "-Inf" : "NaN")

const labels = (attrs: Readonly<Record<string, string>>) => {
  const entries = Object.entries(attrs).sort(([a], [b]) => (a < b ? -1 : 1))
  if (entries.length === 0) return ""
  const escape = (v: string) => v.replace(/\\/g, "\\\\").replace(/"/g, '\\"').replace(/\n/g, "\\n")
  return `{${entries.map(([k, v]) => `${sanitize(k)}="${escape(v)}"`).join(",")}}`
}
