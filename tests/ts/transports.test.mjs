// One exchange watched on the three real-time transports at once: the SSE events stream (fetch), the WebSocket
// feed (the `ws` package) and Socket.IO (`socket.io-client`, joined to the session's channel). A message sent over
// HTTP and a renewal must read the same everywhere: SSE and WebSocket carry the same events with the same ids,
// names and payloads, in the same order; Socket.IO's chunks, broadcast, completion and renewal carry the same
// reply id, text, chunks, creation time and expiry.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';

import { io } from 'socket.io-client';
import WebSocket from 'ws';

import { startServer, stopServer } from '../server.mjs';

const API_KEY = `transports-test-key-${randomUUID()}`;
const WAIT_MS = 15_000;

/** A queue of received items: `next()` resolves with the next one, or rejects after WAIT_MS. */
function inbox(what) {
  const items = [];
  const waiting = [];
  return {
    push(item) {
      const w = waiting.shift();
      if (w) w(item);
      else items.push(item);
    },
    next() {
      if (items.length) return Promise.resolve(items.shift());
      return new Promise((resolve, reject) => {
        const timer = setTimeout(() => reject(new Error(`nothing more on ${what} within ${WAIT_MS} ms`)), WAIT_MS);
        waiting.push((item) => {
          clearTimeout(timer);
          resolve(item);
        });
      });
    },
  };
}

async function http(baseUrl, method, path, body) {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

/** The SSE stream as `{id, event, data}` items (data parsed), comments skipped. */
async function openSse(baseUrl, sessionId) {
  const controller = new AbortController();
  const response = await fetch(`${baseUrl}/api/messaging/sessions/${sessionId}/events`, {
    headers: { 'x-api-key': API_KEY, accept: 'text/event-stream' },
    signal: controller.signal,
  });
  assert.equal(response.status, 200);
  const frames = inbox('the SSE stream');
  (async () => {
    const decoder = new TextDecoder();
    let buffer = '';
    try {
      for await (const bytes of response.body) {
        buffer += decoder.decode(bytes, { stream: true });
        let end;
        while ((end = buffer.indexOf('\n\n')) >= 0) {
          const block = buffer.slice(0, end);
          buffer = buffer.slice(end + 2);
          const frame = { id: null, event: 'message', data: '' };
          let hasData = false;
          for (const line of block.split('\n')) {
            if (line.startsWith(':')) continue;
            const colon = line.indexOf(':');
            const field = colon < 0 ? line : line.slice(0, colon);
            const value = colon < 0 ? '' : line.slice(colon + 1).replace(/^ /, '');
            if (field === 'id') frame.id = value;
            else if (field === 'event') frame.event = value;
            else if (field === 'data') {
              frame.data += (hasData ? '\n' : '') + value;
              hasData = true;
            }
          }
          if (hasData) frames.push({ ...frame, data: JSON.parse(frame.data) });
        }
      }
    } catch {
      // Aborted at the end of the test.
    }
  })();
  return { frames, close: () => controller.abort() };
}

/** The WebSocket feed as `{id, event, data}` items, once open. */
async function openWebSocket(baseUrl, sessionId) {
  const url = `${baseUrl.replace(/^http/, 'ws')}/api/messaging/sessions/${sessionId}/ws`;
  const socket = new WebSocket(url, { headers: { 'x-api-key': API_KEY } });
  const frames = inbox('the WebSocket feed');
  socket.on('message', (data) => frames.push(JSON.parse(data.toString())));
  await new Promise((resolve, reject) => {
    socket.once('open', resolve);
    socket.once('error', reject);
  });
  return { frames, close: () => socket.close() };
}

/** A Socket.IO client joined to the session's channel, every event kept as `[name, body]`. */
async function openSocketIo(baseUrl, session) {
  const socket = io(baseUrl, {
    auth: { apiKey: API_KEY, entityId: session.userId },
    transports: ['websocket'],
    reconnection: false,
    forceNew: true,
  });
  const events = inbox('Socket.IO');
  socket.onAny((name, body) => events.push([name, body]));
  const expect = async (name) => {
    const [got, body] = await events.next();
    assert.equal(got, name, JSON.stringify(body));
    return body;
  };
  await expect('authenticated');
  await expect('connection_established');
  socket.emit('message', {
    type: 1,
    payload: { channelId: session.channelId, roomId: session.channelId, entityId: session.userId },
  });
  // Both names, as elizaOS clients listen for either.
  assert.equal((await expect('channel_joined')).channelId, session.channelId);
  assert.equal((await expect('room_joined')).channelId, session.channelId);
  return { events, expect, close: () => socket.disconnect() };
}

/** Items from `frames` until (and with) the first one `last` accepts. */
async function until(frames, last) {
  const got = [];
  for (;;) {
    const frame = await frames.next();
    got.push(frame);
    if (last(frame)) return got;
  }
}

/** The Socket.IO events an SSE frame stands for, in `comparable` form. */
function onSocketIo(frame, session) {
  const { event, data } = frame;
  if (event === 'chunk') return [['messageStreamChunk', [data.messageId, data.index, data.chunk]]];
  if (event === 'message' && data.isAgent) {
    const broadcast = {
      id: data.id,
      text: data.content,
      createdAt: new Date(data.createdAt).getTime(),
      channelId: session.channelId,
      roomId: session.channelId,
      senderId: session.agentId,
    };
    return [['messageBroadcast', broadcast], ['messageComplete', session.channelId]];
  }
  if (event === 'session' && data.reason === 'renewed') {
    return [['sessionRenewed', [data.session.sessionId, data.session.expiresAt]]];
  }
  return [];
}

/** A Socket.IO event reduced to what `onSocketIo` predicts of it. */
function comparable([name, body]) {
  switch (name) {
    case 'messageStreamChunk':
      return [name, [body.messageId, body.index, body.chunk]];
    case 'messageBroadcast': {
      const { id, text, createdAt, channelId, roomId, senderId } = body;
      return [name, { id, text, createdAt, channelId, roomId, senderId }];
    }
    case 'messageComplete':
      return [name, body.channelId];
    case 'sessionRenewed':
      return [name, [body.sessionId, body.expiresAt]];
    default:
      return [name, body];
  }
}

const isAgentMessage = (f) => f.event === 'message' && f.data.isAgent === true;

describe('one exchange over SSE, WebSocket and Socket.IO', { timeout: 120_000 }, () => {
  let dataDir;
  let server;
  let baseUrl;
  let agentId;

  before(async () => {
    dataDir = mkdtempSync(joinPath(tmpdir(), 'agent-sessions-transports-'));
    server = startServer(dataDir, { env: { API_KEYS: API_KEY } });
    ({ agentId, baseUrl } = await server.ready);
  });

  after(async () => {
    if (server) await stopServer(server.child);
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  test('the three transports agree on the reply, its chunks and a renewal', async () => {
    const created = await http(baseUrl, 'POST', '/api/messaging/sessions', { agentId, userId: randomUUID() });
    assert.equal(created.status, 201, JSON.stringify(created.body));
    const session = created.body;
    assert.equal(session.agentId, agentId);
    const sse = await openSse(baseUrl, session.sessionId);
    const ws = await openWebSocket(baseUrl, session.sessionId);
    const sio = await openSocketIo(baseUrl, session);
    try {
      const sent = await http(baseUrl, 'POST', `/api/messaging/sessions/${session.sessionId}/messages`, {
        content: 'hello everyone',
        transport: 'websocket',
      });
      assert.equal(sent.status, 201, JSON.stringify(sent.body));

      const overSse = await until(sse.frames, isAgentMessage);
      const overWs = await until(ws.frames, isAgentMessage);
      assert.deepEqual(overWs, overSse, 'SSE and WebSocket: the same events, ids and payloads, in order');
      const ids = overSse.filter((f) => f.id !== null).map((f) => BigInt(f.id));
      assert.ok(ids.length >= 2 && ids.every((id, i) => i === 0 || id > ids[i - 1]), 'ids increase');
      const userMessage = overSse.find((f) => f.event === 'message' && !f.data.isAgent);
      assert.equal(userMessage.data.content, 'hello everyone');
      const reply = overSse.at(-1).data;
      assert.ok(overSse.some((f) => f.event === 'chunk'), 'the reply streamed in chunks');

      // Socket.IO: what each of those events becomes there (a chunk, the reply's broadcast and completion, a
      // renewal; the user's own message is not broadcast), in the same order and with the same content.
      const expected = overSse.flatMap((f) => onSocketIo(f, session));
      const overSio = (await until(sio.events, ([name]) => name === 'messageComplete')).map(comparable);
      assert.deepEqual(overSio, expected, 'Socket.IO carries the same exchange');
      const [, broadcast] = overSio.find(([name]) => name === 'messageBroadcast');
      assert.equal(broadcast.id, reply.id);

      // A renewal: one `session` event (reason renewed) on SSE and WebSocket, `sessionRenewed` on Socket.IO.
      const renewed = await http(baseUrl, 'POST', `/api/messaging/sessions/${session.sessionId}/renew`);
      assert.equal(renewed.status, 200, JSON.stringify(renewed.body));
      const sseRenewal = await sse.frames.next();
      assert.deepEqual(await ws.frames.next(), sseRenewal);
      assert.equal(sseRenewal.event, 'session');
      assert.equal(sseRenewal.data.reason, 'renewed');
      assert.ok(BigInt(sseRenewal.id) > ids.at(-1));
      const sioRenewal = await sio.expect('sessionRenewed');
      assert.deepEqual(comparable(['sessionRenewed', sioRenewal]), onSocketIo(sseRenewal, session)[0]);
      assert.equal(sioRenewal.expiresAt, renewed.body.expiresAt);
    } finally {
      sse.close();
      ws.close();
      sio.close();
    }
  });
});
