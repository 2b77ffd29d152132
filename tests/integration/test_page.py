"""The chat page (issue 11) in a real browser: Debian's Chromium, driven by
tests/browser/page.mjs (playwright-core, pinned in
tests/browser/package-lock.json), uses src/web as nginx serves it, against
the whole stack and tests/fake_ollama, which replies one token every 150 ms
here (the directive in each message says so, as a user could).

What a user does and sees: log in (a wrong password shows the server's
words), a reply that appears chunk by chunk (timed by DOM mutations in the
page, and, as the old deployment's own check did, through the DevTools
protocol's network events), Stop (the model's request closed within 2 s,
the partial reply kept), reload, switching and deleting conversations, a
token refreshed unnoticed, hostile output shown as text, errors shown in
place and nothing sent twice; and (issue 12) a reply that survives a
reload and a cut connection (through tests/integration/cutproxy.py), shown
once, and Stop on a reply taken up again.  Screenshots go to
build/test-output/page/.

`make test` installs Chromium and runs `npm ci` in tests/browser and
src/web; without /usr/bin/chromium these tests say so and check nothing."""

import json
import os
import re
import shutil
import subprocess
import tempfile
import threading
import time
from urllib.parse import quote

import harness
from test_browser import browser_ready, skip
from test_stream import account, fake, fake_requests_with, history, marker, wait_for

SCRIPT = harness.ROOT / "tests" / "browser" / "page.mjs"
SHOTS = harness.ROOT / "build" / "test-output" / "page"
PACE = dict(delay_ms=150)  # per token: what the issue asks the browser test to see
MODEL = "llama3.2"


def words(text, **kw):
    """A directive making the fake reply exactly this text, word by word."""
    return fake(text=quote(text, safe=""), **PACE, **kw)


def run_page(stack, user, steps, timeout=150, base=None):
    """Run page.mjs: the report of each step, in order (the last, "end",
    holds the page's console errors).  Fails on a step that failed.
    base: the origin the browser uses (default nginx's; e.g. a proxy)."""
    profile = tempfile.mkdtemp(prefix="jarvas-chromium-")
    inp = dict(base=base or f"http://127.0.0.1:{stack.port}", username=user["name"],
               password=user["password"], profile=profile, out=str(SHOTS), steps=steps)
    try:
        p = subprocess.run(["node", str(SCRIPT), json.dumps(inp)], stdin=subprocess.DEVNULL,
                           capture_output=True, text=True, timeout=timeout,
                           cwd=str(SCRIPT.parent))
    finally:
        shutil.rmtree(profile, ignore_errors=True)
    assert p.returncode == 0 and p.stdout, f"page.mjs failed ({p.returncode}):\n{p.stderr[-3000:]}"
    report = json.loads(p.stdout)["steps"]
    failed = [s for s in report if s["do"] == "failed"]
    assert not failed, f"a step failed: {failed[0]['error'][:1500]} (screenshot {failed[0]['shot']})"
    return report


def ready():
    why = browser_ready()
    return why is None


def text_of(step):
    return step["text"].strip()


# --- the tests ---------------------------------------------------------------------


# path, content type; every file the page loads
PAGE_FILES = [
    ("/", "text/html"),
    ("/web/app.js", "text/javascript"),
    ("/web/api.js", "text/javascript"),
    ("/web/sse.js", "text/javascript"),
    ("/web/markdown.js", "text/javascript"),
    ("/web/style.css", "text/css"),
    ("/web/vendor/marked.esm.js", "text/javascript"),
    ("/web/vendor/purify.es.mjs", "text/javascript"),
]


@harness.cases(PAGE_FILES)
def test_the_page_is_served_in_place_with_its_security_headers(stack, case):
    path, ctype = case
    r = stack.request("GET", path)
    assert r.status == 200 and r.headers["content-type"].startswith(ctype), r
    local = harness.ROOT / "src" / "web" / ("index.html" if path == "/" else path[len("/web/"):])
    assert r.body == local.read_bytes(), f"{path} is not {local} as it is in the checkout"
    csp = r.headers.get("content-security-policy", "")
    assert "script-src 'self'" in csp and "default-src 'none'" in csp, r.headers
    assert r.headers.get("x-content-type-options") == "nosniff", r.headers


def test_only_reading_the_page_is_allowed(stack):
    r = stack.request("POST", "/", body="x")
    assert r.status == 405 and r.json()["detail"], r


def test_a_reply_streams_into_the_page_chunk_by_chunk(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "page")
    reply = "Streaming works one word at a time, here in a real browser page."
    login, send, phone, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text="stream to me " + words(reply), shot="stream"),
        dict(do="phone", shot="phone-width"),
    ])
    assert login["chat_shown"] and not login["error"], login
    marks = send["marks"]
    # At least 5 chunks became visible at separate times, in order...
    times = [m["t"] for m in marks]
    assert len(marks) >= 5, marks
    assert all(b > a for a, b in zip(times, times[1:])), times
    assert times[-1] - times[0] >= 4 * 100, f"all within {times[-1] - times[0]:.0f} ms: {times}"
    texts = [m["text"].strip() for m in marks]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts
    # ...and the last text is what the upstream sent.
    assert text_of(send) == reply, (text_of(send), reply)
    assert send["problem"] is None and send["meta"].startswith("first token after"), send
    # The old deployment's own check: DevTools → Network → the stream: 200,
    # text/event-stream, data received piece by piece, spread over time.
    (net,) = send["network"]
    assert net["status"] == 200 and net["mime"] == "text/event-stream", net
    data = [d["t"] for d in net["data"]]
    assert len(data) >= 5 and data[-1] - data[0] >= 500, net["data"]
    for path in (send["shot_mid"], send["shot_end"], phone["shot"]):
        assert os.path.getsize(path) > 1000, path
    assert not end["console_errors"], end["console_errors"]
    print(f"\n  time to first visible token: {times[0]:.0f} ms after Enter; "
          f"{len(marks)} chunks over {times[-1] - times[0]:.0f} ms; screenshots: "
          f"{send['shot_mid']}, {send['shot_end']}, {phone['shot']}")


@harness.stack_env(JARVAS_MODELS="llama3.2,qwen2.5:0.5b,absent-model:1b")
def test_the_model_picker_offers_the_models_and_the_reply_uses_the_one_picked(stack):
    if not ready():
        return skip("the chat page")
    user, mark = account(stack, "page"), marker()
    _, shown, picked, send, again, _, reloaded, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="models"),
        dict(do="models", pick="qwen2.5:0.5b", shot="model-picker"),
        dict(do="send", text=f"{mark} which model " + words("the small one")),
        dict(do="send", text=f"{mark} again " + words("still small")),
        dict(do="reload"),
        dict(do="models"),
    ])
    assert not shown["hidden"] and shown["value"] == "llama3.2", shown
    assert shown["options"] == [
        {"value": "llama3.2", "text": "llama3.2", "disabled": False},
        {"value": "qwen2.5:0.5b", "text": "qwen2.5:0.5b", "disabled": False},
        {"value": "absent-model:1b", "text": "absent-model:1b (not available)", "disabled": True},
    ], shown
    assert picked["value"] == "qwen2.5:0.5b", picked
    assert text_of(send) == "the small one" and text_of(again) == "still small", (send, again)
    assert [r["model"] for r in fake_requests_with(stack, mark)] == ["qwen2.5:0.5b"] * 2
    (c,) = stack.request("GET", "/api/chat/conversations/",
                         token=user["access"]).json()["conversations"]
    msgs = [m for m in history(stack, user, c["conversation_id"]) if m["role"] == "assistant"]
    assert [m["model"] for m in msgs] == ["qwen2.5:0.5b"] * 2, msgs
    # the tab keeps the choice across a reload
    assert reloaded["value"] == "qwen2.5:0.5b", reloaded
    assert not end["console_errors"], end["console_errors"]


def test_one_model_shows_no_picker(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "page")
    _, shown, end = run_page(stack, user, [dict(do="login"), dict(do="models")])
    assert shown["hidden"] and shown["value"] == "llama3.2", shown
    assert not end["console_errors"], end["console_errors"]


def test_stop_stops_the_model_and_keeps_the_partial_reply(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagestop")
    mark = marker()
    long = " ".join(f"word{i}" for i in range(100))
    login, send, reload, opened, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text=f"stop me {mark} " + words(long), stop_after=3),
        dict(do="reload"),
        dict(do="open", index=0),
    ])
    assert send["problem"] == "Stopped.", send
    rec = wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("closed_at")],
                   10, "the fake seeing the request closed")[0]
    late = rec["closed_at"] - send["stopped_at"]
    assert rec["client_closed"] and late <= 2000, f"closed {late} ms after Stop: {rec}"
    assert rec["tokens_sent"] < 100, rec
    shown = text_of(send)
    assert reload["chat_shown"] and len(reload["conversations"]) == 1, reload
    msgs = opened["messages"]
    assert [m["role"] for m in msgs] == ["user", "assistant"], msgs
    kept = msgs[1]["text"].strip()
    assert kept.startswith(shown) and long.startswith(kept), (shown, kept)


def test_reload_brings_back_the_conversations_switching_and_deleting(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagelist")
    a, b = "The first conversation's reply.", "The second conversation's reply."
    steps = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text="first topic " + words(a)),
        dict(do="new"),
        dict(do="send", text="second topic " + words(b)),
        dict(do="reload"),
        dict(do="open", index=1),
        dict(do="open", index=0),
        dict(do="delete", index=0),
        dict(do="reload"),
    ])
    reload1, open_a, open_b, deleted, reload2 = steps[4:9]
    assert reload1["chat_shown"], reload1
    # newest first; a title is the first message, cut to 80 characters
    assert [t[:12] for t in reload1["conversations"]] == ["second topic", "first topic "], reload1
    assert all(len(t) <= 80 for t in reload1["conversations"]), reload1
    assert [(m["role"], m["text"].strip()) for m in open_a["messages"]] == \
        [("user", "first topic " + words(a)), ("assistant", a)], open_a
    assert [m["text"].strip() for m in open_b["messages"]][1] == b, open_b
    assert len(deleted["after"]) == 1 and deleted["after"][0].startswith("first topic"), deleted
    assert [t[:11] for t in reload2["conversations"]] == ["first topic"], reload2
    r = stack.request("GET", "/api/chat/conversations/", token=user["access"])
    assert [c["title"][:11] for c in r.json()["conversations"]] == ["first topic"], r.json()


@harness.stack_env(JARVAS_ACCESS_LIFETIME="6")
def test_an_expired_access_token_is_refreshed_without_the_user_noticing(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagerefresh")
    login, wait, send, broken, reload, send2, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="wait", ms=9000),  # past the access token's 6 s
        dict(do="send", text="after expiry " + words("Still here.")),
        dict(do="break_access"),  # the stored token no longer verifies
        dict(do="reload"),
        dict(do="send", text="after a 401 " + words("Still here too.")),
    ])
    refreshes = [r for r in wait["requests"] if r["path"] == "/api/token/refresh/"]
    assert refreshes and all(r["status"] == 200 for r in refreshes), wait["requests"]
    assert text_of(send) == "Still here." and send["problem"] is None, send
    assert not [r for r in send["requests"] if r["status"] == 401], send["requests"]
    # The 401 path: refused once, refreshed (once, for the requests the page
    # makes at once), the same requests again.
    statuses = [(r["path"], r["status"]) for r in reload["requests"]]
    assert ("/api/chat/conversations/", 401) in statuses and \
        statuses.count(("/api/token/refresh/", 200)) == 1, statuses
    after = statuses[statuses.index(("/api/token/refresh/", 200)) + 1:]
    assert ("/api/chat/conversations/", 200) in after and \
        all(status == 200 for _, status in after), statuses
    assert reload["chat_shown"], reload
    assert text_of(send2) == "Still here too.", send2


@harness.stack_env(JARVAS_PING_INTERVAL="1")
def test_a_silent_model_shows_waiting_then_the_reply(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagewait")
    login, send, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text="think first " + words("Done thinking.", first_ms=3500), peek_ms=2600),
    ])
    peek = send["peek"]
    assert peek["waiting"] and "waiting for the model" in peek["shown"], peek
    assert peek["status"].startswith("Waiting for the model… ") and peek["status"] != \
        "Waiting for the model… 0 s", peek  # pings counted while only they arrived
    assert text_of(send) == "Done thinking." and send["marks"][0]["t"] >= 3000, send["marks"]


def test_a_wrong_password_shows_the_servers_message(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagepw")
    (login, end) = run_page(stack, user, [dict(do="login", password="not-the-password")])
    assert not login["chat_shown"], login
    assert login["error"] == "No active account found with the given credentials", login


def test_hostile_model_output_is_shown_as_text(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagexss")
    hostile = "<img src=x onerror=alert(1)> <script>alert(2)</script> <b onclick=alert(3)>b</b>"
    login, send, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text="be nasty " + words(hostile)),
    ])
    assert send["dialogs"] == [] and end["console_errors"] == [], (send["dialogs"], end)
    assert not {"img", "script", "b"} & set(send["html_elements"]), send["html_elements"]
    assert text_of(send) == hostile, text_of(send)


# name, fake keys, chunks shown, the message shown in place
ERRORS = [
    ("model_missing", dict(model_missing=1), 0, harness.model_missing_reason(MODEL)),
    ("error_mid_stream", dict(tokens=6, error_after=2, message="the%20GPU%20caught%20fire"), 2,
     "the GPU caught fire"),
]


@harness.cases(ERRORS)
def test_errors_show_in_place_and_nothing_is_sent_twice(stack, case):
    if not ready():
        return skip("the chat page")
    name, keys, chunks, shown = case
    user = account(stack, "pageerr")
    mark = marker()
    login, send, wait, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text=f"fail {mark} " + fake(**keys, **PACE)),
        dict(do="wait", ms=4000),  # past the streams' retry time: no resend
    ])
    assert send["problem"] == shown, send
    assert len(send["marks"]) == chunks or (chunks == 0 and not text_of(send)), send["marks"]
    assert len(fake_requests_with(stack, mark)) == 1, fake_requests_with(stack, mark)
    streams = [r for r in send["requests"] + wait["requests"] if r["path"] == "/api/chat/stream/"]
    assert len(streams) == 1, streams


# --- issue 12: a reply survives a reload and a dropped connection --------------------


def stream_requests(step):
    return [r for r in step["requests"] if r["path"] == "/api/chat/stream/"]


def test_a_reload_mid_reply_takes_the_reply_up_again_in_place(stack):
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagereload")
    mark = marker()
    reply = " ".join(f"word{i}" for i in range(40))  # 6 s at 150 ms a word
    login, send, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text=f"survive a reload {mark} " + words(reply), reload_after=4),
    ])
    assert send["before_reload"].strip() and reply.startswith(send["before_reload"].strip()), send
    # the whole reply, once: not the part before the reload twice
    assert text_of(send) == reply, (text_of(send), reply)
    assert send["problem"] is None, send
    streams = stream_requests(send)
    assert [(r["method"], r["status"]) for r in streams] == [("POST", 200), ("GET", 200)], streams
    (rec,) = fake_requests_with(stack, mark)  # sent upstream once
    assert not rec["client_closed"] and rec["finished"], rec
    mid = streams[1]["resume"]
    assert mid and mid.isdigit(), streams
    r = stack.request("GET", "/api/chat/conversations/", token=user["access"])
    (c,) = r.json()["conversations"]
    msgs = history(stack, user, c["conversation_id"])
    assert [(m["role"], m.get("status")) for m in msgs] == [("user", "done"), ("assistant", "done")]
    assert msgs[1]["content"] == reply and msgs[1]["id"] == int(mid), msgs
    assert not end["console_errors"], end["console_errors"]


def test_a_dropped_connection_mid_reply_is_resumed_in_place(stack):
    """The page through a proxy that cuts its connections while the reply
    streams: the page reconnects with Last-Event-ID and goes on."""
    if not ready():
        return skip("the chat page")
    from cutproxy import CutProxy

    user = account(stack, "pagecut")
    mark = marker()
    reply = " ".join(f"piece{i}" for i in range(40))
    problems = []

    def sent():
        recs = fake_requests_with(stack, mark)
        return recs[0]["tokens_sent"] if recs else 0

    with CutProxy(stack.port) as proxy:
        def cutter():
            try:
                wait_for(lambda: sent() >= 8, 60, "the first 8 words")
                if not proxy.cut():
                    problems.append("no connection to cut")
            except AssertionError as e:
                problems.append(str(e))

        t = threading.Thread(target=cutter, daemon=True)
        t.start()
        login, send, end = run_page(stack, user, [
            dict(do="login"),
            dict(do="send", text=f"survive a cut {mark} " + words(reply)),
        ], base=f"http://127.0.0.1:{proxy.port}")
        t.join(5)
    assert not problems, problems
    assert text_of(send) == reply, (text_of(send), reply)
    assert send["problem"] is None, send
    streams = stream_requests(send)
    assert len(streams) >= 2 and streams[0]["method"] == "POST", streams
    again = streams[1]
    m = re.fullmatch(r"\d+:(\d+)", again["last_event_id"] or "")
    assert again["method"] == "GET" and again["status"] == 200 and m and int(m.group(1)) >= 1, \
        streams
    assert len(fake_requests_with(stack, mark)) == 1
    # texts seen grow, never shrink or repeat a piece
    texts = [m["text"].strip() for m in send["marks"]]
    assert all(b.startswith(a) for a, b in zip(texts, texts[1:])), texts


def test_stop_after_a_reload_stops_the_reply_taken_up(stack):
    """Stop calls POST /api/chat/stop/: the model stops even though the
    page reads a reply it took up again (its own request long gone)."""
    if not ready():
        return skip("the chat page")
    user = account(stack, "pagestop2")
    mark = marker()
    long = " ".join(f"word{i}" for i in range(100))
    login, send, end = run_page(stack, user, [
        dict(do="login"),
        dict(do="send", text=f"reload then stop {mark} " + words(long), reload_after=3,
             stop_after=3),
    ])
    assert send["problem"] == "Stopped.", send
    rec = wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("closed_at")],
                   10, "the fake seeing the request closed")[0]
    late = rec["closed_at"] - send["stopped_at"]
    assert rec["client_closed"] and late <= 2000, f"closed {late} ms after Stop: {rec}"
    assert rec["tokens_sent"] < 100, rec
    stops = [r for r in send["requests"] if r["path"] == "/api/chat/stop/"]
    assert [r["status"] for r in stops] == [200], send["requests"]
    shown = text_of(send)
    r = stack.request("GET", "/api/chat/conversations/", token=user["access"])
    (c,) = r.json()["conversations"]
    msgs = history(stack, user, c["conversation_id"])
    assert msgs[1]["status"] == "stopped", msgs
    assert msgs[1]["content"].startswith(shown) and long.startswith(msgs[1]["content"]), \
        (shown, msgs[1]["content"])
