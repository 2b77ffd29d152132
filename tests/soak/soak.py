#!/usr/bin/env python3
"""Soak test (`make soak`): mixed traffic at a steady moderate rate for
SOAK_SECONDS (default 600) against one harness Stack, watching the
responders' memory.

Owns the traffic mix, the RSS watch and the verdict. The mix: logins (and
failed ones), refresh, verify, non-stream chat, streams (complete, aborted by
the client, Last-Event-ID, failing upstream: HTTP error, error line, garbage,
malformed line, cut, silent past the idle timeout), history GET and DELETE,
health, metrics, a bad input. RSS (VmRSS of every responder pid named in
$STATE/run/*.pid) is printed at the start, every minute and at the end, with
its drift after the warm-up.

It fails (exit 1) when:
  - a request gets a 5xx other than the upstream-failure codes (502, 504)
    that a failing-upstream chat is expected to get, a transport error, a
    timeout (every request is bounded), or an outcome its kind never has
    (say a normal stream that does not end with "done");
  - a responder restarts (crashed) while it runs;
  - a responder's RSS grows after the warm-up by more than
    max(RSS_GROWTH_MIB = 4 MiB, RSS_GROWTH_FRACTION = 10% of its RSS at the
    end of the warm-up); growth = the quiet sample after the clients stopped
    minus the smallest sample of the warm-up's last 30 s;
  - the history is left inconsistent: PRAGMA integrity_check not ok, or a
    user message without its reply or the other way round.

Why that limit, and why the responders run with glibc's per-thread cache
off (GLIBC_TUNABLES=glibc.malloc.tcache_count=0; SOAK_MALLOC_TUNABLES
overrides it, empty = glibc's defaults): with the defaults, every worker
thread (256 in chat_stream) fills a tcache of its own (up to 7 freed chunks
per size class up to 1 KiB, ~230 KiB per thread at most) as it happens to
serve requests, so RSS keeps creeping up long after warm-up without any
leak. Measured on this mix: with the defaults, chat_stream +0.25 MiB/min and
chat +0.17 MiB/min, still climbing after 5 minutes (an older build: +6.5 MiB
between 120 s and 600 s, while heaptrack attached to the warm process found
0 bytes leaked); with the tcache off, +0.04 and +0.02 MiB/min, +0.3 MiB in
all over ten minutes. Without that noise 4 MiB is far above what remains
(SQLite page caches filling on a database the mix keeps small by deleting
conversations, arenas settling), and a leak of ~1 KiB per stream reaches it
within ten minutes at this rate (~10 streams/s). The warm-up (20% of the
run, 10..120 s) lets every thread of every pool serve requests first.

Importable: run(stack, seconds) does it on a started Stack (whose env should
include STACK_ENV) and returns a Result; tests/integration/test_faults.py
runs a short one. Exit 2: the stack did not start. Python 3 stdlib only.
"""

import collections
import http.client
import os
import random
import socket
import sys
import threading
import time
import urllib.parse
import uuid
from pathlib import Path

HERE = Path(__file__).resolve().parent
sys.path.insert(0, str(HERE.parent / "integration"))

import harness  # noqa: E402

DEFAULT_SECONDS = 600
RATE = 20.0  # operations started per second, all kinds together
WORKERS = 12  # client threads; each owns a share of the rate
USERS = 6  # workers share users (two per user), each with its own tokens
REQUEST_TIMEOUT = 30  # seconds; no request may take longer
# Under `make asan` the responders keep freed memory in ASan's quarantine,
# so RSS drift is not checked there (leaks are LeakSanitizer's job).
SANITIZED = bool(os.environ.get("ASAN_OPTIONS"))
RSS_GROWTH_MIB = 4
RSS_GROWTH_FRACTION = 0.10
SAMPLE_EVERY = 5  # seconds between RSS samples
PRINT_EVERY = 60  # seconds between progress lines
CONV_MAX_ROWS = 24  # a conversation is deleted when it holds about this many rows
UPSTREAM_5XX = (502, 504)  # what a chat with a failing upstream may answer
STACK_ENV = {
    # Short idle timeout and ping interval so that a silent upstream (hang)
    # is cheap to exercise.
    "JARVAS_UPSTREAM_IDLE_TIMEOUT": "3",
    "JARVAS_PING_INTERVAL": "1",
}
# No per-thread malloc caches in the responders (see above for why).
MALLOC_TUNABLES = os.environ.get("SOAK_MALLOC_TUNABLES", "glibc.malloc.tcache_count=0")
if MALLOC_TUNABLES:
    STACK_ENV["GLIBC_TUNABLES"] = MALLOC_TUNABLES

STREAM = "/api/chat/stream/"
CHAT = "/api/chat/"
HISTORY = "/api/chat/history/"


# --- one request, classified --------------------------------------------------


def attempt(fn):
    """(value, None) or (None, "timeout" | "error: <Exception>")."""
    try:
        return fn(), None
    except AssertionError as exc:  # harness.sse's own bound
        if "no end within" in str(exc):
            return None, "timeout"
        raise
    except (socket.timeout, TimeoutError):
        return None, "timeout"
    except (OSError, http.client.HTTPException) as exc:
        return None, f"error: {type(exc).__name__}"


def read_stream(ev):
    """What a client got from one stream: dict(label, text, message_id,
    error). label: "200 done", "200 error", "200 aborted", "200 cut" (no
    final event: the response broke), "200 bad-id" (event ids disagree with
    done's message_id), or the status of a non-stream answer ("204", "429")."""
    out = dict(label=str(ev.status), text="", message_id=None, error=None)
    if ev.status != 200 or not (ev.headers or {}).get("content-type", "").startswith(
            "text/event-stream"):
        return out
    parts, ids = [], set()
    for e in ev:
        d = e["data"]
        if e["event"] == "message" and isinstance(d, dict) and d.get("type") == "chunk":
            parts.append(d.get("content", ""))
            if e["id"] and ":" in e["id"]:
                ids.add(e["id"].split(":", 1)[0])
    out["text"] = "".join(parts)
    if len(ids) == 1:
        out["message_id"] = int(ids.pop())
    elif ids:
        out["label"] = "200 bad-id"
        return out
    names = [e for e in ev.data_events() if e["event"] in ("done", "error")]
    if ev.aborted:
        out["label"] = "200 aborted"
    elif not names or ev.truncated or ev.unfinished:
        out["label"] = "200 cut"
    elif names[-1]["event"] == "done":
        d = names[-1]["data"]
        mid = d.get("message_id") if isinstance(d, dict) else None
        if not isinstance(mid, int) or (out["message_id"] not in (None, mid)):
            out["label"] = "200 bad-id"
        else:
            out["label"] = "200 done"
            out["message_id"] = mid
    else:
        d = names[-1]["data"]
        out["label"] = "200 error"
        out["error"] = d.get("message") if isinstance(d, dict) else str(d)
    return out


def fake(**kw):
    """A tests/fake_ollama directive."""
    return "[[fake " + " ".join(f"{k}={v}" for k, v in kw.items()) + "]]"


def history_problems(stack, interrupted=()):
    """What is wrong with the history as a whole: [] when integrity_check
    says ok, every assistant row (id N) has its user row (id N-1) in the same
    conversation of the same user, and every user row its assistant row --
    except the messages in `interrupted`: a stream stores its message when it
    starts, so one whose responder was killed, or whose reply could not be
    saved, may have no reply row."""
    problems = []
    ic = stack.sqlite("PRAGMA integrity_check")
    if ic != [("ok",)]:
        problems.append(f"PRAGMA integrity_check: {ic[:5]!r}")
    half = stack.sqlite(
        "SELECT m.id, m.role, m.user_id, m.conversation_id, m.content FROM messages m "
        "LEFT JOIN messages p ON p.id = CASE m.role WHEN 'user' THEN m.id + 1 ELSE m.id - 1 END "
        " AND p.user_id = m.user_id AND p.conversation_id = m.conversation_id "
        " AND p.role = CASE m.role WHEN 'user' THEN 'assistant' ELSE 'user' END "
        "WHERE p.id IS NULL ORDER BY m.id")
    half = [r[:4] for r in half if not (r[1] == "user" and r[4] in interrupted)][:20]
    if half:
        problems.append(f"half-written exchanges (row without its pair): {half!r}")
    return problems


def responder_pids(state):
    """{instance: pid} from run/*.pid: the responders only (not nginx, the
    development upstream or the supervisors)."""
    out = {}
    for p in sorted((Path(state) / "run").glob("*.pid")):
        name = p.name[: -len(".pid")]
        if name in ("nginx", "dev_upstream") or name.endswith(".supervisor"):
            continue
        try:
            out[name] = int(p.read_text().strip())
        except (OSError, ValueError):
            pass
    return out


def rss_kib(pid):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1])
    except OSError:
        pass
    return None


def mib(kib):
    return "-" if kib is None else f"{kib / 1024:.1f}"


# --- bookkeeping --------------------------------------------------------------


class Tally:
    def __init__(self):
        self.lock = threading.Lock()
        self.kinds = collections.OrderedDict()
        self.failures = []  # strings
        self.sent = 0

    def add(self, kind, label, expected, note=""):
        """Count one request; a label outside `expected` is a failure."""
        with self.lock:
            self.sent += 1
            self.kinds.setdefault(kind, collections.Counter())[label] += 1
            if label not in expected:
                self.failures.append(f"{kind}: got {label}, expected {'/'.join(expected)}"
                                     + (f" ({note})" if note else ""))

    def snapshot(self):
        with self.lock:
            return self.sent, len(self.failures)

    def lines(self):
        out = [f"{'kind':<26} {'sent':>6}  outcomes"]
        for kind, c in self.kinds.items():
            out.append(f"{kind:<26} {sum(c.values()):>6}  "
                       + ", ".join(f"{k}×{n}" for k, n in sorted(c.items())))
        return out


class Result:
    def __init__(self):
        self.failures = []
        self.tally = Tally()
        self.rss = {}  # instance -> dict(start, warm, end, peak, growth, limit)
        self.seconds = 0.0

    @property
    def ok(self):
        return not self.failures and not self.tally.failures

    def summary(self):
        return (f"{self.tally.sent} requests in {self.seconds:.0f} s, "
                f"{len(self.tally.failures)} bad requests, {len(self.failures)} other failures")


# --- the clients --------------------------------------------------------------


class Worker:
    """One client thread: its user's tokens, its conversations, its pace."""

    def __init__(self, soak, idx, name, password):
        self.soak = soak
        self.stack = soak.stack
        self.idx = idx
        self.rng = random.Random(idx * 7919 + 17)
        self.name, self.password = name, password
        self.access = self.refresh = None
        self.token_at = 0.0
        self.convs = {f"w{idx}-{k}": 0 for k in range(3)}
        self.n = 0

    # -- helpers --

    def add(self, kind, label, expected, note=""):
        self.soak.result.tally.add(kind, label, expected, note)

    def req(self, kind, expected, method, path, **kw):
        kw.setdefault("timeout", REQUEST_TIMEOUT)
        r, err = attempt(lambda: self.stack.request(method, path, **kw))
        label = err or str(r.status)
        self.add(kind, label, expected, "" if r is None else r.text[:160])
        return r

    def login(self, kind="login"):
        r = self.req(kind, ("200",), "POST", "/api/token/",
                     json={"username": self.name, "password": self.password})
        if r is not None and r.status == 200:
            b = r.json()
            self.access, self.refresh = b["access"], b["refresh"]
            self.token_at = time.monotonic()

    def token(self):
        """A valid access token (they live 5 minutes): refresh well before."""
        if self.access is None:
            self.login()
        elif time.monotonic() - self.token_at > 120:
            self.op_refresh("refresh(auto)")
        return self.access

    def message(self, directive):
        self.n += 1
        return f"soak {self.idx}-{self.n}-{uuid.uuid4().hex[:8]} {directive}"

    def conv(self):
        return self.rng.choice(sorted(self.convs))

    def used(self, conv):
        self.convs[conv] += 2
        if self.convs[conv] >= CONV_MAX_ROWS:
            self.op_history_delete(conv)

    def normal(self):
        return fake(tokens=self.rng.randint(4, 20), delay_ms=self.rng.randint(5, 40))

    # -- operations --

    def op_login(self):
        self.login()

    def op_login_bad(self):
        self.req("login(bad password)", ("401",), "POST", "/api/token/",
                 json={"username": self.name, "password": "wrong-" + uuid.uuid4().hex})

    def op_refresh(self, kind="refresh"):
        r = self.req(kind, ("200",), "POST", "/api/token/refresh/",
                     json={"refresh": self.refresh})
        if r is not None and r.status == 200:
            self.access = r.json()["access"]
            self.token_at = time.monotonic()

    def op_verify(self):
        self.req("verify", ("200",), "POST", "/api/token/verify/", json={"token": self.token()})

    def op_chat(self):
        conv = self.conv()
        r = self.req("chat", ("200",), "POST", CHAT, token=self.token(),
                     json={"message": self.message(self.normal()), "conversation_id": conv})
        self.used(conv)
        if r is not None and r.status == 200:
            b = r.json()
            if not b.get("response") or not isinstance(b.get("message_id"), int):
                self.add("chat(body)", "bad", ("ok",), r.text[:200])

    def op_chat_upstream_fail(self):
        d = self.rng.choice([fake(status=500), fake(error_after=2), fake(cut_after=2),
                             fake(garbage=1), fake(model_missing=1), fake(malformed_after=1)])
        conv = self.conv()
        self.req("chat(upstream fails)", tuple(str(c) for c in UPSTREAM_5XX), "POST", CHAT,
                 token=self.token(), json={"message": self.message(d), "conversation_id": conv})

    def stream(self, kind, expected, directive, until=None, get=False, headers=None):
        conv = self.conv()
        msg = self.message(directive)
        if get:
            q = urllib.parse.urlencode({"message": msg, "conversation_id": conv,
                                        "access_token": self.token()})
            call = lambda: self.stack.sse(f"{STREAM}?{q}", timeout=REQUEST_TIMEOUT,  # noqa: E731
                                          until=until, headers=headers)
        else:
            call = lambda: self.stack.sse(STREAM, token=self.token(), method="POST",  # noqa: E731
                                          json={"message": msg, "conversation_id": conv},
                                          timeout=REQUEST_TIMEOUT, until=until,
                                          headers=headers)
        ev, err = attempt(call)
        s = read_stream(ev) if ev is not None else dict(label=err, error=None)
        self.add(kind, s["label"], expected, s.get("error") or "")
        self.used(conv)
        return s

    def op_stream(self):
        self.stream("stream", ("200 done",), self.normal(), get=self.rng.random() < 0.3)

    def op_stream_abort(self):
        self.stream("stream(client aborts)", ("200 aborted",),
                    fake(tokens=40, delay_ms=40),
                    until=lambda e, evs: sum(x["event"] == "message" for x in evs) >= 2)

    def op_stream_upstream_fail(self):
        d = self.rng.choice([fake(status=500), fake(error_after=2), fake(cut_after=2),
                             fake(garbage=1), fake(model_missing=1), fake(malformed_after=1),
                             fake(nodone=1, tokens=3), fake(hang=1, hang_after=1)])
        self.stream("stream(upstream fails)", ("200 error",), d)

    def op_stream_last_event_id(self):
        self.stream("stream(Last-Event-ID)", ("204",), self.normal(),
                    headers={"Last-Event-ID": "1:1"})

    def op_history_get(self):
        r = self.req("history GET", ("200",), "GET",
                     f"{HISTORY}?conversation_id={self.conv()}", token=self.token())
        if r is not None and r.status == 200:
            if not isinstance(r.json().get("messages"), list):
                self.add("history GET(body)", "bad", ("ok",), r.text[:200])

    def op_history_delete(self, conv=None):
        conv = conv or self.conv()
        self.req("history DELETE", ("204",), "DELETE",
                 f"{HISTORY}?conversation_id={conv}", token=self.token())
        self.convs[conv] = 0

    def op_health(self):
        self.req("health", ("200",), "GET", "/api/health/")

    def op_metrics(self):
        self.req("metrics", ("200",), "GET", "/api/metrics")

    def op_bad_input(self):
        self.req("bad input", ("400",), "POST", CHAT, token=self.token(),
                 json={"message": "   "})

    MIX = [  # (weight, operation)
        (30, op_stream), (6, op_stream_abort), (5, op_stream_upstream_fail),
        (1, op_stream_last_event_id), (12, op_chat), (3, op_chat_upstream_fail),
        (8, op_history_get), (2, op_history_delete), (1, op_login), (1, op_login_bad),
        (3, op_refresh), (2, op_verify), (4, op_health), (2, op_metrics), (2, op_bad_input),
    ]

    def run(self, stop, interval):
        ops = [op for _, op in self.MIX]
        weights = [w for w, _ in self.MIX]
        nxt = time.monotonic() + self.rng.random() * interval  # spread the starts
        while not stop.is_set():
            wait = nxt - time.monotonic()
            if wait > 0:
                if stop.wait(wait):
                    break
            elif wait < -2 * interval:
                nxt = time.monotonic()  # fell behind (a slow request): no burst
            nxt += interval
            op = self.rng.choices(ops, weights)[0]
            try:
                op(self)
            except Exception as exc:  # noqa: BLE001 — a client bug must not stop the soak
                self.soak.result.failures.append(
                    f"worker {self.idx} {op.__name__}: {type(exc).__name__}: {exc}")


# --- the run ------------------------------------------------------------------


class Soak:
    def __init__(self, stack, seconds, rate=RATE, workers=WORKERS, out=print):
        self.stack = stack
        self.seconds = seconds
        self.rate = rate
        self.nworkers = workers
        self.out = out
        self.result = Result()
        self.samples = []  # (t, {instance: kib})
        self.pids0 = {}
        self.warm_t = None  # when the warm-up ended

    def say(self, line):
        self.out(line)
        sys.stdout.flush()

    def sample(self, t):
        pids = responder_pids(self.stack.state)
        kib = {}
        for inst, pid in pids.items():
            if inst in self.pids0 and pid != self.pids0[inst]:
                msg = f"{inst} changed pid {self.pids0[inst]} -> {pid} (restarted)"
                if msg not in self.result.failures:
                    self.result.failures.append(msg)
            kib[inst] = rss_kib(pid)
        self.samples.append((t, kib))
        return kib

    def rss_line(self, t, kib):
        return f"rss t={t:4.0f}s  " + "  ".join(f"{i}={mib(k)}MiB" for i, k in sorted(kib.items()))

    def run(self):
        stack, res = self.stack, self.result
        warmup = max(10.0, min(120.0, 0.2 * self.seconds))
        restarts0 = stack.restart_counts()
        self.pids0 = responder_pids(stack.state)
        self.say(f"soak: {self.seconds:.0f} s of mixed traffic, {self.rate:g} requests/s from "
                 f"{self.nworkers} clients as {USERS} users; warm-up {warmup:.0f} s; "
                 f"RSS limit after warm-up: +max({RSS_GROWTH_MIB} MiB, "
                 f"{RSS_GROWTH_FRACTION:.0%}); GLIBC_TUNABLES="
                 f"{stack.env.get('GLIBC_TUNABLES', '(unset)')}; state {stack.state}")
        users = [stack.user("soak") for _ in range(USERS)]
        workers = [Worker(self, i, *users[i % USERS]) for i in range(self.nworkers)]
        t0 = time.monotonic()
        self.say(self.rss_line(0, self.sample(0.0)))
        stop = threading.Event()
        threads = [threading.Thread(target=w.run, args=(stop, self.nworkers / self.rate),
                                    name=f"soak-{w.idx}", daemon=True) for w in workers]
        for th in threads:
            th.start()
        next_sample, next_print, last_sent, last_t = SAMPLE_EVERY, PRINT_EVERY, 0, 0.0
        try:
            while True:
                t = time.monotonic() - t0
                if t >= self.seconds:
                    break
                if t < next_sample:
                    time.sleep(min(next_sample, self.seconds) - t)
                    continue
                next_sample += SAMPLE_EVERY
                kib = self.sample(t)
                if t >= next_print or (self.warm_t is None and t >= warmup):
                    note = ""
                    if self.warm_t is None and t >= warmup:
                        self.warm_t = t
                        note = "  (end of warm-up)"
                    if t >= next_print:
                        next_print += PRINT_EVERY
                    sent, bad = res.tally.snapshot()
                    self.say(self.rss_line(t, kib) + f"  | {(sent - last_sent) / (t - last_t):.1f} "
                             f"requests/s, {bad} bad so far" + note)
                    last_sent, last_t = sent, t
        finally:
            stop.set()
            for th in threads:
                th.join(REQUEST_TIMEOUT + 10)
        res.seconds = time.monotonic() - t0
        stuck = [th.name for th in threads if th.is_alive()]
        if stuck:
            res.failures.append(f"client threads still running after the stop: {stuck}")
        time.sleep(1.0)  # streams the clients left are wound down
        end = self.sample(res.seconds)
        self.say(self.rss_line(res.seconds, end) + "  (end)")
        self.judge_rss(end)
        self.final_checks(restarts0)
        for line in res.tally.lines():
            self.say(line)
        self.say(f"{'drift':<12} {'start':>8} {'warm':>8} {'end':>8} {'peak':>8} "
                 f"{'growth':>8} {'limit':>8} {'slope':>12}")
        for inst, d in sorted(res.rss.items()):
            self.say(f"{inst:<12} {mib(d['start']):>8} {mib(d['warm']):>8} {mib(d['end']):>8} "
                     f"{mib(d['peak']):>8} {mib(d['growth']):>8} {mib(d['limit']):>8} "
                     f"{d['slope']:>+8.2f}/min   (MiB)")
        bad = res.tally.failures
        if bad:
            common = collections.Counter(bad).most_common(15)
            self.say(f"bad requests ({len(bad)}):")
            for text, n in common:
                self.say(f"  {n}× {text}")
        for f in res.failures:
            self.say(f"FAILURE: {f}")
        self.say(("soak ok: " if res.ok else "soak FAILED: ") + res.summary())
        return res

    def judge_rss(self, end):
        """Growth = the quiet end sample minus the reference: the smallest
        sample of the last 30 s of the warm-up (its second half at most), so
        that a login's argon2 buffer or a burst of streams is not taken as
        the reference."""
        res = self.result
        warm_t = self.warm_t if self.warm_t is not None else 0.0  # short run: the start
        ref = [k for t, k in self.samples if max(warm_t - 30, warm_t / 2) <= t <= warm_t]
        for inst in sorted(set(end) | set(self.samples[0][1])):
            vals = [k[inst] for k in ref if k.get(inst) is not None]
            w, e = (min(vals) if vals else None), end.get(inst)
            start = self.samples[0][1].get(inst)
            peak = max((k.get(inst) or 0) for _, k in self.samples)
            # Trend after warm-up: least squares over the per-minute minima.
            minute = {}
            for t, k in self.samples:
                if t >= warm_t and k.get(inst) is not None:
                    b = int((t - warm_t) // 60)
                    minute[b] = min(minute.get(b, k[inst]), k[inst])
            pts = sorted(minute.items())
            slope = 0.0
            if len(pts) >= 3:
                mt = sum(t for t, _ in pts) / len(pts)
                mk = sum(k for _, k in pts) / len(pts)
                den = sum((t - mt) ** 2 for t, _ in pts)
                slope = sum((t - mt) * (k - mk) for t, k in pts) / den / 1024
            growth = None if w is None or e is None else e - w
            limit = None if w is None else max(RSS_GROWTH_MIB * 1024, RSS_GROWTH_FRACTION * w)
            res.rss[inst] = dict(start=start, warm=w, end=e, peak=peak, growth=growth,
                                 limit=limit, slope=slope)
            if growth is None:
                res.failures.append(f"{inst}: no RSS reading (reference {w}, end {e})")
            elif SANITIZED:
                pass  # ASan's quarantine holds freed memory: RSS says nothing
            elif growth > limit:
                res.failures.append(
                    f"{inst}: RSS grew {growth / 1024:.1f} MiB after warm-up "
                    f"({w / 1024:.1f} -> {e / 1024:.1f} MiB; limit {limit / 1024:.1f} MiB)")

    def final_checks(self, restarts0):
        stack, res = self.stack, self.result
        after = stack.restart_counts()
        died = {i: n - restarts0.get(i, 0) for i, n in after.items() if n > restarts0.get(i, 0)}
        if died:
            res.failures.append(f"responders restarted during the soak: {died}")
            for inst in died:
                self.say(harness.log_tail(stack.state / "log" / f"{inst.split('.')[0]}.log", 15))
        r, err = attempt(lambda: stack.request("GET", "/api/health/", timeout=10))
        if err or r.status != 200:
            res.failures.append(f"health after the soak: {err or r}")
        res.failures.extend(history_problems(stack))


def run(stack, seconds, rate=RATE, workers=WORKERS, out=print):
    """Soak a started Stack for `seconds`; the Result (result.ok)."""
    return Soak(stack, seconds, rate, workers, out).run()


def main():
    try:
        seconds = float(os.environ.get("SOAK_SECONDS") or DEFAULT_SECONDS)
    except ValueError:
        print("soak: SOAK_SECONDS must be a number of seconds", file=sys.stderr)
        return 2
    stack = harness.Stack(STACK_ENV)
    try:
        stack.start()
    except harness.StackError as exc:
        print(f"soak: the stack did not start\n{exc}", file=sys.stderr)
        return 2
    try:
        res = run(stack, seconds)
    finally:
        stack.stop()
    return 0 if res.ok else 1


if __name__ == "__main__":
    sys.exit(main())
