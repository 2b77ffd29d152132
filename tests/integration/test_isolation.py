"""One request must never stall others (issue 10, items 1, 3 and 4).

A stream's FastCGI connection is handed to the relay's one event loop with
unread input still on it (a GET carrying a body, or parameters that end on
libfcgi's 8 KiB read boundary); a FastCGI peer that connects and stalls
mid-record; a client that abandons a non-stream chat. Each of these once
froze every stream of a process, the accept path of a responder, or a
worker and the model. Here each runs while another user's stream is
watched: its chunks must keep their rhythm, and everything must finish.

The bounds below are liveness bounds (a frozen loop misses them by
minutes), not performance figures."""

import json
import socket
import threading
import time

import harness
from test_stream import (STREAM, account, conv, describe, fake, fake_requests_with, history,
                         marker, pairs, parse_stream, query, stream, wait_for)

CHAT = "/api/chat/"


class Watched:
    """Another user's stream of `tokens` chunks `delay_ms` apart, read in a
    thread; check() asserts that it ended with done and no chunk was held
    back more than `max_gap` seconds."""

    def __init__(self, stack, tokens=80, delay_ms=50, max_gap=2.0):
        self.user = account(stack, "watched")
        self.tokens, self.max_gap = tokens, max_gap
        self.c = conv()
        self.ev = self.error = None
        msg = "watched " + fake(tokens=tokens, delay_ms=delay_ms)
        self.thread = threading.Thread(target=self._run, args=(stack, msg), daemon=True)
        self.thread.start()
        wait_for(lambda: self.ev is not None or self._first_chunk(stack), 10,
                 "the watched stream starting")

    def _first_chunk(self, stack):
        return any("watched" in str(r.get("last_content")) and r.get("tokens_sent", 0) > 0
                   for r in stack.fake_requests())

    def _run(self, stack, msg):
        try:
            self.ev = stream(stack, self.user, msg, self.c, timeout=60)
        except Exception as exc:  # noqa: BLE001 — reported by check()
            self.error = exc

    def check(self):
        self.thread.join(70)
        assert self.error is None, f"the watched stream failed: {self.error}"
        s = parse_stream(self.ev, self.c)
        times = [e["t"] for e in s["chunks"]]
        assert len(times) == self.tokens, describe(self.ev)
        gaps = [b - a for a, b in zip(times, times[1:])]
        assert max(gaps) < self.max_gap, \
            f"the watched stream stalled: largest gap {max(gaps):.2f}s"


def raw_exchange(stack, head, body=b"", timeout=20):
    """Send raw request bytes through nginx and read the whole answer."""
    with socket.create_connection(("127.0.0.1", stack.port), timeout=timeout) as s:
        s.sendall(head + body)
        out = b""
        while True:
            chunk = s.recv(65536)
            if not chunk:
                return out
            out += chunk


def get_stream_head(stack, user, message, conversation, extra=""):
    path = STREAM + query(message=message, conversation_id=conversation,
                          access_token=user["access"])
    return (f"GET {path} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
            f"Connection: close\r\n{extra}\r\n").encode()


def ended_with_done(raw):
    return b"200 OK" in raw.split(b"\r\n", 1)[0] and b"event: done" in raw


# --- item 1: the hand-off never blocks the relay --------------------------------


def test_a_get_stream_carrying_a_body_does_not_stall_other_streams(stack):
    watched = Watched(stack)
    user = account(stack, "bodyget")
    for size in (9000, 70000):
        c = conv()
        head = get_stream_head(stack, user, f"body {size} " + fake(tokens=2), c,
                               f"Content-Type: text/plain\r\nContent-Length: {size}\r\n")
        raw = raw_exchange(stack, head, b"x" * size)
        assert ended_with_done(raw), raw[:400]
    watched.check()


def test_parameters_ending_on_libfcgis_buffer_boundary_do_not_stall_other_streams(stack):
    """libfcgi reads parameters 8 KiB at a time: when they end on that
    boundary, the empty FCGI_STDIN record is still unread at the hand-off.
    Query lengths around it, one request each (one of them lands on it)."""
    watched = Watched(stack, tokens=120)
    user = account(stack, "boundary")
    base = len(get_stream_head(stack, user, "", "c-0123456789abcdef"))
    done = 0
    for pad in range(7700 - base, 8100 - base, 4):
        message = "b" * pad + " " + fake(tokens=1)
        raw = raw_exchange(stack, get_stream_head(stack, user, message, "c-0123456789abcdef"))
        assert ended_with_done(raw), f"query padding {pad}: {raw[:300]!r}"
        done += 1
    assert done == 100
    watched.check()


# --- item 3: a stalled FastCGI peer never holds the accept path ------------------


def fcgi_begin_request(request_id=1):
    """A FastCGI BEGIN_REQUEST record (responder role, no keep-conn)."""
    body = bytes([0, 1, 0, 0, 0, 0, 0, 0])
    return bytes([1, 1, request_id >> 8, request_id & 255, 0, len(body), 0, 0]) + body


# name, bytes a local peer sends before it stalls (None: connects only)
STALLS = [
    ("connect_only", None),
    ("half_a_record_header", b"\x01\x01\x00"),
    ("begin_request_then_nothing", fcgi_begin_request()),
    ("params_record_cut_short", fcgi_begin_request() + bytes([1, 4, 0, 1, 0, 200, 0, 0]) + b"\x0bQ"),
]


@harness.cases(STALLS)
def test_stalled_fastcgi_peers_do_not_stop_the_responder_accepting(stack, case):
    name, sent = case
    user = account(stack, "stall")
    peers = []
    try:
        # More stalled peers than one: each may hold at most one worker.
        for sock_name in ("chat.sock", "token.sock", "chat_stream.sock") * 2:
            p = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
            p.connect(str(stack.state / "run" / sock_name))
            if sent:
                p.sendall(sent)
            peers.append(p)
        time.sleep(0.3)
        for i in range(5):
            r = stack.request("POST", "/api/token/",
                              json={"username": user["name"], "password": user["password"]},
                              timeout=10)
            assert r.status == 200, (name, i, r)
            r = stack.request("GET", "/api/chat/history/", token=user["access"], timeout=10)
            assert r.status == 200, (name, i, r)
            c = conv()
            parse_stream(stream(stack, user, f"still accepting {i} " + fake(tokens=2), c,
                                timeout=10), c)
    finally:
        for p in peers:
            p.close()


# --- item 4: an abandoned /api/chat/ stops the model -----------------------------


# name, fake keys
ABANDONED = [
    ("slow_upstream", dict(tokens=400, delay_ms=100)),
    ("silent_upstream", dict(hang=1)),
]


@harness.cases(ABANDONED)
def test_a_client_leaving_a_chat_stops_the_upstream_within_2s(stack, case):
    name, keys = case
    user = account(stack, "chatleave")
    mark = marker()
    body = json.dumps({"message": f"abandon {mark} {fake(**keys)}",
                       "conversation_id": conv()}).encode()
    head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
            f"Authorization: Bearer {user['access']}\r\nContent-Type: application/json\r\n"
            f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=10)
    try:
        s.sendall(head + body)
        wait_for(lambda: fake_requests_with(stack, mark), 10, "the upstream request")
        time.sleep(0.5)
    finally:
        s.close()
    left = time.time()
    rec = wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("closed_at")],
                   10, "the fake seeing the upstream request closed")[0]
    assert rec["client_closed"], rec
    late = rec["closed_at"] - left * 1000
    assert late <= 2000, f"upstream closed {late:.0f} ms after the client left"
    # The worker is free again and nothing half-done was stored.
    r = stack.request("POST", CHAT, json={"message": "next " + fake(tokens=2)},
                      token=user["access"], timeout=10)
    assert r.status == 200, r
    assert pairs(history(stack, user, "default"))[-2][1].startswith("next"), \
        pairs(history(stack, user, "default"))


@harness.stack_env(JARVAS_WORKERS_CHAT="2")
def test_abandoned_chats_do_not_use_up_the_chat_workers(stack):
    """Two workers, six clients in a row leaving chats on a silent model:
    each abandoned chat gave its worker back."""
    user = account(stack, "chatleak")
    for i in range(6):
        mark = marker()
        # each in its own conversation: one left a moment ago may still be
        # generating there (409) until its worker notices the client left
        body = json.dumps({"message": f"leak {i} {mark} {fake(hang=1)}",
                           "conversation_id": f"leak-{i}"}).encode()
        head = (f"POST {CHAT} HTTP/1.1\r\nHost: 127.0.0.1:{stack.port}\r\n"
                f"Authorization: Bearer {user['access']}\r\nContent-Type: application/json\r\n"
                f"Content-Length: {len(body)}\r\nConnection: close\r\n\r\n").encode()
        with socket.create_connection(("127.0.0.1", stack.port), timeout=10) as s:
            s.sendall(head + body)
            wait_for(lambda: fake_requests_with(stack, mark), 10, "the upstream request")
    r = stack.request("POST", CHAT, json={"message": "still there " + fake(tokens=2)},
                      token=user["access"], timeout=15)
    assert r.status == 200, r
