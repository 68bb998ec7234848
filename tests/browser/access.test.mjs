// Access control as a browser meets it, in a real headless Chromium (CHROMIUM, default /usr/bin/chromium):
// - a page on an origin listed in CORS_ORIGIN runs the README's own snippet with a session token only (events over
//   EventSource with `?access_token=`, a message with `Authorization: Bearer`), and can read the 403 it gets on
//   anything beyond its session;
// - a page on any other origin is stopped by the browser (no CORS headers for it);
// - Swagger UI's Authorize button takes the API key and "Try it out" then succeeds: listing agents, and creating a
//   session with the demo agent (201).

import { after, before, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, readFileSync, rmSync } from 'node:fs';
import http from 'node:http';
import { tmpdir } from 'node:os';
import { dirname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';

import { startServer, stopServer } from '../server.mjs';
import { launchBrowser, WAIT_MS, withPage } from './support.mjs';

const HERE = dirname(fileURLToPath(import.meta.url));
const KEY = `browser-key-${process.pid}-${Date.now()}`;
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
let demoAgent;
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
  ({ baseUrl: apiUrl, agentId: demoAgent } = await api.ready);
  browser = await launchBrowser();
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
  await withPage(browser, 'cors-allowed-origin', async (page) => {
    await page.goto(allowed.origin);
    await page.waitForFunction(() => window.results?.done && window.results.seen.length >= 2, null, { timeout: WAIT_MS });
    const results = await page.evaluate(() => window.results);
    assert.equal(results.error, undefined);
    assert.deepEqual(results.seen.slice(0, 2), ['Hello!', 'Echo: Hello!'], 'the message and the reply arrive over EventSource');
    assert.deepEqual(results.agents, [403, 'FORBIDDEN']);
    assert.deepEqual(results.elsewhere, [403, 'FORBIDDEN']);
    assert.equal(results.own[0], 200);
    assert.match(results.own[1] ?? '', /^\d+$/, 'the page can read RateLimit-Remaining');
  });
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
  await withPage(browser, 'cors-other-origin', async (page) => {
    await page.goto(other.origin);
    await page.waitForFunction(() => window.outcome !== undefined, null, { timeout: WAIT_MS });
    assert.equal(await page.evaluate(() => window.outcome), 'TypeError', 'the fetch fails: no CORS for this origin');
  });
});

/** Opens operation `id` of Swagger UI and presses "Try it out". */
async function tryOut(page, id) {
  const op = page.locator(`#operations-${id}`);
  await op.locator('.opblock-summary').click();
  await op.locator('button.try-out__btn').click();
  return op;
}

/** Executes the opened operation and returns the status shown in its response panel. */
async function execute(op) {
  await op.locator('button.execute').click();
  const status = op.locator('.live-responses-table tbody .response-col_status').first();
  await status.waitFor({ timeout: WAIT_MS });
  return (await status.innerText()).trim();
}

test("Swagger UI's Authorize button takes the API key; Try it out then lists agents and creates a session", { timeout: 60_000 }, async () => {
  await withPage(browser, 'docs-authorize-try-it-out', async (page) => {
    await page.goto(`${apiUrl}/docs`);
    await page.click('button.authorize');
    const keyForm = page.locator('.auth-container', { hasText: 'X-API-KEY' });
    await keyForm.locator('input').fill(KEY);
    await keyForm.locator('button.authorize').click();
    await page.click('button.btn-done');

    const list = await tryOut(page, 'Agents-listAgents');
    assert.equal(await execute(list), '200');
    assert.match(await list.locator('.curl-command').innerText(), /X-API-KEY/);

    const create = await tryOut(page, 'Sessions-createSession');
    const userId = crypto.randomUUID();
    await create
      .locator('textarea.body-param__text')
      .fill(JSON.stringify({ agentId: demoAgent, userId, metadata: { platform: 'swagger' } }, null, 2));
    assert.equal(await execute(create), '201');
    const body = JSON.parse(await create.locator('.live-responses-table .response-col_description pre').first().innerText());
    assert.equal(body.agentId, demoAgent);
    assert.equal(body.userId, userId);
    assert.ok(body.sessionToken, 'the response panel shows the session token');
  });
});
