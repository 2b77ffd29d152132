"""Faults under load (issue "Hardening"): while 20 clients loop on streams
and 5 on non-stream chats as several users, the test kills the chat_stream
and then the chat responder (SIGKILL; the supervisor restarts them), stops
the upstream for a few seconds and starts it again on the same port, makes
the upstream cut streams and send garbage (per-request directives in a share
of the requests, then /_fake/config defaults for everyone), and holds the
database's write lock for 3 s (less than the responders' 5 s busy timeout:
everything waits, nothing fails) and then for 6.5 s (writes fail: a 503, or
an error event saying the reply was not saved). Every request is bounded by
a timeout and classified. Afterwards: every exchange whose client saw "done"
(stream) or 200 (chat) is in history exactly once with exactly the text the
client got; a stream that failed after some text holds exactly that text
(complete=0); a stream whose reply could not be saved keeps its message
(stored when it started) and at most part of its reply; any other failure
the client was told about stores nothing; no message
is stored twice; no row lacks its pair (but the message of a stream cut
short by a kill or a failed save); PRAGMA integrity_check is ok; no
responder restarted other than the two killed; the service answers normally
after.

Also a short soak (tests/soak/soak.py, ~30 s) on a stack of its own.
Prints the figures of both."""

import collections
import os
import random
import signal
import sqlite3
import sys
import threading
import time
import urllib.parse
import uuid

import harness

sys.path.insert(0, str(harness.ROOT / "tests" / "soak"))
import soak  # noqa: E402

STREAM_CLIENTS = 20
CHAT_CLIENTS = 5
USERS = 5
REQUEST_TIMEOUT = 20  # seconds: a request still open after this is a hang
TRAFFIC_SECONDS = 37
NGINX_502 = "Service temporarily unavailable."  # nginx's own body: responder gone
STREAM = "/api/chat/stream/"

# When (seconds after the clients start) each fault begins.
T_KILL_STREAM = 3.0
T_KILL_CHAT = 7.0
T_UPSTREAM_DOWN, T_UPSTREAM_UP = 10.0, 14.0
T_DIRECTIVES, T_CONFIG_CUT, T_CONFIG_GARBAGE, T_CONFIG_CLEAR, T_DIRECTIVES_END = \
    15.5, 18.0, 19.5, 21.0, 22.0
T_DB_LOCK, DB_LOCK_SECONDS = 24.0, 3.0  # shorter than the responders' busy timeout (5 s)
T_DB_LOCK_LONG, DB_LOCK_LONG_SECONDS = 28.5, 6.5  # longer: writes fail, and say so

SOAK_SHORT_SECONDS = 30


# --- the clients --------------------------------------------------------------


class Load:
    """The clients, what they saw, and which fault was on when they asked."""

    def __init__(self, stack, accounts):
        self.stack = stack
        self.accounts = accounts  # [(name, access)]
        self.phase = "normal"  # read by the clients to pick their directives
        self.stop = threading.Event()
        self.lock = threading.Lock()
        self.records = []
        self.client_errors = []
        self.t0 = None

    def directive(self, rng):
        d = dict(tokens=rng.randint(4, 16), delay_ms=rng.randint(10, 50))
        if self.phase == "upstream-faults":
            x = rng.random()
            if x < 0.25:
                d["cut_after"] = rng.randint(0, 3)
            elif x < 0.40:
                d["garbage"] = 1
            elif x < 0.50:
                d["error_after"] = rng.randint(0, 3)
            elif x < 0.55:
                d["malformed_after"] = rng.randint(0, 3)
        return soak.fake(**d)

    def record(self, **rec):
        with self.lock:
            self.records.append(rec)

    def stream_client(self, i):
        rng = random.Random(1000 + i)
        name, access = self.accounts[i % len(self.accounts)]
        conv = f"fs{i}"
        n = 0
        while not self.stop.is_set():
            n += 1
            phase = self.phase
            sent = f"faults s{i}-{n}-{uuid.uuid4().hex[:10]} {self.directive(rng)}"
            if rng.random() < 0.3:  # as EventSource does: GET, token in the query
                q = urllib.parse.urlencode({"message": sent, "conversation_id": conv,
                                            "access_token": access})
                call = lambda: self.stack.sse(f"{STREAM}?{q}", timeout=REQUEST_TIMEOUT)  # noqa: E731
            else:
                call = lambda: self.stack.sse(  # noqa: E731
                    STREAM, token=access, method="POST", timeout=REQUEST_TIMEOUT,
                    json={"message": sent, "conversation_id": conv})
            t = time.monotonic()
            ev, err = soak.attempt(call)
            if ev is None:
                cls, s = err, {}
            else:
                s = soak.read_stream(ev)
                cls = {"200 done": "done", "200 cut": "cut stream", "200 bad-id": "bad ids"}.get(
                    s["label"], f"http {s['label']}")
                if not s["label"].startswith("200"):
                    try:
                        d = ev.json()
                        s["error"] = d.get("detail") if isinstance(d, dict) else str(d)
                    except ValueError:
                        s["error"] = ev.body[:200].decode("utf-8", "replace")
                    if s["error"] == NGINX_502:
                        cls += " (nginx: responder gone)"
                if s["label"] == "200 error":
                    msg = s["error"] or ""
                    cls = ("error event: restarting" if "restarting" in msg else
                           "error event: not saved" if "could not be saved" in msg else
                           "error event: upstream")
            self.record(kind="stream", user=name, conv=conv, sent=sent, cls=cls,
                        message_id=s.get("message_id"), text=s.get("text", ""),
                        error=s.get("error"), phase=phase, t=t - self.t0,
                        secs=time.monotonic() - t)
            self.stop.wait(0.05 if cls == "done" else 0.2)

    def chat_client(self, i):
        rng = random.Random(2000 + i)
        name, access = self.accounts[i % len(self.accounts)]
        conv = f"fc{i}"
        n = 0
        while not self.stop.is_set():
            n += 1
            phase = self.phase
            sent = f"faults c{i}-{n}-{uuid.uuid4().hex[:10]} {self.directive(rng)}"
            t = time.monotonic()
            r, err = soak.attempt(lambda: self.stack.request(
                "POST", "/api/chat/", token=access, timeout=REQUEST_TIMEOUT,
                json={"message": sent, "conversation_id": conv}))
            rec = dict(kind="chat", user=name, conv=conv, sent=sent, cls=err, message_id=None,
                       text="", error=None, phase=phase, t=t - self.t0,
                       secs=time.monotonic() - t)
            if r is not None:
                body = r.json() if r.body.strip().startswith(b"{") else {}
                body = body if isinstance(body, dict) else {}
                if r.status == 200:
                    rec.update(cls="done", message_id=body.get("message_id"),
                               text=body.get("response"))
                else:
                    rec["error"] = body.get("detail") or r.text[:200]
                    rec["cls"] = f"http {r.status}" + (
                        " (nginx: responder gone)" if rec["error"] == NGINX_502 else "")
            self.record(**rec)
            self.stop.wait(0.05 if rec["cls"] == "done" else 0.2)

    def guarded(self, fn, i):
        try:
            fn(i)
        except Exception as exc:  # noqa: BLE001 — reported after the run
            with self.lock:
                self.client_errors.append(f"{fn.__name__}({i}): {type(exc).__name__}: {exc}")

    def start(self):
        self.t0 = time.monotonic()
        threads = [threading.Thread(target=self.guarded, args=(self.stream_client, i), daemon=True)
                   for i in range(STREAM_CLIENTS)]
        threads += [threading.Thread(target=self.guarded, args=(self.chat_client, i), daemon=True)
                    for i in range(CHAT_CLIENTS)]
        for th in threads:
            th.start()
        return threads


# --- the faults ---------------------------------------------------------------


def responder_pid(stack, name):
    try:
        return int((stack.state / "run" / f"{name}.pid").read_text().strip())
    except (OSError, ValueError):
        return None


def wait_for(cond, seconds):
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        v = cond()
        if v:
            return v
        time.sleep(0.02)
    return None


def kill_responder(stack, name):
    old = responder_pid(stack, name)
    assert old, f"no pid for {name}"
    os.kill(old, signal.SIGKILL)
    t = time.monotonic()
    new = wait_for(lambda: (p := responder_pid(stack, name)) not in (None, old)
                   and os.path.exists(f"/proc/{p}") and p, 10)
    assert new, f"{name} was not restarted within 10 s of SIGKILL"
    return f"SIGKILL {name} pid {old}: new pid {new} after {time.monotonic() - t:.2f} s"


def health(stack):
    r, err = soak.attempt(lambda: stack.request("GET", "/api/health/", timeout=10))
    return (err, None) if r is None else (r.status, r.json() if r.status in (200, 503) else r.text)


def hold_write_lock(stack, seconds):
    con = sqlite3.connect(stack.state / "jarvas.db", timeout=10, isolation_level=None)
    try:
        t = time.monotonic()
        con.execute("BEGIN IMMEDIATE")
        got = time.monotonic() - t
        time.sleep(seconds)
        con.execute("COMMIT")
    finally:
        con.close()
    return f"held the database write lock for {seconds:g} s (got it in {got:.2f} s)"


# --- the verdict --------------------------------------------------------------


def check_history(stack, records):
    """(lost, wrong_partial, stored_though_failed, duplicates): lists of texts."""
    rows = stack.sqlite(
        "SELECT m.id, u.username, m.conversation_id, m.role, m.content, m.complete "
        "FROM messages m JOIN users u ON u.id = m.user_id")
    by_id = {r[0]: r for r in rows}
    user_rows = collections.defaultdict(list)
    for r in rows:
        if r[3] == "user":
            user_rows[r[4]].append(r)
    lost, partial, phantom, dup = [], [], [], []
    for rec in records:
        stored = user_rows.get(rec["sent"], [])
        if len(stored) > 1:
            dup.append(f"{rec['sent']!r} stored {len(stored)} times: ids {[r[0] for r in stored]}")
        where = f"{rec['kind']} {rec['sent'][:40]!r} at {rec['t']:.1f}s ({rec['phase']})"
        mid = rec["message_id"]
        if rec["cls"] == "done":
            a, u = by_id.get(mid), by_id.get(mid - 1) if isinstance(mid, int) else None
            want_a = (mid, rec["user"], rec["conv"], "assistant", rec["text"], 1)
            want_u = (mid - 1 if isinstance(mid, int) else None, rec["user"], rec["conv"],
                      "user", rec["sent"], 1)
            if a != want_a or u != want_u or len(stored) != 1:
                lost.append(f"{where}: client got message_id={mid} text={rec['text']!r}; "
                            f"history has {a!r} / {u!r}; user message stored {len(stored)}×")
        elif rec["cls"] == "error event: upstream" and rec["text"]:
            # What the user saw is what history holds: the partial reply.
            a = by_id.get(mid) if isinstance(mid, int) else None
            want = (mid, rec["user"], rec["conv"], "assistant", rec["text"], 0)
            if a != want or len(stored) != 1:
                partial.append(f"{where}: client got {rec['text']!r} then error "
                               f"{rec['error']!r}; history has {a!r}; user message "
                               f"stored {len(stored)}×")
        elif rec["cls"] == "error event: not saved":
            # A stream stores its message when it starts and its reply as it
            # grows: what could not be saved at the end is the rest of the
            # reply.  The message stays, and at most a part of what the
            # client saw, marked incomplete.
            a = by_id.get(mid) if isinstance(mid, int) else None
            if len(stored) > 1 or (a is not None and not (
                    a[3] == "assistant" and a[5] == 0 and rec["text"].startswith(a[4]))):
                phantom.append(f"{where}: client got {rec['text']!r}, then 'not saved'; "
                               f"history has {stored!r} / {a!r}")
        elif rec["cls"] == "error event: upstream" or (
                rec["cls"].startswith("http ") and "nginx" not in rec["cls"]):
            # The client was told it failed, and saw no text: nothing kept.
            if stored:
                phantom.append(f"{where}: client got {rec['cls']} ({rec['error']!r}) "
                               f"but history has {stored!r}")
    return lost, partial, phantom, dup


def figures(records):
    lines = []
    sent = collections.Counter(r["kind"] for r in records)
    done = collections.Counter(r["kind"] for r in records if r["cls"] == "done")
    lines.append(f"requests sent: {len(records)} (streams {sent['stream']}, chats {sent['chat']}); "
                 f"completed: {sum(done.values())} (streams {done['stream']}, "
                 f"chats {done['chat']})")
    for kind in ("stream", "chat"):
        failed = collections.Counter(r["cls"] for r in records
                                     if r["kind"] == kind and r["cls"] != "done")
        lines.append(f"  {kind} failed by class: "
                     + (", ".join(f"{c} ×{n}" for c, n in failed.most_common()) or "none"))
    phases = collections.OrderedDict()
    for r in sorted(records, key=lambda r: r["t"]):
        phases.setdefault(r["phase"], collections.Counter())[r["cls"]] += 1
    for p, c in phases.items():
        lines.append(f"  during {p:<22} " + ", ".join(f"{k} ×{n}" for k, n in c.most_common()))
    reasons = collections.defaultdict(list)
    for r in records:
        if r["cls"] != "done":
            reasons[(r["cls"], r["phase"], (r["error"] or "")[:80])].append(r["t"])
    for (cls, phase, why), ts in sorted(reasons.items(), key=lambda kv: -len(kv[1]))[:12]:
        lines.append(f"  {len(ts):>5} × {cls} during {phase} (sent {min(ts):.1f}-{max(ts):.1f} s)"
                     + (f": {why!r}" if why else ""))
    slowest = max((r["secs"] for r in records), default=0)
    lines.append(f"  slowest request: {slowest:.2f} s (bound {REQUEST_TIMEOUT} s)")
    return lines


# --- the tests ----------------------------------------------------------------


@harness.allows_restarts
@harness.timeout(180)
@harness.stack_env(JARVAS_UPSTREAM_IDLE_TIMEOUT="5", JARVAS_UPSTREAM_CONNECT_TIMEOUT="2")
def test_faults_under_load(stack):
    accounts = []
    for _ in range(USERS):
        name, pw = stack.user("faults")
        accounts.append((name, stack.login(name, pw)[0]))
    restarts0 = stack.restart_counts()
    load = Load(stack, accounts)
    timeline = []
    started = time.monotonic()

    def at(t, what, fn=None):
        left = t - (time.monotonic() - load.t0)
        if left > 0:
            time.sleep(left)
        note = fn() if fn else None
        timeline.append(f"{time.monotonic() - load.t0:5.1f}s {what}" + (f": {note}" if note else ""))

    def set_phase(p):
        load.phase = p

    threads = load.start()
    try:
        at(T_KILL_STREAM, "kill chat_stream", lambda: kill_responder(stack, "chat_stream"))
        at(T_KILL_CHAT, "kill chat", lambda: kill_responder(stack, "chat"))
        at(T_UPSTREAM_DOWN, "stop the upstream",
           lambda: (set_phase("upstream-down"), stack.fake_stop())[1])
        down_health = []
        at(T_UPSTREAM_DOWN + 1, "health while the upstream is down",
           lambda: str(down_health.append(health(stack)) or down_health[0]))

        def upstream_up():
            stack.fake_start()
            set_phase("upstream-back")
            ok = wait_for(lambda: health(stack)[0] == 200, 5)
            return f"port {stack.fake_port}; health {'200' if ok else health(stack)}"

        at(T_UPSTREAM_UP, "start the upstream again", upstream_up)
        at(T_DIRECTIVES, "a share of requests: cut_after/garbage/error_after/malformed_after",
           lambda: set_phase("upstream-faults"))
        at(T_CONFIG_CUT, "fake config default cut_after=2 (every request)",
           lambda: (set_phase("config-cut"), str(stack.fake_config(cut_after=2)))[1])
        at(T_CONFIG_GARBAGE, "fake config default garbage=1 (every request)",
           lambda: (set_phase("config-garbage"),
                    str(stack.fake_config(cut_after=None, garbage=1)))[1])
        at(T_CONFIG_CLEAR, "fake config defaults cleared",
           lambda: (set_phase("upstream-faults"), str(stack.fake_config(garbage=None)))[1])
        at(T_DIRECTIVES_END, "directives off", lambda: set_phase("normal"))
        at(T_DB_LOCK, "database write lock",
           lambda: (set_phase("db-locked"), hold_write_lock(stack, DB_LOCK_SECONDS))[1])
        set_phase("normal")
        at(T_DB_LOCK_LONG, "database write lock past the busy timeout",
           lambda: (set_phase("db-locked-long"), hold_write_lock(stack, DB_LOCK_LONG_SECONDS))[1])
        set_phase("normal")
        at(TRAFFIC_SECONDS, "clients stop")
    finally:
        load.stop.set()
        if stack.fake is None:
            stack.fake_start()
        for th in threads:
            th.join(REQUEST_TIMEOUT + 10)
    traffic = time.monotonic() - load.t0
    stuck = sum(th.is_alive() for th in threads)
    time.sleep(1.0)  # let the responders finish what the clients left

    records = list(load.records)
    lost, partial, phantom, dup = check_history(stack, records)
    interrupted = {r["sent"] for r in records if r["kind"] == "stream" and r["cls"] not in (
        "done", "error event: upstream", "error event: restarting")
        and not r["cls"].startswith("http ")}
    problems = soak.history_problems(stack, interrupted)
    restarts = {i: n - restarts0.get(i, 0) for i, n in stack.restart_counts().items()}

    # The service answers normally afterwards.
    name, access = accounts[0]
    after = {}
    r, err = soak.attempt(lambda: stack.request(
        "POST", "/api/chat/", token=access, timeout=REQUEST_TIMEOUT,
        json={"message": "after the faults [[fake tokens=3]]", "conversation_id": "after"}))
    after["chat"] = err or r.status
    ev, err = soak.attempt(lambda: stack.sse(
        STREAM, token=access, method="POST", timeout=REQUEST_TIMEOUT,
        json={"message": "after the faults, streamed [[fake tokens=3]]",
              "conversation_id": "after"}))
    after["stream"] = err or soak.read_stream(ev)["label"]
    after["health"] = health(stack)[0]
    hist = stack.request("GET", "/api/chat/history/?conversation_id=after", token=access)
    after["history"] = [m["role"] for m in hist.json().get("messages", [])] \
        if hist.status == 200 else hist.status

    timeouts = [r for r in records if r["cls"] == "timeout"]
    print(f"\nfaults under load: {traffic:.1f} s of traffic ({STREAM_CLIENTS} stream + "
          f"{CHAT_CLIENTS} chat clients, {USERS} users), whole test "
          f"{time.monotonic() - started:.1f} s")
    for line in timeline:
        print("  " + line)
    for line in figures(records):
        print(line)
    print(f"lost: {len(lost)}; wrong partial replies: {len(partial)}; stored though failed: "
          f"{len(phantom)}; stored twice: {len(dup)}; timeouts (hangs): {len(timeouts)}; "
          f"restarts: {restarts}; after: {after}")
    for title, items in (("LOST", lost), ("WRONG PARTIAL", partial),
                         ("STORED THOUGH FAILED", phantom), ("STORED TWICE", dup),
                         ("HISTORY", problems), ("CLIENT BUG", load.client_errors)):
        for item in items[:10]:
            print(f"  {title}: {item}")

    assert not load.client_errors, load.client_errors[:3]
    assert stuck == 0, f"{stuck} client threads still running after the stop"
    assert len(records) > 200, f"only {len(records)} requests were made"
    assert sum(r["cls"] == "done" for r in records) > 100, "too few exchanges completed"
    assert not lost, f"{len(lost)} completed exchanges not in history as the client saw them: " \
        f"{lost[:3]}"
    assert not problems, problems
    assert not dup, f"messages stored more than once: {dup[:3]}"
    assert not partial, f"{len(partial)} failed streams whose partial reply is not what " \
        f"the client saw: {partial[:3]}"
    assert not phantom, f"{len(phantom)} failed exchanges stored anyway: {phantom[:3]}"
    bad_ids = [r for r in records if r["cls"] == "bad ids"]
    assert not bad_ids, f"streams whose event ids disagree with their message_id: {bad_ids[:3]}"
    assert not timeouts, f"{len(timeouts)} requests got no answer within " \
        f"{REQUEST_TIMEOUT} s: {[(r['kind'], r['phase'], r['t']) for r in timeouts[:5]]}"
    assert down_health and down_health[0][0] == 503 and "upstream" in str(down_health[0][1]), \
        f"health while the upstream was down: {down_health}"
    assert restarts.get("chat_stream") == 1 and restarts.get("chat") == 1 \
        and not restarts.get("token"), \
        f"restarts other than the two kills: {restarts}\n" + "".join(
            harness.log_tail(stack.state / "log" / f"{n}.log", 15) for n in ("chat", "chat_stream"))
    assert after == {"chat": 200, "stream": "200 done", "health": 200,
                     "history": ["user", "assistant", "user", "assistant"]}, after


@harness.timeout(SOAK_SHORT_SECONDS + 120)
# 32 stream workers instead of 256: a 10 s warm-up puts every one of them to
# work before the RSS reference sample.
@harness.stack_env(**soak.STACK_ENV, JARVAS_WORKERS_CHAT_STREAM="32")
def test_soak_short(stack):
    print()
    res = soak.run(stack, SOAK_SHORT_SECONDS, out=lambda s: print("  " + s))
    assert res.ok, res.summary() + "\n" + "\n".join(
        (res.failures + sorted(set(res.tally.failures)))[:10])
