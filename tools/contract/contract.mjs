// tools/contract/contract.mjs — checks docs/openapi.yaml against strict tools and the live daemon.
//
// Usage: node tools/contract/contract.mjs DAEMON_BINARY   (run from the repository root; tests/contract.sh)
//
// Three steps, each counted:
//   1. lint: `redocly lint` with the committed redocly.yaml; 0 errors and 0 warnings required.
//   2. ajv: every schema of the document (components and inline) compiles with Ajv 8 in strict mode
//      (ajv-formats for byte, float, date-time; OpenAPI 3.0's `nullable` is Ajv's own keyword), and
//      every example (parameters, request and response bodies) validates against its schema.
//   3. prism: the daemon is started on 127.0.0.1:0 with a fresh --data directory, Prism's validating
//      proxy in front of it, and every documented example is sent through the proxy. A run is a
//      mismatch when the status differs from the expected one or Prism reports a violation of the
//      request or the response (its sl-violations header).
//
// Which requests the examples make (the convention of docs/openapi.yaml's description):
//   * an operation's example names are those of its application/json request body examples and of
//     its own (operation-level) parameters' examples, in document order; none = one run "default";
//   * a parameter takes its example of the run's name; a path parameter without one takes its first;
//   * the expected status is the response that has an example of the run's name (a response without a
//     body lists its runs in x-contract-examples), else the first 2xx;
//   * an operation whose required request body is not JSON (the import's snapshot stream) is not run;
//   * operations run in document order, DELETEs last in reverse document order (so slots go before
//     their session); /tmp/memattn-backup.db in a body is replaced by a fresh temporary path.
// The closing lines are cmocka's "[  PASSED  ] N test(s)." / "[  FAILED  ] N test(s)." so that
// tests/run.sh counts them, and "contract: ..." with the figures of docs/RESULTS.md.
import { spawn, spawnSync } from 'node:child_process';
import fs from 'node:fs';
import os from 'node:os';
import path from 'node:path';
import { createRequire } from 'node:module';

const require = createRequire(import.meta.url);
const yaml = require('js-yaml');
const Ajv = require('ajv').default;
const addFormats = require('ajv-formats').default;

const SPEC = 'docs/openapi.yaml';
const here = path.dirname(new URL(import.meta.url).pathname);
const bin = (name) => path.join(here, 'node_modules', '.bin', name);
const daemonBin = process.argv[2] || 'build/memattnd';

let passed = 0, failed = 0;
const ok = (msg) => { passed++; console.log(`ok   ${msg}`); };
const bad = (msg) => { failed++; console.log(`FAIL ${msg}`); };

const doc = yaml.load(fs.readFileSync(SPEC, 'utf8'));
const deref = (x) => {
  while (x && x.$ref) x = x.$ref.split('/').slice(1).reduce((o, k) => o[k.replace(/~1/g, '/').replace(/~0/g, '~')], doc);
  return x;
};
const METHODS = ['get', 'put', 'post', 'patch', 'delete'];
const opsOf = (item) => Object.keys(item).filter((k) => METHODS.includes(k));   // document order

// ---- 1. lint ----------------------------------------------------------------------------------
function lint() {
  const r = spawnSync(bin('redocly'), ['lint', SPEC, '--format=json'], { encoding: 'utf8' });
  let totals;
  try {
    totals = JSON.parse(r.stdout.slice(r.stdout.indexOf('{'))).totals;
  } catch (e) {
    bad(`lint: redocly gave no JSON report (exit ${r.status}): ${(r.stderr || r.stdout).slice(0, 400)}`);
    return;
  }
  const msg = `lint: redocly ${SPEC}: ${totals.errors} errors, ${totals.warnings} warnings, ${totals.ignored} ignored`;
  if (totals.errors || totals.warnings) bad(msg); else ok(msg);
  return totals;
}

// ---- 2. ajv -----------------------------------------------------------------------------------
function ajvCheck() {
  const ajv = new Ajv({ strict: true, allErrors: true });
  addFormats(ajv);
  const rewrite = (x) => JSON.parse(JSON.stringify(x).replace(/"#\/components\/schemas\/([^"]+)"/g, '"oas#/definitions/$1"'));
  ajv.addSchema({ $id: 'oas', definitions: rewrite(doc.components.schemas) });
  let schemas = 0, examples = 0;
  const compile = (schema, where) => {
    try {
      const v = ajv.compile(rewrite(schema));
      schemas++;
      return v;
    } catch (e) {
      bad(`ajv: ${where}: ${e.message}`);
      return null;
    }
  };
  const check = (v, value, where) => {
    examples++;
    if (v && !v(value)) bad(`ajv: example ${where}: ${ajv.errorsText(v.errors)}`);
  };
  for (const name of Object.keys(doc.components.schemas)) compile({ $ref: `#/components/schemas/${name}` }, `schema ${name}`);
  const media = (content, where) => {
    for (const [type, m] of Object.entries(content || {})) {
      if (!m.schema) continue;
      const v = compile(m.schema, `${where} ${type}`);
      for (const [n, ex] of Object.entries(m.examples || {})) check(v, deref(ex).value, `${where} ${type} ${n}`);
    }
  };
  for (const [p, item] of Object.entries(doc.paths)) {
    for (const prm of item.parameters || []) {
      const pp = deref(prm);
      const v = compile(pp.schema, `${p} parameter ${pp.name}`);
      for (const [n, ex] of Object.entries(pp.examples || {})) check(v, deref(ex).value, `${p} parameter ${pp.name} ${n}`);
    }
    for (const m of opsOf(item)) {
      const op = item[m];
      const where = `${m.toUpperCase()} ${p}`;
      for (const prm of op.parameters || []) {
        const pp = deref(prm);
        const v = compile(pp.schema, `${where} parameter ${pp.name}`);
        for (const [n, ex] of Object.entries(pp.examples || {})) check(v, deref(ex).value, `${where} parameter ${pp.name} ${n}`);
      }
      if (op.requestBody) media(deref(op.requestBody).content, `${where} request`);
      for (const [st, r] of Object.entries(op.responses)) {
        const rr = deref(r);
        media(rr.content, `${where} ${st}`);
        for (const [h, hd] of Object.entries(rr.headers || {})) compile(deref(hd).schema, `${where} ${st} header ${h}`);
      }
    }
  }
  if (failed === 0 || schemas) ok(`ajv: ${schemas} schemas compiled (strict), ${examples} examples validated`);
  return { schemas, examples };
}

// ---- 3. prism ---------------------------------------------------------------------------------
function runsOf(p, item, m) {
  const op = item[m];
  const params = new Map();
  for (const prm of [...(item.parameters || []), ...(op.parameters || [])]) {
    const pp = deref(prm);
    params.set(`${pp.in}:${pp.name}`, pp);
  }
  const names = [];
  const add = (n) => { if (!names.includes(n)) names.push(n); };
  const body = op.requestBody ? deref(op.requestBody) : null;
  const json = body && body.content['application/json'];
  // A required body that is not JSON (the import's snapshot stream) cannot be made from an example:
  // such operations are not run here; tests/e2e/test_transfer.c runs the import end to end.
  if (body && body.required && !json) return [];
  for (const n of Object.keys((json && json.examples) || {})) add(n);
  for (const prm of op.parameters || []) for (const n of Object.keys(deref(prm).examples || {})) add(n);
  if (!names.length) names.push('default');
  return names.map((name) => {
    let url = p, query = [];
    const headers = { 'Content-Type': 'application/json' };
    for (const pp of params.values()) {
      const exs = pp.examples || {};
      let ex = exs[name];
      if (!ex && pp.in === 'path') ex = Object.values(exs)[0];
      if (!ex) continue;
      const value = deref(ex).value;
      if (pp.in === 'path') url = url.replace(`{${pp.name}}`, encodeURIComponent(value));
      else if (pp.in === 'query') query.push(`${encodeURIComponent(pp.name)}=${encodeURIComponent(value)}`);
      else if (pp.in === 'header') headers[pp.name] = String(value);
    }
    if (query.length) url += `?${query.join('&')}`;
    let expect = null;
    const codes = Object.keys(op.responses);
    for (const st of codes) {
      const rr = deref(op.responses[st]);
      const c = rr.content || {};
      if (Object.values(c).some((mt) => mt.examples && mt.examples[name]) ||
          (rr['x-contract-examples'] || []).includes(name)) expect = Number(st);
    }
    if (expect === null) expect = Number(codes.filter((c) => /^2/.test(c)).sort()[0]);
    const ex = json && json.examples && json.examples[name];
    return { op: op.operationId, method: m.toUpperCase(), url, headers, body: ex ? deref(ex).value : undefined, expect, name };
  });
}

function startProcess(cmd, args, ready, what) {
  return new Promise((resolve, reject) => {
    const child = spawn(cmd, args, { stdio: ['ignore', 'pipe', 'pipe'] });
    let out = '', done = false;
    const timer = setTimeout(() => { if (!done) { done = true; child.kill('SIGKILL'); reject(new Error(`${what} did not start: ${out.slice(-400)}`)); } }, 60000);
    const onData = (d) => {
      out += d;
      const m = out.match(ready);
      if (m && !done) { done = true; clearTimeout(timer); resolve({ child, match: m }); }
    };
    child.stdout.on('data', onData);
    child.stderr.on('data', (d) => { out += d; });
    child.on('exit', (code) => { if (!done) { done = true; clearTimeout(timer); reject(new Error(`${what} exited ${code}: ${out.slice(-400)}`)); } });
  });
}

async function prism() {
  const tmp = fs.mkdtempSync(path.join(os.tmpdir(), 'memattn-contract-'));
  const backup = path.join(tmp, 'backup.db');
  const daemon = await startProcess(daemonBin, ['--listen', '127.0.0.1:0', '--data', path.join(tmp, 'data'), '--log-level', 'warn'],
    /^listening on (\S+)\n/m, 'memattnd');
  const upstream = `http://${daemon.match[1]}`;
  // A free port for Prism: bind :0, read it, release it.
  const net = await import('node:net');
  const port = await new Promise((res) => { const s = net.createServer(); s.listen(0, '127.0.0.1', () => { const p = s.address().port; s.close(() => res(p)); }); });
  let proxy;
  let operations = 0, runs = 0, mismatches = 0;
  try {
    proxy = await startProcess(bin('prism'), ['proxy', SPEC, upstream, '--host', '127.0.0.1', '--port', String(port), '--errors', 'false'],
      /Prism is listening/, 'prism');
    const all = [];
    for (const [p, item] of Object.entries(doc.paths))
      for (const m of opsOf(item)) { operations++; all.push(...runsOf(p, item, m)); }
    const ordered = [...all.filter((r) => r.method !== 'DELETE'), ...all.filter((r) => r.method === 'DELETE').reverse()];
    for (const r of ordered) {
      runs++;
      const body = r.body === undefined ? undefined : JSON.stringify(r.body).split('/tmp/memattn-backup.db').join(backup);
      let res, text;
      try {
        res = await fetch(`http://127.0.0.1:${port}${r.url}`, { method: r.method, headers: r.headers, body });
        text = await res.text();
      } catch (e) {
        mismatches++;
        bad(`prism: ${r.op} ${r.name}: ${r.method} ${r.url}: ${e.message}`);
        continue;
      }
      const problems = [];
      if (res.status !== r.expect) problems.push(`status ${res.status}, expected ${r.expect}`);
      const v = res.headers.get('sl-violations');
      if (v) {
        let list;
        try { list = JSON.parse(v); } catch { list = [{ message: v }]; }
        for (const x of list) problems.push(`${(x.location || []).join('.')}: ${x.message}`);
      }
      const line = `prism: ${r.op} ${r.name}: ${r.method} ${r.url} -> ${res.status}`;
      if (problems.length) {
        mismatches++;
        bad(`${line}\n     ${problems.join('\n     ')}\n     body: ${text.slice(0, 300)}`);
      } else {
        ok(line);
      }
    }
  } finally {
    if (proxy) proxy.child.kill('SIGTERM');
    daemon.child.kill('SIGTERM');
    await new Promise((res) => daemon.child.on('exit', res));
    fs.rmSync(tmp, { recursive: true, force: true });
  }
  return { operations, runs, mismatches };
}

const totals = lint();
const aj = ajvCheck();
let pr = { operations: 0, runs: 0, mismatches: 0 };
try {
  pr = await prism();
} catch (e) {
  bad(`prism: ${e.message}`);
}
console.log(`contract: lint ${totals ? `${totals.errors} errors ${totals.warnings} warnings` : 'failed'}; ajv ${aj.schemas} schemas, ` +
  `${aj.examples} examples; prism ${pr.operations} operations, ${pr.runs} examples run, ${pr.mismatches} mismatches`);
console.log(`[  PASSED  ] ${passed} test(s).`);
if (failed) console.log(`[  FAILED  ] ${failed} test(s), listed above.`);
process.exit(failed ? 1 : 0);
