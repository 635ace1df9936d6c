// The web console in a real browser (Debian's chromium, headless, through playwright-core),
// against a 3-node nacelle cluster on 127.0.0.1-3 (started here; NACELLE_BIN).
//
//  1. 2,000 filler services (persistent instances, through Raft) and one target service with
//     two instances registered by the official Node SDK (`nacos` 2.6, HTTP + beats), and a
//     second SDK client on another node subscribing to it (UDP push, polling as fallback);
//  2. the browser opens /nacos/ on node 1, finds the target by search, opens it, sets one
//     instance's weight to 7 and takes the other offline;
//  3. the edits are checked through the HTTP API and in the SDK subscriber's listener;
//  4. the namespaces, metrics and cluster pages are opened; node 3 is killed (SIGKILL) and
//     the cluster page must show it DOWN.
// Every page is screenshotted into CONSOLE_SHOTS.

import { test, after } from 'node:test';
import assert from 'node:assert/strict';
import { spawn } from 'node:child_process';
import { mkdtempSync, openSync, readFileSync } from 'node:fs';
import { join } from 'node:path';
import os from 'node:os';
import net from 'node:net';
import dgram from 'node:dgram';
import crypto from 'node:crypto';
import { chromium } from 'playwright-core';
import nacos from 'nacos';

const { NacosNamingClient } = nacos;
const BIN = process.env.NACELLE_BIN;
const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const SHOTS = process.env.CONSOLE_SHOTS || mkdtempSync(join(os.tmpdir(), 'nacelle-console-shots-'));
const FILLERS = Number(process.env.CONSOLE_SERVICES || 2000);
const HOSTS = ['127.0.0.1', '127.0.0.2', '127.0.0.3'];
const WORK = mkdtempSync(join(os.tmpdir(), 'nacelle-console-'));

const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const procs = [];
const clients = [];
let browser;

after(async () => {
  await Promise.all(clients.map((c) => c.close().catch(() => {})));
  if (browser) await browser.close().catch(() => {});
  for (const p of procs) if (p.exitCode === null) p.kill('SIGKILL');
});

async function waitUntil(f, ms, what) {
  const deadline = Date.now() + ms;
  let last;
  for (;;) {
    try {
      const v = await f();
      if (v) return v;
    } catch (e) {
      last = e;
    }
    if (Date.now() > deadline) throw new Error(`timed out waiting for ${what}${last ? ': ' + last.message : ''}`);
    await sleep(200);
  }
}

function tcpFree(host, port) {
  return new Promise((res) => {
    const s = net.createServer();
    s.once('error', () => res(false));
    s.listen(port, host, () => s.close(() => res(true)));
  });
}

function udpFree(host, port) {
  return new Promise((res) => {
    const s = dgram.createSocket('udp4');
    s.once('error', () => { s.close(); res(false); });
    s.bind(port, host, () => s.close(() => res(true)));
  });
}

async function freePort() {
  for (let i = 0; i < 200; i++) {
    const p = 20000 + Math.floor(Math.random() * 20000);
    let ok = true;
    for (const h of HOSTS) {
      ok = ok && (await tcpFree(h, p)) && (await tcpFree(h, p + 1000)) && (await udpFree(h, p + 1001));
    }
    if (ok) return p;
  }
  throw new Error('no free ports');
}

async function http(method, host, port, path, params = {}) {
  const q = new URLSearchParams(params).toString();
  const r = await fetch(`http://${host}:${port}/nacos${path}${q ? '?' + q : ''}`, { method });
  const text = await r.text();
  if (!r.ok) throw new Error(`${method} ${path}: ${r.status} ${text}`);
  try {
    return JSON.parse(text);
  } catch {
    return text;
  }
}

async function pool(n, limit, f) {
  let next = 0;
  const worker = async () => {
    while (next < n) {
      const i = next++;
      await f(i);
    }
  };
  await Promise.all(Array.from({ length: limit }, worker));
}

test('the console in a real browser: search, edit an instance, see it pushed; a killed node shows DOWN', { timeout: 200_000 }, async () => {
  assert.ok(BIN, 'NACELLE_BIN must name the nacelle binary');
  const P = await freePort();
  const members = HOSTS.map((h) => `${h}:${P}`).join(',');
  HOSTS.forEach((h, i) => {
    const out = openSync(join(WORK, `node${i + 1}.log`), 'w');
    procs.push(spawn(BIN, ['--http-port', String(P), '--bind', h, '--members', members, '--insecure',
      '--cores', '1', '--data-dir', join(WORK, `data${i + 1}`)], { stdio: ['ignore', out, out] }));
  });
  const logs = () => HOSTS.map((_, i) => `--- node${i + 1}\n` + readFileSync(join(WORK, `node${i + 1}.log`), 'utf8').split('\n').slice(-15).join('\n')).join('\n');
  try {
    await waitUntil(async () => {
      for (const h of HOSTS) {
        const m = await http('GET', h, P, '/v1/ns/operator/metrics');
        if (m.status !== 'UP') return false;
      }
      return true;
    }, 60_000, 'the three nodes UP');
  } catch (e) {
    throw new Error(`${e.message}\n${logs()}`);
  }
  console.log(`# cluster up on port ${P}; screenshots in ${SHOTS}; logs in ${WORK}`);

  // 1. Fillers: persistent instances, probed (TCP) on node 1's HTTP port, so healthy.
  const t0 = Date.now();
  await pool(FILLERS, 24, (i) => http('POST', HOSTS[i % 3], P, '/v1/ns/instance', {
    serviceName: `filler-${String(i).padStart(5, '0')}`, groupName: 'FILL', ip: '127.0.0.1', port: P, ephemeral: false,
  }));
  console.log(`# ${FILLERS} filler services registered in ${Date.now() - t0} ms`);

  const target = `console-target-${crypto.randomBytes(4).toString('hex')}`;
  const logger = { debug() {}, info() {}, warn() {}, error() {} };
  const owner = new NacosNamingClient({ logger, serverList: `${HOSTS[0]}:${P}`, namespace: 'public' });
  const watcher = new NacosNamingClient({ logger, serverList: `${HOSTS[1]}:${P}`, namespace: 'public' });
  clients.push(owner, watcher);
  await owner.ready();
  await watcher.ready();
  await owner.registerInstance(target, { ip: '127.0.0.1', port: 7001, weight: 1, metadata: { color: 'blue' } });
  await owner.registerInstance(target, { ip: '127.0.0.1', port: 7002, weight: 1, metadata: { color: 'green' } });
  let pushed = [];
  watcher.subscribe(target, (hosts) => { pushed = hosts; });
  await waitUntil(() => pushed.length === 2, 20_000, 'the subscriber to see both instances');
  // The SDK listens for UDP pushes: node 2 lists it as a UDP subscriber, node 1 knows none.
  const subs = await waitUntil(async () => {
    const r = await http('GET', HOSTS[1], P, '/v1/ns/service/subscribers', { serviceName: target });
    return r.count >= 1 && r;
  }, 15_000, 'node 2 to list the subscriber');
  assert.equal(subs.subscribers[0].type, 'udp');
  assert.equal(subs.subscribers[0].serviceName, `DEFAULT_GROUP@@${target}`);
  assert.equal((await http('GET', HOSTS[0], P, '/v1/ns/service/subscribers', { serviceName: target })).count, 0);

  // 2. The browser.
  browser = await chromium.launch({ executablePath: CHROMIUM, args: ['--no-sandbox', '--disable-dev-shm-usage'] });
  const page = await browser.newPage({ viewport: { width: 1360, height: 900 } });
  const pageErrors = [];
  page.on('pageerror', (e) => pageErrors.push(String(e)));
  const shot = async (name) => page.screenshot({ path: join(SHOTS, `${name}.png`), fullPage: true });
  const base = `http://${HOSTS[0]}:${P}/nacos/`;
  try {
    await page.goto(base);
    await page.waitForSelector('[data-testid=service-count]');
    const count = Number((await page.textContent('[data-testid=service-count]')).split(' ')[0]);
    assert.ok(count >= FILLERS + 1, `the list counts every service (${count})`);
    await shot('01-services');

    await page.fill('[data-testid=search-name]', target);
    await page.click('[data-testid=search]');
    const row = `tr[data-service="DEFAULT_GROUP@@${target}"]`;
    await page.waitForSelector(row);
    assert.equal(await page.locator('table[data-testid=services] tbody tr').count(), 1, 'the search finds the target only');
    await shot('02-search');
    await page.click(`${row} a`);
    await page.waitForSelector('table[data-testid=instances] tr[data-instance="127.0.0.1:7002"]');
    await shot('03-service');

    // Metadata filter (server side).
    await page.fill('[data-testid=metadata-filter]', 'color=blue');
    await page.click('[data-testid=apply-filter]');
    await waitUntil(async () => (await page.locator('table[data-testid=instances] tbody tr').count()) === 1, 10_000, 'the metadata filter');
    await page.fill('[data-testid=metadata-filter]', '');
    await page.click('[data-testid=apply-filter]');
    await page.waitForSelector('tr[data-instance="127.0.0.1:7002"]');

    const edited = Date.now();
    await page.fill('tr[data-instance="127.0.0.1:7001"] [data-testid=weight]', '7');
    await page.click('tr[data-instance="127.0.0.1:7001"] [data-testid=save-weight]');
    await page.waitForSelector('[data-testid=msg-ok]');
    await page.click('tr[data-instance="127.0.0.1:7002"] [data-testid=offline]');
    await page.waitForFunction(() => document.querySelector('tr[data-instance="127.0.0.1:7002"] [data-testid=enabled]')?.textContent === 'offline');
    await shot('04-service-edited');

    // 3a. Through the HTTP API, on every node.
    for (const h of HOSTS) {
      await waitUntil(async () => {
        const res = await http('GET', h, P, '/v1/ns/catalog/instances', { serviceName: target });
        const a = res.list.find((i) => i.port === 7001);
        const b = res.list.find((i) => i.port === 7002);
        return a && a.weight === 7 && a.enabled && b && b.enabled === false;
      }, 10_000, `node ${h} to show the edits`);
    }
    const listed = await http('GET', HOSTS[2], P, '/v1/ns/instance/list', { serviceName: target });
    assert.deepEqual(listed.hosts.map((x) => [x.port, x.weight]), [[7001, 7]], 'instance/list: the offline one is not routed to');

    // 3b. In the SDK subscriber (on node 2).
    await waitUntil(() => pushed.length === 1 && pushed[0].port === 7001 && pushed[0].weight === 7, 20_000, 'the subscriber to get the edits');
    console.log(`# the subscriber saw both edits ${Date.now() - edited} ms after the first click`);

    // The edits outlive the SDK's heartbeats (which carry the registered weight).
    await sleep(6000);
    const again = await http('GET', HOSTS[0], P, '/v1/ns/catalog/instances', { serviceName: target });
    assert.equal(again.list.find((i) => i.port === 7001).weight, 7, 'a beat does not undo the weight');

    // 4. Other pages.
    await page.goto(base + '#/namespaces');
    await page.waitForSelector('table[data-testid=namespaces]');
    await shot('05-namespaces');
    await page.goto(base + '#/metrics');
    await page.waitForSelector('[data-testid=chart-requests]');
    await sleep(2500);
    await shot('06-metrics');
    await page.goto(base + '#/cluster');
    await page.waitForSelector('table[data-testid=members]');
    await waitUntil(async () => (await page.locator('[data-testid=state]').allTextContents()).filter((s) => s === 'UP').length === 3, 20_000, 'three members UP');
    await shot('07-cluster');

    procs[2].kill('SIGKILL');
    const killed = Date.now();
    const down = `tr[data-node="${HOSTS[2]}:${P}"] [data-testid=state]`;
    await waitUntil(async () => (await page.textContent(down)) === 'DOWN', 60_000, 'the killed node to show DOWN');
    console.log(`# the cluster page showed the killed node DOWN ${Date.now() - killed} ms after SIGKILL`);
    await shot('08-cluster-node-down');
    assert.deepEqual(pageErrors, [], 'no script error in the page');
  } catch (e) {
    await shot('failure').catch(() => {});
    const views = [];
    for (const h of HOSTS) {
      views.push(`${h}: ` + JSON.stringify(await http('GET', h, P, '/v1/ns/catalog/instances', { serviceName: target })
        .then((r) => r.list.map((i) => [i.port, i.weight, i.enabled]), (err) => err.message)));
    }
    throw new Error(`${e.message}\n${views.join('\n')}\n${logs()}`);
  }
});
