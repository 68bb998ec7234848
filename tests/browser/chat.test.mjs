// The web chat page (`/chat`) in a real headless Chromium, as a person uses it:
// - on a server without keys it opens ready to chat with the demo agent: type, press Enter, read the echo;
//   Shift+Enter adds a line, markup is shown as text, renew and end work;
// - on a server with a key it asks for the key (a wrong one is refused readably), keeps it in the tab's
//   sessionStorage only, then chats;
// - `/chat#session=…&token=…` opens a session created by a backend with its key, chats with the token only, shows
//   the events stream's expiry warning, renews, and ends the session;
// - on a phone-sized screen it fits, and nothing on the page breaks its Content-Security-Policy.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { startServer, stopServer } from '../server.mjs';
import { launchBrowser, WAIT_MS, withPage } from './support.mjs';

const KEY = `chat-key-${process.pid}-${Date.now()}`;

let browser;
const servers = [];

/** A server with `env`, on a data directory of its own; stopped after the suite. */
async function server(env) {
  const dataDir = mkdtempSync(join(tmpdir(), 'agent-sessions-chat-'));
  const started = startServer(dataDir, { env });
  servers.push({ started, dataDir });
  return started.ready;
}

before(async () => {
  browser = await launchBrowser();
});

after(async () => {
  await browser?.close();
  for (const { started, dataDir } of servers) {
    await stopServer(started.child);
    rmSync(dataDir, { recursive: true, force: true });
  }
});

/** Waits until the page's message box can be typed into (a session is open and its events stream too). */
async function readyToChat(page) {
  await page.locator('#message:enabled').waitFor({ timeout: WAIT_MS });
}

/** Types `text` into the message box, presses Enter, and waits for the echo agent's reply. */
async function chat(page, text) {
  await page.locator('#message').fill(text);
  await page.locator('#message').press('Enter');
  const reply = page.locator('#messages li.message.agent', { hasText: `Echo: ${text}` });
  await reply.waitFor({ timeout: WAIT_MS });
  return reply;
}

/** Fails on any Content-Security-Policy violation the page reported. */
function assertNoCspViolation(console) {
  const violations = console.filter((line) => /Content Security Policy/i.test(line));
  assert.deepEqual(violations, [], 'nothing on the page breaks its Content-Security-Policy');
}

async function sessionOf(baseUrl, sessionId, headers = {}) {
  return fetch(`${baseUrl}/api/messaging/sessions/${sessionId}`, { headers });
}

describe('a server without keys', () => {
  let baseUrl;
  let agentId;

  before(async () => {
    ({ baseUrl, agentId } = await server({}));
  });

  test('the page opens ready to chat with the demo agent: type, Enter, the reply', { timeout: 60_000 }, async () => {
    await withPage(browser, 'chat-open-server', async (page, console) => {
      await page.goto(`${baseUrl}/chat`);
      await readyToChat(page);
      assert.equal(await page.locator('#agent').inputValue(), agentId, 'the demo agent is chosen');
      assert.equal(await page.evaluate(() => document.activeElement?.id), 'message', 'the message box has focus');
      assert.ok(await page.locator('#api-key').isHidden(), 'no key is asked for');

      await chat(page, 'hello from the browser');
      const user = page.locator('#messages li.message.user', { hasText: 'hello from the browser' });
      assert.equal(await user.count(), 1, 'the message shows once');
      assert.equal(await page.locator('#messages li.message.agent').count(), 1, 'the reply shows once');
      assert.equal(await page.locator('#message').inputValue(), '', 'the message box is emptied');
      assert.match(await page.locator('#time-left').innerText(), /^\d+:\d{2}(:\d{2})?$/, 'the time left shows');
      assertNoCspViolation(console);
    });
  });

  test('Shift+Enter adds a line, markup stays text, renew and end work', { timeout: 60_000 }, async () => {
    await withPage(browser, 'chat-open-server-actions', async (page) => {
      await page.goto(`${baseUrl}/chat`);
      await readyToChat(page);
      const box = page.locator('#message');
      await box.pressSequentially('first line');
      await box.press('Shift+Enter');
      await box.pressSequentially('second line');
      assert.equal(await box.inputValue(), 'first line\nsecond line', 'Shift+Enter adds a line, sends nothing');
      assert.equal(await page.locator('#messages li.message').count(), 0);
      await box.press('Enter');
      await page
        .locator('#messages li.message.agent', { hasText: 'second line' })
        .waitFor({ timeout: WAIT_MS });

      const markup = '<img src=x onerror="window.injected=1"><b>bold</b>';
      await chat(page, markup);
      assert.equal(await page.locator('#messages b, #messages img').count(), 0, 'markup is not rendered');
      assert.equal(await page.evaluate(() => window.injected), undefined);

      const sessionId = (await page.locator('#status').innerText()).match(/[0-9a-f-]{36}/)?.[0];
      assert.ok(sessionId, 'the status names the session');
      await page.getByRole('button', { name: 'Renew', exact: true }).click();
      await page.locator('#status', { hasText: 'Session renewed.' }).waitFor({ timeout: WAIT_MS });

      await page.getByRole('button', { name: 'End session' }).click();
      await page.locator('#messages li.notice', { hasText: 'Session ended.' }).waitFor({ timeout: WAIT_MS });
      assert.ok(await box.isDisabled(), 'nothing more can be sent');
      assert.equal((await sessionOf(baseUrl, sessionId)).status, 404, 'the session is gone');
      // A new session is one click away.
      await page.getByRole('button', { name: 'New session' }).click();
      await readyToChat(page);
      await chat(page, 'again');
    });
  });

  test('on a phone-sized screen the page fits and chats', { timeout: 60_000 }, async () => {
    await withPage(
      browser,
      'chat-phone',
      async (page) => {
        await page.goto(`${baseUrl}/chat`);
        await readyToChat(page);
        await chat(page, 'small screen');
        const overflow = await page.evaluate(() => document.documentElement.scrollWidth - window.innerWidth);
        assert.ok(overflow <= 0, `no sideways scrolling (${overflow} px too wide)`);
      },
      { viewport: { width: 360, height: 640 } },
    );
  });
});

describe('a server with an API key', () => {
  let baseUrl;
  let agentId;

  before(async () => {
    ({ baseUrl, agentId } = await server({ API_KEYS: KEY }));
  });

  test('the page asks for the key, refuses a wrong one, then chats', { timeout: 60_000 }, async () => {
    await withPage(browser, 'chat-with-key', async (page, console) => {
      await page.goto(`${baseUrl}/chat`);
      const key = page.getByLabel('API key');
      await key.waitFor({ timeout: WAIT_MS });
      assert.ok(await page.locator('#message').isHidden(), 'no chat before the key');

      await key.fill('not-the-key');
      await key.press('Enter');
      await page.locator('#error', { hasText: '401' }).waitFor({ timeout: WAIT_MS });
      await key.waitFor({ timeout: WAIT_MS });

      await key.fill(KEY);
      await key.press('Enter');
      await readyToChat(page);
      assert.equal(await page.locator('#agent').inputValue(), agentId);
      assert.ok(await page.locator('#error').isHidden(), 'the earlier error is cleared');
      await chat(page, 'with a key');
      const stored = await page.evaluate(() => ({
        session: Object.values({ ...sessionStorage }),
        local: localStorage.length,
      }));
      assert.ok(stored.session.includes(KEY), 'the key is kept in sessionStorage');
      assert.equal(stored.local, 0, 'nothing is kept in localStorage');
      assertNoCspViolation(console);
    });
  });

  test('a link with a session token opens that session: chat, warning, renew, end', { timeout: 60_000 }, async () => {
    const created = await fetch(`${baseUrl}/api/messaging/sessions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-KEY': KEY },
      body: JSON.stringify({ agentId, userId: crypto.randomUUID() }),
    });
    assert.equal(created.status, 201);
    const session = await created.json();
    const { sessionId, sessionToken } = session;
    await withPage(browser, 'chat-token-link', async (page, console) => {
      await page.goto(`${baseUrl}/chat#session=${sessionId}&token=${encodeURIComponent(sessionToken)}`);
      await readyToChat(page);
      assert.ok(await page.locator('#api-key').isHidden(), 'no key is asked for');
      assert.match(await page.locator('#status').innerText(), new RegExp(sessionId));
      await chat(page, 'over a link');

      // The backend widens the warning window past the time left: the events stream's warning shows.
      const patched = await fetch(`${baseUrl}/api/messaging/sessions/${sessionId}/timeout`, {
        method: 'PATCH',
        headers: { 'Content-Type': 'application/json', 'X-API-KEY': KEY },
        body: JSON.stringify({ warningThresholdMinutes: 60 }),
      });
      assert.equal(patched.status, 200);
      const warning = page.locator('#warning');
      await warning.waitFor({ state: 'visible', timeout: WAIT_MS });
      assert.match(await warning.innerText(), /expires in about \d+ minutes/);
      await page.getByRole('button', { name: 'Renew now' }).click();
      await page.locator('#status', { hasText: 'Session renewed.' }).waitFor({ timeout: WAIT_MS });
      assert.ok(await warning.isHidden());

      await page.getByRole('button', { name: 'End session' }).click();
      await page.locator('#messages li.notice', { hasText: 'Session ended.' }).waitFor({ timeout: WAIT_MS });
      assert.equal((await sessionOf(baseUrl, sessionId, { 'X-API-KEY': KEY })).status, 404, 'the session is gone');
      assertNoCspViolation(console);
    });
  });

  test('a link to a session that is gone says so', { timeout: 60_000 }, async () => {
    const created = await fetch(`${baseUrl}/api/messaging/sessions`, {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', 'X-API-KEY': KEY },
      body: JSON.stringify({ agentId, userId: crypto.randomUUID() }),
    });
    const { sessionId, sessionToken } = await created.json();
    const deleted = await fetch(`${baseUrl}/api/messaging/sessions/${sessionId}`, {
      method: 'DELETE',
      headers: { 'X-API-KEY': KEY },
    });
    assert.equal(deleted.status, 200);
    await withPage(browser, 'chat-token-link-gone', async (page) => {
      await page.goto(`${baseUrl}/chat#session=${sessionId}&token=${encodeURIComponent(sessionToken)}`);
      await page.locator('#error', { hasText: '404' }).waitFor({ timeout: WAIT_MS });
      assert.ok(await page.locator('#message').isDisabled());
    });
  });
});
