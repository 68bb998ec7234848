// The compatibility suite (suite.mjs) against a server with API keys configured: the SDK given `apiKey` (which it
// sends as `X-API-KEY`) does everything; without it, or with a wrong one, every method fails with the SDK's
// `ApiError` UNAUTHORIZED 401, and only the health check stays public.

import { describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';

import { ElizaClient } from '@elizaos/api-client';

import { assertApiError, defineSuite } from './suite.mjs';

const API_KEY = `ts-test-key-${randomUUID()}`;
const baseUrl = defineSuite({ apiKey: API_KEY });

describe('a server with API keys refuses the SDK without its key', { timeout: 60_000 }, () => {
  for (const [what, apiKey] of [['no apiKey', undefined], ['a wrong apiKey', 'not-the-key']]) {
    test(`${what}: UNAUTHORIZED 401 on every sessions method but the health check`, async () => {
      const client = new ElizaClient({ baseUrl: baseUrl(), apiKey });
      const id = randomUUID();
      await assertApiError(client.sessions.createSession({ agentId: randomUUID(), userId: randomUUID() }), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.getSession(id), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.sendMessage(id, { content: 'hi' }), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.sendMessageSync(id, { content: 'hi' }), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.getMessages(id), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.listSessions(), 'UNAUTHORIZED', 401);
      await assertApiError(client.sessions.deleteSession(id), 'UNAUTHORIZED', 401);
      const health = await client.sessions.checkHealth();
      assert.equal(health.status, 'healthy');
    });
  }
});
