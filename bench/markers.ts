// Generated sections of Markdown files: the text between `<!-- NAME:begin -->` and
// `<!-- NAME:end -->` belongs to a report script (bench/report.ts, load-tests/attack-report.ts),
// so that no figure in it is typed by hand.
import { readFileSync, writeFileSync } from 'node:fs';

export const markers = (name: string): { begin: string; end: string } => ({ begin: `<!-- ${name}:begin -->`, end: `<!-- ${name}:end -->` });

// Replace the block NAME in `text` with `body`; when the markers are missing, `insert` places the
// whole block (markers included) and returns the new text.
export function replaceBlock(text: string, name: string, body: string, insert: (text: string, block: string) => string): string {
  const { begin, end } = markers(name);
  const block = `${begin}\n${body.trim()}\n${end}`;
  const i = text.indexOf(begin);
  const j = i === -1 ? -1 : text.indexOf(end, i + begin.length);
  if (i === -1 || j === -1) {
    if (i !== -1 || text.includes(end)) throw new Error(`${begin} and ${end} must both be present, in that order`);
    return insert(text, block);
  }
  return text.slice(0, i) + block + text.slice(j + end.length);
}

export function writeBlock(file: string, name: string, body: string, insert: (text: string, block: string) => string): void {
  const text = readFileSync(file, 'utf8');
  const next = replaceBlock(text, name, body, insert);
  if (next !== text) writeFileSync(file, next);
}

// Insert `block` before the first line that starts with `heading` (else at the end), as its own paragraph.
export const before = (heading: string) => (text: string, block: string): string => {
  const at = text.search(new RegExp(`^${heading.replace(/[.*+?^${}()|[\]\\]/g, '\\$&')}`, 'm'));
  return at === -1 ? `${text.trimEnd()}\n\n${block}\n` : `${text.slice(0, at)}${block}\n\n${text.slice(at)}`;
};
