// Open EventSources in real Chromium against a running jarvas and report
// what the browser did: every event, every request it sent to the stream
// (with the Last-Event-ID it carried and the status it got) and the
// readyState it ended in.  It only reports; the Python test that runs it
// (tests/integration/test_browser.py) decides what is right.
//
// usage: node eventsource.mjs INPUT     (INPUT: JSON)
//   {"base": "http://127.0.0.1:PORT",
//    "settle_ms": N,      // after an EventSource is CLOSED, watch this long for more requests
//    "deadline_ms": N,    // give up on reaching CLOSED after this long
//    "scenarios": [{"name": "...", "path": "/api/chat/stream/?ticket=...&message=..."}],
//                         // (base may be a proxy in front of jarvas: the page's origin)
//    "announce_open": B,  // write "ALL OPEN" on stderr once every EventSource is open
//    "profile": DIR}      // a fresh, empty --user-data-dir (the caller removes it)
// prints {"scenarios": [{"name", "events", "requests", "ready_state", "closed_after_ms"}]}
//
// The page is a blank one served on the jarvas origin by request
// interception (the repo has no page of its own), so the EventSources are
// same-origin, as a real page's would be.  Chromium is Debian's
// /usr/bin/chromium; the background-networking flags keep it from
// reaching out, which a closed network answers with refusals.
import { chromium } from 'playwright-core';

const CHROMIUM = process.env.CHROMIUM || '/usr/bin/chromium';
const ARGS = ['--headless', '--no-sandbox', '--disable-gpu', '--disable-quic', '--no-first-run',
  '--disable-background-networking', '--disable-component-update', '--disable-sync'];

const input = JSON.parse(process.argv[2]);
const page_url = `${input.base}/__test__`;

// In the page: open the EventSource and record what it sees.  A named
// "error" event from the server and the connection's own error event
// arrive under the same type; only the first is a MessageEvent.
function open_source(path) {
  const t0 = performance.now();
  const log = [];
  const es = new EventSource(path);
  const at = () => Math.round(performance.now() - t0);
  const record = (type) => (e) => log.push({
    type,
    message_event: e instanceof MessageEvent,
    data: e instanceof MessageEvent ? e.data : null,
    last_event_id: e instanceof MessageEvent ? e.lastEventId : null,
    ready_state: es.readyState,
    t: at(),
  });
  es.addEventListener('open', record('open'));
  es.addEventListener('message', record('message'));
  es.addEventListener('done', record('done'));
  es.addEventListener('gap', record('gap'));
  es.addEventListener('error', record('error'));
  window.__source = { es, log, at, closed_at: null };
  const watch = setInterval(() => {
    if (es.readyState === EventSource.CLOSED) {
      window.__source.closed_at = at();
      clearInterval(watch);
    }
  }, 20);
}

// Open the page and its EventSource; what finish() needs.
async function start(context, scenario) {
  const page = await context.newPage();
  const requests = [];
  const stream_path = (url) => new URL(url).pathname.startsWith('/api/chat/stream');
  page.on('request', async (req) => {
    if (!stream_path(req.url())) return;
    const entry = { method: req.method(), path: new URL(req.url()).pathname, status: null };
    requests.push(entry);
    const headers = await req.allHeaders();
    entry.last_event_id = headers['last-event-id'] ?? null;
  });
  page.on('response', (resp) => {
    if (!stream_path(resp.url())) return;
    const entry = requests.findLast((r) => r.status === null);
    if (entry) entry.status = resp.status();
  });
  page.on('requestfailed', (req) => {
    if (!stream_path(req.url())) return;
    const entry = requests.findLast((r) => r.status === null);
    if (entry) entry.failure = req.failure()?.errorText ?? 'failed';
  });
  await page.route(page_url, (route) => route.fulfill({
    status: 200, contentType: 'text/html; charset=utf-8',
    body: '<!doctype html><meta charset="utf-8"><title>jarvas EventSource test</title>',
  }));
  await page.goto(page_url);
  // Nothing after the page itself goes through interception.
  await page.unroute(page_url);
  await page.evaluate(open_source, scenario.path);
  return { name: scenario.name, page, requests, started: Date.now() };
}

async function wait_open(run) {
  while (Date.now() - run.started < input.deadline_ms) {
    const open = await run.page.evaluate(
      () => window.__source.log.some((e) => e.type === 'open'));
    if (open) return;
    await run.page.waitForTimeout(20);
  }
}

// Wait for CLOSED (or the deadline), then past the retry time; report.
async function finish(run) {
  const { page } = run;
  let closed_after_ms = null;
  while (Date.now() - run.started < input.deadline_ms) {
    closed_after_ms = await page.evaluate(() => window.__source.closed_at);
    if (closed_after_ms !== null) break;
    await page.waitForTimeout(50);
  }
  // A source that is not really done would ask again in this time.
  await page.waitForTimeout(input.settle_ms);
  const state = await page.evaluate(() => ({
    events: window.__source.log,
    ready_state: window.__source.es.readyState,
  }));
  await page.evaluate(() => window.__source.es.close());
  await page.close();
  return { name: run.name, ...state, requests: run.requests, closed_after_ms };
}

let context;
try {
  context = await chromium.launchPersistentContext(input.profile, {
    executablePath: CHROMIUM, headless: true, args: ARGS,
  });
  const runs = await Promise.all(input.scenarios.map((s) => start(context, s)));
  if (input.announce_open) {
    await Promise.all(runs.map(wait_open));
    process.stderr.write('ALL OPEN\n');
  }
  const scenarios = await Promise.all(runs.map(finish));
  process.stdout.write(JSON.stringify({ scenarios }) + '\n');
} finally {
  if (context) await context.close();
}
