// The adapter store on disk: staging stays out of the served entries, and a crash at any point of
// a replace or a delete leaves, after the next start-up, exactly one complete version or (for a
// delete that got past its rename) none, with no leftovers. Crashes are real: a child process
// (test/helpers/store-crash.ts) exits from the store's fault hook between its renames.
import { describe, expect, it } from 'vitest';
import { spawnSync } from 'node:child_process';
import { existsSync, mkdirSync, mkdtempSync, readdirSync, readFileSync, writeFileSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { AdapterStore } from '../../src/adapters/adapter-store.ts';
import { CONFIG_FILE, WEIGHTS_FILE } from '../../src/adapters/lora-adapter.ts';

const files = (text: string) => ({ config: new TextEncoder().encode(text), weights: new TextEncoder().encode(text) });

async function put(store: AdapterStore, name: string, text: string, keepPrevious?: string): Promise<void> {
  await (await store.stage(name, files(text))).commit(keepPrevious);
}

// The version in a directory: both files complete and of the same write.
function contentOf(dir: string): string {
  const config = readFileSync(join(dir, CONFIG_FILE), 'utf8');
  expect(readFileSync(join(dir, WEIGHTS_FILE), 'utf8')).toBe(config);
  return config;
}

function writeDir(dir: string, text: string): void {
  mkdirSync(dir, { recursive: true });
  writeFileSync(join(dir, CONFIG_FILE), text);
  writeFileSync(join(dir, WEIGHTS_FILE), text);
}

const entries = (root: string) => readdirSync(root).sort();

// The root holds the live adapters, nothing else.
const expectClean = (root: string, live: string[]) => expect(entries(root)).toEqual(live.sort());

function crashChild(root: string, ...args: string[]): void {
  const script = join(import.meta.dirname, '../helpers/store-crash.ts');
  const r = spawnSync(process.execPath, ['--import', 'tsx', script, root, ...args], { timeout: 20_000, encoding: 'utf8' });
  expect(r.stderr).toBe('');
  expect(r.stdout).toBe(''); // never reached 'not crashed'
  expect(r.status).toBe(1);
}

const newRoot = () => mkdtempSync(join(tmpdir(), 'loraserve-adapter-store-'));

describe('adapter store', () => {
  it('stages under .staging: the served entries and list() do not change until commit, nor after an abort', async () => {
    const root = newRoot();
    const store = new AdapterStore(root);
    await put(store, 'a', 'v1');
    expectClean(root, ['a']);

    const fresh = await store.stage('b', files('b1'));
    const replacing = await store.stage('a', files('v2'));
    expect(entries(root)).toEqual(['.staging', 'a']);
    const staged = readdirSync(join(root, '.staging'));
    expect(staged).toHaveLength(2);
    expect(staged.map((d) => contentOf(join(root, '.staging', d))).sort()).toEqual(['b1', 'v2']);
    expect(store.list()).toEqual(['a']);

    await fresh.abort();
    expect(readdirSync(join(root, '.staging'))).toHaveLength(1);
    await replacing.abort();
    expectClean(root, ['a']); // .staging goes once nothing is staged
    expect(store.list()).toEqual(['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
  });

  it('replaces without leftovers; a kept version stays in retiredDirOf until removeRetired', async () => {
    const root = newRoot();
    const store = new AdapterStore(root);
    await put(store, 'a', 'v1');
    await put(store, 'a', 'v2');
    expectClean(root, ['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v2');

    await put(store, 'a', 'v3', '00aa');
    expect(contentOf(store.retiredDirOf('a', '00aa'))).toBe('v2');
    expect(contentOf(store.dirOf('a'))).toBe('v3');
    await store.removeRetired('a', '00aa');
    expectClean(root, ['a']);
  });

  it('a commit that fails between its renames puts the old version back', async () => {
    const root = newRoot();
    await put(new AdapterStore(root), 'a', 'v1');
    const store = new AdapterStore(root, { faults: { beforeSecondRename: () => { throw new Error('injected'); } } });
    await expect(put(store, 'a', 'v2')).rejects.toThrow('injected');
    expectClean(root, ['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
  });

  it('a crash between the renames of a replace: start-up restores the old version', async () => {
    const root = newRoot();
    crashChild(root, 'put:a:v1', 'put:a:v2');
    expect(existsSync(join(root, 'a'))).toBe(false); // the crash came in the window
    expect(contentOf(join(root, '.old-a'))).toBe('v1');

    const store = new AdapterStore(root); // start-up
    expectClean(root, ['a']);
    expect(store.list()).toEqual(['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
  });

  it('a crash between the renames of a replace that keeps the old version for requests: start-up restores exactly that one', async () => {
    const root = newRoot();
    // v0 and then v1 are still in use when replaced: v0 in .retired-a-0000, v1 moving to .retired-a-1111
    crashChild(root, 'put:a:v0', 'put:a:v1:0000', 'put:a:v2:1111');
    expect(existsSync(join(root, 'a'))).toBe(false);
    expect(contentOf(join(root, '.retired-a-0000'))).toBe('v0');
    expect(contentOf(join(root, '.retired-a-1111'))).toBe('v1');

    const store = new AdapterStore(root);
    expectClean(root, ['a']);
    expect(store.list()).toEqual(['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
  });

  it('start-up removes leftovers beside a live adapter and ignores a marker that names anything else', async () => {
    const root = newRoot();
    await put(new AdapterStore(root), 'a', 'v1');
    writeDir(join(root, '.old-a'), 'v0');
    writeDir(join(root, '.retired-a-0000'), 'v0');
    writeFileSync(join(root, '.replacing-a'), '.old-a');
    writeDir(join(root, '.trash-123'), 'x');
    writeDir(join(root, '.tmp-456'), 'y');
    writeDir(join(root, '.staging', '789'), 'z');
    const outside = mkdtempSync(join(tmpdir(), 'loraserve-outside-'));
    writeDir(join(outside, 'b'), 'evil');
    writeFileSync(join(root, '.replacing-b'), `../${outside.split('/').pop()}/b`);

    const store = new AdapterStore(root);
    expectClean(root, ['a']);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
    expect(contentOf(join(outside, 'b'))).toBe('evil');
  });

  it('a crash after the rename of a delete: the adapter stays deleted, even with a stale marker and a retired copy', async () => {
    const root = newRoot();
    // v0 still in use (.retired-a-0000), and a marker naming it left over from a failed clean-up
    crashChild(root, 'put:b:b1', 'put:a:v0', 'put:a:v1:0000', 'marker:a:.retired-a-0000', 'remove:a');
    expect(existsSync(join(root, 'a'))).toBe(false);
    expect(contentOf(join(root, '.retired-a-0000'))).toBe('v0');
    expect(entries(root).some((e) => e.startsWith('.trash-'))).toBe(true);

    const store = new AdapterStore(root);
    expectClean(root, ['b']);
    expect(store.list()).toEqual(['b']);
  });
});

// Several replicas on one store directory (opts.shared): another replica's operation in progress
// looks like a crash leftover, so only leftovers older than leftoverAgeMs go, and a replaced
// version stays retiredGraceMs for the other replicas' requests.
describe('adapter store shared by replicas', () => {
  const MIN = 60_000;

  it("start-up keeps young leftovers (another replica's upload or replace in progress); a sweep removes them once old", async () => {
    const root = newRoot();
    const a = new AdapterStore(root, { shared: true });
    await put(a, 'x', 'v1');
    const uploading = await a.stage('y', files('y1')); // replica A mid-upload
    writeDir(join(root, '.old-z'), 'z0');
    writeDir(join(root, '.retired-x-0000'), 'v0');
    writeDir(join(root, '.trash-123'), 't');
    const b = new AdapterStore(root, { shared: true }); // replica B starts
    expect(entries(root)).toEqual(['.old-z', '.retired-x-0000', '.staging', '.trash-123', 'x']);
    expect(b.sweep(Date.now() + 5 * MIN)).toEqual([]);
    await uploading.commit(); // A's upload is intact
    expect(contentOf(b.dirOf('y'))).toBe('y1');
    expect(b.list()).toEqual(['x', 'y']);
    // past the ages (10 min): gone
    expect(b.sweep(Date.now() + 11 * MIN).length).toBe(3);
    expectClean(root, ['x', 'y']);
  });

  it("a replica's staging ends without removing another's, and removeRetired leaves a replaced version for its grace period", async () => {
    const root = newRoot();
    const a = new AdapterStore(root, { shared: true });
    const b = new AdapterStore(root, { shared: true });
    const fromA = await a.stage('p', files('p1'));
    const fromB = await b.stage('q', files('q1'));
    await fromA.abort(); // A has nothing staged any more: B's staging stays
    expect(readdirSync(join(root, '.staging'))).toHaveLength(1);
    await fromB.commit();
    expectClean(root, ['q']); // the last one out removes the empty .staging
    await put(a, 'q', 'q2', '00aa');
    await a.removeRetired('q', '00aa');
    expect(contentOf(a.retiredDirOf('q', '00aa'))).toBe('q1'); // still there for other replicas
    expect(a.sweep(Date.now() + 9 * MIN)).toEqual([]);
    expect(a.sweep(Date.now() + 11 * MIN)).toEqual([a.retiredDirOf('q', '00aa')]);
    expectClean(root, ['q']);
  });

  it('start-up after a crash between the renames of a replace still restores the old version (after a short wait for a young marker)', async () => {
    const root = newRoot();
    crashChild(root, 'put:a:v1', 'put:a:v2');
    expect(existsSync(join(root, 'a'))).toBe(false);
    const t0 = Date.now();
    const store = new AdapterStore(root, { shared: true });
    expect(Date.now() - t0).toBeLessThan(5_000);
    expect(contentOf(store.dirOf('a'))).toBe('v1');
    expect(entries(root)).toEqual(['.staging', 'a']); // the new version's staged copy: old only in 10 min
    store.sweep(Date.now() + 11 * MIN);
    expectClean(root, ['a']);
  });
});
