// Ids of files, jobs, events and checkpoints sort in creation order (ids.ts), and a list page
// (manager.ts page, OpenAI's cursor pagination) follows its cursor even when the item it names was
// deleted since the page before: paging while deleting neither fails nor skips nor repeats an item.
import { describe, expect, it } from 'vitest';
import fc from 'fast-check';
import { isFileId, isJobId, newId, shortId } from '../../src/train/jobs/ids.ts';
import { page } from '../../src/train/jobs/manager.ts';

describe('ids', () => {
  it('keep their shape, sort in creation order within one millisecond, and short ids differ', () => {
    const ids = Array.from({ length: 2000 }, () => newId('ftjob'));
    for (const id of ids) expect(isJobId(id)).toBe(true);
    expect(isFileId(newId('file'))).toBe(true);
    expect([...ids].sort()).toEqual(ids);
    expect(new Set(ids.map(shortId)).size).toBe(ids.length);
    expect(shortId(ids[0])).toMatch(/^[0-9a-f]{8}$/);
  });
});

describe('page', () => {
  const list = (n: number) => Array.from({ length: n }, () => ({ id: newId('file') })).reverse(); // newest first

  it('property: paging to the end while deleting items (the cursor\'s own too) yields every survivor once, in order', () => {
    fc.assert(fc.property(fc.integer({ min: 0, max: 30 }), fc.integer({ min: 1, max: 7 }), fc.array(fc.nat(), { maxLength: 40 }), fc.constantFrom('asc' as const, 'desc' as const), (n, limit, deletions, order) => {
      const items = order === 'desc' ? list(n) : list(n).reverse();
      const deleted = new Set<string>();
      const seen: string[] = [];
      let after: string | undefined;
      let d = 0;
      for (let guard = 0; guard <= n + 1; guard++) {
        const live = items.filter((x) => !deleted.has(x.id));
        const p = page(live, after, limit, isFileId, order);
        seen.push(...p.data.map((x) => x.id));
        if (!p.has_more) break;
        after = p.last_id!;
        // between pages, delete one item: the cursor's own, or any other
        if (d < deletions.length && items.length) deleted.add(items[deletions[d++] % items.length].id);
      }
      // every item that was never deleted was seen, in list order; none twice
      const survivors = items.filter((x) => !deleted.has(x.id)).map((x) => x.id);
      expect(seen.filter((id) => !deleted.has(id))).toEqual(survivors);
      expect(new Set(seen).size).toBe(seen.length);
    }));
  });

  it('an `after` that is not an id of the list\'s kind is a 400 naming it', () => {
    expect(() => page(list(3), 'nope', 2, isFileId)).toThrow(expect.objectContaining({ param: 'after' }));
  });
});
