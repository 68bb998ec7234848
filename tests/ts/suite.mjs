// Compatibility suite: the official elizaOS TypeScript SDK (@elizaos/api-client, pinned in package.json) drives a
// real agent-sessions-server, unchanged. `defineSuite` declares it: `sessions.test.mjs` runs it against an open
// server (no API key, as on loopback), `sessions-api-key.test.mjs` against a server with API keys, the SDK given
// `apiKey` (it sends `X-API-KEY`). Every `client.sessions` method must resolve to the value its TypeScript type
// promises, and every error must arrive as the SDK's `ApiError` with our code and status. The server is the real
// binary, started by ../server.mjs.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';

import { ApiError, ElizaClient } from '@elizaos/api-client';

import { startServer, stopServer } from '../server.mjs';

const TEST_TIMEOUT_MS = 30_000;

const UUID_RE = /^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$/i;

// ---------------------------------------------------------------------------------------------------------------
// Helpers
// ---------------------------------------------------------------------------------------------------------------

/** Asserts `promise` rejects with the SDK's ApiError carrying `code` and `status`. */
export async function assertApiError(promise, code, status) {
  await assert.rejects(promise, (err) => {
    assert.ok(err instanceof ApiError, `expected an ApiError, got ${err?.constructor?.name}: ${err?.message}`);
    assert.equal(err.code, code, `error code (message: ${err.message})`);
    assert.equal(err.status, status, `HTTP status (code ${err.code}, message: ${err.message})`);
    assert.equal(typeof err.message, 'string');
    assert.ok(err.message.length > 0, 'error message is not empty');
    return true;
  });
}

/** The SDK types timestamps as `Date` but passes the JSON through, so they arrive as ISO-8601 strings. */
function assertTimestamp(value, what) {
  assert.equal(typeof value, 'string', `${what} is a string (got ${typeof value})`);
  assert.match(value, /^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?(Z|[+-]\d{2}:\d{2})$/, `${what} is ISO-8601`);
  assert.ok(!Number.isNaN(new Date(value).getTime()), `${what} parses as a date`);
}

function assertUuid(value, what) {
  assert.equal(typeof value, 'string', `${what} is a string`);
  assert.match(value, UUID_RE, `${what} is a uuid`);
}

function assertMessage(message, what) {
  assertUuid(message.id, `${what}.id`);
  assert.equal(typeof message.content, 'string', `${what}.content`);
  assertUuid(message.authorId, `${what}.authorId`);
  assert.equal(typeof message.isAgent, 'boolean', `${what}.isAgent`);
  assertTimestamp(message.createdAt, `${what}.createdAt`);
  assert.equal(typeof message.metadata, 'object', `${what}.metadata`);
  assert.notEqual(message.metadata, null, `${what}.metadata`);
}

const ms = (message) => new Date(message.createdAt).getTime();
const ids = (messages) => messages.map((m) => m.id);

// ---------------------------------------------------------------------------------------------------------------
// The tests
// ---------------------------------------------------------------------------------------------------------------

/**
 * Declares the whole suite against a fresh server; with `apiKey`, the server requires it and the SDK sends it.
 * Returns a function giving the server's base URL once it runs (for tests of refusals).
 */
export function defineSuite({ apiKey } = {}) {
  let dataDir;
  let server;
  let agentId;
  let client;
  let baseUrl;

  before(async () => {
    dataDir = mkdtempSync(join(tmpdir(), 'agent-sessions-ts-'));
    server = startServer(dataDir, { env: { API_KEYS: apiKey ?? '' } });
    const ready = await server.ready;
    agentId = ready.agentId;
    client = new ElizaClient({ baseUrl: ready.baseUrl, apiKey });
    baseUrl = ready.baseUrl;
  });

  after(async () => {
    if (server) await stopServer(server.child);
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  describe('client.sessions against agent-sessions-server', { timeout: TEST_TIMEOUT_MS * 4 }, () => {
    const userId = randomUUID();
    const metadata = { platform: 'web', username: 'ada', vip: true, level: 3 };
    let sessionId;
    let createdAt;

    test('checkHealth resolves to {status: "healthy", activeSessions, timestamp}', { timeout: TEST_TIMEOUT_MS }, async () => {
      const health = await client.sessions.checkHealth();
      assert.equal(health.status, 'healthy');
      assert.equal(typeof health.activeSessions, 'number');
      assert.ok(Number.isInteger(health.activeSessions) && health.activeSessions >= 0);
      assertTimestamp(health.timestamp, 'timestamp');
    });

    test('createSession resolves to the new session', { timeout: TEST_TIMEOUT_MS }, async () => {
      const created = await client.sessions.createSession({ agentId, userId, metadata });
      assertUuid(created.sessionId, 'sessionId');
      assert.equal(created.agentId, agentId);
      assert.equal(created.userId, userId);
      assertTimestamp(created.createdAt, 'createdAt');
      assert.deepEqual(created.metadata, metadata);
      sessionId = created.sessionId;
      createdAt = created.createdAt;

      const health = await client.sessions.checkHealth();
      assert.ok(health.activeSessions >= 1, 'the new session counts as active');
    });

    test('getSession resolves to the same session', { timeout: TEST_TIMEOUT_MS }, async () => {
      const session = await client.sessions.getSession(sessionId);
      assert.equal(session.sessionId, sessionId);
      assert.equal(session.agentId, agentId);
      assert.equal(session.userId, userId);
      assert.equal(session.createdAt, createdAt);
      assertTimestamp(session.lastActivity, 'lastActivity');
      assert.ok(new Date(session.lastActivity) >= new Date(session.createdAt), 'lastActivity >= createdAt');
      assert.deepEqual(session.metadata, metadata);
    });

    test('sendMessage (websocket) resolves to {success, userMessage, sessionStatus}', { timeout: TEST_TIMEOUT_MS }, async () => {
      const response = await client.sessions.sendMessage(sessionId, { content: 'first', transport: 'websocket' });
      assert.notEqual(response, undefined, 'sendMessage resolves to a value, not undefined');
      assert.equal(response.success, true);

      const { userMessage } = response;
      assertUuid(userMessage.id, 'userMessage.id');
      assert.equal(userMessage.content, 'first');
      assert.equal(userMessage.authorId, userId);
      assertTimestamp(userMessage.createdAt, 'userMessage.createdAt');
      assert.equal(response.agentResponse, undefined, 'no agentResponse with the websocket transport');

      const status = response.sessionStatus;
      assert.ok(status, 'sessionStatus is present');
      assertTimestamp(status.expiresAt, 'sessionStatus.expiresAt');
      assert.ok(new Date(status.expiresAt).getTime() > Date.now(), 'expiresAt is in the future');
      assert.equal(typeof status.renewalCount, 'number');
      assert.ok(status.renewalCount >= 1, 'the message renewed the session');
      assert.equal(status.wasRenewed, true);
      assert.equal(status.isNearExpiration, false);
    });

    test('sendMessageSync resolves with the echo agent\'s reply; the earlier websocket reply is stored too', { timeout: TEST_TIMEOUT_MS }, async () => {
      const prior = await client.sessions.getSession(sessionId);
      const response = await client.sessions.sendMessageSync(sessionId, { content: 'second' });
      assert.notEqual(response, undefined, 'sendMessageSync resolves to a value, not undefined');
      assert.equal(response.success, true);
      assert.equal(response.userMessage.content, 'second');
      assert.equal(response.userMessage.authorId, userId);
      assert.ok(response.agentResponse, 'agentResponse is present with the http transport');
      assert.equal(response.agentResponse.text, 'Echo: second');
      assert.equal(response.sessionStatus.wasRenewed, true);
      assert.equal(response.sessionStatus.isNearExpiration, false);
      assert.equal(response.sessionStatus.renewalCount, 2, 'two messages, two renewals');

      const afterSend = await client.sessions.getSession(sessionId);
      assert.ok(new Date(afterSend.lastActivity) >= new Date(prior.lastActivity), 'lastActivity moved forward');

      // Replies of one session are produced in order, so the websocket message's reply ("Echo: first") was stored
      // before the http reply we just received: no waiting needed.
      const { messages } = await client.sessions.getMessages(sessionId);
      const contents = messages.map((m) => m.content);
      assert.ok(contents.includes('Echo: first'), `websocket reply stored (got ${JSON.stringify(contents)})`);
      assert.ok(contents.includes('Echo: second'), `http reply stored (got ${JSON.stringify(contents)})`);
    });

    test('getMessages resolves to {messages, hasMore}: user messages and agent replies, newest first', { timeout: TEST_TIMEOUT_MS }, async () => {
      const page = await client.sessions.getMessages(sessionId);
      assert.ok(Array.isArray(page.messages), 'messages is an array');
      assert.equal(typeof page.hasMore, 'boolean');
      assert.equal(page.hasMore, false, 'the whole history fits in one default page');
      page.messages.forEach((m, i) => assertMessage(m, `messages[${i}]`));

      // Newest first. The websocket reply to "first" is produced in the background, so "second" may be stored
      // before or after "Echo: first"; what is fixed: messages in the order sent, replies in the same order, each
      // reply after its message, and "Echo: second" last (sendMessageSync resolved with it).
      const chronological = page.messages.map((m) => [m.content, m.isAgent]).reverse();
      assert.deepEqual(
        chronological.filter(([, isAgent]) => !isAgent),
        [['first', false], ['second', false]],
      );
      assert.deepEqual(
        chronological.filter(([, isAgent]) => isAgent),
        [['Echo: first', true], ['Echo: second', true]],
      );
      const at = (content) => chronological.findIndex(([c]) => c === content);
      assert.ok(at('first') < at('Echo: first'), 'a reply comes after its message');
      assert.deepEqual(chronological[chronological.length - 1], ['Echo: second', true]);
      for (const m of page.messages) {
        assert.equal(m.authorId, m.isAgent ? agentId : userId, `authorId of "${m.content}"`);
      }
      for (let i = 1; i < page.messages.length; i++) {
        assert.ok(ms(page.messages[i - 1]) >= ms(page.messages[i]), 'newest first');
      }
    });

    test('getMessages with {limit: 1} returns the newest message and hasMore: true', { timeout: TEST_TIMEOUT_MS }, async () => {
      const all = (await client.sessions.getMessages(sessionId)).messages;
      const page = await client.sessions.getMessages(sessionId, { limit: 1 });
      assert.equal(page.messages.length, 1);
      assert.equal(page.messages[0].id, all[0].id);
      assert.equal(page.hasMore, true);
    });

    test('getMessages filters with {before: Date} and {after: epoch ms}', { timeout: TEST_TIMEOUT_MS }, async () => {
      const all = (await client.sessions.getMessages(sessionId)).messages;
      const newest = all[0];
      const oldest = all[all.length - 1];
      assert.ok(
        ms(newest) > ms(oldest),
        `the history spans more than one millisecond (${oldest.createdAt} .. ${newest.createdAt})`,
      );

      // `before` as a Date: the SDK sends its epoch milliseconds. Strictly older messages only.
      const beforeDate = new Date(newest.createdAt);
      const older = await client.sessions.getMessages(sessionId, { before: beforeDate });
      const expectedOlder = all.filter((m) => ms(m) < beforeDate.getTime());
      assert.ok(expectedOlder.length > 0);
      assert.deepEqual(ids(older.messages), ids(expectedOlder), 'before: exactly the older messages, newest first');
      assert.equal(older.hasMore, false);

      // `after` as epoch milliseconds. Strictly newer messages only.
      const afterMs = ms(oldest);
      const newer = await client.sessions.getMessages(sessionId, { after: afterMs });
      const expectedNewer = all.filter((m) => ms(m) > afterMs);
      assert.ok(expectedNewer.length > 0);
      assert.deepEqual(ids(newer.messages), ids(expectedNewer), 'after: exactly the newer messages, newest first');
      assert.equal(newer.hasMore, false);

      // Both bounds at once: the window between the oldest and the newest message.
      const between = await client.sessions.getMessages(sessionId, { after: afterMs, before: beforeDate });
      const expectedBetween = all.filter((m) => ms(m) > afterMs && ms(m) < beforeDate.getTime());
      assert.deepEqual(ids(between.messages), ids(expectedBetween), 'after + before: the window, newest first');
    });

    test('listSessions resolves to {sessions, total} including the session', { timeout: TEST_TIMEOUT_MS }, async () => {
      const list = await client.sessions.listSessions();
      assert.ok(Array.isArray(list.sessions), 'sessions is an array');
      assert.equal(typeof list.total, 'number');
      assert.ok(list.total >= 1);
      const mine = list.sessions.find((s) => s.sessionId === sessionId);
      assert.ok(mine, 'the session is listed');
      assert.equal(mine.agentId, agentId);
      assert.equal(mine.userId, userId);
      assertTimestamp(mine.createdAt, 'createdAt');
      assertTimestamp(mine.lastActivity, 'lastActivity');
      assert.deepEqual(mine.metadata, metadata);
    });

    test('deleteSession resolves to {success: true}; the session is gone afterwards', { timeout: TEST_TIMEOUT_MS }, async () => {
      const result = await client.sessions.deleteSession(sessionId);
      assert.notEqual(result, undefined, 'deleteSession resolves to a value, not undefined');
      assert.equal(result.success, true);

      await assertApiError(client.sessions.getSession(sessionId), 'SESSION_NOT_FOUND', 404);
      await assertApiError(client.sessions.getMessages(sessionId), 'SESSION_NOT_FOUND', 404);
      await assertApiError(client.sessions.sendMessage(sessionId, { content: 'anyone?' }), 'SESSION_NOT_FOUND', 404);
      await assertApiError(client.sessions.deleteSession(sessionId), 'SESSION_NOT_FOUND', 404);
      const list = await client.sessions.listSessions();
      assert.ok(!list.sessions.some((s) => s.sessionId === sessionId), 'the session is no longer listed');
    });
  });

  describe('errors arrive as the SDK\'s ApiError with our codes', { timeout: TEST_TIMEOUT_MS * 4 }, () => {
    test('createSession with an unknown agentId: AGENT_NOT_FOUND 404', { timeout: TEST_TIMEOUT_MS }, async () => {
      await assertApiError(
        client.sessions.createSession({ agentId: randomUUID(), userId: randomUUID() }),
        'AGENT_NOT_FOUND',
        404,
      );
    });

    test('createSession with a malformed agentId: VALIDATION_ERROR 400', { timeout: TEST_TIMEOUT_MS }, async () => {
      await assertApiError(
        client.sessions.createSession({ agentId: 'not-a-uuid', userId: randomUUID() }),
        'VALIDATION_ERROR',
        400,
      );
    });

    test('sendMessage with 5000 characters of content: VALIDATION_ERROR 400', { timeout: TEST_TIMEOUT_MS }, async () => {
      const { sessionId } = await client.sessions.createSession({ agentId, userId: randomUUID() });
      await assertApiError(
        client.sessions.sendMessage(sessionId, { content: 'x'.repeat(5000) }),
        'VALIDATION_ERROR',
        400,
      );
      // Nothing was stored.
      const page = await client.sessions.getMessages(sessionId);
      assert.deepEqual(page.messages, []);
      assert.equal(page.hasMore, false);
      assert.equal((await client.sessions.deleteSession(sessionId)).success, true);
    });

    test('getSession of an unknown id: SESSION_NOT_FOUND 404', { timeout: TEST_TIMEOUT_MS }, async () => {
      await assertApiError(client.sessions.getSession(randomUUID()), 'SESSION_NOT_FOUND', 404);
    });

    test('getSession of a malformed id: SESSION_NOT_FOUND 404 (never 400)', { timeout: TEST_TIMEOUT_MS }, async () => {
      await assertApiError(client.sessions.getSession('no-such-session'), 'SESSION_NOT_FOUND', 404);
    });
  });

  return () => baseUrl;
}
