// app — jarvas's chat page: the login form, the conversation sidebar and
// the thread, whose replies stream in as the model writes them.
//
// A reply is read with fetch() + ReadableStream (POST /api/chat/stream/,
// the token in a header, never in a URL) through sse.js; each chunk is
// appended to the text and the Markdown rendered again (once per frame).
// Stop aborts the request: nginx closes the stream's connection, and the
// server stops the model and keeps the part that was sent.  A failed
// message is never sent again by the page.
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
  stopStream();
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
  await loadConversations();
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

function markCurrent() {
  for (const li of $('conversations').children)
    li.toggleAttribute('aria-current', current && li.dataset.id === current.id);
}

function newConversation() {
  stopStream();
  current = { id: newId(), title: 'New conversation' };
  $('thread-title').textContent = current.title;
  $('messages').replaceChildren();
  markCurrent();
  status('');
  $('input').focus();
}

async function openConversation(id, title) {
  stopStream();
  current = { id, title: title || id };
  $('thread-title').textContent = current.title;
  markCurrent();
  $('chat-view').classList.remove('sidebar-open');
  $('messages').replaceChildren();
  status('Loading…');
  try {
    const h = await session.json(`/api/chat/history/?conversation_id=${encodeURIComponent(id)}`);
    if (!current || current.id !== id) return; // switched meanwhile
    for (const m of h.messages) addMessage(m.role, m.content);
    status('');
    scrollDown();
  } catch (e) {
    status(`The history could not be loaded: ${e.message}`);
  }
}

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

function stopStream() {
  if (!streaming) return;
  streaming.stopped = true;
  streaming.controller.abort();
}

async function send(message) {
  const conversation = current;
  const controller = new AbortController();
  const mine = { controller, stopped: false };
  streaming = mine;
  setStreaming(true);
  addMessage('user', message);
  const reply = new Reply();
  scrollDown();
  let ended = false, problem = null, waited = 0;
  const parser = new SSEParser({
    event(e) {
      let data = null;
      try { data = JSON.parse(e.data); } catch { /* not ours */ }
      if (e.type === 'message' && data && data.type === 'chunk') {
        reply.append(data.content);
        status('');
      } else if (e.type === 'done') {
        ended = true;
      } else if (e.type === 'error') {
        ended = true;
        problem = (data && data.message) || 'The reply failed.';
      }
    },
    comment(text) {
      if (text === 'ping' && reply.firstMs === null) {
        waited = Math.round((performance.now() - reply.t0) / 1000);
        status(`Waiting for the model… ${waited} s`);
      }
    },
  });
  status('Waiting for the model…');
  try {
    const r = await session.fetch('/api/chat/stream/', {
      method: 'POST',
      headers: { 'Content-Type': 'application/json', Accept: 'text/event-stream' },
      body: JSON.stringify({ message, conversation_id: conversation.id }),
      signal: controller.signal,
    });
    if (!r.ok || !(r.headers.get('content-type') || '').startsWith('text/event-stream')) {
      throw new ApiError(r.status, r.status === 204 ? 'Nothing to send.' : await reason(r));
    }
    const reader = r.body.pipeThrough(new TextDecoderStream()).getReader();
    for (;;) {
      const { value, done } = await reader.read();
      if (done) break;
      parser.feed(value);
    }
    if (!ended) problem = 'The connection was lost before the reply was finished.';
  } catch (e) {
    if (mine.stopped) problem = 'Stopped.';
    else if (e instanceof ApiError) problem = e.message;
    else problem = 'The connection was lost before the reply was finished.';
  }
  reply.finish(problem);
  status('');
  if (streaming === mine) {
    streaming = null;
    setStreaming(false);
  }
  if (current === conversation) {
    if (conversation.title === 'New conversation') {
      conversation.title = message.trim().slice(0, 80);
      $('thread-title').textContent = conversation.title;
    }
    await loadConversations();
  }
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
$('new-conversation').addEventListener('click', newConversation);
$('more-conversations').addEventListener('click', () => loadConversations(true));
$('logout').addEventListener('click', () => {
  session.logout();
  showLogin();
});
$('toggle-sidebar').addEventListener('click', () => {
  const open = $('chat-view').classList.toggle('sidebar-open');
  $('toggle-sidebar').setAttribute('aria-expanded', String(open));
});

if (session.loggedIn) showChat();
else showLogin();
