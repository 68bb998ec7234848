// Socket.IO as elizaOS 1.x clients speak it, with the real `socket.io-client`: a client connects the way the
// elizaOS web client does (`io(url, {auth: {apiKey, entityId}})`), joins a session's channel (`message` with
// `{type: 1, payload: {channelId, roomId, entityId}}`), the session gets a `websocket`-transport message over
// HTTP, and the client receives the reply's `messageStreamChunk`s and the `messageBroadcast` whose text is the
// stored reply; on long-polling upgraded to websocket and on websocket only; refused without the key; a session
// token admits its own channel only; `SEND_MESSAGE` over the socket; two instances on one PostgreSQL database.

import { after, before, describe, test } from 'node:test';
import assert from 'node:assert/strict';
import { randomUUID } from 'node:crypto';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join as joinPath } from 'node:path';

import { io } from 'socket.io-client';

import { startPostgres } from '../pg.mjs';
import { startServer, stopServer } from '../server.mjs';

const API_KEY = `sio-test-key-${randomUUID()}`;
const WAIT_MS = 15_000;

/** Resolves with the first `event` the socket receives (its first argument), or rejects after WAIT_MS. */
function once(socket, event, what = event) {
  return new Promise((resolve, reject) => {
    const timer = setTimeout(() => reject(new Error(`no '${what}' within ${WAIT_MS} ms`)), WAIT_MS);
    socket.once(event, (data) => {
      clearTimeout(timer);
      resolve(data);
    });
  });
}

async function http(baseUrl, method, path, body, headers = {}) {
  const response = await fetch(`${baseUrl}${path}`, {
    method,
    headers: { 'content-type': 'application/json', 'x-api-key': API_KEY, ...headers },
    body: body === undefined ? undefined : JSON.stringify(body),
  });
  const text = await response.text();
  return { status: response.status, body: text ? JSON.parse(text) : null };
}

async function createSession(baseUrl, agentId) {
  const created = await http(baseUrl, 'POST', '/api/messaging/sessions', { agentId, userId: randomUUID() });
  assert.equal(created.status, 201, JSON.stringify(created.body));
  return created.body;
}

/** Sends `content` in `session` over HTTP with the `websocket` transport: 201 at once, the reply comes later. */
async function sendOverHttp(baseUrl, session, content, headers) {
  const path = `/api/messaging/sessions/${session.sessionId}/messages`;
  const sent = await http(baseUrl, 'POST', path, { content, transport: 'websocket' }, headers);
  assert.equal(sent.status, 201, JSON.stringify(sent.body));
}

/** Connects as the elizaOS web client does and waits for the server's greeting. */
async function connect(baseUrl, { auth, transports }) {
  const socket = io(baseUrl, { auth, transports, reconnection: false, forceNew: true });
  // The transport the connection opened on, and the upgrade (if any), seen as they happen.
  socket.opened = new Promise((resolve) => {
    socket.io.once('open', () => {
      const engine = socket.io.engine;
      const upgraded = new Promise((up) => engine.once('upgrade', (t) => up(t.name)));
      resolve({ first: engine.transport.name, upgraded });
    });
  });
  const greeting = once(socket, 'connection_established');
  const refused = once(socket, 'connect_error').then((err) => {
    throw new Error(`connect_error: ${err.message}`);
  });
  const established = await Promise.race([greeting, refused]);
  refused.catch(() => {});
  assert.equal(established.message, 'Connected to Eliza Socket.IO server');
  assert.equal(established.socketId, socket.id);
  return socket;
}

/** Joins `channelId` the way the elizaOS client does, and waits for `channel_joined`. */
async function join(socket, channelId, entityId) {
  const joined = once(socket, 'channel_joined');
  socket.emit('message', { type: 1, payload: { channelId, roomId: channelId, entityId } });
  const body = await joined;
  assert.equal(body.channelId, channelId);
  assert.equal(body.roomId, channelId);
  return body;
}

/** Collects the chunks of the next reply on `socket` until its broadcast (and `messageComplete`). */
function nextReply(socket) {
  const chunks = [];
  const onChunk = (c) => chunks.push(c);
  socket.on('messageStreamChunk', onChunk);
  return Promise.all([once(socket, 'messageBroadcast'), once(socket, 'messageComplete')]).then(
    ([broadcast, complete]) => {
      socket.off('messageStreamChunk', onChunk);
      return { broadcast, complete, chunks };
    },
  );
}

/** Checks a received reply against the stored history of `session`. */
async function assertReplyMatchesHistory(baseUrl, session, agentId, reply) {
  const { broadcast, complete, chunks } = reply;
  const history = await http(baseUrl, 'GET', `/api/messaging/sessions/${session.sessionId}/messages`);
  assert.equal(history.status, 200);
  const stored = history.body.messages.find((m) => m.isAgent);
  assert.ok(stored, 'the reply is stored');
  assert.equal(broadcast.id, stored.id);
  assert.equal(broadcast.text, stored.content);
  assert.equal(broadcast.senderId, agentId);
  assert.equal(typeof broadcast.senderName, 'string');
  assert.equal(broadcast.channelId, session.channelId);
  assert.equal(broadcast.roomId, session.channelId);
  assert.equal(broadcast.source, 'agent_response');
  assert.equal(typeof broadcast.createdAt, 'number', 'createdAt is epoch milliseconds');
  assert.equal(broadcast.createdAt, new Date(stored.createdAt).getTime());
  assert.ok(chunks.length > 0, 'the reply streamed in chunks first');
  assert.deepEqual(
    chunks.map((c) => c.index),
    chunks.map((_, i) => i),
    'chunks in order',
  );
  for (const c of chunks) {
    assert.equal(c.messageId, broadcast.id);
    assert.equal(c.channelId, session.channelId);
    assert.equal(c.agentId, agentId);
  }
  assert.equal(chunks.map((c) => c.chunk).join(''), broadcast.text);
  assert.equal(complete.channelId, session.channelId);
}

describe('Socket.IO on one instance, API keys configured', { timeout: 120_000 }, () => {
  let dataDir;
  let server;
  let baseUrl;
  let agentId;

  before(async () => {
    dataDir = mkdtempSync(joinPath(tmpdir(), 'agent-sessions-sio-'));
    server = startServer(dataDir, { env: { API_KEYS: API_KEY } });
    ({ agentId, baseUrl } = await server.ready);
  });

  after(async () => {
    if (server) await stopServer(server.child);
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  for (const [what, transports] of [
    ['long-polling upgraded to websocket', ['polling', 'websocket']],
    ['websocket only', ['websocket']],
  ]) {
    test(`${what}: the reply of a message sent over HTTP arrives on the session's channel`, async () => {
      const session = await createSession(baseUrl, agentId);
      const entityId = session.userId;
      const socket = await connect(baseUrl, { auth: { apiKey: API_KEY, entityId }, transports });
      try {
        const opened = await socket.opened;
        assert.equal(opened.first, transports[0], 'the transport it opened on');
        if (transports[0] === 'polling') {
          assert.equal(await opened.upgraded, 'websocket', 'upgraded from long-polling to websocket');
        }
        assert.equal(socket.io.engine.transport.name, 'websocket');
        await join(socket, session.channelId, entityId);
        const reply = nextReply(socket);
        await sendOverHttp(baseUrl, session, `hello over ${what}`);
        await assertReplyMatchesHistory(baseUrl, session, agentId, await reply);
      } finally {
        socket.disconnect();
      }
    });
  }

  test('the join also answers as event "1", with room_joined', async () => {
    const session = await createSession(baseUrl, agentId);
    const socket = await connect(baseUrl, { auth: { apiKey: API_KEY }, transports: ['websocket'] });
    try {
      const roomJoined = once(socket, 'room_joined');
      socket.emit('1', { roomId: session.channelId });
      const body = await roomJoined;
      assert.equal(body.channelId, session.channelId);
      assert.equal(body.agentId, agentId);
      const error = once(socket, 'messageError');
      socket.emit('message', { type: 1, payload: {} });
      assert.equal((await error).error, 'channelId is required for joining.');
    } finally {
      socket.disconnect();
    }
  });

  test('without the key, or with a wrong one, the connection is refused', async () => {
    for (const auth of [{}, { apiKey: 'not-the-key' }]) {
      for (const transports of [['polling'], ['websocket']]) {
        const socket = io(baseUrl, { auth, transports, reconnection: false, forceNew: true });
        try {
          const error = await once(socket, 'connect_error');
          assert.equal(error.message, 'Invalid or missing API Key', JSON.stringify({ auth, transports }));
          assert.equal(socket.connected, false);
        } finally {
          socket.disconnect();
        }
      }
    }
  });

  test("a session token joins its own session's channel only", async () => {
    const mine = await createSession(baseUrl, agentId);
    const other = await createSession(baseUrl, agentId);
    const socket = await connect(baseUrl, { auth: { token: mine.sessionToken }, transports: ['websocket'] });
    try {
      const refused = once(socket, 'messageError');
      socket.emit('message', { type: 1, payload: { channelId: other.channelId } });
      assert.match((await refused).error, /own session/);
      await join(socket, mine.channelId, mine.userId);
      // The token's session is reachable: its reply arrives.
      const reply = nextReply(socket);
      const token = { 'x-api-key': '', authorization: `Bearer ${mine.sessionToken}` };
      await sendOverHttp(baseUrl, mine, 'with my token', token);
      await assertReplyMatchesHistory(baseUrl, mine, agentId, await reply);
    } finally {
      socket.disconnect();
    }
  });

  test('SEND_MESSAGE over the socket sends in the session and is acknowledged', async () => {
    const session = await createSession(baseUrl, agentId);
    const socket = await connect(baseUrl, { auth: { apiKey: API_KEY }, transports: ['websocket'] });
    try {
      await join(socket, session.channelId, session.userId);
      const ack = once(socket, 'messageAck');
      const reply = nextReply(socket);
      const clientMessageId = randomUUID();
      socket.emit('message', {
        type: 2,
        payload: {
          channelId: session.channelId,
          senderId: session.userId,
          message: 'sent over the socket',
          messageServerId: '00000000-0000-0000-0000-000000000000',
          messageId: clientMessageId,
        },
      });
      const acked = await ack;
      assert.equal(acked.clientMessageId, clientMessageId);
      assert.equal(acked.status, 'received_by_server_and_processing');
      assert.equal(acked.channelId, session.channelId);
      await assertReplyMatchesHistory(baseUrl, session, agentId, await reply);
      const history = await http(baseUrl, 'GET', `/api/messaging/sessions/${session.sessionId}/messages`);
      const user = history.body.messages.find((m) => !m.isAgent);
      assert.equal(user.id, acked.messageId);
      assert.equal(user.content, 'sent over the socket');
    } finally {
      socket.disconnect();
    }
  });
});

describe('Socket.IO across two instances on one PostgreSQL database', { timeout: 180_000 }, () => {
  let pg;
  let dataDir;
  let a;
  let b;

  before(async () => {
    pg = await startPostgres();
    dataDir = mkdtempSync(joinPath(tmpdir(), 'agent-sessions-sio-pg-'));
    const env = { API_KEYS: API_KEY };
    a = startServer(dataDir, { env, databaseUrl: pg.url });
    await a.ready;
    b = startServer(dataDir, { env, databaseUrl: pg.url, expectAgent: false });
    await b.ready;
  });

  after(async () => {
    if (a) await stopServer(a.child);
    if (b) await stopServer(b.child);
    pg?.stop();
    if (dataDir) rmSync(dataDir, { recursive: true, force: true });
  });

  for (const transports of [['polling', 'websocket'], ['websocket']]) {
    test(`a client on B (${transports.join(' then ')}) gets the reply of a message sent to A`, async () => {
      const { agentId, baseUrl: urlA } = await a.ready;
      const { baseUrl: urlB } = await b.ready;
      const session = await createSession(urlA, agentId);
      const socket = await connect(urlB, { auth: { apiKey: API_KEY, entityId: session.userId }, transports });
      try {
        await join(socket, session.channelId, session.userId);
        const reply = nextReply(socket);
        await sendOverHttp(urlA, session, 'across instances');
        await assertReplyMatchesHistory(urlA, session, agentId, await reply);
      } finally {
        socket.disconnect();
      }
    });
  }
});

describe('Socket.IO when the server stops', { timeout: 60_000 }, () => {
  test('every client hears serverShutdown, then loses its transport (so socket.io-client reconnects)', async () => {
    const dataDir = mkdtempSync(joinPath(tmpdir(), 'agent-sessions-sio-stop-'));
    const server = startServer(dataDir, { env: { API_KEYS: API_KEY } });
    try {
      const { agentId, baseUrl } = await server.ready;
      const session = await createSession(baseUrl, agentId);
      const sockets = [];
      for (const transports of [['polling'], ['websocket'], ['polling', 'websocket']]) {
        const socket = await connect(baseUrl, { auth: { apiKey: API_KEY }, transports });
        await join(socket, session.channelId);
        sockets.push(socket);
      }
      const heard = sockets.map((socket) =>
        Promise.all([once(socket, 'serverShutdown'), once(socket, 'disconnect')]),
      );
      const stopped = stopServer(server.child);
      for (const [notice, reason] of await Promise.all(heard)) {
        assert.equal(notice.reconnect, true);
        assert.equal(typeof notice.reason, 'string');
        // 'io server disconnect' would tell the client not to reconnect; a closed (or, for a long-poll in
        // flight, failed) transport makes it retry.
        assert.ok(['transport close', 'transport error'].includes(reason), reason);
      }
      await stopped;
      assert.equal(server.child.exitCode, 0);
    } finally {
      await stopServer(server.child);
      rmSync(dataDir, { recursive: true, force: true });
    }
  });
});
