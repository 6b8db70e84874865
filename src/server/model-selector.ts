// What a request's `model` (and `adapters`) field selects (issue 14):
//   "<base>"                          the base model
//   "<adapter>" | "<base>:<adapter>"  one adapter (SGLang's form too)
//   "a*0.7+b*0.3" | "<base>:a*0.7+…"  a per-request mixture Σ wᵢ·ΔWᵢ (adapters/mixture.ts); also the
//                                     request field `adapters: [{name, weight}]`, with model = the base
//   "auto" | "<base>:auto"            semantic routing: the adapter whose examples are nearest (or base)
//   "auto:mix" | "<base>:auto:mix"    a mixture of the top k adapters, weighted by softmax(score/τ)
// Every refusal names the field: an unknown adapter is a 404 (model_not_found), the rest 400s.
import { invalidField, LoraserveError } from '../runtime/errors.ts';
import { MAX_MIXTURE_WEIGHT } from '../adapters/mixture.ts';

export type Selection =
  | { kind: 'base' }
  | { kind: 'adapter'; name: string }
  | { kind: 'mixture'; parts: { name: string; weight: number }[] }
  | { kind: 'auto'; mix: boolean };

export interface SelectorView {
  modelName: string;
  maxMixture: number;
  has(name: string): boolean; // a registered adapter (in any state: resolveAdapter says why it cannot serve)
}

// "a*0.7": an adapter name and its weight; names may hold ':' and '*' only where the store allows them
const PART = /^(.+)\*([^*]+)$/;

export function selectModel(model: string, adapters: unknown, view: SelectorView): Selection {
  if (adapters !== undefined && adapters !== null) {
    const stripped = model.startsWith(`${view.modelName}:`) ? model.slice(view.modelName.length + 1) : model;
    if (model !== view.modelName && stripped !== '') throw invalidField('adapters', `'adapters' gives a mixture; 'model' must then be the base model (${JSON.stringify(view.modelName)}), got ${JSON.stringify(model)}`);
    return mixture(parseAdaptersField(adapters), view, 'adapters');
  }
  if (model === view.modelName) return { kind: 'base' };
  if (view.has(model)) return { kind: 'adapter', name: model };
  const rest = model.startsWith(`${view.modelName}:`) ? model.slice(view.modelName.length + 1) : model;
  if (rest === 'auto' || rest === 'auto:mix') return { kind: 'auto', mix: rest === 'auto:mix' };
  if (rest !== model && view.has(rest)) return { kind: 'adapter', name: rest };
  if (rest.includes('*')) return mixture(parseMixtureString(rest, view.modelName), view, 'model');
  return { kind: 'adapter', name: rest }; // resolveAdapter answers 404 for a name it does not know
}

function parseAdaptersField(v: unknown): { name: string; weight: number }[] {
  if (!Array.isArray(v)) throw invalidField('adapters', `'adapters' must be a list of {name, weight}, got ${typeof v}`);
  return v.map((p, i) => {
    if (typeof p !== 'object' || p === null || Array.isArray(p)) throw invalidField(`adapters[${i}]`, `adapters[${i}] must be an object {name, weight}`);
    const { name, weight, ...extra } = p as Record<string, unknown>;
    const unknown = Object.keys(extra)[0];
    if (unknown !== undefined) throw invalidField(`adapters[${i}].${unknown}`, `adapters[${i}] has an unknown field ${JSON.stringify(unknown)}; a mixture part is {name, weight}`);
    if (typeof name !== 'string' || name === '') throw invalidField(`adapters[${i}].name`, `adapters[${i}].name must be an adapter name`);
    if (typeof weight !== 'number') throw invalidField(`adapters[${i}].weight`, `adapters[${i}].weight must be a number`);
    return { name, weight };
  });
}

// "a*0.7+b*-0.3": the parts; "x:a*0.5+y:b*0.5" with another base is refused.
function parseMixtureString(s: string, modelName: string): { name: string; weight: number }[] {
  return s.split('+').map((part, i) => {
    const m = PART.exec(part.trim());
    if (!m) throw invalidField('model', `mixture part ${i} (${JSON.stringify(part)}) must be <adapter>*<weight>, as in "a*0.7+b*0.3"`);
    let name = m[1];
    const colon = name.indexOf(':');
    if (colon > 0) {
      const base = name.slice(0, colon);
      if (base !== modelName) throw invalidField('model', `mixture part ${JSON.stringify(part)} names base model ${JSON.stringify(base)}; this server serves ${JSON.stringify(modelName)}, and a mixture blends adapters of one base`);
      name = name.slice(colon + 1);
    }
    const weight = m[2].trim() === '' ? Number.NaN : Number(m[2]);
    return { name, weight };
  });
}

function mixture(parts: { name: string; weight: number }[], view: SelectorView, param: string): Selection {
  if (parts.length === 0) throw invalidField(param, 'a mixture needs at least one adapter');
  if (parts.length > view.maxMixture) throw invalidField(param, `a mixture may blend at most ${view.maxMixture} adapters (--max-mixture), got ${parts.length}`);
  parts.forEach((p, i) => {
    const where = param === 'adapters' ? `adapters[${i}].weight` : param;
    if (!Number.isFinite(p.weight)) throw invalidField(where, `the weight of ${JSON.stringify(p.name)} must be a finite number, got ${p.weight}`);
    if (Math.abs(p.weight) > MAX_MIXTURE_WEIGHT) throw invalidField(where, `the weight of ${JSON.stringify(p.name)} must be within [-${MAX_MIXTURE_WEIGHT}, ${MAX_MIXTURE_WEIGHT}], got ${p.weight}`);
  });
  for (const p of parts) if (!view.has(p.name)) throw new LoraserveError('model_not_found', `The adapter \`${p.name}\` in the mixture does not exist.`, { param });
  return { kind: 'mixture', parts };
}
