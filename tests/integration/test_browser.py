"""A real browser's EventSource (issue 10, item 6): Debian's Chromium, driven
by tests/browser/eventsource.mjs (playwright-core, pinned in
tests/browser/package-lock.json), opens streams on the jarvas origin with a
stream ticket or ?access_token= against an upstream that fails before the
first token: it answers an error, refuses the connection, or the responder
dies. The message must reach the upstream once; the browser's reconnect
must carry Last-Event-ID and get 204, and the EventSource end CLOSED, with
no resend however long it waits past the retry time.  And (issue 12) a
resumable stream whose connection a proxy cuts: the EventSource reconnects
by itself and gets the rest exactly once.

`make test` installs Chromium and runs `npm ci` in tests/browser; without
/usr/bin/chromium this file says so and checks nothing."""

import contextlib
import json
import os
import re
import shutil
import signal
import subprocess
import tempfile
import time

import harness
from test_stream import (CLOSED_PORT, STREAM, account, conv, fake, fake_requests_with, history,
                         marker, query, stream_log_lines, wait_for)

CHROMIUM = "/usr/bin/chromium"
BROWSER_DIR = harness.ROOT / "tests" / "browser"
SCRIPT = BROWSER_DIR / "eventsource.mjs"
RETRY_MS = 3000  # src/sse.h SSE_RETRY_MS: what the streams tell browsers
SETTLE_MS = RETRY_MS * 3 // 2  # watched after CLOSED, for a resend
DEADLINE_MS = RETRY_MS * 4  # to reach CLOSED at all


def browser_ready():
    """None when the browser test can run; else why not (a skip when there
    is no Chromium, a failure when the rest of the set-up is missing)."""
    if not os.access(CHROMIUM, os.X_OK):
        return "skip"
    assert shutil.which("node"), "node is missing: `make test` installs it"
    assert (BROWSER_DIR / "node_modules" / "playwright-core").is_dir(), \
        "tests/browser/node_modules is missing: `make test` runs npm ci there"
    return None


def skip(what):
    print(f"SKIP {what}: {CHROMIUM} is not installed (`make test` installs Debian's "
          "chromium); nothing checked", flush=True)


def run_browser(stack, scenarios, when_open=None, base=None, deadline_ms=DEADLINE_MS):
    """Run the browser script on these scenarios ([dict(name, path)]);
    {name: what the browser saw}. when_open(): called once every
    EventSource is open (the script says so on stderr). base: the origin
    the browser uses (default: nginx's; e.g. a proxy in front of it)."""
    profile = tempfile.mkdtemp(prefix="jarvas-chromium-")
    inp = dict(base=base or f"http://127.0.0.1:{stack.port}", settle_ms=SETTLE_MS,
               deadline_ms=deadline_ms, scenarios=scenarios,
               announce_open=when_open is not None, profile=profile)
    err = []
    p = subprocess.Popen(["node", str(SCRIPT), json.dumps(inp)], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         cwd=str(BROWSER_DIR), start_new_session=True)
    try:
        if when_open is not None:
            for line in p.stderr:
                err.append(line)
                if line.startswith("ALL OPEN"):
                    when_open()
                    break
        out, rest = p.communicate(timeout=120)
    finally:
        if p.poll() is None:  # node and its Chromium: a session of their own
            with contextlib.suppress(ProcessLookupError):
                os.killpg(p.pid, signal.SIGKILL)
            p.wait()
        shutil.rmtree(profile, ignore_errors=True)
    err = "".join(err) + rest
    assert p.returncode == 0, f"the browser script failed ({p.returncode}):\n{err[-3000:]}"
    return {s["name"]: s for s in json.loads(out)["scenarios"]}


def describe(seen):
    return json.dumps({k: seen[k] for k in ("ready_state", "closed_after_ms", "requests",
                                            "events")}, indent=None)[:2500]


def check_not_resent(seen, error_event=True):
    """What the browser saw of one stream that failed before its first
    chunk: one stream, one reconnect with Last-Event-ID answered 204,
    CLOSED, nothing after. A list of what was wrong."""
    wrong = []
    reqs = seen["requests"]
    if len(reqs) != 2:
        wrong.append(f"{len(reqs)} requests to the stream, not the stream and one reconnect")
    if reqs and (reqs[0]["status"] != 200 or reqs[0]["last_event_id"] is not None):
        wrong.append(f"the first request: {reqs[0]}")
    if len(reqs) >= 2:
        r = reqs[1]
        if not re.fullmatch(r"\d+:\d+", r["last_event_id"] or ""):
            wrong.append(f"the reconnect carried no Last-Event-ID: {r}")
        if r["status"] != 204:
            wrong.append(f"the reconnect got {r['status']}, not 204")
    if seen["ready_state"] != 2 or seen["closed_after_ms"] is None:
        wrong.append(f"the EventSource ended in readyState {seen['ready_state']}, not CLOSED (2)")
    server_errors = [e for e in seen["events"] if e["type"] == "error" and e["message_event"]]
    if error_event:
        if len(server_errors) != 1:
            wrong.append(f"{len(server_errors)} error events from the server, not 1")
        elif not re.fullmatch(r"\d+:\d+", server_errors[0]["last_event_id"] or ""):
            wrong.append(f"the error event set no event id: {server_errors[0]}")
    if [e for e in seen["events"] if e["type"] in ("message", "done")]:
        wrong.append("chunks or done from a stream that failed")
    return wrong


def ticket_of(stack, user):
    r = stack.request("POST", "/api/chat/stream/ticket/", token=user["access"])
    assert r.status == 200, r
    return r.json()["ticket"]


def scenario(stack, user, name, message, credential, conversation):
    cred = dict(ticket=ticket_of(stack, user)) if credential == "ticket" \
        else dict(access_token=user["access"])
    return dict(name=name, path=STREAM + query(message=message, conversation_id=conversation,
                                               **cred), ticket=cred.get("ticket"))


def assert_no_ticket_in_logs(stack, tickets):
    for p in (stack.state / "log").glob("*.log"):
        text = p.read_text(errors="replace")
        assert not [t for t in tickets if t and t in text], f"a ticket is in {p.name}"


def count_204s(stack):
    return sum(len(re.findall(r'method="GET" path="/api/chat/stream" status=204',
                              p.read_text(errors="replace")))
               for p in (stack.state / "log").glob("chat_stream*.log"))


# name, fake keys (the upstream's failure), credential
UPSTREAM_ERRORS = [
    (f"{name}_{cred}", keys, cred)
    for name, keys in [("http_500", dict(status=500)), ("model_missing", dict(model_missing=1)),
                       ("error_line_first", dict(tokens=3, error_after=0))]
    for cred in ("ticket", "access_token")
]


def test_eventsource_sends_a_message_once_when_the_upstream_fails_before_the_first_chunk(stack):
    if browser_ready() == "skip":
        return skip("the EventSource checks")
    user = account(stack, "browser")
    cases = []
    for name, keys, cred in UPSTREAM_ERRORS:
        mark, c = marker(), conv()
        cases.append((scenario(stack, user, name, f"browser {mark} {fake(**keys)}", cred, c),
                      mark, c))
    before = count_204s(stack)
    seen = run_browser(stack, [s for s, _, _ in cases])
    wrong = []
    for s, mark, c in cases:
        w = check_not_resent(seen[s["name"]])
        n = len(fake_requests_with(stack, mark))
        if n != 1:
            w.append(f"the upstream got the message {n} times")
        if history(stack, user, c):
            w.append("a failed exchange was stored")
        if w:
            wrong.append(f"{s['name']}: " + "; ".join(w) + "\n    " + describe(seen[s["name"]]))
    assert not wrong, "\n".join(wrong)
    assert count_204s(stack) - before == len(cases), "the responder did not answer each reconnect 204"
    assert_no_ticket_in_logs(stack, [s["ticket"] for s, _, _ in cases])


@harness.stack_env(JARVAS_UPSTREAM_URL=f"http://127.0.0.1:{CLOSED_PORT}")
def test_eventsource_sends_a_message_once_when_the_upstream_refuses(stack):
    if browser_ready() == "skip":
        return skip("the EventSource checks")
    users = {cred: account(stack, f"brefused{cred[:3]}") for cred in ("ticket", "access_token")}
    cases = [scenario(stack, u, f"refused_{cred}", "anyone there?", cred, conv())
             for cred, u in users.items()]
    seen = run_browser(stack, cases)
    wrong = []
    for s, (cred, u) in zip(cases, users.items()):
        w = check_not_resent(seen[s["name"]])
        # Nothing listens upstream to count: count the streams the responder ran.
        streams = [ln for ln in stream_log_lines(stack, u["user_id"])
                   if 'path="/api/chat/stream" status=200' in ln]
        if len(streams) != 1:
            w.append(f"{len(streams)} streams ran for one message: {streams}")
        if w:
            wrong.append(f"{s['name']}: " + "; ".join(w) + "\n    " + describe(seen[s["name"]]))
    assert not wrong, "\n".join(wrong)


def responder_pid(stack):
    try:
        return int((stack.state / "run" / "chat_stream.pid").read_text().strip())
    except (OSError, ValueError):
        return None


@harness.allows_restarts
@harness.stack_env(JARVAS_PING_INTERVAL="14")  # a stack of its own: it kills a responder
def test_eventsource_sends_a_message_once_when_the_responder_dies_before_the_first_chunk(stack):
    """No error event at all: only the preamble's id can stop the resend."""
    if browser_ready() == "skip":
        return skip("the EventSource checks")
    user = account(stack, "bkilled")
    cases = []
    for cred in ("ticket", "access_token"):
        mark = marker()
        cases.append((scenario(stack, user, f"killed_{cred}", f"killed {mark} {fake(hang=1)}",
                               cred, conv()), mark))
    old = responder_pid(stack)

    def kill():
        # The upstream has the requests, so the preambles are out; the
        # browser has read them once its EventSources are open, and a
        # little more.
        for _, mark in cases:
            wait_for(lambda: fake_requests_with(stack, mark), 10, "the upstream getting a message")
        time.sleep(0.5)
        os.kill(old, signal.SIGKILL)
        wait_for(lambda: responder_pid(stack) not in (None, old), 10, "the responder restarting")

    seen = run_browser(stack, [s for s, _ in cases], when_open=kill)
    wrong = []
    for s, mark in cases:
        got = seen[s["name"]]
        w = check_not_resent(got, error_event=False)
        reqs = got["requests"]
        if len(reqs) >= 2 and not re.fullmatch(r"\d+:0", reqs[1]["last_event_id"] or ""):
            w.append(f"the reconnect did not carry the preamble's id <message_id>:0: {reqs[1]}")
        n = len(fake_requests_with(stack, mark))
        if n != 1:
            w.append(f"the upstream got the message {n} times")
        if w:
            wrong.append(f"{s['name']}: " + "; ".join(w) + "\n    " + describe(got))
    assert not wrong, "\n".join(wrong)
    assert_no_ticket_in_logs(stack, [s["ticket"] for s, _ in cases])


# --- issue 12: an EventSource whose connection drops resumes by itself --------------


def test_an_eventsource_that_loses_its_connection_reconnects_and_gets_the_rest_once(stack):
    """A resumable GET stream (access_token in the query: tickets are single
    use) read by Chromium through a proxy that cuts the connection twice,
    once while the model writes and once more later: each time the
    EventSource reconnects by itself with Last-Event-ID and gets the rest.
    All its chunks together are the upstream's text, no id twice; the
    message went upstream once, and after done the browser's last
    reconnect gets 204 and the EventSource ends CLOSED."""
    if browser_ready() == "skip":
        return skip("the EventSource checks")
    from cutproxy import CutProxy
    from test_stream import default_text

    user = account(stack, "bresume")
    mark, c = marker(), conv()
    n = 80  # 8 s at 100 ms a token: the first reconnect (retry: 3 s) finds it still writing
    message = f"cut me {mark} {fake(tokens=n, delay_ms=100)}"
    path = STREAM + query(message=message, conversation_id=c, resumable=1,
                          access_token=user["access"])
    cuts = []

    def sent():
        recs = fake_requests_with(stack, mark)
        return recs[0]["tokens_sent"] if recs else 0

    with CutProxy(stack.port) as proxy:
        def cut():  # called once the EventSource is open
            wait_for(lambda: sent() >= 10, 20, "the first 10 tokens")
            cuts.append(proxy.cut())
            seen_at = proxy.accepted
            wait_for(lambda: proxy.accepted > seen_at and sent() >= 50, 30,
                     "the browser reconnecting and 50 tokens")
            time.sleep(0.3)
            cuts.append(proxy.cut())

        seen = run_browser(stack, [dict(name="cut", path=path)], when_open=cut,
                           base=f"http://127.0.0.1:{proxy.port}", deadline_ms=45000)["cut"]
    assert all(cuts), f"nothing to cut: {cuts}"
    chunks = [e for e in seen["events"] if e["type"] == "message"]
    ids = [e["last_event_id"] for e in chunks]
    wrong = []
    if len(set(ids)) != len(ids):
        wrong.append(f"ids came twice: {[i for i in ids if ids.count(i) > 1][:10]}")
    seqs = [int(re.fullmatch(r"\d+:(\d+)", i or "0:0").group(1)) for i in ids]
    if seqs != list(range(1, len(seqs) + 1)):
        wrong.append(f"the chunks' seqs are not 1..{len(seqs)}: {seqs}")
    text = "".join(json.loads(e["data"])["content"] for e in chunks)
    if text != default_text(n):
        wrong.append(f"the text is not the upstream's: {text!r}")
    dones = [e for e in seen["events"] if e["type"] == "done"]
    if len(dones) != 1:
        wrong.append(f"{len(dones)} done events")
    drops = [e for e in seen["events"] if e["type"] == "error" and not e["message_event"]]
    if len(drops) < 3:  # two cuts and the end
        wrong.append(f"the EventSource saw {len(drops)} connection errors, not 3")
    reqs = seen["requests"]
    if not reqs or reqs[0]["status"] != 200 or reqs[0]["last_event_id"] is not None:
        wrong.append(f"the first request: {reqs[:1]}")
    resumed = [r for r in reqs[1:] if r["status"] == 200]
    if len(resumed) != 2 or not all(re.fullmatch(r"\d+:\d+", r["last_event_id"] or "")
                                    for r in resumed):
        wrong.append(f"not two reconnects with Last-Event-ID answered 200: {reqs}")
    if not reqs or reqs[-1]["status"] != 204 or \
            reqs[-1]["last_event_id"] != (dones[0]["last_event_id"] if dones else None):
        wrong.append(f"the last reconnect was not the done's id answered 204: {reqs[-1:]}")
    if seen["ready_state"] != 2:
        wrong.append(f"the EventSource ended in readyState {seen['ready_state']}, not CLOSED")
    recs = fake_requests_with(stack, mark)
    if len(recs) != 1:
        wrong.append(f"the upstream got the message {len(recs)} times")
    elif recs[0]["client_closed"]:
        wrong.append(f"the upstream request was closed: {recs[0]}")
    msgs = history(stack, user, c)
    if [(m["role"], m.get("status")) for m in msgs] != [("user", "done"), ("assistant", "done")] \
            or msgs[1]["content"] != default_text(n):
        wrong.append(f"history: {[(m['role'], m.get('status'), m['content'][:40]) for m in msgs]}")
    assert not wrong, "\n".join(wrong) + "\n    " + describe(seen)
