// adapter_config.json (PEFT LoraConfig) → PeftConfig, with every problem collected.
// Field semantics: shared/reference/formats-and-apis.md §1.2–1.3. Semantic fields we do not
// implement are refused by name (fail closed); unknown non-semantic keys are ignored, as PEFT does.
// Regexes are compiled by python-regex.ts (RE2: linear time, whatever the pattern), here, once, so a
// pattern RE2 cannot run is a problem at upload; so is a LoRA scale that is not finite or above the limit.
import { compilePeft } from './python-regex.ts';
import type { PeftUse, PyRegex } from './python-regex.ts';

export type TargetModules = { kind: 'list'; names: string[] } | { kind: 'regex'; pattern: PyRegex; source: string } | { kind: 'all-linear' };

export interface PeftConfig {
  r: number;
  loraAlpha: number;
  useRslora: boolean;
  rankPattern: [string, number][];   // JSON order matters: first match wins
  alphaPattern: [string, number][];
  targetModules: TargetModules;
  excludeModules: { kind: 'list'; names: string[] } | { kind: 'regex'; pattern: PyRegex } | null;
  layersToTransform: number[] | null;
  layersPattern: string[] | null;
  useDora: boolean;
  baseModel: string | null;
}

export interface ConfigResult {
  config: PeftConfig | null;
  problems: string[];
  warnings: string[];
}

// The largest |alpha/r| (|alpha/√r| with use_rslora) served: beyond it an adapter swamps the base model.
export const MAX_LORA_SCALE = 1000;

// Llama's default targets when target_modules is null (PEFT's per-architecture mapping).
const LLAMA_DEFAULT_TARGETS = ['q_proj', 'v_proj'];
// Initialisations that rewrite the base weights: such an adapter is only right on a modified base.
const BASE_MUTATING_INIT = /^(pissa|olora|corda|loftq|lora_ga|mica)/i;
// Variant / feature fields that change the forward pass; refused unless empty or false.
const UNSUPPORTED_TRUTHY = ['lora_bias', 'use_qalora', 'use_bdlora', 'layer_replication', 'trainable_token_indices', 'alora_invocation_tokens', 'arrow_config', 'kasa_config', 'monteclora_config', 'megatron_config'];

export function parsePeftConfig(raw: unknown): ConfigResult {
  const problems: string[] = [];
  const warnings: string[] = [];
  if (typeof raw !== 'object' || raw === null || Array.isArray(raw)) return { config: null, problems: ['adapter_config.json must be a JSON object'], warnings };
  const c = raw as Record<string, unknown>;
  const field = (name: string): string => `adapter_config.json: "${name}"`;

  const peftType = c.peft_type;
  if (peftType === undefined) problems.push(`${field('peft_type')} is missing (expected "LORA")`);
  else if (peftType !== 'LORA') problems.push(`${field('peft_type')} is ${JSON.stringify(peftType)}; only "LORA" adapters are served`);

  const r = c.r;
  if (r === undefined) problems.push(`${field('r')} is missing`);
  else if (typeof r !== 'number' || !Number.isInteger(r) || r <= 0) problems.push(`${field('r')} must be a positive integer, got ${JSON.stringify(r)}`);
  const alpha = c.lora_alpha;
  if (alpha === undefined) problems.push(`${field('lora_alpha')} is missing`);
  else if (typeof alpha !== 'number') problems.push(`${field('lora_alpha')} must be a number, got ${JSON.stringify(alpha)}`);

  const bias = c.bias ?? 'none';
  if (bias !== 'none') problems.push(`${field('bias')} is ${JSON.stringify(bias)}; only "none" is supported (trained base-layer biases would replace the base model's)`);
  if (Array.isArray(c.modules_to_save) && c.modules_to_save.length > 0) problems.push(`${field('modules_to_save')} ${JSON.stringify(c.modules_to_save)} is not supported: it replaces whole base modules`);
  for (const f of UNSUPPORTED_TRUTHY) {
    const v = c[f];
    if (v !== undefined && v !== null && v !== false && !(Array.isArray(v) && v.length === 0) && !(typeof v === 'object' && !Array.isArray(v) && Object.keys(v as object).length === 0)) {
      problems.push(`${field(f)} is set; this LoRA variant changes the forward pass and is not supported`);
    }
  }
  if (Array.isArray(c.target_parameters) && c.target_parameters.length > 0) problems.push(`${field('target_parameters')} is not supported (LoRA on raw parameters)`);
  if (typeof c.init_lora_weights === 'string' && BASE_MUTATING_INIT.test(c.init_lora_weights)) {
    problems.push(`${field('init_lora_weights')} is ${JSON.stringify(c.init_lora_weights)}: this initialisation rewrites the base weights, so the adapter is only right on a modified base; convert it to a plain LoRA first (PEFT path_initial_model_for_weight_conversion)`);
  }
  if (c.use_dora === true && c.lora_bias === true) problems.push(`${field('use_dora')} together with lora_bias is invalid`);
  if (c.fan_in_fan_out === true) warnings.push(`${field('fan_in_fan_out')} is true but Llama projections are nn.Linear; treated as false, as PEFT does`);

  const rankPattern = patternField(c, 'rank_pattern', problems, true);
  const alphaPattern = patternField(c, 'alpha_pattern', problems, false);
  const targetModules = targetModulesField(c, problems);
  const excludeModules = excludeField(c, problems);

  let layersToTransform: number[] | null = null;
  const ltt = c.layers_to_transform;
  if (ltt !== undefined && ltt !== null) {
    if (typeof ltt === 'number' && Number.isInteger(ltt) && ltt >= 0) layersToTransform = [ltt];
    else if (Array.isArray(ltt) && ltt.every((v) => Number.isInteger(v) && v >= 0)) layersToTransform = ltt.length ? (ltt as number[]) : null;
    else problems.push(`${field('layers_to_transform')} must be a layer index or a list of them`);
  }
  let layersPattern: string[] | null = null;
  const lp = c.layers_pattern;
  if (lp !== undefined && lp !== null && !(Array.isArray(lp) && lp.length === 0) && lp !== '') {
    if (typeof lp === 'string') layersPattern = [lp];
    else if (Array.isArray(lp) && lp.every((v) => typeof v === 'string')) layersPattern = lp as string[];
    else problems.push(`${field('layers_pattern')} must be a string or a list of strings`);
    if (!layersToTransform) problems.push(`${field('layers_pattern')} is given without layers_to_transform`);
    for (const p of layersPattern ?? []) regex(p, 'layers', `${field('layers_pattern')} ${show(p)}`, problems);
  }
  // PEFT (LoraConfig.__post_init__) refuses either beside a string target_modules, a regex or
  // "all-linear", whenever it is not None: an empty list too
  if (typeof c.target_modules === 'string' && ((ltt ?? null) !== null || (lp ?? null) !== null)) {
    problems.push(`${field('layers_to_transform')}/layers_pattern cannot be used with a string target_modules (a regex or "all-linear"), as in PEFT`);
  }
  const baseModel = typeof c.base_model_name_or_path === 'string' ? c.base_model_name_or_path : null;
  const useRslora = c.use_rslora === true;
  const rank = typeof r === 'number' && Number.isInteger(r) && r > 0 ? r : null;
  const loraAlpha = typeof alpha === 'number' ? alpha : null;
  if (loraAlpha !== null) checkScale(`${field('lora_alpha')} ${fmt(loraAlpha)}`, loraAlpha, rank, useRslora, 'the adapter then equals the base model', problems, warnings);
  for (const [k, a] of alphaPattern) checkScale(`${field(`alpha_pattern.${k}`)} ${fmt(a)}`, a, rank, useRslora, 'the modules it matches then equal the base model', problems, warnings);
  if (loraAlpha !== null && Number.isFinite(loraAlpha)) for (const [k, rk] of rankPattern) checkScale(`${field(`rank_pattern.${k}`)} ${rk}`, loraAlpha, rk, useRslora, null, problems, warnings);

  if (problems.length || !targetModules) return { config: null, problems, warnings };
  return {
    config: {
      r: r as number,
      loraAlpha: alpha as number,
      useRslora,
      rankPattern,
      alphaPattern,
      targetModules,
      excludeModules,
      layersToTransform,
      layersPattern,
      useDora: c.use_dora === true,
      baseModel,
    },
    problems,
    warnings,
  };
}

// The scale alpha/r (alpha/√r with use_rslora) of a module with this rank and alpha.
export function loraScale(alpha: number, rank: number, useRslora: boolean): number {
  return useRslora ? alpha / Math.sqrt(rank) : alpha / rank;
}

// Why this rank and alpha give a scale that is refused (not finite, or |scale| > MAX_LORA_SCALE); null if fine.
// `what` names the value, e.g. 'adapter_config.json: "lora_alpha" 1e30'.
export function scaleProblem(what: string, alpha: number, rank: number, useRslora: boolean): string | null {
  const s = loraScale(alpha, rank, useRslora);
  if (Number.isFinite(s) && Math.abs(s) <= MAX_LORA_SCALE) return null;
  const formula = useRslora ? `alpha/√r = ${fmt(alpha)}/√${rank}` : `alpha/r = ${fmt(alpha)}/${rank}`;
  return `${what} gives a scale of ${fmt(Number(s.toPrecision(6)))} (${formula}); the limit is |scale| ≤ ${MAX_LORA_SCALE}`;
}

// A scale check at parse time; rank null when "r" is itself invalid (already a problem).
function checkScale(what: string, alpha: number, rank: number | null, useRslora: boolean, zeroWarning: string | null, problems: string[], warnings: string[]): void {
  if (rank === null) {
    if (!Number.isFinite(alpha)) problems.push(`${what} is not a finite number; the limit is |scale| ≤ ${MAX_LORA_SCALE}`);
    return;
  }
  const problem = scaleProblem(what, alpha, rank, useRslora);
  if (problem) problems.push(problem);
  else if (zeroWarning && loraScale(alpha, rank, useRslora) === 0) warnings.push(`${what} gives a scale of 0: ${zeroWarning}`);
}

const fmt = (n: number): string => String(n).replace('e+', 'e');
const show = (s: string): string => JSON.stringify(s.length > 120 ? `${s.slice(0, 120)}…` : s);

// A configured regex compiled for one of PEFT's uses; its reason becomes a problem if RE2 cannot run it.
function regex(pattern: string, use: PeftUse, what: string, problems: string[]): PyRegex | null {
  const c = compilePeft(pattern, use);
  if (c.ok) return c.re;
  problems.push(`${what} cannot be used: ${c.reason}`);
  return null;
}

// rank_pattern / alpha_pattern: {regex key: value} in JSON order; every key is compiled now.
function patternField(c: Record<string, unknown>, name: string, problems: string[], integer: boolean): [string, number][] {
  const v = c[name];
  if (v === undefined || v === null) return [];
  if (typeof v !== 'object' || Array.isArray(v)) { problems.push(`adapter_config.json: "${name}" must be an object`); return []; }
  const out: [string, number][] = [];
  for (const [k, n] of Object.entries(v as Record<string, unknown>)) {
    const valueOk = typeof n === 'number' && (!integer || (Number.isInteger(n) && n > 0));
    if (!valueOk) problems.push(`adapter_config.json: "${name}.${k}" must be a ${integer ? 'positive integer' : 'number'}, got ${typeof n === 'number' ? fmt(n) : JSON.stringify(n)}`);
    const keyOk = regex(k, 'pattern-key', `adapter_config.json: "${name}" key ${show(k)}`, problems) !== null;
    if (valueOk && keyOk) out.push([k, n as number]);
  }
  return out;
}

function targetModulesField(c: Record<string, unknown>, problems: string[]): TargetModules | null {
  const v = c.target_modules;
  if (v === undefined || v === null) return { kind: 'list', names: LLAMA_DEFAULT_TARGETS };
  if (typeof v === 'string') {
    if (v.toLowerCase() === 'all-linear') return { kind: 'all-linear' };
    const pattern = regex(v, 'fullmatch', `adapter_config.json: "target_modules" regex ${show(v)}`, problems);
    return pattern ? { kind: 'regex', pattern, source: v } : null;
  }
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) {
    if (v.length === 0) { problems.push('adapter_config.json: "target_modules" is an empty list'); return null; }
    // PEFT expands only the string "all-linear"; in a list it is a module name that matches nothing
    if (v.some((s) => s.toLowerCase() === 'all-linear')) { problems.push('adapter_config.json: "target_modules" lists "all-linear", which PEFT reads as a module name that matches no module: write "target_modules": "all-linear" (a string) for every linear layer'); return null; }
    return { kind: 'list', names: v as string[] };
  }
  problems.push('adapter_config.json: "target_modules" must be a list of module names, a regex string, or "all-linear"');
  return null;
}

function excludeField(c: Record<string, unknown>, problems: string[]): PeftConfig['excludeModules'] {
  const v = c.exclude_modules;
  if (v === undefined || v === null) return null;
  if (typeof v === 'string') {
    const pattern = regex(v, 'fullmatch', `adapter_config.json: "exclude_modules" regex ${show(v)}`, problems);
    return pattern ? { kind: 'regex', pattern } : null;
  }
  if (Array.isArray(v) && v.every((s) => typeof s === 'string')) return { kind: 'list', names: v as string[] };
  problems.push('adapter_config.json: "exclude_modules" must be a list of module names or a regex string');
  return null;
}
