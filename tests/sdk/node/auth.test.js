'use strict';
// npm `nacos` 2.x NacosNamingClient (HTTP v1: username + password on every call) against a
// nacelle started with --auth by tests/sdk/auth.sh.  Run with: node --test auth.test.js
//
// Users made by auth.sh: `writer` (rw on `:*:naming/auth-*`), `reader` (r on it); passwords
// are the user name + "-pw".  The Node SDK never logs in nor sends a token, so the token
// cases (expired, forged) do not apply to it: server/tests/auth.rs covers them over HTTP.

const { test, after } = require('node:test');
const assert = require('node:assert/strict');
const crypto = require('node:crypto');
const { NacosNamingClient } = require('nacos');

const HOST = process.env.NACOS_HOST || '127.0.0.1';
const HTTP_PORT = Number(process.env.NACOS_HTTP_PORT || 8848);
const CHANGE_TIMEOUT_MS = 15000;

const logger = { debug() {}, info() {}, warn() {}, error() {} };
const clients = [];
async function client(username, password) {
  const opts = { logger, serverList: `${HOST}:${HTTP_PORT}`, namespace: 'public' };
  if (username) Object.assign(opts, { username, password });
  const c = new NacosNamingClient(opts);
  clients.push(c);
  await c.ready();
  return c;
}
after(async () => {
  await Promise.all(clients.map(c => c.close().catch(() => {})));
});

const svc = tag => `auth-node-${tag}-${crypto.randomBytes(4).toString('hex')}`;
const sleep = ms => new Promise(r => setTimeout(r, ms));

async function waitUntil(fn, timeoutMs, what) {
  const deadline = Date.now() + timeoutMs;
  for (;;) {
    if (await fn()) return;
    if (Date.now() >= deadline) throw new Error(`timed out waiting for ${what}`);
    await sleep(200);
  }
}

// The SDK's answer to a refused call: an error carrying the server's status.
async function refused(promise) {
  await assert.rejects(promise, err => /403|failed to req/.test(String(err && (err.status || err.message))));
}

test('good credentials: register, list and subscribe', async () => {
  const service = svc('ok');
  const w = await client('writer', 'writer-pw');
  const r = await client('reader', 'reader-pw');
  assert.equal(await w.getServerStatus(), 'UP');
  await w.registerInstance(service, { ip: '10.8.0.1', port: 8080 });
  await waitUntil(async () => (await r.getAllInstances(service, 'DEFAULT_GROUP', '', false)).length === 1,
    5000, 'the instance in the reader\'s list');
  let seen = [];
  r.subscribe(service, hosts => { seen = hosts; });
  await w.registerInstance(service, { ip: '10.8.0.2', port: 8080 });
  await waitUntil(() => seen.length === 2, CHANGE_TIMEOUT_MS, 'a subscriber update with 2 hosts');
});

test('refused without credentials and with a wrong password', async () => {
  const service = svc('no');
  const anon = await client();
  assert.equal(await anon.getServerStatus(), 'DOWN');
  await refused(anon.registerInstance(service, { ip: '10.8.0.3', port: 1 }));
  await refused(anon.getAllInstances(service, 'DEFAULT_GROUP', '', false));
  const wrong = await client('writer', 'wrong-pw');
  await refused(wrong.registerInstance(service, { ip: '10.8.0.3', port: 1 }));
  await refused(wrong.getAllInstances(service, 'DEFAULT_GROUP', '', false));
});

test('refused outside permissions', async () => {
  const r = await client('reader', 'reader-pw');
  const w = await client('writer', 'writer-pw');
  await refused(r.registerInstance(svc('ro'), { ip: '10.8.0.4', port: 1 }));
  const other = `other-${crypto.randomBytes(4).toString('hex')}`;
  await refused(w.registerInstance(other, { ip: '10.8.0.4', port: 1 }));
  await refused(w.getAllInstances(other, 'DEFAULT_GROUP', '', false));
});
