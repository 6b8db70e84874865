// PEFT's module matching (check_target_module_exists, get_pattern_key), for module keys such as
// "model.layers.3.self_attn.q_proj": which modules an adapter_config.json targets, and each one's
// rank and alpha. shared/reference/formats-and-apis.md §1.3. Every regex runs on RE2 (python-regex.ts).
import { compilePeft, compilePython } from './python-regex.ts';
import type { Compiled, PeftUse, PyRegex } from './python-regex.ts';
import { loraScale } from './peft-config.ts';
import type { PeftConfig } from './peft-config.ts';
import { TARGETS } from '../runtime/model-targets.ts';

export function isTargeted(c: PeftConfig, key: string): boolean {
  const ex = c.excludeModules;
  if (ex?.kind === 'regex' && ex.pattern.fullmatch(key)) return false;
  if (ex?.kind === 'list' && ex.names.some((e) => key === e || key.endsWith(`.${e}`))) return false;
  const tm = c.targetModules;
  if (tm.kind === 'all-linear') return (TARGETS as readonly string[]).some((t) => key.endsWith(`.${t}`));
  if (tm.kind === 'regex') return tm.pattern.fullmatch(key);
  if (tm.names.includes(key)) return true; // exact match: no layer filtering
  const found = tm.names.some((t) => key.endsWith(`.${t}`));
  if (!found || !c.layersToTransform) return found;
  const idx = layerIndex(c.layersPattern, key);
  return idx !== null && c.layersToTransform.includes(idx);
}

// re.match(r".*\.[^.]*\.(\d+)\.", key): PEFT's layer index when layers_pattern is empty
const ANY_LAYERS = compiled(compilePython(String.raw`.*\.[^.]*\.(\d+)\.`));

// The layer index PEFT reads from key: group 1 of the first layers_pattern regex that matches.
function layerIndex(layersPattern: string[] | null, key: string): number | null {
  for (const re of layersPattern ? layersPattern.map((p) => peft(p, 'layers')) : [ANY_LAYERS]) {
    const m = re?.exec(key);
    if (m) return Number(m[1]);
  }
  return null;
}

// First key in JSON order with re.match(rf"(.*\.)?({k})$", key).
function patternValue(patterns: [string, number][], key: string): number | undefined {
  for (const [k, v] of patterns) if (peft(k, 'pattern-key')?.match(key)) return v;
  return undefined;
}

// The rank, alpha and scale of one module: s = alpha/r, or alpha/√r with use_rslora.
export function moduleScaling(c: PeftConfig, key: string): { rank: number; alpha: number; scale: number } {
  const rank = patternValue(c.rankPattern, key) ?? c.r;
  const alpha = patternValue(c.alphaPattern, key) ?? c.loraAlpha;
  return { rank, alpha, scale: loraScale(alpha, rank, c.useRslora) };
}

// A pattern from a parsed config (parsePeftConfig refused any that does not compile; cached).
function peft(pattern: string, use: PeftUse): PyRegex | null {
  const c = compilePeft(pattern, use);
  return c.ok ? c.re : null;
}

function compiled(c: Compiled): PyRegex {
  if (!c.ok) throw new Error(`module-match: ${c.reason}`);
  return c.re;
}
