// app — jarvas's chat page: the login form, the conversation sidebar and
// the thread, whose replies stream in as the model writes them.
//
// A reply is read with fetch() + ReadableStream (POST /api/chat/stream/,
// the token in a header, never in a URL) through sse.js; each chunk is
// appended to the text and the Markdown rendered again (once per frame).
// Every stream is resumable: when its connection breaks mid-reply the page
// reconnects with Last-Event-ID and goes on in place (a chunk already shown
// is never shown again); a reply history still calls "streaming" (after a
// reload, or opened from the sidebar) is read again from its start with
// ?resume=<message_id>.  Stop asks the server to stop the model
// (POST /api/chat/stop/, which keeps the part generated) and aborts the
// request; switching conversations only leaves the stream, which goes on.
// A failed message is never sent again by the page.
import { ApiError, Session, reason } from './api.js';
import { renderMarkdown } from './markdown.js';
import { SSEParser } from './sse.js';

const $ = (id) => document.getElementById(id);
const PAGE = 50; // conversations per page of the sidebar

const session = new Session((why) => showLogin(`Your session ended: ${why} Please log in again.`));
let current = null; // {id, title}
let streaming = null; // {controller, stopped}
let nextPage = null; // `before` of the sidebar's next page

// --- views -------------------------------------------------------------------

function showLogin(message) {
  leaveStream();
  $('chat-view').hidden = true;
  $('login-view').hidden = false;
  $('login-error').hidden = !message;
  $('login-error').textContent = message || '';
  $('login-username').focus();
}

async function showChat() {
  $('login-view').hidden = true;
  $('chat-view').hidden = false;
  $('whoami').textContent = session.username;
  newConversation();
  await Promise.all([loadConversations(), loadModels()]);
  const active = remembered();
  if (active && !streaming) {
    const li = Array.from($('conversations').children).find((x) => x.dataset.id === active.conversation_id);
    const title = li ? li.querySelector('.title').textContent : active.conversation_id;
    await openConversation(active.conversation_id, title);
    if (!streaming) remember(active.conversation_id, null); // it had ended meanwhile
  }
}

function status(text) {
  $('status').textContent = text || '';
}

// --- conversations -----------------------------------------------------------

function newId() {
  const bytes = new Uint8Array(12);
  crypto.getRandomValues(bytes);
  return 'c-' + Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

function when(iso) {
  const d = new Date(iso);
  if (Number.isNaN(d.getTime())) return '';
  const today = new Date().toDateString() === d.toDateString();
  return today ? d.toLocaleTimeString([], { hour: '2-digit', minute: '2-digit' })
    : d.toLocaleDateString([], { month: 'short', day: 'numeric' });
}

function conversationItem(c) {
  const li = document.createElement('li');
  li.dataset.id = c.conversation_id;
  if (current && current.id === c.conversation_id) li.setAttribute('aria-current', 'true');
  const open = document.createElement('button');
  open.type = 'button';
  open.className = 'open';
  const title = document.createElement('span');
  title.className = 'title';
  title.textContent = c.title || c.conversation_id;
  const time = document.createElement('time');
  time.dateTime = c.last_message_at;
  time.textContent = when(c.last_message_at);
  open.append(title, time);
  open.addEventListener('click', () => openConversation(c.conversation_id, c.title));
  const del = document.createElement('button');
  del.type = 'button';
  del.className = 'delete';
  del.textContent = '✕';
  del.setAttribute('aria-label', `Delete “${c.title || c.conversation_id}”`);
  del.addEventListener('click', () => deleteConversation(c));
  li.append(open, del);
  return li;
}

async function loadConversations(more = false) {
  try {
    const before = more && nextPage !== null ? `&before=${nextPage}` : '';
    const page = await session.json(`/api/chat/conversations/?limit=${PAGE}${before}`);
    const list = $('conversations');
    if (!more) list.replaceChildren();
    for (const c of page.conversations) list.append(conversationItem(c));
    nextPage = page.next;
    $('more-conversations').hidden = page.next === null;
  } catch (e) {
    if (session.loggedIn) status(`Conversations could not be loaded: ${e.message}`);
  }
}

// --- models ------------------------------------------------------------------

const MODEL = 'jarvas.model';

// The model picker, shown when the server offers more than one model
// (GET /api/models/): the default first chosen, or the one picked before
// in this tab; a model the upstream does not have cannot be picked.
async function loadModels() {
  const select = $('model');
  try {
    const list = await session.json('/api/models/');
    const kept = sessionStorage.getItem(MODEL);
    select.replaceChildren(...list.models.map((m) => {
      const o = new Option(m.available === false ? `${m.name} (not available)` : m.name, m.name);
      o.disabled = m.available === false;
      return o;
    }));
    const usable = list.models.filter((m) => m.available !== false).map((m) => m.name);
    select.value = usable.includes(kept) ? kept : list.default;
    select.hidden = list.models.length < 2;
  } catch (e) {
    select.hidden = true; // the server's default is used
  }
}

function pickedModel() {
  const select = $('model');
  return select.hidden || !select.value ? undefined : select.value;
}

function markCurrent() {
  for (const li of $('conversations').children)
    li.toggleAttribute('aria-current', current && li.dataset.id === current.id);
}

function newConversation() {
  leaveStream();
  current = { id: newId(), title: 'New conversation' };
  $('thread-title').textContent = current.title;
  $('messages').replaceChildren();
  markCurrent();
  status('');
  $('input').focus();
}

async function openConversation(id, title) {
  leaveStream();
  current = { id, title: title || id };
  $('thread-title').textContent = current.title;
  markCurrent();
  $('chat-view').classList.remove('sidebar-open');
  $('messages').replaceChildren();
  status('Loading…');
  try {
    const h = await session.json(`/api/chat/history/?conversation_id=${encodeURIComponent(id)}`);
    if (!current || current.id !== id) return; // switched meanwhile
    const last = h.messages[h.messages.length - 1];
    const running = last && last.role === 'assistant' && last.status === 'streaming' ? last : null;
    for (const m of h.messages) {
      if (m === running) continue;
      const li = addMessage(m.role, m.content);
      if (m.role === 'assistant' && ENDINGS[m.status]) note(li, 'problem', ENDINGS[m.status]);
    }
    status('');
    scrollDown();
    if (running && !streaming) resumeReply(current, running.id, running.content); // not awaited
  } catch (e) {
    status(`The history could not be loaded: ${e.message}`);
  }
}

// What history's status says of a reply that did not end normally.
const ENDINGS = {
  stopped: 'Stopped.',
  interrupted: 'Interrupted before it finished.',
  failed: 'The reply failed.',
};

async function deleteConversation(c) {
  const title = c.title || c.conversation_id;
  if (!window.confirm(`Delete “${title}”? Its messages are gone for good.`)) return;
  try {
    await session.json(`/api/chat/conversations/${encodeURIComponent(c.conversation_id)}/`,
      { method: 'DELETE' });
    if (current && current.id === c.conversation_id) newConversation();
    await loadConversations();
  } catch (e) {
    status(`Could not delete: ${e.message}`);
  }
}

// --- messages ----------------------------------------------------------------

function addMessage(role, text) {
  const li = document.createElement('li');
  li.className = `message ${role}`;
  const body = document.createElement('div');
  body.className = 'body';
  if (role === 'assistant') body.innerHTML = renderMarkdown(text);
  else body.textContent = text;
  li.append(body);
  $('messages').append(li);
  return li;
}

function scrollDown() {
  const m = $('messages');
  m.scrollTop = m.scrollHeight;
}

function note(li, className, text) {
  const p = document.createElement('p');
  p.className = className;
  p.textContent = text;
  li.append(p);
}

// One streamed reply on the page: its text, rendered at most once a frame.
class Reply {
  constructor() {
    this.li = addMessage('assistant', '');
    this.li.classList.add('waiting');
    this.body = this.li.querySelector('.body');
    this.text = '';
    this.frame = 0;
    this.t0 = performance.now();
    this.firstMs = null;
    this.gap = false;
    this.stored = '';
  }

  append(piece) {
    if (this.firstMs === null) {
      this.firstMs = performance.now() - this.t0;
      this.li.classList.remove('waiting');
    }
    this.text += piece;
    if (!this.frame) this.frame = requestAnimationFrame(() => this.render());
  }

  render() {
    this.frame = 0;
    this.body.innerHTML = renderMarkdown(this.text);
    scrollDown();
  }

  finish(problem) {
    if (this.frame) cancelAnimationFrame(this.frame);
    if (!this.text && this.stored) this.text = this.stored; // nothing came: what was stored
    this.render();
    this.li.classList.remove('waiting');
    if (problem) note(this.li, 'problem', problem);
    if (this.firstMs !== null) note(this.li, 'meta', `first token after ${(this.firstMs / 1000).toFixed(2)} s`);
  }
}

function setStreaming(on) {
  $('send').hidden = on;
  $('stop').hidden = !on;
  if (!on) $('input').focus();
}

const sleep = (ms, signal) => new Promise((resolve) => {
  const t = setTimeout(resolve, ms);
  signal.addEventListener('abort', () => { clearTimeout(t); resolve(); }, { once: true });
});

// The reply being generated for this tab, kept across a reload so the page
// can take it up again: {conversation_id, message_id}.
const ACTIVE = 'jarvas.streaming';

function remember(conversationId, messageId) {
  if (messageId === null) sessionStorage.removeItem(ACTIVE);
  else sessionStorage.setItem(ACTIVE, JSON.stringify({ conversation_id: conversationId, message_id: messageId }));
}

function remembered() {
  try {
    const a = JSON.parse(sessionStorage.getItem(ACTIVE) || 'null');
    return a && typeof a.conversation_id === 'string' && Number.isInteger(a.message_id) ? a : null;
  } catch {
    return null;
  }
}

// Leave the stream being read: the server goes on generating (the streams
// are resumable) and the page takes it up again when the conversation is
// opened.
function leaveStream() {
  if (!streaming) return;
  remember(streaming.conversation.id, null); // only a reload takes it up by itself
  streaming.left = true;
  streaming.controller.abort();
}

// Stop: the server stops the model and keeps the part it generated; the
// request is aborted too.
function stopStream() {
  if (!streaming) return;
  const s = streaming;
  s.stopped = true;
  const body = s.messageId !== null ? { message_id: s.messageId } : { conversation_id: s.conversation.id };
  session.json('/api/chat/stop/', {
    method: 'POST', headers: { 'Content-Type': 'application/json' }, body: JSON.stringify(body),
  }).catch(() => { /* it ended meanwhile, or the connection is gone */ });
  s.controller.abort();
}

const LOST = 'The connection was lost before the reply was finished.';
const RECONNECTS = 6; // attempts in a row without an event before giving up
const ID = /^(\d+):(\d+)$/;

// Read one reply into `reply`: the response `first(signal)` gives, then,
// when the connection breaks before the end, reconnections with
// Last-Event-ID that go on from the last event seen (never a chunk twice).
// Returns when the reply has ended, failed or was stopped or left.
async function follow(conversation, reply, first, knownId = null) {
  const controller = new AbortController();
  const mine = { controller, conversation, stopped: false, left: false, messageId: knownId };
  streaming = mine;
  setStreaming(true);
  let lastId = knownId === null ? '' : `${knownId}:0`, seen = 0, ended = false, problem = null;
  let retryMs = 3000, failures = 0, request = first, resumed = false;
  const learn = (id) => {
    const m = ID.exec(id || '');
    if (!m) return;
    lastId = id;
    if (mine.messageId === null) {
      mine.messageId = Number(m[1]);
      remember(conversation.id, mine.messageId);
    }
  };
  const on = {
    event(e) {
      failures = 0;
      learn(e.lastEventId);
      let data = null;
      try { data = JSON.parse(e.data); } catch { /* not ours */ }
      if (e.type === 'message' && data && data.type === 'chunk') {
        const m = ID.exec(e.lastEventId || '');
        const seq = m ? Number(m[2]) : seen + 1;
        if (seq <= seen) return; // had it already
        seen = seq;
        reply.append(data.content);
        status('');
      } else if (e.type === 'gap') {
        if (data && Number.isInteger(data.to)) seen = Math.max(seen, data.to);
        reply.gap = true;
      } else if (e.type === 'done') {
        ended = true;
        if (data && data.stopped) problem = 'Stopped.';
      } else if (e.type === 'error') {
        ended = true;
        problem = (data && data.message) || 'The reply failed.';
      }
    },
    comment(text) {
      if (text === 'ping' && reply.firstMs === null) {
        const waited = Math.round((performance.now() - reply.t0) / 1000);
        status(`Waiting for the model… ${waited} s`);
      }
    },
    retry(ms) { retryMs = ms; },
  };
  status('Waiting for the model…');
  for (;;) {
    const parser = new SSEParser(on);
    try {
      const r = await request(controller.signal);
      if (r.status === 204 && (resumed || knownId !== null)) {
        // nothing more to send: it ended and was all seen, or cannot be replayed
        if (!ended) problem = reply.text || resumed ? LOST : 'This reply is no longer being generated.';
        break;
      }
      if (!r.ok || !(r.headers.get('content-type') || '').startsWith('text/event-stream')) {
        throw new ApiError(r.status, r.status === 204 ? 'Nothing to send.' : await reason(r));
      }
      const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
      for (;;) {
        const { value, done } = await reader.read();
        if (done) break;
        parser.feed(value);
        learn(parser.lastEventId);
        if (ended) break;
      }
      if (ended) {
        reader.cancel().catch(() => {});
        break;
      }
    } catch (e) {
      if (mine.stopped || mine.left) break;
      if (e instanceof ApiError) {
        problem = e.message;
        break;
      }
      // the connection broke: go on below
    }
    if (mine.stopped || mine.left) break;
    if (!lastId || ++failures > RECONNECTS) {
      problem = LOST;
      break;
    }
    status('Reconnecting…');
    await sleep(failures === 1 ? 500 : retryMs, controller.signal);
    if (mine.stopped || mine.left) break;
    resumed = true;
    const since = lastId;
    request = (signal) => session.fetch('/api/chat/stream/', {
      headers: { Accept: 'text/event-stream', 'Last-Event-ID': since }, signal,
    });
  }
  if (mine.stopped) problem = 'Stopped.';
  if (!mine.left) {
    remember(conversation.id, null);
    if (reply.gap && !problem) problem = 'Part of the reply could not be recovered; reopen the conversation to see all of it.';
    reply.finish(problem);
    status('');
  }
  if (streaming === mine) {
    streaming = null;
    setStreaming(false);
  }
  return !mine.left;
}

async function send(message) {
  const conversation = current;
  addMessage('user', message);
  const reply = new Reply();
  scrollDown();
  const finished = await follow(conversation, reply, (signal) => session.fetch('/api/chat/stream/', {
    method: 'POST',
    headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
    body: JSON.stringify({ message, conversation_id: conversation.id, model: pickedModel(), resumable: true }),
    signal,
  }));
  if (finished && current === conversation) {
    if (conversation.title === 'New conversation') {
      conversation.title = message.trim().slice(0, 80);
      $('thread-title').textContent = conversation.title;
    }
    await loadConversations();
  }
}

// A reply the server is still generating (history says "streaming"): read
// it from its start into a fresh message.
async function resumeReply(conversation, messageId, stored) {
  const reply = new Reply();
  reply.stored = stored;
  scrollDown();
  await follow(conversation, reply, (signal) => session.fetch(
    `/api/chat/stream/?resume=${encodeURIComponent(messageId)}`,
    { headers: { Accept: 'text/event-stream' }, signal }), messageId);
}

// --- wiring ------------------------------------------------------------------

$('login-form').addEventListener('submit', async (e) => {
  e.preventDefault();
  $('login-submit').disabled = true;
  $('login-error').hidden = true;
  try {
    await session.login($('login-username').value.trim(), $('login-password').value);
    $('login-password').value = '';
    await showChat();
  } catch (err) {
    $('login-error').textContent = err.message;
    $('login-error').hidden = false;
  } finally {
    $('login-submit').disabled = false;
  }
});

$('composer').addEventListener('submit', (e) => {
  e.preventDefault();
  const message = $('input').value;
  if (!message.trim() || streaming) return;
  $('input').value = '';
  send(message);
});

$('input').addEventListener('keydown', (e) => {
  if (e.key === 'Enter' && !e.shiftKey && !e.isComposing) {
    e.preventDefault();
    $('composer').requestSubmit();
  } else if (e.key === 'Escape') {
    stopStream();
  }
});

$('stop').addEventListener('click', stopStream);
$('model').addEventListener('change', () => sessionStorage.setItem(MODEL, $('model').value));
$('new-conversation').addEventListener('click', newConversation);
$('more-conversations').addEventListener('click', () => loadConversations(true));
$('logout').addEventListener('click', () => {
  leaveStream();
  sessionStorage.removeItem(ACTIVE);
  session.logout();
  showLogin();
});
$('toggle-sidebar').addEventListener('click', () => {
  const open = $('chat-view').classList.toggle('sidebar-open');
  $('toggle-sidebar').setAttribute('aria-expanded', String(open));
});

if (session.loggedIn) showChat();
else showLogin();
