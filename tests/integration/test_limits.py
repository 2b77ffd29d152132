"""Abuse limits (issue "Hardening"): the per-user cap on open streams, which
holds across responder processes, and login throttling per username and per
client address. Each test runs on a stack with small limits of its own."""

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
def test_repeated_failed_logins_for_one_username_are_throttled(stack):
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
