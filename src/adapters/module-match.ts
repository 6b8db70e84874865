// PEFT's module matching (check_target_module_exists, get_pattern_key), for module keys such as
// "model.layers.3.self_attn.q_proj": which modules an adapter_config.json targets, and each one's
// rank and alpha. shared/reference/formats-and-apis.md §1.3.
import { compilePython } from './peft-config.ts';
import type { PeftConfig } from './peft-config.ts';
import { TARGETS } from '../runtime/llama-graph.ts';

export function isTargeted(c: PeftConfig, key: string): boolean {
  const ex = c.excludeModules;
  if (ex?.kind === 'regex' && ex.pattern.test(key)) return false;
  if (ex?.kind === 'list' && ex.names.some((e) => key === e || key.endsWith(`.${e}`))) return false;
  const tm = c.targetModules;
  if (tm.kind === 'all-linear') return (TARGETS as readonly string[]).some((t) => key.endsWith(`.${t}`));
  if (tm.kind === 'regex') return tm.pattern.test(key);
  if (tm.names.includes(key)) return true; // exact match: no layer filtering
  const found = tm.names.some((t) => key.endsWith(`.${t}`));
  if (!found || !c.layersToTransform) return found;
  let idx: number | null = null;
  if (!c.layersPattern) {
    const m = /^.*?\.[^.]*\.(\d+)\./.exec(key);
    idx = m ? Number(m[1]) : null;
  } else {
    for (const p of c.layersPattern) {
      const m = compilePython(`^.*?\\.${p}\\.(\\d+)\\.`)?.exec(key);
      if (m) { idx = Number(m[1]); break; }
    }
  }
  return idx !== null && c.layersToTransform.includes(idx);
}

// First key in JSON order with re.match(rf"(.*\.)?({k})$", key).
function patternValue(patterns: [string, number][], key: string): number | undefined {
  for (const [k, v] of patterns) if (compilePython(`^(.*\\.)?(${k})$`)?.test(key)) return v;
  return undefined;
}

// The rank, alpha and scale of one module: s = alpha/r, or alpha/√r with use_rslora.
export function moduleScaling(c: PeftConfig, key: string): { rank: number; alpha: number; scale: number } {
  const rank = patternValue(c.rankPattern, key) ?? c.r;
  const alpha = patternValue(c.alphaPattern, key) ?? c.loraAlpha;
  return { rank, alpha, scale: c.useRslora ? alpha / Math.sqrt(rank) : alpha / rank };
}
