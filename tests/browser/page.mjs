// The chat page (src/web) in real Chromium against a running jarvas: log in,
// chat, stop, reload, switch and delete conversations, the token refresh, a
// wrong password, hostile model output, errors.  It reports what the browser
// saw and did (DOM mutation times, the DevTools protocol's network events,
// dialogs, requests) as JSON and writes screenshots; the Python test that
// runs it (tests/integration/test_page.py) decides what is right.
//
// usage: node page.mjs INPUT     (INPUT: JSON)
//   {"base": "http://127.0.0.1:PORT", "username", "password",
//    "profile": DIR (a fresh --user-data-dir), "out": DIR (screenshots),
//    "steps": [{"do": "...", ...}]}    one browser, one page, in order
// prints {"steps": [{"do", ...what that step saw}]}
//
// Steps:
//   login {password?}           fill the form; reports {error, chat_shown}
//   send {text, stop_after?, reload_after?, shot?, peek_ms?}
//                               type and press Enter; the reply's text at each
//                               DOM mutation (t: ms after Enter), the final text,
//                               problem/meta notes; with stop_after, click Stop
//                               after that many chunks ({stopped_at}: epoch ms);
//                               with reload_after, reload the page after that
//                               many chunks ({before_reload: the text then,
//                               reloaded_at}) and report the reply the page
//                               shows once it has taken it up again and it ended
//                               (marks then: those after the reload);
//                               shot: screenshot name prefix (mid + end);
//                               peek_ms: the status line and waiting state then
//   reload                      reload the page; {chat_shown, conversations}
//   new                         click "New conversation"
//   open {index}                open the index-th conversation of the sidebar;
//                               {messages: [{role, text}]}
//   delete {index}              delete it (the confirm dialog accepted)
//   conversations               {conversations: [titles]}
//   break_access                replace the stored access token by one that
//                               fails verification (expiry kept)
//   wait {ms}
//   phone {shot}                a 390 px wide viewport, a screenshot
import { chromium } from 'playwright-core';
import { mkdirSync } from 'node:fs';
import { join } from 'node:path';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const input = JSON.parse(process.argv[2]);
mkdirSync(input.out, { recursive: true });

const browser = await chromium.launchPersistentContext(input.profile, {
  executablePath: CHROMIUM, args: ARGS, headless: true, viewport: { width: 1200, height: 800 },
});
const page = browser.pages()[0] || await browser.newPage();

// Everything the page did that a step may report.
const seen = { dialogs: [], console_errors: [], requests: [], network: [] };
page.on('dialog', async (d) => {
  seen.dialogs.push({ type: d.type(), message: d.message() });
  await d.accept();
});
page.on('console', (m) => { if (m.type() === 'error') seen.console_errors.push(m.text()); });
page.on('pageerror', (e) => seen.console_errors.push(String(e)));
page.on('response', (r) => {
  const u = new URL(r.url());
  if (!(u.pathname.startsWith('/api/') || r.status() >= 400)) return;
  const entry = { method: r.request().method(), path: u.pathname, status: r.status(),
    resume: u.searchParams.get('resume'), last_event_id: null };
  seen.requests.push(entry);
  r.request().allHeaders().then((h) => { entry.last_event_id = h['last-event-id'] ?? null; })
    .catch(() => {});
});

// The DevTools protocol's view of the stream requests, as the old
// deployment's check looked at it: the response's status and type, and
// each piece of data as it was received.
const cdp = await browser.newCDPSession(page);
await cdp.send('Network.enable');
const streams = new Map();
cdp.on('Network.responseReceived', (e) => {
  if (!e.response.url.includes('/api/chat/stream')) return;
  streams.set(e.requestId, { status: e.response.status, mime: e.response.mimeType, data: [] });
});
cdp.on('Network.dataReceived', (e) => {
  const s = streams.get(e.requestId);
  if (s) s.data.push({ t: Date.now(), bytes: e.dataLength });
});
cdp.on('Network.loadingFinished', (e) => {
  const s = streams.get(e.requestId);
  if (s) { seen.network.push(s); streams.delete(e.requestId); }
});
cdp.on('Network.loadingFailed', (e) => {
  const s = streams.get(e.requestId);
  if (s) { s.failed = e.errorText; seen.network.push(s); streams.delete(e.requestId); }
});

async function shot(name) {
  const path = join(input.out, `${name}.png`);
  await page.screenshot({ path, fullPage: false });
  return path;
}

async function chatShown() {
  return page.evaluate(() => !document.getElementById('chat-view').hidden);
}

async function titles() {
  return page.$$eval('#conversations li .title', (els) => els.map((e) => e.textContent));
}

async function waitIdle() {
  await page.waitForFunction(() => document.getElementById('stop').hidden, null, { timeout: 60000 });
}


// Watch reply n's text from the page itself: each mutation's time and the
// text then, in window.__marks.
function watchReply(n) {
  return page.evaluate((n) => {
    window.__marks = [];
    const list = document.getElementById('messages');
    const obs = new MutationObserver(() => {
      const reply = list.querySelectorAll('.message.assistant')[n];
      if (!reply) return;
      const text = reply.querySelector('.body').textContent;
      const last = window.__marks[window.__marks.length - 1];
      if (!last || last.text !== text) window.__marks.push({ at: Date.now(), text });
    });
    obs.observe(list, { childList: true, subtree: true, characterData: true });
    window.__obs = obs;
  }, n);
}

const steps = {
  async login(step) {
    await page.goto(`${input.base}/`);
    await page.fill('#login-username', input.username);
    await page.fill('#login-password', step.password ?? input.password);
    const listed = page.waitForResponse((r) => r.url().includes('/api/chat/conversations'),
      { timeout: 15000 }).catch(() => null);
    await page.click('#login-submit');
    await page.waitForFunction(() => !document.getElementById('chat-view').hidden ||
      !document.getElementById('login-error').hidden, null, { timeout: 15000 });
    const error = await page.evaluate(() => {
      const e = document.getElementById('login-error');
      return e.hidden ? null : e.textContent;
    });
    if (!error) await listed; // the sidebar is loaded
    return { error, chat_shown: await chatShown() };
  },

  async send(step) {
    const before = await page.$$eval('#messages .message.assistant', (els) => els.length);
    await watchReply(before);
    // Enter as the page sees it: the clock of "time to first token"
    await page.evaluate(() => {
      document.getElementById('input').addEventListener('keydown', (e) => {
        if (e.key === 'Enter') window.__enter = Date.now();
      }, { once: true });
    });
    await page.fill('#input', step.text);
    const sentAt = Date.now();
    await page.press('#input', 'Enter');
    const out = { sent_at: sentAt };
    if (step.peek_ms) { // what the page shows while the model is silent
      await page.waitForTimeout(step.peek_ms);
      out.peek = await page.evaluate((n) => {
        const reply = document.querySelectorAll('#messages .message.assistant')[n];
        return { status: document.getElementById('status').textContent,
          waiting: !!reply && reply.classList.contains('waiting'),
          shown: reply ? getComputedStyle(reply.querySelector('.body'), '::after').content : null };
      }, before);
    }
    if (step.reload_after) {
      await page.waitForFunction((k) => (window.__marks || []).filter((m) => m.text).length >= k,
        step.reload_after, { timeout: 30000 });
      out.before_reload = await page.evaluate((n) =>
        document.querySelectorAll('#messages .message.assistant')[n].querySelector('.body').textContent, before);
      out.reloaded_at = Date.now();
      await page.reload();
      await page.waitForFunction(() => !document.getElementById('chat-view').hidden, null, { timeout: 15000 });
      // the page opens the conversation and takes the reply up again
      await page.waitForFunction((n) => !document.getElementById('stop').hidden &&
        document.querySelectorAll('#messages .message.assistant').length > n, before, { timeout: 15000 });
      await watchReply(before);
      await page.evaluate(() => { window.__enter = Date.now(); });
    }
    if (step.stop_after) {
      await page.waitForFunction((k) => (window.__marks || []).filter((m) => m.text).length >= k,
        step.stop_after, { timeout: 30000 });
      out.stopped_at = Date.now();
      await page.click('#stop');
    } else if (step.shot) {
      await page.waitForFunction(() => (window.__marks || []).filter((m) => m.text).length >= 4,
        null, { timeout: 30000 });
      out.shot_mid = await shot(`${step.shot}-mid-stream`);
    }
    await waitIdle();
    const result = await page.evaluate((n) => {
      window.__obs.disconnect();
      const reply = document.querySelectorAll('#messages .message.assistant')[n];
      return {
        marks: window.__marks.filter((m) => m.text),  // {at: epoch ms, text}
        text: reply.querySelector('.body').textContent,
        html_elements: Array.from(reply.querySelectorAll('.body *')).map((e) => e.tagName.toLowerCase()),
        problem: reply.querySelector('.problem')?.textContent ?? null,
        meta: reply.querySelector('.meta')?.textContent ?? null,
      };
    }, before);
    const enter = await page.evaluate(() => window.__enter);
    for (const m of result.marks) m.t = m.at - enter; // ms after Enter
    Object.assign(out, result);
    if (step.shot) out.shot_end = await shot(`${step.shot}-end`);
    return out;
  },

  async reload() {
    // the list as the page finally got it (after a refresh, when a 401 came first)
    const listed = page.waitForResponse((r) => r.url().includes('/api/chat/conversations') &&
      r.status() !== 401, { timeout: 15000 }).catch(() => null);
    await page.reload();
    await page.waitForFunction(() => !document.getElementById('chat-view').hidden ||
      !document.getElementById('login-view').hidden);
    await listed;
    await page.waitForTimeout(200); // rendered
    return { chat_shown: await chatShown(), conversations: await titles() };
  },

  async open(step) {
    await page.click(`#conversations li:nth-child(${step.index + 1}) .open`);
    await page.waitForFunction(() => document.getElementById('status').textContent === '');
    return {
      title: await page.textContent('#thread-title'),
      messages: await page.$$eval('#messages .message', (els) => els.map((e) => ({
        role: e.classList.contains('user') ? 'user' : 'assistant',
        text: e.querySelector('.body').textContent,
      }))),
    };
  },

  async delete(step) {
    const before = await titles();
    await page.click(`#conversations li:nth-child(${step.index + 1}) .delete`);
    await page.waitForFunction((n) => document.querySelectorAll('#conversations li').length === n,
      before.length - 1, { timeout: 10000 });
    return { before, after: await titles() };
  },

  async new() {
    await page.click('#new-conversation');
    return { title: await page.textContent('#thread-title') };
  },

  async conversations() {
    return { conversations: await titles() };
  },

  async break_access() {
    await page.evaluate(() => {
      const s = JSON.parse(sessionStorage.getItem('jarvas.session'));
      const [h, c] = s.access.split('.');
      s.access = `${h}.${c}.${'A'.repeat(43)}`; // same claims, a signature that fails
      sessionStorage.setItem('jarvas.session', JSON.stringify(s));
    });
    return {};
  },

  // The model picker as shown, and (step.pick) a model chosen in it.
  async models(step) {
    await page.waitForFunction(() => document.getElementById('model').options.length > 0 ||
      document.getElementById('model').hidden, null, { timeout: 10000 });
    if (step.pick) await page.selectOption('#model', step.pick);
    const out = await page.evaluate(() => {
      const s = document.getElementById('model');
      return { hidden: s.hidden, value: s.value,
        options: Array.from(s.options, (o) => ({ value: o.value, text: o.textContent, disabled: o.disabled })) };
    });
    if (step.shot) out.shot = await shot(step.shot);
    return out;
  },

  async wait(step) {
    await page.waitForTimeout(step.ms);
    return {};
  },

  async phone(step) {
    await page.setViewportSize({ width: 390, height: 844 });
    await page.waitForTimeout(400); // the sidebar's slide away
    const path = await shot(step.shot);
    await page.setViewportSize({ width: 1200, height: 800 });
    return { shot: path };
  },
};

const report = [];
try {
  for (const step of input.steps) {
    const mark = { requests: seen.requests.length, network: seen.network.length, dialogs: seen.dialogs.length };
    const out = await steps[step.do](step);
    await page.waitForTimeout(100); // the last network events of the step
    report.push({
      do: step.do, ...out,
      requests: seen.requests.slice(mark.requests),
      network: seen.network.slice(mark.network),
      dialogs: seen.dialogs.slice(mark.dialogs),
    });
  }
} catch (e) {
  report.push({ do: 'failed', error: String(e.stack || e), shot: await shot('failure').catch(() => null) });
} finally {
  report.push({ do: 'end', console_errors: seen.console_errors });
  await browser.close();
}
process.stdout.write(JSON.stringify({ steps: report }));
