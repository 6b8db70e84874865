// Request bodies: JSON text → a value, with refusals that say what is wrong. A body that is not
// JSON says where it breaks (without quoting it back); a key "__proto__", or "prototype" inside
// "constructor", is refused by its path: such keys pollute prototypes when code merges objects.
import { invalidField } from '../runtime/errors.ts';

export function parseJsonBody(text: string): unknown {
  if (text.trim().length === 0) throw invalidField('body', 'the request body is empty; send a JSON object');
  let value: unknown;
  try {
    value = JSON.parse(text);
  } catch (e) {
    const at = /position (\d+)/.exec((e as Error).message);
    throw invalidField('body', `the request body is not valid JSON${at ? ` (at character ${at[1]})` : ''}`);
  }
  refuseForbiddenKeys(value);
  return value;
}

// Throws if `value` holds a forbidden key (the WebSocket API reads its messages' envelope first,
// then checks this, so that the refusal carries the response_id).
export function refuseForbiddenKeys(value: unknown): void {
  const path = forbiddenKey(value);
  if (path) throw invalidField(path, `the JSON body holds the key ${path}; "__proto__" and "constructor.prototype" keys are refused`);
}

// The path of the first forbidden key, or null. Iterative: nesting depth cannot overflow the stack.
function forbiddenKey(root: unknown): string | null {
  const stack: { v: unknown; path: string; parentKey: string }[] = [{ v: root, path: '', parentKey: '' }];
  while (stack.length) {
    const { v, path, parentKey } = stack.pop()!;
    if (typeof v !== 'object' || v === null) continue;
    if (Array.isArray(v)) { v.forEach((x, i) => stack.push({ v: x, path: `${path}[${i}]`, parentKey: '' })); continue; }
    for (const k of Object.keys(v)) {
      const p = path ? `${path}.${k}` : k;
      if (k === '__proto__' || (k === 'prototype' && parentKey === 'constructor')) return p;
      stack.push({ v: (v as Record<string, unknown>)[k], path: p, parentKey: k });
    }
  }
  return null;
}
