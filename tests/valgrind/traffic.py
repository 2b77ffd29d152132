#!/usr/bin/env python3
"""Traffic for `make valgrind` (tests/valgrind/run.sh): many requests of
every kind to each responder of one harness Stack, then a clean stop.

Owns only the request mix. The stack is tests/integration/harness.py's Stack
(JARVAS_TEST_BIN picks the valgrind wrappers), started with small thread
pools and short timeouts so that valgrind's slowness does not matter, and
stopped at the end — the SIGTERM that makes valgrind write its leak report.
Three phases run side by side, one per responder: token (1,000+ requests,
only a handful of them password hashes — argon2 with 64 MiB is very slow
under valgrind), chat (several hundred) and chat_stream (a few hundred
streams: complete, failing upstream, aborted by the client, Last-Event-ID,
bad input, over the per-user cap).

Prints, per kind of request, how many were sent and the statuses they got.
Statuses are not this script's test (the integration tests check them), but
a transport error, a timeout or a 5xx that the kind does not expect means a
responder broke (nginx answers 502 when one died): then it exits 1.  Exit 2:
the stack did not start.  --stack-file FILE records the state directory and
the fake upstream's pid while the stack runs, so run.sh can stop what a
killed run left behind.  Python 3 standard library only.
"""

import argparse
import collections
import concurrent.futures
import itertools
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import harness  # noqa: E402

TIMEOUT = 120  # seconds for one request; valgrind makes everything 20-50x slower
SLOW_TIMEOUT = 300  # for jarvasctl start/stop/adduser, when the machine is busy too
ENV = {
    # valgrind's exit (its leak check) may take a loaded machine more than
    # the usual 10 s: a responder killed before it ends writes no report
    "JARVAS_STOP_GRACE": 90,
    "JARVAS_WORKERS_TOKEN": 4,
    "JARVAS_WORKERS_CHAT": 8,
    "JARVAS_WORKERS_CHAT_STREAM": 16,
    "JARVAS_DB_POOL": 4,
    "JARVAS_HASH_CONCURRENCY": 2,
    # tokens from the few logins must outlive the whole run
    "JARVAS_ACCESS_LIFETIME": 3600,
    # short enough to exercise the idle timeout and the ping comments
    "JARVAS_UPSTREAM_IDLE_TIMEOUT": 3,
    # resumable streams left by their client end within the run
    "JARVAS_DETACH_GRACE": 2,
    "JARVAS_PING_INTERVAL": 1,
    # the caps get exercised cheaply: a few failed logins, a few streams
    "JARVAS_MAX_STREAMS_PER_USER": 4,
    # chats go to random users from 8 client threads: no cap in the way
    "JARVAS_MAX_CHATS_PER_USER": 1000,
    "JARVAS_LOGIN_FAILURES_PER_USER": 3,
    "JARVAS_LOGIN_FAILURES_PER_ADDR": 1000,
    # models to pick from; a quota high enough never to refuse, so that
    # its check runs on every chat
    "JARVAS_MODELS": "llama3.2,qwen2.5:0.5b,absent:1b",
    "JARVAS_TOKENS_PER_DAY": 1000000000,
}
USERS = 6  # each costs one adduser and one login, both argon2
# Streams a user has open at once, from this side: below the cap, since a
# responder frees a stream's slot a little after the client saw it end.
STREAMS_PER_USER = int(ENV["JARVAS_MAX_STREAMS_PER_USER"]) - 2
RNG = random.Random(20240601)
OK_SERVER_ERRORS = (502, 503, 504)  # what failing-upstream kinds may answer


# --- bookkeeping --------------------------------------------------------------


class Tally:
    """Per kind of request: how many, which statuses, which were bad."""

    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = collections.OrderedDict()
        self.bad = []

    def add(self, phase, kind, status, allowed_5xx=()):
        """status: an int, a string like "200 done", or "error: ..."."""
        code = status if isinstance(status, int) else None
        if isinstance(status, str) and status[:3].isdigit():
            code = int(status[:3])
        if code is None:
            broken = str(status).startswith("error")
        else:
            broken = code >= 500 and code not in allowed_5xx
        with self.lock:
            self.kinds.setdefault((phase, kind), collections.Counter())[str(status)] += 1
            if broken:
                self.bad.append(f"{phase} {kind}: {status}")

    def report(self):
        totals = collections.Counter()
        print(f"\n{'responder':<12} {'kind':<38} {'sent':>5}  statuses")
        order = {"token": 0, "chat": 1, "chat_stream": 2}
        for (phase, kind), c in sorted(self.kinds.items(), key=lambda kv: (order.get(kv[0][0], 9), kv[0][1])):
            n = sum(c.values())
            totals[phase] += n
            statuses = ", ".join(f"{s}×{k}" for s, k in sorted(c.items()))
            print(f"{phase:<12} {kind:<38} {n:>5}  {statuses}")
        print("requests sent: " + ", ".join(f"{p} {n}" for p, n in totals.items())
              + f"; total {sum(totals.values())}")
        return totals


TALLY = Tally()


def status_of(fn):
    """Run one request; its status, or "error: <what>" when it broke."""
    try:
        return fn()
    except Exception as exc:  # noqa: BLE001 — every failure is counted
        text = str(exc).splitlines()[0][:120] if str(exc) else ""
        return f"error: {type(exc).__name__} {text}".rstrip()


def req(stack, phase, kind, method, path, allowed_5xx=(), **kw):
    kw.setdefault("timeout", TIMEOUT)
    TALLY.add(phase, kind, status_of(lambda: stack.request(method, path, **kw).status),
              allowed_5xx)


def sse_outcome(ev):
    """A stream's result as a status string: "200 done", "200 error",
    "200 aborted", "200 cut" or the plain status of a non-stream answer."""
    if ev.status != 200 or not ev.headers.get("content-type", "").startswith("text/event-stream"):
        return ev.status
    if ev.aborted:
        return "200 aborted"
    names = [e["event"] for e in ev.data_events()]
    if names and names[-1] in ("done", "error"):
        return f"200 {names[-1]}"
    return "200 cut"


def sse(stack, phase, kind, path, allowed_5xx=(), **kw):
    kw.setdefault("timeout", TIMEOUT)
    TALLY.add(phase, kind, status_of(lambda: sse_outcome(stack.sse(path, **kw))),
              allowed_5xx)


def at(i, x):
    """x for the i-th request of a kind: x(i) when x is a function (each
    value of a dict likewise), else x itself."""
    if isinstance(x, dict):
        return {k: at(i, v) for k, v in x.items()}
    return x(i) if callable(x) else x


def run_all(jobs, workers):
    """Run the callables on a pool, in a shuffled but fixed order."""
    jobs = list(jobs)
    RNG.shuffle(jobs)
    with concurrent.futures.ThreadPoolExecutor(max_workers=workers) as pool:
        for f in concurrent.futures.as_completed([pool.submit(j) for j in jobs]):
            f.result()


def raw_connection(stack, method, path, token=None, json=None, headers=None):
    """A connection with one request sent and nothing read yet."""
    raw = harness._build_request(stack.port, method, path, None, json, headers, token, None)
    s = socket.create_connection(("127.0.0.1", stack.port), timeout=TIMEOUT)
    s.sendall(raw)
    return s


def read_head(s):
    """Read until the end of the response headers; the status code."""
    data = b""
    while b"\r\n\r\n" not in data:
        chunk = s.recv(4096)
        if not chunk:
            break
        data += chunk
    line = data.split(b"\r\n", 1)[0].split()
    return int(line[1]) if len(line) > 1 and line[1].isdigit() else f"error: bad head {data[:60]!r}"


def close_hard(s):
    try:
        s.shutdown(socket.SHUT_RDWR)
    except OSError:
        pass
    s.close()


# --- users and tokens ---------------------------------------------------------


class Users:
    """USERS accounts made with jarvas-admin, logged in once each."""

    def __init__(self, stack):
        self.accounts = []  # (name, password)
        self.access = []
        self.refresh = []
        self.stream_slots = []  # per user: a semaphore of its stream cap
        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            self.accounts = list(pool.map(lambda i: self.adduser(stack, f"vg{i}"), range(USERS)))

    @staticmethod
    def adduser(stack, prefix):
        """stack.user(), with time for jarvas-admin's hash under valgrind."""
        name = stack.unique_name(prefix)
        password = "pw-" + os.urandom(8).hex()
        r = stack.jarvasctl("adduser", name, input=password + "\n", timeout=SLOW_TIMEOUT)
        assert r.returncode == 0, f"adduser {name} failed: {r.stdout}{r.stderr}"
        return name, password

    def login_all(self, stack):
        def login(account):
            t = time.monotonic()
            for _ in range(3):  # nginx gives up after 60 s (504) on a loaded machine
                r = stack.request("POST", "/api/token/", timeout=TIMEOUT,
                                  json={"username": account[0], "password": account[1]})
                TALLY.add("token", "login ok (argon2)", r.status, (504,))
                if r.status != 504:
                    break
            assert r.status == 200, f"login {account[0]}: {r.status} {r.body[:200]!r}"
            return r.json(), time.monotonic() - t

        with concurrent.futures.ThreadPoolExecutor(max_workers=2) as pool:
            results = list(pool.map(login, self.accounts))
        self.access = [b["access"] for b, _ in results]
        self.refresh = [b["refresh"] for b, _ in results]
        self.stream_slots = [threading.Semaphore(STREAMS_PER_USER) for _ in self.accounts]
        print(f"logins: {len(results)}, slowest {max(t for _, t in results):.1f}s", flush=True)

    def pick(self, i):
        return i % len(self.accounts)


def forged(stack, users, token_type="access", header=None, **over):
    """A token signed with the stack's key, claims overridable."""
    _, claims = harness.jwt_parts(users.access[0])
    now = int(time.time())
    claims = dict(claims, token_type=token_type, iat=now, exp=now + 600,
                  jti=os.urandom(16).hex())
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return harness.jwt_sign(header or {"alg": "HS256", "typ": "JWT"}, claims, stack.secret_key())


def tampered(token):
    h, c, s = token.split(".")
    sig = bytearray(harness.b64url_decode(s))
    sig[0] ^= 1
    return f"{h}.{c}.{harness.b64url(bytes(sig))}"


def alg_none(token):
    _, c, _ = token.split(".")
    return harness.b64url(b'{"alg":"none","typ":"JWT"}') + "." + c + "."


# --- token --------------------------------------------------------------------


def token_phase(stack, users):
    P = "token"
    jobs = []

    def add(n, kind, method, path, **kw):
        for i in range(n):
            jobs.append(lambda i=i: req(stack, P, kind, at(i, method), at(i, path), **at(i, kw)))

    # The few password hashes: a form login, a wrong password, and an
    # unknown user until the throttle refuses without hashing.
    name, password = users.accounts[0]
    req(stack, P, "login ok, form-encoded (argon2)", "POST", "/api/token/",
        form={"username": name, "password": password})
    req(stack, P, "login wrong password (argon2)", "POST", "/api/token/",
        json={"username": users.accounts[1][0], "password": "wrong"})
    for _ in range(int(ENV["JARVAS_LOGIN_FAILURES_PER_USER"]) + 2):
        r = status_of(lambda: stack.request("POST", "/api/token/", timeout=TIMEOUT,
                                            json={"username": "vg_nobody", "password": "x"}).status)
        TALLY.add(P, "login unknown user until throttled", r)
        if r == 429:
            break
    add(40, "login throttled (429, no hash)", "POST", "/api/token/",
        json={"username": "vg_nobody", "password": "x"})

    u = users.pick
    add(260, "refresh ok", "POST", lambda i: RNG.choice(["/api/token/refresh/", "/api/token/refresh"]),
        json=lambda i: {"refresh": users.refresh[u(i)]})
    add(30, "refresh with an access token", "POST", "/api/token/refresh/",
        json=lambda i: {"refresh": users.access[u(i)]})
    add(30, "refresh tampered", "POST", "/api/token/refresh/",
        json=lambda i: {"refresh": tampered(users.refresh[u(i)])})
    add(20, "refresh garbage", "POST", "/api/token/refresh/",
        json=lambda i: {"refresh": ["x", "a.b.c", "....", "é" * 50, "a" * 5000][i % 5]})
    add(20, "refresh missing/wrong-type field", "POST", "/api/token/refresh/",
        json=lambda i: [{}, {"refresh": None}, {"refresh": 5}, {"refresh": []}][i % 4])

    add(150, "verify access ok", "POST", "/api/token/verify/",
        json=lambda i: {"token": users.access[u(i)]})
    add(100, "verify refresh ok", "POST", "/api/token/verify",
        json=lambda i: {"token": users.refresh[u(i)]})
    add(20, "verify tampered", "POST", "/api/token/verify/",
        json=lambda i: {"token": tampered(users.access[u(i)])})
    add(20, "verify alg none", "POST", "/api/token/verify/",
        json=lambda i: {"token": alg_none(users.access[u(i)])})
    add(20, "verify HS512 header", "POST", "/api/token/verify/",
        json=lambda i: {"token": forged(stack, users, header={"alg": "HS512", "typ": "JWT"})})
    add(20, "verify expired", "POST", "/api/token/verify/",
        json=lambda i: {"token": forged(stack, users, exp=int(time.time()) - 60)})
    add(20, "verify claims missing", "POST", "/api/token/verify/",
        json=lambda i: {"token": forged(stack, users, **{["exp", "jti", "user_id", "token_type"][i % 4]: None})})
    add(20, "verify missing/empty field", "POST", "/api/token/verify/",
        json=lambda i: [{}, {"token": ""}, {"token": None}, {"token": {"a": 1}}][i % 4])

    bad_json = [b"{", b"[]", b'"str"', b"null", b'{"username": "a", "username": "b", "password": "c"}',
                b'{"username": "a\\u0000b", "password": "c"}', b'{"username": "\xff\xfe", "password": "c"}',
                b"{" + b",".join(b'"k%d": 1' % i for i in range(80)) + b"}", b"",
                b'{"username": "a", "password": "b"', b"\x00\x01\x02"]
    add(66, "bad JSON", "POST", lambda i: ["/api/token/", "/api/token/refresh/", "/api/token/verify/"][i % 3],
        body=lambda i: bad_json[i % len(bad_json)], headers={"content-type": "application/json"})
    add(60, "missing fields", "POST", "/api/token/",
        json=lambda i: [{}, {"username": "vg0"}, {"password": "pw"}, {"username": None, "password": None}][i % 4])
    add(10, "form with a missing field", "POST", "/api/token/", form={"username": "vg0"})
    add(10, "form with bad %-encoding", "POST", "/api/token/",
        body="username=%zz&password=%ff", headers={"content-type": "application/x-www-form-urlencoded"})
    add(10, "unsupported content type", "POST", "/api/token/verify/",
        body="token=x", headers={"content-type": "text/plain"})
    add(100, "wrong method", lambda i: ["GET", "PUT", "DELETE", "PATCH", "HEAD"][i % 5],
        lambda i: ["/api/token/", "/api/token/refresh/", "/api/token/verify/"][i % 3])
    add(15, "OPTIONS", "OPTIONS", "/api/token/")
    add(60, "unknown path", "POST", lambda i: ["/api/token/nope", "/api/tokenx", "/api/token//",
                                               "/api/token/refresh/extra/", "/api/token/%ff%00"][i % 5],
        json={"token": "x"})
    add(20, "odd query string", "POST", lambda i: ["/api/token/verify/?%zz=%", "/api/token/verify/?a=%ff&&=&",
                                                   "/api/token/verify/?" + "x" * 3000, "/api/token/verify/?=="][i % 4],
        json=lambda i: {"token": users.access[u(i)]})
    big = b'{"token": "' + b"a" * (1024 * 1024 + 100) + b'"}'
    add(5, "oversized body (413)", "POST", "/api/token/verify/",
        body=big, headers={"content-type": "application/json"})
    run_all(jobs, 8)


# --- chat ---------------------------------------------------------------------


UPSTREAM_FAILURES = [
    ("status=500", "[[fake status=500]]"),
    ("status=503 message", "[[fake status=503 message=overloaded%20now]]"),
    ("model_missing", "[[fake model_missing=1]]"),
    ("cut_after=2", "[[fake cut_after=2]]"),
    ("error_after=3", "[[fake error_after=3]]"),
    ("malformed_after=2", "[[fake malformed_after=2]]"),
    ("garbage", "[[fake garbage=1]]"),
    ("nodone", "[[fake nodone=1]]"),
    ("hang (idle timeout)", "[[fake hang=1]]"),
    ("hang_after=2 (idle timeout)", "[[fake hang_after=2 hang=1]]"),
]
UPSTREAM_ODD_OK = [
    ("long_line=200000", "[[fake long_line=200000]]"),
    ("split_utf8 chunk=1", "[[fake text=ol%C3%A1%20%F0%9F%8E%89%20fim chunk=1 split_utf8=1]]"),
    ("text with newlines", "[[fake text=a%0Ab%0D%0Ac%22d%5C chunk=2]]"),
    ("tokens=200", "[[fake tokens=200]]"),
]
MESSAGES = ["Olá! Tudo bem?", "hello", "x" * 4000, "emoji 🎉 and \"quotes\" and \\ back",
            "line1\nline2\n\ttabbed", "<script>alert(1)</script> & stuff"]


def chat_phase(stack, users):
    P = "chat"
    jobs = []
    u = users.pick
    serial = itertools.count()  # one generation per conversation: a chat in its own

    def add(n, kind, method, path, allowed_5xx=(), **kw):
        for i in range(n):
            jobs.append(lambda i=i: req(stack, P, kind, at(i, method), at(i, path), allowed_5xx,
                                        **at(i, kw)))

    add(110, "POST /api/chat/ ok", "POST", lambda i: ["/api/chat/", "/api/chat"][i % 2],
        token=lambda i: users.access[u(i)],
        json=lambda i: {"message": MESSAGES[i % len(MESSAGES)],
                        "conversation_id": f"c{i % 5}-{next(serial)}"})
    add(10, "POST /api/chat/ default conversation", "POST", "/api/chat/",
        token=lambda i: users.access[u(i)], json={"message": "no conversation id"})
    for name, directive in UPSTREAM_FAILURES:
        add(6, f"upstream {name}", "POST", "/api/chat/", OK_SERVER_ERRORS,
            token=lambda i: users.access[u(i)],
            json=lambda i, d=directive: {"message": f"fail {d}",
                                         "conversation_id": f"fail-{next(serial)}"})
    for name, directive in UPSTREAM_ODD_OK:
        add(4, f"upstream {name}", "POST", "/api/chat/", token=lambda i: users.access[u(i)],
            json=lambda i, d=directive: {"message": f"odd {d}",
                                         "conversation_id": f"odd-{next(serial)}"})
    add(70, "GET history", "GET", lambda i: f"/api/chat/history/?conversation_id=c{i % 6}",
        token=lambda i: users.access[u(i)])
    add(10, "GET history, default", "GET", "/api/chat/history", token=lambda i: users.access[u(i)])
    add(25, "DELETE history", "DELETE", lambda i: f"/api/chat/history/?conversation_id=c{i % 7}",
        token=lambda i: users.access[u(i)])
    add(15, "history bad conversation_id", "GET",
        lambda i: ["/api/chat/history/?conversation_id=", "/api/chat/history/?conversation_id=a%20b",
                   "/api/chat/history/?conversation_id=" + "x" * 65, "/api/chat/history/?conversation_id=%zz",
                   "/api/chat/history/?conversation_id=%ff%fe"][i % 5],
        token=lambda i: users.access[u(i)])
    add(20, "POST /api/chat/ a picked model", "POST", "/api/chat/",
        token=lambda i: users.access[u(i)],
        json=lambda i: {"message": "pick", "model": ["qwen2.5:0.5b", "llama3.2"][i % 2],
                        "conversation_id": f"m-{next(serial)}"})
    add(10, "POST /api/chat/ a bad model", "POST", "/api/chat/",
        token=lambda i: users.access[u(i)],
        json=lambda i: {"message": "pick", "model": ["gpt-5", 7, None, "", "x" * 300][i % 5]})
    add(10, "GET models", "GET", "/api/models/", token=lambda i: users.access[u(i)])
    add(20, "GET usage", "GET",
        lambda i: ["/api/usage/", "/api/usage/?since=2020-01-01",
                   "/api/usage/?since=2026-12-01T08:00:00%2B01:00", "/api/usage/?since=nope",
                   "/api/usage/?since=%ff"][i % 5],
        token=lambda i: users.access[u(i)])
    add(30, "health", "GET", lambda i: ["/api/health/", "/api/health"][i % 2])
    add(25, "metrics", "GET", lambda i: ["/api/metrics", "/api/metrics/"][i % 2])
    add(5, "HEAD metrics", "HEAD", "/api/metrics")

    add(15, "no credentials", lambda i: ["POST", "GET", "DELETE"][i % 3],
        lambda i: ["/api/chat/", "/api/chat/history/", "/api/chat/history/"][i % 3], json={"message": "x"})
    add(20, "bad token", "POST", "/api/chat/",
        token=lambda i: [tampered(users.access[u(i)]), "abc", alg_none(users.access[u(i)]),
                         users.refresh[u(i)]][i % 4], json={"message": "x"})
    add(5, "unknown user's token", "GET", "/api/chat/history/",
        token=lambda i: forged(stack, users, user_id=999999))
    add(5, "malformed Authorization", "GET", "/api/chat/history/",
        headers=lambda i: {"authorization": ["Bearer", "Basic abc", "Bearer a b", "bearer  ", "Bearer " + "x" * 9000][i % 5]})
    bad_json = [b"{", b"[1]", b'{"message": "a", "message": "b"}', b'{"message": "\xc3\x28"}',
                b'{"message": "nul\\u0000"}', b"not json at all"]
    add(18, "bad JSON", "POST", "/api/chat/", token=lambda i: users.access[u(i)],
        body=lambda i: bad_json[i % len(bad_json)], headers={"content-type": "application/json"})
    add(30, "bad message", "POST", "/api/chat/", token=lambda i: users.access[u(i)],
        json=lambda i: [{}, {"message": ""}, {"message": "  \n\t "}, {"message": None}, {"message": 5},
                        {"message": ["a"]}, {"message": "y" * (16 * 1024 + 1)},
                        {"message": "ok", "conversation_id": "bad id!"},
                        {"message": "ok", "conversation_id": "z" * 65},
                        {"message": "ok", "conversation_id": 7}][i % 10])
    add(5, "form-encoded", "POST", "/api/chat/", token=lambda i: users.access[u(i)],
        form={"message": "form hello", "conversation_id": "form"})
    add(3, "oversized body (413)", "POST", "/api/chat/", token=lambda i: users.access[u(i)],
        body=b'{"message": "' + b"m" * (1024 * 1024 + 10) + b'"}', headers={"content-type": "application/json"})
    add(20, "wrong method", lambda i: ["PUT", "GET", "PATCH", "POST"][i % 4],
        lambda i: ["/api/chat/", "/api/chat/", "/api/chat/history/", "/api/health/"][i % 4],
        token=lambda i: users.access[u(i)])
    add(5, "OPTIONS", "OPTIONS", "/api/chat/history/")
    add(20, "unknown path", "GET", lambda i: ["/api/nope", "/", "/api/chat/history/x", "/api/chat//",
                                              "/%ff%00/.."][i % 5])
    run_all(jobs, 8)


# --- chat_stream --------------------------------------------------------------


def stream_phase(stack, users):
    P = "chat_stream"
    jobs = []
    u = users.pick

    def stream(i, kind, path, allowed_5xx=(), **kw):
        """One stream as user i, within that user's open-stream cap."""
        slot = users.stream_slots[u(i)]
        with slot:
            sse(stack, P, kind, at(i, path), allowed_5xx, **at(i, kw))

    def add(n, kind, path, allowed_5xx=(), **kw):
        for i in range(n):
            jobs.append(lambda i=i: stream(i, kind, path, allowed_5xx, **kw))

    # One generation per conversation (409 for a second): every stream in a
    # conversation of its own, so that each does what its kind says.
    serial = itertools.count()

    def q(message, conversation="s", **extra):
        return "/api/chat/stream/?" + urllib.parse.urlencode(
            dict(message=message, conversation_id=f"{conversation}-{next(serial)}", **extra))

    add(70, "GET ?access_token complete",
        lambda i: q(MESSAGES[i % len(MESSAGES)], f"s{i % 4}", access_token=users.access[u(i)]))
    add(60, "POST complete", "/api/chat/stream/", method="POST", token=lambda i: users.access[u(i)],
        json=lambda i: {"message": MESSAGES[i % len(MESSAGES)], "conversation_id": f"p{i}"})
    add(20, "GET Bearer complete", lambda i: q("bearer hello", "b"), token=lambda i: users.access[u(i)])
    resumable_phase(stack, users, jobs, q)
    for name, directive in UPSTREAM_FAILURES:
        add(5, f"upstream {name}", lambda i, d=directive: q(f"fail {d}", "sfail"),
            token=lambda i: users.access[u(i)])
    for name, directive in UPSTREAM_ODD_OK[:3]:
        add(3, f"upstream {name}", lambda i, d=directive: q(f"odd {d}", "sodd"),
            token=lambda i: users.access[u(i)])
    add(6, "slow first token (pings)", lambda i: q("[[fake first_ms=2500 tokens=3]]", "ping"),
        token=lambda i: users.access[u(i)])

    # Client aborts: after the first chunk of a slow reply, while the model
    # is silent (after the first ping), and on raw sockets.
    add(25, "abort after first chunk", lambda i: q("[[fake tokens=60 delay_ms=100]]", "abort"),
        token=lambda i: users.access[u(i)], until=lambda i: (lambda e, evs: e["event"] == "message"))
    add(10, "abort while upstream silent", lambda i: q("[[fake hang=1]]", "abort"),
        token=lambda i: users.access[u(i)], until=lambda i: (lambda e, evs: e["event"] == "comment"))

    def raw_abort(i, after_head):
        kind = "raw abort after headers" if after_head else "raw abort right after sending"

        def go():
            s = raw_connection(stack, "GET", q("[[fake tokens=40 delay_ms=100]]", "raw"),
                               token=users.access[u(i)])
            try:
                return read_head(s) if after_head else "closed unanswered"
            finally:
                close_hard(s)

        with users.stream_slots[u(i)]:
            TALLY.add(P, kind, status_of(go))
            time.sleep(0.5)  # let the responder notice before the slot is reused

    for i in range(15):
        jobs.append(lambda i=i: raw_abort(i, False))
    for i in range(10):
        jobs.append(lambda i=i: raw_abort(i, True))

    add(20, "Last-Event-ID (204)", lambda i: q("again", "s0"), token=lambda i: users.access[u(i)],
        headers={"last-event-id": "12:3"})
    add(10, "no credentials", lambda i: q("hi"))
    add(10, "bad token", lambda i: q("hi", access_token=["abc", tampered(users.access[u(i)]),
                                                        users.refresh[u(i)]][i % 3]))
    add(25, "bad input", lambda i: ["/api/chat/stream/", "/api/chat/stream/?message=",
                                    "/api/chat/stream/?message=%zz", "/api/chat/stream/?message=%ff%fe",
                                    q("x", "bad id"), q("x", "y" * 65),
                                    q("z" * (16 * 1024 + 1)),
                                    "/api/chat/stream/?message=a&message=b&conversation_id=%00"][i % 8],
        token=lambda i: users.access[u(i)])
    add(10, "POST bad JSON", "/api/chat/stream/", method="POST", token=lambda i: users.access[u(i)],
        json=lambda i: [{"message": None}, {}, {"message": "ok", "conversation_id": []}, [1, 2]][i % 4])
    add(5, "wrong method", "/api/chat/stream/", method="PUT", token=lambda i: users.access[u(i)])
    add(5, "unknown path", "/api/chat/stream/x", token=lambda i: users.access[u(i)])

    run_all(jobs, USERS * STREAMS_PER_USER)
    over_the_cap(stack, users)


def resumable_phase(stack, users, jobs, q):
    """Resumable streams (issue 12): dropped and reconnected with
    Last-Event-ID (the relay follows the journal), replayed from history
    after their end and with ?resume=, stopped, left to their grace, and
    a second generation in a conversation (409)."""
    P = "chat_stream"
    u = users.pick

    def dropped_then_resumed(i):
        slot = users.stream_slots[u(i)]
        token = users.access[u(i)]
        with slot:
            first = stack.sse(q("[[fake tokens=30 delay_ms=50]]", "res", resumable=1), token=token,
                              timeout=TIMEOUT, until=lambda e, evs: e["event"] == "message")
            TALLY.add(P, "resumable, dropped after a chunk", sse_outcome(first))
            last = first[-1].get("id") if first else None
            if not last:
                return
            time.sleep(0.3)
            again = stack.sse("/api/chat/stream/", token=token, timeout=TIMEOUT,
                              headers={"last-event-id": last})
            TALLY.add(P, "Last-Event-ID while generating / after", sse_outcome(again))
            mid = last.split(":")[0]
            replay = stack.sse(f"/api/chat/stream/?resume={mid}", token=token, timeout=TIMEOUT)
            TALLY.add(P, "?resume= from the start", sse_outcome(replay))

    def stopped(i):
        token = users.access[u(i)]
        with users.stream_slots[u(i)]:
            done = []
            conv = q("[[fake tokens=200 delay_ms=50]]", "stop", resumable=1)
            c = urllib.parse.parse_qs(urllib.parse.urlsplit(conv).query)["conversation_id"][0]
            t = threading.Thread(target=lambda: done.append(
                stack.sse(conv, token=token, timeout=TIMEOUT)))
            t.start()
            time.sleep(0.5)
            req(stack, P, "stop by conversation_id", "POST", "/api/chat/stop/", token=token,
                json={"conversation_id": c})
            req(stack, P, "a second generation there (409 or 200)", "POST", "/api/chat/",
                token=token, json={"message": "again [[fake tokens=1]]", "conversation_id": c})
            t.join()
            TALLY.add(P, "the stopped stream", sse_outcome(done[0]) if done else "error: none")

    def left_to_its_grace(i):
        with users.stream_slots[u(i)]:
            ev = stack.sse(q("[[fake tokens=100 delay_ms=100]]", "grace", resumable=1),
                           token=users.access[u(i)], timeout=TIMEOUT,
                           until=lambda e, evs: e["event"] == "message")
            TALLY.add(P, "resumable, left (grace runs out)", sse_outcome(ev))

    for i in range(12):
        jobs.append(lambda i=i: dropped_then_resumed(i))
    for i in range(6):
        jobs.append(lambda i=i: stopped(i))
    for i in range(4):
        jobs.append(lambda i=i: left_to_its_grace(i))
    for i in range(4):
        jobs.append(lambda i=i: req(stack, P, "stop refusals", "POST", "/api/chat/stop/",
                                    token=users.access[u(i)],
                                    json=[{}, {"message_id": 999999}, {"message_id": "x"},
                                          {"conversation_id": "none-running"}][i]))


def over_the_cap(stack, users):
    """The last user opens its cap of slow streams (all at once, so none
    ends before the last has started), then one more: 429."""
    P = "chat_stream"
    i = len(users.accounts) - 1
    cap = int(ENV["JARVAS_MAX_STREAMS_PER_USER"])
    def path(k):
        return "/api/chat/stream/?" + urllib.parse.urlencode(
            {"message": "[[fake tokens=1000 delay_ms=200]]", "conversation_id": f"cap{k}"})
    held = []
    try:
        for k in range(cap):
            held.append(raw_connection(stack, "GET", path(k), token=users.access[i]))
        for s in held:
            TALLY.add(P, "cap: slow streams held open", status_of(lambda s=s: read_head(s)))
        for _ in range(5):
            req(stack, P, "cap: one stream too many (429)", "GET",
                "/api/chat/stream/?message=more&conversation_id=cap", token=users.access[i])
    finally:
        for s in held:
            close_hard(s)


# --- main ---------------------------------------------------------------------


def main():
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--stack-file", help="record the state dir and the fake's pid here")
    args = ap.parse_args()

    t0 = time.monotonic()
    print(f"traffic: programs from {harness.BIN_DIR}", flush=True)
    harness.START_TIMEOUT = SLOW_TIMEOUT
    stack = harness.Stack({k: str(v) for k, v in ENV.items()})
    for attempt in (1, 2):  # jarvasctl waits only 10 s for the first health answer
        try:
            stack.start()
            break
        except harness.StackError as exc:
            print(f"traffic: the stack did not start (attempt {attempt})\n{exc}", flush=True)
            if attempt == 2:
                return 2
            stack = harness.Stack({k: str(v) for k, v in ENV.items()})
    failed = False
    try:
        if args.stack_file:
            Path(args.stack_file).write_text(f"state={stack.state}\nfake_pid={stack.fake.pid}\n")
        print(f"traffic: stack up in {time.monotonic() - t0:.1f}s on 127.0.0.1:{stack.port}", flush=True)
        # jarvasctl must still know its responders behind the valgrind wrappers
        r = stack.jarvasctl("status", timeout=SLOW_TIMEOUT)
        if r.returncode != 0:
            raise AssertionError(f"jarvasctl status (exit {r.returncode}):\n{r.stdout}{r.stderr}")
        users = Users(stack)
        users.login_all(stack)
        print(f"traffic: users ready at {time.monotonic() - t0:.1f}s", flush=True)

        errors = []

        def phase(fn):
            t = time.monotonic()
            try:
                fn(stack, users)
            except Exception as exc:  # noqa: BLE001
                errors.append(f"{fn.__name__}: {type(exc).__name__}: {exc}")
            print(f"traffic: {fn.__name__} done in {time.monotonic() - t:.1f}s", flush=True)

        threads = [threading.Thread(target=phase, args=(fn,))
                   for fn in (token_phase, chat_phase, stream_phase)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        for e in errors:
            print(f"traffic: {e}")
            failed = True
        restarts = {k: v for k, v in stack.restart_counts().items() if v}
        if restarts:
            print(f"traffic: responders restarted: {restarts}\n{stack.logs(15)}")
            failed = True
    except Exception as exc:  # noqa: BLE001
        print(f"traffic: {type(exc).__name__}: {exc}\n{stack.logs(15)}")
        failed = True
    finally:
        t = time.monotonic()
        stack.stop()
        print(f"traffic: stack stopped in {time.monotonic() - t:.1f}s", flush=True)
        if args.stack_file:
            Path(args.stack_file).write_text("")

    TALLY.report()
    if TALLY.bad:
        failed = True
        print(f"traffic: {len(TALLY.bad)} requests broke (transport error, timeout or unexpected 5xx):")
        for line, n in collections.Counter(TALLY.bad).most_common(20):
            print(f"  {n}× {line}")
    print(f"traffic: {time.monotonic() - t0:.1f}s in all", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
