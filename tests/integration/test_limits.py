"""Abuse limits (issue "Hardening"): the per-user cap on open streams, which
holds across responder processes, and login throttling (src/throttle.h): per
client address and username, per address, and a per-username ceiling that
only refuses addresses that have failed themselves. Each test runs on a stack
with small limits of its own."""

import http.client
import os
import shutil
import socket
import sqlite3
import subprocess
import threading
import time

import harness

HANG = "[[fake hang=1 hang_after=1]]"


class OpenStream:
    """A stream held open in a thread until close() (the client leaves)."""

    def __init__(self, stack, token, conversation):
        self.stack, self.token, self.conversation = stack, token, conversation
        self.first = threading.Event()
        self.leave = threading.Event()
        self.result = None
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        def until(ev, events):
            if ev.get("event") == "message":
                self.first.set()
                self.leave.wait(30)
                return True
            return False

        try:
            self.result = self.stack.sse(
                "/api/chat/stream/", token=self.token, method="POST",
                json={"message": f"hold {HANG}", "conversation_id": self.conversation},
                timeout=60, until=until)
        finally:
            self.first.set()

    def close(self):
        self.leave.set()
        self.thread.join(30)


def stream_status(stack, token):
    """Status of one more stream attempt (200 means it was admitted)."""
    r = stack.sse("/api/chat/stream/", token=token, method="POST",
                  json={"message": "one more [[fake tokens=1]]"}, timeout=30)
    return r


def wait_first_chunks(held):
    for s in held:
        assert s.first.wait(20), "a held stream never produced its first chunk"


def assert_refused(r, status, detail_part):
    """A plain JSON refusal with Retry-After whose detail says detail_part."""
    assert r.status == status, f"one more stream: {r.status} {getattr(r, 'body', b'')!r}"
    assert r.headers.get("retry-after", "").isdigit(), r.headers
    assert detail_part in harness.Response(r.status, "", r.headers, r.body).json()["detail"]


def wait_admitted(stack, token, seconds=10):
    deadline = time.monotonic() + seconds
    while True:
        r = stream_status(stack, token)
        if r.status == 200 or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


@harness.stack_env(JARVAS_MAX_STREAMS_PER_USER="2", JARVAS_PROCS_CHAT_STREAM="2")
def test_open_streams_per_user_are_capped_across_processes(stack):
    name, pw = stack.user("cap")
    other, other_pw = stack.user("cap_other")
    access, _ = stack.login(name, pw)
    other_access, _ = stack.login(other, other_pw)
    held = [OpenStream(stack, access, f"c{i}") for i in range(2)]
    try:
        wait_first_chunks(held)
        assert_refused(stream_status(stack, access), 429, "at most 2")
        # Another user is not affected.
        assert stream_status(stack, other_access).status == 200
    finally:
        held[0].close()
    # Once one stream is closed, the user may open another.
    r = wait_admitted(stack, access)
    assert r.status == 200, f"after closing one: {r.status}"
    held[1].close()


@harness.stack_env(JARVAS_STREAMS_MAX="2", JARVAS_MAX_STREAMS_PER_USER="100")
def test_a_full_stream_process_answers_503_and_takes_streams_again_once_one_ends(stack):
    """JARVAS_STREAMS_MAX open streams per process; one more gets a plain
    503 JSON answer with Retry-After (nothing is stored), and a place that
    frees up is taken again."""
    name, pw = stack.user("full")
    access, _ = stack.login(name, pw)
    held = [OpenStream(stack, access, f"f{i}") for i in range(2)]
    try:
        wait_first_chunks(held)
        assert_refused(stream_status(stack, access), 503, "retry")
        got = stack.request("GET", "/api/chat/history/?conversation_id=default", token=access)
        assert got.json()["messages"] == [], got.json()
    finally:
        held[0].close()
    r = wait_admitted(stack, access)
    assert r.status == 200, f"after closing one: {r.status}"
    held[1].close()


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="3", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
def test_repeated_failed_logins_for_one_username_from_one_address_are_throttled(stack):
    name, pw = stack.user("throttle")
    bad = {"username": name, "password": "wrong"}
    statuses = [stack.request("POST", "/api/token/", json=bad).status for _ in range(3)]
    assert statuses == [401, 401, 401], statuses
    r = stack.request("POST", "/api/token/", json=bad)
    assert r.status == 429, r
    assert int(r.headers["retry-after"]) > 0
    assert "Too many failed login attempts" in r.json()["detail"]
    # Even the right password waits: the guesser must not learn it works.
    assert stack.request("POST", "/api/token/",
                         json={"username": name, "password": pw}).status == 429
    # Other usernames are not affected.
    other, other_pw = stack.user("throttle_other")
    assert stack.request("POST", "/api/token/",
                         json={"username": other, "password": other_pw}).status == 200


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="1000000", JARVAS_LOGIN_FAILURES_PER_ADDR="4")
def test_repeated_failed_logins_from_one_address_are_throttled(stack):
    for i in range(4):
        r = stack.request("POST", "/api/token/",
                          json={"username": f"nobody{i}", "password": "x"})
        assert r.status == 401, r
    name, pw = stack.user("addr")
    r = stack.request("POST", "/api/token/", json={"username": name, "password": pw})
    assert r.status == 429, r
    assert int(r.headers["retry-after"]) > 0


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="3", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
def test_a_successful_login_clears_the_usernames_failures(stack):
    name, pw = stack.user("clear")
    bad = {"username": name, "password": "wrong"}
    for _ in range(2):
        assert stack.request("POST", "/api/token/", json=bad).status == 401
    stack.login(name, pw)
    for _ in range(2):
        assert stack.request("POST", "/api/token/", json=bad).status == 401
    stack.login(name, pw)


# --- login throttling under pressure (issue 10, items 8 and 11) -----------------


def login_from(stack, source, name, password):
    """POST /api/token/ from the loopback address `source` (any 127.x.y.z is
    this machine): nginx on 127.0.0.1 then sees it as REMOTE_ADDR."""
    raw = harness._build_request(stack.port, "POST", "/api/token/", None,
                                 {"username": name, "password": password}, None, None, None)
    with socket.create_connection(("127.0.0.1", stack.port), timeout=60,
                                  source_address=(source, 0)) as s:
        s.sendall(raw)
        resp = http.client.HTTPResponse(s, method="POST")
        resp.begin()
        body = resp.read()
    return harness.Response(resp.status, resp.reason, harness._headers_of(resp), body)


def assert_throttled(r):
    assert r.status == 429, r
    assert int(r.headers["retry-after"]) > 0, r.headers
    assert "Too many failed login attempts" in r.json()["detail"], r


def parallel_statuses(stack, n, name, password, source="127.0.0.1"):
    start = threading.Barrier(n)
    statuses = [None] * n

    def one(i):
        start.wait(30)
        statuses[i] = login_from(stack, source, name, password).status

    threads = [threading.Thread(target=one, args=(i,)) for i in range(n)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(120)
    return statuses


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="10", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
@harness.timeout(240)
def test_parallel_wrong_guesses_never_pass_the_limit(stack):
    name, pw = stack.user("parallel")
    statuses = parallel_statuses(stack, 30, name, "wrong")
    assert set(statuses) <= {401, 429}, statuses
    assert statuses.count(401) == 10, f"{statuses.count(401)} guesses through a limit of 10"
    assert_throttled(login_from(stack, "127.0.0.1", name, pw))


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="10", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
def test_another_address_logs_in_while_one_is_locked_out_of_that_username(stack):
    name, pw = stack.user("victim")
    for _ in range(10):
        assert login_from(stack, "127.0.0.1", name, "wrong").status == 401
    assert_throttled(login_from(stack, "127.0.0.1", name, pw))
    r = login_from(stack, "127.0.0.2", name, pw)
    assert r.status == 200 and set(r.json()) == {"refresh", "access"}, r
    # Its success clears nothing of the guesser's.
    assert_throttled(login_from(stack, "127.0.0.1", name, pw))


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="3", JARVAS_LOGIN_USERNAME_CEILING="4",
                   JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
def test_past_the_username_ceiling_only_addresses_that_failed_are_refused(stack):
    name, pw = stack.user("ceiling")
    for source in ("127.0.1.1", "127.0.1.1", "127.0.1.2", "127.0.1.2", "127.0.1.3"):
        assert login_from(stack, source, name, "wrong").status == 401
    # 5 failures > 4: an address that failed is refused below its own limit...
    assert_throttled(login_from(stack, "127.0.1.1", name, pw))
    assert_throttled(login_from(stack, "127.0.1.3", name, "wrong"))
    # ...one that never failed still logs in, and a new guesser gets one try.
    assert login_from(stack, "127.0.1.4", name, pw).status == 200
    assert login_from(stack, "127.0.1.5", name, "wrong").status == 401
    assert_throttled(login_from(stack, "127.0.1.5", name, "wrong"))


LONG_NAMES = [("151_bytes", 151), ("507_bytes", 507), ("508_bytes", 508),
              ("4_KiB", 4096), ("1000000_bytes", 1000000)]


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="2", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
@harness.cases(LONG_NAMES)
def test_a_username_of_any_length_is_401_and_still_counted(stack, case):
    _, size = case
    name = "u" * (size - 1) + case[0][0]  # a name of its own per row
    for _ in range(2):
        r = stack.request("POST", "/api/token/", json={"username": name, "password": "x"})
        assert r.status == 401, r
        assert r.json() == {"detail": "No active account found with the given credentials"}, r
    assert_throttled(stack.request("POST", "/api/token/",
                                   json={"username": name, "password": "x"}))
    longest = stack.sqlite("SELECT max(length(key)) FROM login_failures")[0][0]
    assert longest < 512, longest


def make_database_read_only(stack):
    """Replace jarvas.db by a read-only copy of itself, as an operator's
    mistake or a full disk would leave it. A new file, so every process
    reconnects to it (db.c same_file()); mode 0444 stops an unprivileged
    responder, and the immutable flag stops one that runs as root."""
    db = stack.state / "jarvas.db"
    con = sqlite3.connect(db, timeout=10)  # harness: the stack only reads; this is the fault
    con.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    copy = sqlite3.connect(stack.state / "jarvas.db.ro")
    con.backup(copy)
    copy.close()
    con.close()
    os.chmod(stack.state / "jarvas.db.ro", 0o444)
    os.rename(stack.state / "jarvas.db.ro", db)
    # An immutable file cannot be renamed, so the flag comes after; no
    # request is running meanwhile, so no pool connection opens it first.
    if os.geteuid() == 0:
        subprocess.run(["chattr", "+i", str(db)], check=True)


def undo_read_only(stack):
    db = stack.state / "jarvas.db"
    if os.geteuid() == 0 and shutil.which("chattr"):
        subprocess.run(["chattr", "-i", str(db)], check=False)


@harness.stack_env(JARVAS_LOGIN_FAILURES_PER_USER="5", JARVAS_LOGIN_FAILURES_PER_ADDR="1000000")
def test_a_read_only_database_refuses_logins_with_503_and_health_says_so(stack):
    name, pw = stack.user("readonly")
    stack.login(name, pw)
    try:
        make_database_read_only(stack)
        for password in (pw, "wrong"):
            r = stack.request("POST", "/api/token/", json={"username": name, "password": password})
            assert r.status == 503, r
            assert "cannot be recorded" in r.json()["detail"], r
        r = stack.request("GET", "/api/health/")
        assert r.status == 503, r
        body = r.json()
        assert body["status"] == "error" and body["database"].startswith("error: cannot write"), body
        assert "readonly" in body["database"] or "read-only" in body["database"], body
    finally:
        undo_read_only(stack)
