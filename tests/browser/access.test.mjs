// Access control as a browser meets it, in a real headless Chromium (CHROMIUM, default /usr/bin/chromium):
// - a page on an origin listed in CORS_ORIGIN runs the README's own snippet with a session token only (events over
//   EventSource with `?access_token=`, a message with `Authorization: Bearer`), and can read the 403 it gets on
//   anything beyond its session;
// - a page on any other origin is stopped by the browser (no CORS headers for it);
// - Swagger UI's Authorize button takes the API key and "Try it out" then succeeds.

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { chromium } from 'playwright-core';

import { startServer, stopServer } from '../server.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const CHROMIUM = process.env.CHROMIUM ?? '/usr/bin/chromium';
const KEY = `browser-key-${process.pid}-${Date.now()}`;
const WAIT_MS = 15_000;
const DEMO_AGENT = '3c90c3cc-0d44-4b50-8888-8dd25736052a';

/** The README's browser snippet, verbatim: what a reader would paste into their page. */
function readmeSnippet() {
  const readme = readFileSync(resolve(HERE, '../../README.md'), 'utf8');
  const found = readme.match(/```js\n(\/\/ The page, with the token only:\n[\s\S]*?)```/);
  assert.ok(found, 'the README has the page snippet');
  return found[1];
}

/** A page server on 127.0.0.1 (another origin than the API: another port); `html` is set per test. */
async function pageServer() {
  let html = '';
  const server = http.createServer((_, res) => {
    res.setHeader('content-type', 'text/html; charset=utf-8');
    res.end(html);
  });
  await new Promise((ready) => server.listen(0, '127.0.0.1', ready));
  return {
    origin: `http://127.0.0.1:${server.address().port}`,
    serve: (page) => {
      html = page;
    },
    close: () => new Promise((done) => server.close(done)),
  };
}

let dataDir;
let api;
let apiUrl;
let allowed;
let other;
let browser;

async function backend(path, body) {
  const res = await fetch(apiUrl + path, {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', 'X-API-KEY': KEY },
    body: JSON.stringify(body),
  });
  assert.equal(res.status, 201, `${path}: ${res.status}`);
  return res.json();
}

before(async () => {
  allowed = await pageServer();
  other = await pageServer();
  dataDir = mkdtempSync(join(tmpdir(), 'agent-sessions-browser-'));
  api = startServer(dataDir, { env: { API_KEYS: KEY, CORS_ORIGIN: allowed.origin } });
  apiUrl = (await api.ready).baseUrl;
  browser = await chromium.launch({
    executablePath: CHROMIUM,
    args: [
      '--no-sandbox',
      '--disable-gpu',
      '--disable-quic',
      '--no-first-run',
      '--disable-background-networking',
      '--disable-component-update',
      '--disable-sync',
    ],
  });
});

after(async () => {
  await browser?.close();
  if (api) await stopServer(api.child);
  await allowed?.close();
  await other?.close();
  if (dataDir) rmSync(dataDir, { recursive: true, force: true });
});

/** A page that defines what the README snippet expects, runs it, then probes beyond its session. */
function chatPage(session, otherSession) {
  return `<!doctype html><html><body><script type="module">
const server = ${JSON.stringify(apiUrl)};
const sessionId = ${JSON.stringify(session.sessionId)};
const sessionToken = ${JSON.stringify(session.sessionToken)};
const seen = [];
window.results = { seen };
try {
  const log = console.log;
  console.log = (...args) => { seen.push(args.join(' ')); log(...args); };
${readmeSnippet()}
  const auth = { Authorization: 'Bearer ' + sessionToken };
  const agents = await fetch(server + '/api/agents', { headers: auth });
  window.results.agents = [agents.status, (await agents.json()).error.code];
  const elsewhere = await fetch(server + '/api/messaging/sessions/${otherSession.sessionId}', { headers: auth });
  window.results.elsewhere = [elsewhere.status, (await elsewhere.json()).error.code];
  const own = await fetch(server + '/api/messaging/sessions/' + sessionId, { headers: auth });
  window.results.own = [own.status, own.headers.get('RateLimit-Remaining')];
} catch (e) {
  window.results.error = String(e);
}
window.results.done = true;
</script></body></html>`;
}

test('a page on an allowed origin chats with its session token and is refused anything else', { timeout: 60_000 }, async () => {
  const session = await backend('/api/messaging/sessions', { agentId: DEMO_AGENT, userId: DEMO_AGENT });
  const otherSession = await backend('/api/messaging/sessions', { agentId: DEMO_AGENT, userId: DEMO_AGENT });
  allowed.serve(chatPage(session, otherSession));
  const page = await browser.newPage();
  await page.goto(allowed.origin);
  await page.waitForFunction(() => window.results?.done && window.results.seen.length >= 2, null, { timeout: WAIT_MS });
  const results = await page.evaluate(() => window.results);
  assert.equal(results.error, undefined);
  assert.deepEqual(results.seen.slice(0, 2), ['Hello!', 'Echo: Hello!'], 'the message and the reply arrive over EventSource');
  assert.deepEqual(results.agents, [403, 'FORBIDDEN']);
  assert.deepEqual(results.elsewhere, [403, 'FORBIDDEN']);
  assert.equal(results.own[0], 200);
  assert.match(results.own[1] ?? '', /^\d+$/, 'the page can read RateLimit-Remaining');
  await page.close();
});

test('a page on another origin is stopped by the browser', { timeout: 60_000 }, async () => {
  const session = await backend('/api/messaging/sessions', { agentId: DEMO_AGENT, userId: DEMO_AGENT });
  other.serve(`<!doctype html><html><body><script type="module">
try {
  await fetch(${JSON.stringify(`${apiUrl}/api/messaging/sessions/${session.sessionId}`)},
    { headers: { Authorization: 'Bearer ${session.sessionToken}' } });
  window.outcome = 'read';
} catch (e) {
  window.outcome = e.name;
}
</script></body></html>`);
  const page = await browser.newPage();
  await page.goto(other.origin);
  await page.waitForFunction(() => window.outcome !== undefined, null, { timeout: WAIT_MS });
  assert.equal(await page.evaluate(() => window.outcome), 'TypeError', 'the fetch fails: no CORS for this origin');
  await page.close();
});

test("Swagger UI's Authorize button takes the API key", { timeout: 60_000 }, async () => {
  const page = await browser.newPage();
  await page.goto(`${apiUrl}/docs`);
  await page.click('button.authorize');
  const keyForm = page.locator('.auth-container', { hasText: 'X-API-KEY' });
  await keyForm.locator('input').fill(KEY);
  await keyForm.locator('button.authorize').click();
  await page.click('button.btn-done');
  const op = page.locator('#operations-Agents-listAgents');
  await op.locator('.opblock-summary').click();
  await op.locator('button.try-out__btn').click();
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: WAIT_MS });
  assert.equal((await status.innerText()).trim(), '200');
  assert.match(await op.locator('.curl-command').innerText(), /X-API-KEY/);
  await page.close();
});
