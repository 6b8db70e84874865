// POST /v1/adapters/merge (admin key): merge served adapters into a new one (issue 13,
// docs/merging.md "Serving merges"). JSON {name, adapters, weights, combination_type, density,
// majority_sign_method, svd_rank, svd_clamp, seed, output}.
//   1. the body's fields (its schema, then parseMergeRequest: 400 naming the field), the name (409 if taken), the inputs (404 naming an
//      unknown one), their files read back and checked against the served versions
//   2. the inputs' configs: a shared base model, PEFT's rank rules, the rank limit (400s)
//   3. the merge itself in a worker thread (src/merge/merge-runner.ts)
//   4. the result stored and served like an upload (validated, staged, committed atomically), with
//      its recipe in merge_recipe.json
// Every refusal comes before step 4 writes anything, so a refused merge leaves no adapter.
import type { FastifyInstance, FastifyRequest } from 'fastify';
import type { AdapterInfo, AdapterRegistry } from '../adapters/registry.ts';
import { adapterVersion, readAdapterDir } from '../adapters/lora-adapter.ts';
import { LoraserveError } from '../runtime/errors.ts';
import { parseMergeRequest, planInputs } from '../merge/merge-files.ts';
import type { MergeInputFiles } from '../merge/merge-files.ts';
import { runMergeOffThread } from '../merge/merge-runner.ts';

export interface MergeRouteDeps {
  registry: AdapterRegistry;
  admin: (req: FastifyRequest) => Promise<void>;
  describe: (a: AdapterInfo) => Promise<Record<string, unknown>>;
  counted: <T>(p: Promise<T>) => Promise<T>;
  schema: object;                // request-schemas.ts: the fields' types and ranges, unknown fields refused
}

// The request is a few names and numbers: 64 KiB is plenty.
const MERGE_BODY_LIMIT = 64 * 1024;

export function registerMergeRoute(app: FastifyInstance, deps: MergeRouteDeps): void {
  const { registry } = deps;
  app.post('/v1/adapters/merge', { preValidation: deps.admin, bodyLimit: MERGE_BODY_LIMIT, schema: deps.schema }, async (req, reply) => {
    const request = parseMergeRequest(req.body);
    if (request.name === registry.modelName) throw new LoraserveError('conflict', `'${request.name}' is the base model's name`, { param: 'name' });
    if (registry.has(request.name)) throw new LoraserveError('conflict', `The lora adapter '${request.name}' already exists; choose another name for the merged adapter, or delete it first`, { param: 'name' });
    const inputs: MergeInputFiles[] = [];
    for (const [i, name] of request.adapters.entries()) {
      const info = registry.get(name);
      if (!info) throw new LoraserveError('model_not_found', `adapters[${i}]: the lora adapter '${name}' cannot be found`, { param: 'adapters' });
      if (info.status !== 'ready') throw new LoraserveError('unavailable', `adapters[${i}]: the lora adapter '${name}' is ${info.status}; merge it once it is served again`, { param: 'adapters' });
      const files = await readAdapterDir(info.dir);
      const version = adapterVersion(files);
      if (version !== info.version) throw new LoraserveError('conflict', `adapters[${i}]: the files of '${name}' changed since version ${info.version} was loaded (they are now ${version}); reload it (POST /v1/adapters/${name}/reload), then merge`, { param: 'adapters' });
      inputs.push({ name, version, files });
    }
    const { plan } = planInputs(inputs, request, { maxRank: registry.maxRank, modelName: registry.modelName });
    const started = Date.now();
    const merged = await runMergeOffThread({ inputs, request, model: registry.model, limits: { maxRank: registry.maxRank, modelName: registry.modelName } });
    const info = await deps.counted(registry.upload(request.name, merged.files, { replace: false, recipe: { ...merged.recipe } }));
    req.log.info({ adapter: request.name, version: info.version, combination: plan.combination, rank: plan.rank, inputs: request.adapters, ms: Date.now() - started, relativeError: merged.recipe.relative_error }, 'adapters merged');
    reply.code(201);
    return deps.describe(info);
  });
}
