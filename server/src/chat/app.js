// The chat page's script: opens a session (with an agent the visitor picks, or from a session token in the URL
// fragment), sends messages with the `sse` transport and renders the reply as it streams, follows the session's
// events stream (EventSource, `?access_token=`), shows the time left and the expiry warning, renews and ends.
// Message text is only ever set with textContent. Talks to this page's own origin only.
'use strict';

(() => {
  const KEY_STORE = 'agent-sessions-chat.apiKey';
  const USER_STORE = 'agent-sessions-chat.userId';
  const SESSIONS = '/api/messaging/sessions';
  const EVENT_NAMES = ['message', 'chunk', 'session', 'warning', 'expired', 'deleted', 'replay-gap'];
  const OPEN_WAIT_MS = 5000;

  const $ = (id) => document.getElementById(id);
  const ui = {
    status: $('status'),
    error: $('error'),
    warning: $('warning'),
    warningText: $('warning-text'),
    warningRenew: $('warning-renew'),
    keyForm: $('key-form'),
    key: $('api-key'),
    agentForm: $('agent-form'),
    agent: $('agent'),
    forgetKey: $('forget-key'),
    sessionInfo: $('session-info'),
    timeLeft: $('time-left'),
    renew: $('renew'),
    end: $('end'),
    chat: $('chat'),
    messages: $('messages'),
    composer: $('composer'),
    message: $('message'),
    send: $('send'),
  };

  const state = {
    apiKey: sessionStorage.getItem(KEY_STORE),
    fromLink: false,
    canCreate: false,
    agentNames: new Map(),
    sessionId: null,
    token: null,
    expiresAt: null, // in this browser's clock: now + the server's timeRemaining
    ended: true,
    ending: false,
    events: null,
    items: new Map(), // message id -> { li, text, next, final }
    sending: false,
  };

  /** An API error: the HTTP status (0 when the server could not be reached), the error code and message. */
  class ApiFailure extends Error {
    constructor(status, code, message, retryAfter) {
      super(message);
      this.status = status;
      this.code = code;
      this.retryAfter = retryAfter;
    }
  }

  // --- HTTP -------------------------------------------------------------------------------------------------

  async function request(method, path, { auth = {}, body } = {}) {
    const headers = { ...auth };
    if (body !== undefined) headers['Content-Type'] = 'application/json';
    let res;
    try {
      res = await fetch(path, {
        method,
        headers,
        body: body === undefined ? undefined : JSON.stringify(body),
        cache: 'no-store',
        credentials: 'omit',
      });
    } catch (e) {
      throw new ApiFailure(0, 'NETWORK_ERROR', String(e.message || e));
    }
    if (!res.ok) throw await failureOf(res);
    return res;
  }

  async function failureOf(res) {
    let code = '';
    let message = res.statusText || 'request failed';
    try {
      const body = await res.json();
      code = body.error.code;
      message = body.error.message;
    } catch {
      // not the API's JSON error: keep the status text
    }
    return new ApiFailure(res.status, code, message, res.headers.get('Retry-After'));
  }

  /** A sentence for an error, saying what to do about it where something can be done. */
  function explain(err) {
    if (!(err instanceof ApiFailure)) return `Something went wrong: ${err && err.message ? err.message : err}`;
    const what = `${err.message} (${err.status}${err.code ? ` ${err.code}` : ''})`;
    switch (err.status) {
      case 0:
        return `The server could not be reached: ${err.message}. Check the connection and try again.`;
      case 401:
        return state.fromLink
          ? `Not authorized: ${what}. The link's token is not valid, or has expired.`
          : `Not authorized: ${what}. Check the API key.`;
      case 403:
        return `Not allowed: ${what}.`;
      case 404:
        return `Not found: ${what}. The session may have been ended or purged.`;
      case 410:
        return `The session has expired: ${what}.`;
      case 429:
        return `Too many requests: ${what}.${err.retryAfter ? ` Try again in ${err.retryAfter} s.` : ''}`;
      default:
        return err.status >= 500 ? `The server failed: ${what}. Try again later.` : `Refused: ${what}.`;
    }
  }

  const keyAuth = () => (state.apiKey ? { 'X-API-KEY': state.apiKey } : {});
  const sessionAuth = () => (state.token ? { Authorization: `Bearer ${state.token}` } : keyAuth());
  const sessionPath = () => `${SESSIONS}/${encodeURIComponent(state.sessionId)}`;

  /** Reads a `text/event-stream` response, calling `onEvent(name, data)` for each frame with data. */
  async function readEventStream(res, onEvent) {
    const reader = res.body.pipeThrough(new TextDecoderStream()).getReader();
    let buffer = '';
    for (;;) {
      const { value, done } = await reader.read();
      if (done) return;
      buffer = (buffer + value).replace(/\r\n?/g, '\n');
      let end;
      while ((end = buffer.indexOf('\n\n')) >= 0) {
        const frame = buffer.slice(0, end);
        buffer = buffer.slice(end + 2);
        let name = 'message';
        const data = [];
        for (const line of frame.split('\n')) {
          if (line === '' || line.startsWith(':')) continue;
          const colon = line.indexOf(':');
          const field = colon < 0 ? line : line.slice(0, colon);
          let text = colon < 0 ? '' : line.slice(colon + 1);
          if (text.startsWith(' ')) text = text.slice(1);
          if (field === 'event') name = text;
          else if (field === 'data') data.push(text);
        }
        if (data.length) onEvent(name, JSON.parse(data.join('\n')));
      }
    }
  }

  // --- What the page shows ----------------------------------------------------------------------------------

  function setStatus(text) {
    ui.status.textContent = text;
  }

  function showError(text) {
    ui.error.textContent = text;
    ui.error.hidden = false;
  }

  function clearError() {
    ui.error.hidden = true;
    ui.error.textContent = '';
  }

  function setComposer(enabled) {
    ui.message.disabled = !enabled;
    ui.send.disabled = !enabled || state.sending;
  }

  /** The list item of message `id`, created (at the end of the conversation) if new. */
  function itemFor(id, isAgent) {
    let item = state.items.get(id);
    if (item) return item;
    const li = document.createElement('li');
    li.className = `message ${isAgent ? 'agent' : 'user'}`;
    const author = document.createElement('span');
    author.className = 'author';
    author.textContent = isAgent ? 'Agent' : 'You';
    const text = document.createElement('span');
    text.className = 'text';
    li.append(author, text);
    ui.messages.append(li);
    item = { li, text, next: 0, final: false };
    state.items.set(id, item);
    return item;
  }

  function scrollToEnd() {
    ui.messages.scrollTop = ui.messages.scrollHeight;
  }

  /** A stored message (from the history, the events stream or the `sse` transport), whole. */
  function showMessage(message) {
    const item = itemFor(message.id, message.isAgent);
    item.text.textContent = message.content;
    item.final = true;
    item.li.removeAttribute('aria-busy');
    item.li.dataset.id = message.id;
    scrollToEnd();
  }

  /** A piece of a reply, as it streams; pieces come from two sources (the send and the events stream). */
  function showChunk(chunk) {
    const item = itemFor(chunk.messageId, true);
    if (item.final || chunk.index !== item.next) return;
    if (item.next === 0) item.li.setAttribute('aria-busy', 'true');
    item.text.textContent += chunk.chunk;
    item.next += 1;
    scrollToEnd();
  }

  function showNotice(text) {
    const li = document.createElement('li');
    li.className = 'message notice';
    li.textContent = text;
    ui.messages.append(li);
    scrollToEnd();
  }

  function formatLeft(ms) {
    const total = Math.max(0, Math.floor(ms / 1000));
    const h = Math.floor(total / 3600);
    const m = Math.floor((total % 3600) / 60);
    const s = String(total % 60).padStart(2, '0');
    return h > 0 ? `${h}:${String(m).padStart(2, '0')}:${s}` : `${m}:${s}`;
  }

  function tick() {
    if (state.ended || state.expiresAt === null) return;
    const left = state.expiresAt - Date.now();
    ui.timeLeft.textContent = left > 0 ? formatLeft(left) : 'expired';
  }

  function applySession(session) {
    state.expiresAt = Date.now() + session.timeRemaining;
    ui.timeLeft.dataset.expiresAt = session.expiresAt;
    if (!session.isNearExpiration) ui.warning.hidden = true;
    tick();
  }

  function showWarning(warning) {
    state.expiresAt = Date.now() + warning.timeRemaining;
    const minutes = Math.max(1, Math.ceil(warning.timeRemaining / 60000));
    ui.warningText.textContent =
      `This session expires in about ${minutes} minute${minutes === 1 ? '' : 's'}. Renew it to keep chatting.`;
    ui.warning.hidden = false;
    tick();
  }

  // --- The session ------------------------------------------------------------------------------------------

  function closeEvents() {
    if (state.events) state.events.close();
    state.events = null;
  }

  /** The session is over (ended, expired, or gone): nothing more can be sent in it. */
  function sessionOver(text) {
    if (state.ended) return;
    state.ended = true;
    closeEvents();
    setComposer(false);
    ui.sessionInfo.hidden = true;
    ui.warning.hidden = true;
    showNotice(text);
    setStatus(state.canCreate ? `${text} Choose "New session" to chat again.` : text);
  }

  function onSessionEvent(name, data) {
    switch (name) {
      case 'message':
        showMessage(data);
        break;
      case 'chunk':
        showChunk(data);
        break;
      case 'session':
        applySession(data.session);
        break;
      case 'warning':
        showWarning(data);
        break;
      case 'expired':
        sessionOver('This session has expired.');
        break;
      case 'deleted':
        sessionOver(state.ending ? 'Session ended.' : 'This session was ended elsewhere.');
        break;
      case 'replay-gap':
        loadHistory().catch((err) => showError(explain(err)));
        break;
      default:
        break;
    }
  }

  /** Opens the events stream; resolves once it is open (or refused, or after a few seconds in any case). */
  function connectEvents() {
    closeEvents();
    const query = state.token ? `?access_token=${encodeURIComponent(state.token)}` : '';
    const events = new EventSource(`${sessionPath()}/events${query}`);
    state.events = events;
    for (const name of EVENT_NAMES) {
      events.addEventListener(name, (e) => {
        if (state.events === events) onSessionEvent(name, JSON.parse(e.data));
      });
    }
    return new Promise((resolve) => {
      const timer = setTimeout(resolve, OPEN_WAIT_MS);
      events.addEventListener('open', () => {
        clearTimeout(timer);
        resolve();
      });
      events.addEventListener('error', () => {
        if (events.readyState !== EventSource.CLOSED || state.events !== events) return;
        // Refused (EventSource does not say why): ask the session itself.
        clearTimeout(timer);
        resolve();
        diagnose();
      });
    });
  }

  async function diagnose() {
    try {
      await request('GET', sessionPath(), { auth: sessionAuth() });
      showError('The events stream was refused; replies still show as they are sent. Reload to retry.');
    } catch (err) {
      failed(err);
    }
  }

  /** Shows an error; one that means the session is over also ends it on the page. */
  function failed(err) {
    showError(explain(err));
    if (err instanceof ApiFailure && (err.status === 404 || err.status === 410)) {
      sessionOver(err.status === 410 ? 'This session has expired.' : 'This session no longer exists.');
    }
  }

  async function loadHistory() {
    const res = await request('GET', `${sessionPath()}/messages?limit=50`, { auth: sessionAuth() });
    const page = await res.json();
    if (page.hasMore && state.items.size === 0) showNotice('Earlier messages are not shown.');
    for (const message of [...page.messages].reverse()) showMessage(message);
  }

  function resetConversation() {
    closeEvents();
    state.items.clear();
    ui.messages.replaceChildren();
    ui.warning.hidden = true;
  }

  /** Opens session `sessionId` with `token` (or the key), from `session` if given, else as fetched. */
  async function openSession(sessionId, token, session, label) {
    resetConversation();
    state.sessionId = sessionId;
    state.token = token || null;
    const current = session || (await (await request('GET', sessionPath(), { auth: sessionAuth() })).json());
    state.ended = false;
    applySession(current);
    ui.chat.hidden = false;
    ui.sessionInfo.hidden = false;
    if (current.isNearExpiration) {
      showWarning({ timeRemaining: current.timeRemaining });
    }
    await loadHistory();
    await connectEvents();
    if (state.ended) return;
    setComposer(true);
    setStatus(`Chatting with ${label || 'the agent'}. Session ${sessionId}.`);
    ui.message.focus();
  }

  function userId() {
    let id = sessionStorage.getItem(USER_STORE);
    if (!id) {
      id = newUuid();
      sessionStorage.setItem(USER_STORE, id);
    }
    return id;
  }

  function newUuid() {
    if (crypto.randomUUID) return crypto.randomUUID();
    const b = crypto.getRandomValues(new Uint8Array(16));
    b[6] = (b[6] & 0x0f) | 0x40;
    b[8] = (b[8] & 0x3f) | 0x80;
    const h = Array.from(b, (x) => x.toString(16).padStart(2, '0')).join('');
    return `${h.slice(0, 8)}-${h.slice(8, 12)}-${h.slice(12, 16)}-${h.slice(16, 20)}-${h.slice(20)}`;
  }

  async function newSession() {
    const agentId = ui.agent.value;
    if (!agentId) return;
    clearError();
    setComposer(false);
    setStatus('Starting a session…');
    const res = await request('POST', SESSIONS, {
      auth: keyAuth(),
      body: { agentId, userId: userId(), metadata: { platform: 'web' } },
    });
    const session = await res.json();
    await openSession(session.sessionId, session.sessionToken, session, state.agentNames.get(agentId));
  }

  // --- Agents and the key -----------------------------------------------------------------------------------

  function askForKey() {
    state.canCreate = false;
    ui.agentForm.hidden = true;
    ui.keyForm.hidden = false;
    setStatus('This server needs an API key.');
    ui.key.focus();
  }

  function forgetKey() {
    state.apiKey = null;
    sessionStorage.removeItem(KEY_STORE);
  }

  async function loadAgents() {
    setStatus('Loading agents…');
    let list;
    try {
      list = await (await request('GET', '/api/agents', { auth: keyAuth() })).json();
    } catch (err) {
      if (err.status === 401) {
        if (state.apiKey) {
          forgetKey();
          showError(explain(err));
        }
        askForKey();
      } else {
        showError(explain(err));
        setStatus('The agents could not be listed.');
      }
      return;
    }
    ui.keyForm.hidden = true;
    state.canCreate = true;
    state.agentNames.clear();
    ui.agent.replaceChildren();
    for (const agent of list.agents) {
      const option = document.createElement('option');
      option.value = agent.id;
      option.textContent = `${agent.name} (${agent.backend && agent.backend.type ? agent.backend.type : 'agent'})`;
      ui.agent.append(option);
      state.agentNames.set(agent.id, agent.name);
    }
    ui.agentForm.hidden = false;
    ui.forgetKey.hidden = !state.apiKey;
    if (list.agents.length === 0) {
      setStatus('This server has no agents yet: create one with POST /api/agents.');
      return;
    }
    await newSession();
  }

  // --- Actions ----------------------------------------------------------------------------------------------

  async function send() {
    const content = ui.message.value.trim();
    if (!content || state.sending || state.ended) return;
    state.sending = true;
    setComposer(true);
    clearError();
    let ended = false;
    try {
      const res = await request('POST', `${sessionPath()}/messages`, {
        auth: sessionAuth(),
        body: { content, transport: 'sse' },
      });
      ui.message.value = '';
      await readEventStream(res, (name, data) => {
        if (name === 'user_message') {
          showMessage(data);
        } else if (name === 'chunk') {
          showChunk(data);
        } else if (name === 'done') {
          showMessage(data.message);
          ended = true;
        } else if (name === 'error') {
          ended = true;
          showError(`No reply: ${data.error} (${data.code}).`);
        }
      });
      if (!ended) showError('The reply stream was cut; the reply shows here when it comes.');
    } catch (err) {
      failed(err);
    } finally {
      state.sending = false;
      setComposer(!state.ended);
      if (!state.ended) ui.message.focus();
    }
  }

  async function renew() {
    clearError();
    try {
      const session = await (await request('POST', `${sessionPath()}/renew`, { auth: sessionAuth() })).json();
      applySession(session);
      ui.warning.hidden = true;
      setStatus('Session renewed.');
    } catch (err) {
      failed(err);
    }
  }

  async function end() {
    clearError();
    state.ending = true; // the events stream's `deleted` may come before the answer
    try {
      await request('DELETE', sessionPath(), { auth: sessionAuth() });
      sessionOver('Session ended.');
    } catch (err) {
      failed(err);
    } finally {
      state.ending = false;
    }
  }

  ui.message.addEventListener('keydown', (e) => {
    if (e.key === 'Enter' && !e.shiftKey && !e.isComposing && !e.altKey && !e.ctrlKey && !e.metaKey) {
      e.preventDefault();
      send();
    }
  });
  ui.composer.addEventListener('submit', (e) => {
    e.preventDefault();
    send();
  });
  ui.keyForm.addEventListener('submit', (e) => {
    e.preventDefault();
    const key = ui.key.value.trim();
    if (!key) return;
    state.apiKey = key;
    sessionStorage.setItem(KEY_STORE, key);
    ui.key.value = '';
    clearError();
    loadAgents().catch((err) => showError(explain(err)));
  });
  ui.agentForm.addEventListener('submit', (e) => {
    e.preventDefault();
    newSession().catch((err) => {
      if (err.status === 401) askForKey();
      showError(explain(err));
    });
  });
  ui.forgetKey.addEventListener('click', () => {
    forgetKey();
    resetConversation();
    state.ended = true;
    ui.chat.hidden = true;
    ui.sessionInfo.hidden = true;
    askForKey();
  });
  ui.renew.addEventListener('click', renew);
  ui.warningRenew.addEventListener('click', renew);
  ui.end.addEventListener('click', end);
  window.addEventListener('hashchange', () => location.reload());
  setInterval(tick, 1000);

  /** `#session=<id>&token=<token>`: a session handed over as a link (the fragment never leaves the browser). */
  function linkedSession() {
    const params = new URLSearchParams(location.hash.slice(1));
    const sessionId = params.get('session');
    return sessionId ? { sessionId, token: params.get('token') } : null;
  }

  async function start() {
    const link = linkedSession();
    if (link) {
      state.fromLink = true;
      setStatus('Opening the session…');
      try {
        await openSession(link.sessionId, link.token, null, null);
      } catch (err) {
        showError(explain(err));
        setStatus('The session could not be opened.');
      }
      return;
    }
    await loadAgents();
  }

  start().catch((err) => showError(explain(err)));
})();
