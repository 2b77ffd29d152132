"""Streaming (API.md "Streaming", "History and prompt cache", "Upstream",
"Limits and bad input"): /api/chat/stream/ through real nginx + spawn-fcgi
against tests/fake_ollama, which each request steers with a "[[fake ...]]"
directive in its message. Every test uses its own conversation id (and, where
history or the prompt cache is looked at, its own user), so tests do not
depend on each other or on the order they run in.

Timing assertions measure arrival times stamped by the harness's SSE reader;
the only tight bound is the one API.md promises (upstream aborted within 2 s
of the client leaving); everything else has generous bounds."""

import json
import os
import re
import socket
import subprocess
import tempfile
import threading
import time
import uuid
import http.client
from urllib.parse import quote, quote_plus

import harness

STREAM = "/api/chat/stream/"
HISTORY = "/api/chat/history/"
MODEL = "llama3.2"  # the harness leaves JARVAS_MODEL at its default

NOT_PROVIDED = {"detail": "Authentication credentials were not provided."}
NOT_VALID = {"detail": "Given token not valid for any token type", "code": "token_not_valid"}
REQUIRED = ["This field is required."]
BLANK = ["This field may not be blank."]
MESSAGE_MAX = 16 * 1024

# The fake's reply when given only tokens=N: these, cycled.
DEFAULT_TOKENS = ["Olá", "!", " Tudo", " bem", "?", ' "quoted"', " new\nline",
                  " emoji 🎉", " tab\there", " back\\slash"]

# Stacks with other settings (each shared by the tests below that ask for it).
CLOSED_PORT = harness.free_port()  # bound once, released: nothing listens there
PROMPT_FILE = os.path.join(tempfile.gettempdir(),
                           f"jarvas-test-prompt-{os.getpid()}-{uuid.uuid4().hex[:8]}.txt")


# --- helpers ------------------------------------------------------------------


def fake(**kw):
    """A directive for tests/fake_ollama: fake(tokens=3, delay_ms=5)."""
    return "[[fake " + " ".join(f"{k}={v}" for k, v in kw.items()) + "]]"


def fake_text(text, **kw):
    """A directive making the fake reply exactly `text` (percent-encoded)."""
    return fake(text=quote(text, safe=""), **kw)


def conv():
    return "c-" + uuid.uuid4().hex[:16]


def marker():
    """A string to find this test's request among everything the fake saw."""
    return "mark-" + uuid.uuid4().hex[:12]


def query(**params):
    return "?" + "&".join(f"{k}={quote(str(v), safe='')}" for k, v in params.items())


def account(stack, prefix="st"):
    """A fresh user with an access token: dict(name, password, access,
    refresh, user_id)."""
    name, password = stack.user(prefix)
    access, refresh = stack.login(name, password)
    (uid,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (name,))[0]
    return dict(name=name, password=password, access=access, refresh=refresh, user_id=uid)


def shared(stack):
    """One user per stack for tests that only need some user; its access
    token is renewed before its 5 minutes run out."""
    f = getattr(stack, "_stream_fixture", None)
    if f is None:
        f = stack._stream_fixture = account(stack, "shared")
        f["at"] = time.monotonic()
    elif time.monotonic() - f["at"] > 240:
        f["access"], f["refresh"] = stack.login(f["name"], f["password"])
        f["at"] = time.monotonic()
    return f


def stream(stack, user, message, conversation=None, method="GET", timeout=30, until=None,
           headers=None):
    """One exchange as a client: GET with the query string or POST JSON."""
    if method == "GET":
        params = {"message": message}
        if conversation is not None:
            params["conversation_id"] = conversation
        return stack.sse(STREAM + query(**params), token=user["access"], timeout=timeout,
                         until=until, headers=headers)
    body = {"message": message}
    if conversation is not None:
        body["conversation_id"] = conversation
    return stack.sse(STREAM, token=user["access"], method="POST", json=body, timeout=timeout,
                     until=until, headers=headers)


def describe(ev, n=12):
    return f"status {ev.status}, events: " + "; ".join(
        f"{e['event']}@{e['t'] - ev.t0:.3f}s {e['raw'][:120]!r}" for e in ev[:n]) + \
        (f" ... ({len(ev)} events)" if len(ev) > n else "") + \
        (f"; body {ev.body[:300]!r}" if ev.body else "")


def check_sse_headers(ev):
    assert ev.status == 200, describe(ev)
    h = ev.headers
    assert h.get("content-type", "").split(";")[0].strip() == "text/event-stream", h
    assert h.get("cache-control") == "no-cache", h
    assert h.get("x-accel-buffering") == "no", h


def parse_stream(ev, conversation="default", outcome="done"):
    """Check the shape of a finished event stream and take it apart:
    dict(chunks (events), text, message_id (from the chunk ids, None when no
    chunk came), final (the data of the last event))."""
    check_sse_headers(ev)
    assert not ev.truncated and not ev.unfinished, "response cut off: " + describe(ev)
    data = ev.data_events()
    assert data, "no events at all: " + describe(ev)
    last = data[-1]
    assert last["event"] == outcome, f"expected the stream to end with {outcome}: " + describe(ev)
    chunks = data[:-1]
    mid, seq = None, None
    for e in chunks:
        assert e["event"] == "message", "unexpected event before the end: " + describe(ev)
        d = e["data"]
        assert isinstance(d, dict) and d.get("type") == "chunk" and \
            isinstance(d.get("content"), str), f"bad chunk event {e['raw'][:300]!r}"
        m = re.fullmatch(r"(\d+):(\d+)", e["id"] or "")
        assert m, f"chunk id {e['id']!r} is not <message_id>:<seq>"
        if mid is None:
            mid = int(m.group(1))
        assert int(m.group(1)) == mid, f"chunk ids name two messages: {mid} and {e['id']}"
        assert seq is None or int(m.group(2)) > seq, f"seq not increasing at {e['id']}"
        seq = int(m.group(2))
    final = last["data"]
    assert isinstance(final, dict), f"{outcome} data is not a JSON object: {last['raw'][:300]!r}"
    if outcome == "done":
        assert final.get("finished") is True, final
        assert final.get("conversation_id") == conversation, final
        assert isinstance(final.get("message_id"), int), final
        if mid is not None:
            assert final["message_id"] == mid, (final, mid)
    else:
        assert final.get("type") == "error", final
        assert isinstance(final.get("message"), str) and final["message"], final
    return dict(chunks=chunks, text="".join(e["data"]["content"] for e in chunks),
                message_id=mid if mid is not None else final.get("message_id"), final=final)


def history(stack, user, conversation):
    r = stack.request("GET", HISTORY + query(conversation_id=conversation), token=user["access"])
    assert r.status == 200, r
    body = r.json()
    assert body.get("conversation_id") == conversation, body
    return body["messages"]


def pairs(messages):
    return [(m["role"], m["content"]) for m in messages]


wait_for = harness.wait_for


def fake_requests_with(stack, mark):
    return [r for r in stack.fake_requests() if mark in str(r.get("last_content", ""))]


def fake_request(stack, mark, timeout=5):
    """The (single) request the fake received whose last message holds mark."""
    reqs = wait_for(lambda: fake_requests_with(stack, mark), timeout,
                    f"the fake upstream receiving the request marked {mark}")
    assert len(reqs) == 1, f"{len(reqs)} upstream requests for one message: {reqs}"
    return reqs[0]


def upstream_messages(rec):
    body = rec["body"]
    assert isinstance(body, dict), f"upstream body is not JSON: {body!r:.300}"
    return [(m["role"], m["content"]) for m in body["messages"]]


def stream_log_lines(stack, user_id):
    out = []
    for p in (stack.state / "log").glob("chat_stream*.log"):
        for line in p.read_text(errors="replace").splitlines():
            if "/api/chat/stream" in line and re.search(rf"\buser={user_id}\b", line):
                out.append(line)
    return out


def wait_request_finished(stack, user_id, count=1, timeout=10):
    """Wait until the responder has logged `count` finished stream requests
    of this user: after that nothing more gets stored for them."""
    return wait_for(lambda: len(stream_log_lines(stack, user_id)) >= count and
                    stream_log_lines(stack, user_id), timeout,
                    f"the responder logging {count} finished stream request(s) of user {user_id}")


def is_human_readable(msg):
    return (isinstance(msg, str) and len(msg) >= 8 and " " in msg
            and re.search(r"[A-Za-z]{3}", msg) is not None
            and not any(ord(c) < 0x20 or 0x7f <= ord(c) < 0xa0 or c == "\ufffd" for c in msg)
            and not msg.lstrip().startswith(("{", "[")))


def default_text(n):
    return "".join(DEFAULT_TOKENS[i % len(DEFAULT_TOKENS)] for i in range(n))


def system_of(rec):
    msgs = upstream_messages(rec)
    assert msgs and msgs[0][0] == "system", msgs[:1]
    return msgs[0][1]


# --- 1. the event stream, GET and POST ----------------------------------------


@harness.cases(["GET", "POST"])
def test_stream_headers_chunks_and_done(stack, method):
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, "hello " + fake(tokens=4), c, method)
    s = parse_stream(ev, c)
    assert len(s["chunks"]) == 4, describe(ev)
    assert s["text"] == default_text(4), s["text"]
    done = s["final"]
    assert done["message_id"] == s["message_id"]
    msgs = history(stack, user, c)
    assert pairs(msgs) == [("user", "hello " + fake(tokens=4)), ("assistant", default_text(4))], msgs
    assert msgs[1]["id"] == done["message_id"], (msgs, done)


def test_conversation_id_defaults_to_default(stack):
    user = account(stack, "defconv")
    s = parse_stream(stack.sse(STREAM + query(message="hi " + fake(tokens=2)),
                               token=user["access"]), "default")
    msgs = history(stack, user, "default")
    assert [m["id"] for m in msgs if m["role"] == "assistant"] == [s["message_id"]], msgs


def test_chunk_sequence_numbers_and_message_ids_are_per_message(stack):
    user = shared(stack)
    c = conv()
    a = parse_stream(stream(stack, user, "one " + fake(tokens=3), c), c)
    b = parse_stream(stream(stack, user, "two " + fake(tokens=3), c), c)
    assert a["message_id"] != b["message_id"], (a["message_id"], b["message_id"])
    ids = [e["id"] for e in a["chunks"]] + [e["id"] for e in b["chunks"]]
    assert len(set(ids)) == len(ids), f"event ids repeat: {ids}"
    assert [m["id"] for m in history(stack, user, c) if m["role"] == "assistant"] == \
        [a["message_id"], b["message_id"]]


# --- 2. incremental arrival ---------------------------------------------------


@harness.cases(["GET", "POST"])
def test_chunks_arrive_one_by_one_as_the_upstream_sends_them(stack, method):
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, "pace " + fake(tokens=5, delay_ms=200), c, method)
    s = parse_stream(ev, c)
    times = [e["t"] for e in s["chunks"]]
    assert len(times) == 5, describe(ev)
    spread = times[-1] - times[0]
    gaps = [b - a for a, b in zip(times, times[1:])]
    detail = f"arrivals after the request: {[round(t - ev.t0, 3) for t in times]}"
    # 4 gaps of 200 ms upstream: the first chunk long before the last ...
    assert spread >= 0.6, f"all chunks within {spread:.3f}s: buffered. {detail}"
    # ... and each one on its own, not in bunches.
    assert all(g >= 0.1 for g in gaps), f"bunched chunks, gaps {gaps}. {detail}"
    assert all(g <= 1.5 for g in gaps), f"a chunk held back, gaps {gaps}. {detail}"
    assert times[0] - ev.t0 < 1.0, f"first chunk late. {detail}"


# --- 3. content round-trips byte for byte -------------------------------------

# name, reply text, extra fake keys
TEXTS = [
    ("newlines", "one\ntwo\nthree\n", {}),
    ("blank_lines", "para one\n\npara two\n\n\n", {}),
    ("carriage_returns", "a\r\nb\rc\r\n\r\n", {}),
    ("double_quotes", 'she said "hi" and "bye"', {}),
    ("single_quotes", "it's 'quoted'", {}),
    ("backslashes", "C:\\path\\to \\n is not a newline \\\\ \\u0041 \\", {}),
    ("tabs", "col1\tcol2\t\tcol4\t", {}),
    ("emoji", "🎉 party 👩‍👩‍👧 family 🇧🇷 flag", {}),
    ("portuguese", "Olá! Ação, coração, São Paulo — tudo bem?", {}),
    ("cjk", "你好，世界。こんにちは", {}),
    ("sse_lookalikes", "data: x\nevent: done\nid: 1:1\n: ping\n\nretry: 1", {}),
    ("json_lookalike", '{"type": "error", "message": "x"}\n', {}),
    ("html", "<script>alert('x')</script> &amp; & <b>", {}),
    ("control_characters", "bell\x07 esc\x1b[0m nul-free \x01\x1f del\x7f", {}),
    ("unicode_line_separators", "a\u2028b\u2029c\u0085d", {}),
    ("spaces_around", "   leading and trailing   ", {}),
    ("multibyte_in_3_byte_chunks", "Olá🎉ção€𝄞 end", {"chunk": 3}),
    ("one_byte_chunks", "a\n\"b\"\\c\td", {"chunk": 1}),
]
ROUND_TRIPS = [(f"{name}_{method}", text, extra, method)
               for name, text, extra in TEXTS for method in ("GET", "POST")]


@harness.cases(ROUND_TRIPS)
def test_content_round_trips_byte_for_byte(stack, case):
    name, text, extra, method = case
    user = shared(stack)
    c = conv()
    message = f"round trip {name}: {fake_text(text, **extra)}"
    s = parse_stream(stream(stack, user, message, c, method), c)
    assert s["text"] == text, f"streamed {s['text']!r}, upstream sent {text!r}"
    assert pairs(history(stack, user, c)) == [("user", message), ("assistant", text)]


def test_a_200000_byte_token_round_trips(stack):
    user = shared(stack)
    c = conv()
    n = 200000
    want = "".join(chr(ord("a") + i % 26) for i in range(n))
    message = "long " + fake(long_line=n)
    s = parse_stream(stream(stack, user, message, c, timeout=60), c)
    assert len(s["text"]) == n and s["text"] == want, \
        f"got {len(s['text'])} bytes, first difference at " \
        f"{next((i for i, (a, b) in enumerate(zip(s['text'], want)) if a != b), min(len(s['text']), n))}"
    msgs = history(stack, user, c)
    assert pairs(msgs)[0] == ("user", message) and msgs[1]["content"] == want, \
        f"stored {len(msgs)} messages, assistant {len(msgs[-1]['content'])} bytes"


# name, message as sent in the query string (already encoded), as stored
QUERY_ENCODINGS = [
    ("plus_is_a_space", "hello+there+" + quote_plus(fake(tokens=1)), "hello there " + fake(tokens=1)),
    ("percent_20_is_a_space", "hello%20there%20" + quote(fake(tokens=1), safe=""),
     "hello there " + fake(tokens=1)),
    ("encoded_plus_stays_plus", "1%2B1%3D2+" + quote_plus(fake(tokens=1)),
     "1+1=2 " + fake(tokens=1)),
    ("utf8_percent_encoded", quote("Olá 🎉 " + fake(tokens=1), safe=""), "Olá 🎉 " + fake(tokens=1)),
    ("lower_case_hex", "ol%c3%a1+" + quote_plus(fake(tokens=1)), "olá " + fake(tokens=1)),
]


@harness.cases(QUERY_ENCODINGS)
def test_get_message_query_encodings(stack, case):
    _, encoded, want = case
    user = shared(stack)
    c = conv()
    ev = stack.sse(f"{STREAM}?message={encoded}&conversation_id={c}", token=user["access"])
    parse_stream(ev, c)
    assert pairs(history(stack, user, c))[0] == ("user", want)


# --- 4. upstream failures end in event: error ---------------------------------


def equals(want):
    def check(msg):
        assert msg == want, f"error message {msg!r}, want {want!r}"
    return check


def human(msg):
    assert is_human_readable(msg), f"error message is not human-readable: {msg!r}"


# name, fake keys, chunks before the error, check of the error message
FAILURES = [
    ("http_500_with_reason", dict(status=500, message="the%20GPU%20caught%20fire"), 0,
     equals("the GPU caught fire")),
    ("http_503_default_reason", dict(status=503), 0, equals("fake upstream failure")),
    ("model_missing", dict(model_missing=1), 0,
     equals(harness.model_missing_reason(MODEL))),
    ("error_line_mid_stream", dict(tokens=6, error_after=3, message="out%20of%20memory"), 3,
     equals("out of memory")),
    ("error_line_first", dict(tokens=6, error_after=0, message="model%20is%20loading"), 0,
     equals("model is loading")),
    ("malformed_line_mid_stream", dict(tokens=6, malformed_after=2), 2, human),
    ("malformed_line_first", dict(tokens=6, malformed_after=0), 0, human),
    ("garbage", dict(garbage=1, tokens=3), 0, human),
    ("cut_mid_stream", dict(tokens=6, cut_after=2), 2, human),
    ("cut_before_any_token", dict(tokens=6, cut_after=0), 0, human),
    ("no_done_line", dict(tokens=4, nodone=1), 4, human),
]


@harness.cases(FAILURES)
def test_upstream_failure_ends_in_an_error_event(stack, case):
    name, keys, nchunks, check = case
    user = shared(stack)
    c = conv()
    message = f"fail {name} {fake(**keys)}"
    ev = stream(stack, user, message, c, timeout=15)
    s = parse_stream(ev, c, outcome="error")
    assert len(ev.named("error")) == 1 and not ev.named("done"), describe(ev)
    assert len(s["chunks"]) == nchunks, describe(ev)
    assert s["text"] == default_text(nchunks), s["text"]
    check(s["final"]["message"])
    took = ev.named("error")[0]["t"] - ev.t0
    assert took < 5, f"the error came only after {took:.1f}s"
    # What the user saw is what history holds; no text, nothing stored.
    want = [("user", message), ("assistant", s["text"])] if nchunks else []
    assert pairs(history(stack, user, c)) == want


@harness.stack_env(JARVAS_UPSTREAM_URL=f"http://127.0.0.1:{CLOSED_PORT}")
@harness.cases(["GET", "POST"])
def test_upstream_refused_ends_in_an_error_event(stack, method):
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, "anyone there?", c, method, timeout=20)
    s = parse_stream(ev, c, outcome="error")
    assert not s["chunks"], describe(ev)
    human(s["final"]["message"])
    took = ev.named("error")[0]["t"] - ev.t0
    assert took < 10, f"the error came only after {took:.1f}s"
    assert history(stack, user, c) == []


# name, fake keys, chunks before the silence
SILENCES = [
    ("silent_from_the_start", dict(hang=1), 0),
    ("silent_after_2_tokens", dict(hang=1, hang_after=2), 2),
]


@harness.stack_env(JARVAS_UPSTREAM_IDLE_TIMEOUT="2")
@harness.cases(SILENCES)
def test_upstream_silent_past_the_idle_timeout_ends_in_an_error_event(stack, case):
    name, keys, nchunks = case
    user = shared(stack)
    c = conv()
    message = f"idle {name} {fake(**keys)}"
    ev = stream(stack, user, message, c, timeout=20)
    s = parse_stream(ev, c, outcome="error")
    assert len(s["chunks"]) == nchunks, describe(ev)
    human(s["final"]["message"])
    last_data = s["chunks"][-1]["t"] if s["chunks"] else ev.t0
    silent = ev.named("error")[0]["t"] - last_data
    assert 1.5 <= silent <= 6, f"error after {silent:.1f}s of silence; idle timeout is 2s"
    want = [("user", message), ("assistant", s["text"])] if nchunks else []
    assert pairs(history(stack, user, c)) == want
    # The upstream request was given up, not left hanging.
    rec = wait_for(lambda: [r for r in fake_requests_with(stack, name) if r["client_closed"]],
                   5, "the fake seeing the upstream request closed")
    assert len(rec) == 1, rec


# --- 5. pings -----------------------------------------------------------------


@harness.stack_env(JARVAS_PING_INTERVAL="1")
@harness.cases(["GET", "POST"])
def test_pings_are_sent_while_waiting_for_the_first_token(stack, method):
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, "slow start " + fake(first_ms=3500, tokens=3), c, method, timeout=20)
    s = parse_stream(ev, c)
    first_chunk = s["chunks"][0]["t"]
    # Other comments are allowed (SSE clients ignore them); pings are ": ping".
    pings = [e for e in ev.named("comment") if e["t"] < first_chunk and e["data"] == "ping"]
    times = [round(e["t"] - ev.t0, 2) for e in pings]
    assert len(pings) >= 2, f"pings before the first chunk at {times}; first chunk at " \
        f"{first_chunk - ev.t0:.2f}s"
    assert times[0] <= 2.5, f"first ping only at {times[0]}s with JARVAS_PING_INTERVAL=1"
    gaps = [b - a for a, b in zip([0] + times, times + [first_chunk - ev.t0])]
    assert max(gaps) <= 2.5, f"silence of {max(gaps):.2f}s: pings at {times}"
    assert s["text"] == default_text(3)


# --- 6. the client goes away --------------------------------------------------


def leave(stack, user, message, conversation, after_chunks, mark):
    """Open a GET stream and close the connection after `after_chunks`
    chunks (after_chunks=0: once the fake has the upstream request). Returns
    (chunks the client received, wall-clock time it closed)."""
    if after_chunks:
        ev = stream(stack, user, message, conversation, timeout=20,
                    until=lambda e, evs: len([x for x in evs if x["event"] == "message"])
                    >= after_chunks)
        left = time.time()
        assert ev.aborted, "the stream ended before the client could leave: " + describe(ev)
        check_sse_headers(ev)
        return [e for e in ev if e["event"] == "message"], left
    path = STREAM + query(message=message, conversation_id=conversation)
    raw = harness._build_request(stack.port, "GET", path, None, None, None, user["access"],
                                 None)
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=20)
    try:
        s.sendall(raw)
        resp = http.client.HTTPResponse(s, method="GET")
        resp.begin()
        assert resp.status == 200, resp.status
        fake_request(stack, mark, timeout=10)
    finally:
        s.shutdown(socket.SHUT_RDWR)
        s.close()
    return [], time.time()


# name, fake keys, chunks after which the client leaves
ABORTS = [
    ("slow_upstream", dict(tokens=40, delay_ms=500), 2),
    ("silent_upstream_after_2_tokens", dict(hang=1, hang_after=2), 2),
    ("silent_upstream_from_the_start", dict(hang=1, hang_after=0), 0),
]


@harness.cases(ABORTS)
def test_client_leaving_aborts_the_upstream_within_2s(stack, case):
    name, keys, after = case
    user = account(stack, "abort")
    c = conv()
    mark = marker()
    message = f"abort {name} {mark} {fake(**keys)}"
    got, left = leave(stack, user, message, c, after, mark)
    assert len(got) == after, got
    rec = wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r["client_closed"]],
                   10, "the fake seeing the upstream request closed")[0]
    late = rec["closed_at"] - left * 1000
    assert late <= 2000, f"upstream closed {late:.0f} ms after the client left"
    if "tokens" in keys:
        assert rec["tokens_sent"] < keys["tokens"], rec  # generation stopped


@harness.cases(ABORTS)
def test_after_the_client_leaves_history_holds_what_it_was_sent(stack, case):
    name, keys, after = case
    user = account(stack, "abortsave")
    c = conv()
    mark = marker()
    message = f"abort {name} {mark} {fake(**keys)}"
    got, _ = leave(stack, user, message, c, after, mark)
    wait_request_finished(stack, user["user_id"])
    text = "".join(e["data"]["content"] for e in got)
    want = [("user", message), ("assistant", text)] if text else []
    msgs = history(stack, user, c)
    assert pairs(msgs) == want, f"client saw {text!r}; history {pairs(msgs)}"
    if got:
        assert msgs[1]["id"] == int(got[0]["id"].split(":")[0]), (msgs, got[0]["id"])


def test_a_client_that_stops_reading_is_dropped_and_the_upstream_stopped(stack):
    """A client that keeps its connection but reads nothing while the model
    writes fast: once a bounded backlog waits for it, the relay drops it,
    stops the upstream, stores the part it queued, and serves the next
    stream as usual."""
    user = account(stack, "slow")
    c = conv()
    mark = marker()
    message = f"slow reader {mark} {fake(tokens=300000)}"
    path = STREAM + query(message=message, conversation_id=c)
    raw = harness._build_request(stack.port, "GET", path, None, None, None, user["access"],
                                 None)
    s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    s.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4096)  # before connect: a small window
    s.settimeout(20)
    try:
        s.connect(("127.0.0.1", stack.port))
        s.sendall(raw)
        # Read nothing; wait for the fake to see its client (jarvas) leave.
        rec = wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("closed_at")],
                       30, "the upstream request being stopped")[0]
        assert rec["client_closed"] and 0 < rec["tokens_sent"] < 300000, rec
        lines = wait_request_finished(stack, user["user_id"], timeout=20)
        assert "outcome=client_gone" in lines[-1], lines[-1]
        logs = "".join(p.read_text(errors="replace")
                       for p in (stack.state / "log").glob("chat_stream*.log"))
        assert "the client stopped reading" in logs, "dropped for another reason"
    finally:
        s.close()
    msgs = history(stack, user, c)
    assert [m["role"] for m in msgs] == ["user", "assistant"], pairs(msgs)
    assert msgs[0]["content"] == message
    full = default_text(300000)
    assert 0 < len(msgs[1]["content"]) < len(full) and full.startswith(msgs[1]["content"]), \
        len(msgs[1]["content"])
    c2 = conv()
    parse_stream(stream(stack, user, "next " + fake(tokens=2), c2), c2)


@harness.stack_env(JARVAS_WORKERS_CHAT_STREAM="2")
def test_threads_of_streams_the_client_left_are_free_again(stack):
    """With 2 stream threads, 6 clients in a row leaving silent streams and
    then a normal stream all get served: each abort freed its thread."""
    user = shared(stack)
    for i in range(6):
        mark = marker()
        leave(stack, user, f"leak {i} {mark} {fake(hang=1)}", conv(), 0, mark)
    c = conv()
    parse_stream(stream(stack, user, "still there? " + fake(tokens=2), c, timeout=15), c)


# --- 7. what a failure leaves in history --------------------------------------

# name, fake keys, stored reply (None: nothing stored)
FAILURE_STORAGE = [
    ("status_500_stores_nothing", dict(status=500), None),
    ("model_missing_stores_nothing", dict(model_missing=1), None),
    ("error_after_3_stores_the_3_tokens", dict(tokens=6, error_after=3), default_text(3)),
    ("cut_after_2_stores_the_2_tokens", dict(tokens=6, cut_after=2), default_text(2)),
]


@harness.cases(FAILURE_STORAGE)
def test_failure_stores_only_the_text_that_was_sent(stack, case):
    name, keys, stored = case
    user = account(stack, "failstore")
    c = conv()
    message = f"{name} {fake(**keys)}"
    ev = stream(stack, user, message, c, method="POST", timeout=15)
    parse_stream(ev, c, outcome="error")
    want = [] if stored is None else [("user", message), ("assistant", stored)]
    assert pairs(history(stack, user, c)) == want
    # ... and an exchange that stored nothing leaves no trace upstream next time.
    mark = marker()
    parse_stream(stream(stack, user, f"next {mark} {fake(tokens=1)}", c), c)
    sent = upstream_messages(fake_request(stack, mark))[1:-1]
    assert sent == want, sent


# --- 8. history as the upstream sees it ---------------------------------------


def exchange(stack, user, conversation, question, reply):
    message = f"{question} {fake_text(reply)}"
    parse_stream(stream(stack, user, message, conversation), conversation)
    return message


@harness.stack_env(JARVAS_HISTORY_LIMIT="3")
def test_upstream_gets_system_then_last_3_messages_then_the_new_one(stack):
    a, b = account(stack, "hista"), account(stack, "histb")
    c1, c2 = conv(), conv()
    q = {}
    q["a0"] = exchange(stack, a, c1, "A-c1-q0", "A-c1-r0")
    q["b0"] = exchange(stack, b, c1, "B-c1-q0", "B-c1-r0")  # same conversation id, other user
    q["a2"] = exchange(stack, a, c2, "A-c2-q0", "A-c2-r0")  # same user, other conversation
    q["a1"] = exchange(stack, a, c1, "A-c1-q1", "A-c1-r1")
    q["a3"] = exchange(stack, a, c1, "A-c1-q2", "A-c1-r2")
    mark = marker()
    new = f"A-c1-q3 {mark} {fake(tokens=1)}"
    parse_stream(stream(stack, a, new, c1), c1)
    rec = fake_request(stack, mark)
    msgs = upstream_messages(rec)
    assert msgs[0][0] == "system", msgs
    assert msgs[1:] == [("assistant", "A-c1-r1"), ("user", q["a3"]), ("assistant", "A-c1-r2"),
                        ("user", new)], msgs[1:]
    assert a["name"] in msgs[0][1], f"the username is not in the system prompt: {msgs[0][1]!r}"
    assert b["name"] not in str(rec["body"]), "another user's name went upstream"
    for other in ("B-c1", "A-c2"):
        assert other not in str(rec["body"]), f"{other} messages went upstream: {rec['body']}"
    assert rec["body"].get("model") == MODEL and rec["body"].get("stream") is True, rec["body"]
    # B's first message in c1 went up without anything of A's.
    brec = [r for r in stack.fake_requests() if "B-c1-q0" in str(r.get("last_content"))]
    assert len(brec) == 1, brec
    bmsgs = upstream_messages(brec[0])
    assert [m[0] for m in bmsgs] == ["system", "user"], bmsgs
    assert b["name"] in bmsgs[0][1] and a["name"] not in bmsgs[0][1], bmsgs[0][1]


# What the chat request carries besides model and messages, by protocol: the
# suite runs against either (harness.UPSTREAM_API), so this says which one
# the stack really spoke.
REQUEST_OPTIONS = {
    "ollama": {"stream": True},
    "openai": {"stream": True, "stream_options": {"include_usage": True}},
}


def test_the_upstream_is_asked_by_the_protocol_in_use(stack):
    mark = marker()
    parse_stream(stream(stack, shared(stack), f"{mark} {fake(tokens=1)}", "default"))
    rec = fake_request(stack, mark)
    assert rec["api"] == harness.UPSTREAM_API, rec
    body = rec["body"]
    want = REQUEST_OPTIONS[harness.UPSTREAM_API]
    assert set(body) == {"model", "messages", *want}, body
    assert {k: body[k] for k in want} == want and body["model"] == MODEL, body


def test_history_endpoint_lists_the_streamed_exchanges_oldest_first(stack):
    user = account(stack, "histlist")
    c = conv()
    m1 = exchange(stack, user, c, "first", "reply one")
    m2 = exchange(stack, user, c, "second", "reply two")
    msgs = history(stack, user, c)
    assert pairs(msgs) == [("user", m1), ("assistant", "reply one"), ("user", m2),
                           ("assistant", "reply two")]
    assert [m["id"] for m in msgs] == sorted(m["id"] for m in msgs), msgs


# --- 9. Last-Event-ID ---------------------------------------------------------

# name, method, token in the query string
RECONNECTS = [("GET_header_token", "GET", False), ("GET_query_token", "GET", True),
              ("POST", "POST", False)]


@harness.cases(RECONNECTS)
def test_last_event_id_gets_204_and_nothing_happens(stack, case):
    _, method, in_query = case
    user = account(stack, "reconnect")
    c = conv()
    mark = marker()
    message = f"again {mark} {fake(tokens=2)}"
    headers = {"Last-Event-ID": "41:3"}
    if method == "GET":
        params = dict(message=message, conversation_id=c)
        if in_query:
            params["access_token"] = user["access"]
        r = stack.request("GET", STREAM + query(**params), headers=headers,
                          token=None if in_query else user["access"])
    else:
        r = stack.request("POST", STREAM, json={"message": message, "conversation_id": c},
                          headers=headers, token=user["access"])
    assert r.status == 204, r
    assert r.body == b"", r
    assert "text/event-stream" not in r.headers.get("content-type", ""), r.headers
    assert history(stack, user, c) == []
    assert fake_requests_with(stack, mark) == [], "a reconnect was sent upstream"
    assert stack.sqlite("SELECT count(*) FROM messages WHERE user_id = ?",
                        (user["user_id"],)) == [(0,)]


def raw_blocks(body):
    """The blocks of a raw event stream (as this server frames them: LF,
    blank line between blocks), each a dict of its fields, comments left
    out; a block of comments only is left out too."""
    blocks = []
    for block in body.decode().split("\n\n"):
        fields = {}
        for line in block.split("\n"):
            if line and not line.startswith(":"):
                name, _, value = line.partition(":")
                fields[name] = value.removeprefix(" ")
        if fields:
            blocks.append(fields)
    return blocks


def event_ids(blocks, what):
    """[(message_id, seq)] of every block, which must each carry an id."""
    ids = []
    for b in blocks:
        m = re.fullmatch(r"(\d+):(\d+)", b.get("id", ""))
        assert m, f"{what}: a block without an id of the form <message_id>:<seq>: {b}"
        ids.append((int(m.group(1)), int(m.group(2))))
    return ids


# name, method, fake keys, chunks, how it ends
ENDINGS = [
    ("http_500_before_any_token", "GET", dict(status=500), 0, "error"),
    ("model_missing", "GET", dict(model_missing=1), 0, "error"),
    ("error_line_before_any_token", "GET", dict(tokens=3, error_after=0), 0, "error"),
    ("cut_before_any_token", "GET", dict(tokens=3, cut_after=0), 0, "error"),
    ("http_503_post", "POST", dict(status=503), 0, "error"),
    ("error_line_after_2_tokens", "GET", dict(tokens=4, error_after=2), 2, "error"),
    ("done_after_3_tokens", "GET", dict(tokens=3), 3, "done"),
]


@harness.cases(ENDINGS)
def test_every_stream_carries_increasing_ids_from_its_first_bytes(stack, case):
    """A browser that reconnects sends its last event id, and gets 204 (9.
    above) instead of sending the message again: so even a stream that
    fails before its first chunk must have set one, in the preamble, and
    the end event moves it on. The preamble also tells clients to back off."""
    name, method, keys, nchunks, end = case
    user = shared(stack)
    c = conv()
    message = f"ids {name} {fake(**keys)}"
    if method == "GET":
        r = stack.request("GET", STREAM + query(message=message, conversation_id=c),
                          token=user["access"])
    else:
        r = stack.request("POST", STREAM, json={"message": message, "conversation_id": c},
                          token=user["access"])
    assert r.status == 200, r
    blocks = raw_blocks(r.body)
    assert blocks, f"no fields at all: {r.body[:300]!r}"
    pre = blocks[0]
    assert "data" not in pre and "event" not in pre, f"the preamble is an event: {pre}"
    assert pre.get("retry", "").isdigit() and int(pre["retry"]) >= 1000, \
        f"no retry of at least a second in the preamble: {pre}"
    assert [b.get("event", "message") for b in blocks[1:]] == ["message"] * nchunks + [end], \
        r.body[:600]
    ids = event_ids(blocks, name)
    assert len({mid for mid, _ in ids}) == 1, f"ids name several messages: {ids}"
    assert ids[0][1] == 0, f"the preamble's id is not <message_id>:0: {ids[0]}"
    assert all(a < b for a, b in zip(ids, ids[1:])), f"ids do not increase: {ids}"
    if end == "done":
        assert json.loads(blocks[-1]["data"])["message_id"] == ids[0][0], blocks[-1]


@harness.stack_env(JARVAS_UPSTREAM_URL=f"http://127.0.0.1:{CLOSED_PORT}")
def test_a_refused_upstream_still_gives_ids_before_the_error(stack):
    user = shared(stack)
    r = stack.request("GET", STREAM + query(message="ids refused", conversation_id=conv()),
                      token=user["access"])
    assert r.status == 200, r
    blocks = raw_blocks(r.body)
    assert [b.get("event") for b in blocks] == [None, "error"], r.body[:600]
    ids = event_ids(blocks, "refused")
    assert ids[0][1] == 0 and ids[1][0] == ids[0][0] and ids[1][1] > 0, ids


# --- 10. errors before the stream are plain JSON ------------------------------


def refresh_token(stack):
    return shared(stack)["refresh"]


def access_token(stack):
    return shared(stack)["access"]


# Each row: name, method, query params or raw query (str), JSON body (or raw
# bytes), token (callable(stack) or None), status, expected body (dict, or a
# callable checking it). "MARK" in a message is replaced by a fresh marker.
BIG = "a" * (MESSAGE_MAX + 1)


def field_error(field):
    def check(body):
        assert set(body) == {field} and isinstance(body[field], list) and body[field] and \
            all(isinstance(x, str) and x for x in body[field]), body
    return check


def some_detail(body):
    assert isinstance(body, dict) and body, body
    assert all(isinstance(v, (str, list)) for v in body.values()), body


GOOD = "hello MARK " + fake(tokens=1)
PRE_STREAM_ERRORS = [
    ("no_token_GET", "GET", dict(message=GOOD), None, None, 401, NOT_PROVIDED),
    ("no_token_POST", "POST", None, {"message": GOOD}, None, 401, NOT_PROVIDED),
    ("garbage_token_GET", "GET", dict(message=GOOD), None, lambda s: "garbage", 401, NOT_VALID),
    ("garbage_token_POST", "POST", None, {"message": GOOD}, lambda s: "a.b.c", 401, NOT_VALID),
    ("refresh_token_as_access_GET", "GET", dict(message=GOOD), None, refresh_token, 401,
     NOT_VALID),
    ("refresh_token_as_access_POST", "POST", None, {"message": GOOD}, refresh_token, 401,
     NOT_VALID),
    ("refresh_token_in_query", "GET", "REFRESH", None, None, 401, NOT_VALID),
    ("garbage_token_in_query", "GET", dict(message=GOOD, access_token="x.y.z"), None, None, 401,
     NOT_VALID),
    ("query_token_is_for_GET_only", "POST", "ACCESS", {"message": GOOD}, None, 401, NOT_PROVIDED),
    ("missing_message_GET", "GET", dict(conversation_id="x"), None, access_token, 400,
     {"message": REQUIRED}),
    ("empty_message_GET", "GET", dict(message=""), None, access_token, 400, {"message": BLANK}),
    ("blank_message_GET", "GET", dict(message=" \t\n "), None, access_token, 400,
     {"message": BLANK}),
    ("missing_message_POST", "POST", None, {"conversation_id": "x"}, access_token, 400,
     {"message": REQUIRED}),
    ("blank_message_POST", "POST", None, {"message": "  \n"}, access_token, 400,
     {"message": BLANK}),
    ("message_a_number_POST", "POST", None, {"message": 42}, access_token, 400,
     field_error("message")),
    ("message_null_POST", "POST", None, {"message": None}, access_token, 400,
     field_error("message")),
    ("message_a_list_POST", "POST", None, {"message": ["MARK"]}, access_token, 400,
     field_error("message")),
    ("message_over_16KiB_POST", "POST", None, {"message": BIG + " MARK"}, access_token, 400,
     field_error("message")),
    ("message_over_16KiB_multibyte_POST", "POST", None,
     {"message": "é" * (MESSAGE_MAX // 2) + "MARK"}, access_token, 400, field_error("message")),
    ("message_over_16KiB_GET", "GET", dict(message="MARK" + BIG), None, access_token, 400,
     field_error("message")),
    ("body_over_1MiB_POST", "POST", None, {"message": "MARK", "pad": "x" * (1 << 20)},
     access_token, 413, some_detail),
] + [
    (f"bad_conversation_id_{n}_{m}", m, dict(message=GOOD, conversation_id=cid) if m == "GET"
     else None, None if m == "GET" else {"message": GOOD, "conversation_id": cid},
     access_token, 400, field_error("conversation_id"))
    for n, cid in [("empty", ""), ("space", "has space"), ("65_chars", "a" * 65),
                   ("non_ascii", "conversação"), ("slash", "a/b"), ("dots", ".."),
                   ("newline", "a\nb")]
    for m in ("GET", "POST")
] + [
    ("conversation_id_a_number_POST", "POST", None, {"message": GOOD, "conversation_id": 5},
     access_token, 400, field_error("conversation_id")),
] + [
    (f"bad_query_{n}", "GET", raw, None, access_token, 400, some_detail)
    for n, raw in [("bad_percent_hex", "message=MARK%zz"),
                   ("percent_at_the_end", "message=MARK%"),
                   ("percent_one_digit_at_the_end", "message=MARK%4"),
                   ("invalid_utf8_byte", "message=MARK%FF"),
                   ("truncated_utf8", "message=MARK%E2%82"),
                   ("overlong_utf8", "message=MARK%C0%AF"),
                   ("utf8_surrogate", "message=MARK%ED%A0%80"),
                   ("nul_byte", "message=MARK%00x"),
                   ("bad_conversation_encoding", "message=MARK&conversation_id=%zz")]
] + [
    (f"bad_body_{n}", "POST", None, raw, access_token, 400, some_detail)
    for n, raw in [("truncated_json", b'{"message": "MARK'),
                   ("not_json", b"MARK please"),
                   ("json_array", b'["MARK"]'),
                   ("json_string", b'"MARK"'),
                   ("empty", b""),
                   ("invalid_utf8", b'{"message": "MARK \xff\xfe"}'),
                   ("escaped_nul", b'{"message": "MARK \\u0000 cut"}')]
]


def _resolve(stack, value, mark):
    if isinstance(value, str):
        return value.replace("MARK", mark)
    if isinstance(value, bytes):
        return value.replace(b"MARK", mark.encode())
    if isinstance(value, dict):
        return {k: _resolve(stack, v, mark) for k, v in value.items()}
    if isinstance(value, list):
        return [_resolve(stack, v, mark) for v in value]
    return value


@harness.cases(PRE_STREAM_ERRORS)
def test_errors_before_the_stream_are_plain_json(stack, case):
    _, method, params, body, token, status, want = case
    mark = marker()
    if params == "REFRESH":
        path = STREAM + query(message=GOOD.replace("MARK", mark),
                              access_token=refresh_token(stack))
    elif params == "ACCESS":
        path = STREAM + query(access_token=access_token(stack))
    elif isinstance(params, str):
        path = STREAM + "?" + params.replace("MARK", mark)
    elif params is not None:
        path = STREAM + query(**_resolve(stack, params, mark))
    else:
        path = STREAM
    kw = {}
    if isinstance(body, bytes):
        kw = dict(body=_resolve(stack, body, mark),
                  headers={"Content-Type": "application/json"})
    elif body is not None:
        kw = dict(json=_resolve(stack, body, mark))
    r = stack.request(method, path, token=token(stack) if token else None, **kw)
    assert r.status == status, r
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"content-type {ctype!r}: {r}"
    got = r.json()
    if callable(want):
        want(got)
    else:
        assert got == want, got
    if status == 401 and want == NOT_PROVIDED:
        assert r.headers.get("www-authenticate") == 'Bearer realm="api"', r.headers
    assert fake_requests_with(stack, mark) == [], "the bad request was sent upstream"


@harness.cases(["PUT", "DELETE", "PATCH"])
def test_other_methods_get_405_with_allow(stack, method):
    r = stack.request(method, STREAM, json={"message": "x"} if method != "DELETE" else None,
                      token=access_token(stack))
    assert r.status == 405, r
    allow = {m.strip() for m in r.headers.get("allow", "").split(",")}
    assert {"GET", "POST"} <= allow, r.headers
    assert r.json() == {"detail": f'Method "{method}" not allowed.'}, r


def test_message_of_exactly_16KiB_is_accepted(stack):
    user = shared(stack)
    c = conv()
    tail = " " + fake(tokens=1)
    message = "b" * (MESSAGE_MAX - len(tail)) + tail
    assert len(message.encode()) == MESSAGE_MAX
    parse_stream(stream(stack, user, message, c, method="POST"), c)
    assert pairs(history(stack, user, c))[0] == ("user", message)


def test_get_accepts_a_12KiB_non_ascii_message(stack):
    """Under the 16 KiB limit, a GET message must not fail just because
    percent-encoding triples its length in the URL."""
    user = shared(stack)
    c = conv()
    tail = " " + fake(tokens=1)
    message = "é" * 6000 + tail  # 12000 bytes, 36000 once percent-encoded
    ev = stream(stack, user, message, c)
    assert ev.status == 200, describe(ev)
    parse_stream(ev, c)
    assert pairs(history(stack, user, c))[0] == ("user", message)


@harness.cases(["header", "query"])
def test_get_with_access_token_in_the_query_streams(stack, where):
    user = shared(stack)
    c = conv()
    message = "via query " + fake(tokens=2)
    if where == "query":
        ev = stack.sse(STREAM + query(message=message, conversation_id=c,
                                      access_token=user["access"]))
    else:
        ev = stream(stack, user, message, c)
    parse_stream(ev, c)
    assert pairs(history(stack, user, c))[0] == ("user", message)


def test_query_token_never_reaches_the_logs(stack):
    user = shared(stack)
    c = conv()
    parse_stream(stack.sse(STREAM + query(message="log me " + fake(tokens=1), conversation_id=c,
                                          access_token=user["access"])), c)
    wait_request_finished(stack, user["user_id"])
    signature = user["access"].rsplit(".", 1)[1]
    for p in (stack.state / "log").glob("*.log"):
        assert signature not in p.read_text(errors="replace"), f"the access token is in {p}"


# --- 11. concurrency ----------------------------------------------------------


@harness.timeout(240)
def test_50_concurrent_streams_each_get_their_own_complete_reply(stack):
    n, per_user = 50, 4
    users = [account(stack, "conc") for _ in range((n + per_user - 1) // per_user)]
    barrier = threading.Barrier(n)
    results = [None] * n

    def run(i):
        try:
            user = users[i // per_user]
            c = f"conc-{i}-{uuid.uuid4().hex[:8]}"
            words = " ".join(f"s{i}w{k}" for k in range(12))
            barrier.wait(30)
            ev = stream(stack, user, f"stream {i} {fake_text(words, delay_ms=100)}", c,
                        "GET" if i % 2 else "POST", timeout=90)
            results[i] = (c, words, ev, None)
        except Exception as exc:  # noqa: BLE001 — reported below
            results[i] = (None, None, None, exc)

    threads = [threading.Thread(target=run, args=(i,), daemon=True) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(150)
    assert not any(t.is_alive() for t in threads), "some streams never ended"
    errors = [f"#{i}: {r[3]!r}" for i, r in enumerate(results) if r[3] is not None]
    assert not errors, "\n".join(errors[:5])
    ids, starts, ends = set(), [], []
    for i, (c, words, ev, _) in enumerate(results):
        s = parse_stream(ev, c)
        assert s["text"] == words, f"#{i} got {s['text']!r}, want {words!r}"
        ids.add(s["message_id"])
        starts.append(s["chunks"][0]["t"])
        ends.append(ev.named("done")[0]["t"])
    assert len(ids) == n, f"{n} streams, {len(ids)} distinct message ids"
    assert max(starts) < min(ends), "the streams did not run at the same time"
    for i, (c, words, ev, _) in enumerate(results):
        msgs = history(stack, users[i // per_user], c)
        assert [(m["role"], m["content"]) for m in msgs][1:] == [("assistant", words)], msgs


# --- 12. the operator's script ------------------------------------------------


# name, fake keys, extra environment, should pass
OPERATOR_SCRIPT = [
    ("passes_when_chunks_arrive_one_by_one", dict(tokens=8, delay_ms=100), {}, True),
    ("fails_when_chunks_arrive_all_at_once", dict(tokens=8, delay_ms=0), {"MIN_SPREAD": "0.2"},
     False),
]


@harness.timeout(150)
@harness.cases(OPERATOR_SCRIPT)
def test_operator_streaming_script(stack, case):
    _, keys, extra, passes = case
    name, password = stack.user("operator")
    env = {k: v for k, v in os.environ.items() if not k.startswith("JARVAS_")}
    env.update(BASE_URL=f"http://127.0.0.1:{stack.port}", JARVAS_USER=name,
               JARVAS_PASSWORD=password, JARVAS_STATE_DIR=str(stack.state),
               TEST_MESSAGE=f"Tell me a story {fake(**keys)}", **extra)
    r = subprocess.run(["bash", str(harness.ROOT / "tests" / "test_streaming.sh")], env=env,
                       capture_output=True, text=True, timeout=120, cwd=str(harness.ROOT))
    out = r.stdout + r.stderr
    lines = out.splitlines()
    if passes:
        assert r.returncode == 0, f"exit {r.returncode}:\n{out}"
        heads = [i for i, ln in enumerate(lines) if re.match(r"\[\d/4\]", ln)]
        assert [lines[i][:5] for i in heads] == ["[1/4]", "[2/4]", "[3/4]", "[4/4]"], out
        for a, b in zip(heads, heads[1:] + [len(lines)]):
            assert any("✓" in ln for ln in lines[a + 1:b]), f"no ✓ after {lines[a]!r}:\n{out}"
        assert "✗" not in out, out
    else:
        assert r.returncode != 0, f"the script passed although nothing was paced:\n{out}"
        bad = [ln for ln in out.splitlines() if "✗" in ln]
        assert bad, f"no ✗ line:\n{out}"
        reason = bad[0].split("✗", 1)[1].strip()
        assert len(reason) >= 10, f"✗ without a reason:\n{out}"
        assert "[3/4]" in out and out.index("[3/4]") < out.index("✗"), out
        assert "chunks" in reason, f"the reason does not say what was wrong: {reason}"


# --- 13. the prompt cache -----------------------------------------------------


def cache_rows(stack, name):
    return stack.sqlite("SELECT key, hits, expires_at, created_at FROM prompt_cache "
                        "WHERE value LIKE ?", (f'%"{name}"%',))


def test_prompt_cache_keeps_one_row_per_user_counting_hits(stack):
    a, b = account(stack, "cachea"), account(stack, "cacheb")
    hits = []
    for i in range(4):
        c = conv()
        parse_stream(stream(stack, a, f"cache {i} {fake(tokens=1)}", c), c)
        rows = cache_rows(stack, a["name"])
        assert len(rows) == 1, f"after request {i + 1}: {len(rows)} prompt_cache rows: {rows}"
        hits.append(rows[0][1])
        assert rows[0][2] > time.time(), f"cache row already expired: {rows[0]}"
    assert hits == list(range(hits[0], hits[0] + 4)), f"hits after each request: {hits}"
    key = cache_rows(stack, a["name"])[0][0]
    c = conv()
    parse_stream(stream(stack, b, "cache b " + fake(tokens=1), c), c)
    rows_b = cache_rows(stack, b["name"])
    assert len(rows_b) == 1 and rows_b[0][0] != key, rows_b
    assert cache_rows(stack, a["name"])[0][1] == hits[-1], "B's request counted as A's hit"


def system_prompt_seen(stack, user, label):
    mark = marker()
    c = conv()
    parse_stream(stream(stack, user, f"{label} {mark} {fake(tokens=1)}", c), c)
    return system_of(fake_request(stack, mark))


def write_in_place(path, text):
    with open(path, "w") as f:
        f.write(text)


def write_by_rename(path, text):
    tmp = path + ".new"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


@harness.stack_env(JARVAS_SYSTEM_PROMPT_FILE=PROMPT_FILE)
@harness.cases([("rewritten_in_place_same_size", write_in_place),
                ("replaced_by_rename", write_by_rename)])
def test_base_prompt_change_is_seen_by_the_next_request(stack, case):
    _, write = case
    user = account(stack, "base")
    try:
        v1 = f"BASE-PROMPT-ONE {uuid.uuid4().hex}. Be brief."
        v2 = f"BASE-PROMPT-TWO {uuid.uuid4().hex}. Be brief."
        assert len(v1) == len(v2)
        write_in_place(PROMPT_FILE, v1)
        s1 = system_prompt_seen(stack, user, "v1")
        assert s1.startswith(v1) and user["name"] in s1, s1
        assert system_prompt_seen(stack, user, "v1 again") == s1
        write(PROMPT_FILE, v2)
        s2 = system_prompt_seen(stack, user, "v2")
        assert s2.startswith(v2) and v1 not in s2, f"after the change the system prompt is {s2!r}"
        assert user["name"] in s2, s2
    finally:
        for p in (PROMPT_FILE, PROMPT_FILE + ".new"):
            if os.path.exists(p):
                os.remove(p)


def set_context(stack, name, text):
    r = subprocess.run([str(harness.BIN_DIR / "jarvas-admin"), "context", name], input=text,
                       env=stack.env, capture_output=True, text=True, timeout=30,
                       cwd=str(harness.ROOT))
    assert r.returncode == 0, f"jarvas-admin context failed ({r.returncode}): {r.stderr}"


def test_user_context_change_is_seen_by_the_next_request(stack):
    user = account(stack, "ctx")
    plain = system_prompt_seen(stack, user, "before")
    assert user["name"] in plain, plain
    assert system_prompt_seen(stack, user, "cached") == plain
    one = f"CONTEXT-ONE {uuid.uuid4().hex}: prefers metric units."
    set_context(stack, user["name"], one + "\n")
    s1 = system_prompt_seen(stack, user, "after one")
    assert one in s1, f"context not in the system prompt: {s1!r}"
    two = f"CONTEXT-TWO {uuid.uuid4().hex}: lives in Lisbon."
    set_context(stack, user["name"], two + "\n")
    s2 = system_prompt_seen(stack, user, "after two")
    assert two in s2 and one not in s2, f"system prompt after the second change: {s2!r}"
    set_context(stack, user["name"], "")
    s3 = system_prompt_seen(stack, user, "cleared")
    assert two not in s3 and one not in s3, f"system prompt after clearing: {s3!r}"
    # Another user's context never reaches this user's prompt.
    other = account(stack, "ctxother")
    secret = f"OTHER-CONTEXT {uuid.uuid4().hex}"
    set_context(stack, other["name"], secret)
    assert secret not in system_prompt_seen(stack, user, "isolated")
    assert secret in system_prompt_seen(stack, other, "own")
