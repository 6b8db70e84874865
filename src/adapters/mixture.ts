// Per-request adapter mixtures (issue 14): a row whose delta is Σ wᵢ·sᵢ·Bᵢ·Aᵢ, served unmerged in
// the same batched step as base rows, single-adapter rows and other mixtures. A mixture is one more
// PreparedAdapter: per target, the inputs' factors concatenated along the rank axis (PEFT's `cat`,
// merge/combine-cat.ts: exact, rank Σ rᵢ), the weight folded into A. The engine thread composes it
// from the inputs' prepared factors (host-cache.ts) and caches it under its own version, so every
// row on the same blend shares one arena slot.
import { createHash } from 'node:crypto';
import type { AdapterRef } from '../runtime/generate-request.ts';
import type { PreparedAdapter, PreparedTarget } from '../runtime/lora-arena.ts';
import type { ModelConfig } from '../runtime/model-config.ts';
import { TARGETS, targetShape } from '../runtime/model-targets.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { catFactors } from '../merge/combine-cat.ts';

// |weight| of one adapter in a mixture: beyond this a blend is almost surely a mistake (a delta
// amplified past anything it was trained at) and its activations leave float32's comfortable range.
export const MAX_MIXTURE_WEIGHT = 8;

export interface MixturePart { ref: AdapterRef; weight: number }

// The reference a mixture's rows carry: its name in the canonical "a*0.7+b*0.3" form, and a version
// hashed from its parts' versions and weights (so a replaced input makes a new blend).
export function mixtureRef(parts: readonly MixturePart[]): AdapterRef {
  const name = parts.map((p) => `${p.ref.name}*${p.weight}`).join('+');
  const hash = createHash('sha256');
  for (const p of parts) hash.update(`${p.ref.version}*${p.weight};`);
  return { name, version: `mix-${hash.digest('hex').slice(0, 16)}`, dir: '', mixture: parts.map((p) => ({ ref: p.ref, weight: p.weight })) };
}

// The inputs' prepared factors (b = s·B) → the blend's: A' = [w₁A₁; w₂A₂; …], b' = [b₁ | b₂ | …].
export function mixPrepared(version: string, parts: readonly { adapter: PreparedAdapter; weight: number; name: string }[], cfg: ModelConfig): PreparedAdapter {
  for (const p of parts) {
    if (p.adapter.useDora) throw new LoraserveError('invalid_request', `adapter '${p.name}' is a DoRA adapter: DoRA's magnitude does not blend linearly, so it cannot be part of a mixture`, { param: 'adapters' });
    if (p.adapter.targets.some((t) => t.delta)) throw new LoraserveError('invalid_request', `adapter '${p.name}' is kept as merged weights only: it has no factors to blend`, { param: 'adapters' });
  }
  const keys = new Map<string, { layer: number; target: PreparedTarget['target'] }>();
  for (const p of parts) for (const t of p.adapter.targets) keys.set(`${t.layer}.${t.target}`, { layer: t.layer, target: t.target });
  const targets: PreparedTarget[] = [];
  for (const [key, { layer, target }] of keys) {
    const [out, inDim] = targetShape(cfg, target);
    const inputs = parts.map((p) => {
      const t = p.adapter.targets.find((x) => x.layer === layer && x.target === target);
      return t ? { a: t.a, b: t.b, rank: t.rank, scale: 1, in: inDim, out } : null; // b carries s already
    });
    const rank = inputs.reduce((s, t) => s + (t?.rank ?? 0), 0);
    const r = catFactors(inputs, parts.map((p) => p.weight), rank, key);
    targets.push({ layer, target, rank, a: r.a, b: r.b, g: null });
  }
  targets.sort((x, y) => x.layer - y.layer || TARGETS.indexOf(x.target) - TARGETS.indexOf(y.target));
  const bytes = targets.reduce((s, t) => s + t.a.byteLength + t.b.byteLength, 0);
  return { version, rank: Math.max(0, ...targets.map((t) => t.rank)), useDora: false, targets, bytes };
}
