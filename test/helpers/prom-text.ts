// Reads the Prometheus text exposition format as a scraper does (the GIE endpoint picker parses it
// with expfmt): per metric family its TYPE, HELP and samples (labels, value).
export interface Sample { name: string; labels: Record<string, string>; value: number }
export interface Family { name: string; type: string | null; help: string | null; samples: Sample[] }

const SAMPLE = /^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+\d+)?$/;
const LABEL = /([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"/g;

export function parsePromText(text: string): Map<string, Family> {
  const families = new Map<string, Family>();
  const family = (name: string): Family => {
    let f = families.get(name);
    if (!f) { f = { name, type: null, help: null, samples: [] }; families.set(name, f); }
    return f;
  };
  for (const line of text.split('\n')) {
    if (!line.trim()) continue;
    const meta = /^# (TYPE|HELP) (\S+) ?(.*)$/.exec(line);
    if (meta) {
      if (meta[1] === 'TYPE') family(meta[2]).type = meta[3];
      else family(meta[2]).help = meta[3];
      continue;
    }
    if (line.startsWith('#')) continue;
    const m = SAMPLE.exec(line);
    if (!m) throw new Error(`not a sample line: ${line}`);
    const labels: Record<string, string> = {};
    for (const l of (m[2] ?? '').matchAll(LABEL)) labels[l[1]] = l[2].replace(/\\(.)/g, (_s, c: string) => (c === 'n' ? '\n' : c));
    // histogram/summary samples belong to their family (name_bucket, name_sum, name_count)
    const base = families.has(m[1]) ? m[1] : m[1].replace(/_(bucket|sum|count|total|created)$/, '');
    family(families.has(base) ? base : m[1]).samples.push({ name: m[1], labels, value: Number(m[3]) });
  }
  return families;
}
