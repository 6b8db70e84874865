// The Kubernetes manifests in deploy/kubernetes/ and the Dockerfile, checked against each other and
// against the server, the way deploy/kubernetes/README.md uses them: every YAML file parses; each
// object has a known apiVersion/kind (GIE: inference.networking.k8s.io/v1 InferencePool,
// inference.networking.x-k8s.io/v1alpha2 InferenceObjective) and the fields its API requires; the
// Deployment's args are flags the server accepts; selectors match the pod labels; probe paths and
// ports are the server's (a real server answers them); the HPA's metric is the prometheus-adapter
// rule's name for a metric the server exposes; the InferencePool targets the Deployment's port and
// labels. (kubeconform is neither an npm nor a Debian package, and needs schemas fetched from the
// network: these checks are done here instead.)
import { describe, expect, it } from 'vitest';
import { readFileSync, readdirSync, statSync } from 'node:fs';
import { join, relative } from 'node:path';
import { fileURLToPath } from 'node:url';
import { parseAllDocuments } from 'yaml';
import { loadConfig } from '../src/server/config.ts';
import { startTestServer } from './helpers/server.ts';
import { parsePromText } from './helpers/prom-text.ts';

const ROOT = fileURLToPath(new URL('..', import.meta.url));
const DIR = join(ROOT, 'deploy/kubernetes');

type Obj = Record<string, any>;
interface Doc { file: string; obj: Obj }

function yamlFiles(dir: string): string[] {
  return readdirSync(dir).flatMap((f) => {
    const p = join(dir, f);
    return statSync(p).isDirectory() ? yamlFiles(p) : /\.ya?ml$/.test(f) ? [p] : [];
  });
}

const HELM_VALUES = new Set(['prometheus/prometheus-adapter-values.yaml']);
const files = yamlFiles(DIR).map((p) => relative(DIR, p)).sort();
const parsed = new Map<string, Obj[]>(files.map((f) => {
  const docs = parseAllDocuments(readFileSync(join(DIR, f), 'utf8'));
  for (const d of docs) if (d.errors.length) throw new Error(`${f}: ${d.errors.map((e) => e.message).join('; ')}`);
  return [f, docs.map((d) => d.toJS() as Obj).filter((o) => o !== null)];
}));
const objects: Doc[] = [...parsed].filter(([f]) => !HELM_VALUES.has(f)).flatMap(([file, objs]) => objs.map((obj) => ({ file, obj })));

function one(kind: string): Obj {
  const found = objects.filter((d) => d.obj.kind === kind);
  expect(found, kind).toHaveLength(1);
  return found[0].obj;
}
const all = (kind: string): Obj[] => objects.filter((d) => d.obj.kind === kind).map((d) => d.obj);

// Every key of `o` is one of `allowed` and every one of `required` is there: the API's fields,
// so that a misspelt or outdated field (targetPortNumber, extensionRef…) fails here.
function fields(o: Obj, where: string, required: string[], optional: string[] = []): void {
  expect(o, where).toBeTypeOf('object');
  for (const k of required) expect(Object.keys(o), `${where}.${k} is required`).toContain(k);
  for (const k of Object.keys(o)) expect([...required, ...optional], `${where}.${k} is not a field of the API`).toContain(k);
}

const subset = (sel: Record<string, string>, labels: Record<string, string>): boolean => Object.entries(sel).every(([k, v]) => labels[k] === v);

const KNOWN: Record<string, string> = {
  Deployment: 'apps/v1',
  Service: 'v1',
  PersistentVolumeClaim: 'v1',
  HorizontalPodAutoscaler: 'autoscaling/v2',
  PodMonitor: 'monitoring.coreos.com/v1',
  InferencePool: 'inference.networking.k8s.io/v1',
  InferenceObjective: 'inference.networking.x-k8s.io/v1alpha2',
  HTTPRoute: 'gateway.networking.k8s.io/v1',
};

const deployment = (): Obj => one('Deployment');
const pod = (): Obj => deployment().spec.template;
const container = (): Obj => {
  const cs = pod().spec.containers as Obj[];
  expect(cs).toHaveLength(1);
  return cs[0];
};
// the value after a flag in the container's args
const arg = (flag: string): string | undefined => {
  const a = container().args as string[];
  const i = a.indexOf(flag);
  return i === -1 ? undefined : a[i + 1];
};
const containerPort = (nameOrNumber: string | number): number => {
  if (typeof nameOrNumber === 'number') return nameOrNumber;
  const p = (container().ports as Obj[]).find((x) => x.name === nameOrNumber);
  expect(p, `container port named ${nameOrNumber}`).toBeDefined();
  return p!.containerPort as number;
};

describe('deploy/kubernetes manifests', () => {
  it('every YAML file parses, and every object has a known apiVersion and kind, a name, and no namespace (kubectl -n decides)', () => {
    expect(files).toEqual(expect.arrayContaining(['deployment.yaml', 'service.yaml', 'adapter-store-pvc.yaml', 'hpa.yaml', 'gie/inferencepool.yaml', 'gie/inferenceobjective.yaml', 'gie/httproute.yaml', 'prometheus/podmonitor.yaml', ...HELM_VALUES]));
    expect(objects.length).toBeGreaterThanOrEqual(8);
    for (const { file, obj } of objects) {
      fields(obj, file, ['apiVersion', 'kind', 'metadata', 'spec']);
      expect(KNOWN[obj.kind], `${file}: kind ${obj.kind}`).toBeDefined();
      expect(obj.apiVersion, `${file}: ${obj.kind}`).toBe(KNOWN[obj.kind]);
      expect(obj.metadata.name, file).toMatch(/^[a-z0-9]([-a-z0-9]*[a-z0-9])?$/);
      expect(obj.metadata.namespace, file).toBeUndefined();
    }
  });

  it('the Deployment: its selector matches its pod labels, its args are flags the server takes, a non-root pod, and time to drain', () => {
    const d = deployment();
    expect(subset(d.spec.selector.matchLabels, pod().metadata.labels)).toBe(true);
    const c = container();
    fields(c, 'container', ['name', 'image', 'args', 'ports', 'readinessProbe', 'livenessProbe', 'resources'], ['imagePullPolicy', 'env', 'startupProbe', 'securityContext', 'volumeMounts']);
    const args = c.args as string[];
    expect(args.every((a) => typeof a === 'string')).toBe(true); // numbers must be quoted
    expect(args[0]).toBe('serve');
    const cfg = loadConfig(args.slice(1), {}); // throws on an unknown or invalid flag
    expect(cfg.host).toBe('0.0.0.0');
    expect(cfg.port).toBe(containerPort('http'));
    expect(cfg.metricsCompat).toBe('vllm');
    expect(pod().spec.terminationGracePeriodSeconds * 1000).toBeGreaterThan(cfg.drainTimeoutMs);
    expect(pod().spec.securityContext.runAsNonRoot).toBe(true);
    expect(pod().spec.securityContext.runAsUser).toBeGreaterThan(0);
    expect(d.spec.strategy.rollingUpdate.maxUnavailable).toBe(0);
    for (const e of c.env as Obj[]) expect(e.name, 'an env var the config reads').toMatch(/^LORASERVE_[A-Z_]+$/);
    expect(c.resources.requests.cpu).toBeDefined();
    expect(c.resources.requests.memory).toBeDefined();
  });

  it('the adapter store is one ReadWriteMany claim, mounted where --adapters points', () => {
    const pvc = one('PersistentVolumeClaim');
    expect(pvc.spec.accessModes).toEqual(['ReadWriteMany']);
    const vol = (pod().spec.volumes as Obj[]).find((v) => v.persistentVolumeClaim);
    expect(vol!.persistentVolumeClaim.claimName).toBe(pvc.metadata.name);
    const mount = (container().volumeMounts as Obj[]).find((m) => m.name === vol!.name);
    expect(mount!.mountPath).toBe(arg('--adapters'));
    expect(mount!.readOnly).not.toBe(true);
  });

  it('the Service and the PodMonitor select the pods and name their port', () => {
    const s = one('Service');
    expect(subset(s.spec.selector, pod().metadata.labels)).toBe(true);
    expect(containerPort(s.spec.ports[0].targetPort)).toBe(Number(arg('--port')));
    const pm = one('PodMonitor');
    expect(subset(pm.spec.selector.matchLabels, pod().metadata.labels)).toBe(true);
    expect(containerPort(pm.spec.podMetricsEndpoints[0].port)).toBe(Number(arg('--port')));
    expect(pm.spec.podMetricsEndpoints[0].path).toBe('/metrics');
  });

  it('the InferencePool (v1) selects the Deployment\'s pods on its serving port, and names the EPP Service the chart makes', () => {
    const p = one('InferencePool');
    fields(p.spec, 'InferencePool.spec', ['selector', 'targetPorts', 'endpointPickerRef']);
    fields(p.spec.selector, 'InferencePool.spec.selector', ['matchLabels']);
    expect(subset(p.spec.selector.matchLabels, pod().metadata.labels)).toBe(true);
    expect(p.spec.targetPorts).toHaveLength(1); // the API allows one
    fields(p.spec.targetPorts[0], 'targetPorts[0]', ['number']);
    expect(p.spec.targetPorts[0].number).toBe(containerPort('http'));
    const ref = p.spec.endpointPickerRef;
    fields(ref, 'endpointPickerRef', ['name'], ['group', 'kind', 'port', 'failureMode']);
    expect(ref.kind ?? 'Service').toBe('Service');
    fields(ref.port, 'endpointPickerRef.port', ['number']);
    expect(ref.port.number).toBe(9002);
    expect(['FailOpen', 'FailClose']).toContain(ref.failureMode);
    expect(ref.name).toBe(`${p.metadata.name}-epp`); // the inferencepool chart's EPP for release <pool name>
  });

  it('the HTTPRoute sends the OpenAI routes to the pool, and each InferenceObjective refers to it', () => {
    const pool = one('InferencePool');
    const r = one('HTTPRoute');
    const backends = (r.spec.rules as Obj[]).flatMap((x) => x.backendRefs as Obj[]);
    expect(backends).toEqual([{ group: 'inference.networking.k8s.io', kind: 'InferencePool', name: pool.metadata.name }]);
    const paths = (r.spec.rules as Obj[]).flatMap((x) => (x.matches as Obj[]).map((m) => m.path.value));
    expect(paths).toEqual(expect.arrayContaining(['/v1/completions', '/v1/chat/completions']));
    expect(all('InferenceObjective').length).toBeGreaterThan(0);
    for (const o of all('InferenceObjective')) {
      fields(o.spec, `InferenceObjective ${o.metadata.name}`, ['poolRef'], ['priority']);
      expect(Number.isInteger(o.spec.priority)).toBe(true);
      fields(o.spec.poolRef, 'poolRef', ['name'], ['group', 'kind']);
      expect(o.spec.poolRef).toMatchObject({ group: 'inference.networking.k8s.io', name: pool.metadata.name });
    }
  });

  it('the HPA scales the Deployment on the prometheus-adapter name of vllm:num_requests_waiting', () => {
    const h = one('HorizontalPodAutoscaler');
    expect(h.spec.scaleTargetRef).toEqual({ apiVersion: 'apps/v1', kind: 'Deployment', name: deployment().metadata.name });
    expect(h.spec.minReplicas).toBeGreaterThanOrEqual(1);
    expect(h.spec.maxReplicas).toBeGreaterThan(h.spec.minReplicas);
    const m = h.spec.metrics[0];
    expect(m.type).toBe('Pods');
    const values = parsed.get('prometheus/prometheus-adapter-values.yaml')![0];
    const rule = (values.rules.custom as Obj[]).find((x) => x.name.as === m.pods.metric.name);
    expect(rule, `a prometheus-adapter rule serving ${m.pods.metric.name}`).toBeDefined();
    expect(new RegExp(rule!.name.matches).test('vllm:num_requests_waiting')).toBe(true);
    expect(rule!.seriesQuery).toMatch(/^vllm:num_requests_waiting\{/);
    expect(rule!.resources.overrides.pod.resource).toBe('pod');
    expect(m.pods.target.type).toBe('AverageValue');
  });

  it('the probes, the metrics the HPA and the EPP read, and the served port are the server\'s own (a real server answers them)', async () => {
    const c = container();
    expect(c.readinessProbe.httpGet.path).toBe('/ready');
    expect(c.livenessProbe.httpGet.path).toBe('/health');
    for (const p of [c.readinessProbe, c.livenessProbe, c.startupProbe]) expect(containerPort(p.httpGet.port)).toBe(Number(arg('--port')));
    const server = await startTestServer({ metricsCompat: loadConfig(c.args.slice(1), {}).metricsCompat });
    try {
      for (const p of [c.readinessProbe, c.livenessProbe, c.startupProbe]) expect((await fetch(`${server.url}${p.httpGet.path}`)).status, p.httpGet.path).toBe(200);
      const m = parsePromText(await (await fetch(`${server.url}${one('PodMonitor').spec.podMetricsEndpoints[0].path}`)).text());
      for (const name of ['vllm:num_requests_waiting', 'vllm:num_requests_running', 'vllm:kv_cache_usage_perc', 'vllm:lora_requests_info']) expect(m.get(name)?.type, name).toBe('gauge');
    } finally {
      await server.close();
    }
  });

  it('the README walks through every manifest, with the chart release the InferencePool expects', () => {
    const readme = readFileSync(join(DIR, 'README.md'), 'utf8');
    for (const f of files) expect(readme, f).toContain(f);
    const pool = one('InferencePool');
    expect(readme).toContain(`helm install ${pool.metadata.name} `);
    expect(readme).toContain(`inferencePool.modelServers.matchLabels.app=${pod().metadata.labels.app}`);
    expect(containerPort('http')).toBe(8000); // the inferencepool chart's default target port: no flag for it
  });
});

describe('Dockerfile', () => {
  const text = readFileSync(join(ROOT, 'Dockerfile'), 'utf8');
  const lines = text.split('\n').filter((l) => l.trim() && !l.trimStart().startsWith('#'));

  it('is multi-stage: the builder runs npm ci from the lockfile, the runtime stage is node:20-slim, non-root, serving on every address', () => {
    const froms = lines.filter((l) => /^FROM /.test(l));
    expect(froms.length).toBe(2);
    expect(froms[0]).toMatch(/^FROM node:20-slim AS builder$/);
    expect(froms[1]).toMatch(/^FROM node:20-slim$/);
    expect(text).toMatch(/COPY package\.json package-lock\.json \.npmrc/);
    expect(text).toMatch(/RUN npm ci\b/);
    const runtime = lines.slice(lines.indexOf(froms[1]));
    expect(runtime.some((l) => /^COPY --from=builder /.test(l))).toBe(true);
    expect(runtime.some((l) => /npm (ci|install)|curl|wget/.test(l))).toBe(false); // nothing fetched in the runtime stage
    const user = runtime.find((l) => l.startsWith('USER '))!;
    expect(user).toMatch(/^USER [1-9]\d*(:\d+)?$/);
    expect(Number(user.slice(5).split(':')[0])).toBe(deployment().spec.template.spec.securityContext.runAsUser);
    const cmd = JSON.parse(runtime.find((l) => l.startsWith('CMD '))!.slice(4)) as string[];
    const entry = JSON.parse(runtime.find((l) => l.startsWith('ENTRYPOINT '))!.slice(11)) as string[];
    expect(entry).toEqual(['node', 'bin/loraserve.js']);
    expect(cmd[0]).toBe('serve');
    expect(loadConfig(cmd.slice(1), {}).host).toBe('0.0.0.0');
  });

  it('.dockerignore keeps node_modules, .git and local state out of the build context, and none of what the image copies', () => {
    const ignored = readFileSync(join(ROOT, '.dockerignore'), 'utf8').split('\n').map((l) => l.trim()).filter((l) => l && !l.startsWith('#'));
    for (const p of ['node_modules', '.git', 'adapters']) expect(ignored).toContain(p);
    for (const p of ['src', 'bin', 'models', 'package.json', 'package-lock.json', '.npmrc', 'tsconfig.json']) expect(ignored).not.toContain(p);
  });
});
