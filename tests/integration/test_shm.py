"""The files processes share (issue 10, item 12) and the per-user cap on
chats in progress (item 4).

Each chat_stream process publishes run/streams.<pid> (its open streams, by
user), each chat process run/chats.<pid>, every responder process
metrics/<responder>.<pid> (its counters). Whatever happens to one of those
files — truncated while in use, garbage put in their place — no responder
faults, /api/metrics answers, the caps hold, the damage is logged, and an
owner puts its file back. Files of dead processes go away (their counters
folded into metrics/retired, so totals never drop)."""

import os
import random
import signal
import socket
import struct
import subprocess
import threading
import time
import urllib.parse

import harness
from test_chat import chat, requests_total, scrape, steered, wait_for
from test_limits import OpenStream, assert_refused, stream_status, wait_first_chunks

# struct metrics_file (src/metrics.h): int32 pid at 8, uint64 id at 16, and
# the first counter, requests[token][200], at 32.
METRICS_PID_AT, METRICS_ID_AT, METRICS_TOKEN_200_AT = 8, 16, 32
# The cap files (src/limits.h): magic, pid, nslots, used, then user ids.
LIMITS_MAGIC = 0x6A6C696D
LIMITS_HEADER = 24


def run_files(stack, kind):
    return sorted((stack.state / "run").glob(f"{kind}.*"))


def metrics_files(stack):
    return sorted(p for p in (stack.state / "metrics").iterdir() if p.name != "retired")


def log_text(stack, responder):
    return (stack.state / "log" / f"{responder}.log").read_text(errors="replace")


def responder_pid(stack, inst):
    return int((stack.state / "run" / f"{inst}.pid").read_text().strip())


def dead_pid():
    """The pid of a process that has exited (and was reaped)."""
    p = subprocess.Popen(["true"])
    p.wait()
    return p.pid


def full_size(path):
    """The size of a cap file from its header (what its owner restores)."""
    with open(path, "rb") as f:
        head = f.read(LIMITS_HEADER)
    if len(head) < LIMITS_HEADER:
        return None
    magic, _pid, nslots, _used = struct.unpack("=IiqQ", head)
    return LIMITS_HEADER + 8 * nslots if magic == LIMITS_MAGIC else None


class Scraper:
    """Scrapes /api/metrics in a loop until stop(); every answer must be 200."""

    def __init__(self, stack):
        self.stack, self.statuses, self.errors = stack, [], []
        self.done = threading.Event()
        self.thread = threading.Thread(target=self._run, daemon=True)
        self.thread.start()

    def _run(self):
        while not self.done.is_set():
            try:
                self.statuses.append(self.stack.request("GET", "/api/metrics", timeout=30).status)
            except OSError as exc:
                self.errors.append(repr(exc))
            time.sleep(0.05)

    def stop(self):
        self.done.set()
        self.thread.join(60)
        assert not self.errors, self.errors[:3]
        assert self.statuses and set(self.statuses) == {200}, sorted(set(self.statuses))


def wait_refused(stack, token, seconds=30, times=4):
    """One more stream is refused with 429 `times` in a row, by whichever
    process answers (the cap counts every process again); streams admitted
    meanwhile end at once. The last answer."""
    deadline = time.monotonic() + seconds
    refused = 0
    while True:
        r = stream_status(stack, token)
        refused = refused + 1 if r.status == 429 else 0
        if refused == times or time.monotonic() > deadline:
            return r
        time.sleep(0.2)


# --- truncated while in use ----------------------------------------------------

TRUNCATIONS = [("to-0-bytes", 0), ("to-5-bytes", 5), ("to-28-bytes", LIMITS_HEADER + 4)]


@harness.cases(TRUNCATIONS)
@harness.stack_env(JARVAS_MAX_STREAMS_PER_USER="2", JARVAS_PROCS_CHAT_STREAM="2")
def test_truncated_stream_cap_files_crash_no_process_and_the_cap_still_holds(stack, case):
    _, size = case
    name, pw = stack.user("trunc")
    access, _ = stack.login(name, pw)
    other_access, _ = stack.login(*stack.user("trunc_other"))
    offset = len(log_text(stack, "chat_stream"))
    held = [OpenStream(stack, access, f"t{i}") for i in range(2)]
    scraper = Scraper(stack)
    try:
        wait_first_chunks(held)
        files = run_files(stack, "streams")
        assert len(files) == 2, files
        sizes = {f: full_size(f) for f in files}
        for f in files:  # both processes' own files, which the other reads too
            os.truncate(f, size)
        # Both processes admit and count with their files (and the other's)
        # short: another user's streams go on.
        for _ in range(4):
            r = stream_status(stack, other_access)
            assert r.status == 200 and r.named("done"), (r.status, list(r))
        # Each owner notices, logs, and puts its file back...
        wait_for(lambda: all(os.path.getsize(f) == sizes[f] for f in files), 20,
                 f"the truncated files back to {sorted(sizes.values())} bytes")
        log = log_text(stack, "chat_stream")[offset:]
        for f in files:
            assert f"stream cap file {f} was truncated" in log, log[-2000:]
        # ...so the cap counts both processes again: the user's third is refused.
        assert_refused(wait_refused(stack, access), 429, "at most 2")
    finally:
        for s in held:
            s.close()
        scraper.stop()


@harness.cases(TRUNCATIONS + [("to-1000-bytes", 1000)])
def test_truncated_metrics_files_crash_no_process_and_are_restored(stack, case):
    _, size = case
    acct = stack.user("mtrunc")
    access, _ = stack.login(*acct)
    scraper = Scraper(stack)
    held = OpenStream(stack, access, "m")
    try:
        assert held.first.wait(20), "the held stream never produced its first chunk"
        files = metrics_files(stack)
        assert {f.name.split(".")[0] for f in files} >= {"token", "chat", "chat_stream"}, files
        full = {f: os.path.getsize(f) for f in files}
        for f in files:
            os.truncate(f, size)
        # Every responder counts on: logins, chats, streams, scrapes.
        stack.login(*acct)
        r = chat(stack, access, "still counting", tokens=2)
        assert r.status == 200, r
        ev = stack.sse("/api/chat/stream/?message=" + urllib.parse.quote(
            steered("streaming", tokens=2)), token=access, timeout=30)
        assert ev.status == 200 and ev.named("done"), (ev.status, list(ev))
        # Each owner puts its file back, and the sums count it again.
        wait_for(lambda: all(os.path.getsize(f) == full[f] for f in files), 20,
                 "the truncated metrics files restored")
        for f in files:
            responder = f.name.rsplit(".", 1)[0]
            assert f"metrics file {f} was truncated" in log_text(stack, responder)
        before = scrape(stack)
        stack.login(*acct)
        after = scrape(stack)
        assert requests_total(after, "token", 200) == requests_total(before, "token", 200) + 1
    finally:
        held.close()
        scraper.stop()


# --- garbage -------------------------------------------------------------------


def streams_header(pid, nslots, used, magic=LIMITS_MAGIC):
    return struct.pack("=IiqQ", magic, pid, nslots, used)


GARBAGE = [
    # name, directory, file name (PID: a live process not ours), content
    ("metrics-random-bytes", "metrics", "token.PID", lambda size: os.urandom(size)),
    ("metrics-zeros", "metrics", "chat.PID", lambda size: bytes(size)),
    ("metrics-short", "metrics", "chat_stream.PID", lambda size: b"jarv"),
    ("metrics-long", "metrics", "chat.PID", lambda size: os.urandom(size + 8)),
    ("metrics-odd-name", "metrics", "notes.txt", lambda size: b"hello\n"),
    ("metrics-bad-retired-name", "metrics", "token.x1", lambda size: os.urandom(size)),
    ("streams-random-bytes", "run", "streams.PID", lambda size: os.urandom(4096)),
    ("streams-wrong-magic", "run", "streams.PID",
     lambda size: streams_header(0, 4, 4, magic=0x12345678) + bytes(32)),
    ("streams-huge-nslots", "run", "streams.PID",
     lambda size: streams_header(0, 1 << 61, 1 << 61) + bytes(64)),
    ("streams-huge-used", "run", "streams.PID",
     lambda size: streams_header(0, 2, 1 << 40) + bytes(16)),
    ("streams-size-not-nslots", "run", "streams.PID",
     lambda size: streams_header(0, 1000, 2) + bytes(16)),
    ("streams-header-only", "run", "streams.PID", lambda size: streams_header(0, 1, 0)[:20]),
]


@harness.cases(GARBAGE)
def test_garbage_files_are_skipped_and_logged(stack, case):
    _, where, pattern, content = case
    acct = stack.user("garbage")
    access, _ = stack.login(*acct)
    # A live process that is no responder: its "files" are garbage; a new
    # one per case, so that each file is new to the responders.
    holder = subprocess.Popen(["sleep", "300"])
    pid = holder.pid
    size = os.path.getsize(metrics_files(stack)[0])
    data = content(size)
    if pattern.startswith("streams.") and len(data) >= LIMITS_HEADER:
        data = data[:4] + struct.pack("=i", pid) + data[8:]  # the pid in the name
    path = stack.state / where / pattern.replace("PID", str(pid))
    before = scrape(stack)
    path.write_bytes(data)
    try:
        responder = "chat" if where == "metrics" else "chat_stream"

        def look():
            """A scrape reads metrics/, a stream counts run/streams.*."""
            scrape(stack)
            r = stream_status(stack, access)
            assert r.status == 200 and r.named("done"), (r.status, list(r))
            return f"skipping {path}:" in log_text(stack, responder)

        wait_for(look, 20, f"{responder} logging that it skips {path}")
        for _ in range(3):
            look()
        assert log_text(stack, responder).count(f"skipping {path}:") == 1, "logged more than once"
        assert path.exists(), "a file of a live process was removed"
        # Nothing of it was counted.
        assert requests_total(scrape(stack), "token", 200) == requests_total(before, "token", 200)
    finally:
        path.unlink(missing_ok=True)
        holder.kill()
        holder.wait()


# --- dead processes ---------------------------------------------------------------

DEAD_FILES = [
    # name, directory, file name (PID: a process that has exited), content, what looks
    ("streams-file", "run", "streams.PID", lambda pid: streams_header(pid, 2, 1) + bytes(16),
     "stream"),
    ("chats-file", "run", "chats.PID", lambda pid: streams_header(pid, 2, 1) + bytes(16), "chat"),
    ("metrics-file-of-another-layout", "metrics", "token.PID",
     lambda pid: struct.pack("=IIiI", 0x6A617276, 1, pid, 0) + bytes(1200), "scrape"),
]


@harness.cases(DEAD_FILES)
def test_files_of_dead_processes_found_while_counting_are_removed(stack, case):
    _, where, pattern, content, look = case
    acct = stack.user("gone")
    access, _ = stack.login(*acct)
    pid = dead_pid()
    path = stack.state / where / pattern.replace("PID", str(pid))
    path.write_bytes(content(pid))
    # Left behind by a responder: its user's file (run/ is sticky).
    owner = (stack.state / "jarvas.db").stat()
    os.chown(path, owner.st_uid, owner.st_gid)

    def gone():
        if look == "stream":
            assert stream_status(stack, access).status == 200
        elif look == "chat":
            assert chat(stack, access, "count", tokens=1).status == 200
        else:
            scrape(stack)
        return not path.exists()

    try:
        wait_for(gone, 20, f"{path} removed")
    finally:
        path.unlink(missing_ok=True)



@harness.allows_restarts
@harness.stack_env(JARVAS_PING_INTERVAL="13")  # a stack of its own: it kills responders
def test_files_of_killed_processes_are_gone_and_the_totals_do_not_drop(stack):
    acct = stack.user("dead")
    access, _ = stack.login(*acct)
    for _ in range(3):
        stack.login(*acct)
    assert stream_status(stack, access).status == 200
    # (a stream is counted when the responder has closed it)
    before = wait_for(lambda: (lambda m: m if requests_total(m, "chat_stream", 200) else None)(
        scrape(stack)), 10, "the stream counted")
    old = {inst: responder_pid(stack, inst) for inst in ("token", "chat_stream")}
    old_files = [stack.state / "metrics" / f"{i}.{p}" for i, p in old.items()]
    old_files.append(stack.state / "run" / f"streams.{old['chat_stream']}")
    assert all(f.exists() for f in old_files), old_files
    # Both at once: their successors start together and fold at the same time.
    for pid in old.values():
        os.kill(pid, signal.SIGKILL)

    def back():
        try:
            pids = {inst: responder_pid(stack, inst) for inst in old}
        except (OSError, ValueError):
            return False
        return all(pids[i] != old[i] for i in old) and \
            all((stack.state / "metrics" / f"{i}.{p}").exists() for i, p in pids.items())

    wait_for(back, 30, "token and chat_stream restarted")
    # Gone at the successors' start, before any scrape.
    wait_for(lambda: not any(f.exists() for f in old_files), 10,
             f"files of the killed processes removed: {[f for f in old_files if f.exists()]}")
    after = scrape(stack)
    for endpoint, status in (("token", 200), ("chat_stream", 200)):
        assert requests_total(after, endpoint, status) == requests_total(before, endpoint, status), \
            (endpoint, requests_total(before, endpoint, status), requests_total(after, endpoint, status))
    for key, value in before.samples.items():
        if key[0].endswith("_total") or key[0].endswith("_count"):
            assert after.samples.get(key, 0) >= value, (key, value, after.samples.get(key))
    assert (stack.state / "metrics" / "retired").exists()


def test_a_scrape_folds_the_counters_of_a_dead_process_exactly_once(stack):
    acct = stack.user("fold")
    stack.login(*acct)
    # The token process's file as a dead process would leave it: its pid
    # and id changed, its counters as they are now.
    data = bytearray((stack.state / "metrics" /
                      f"token.{responder_pid(stack, 'token')}").read_bytes())
    (copied,) = struct.unpack_from("=Q", data, METRICS_TOKEN_200_AT)
    assert copied >= 1
    pid = dead_pid()
    struct.pack_into("=i", data, METRICS_PID_AT, pid)
    struct.pack_into("=Q", data, METRICS_ID_AT, random.getrandbits(63) | 1)
    before = requests_total(scrape(stack), "token", 200)
    dead = stack.state / "metrics" / f"token.{pid}"
    dead.write_bytes(bytes(data))
    first = scrape(stack)
    assert not dead.exists(), "the dead process's file is still there after a scrape"
    assert requests_total(first, "token", 200) == before + copied, \
        (before, copied, requests_total(first, "token", 200))
    for _ in range(3):  # in "retired" now, counted once
        assert requests_total(scrape(stack), "token", 200) == before + copied


# --- chats in progress per user ---------------------------------------------------


class HeldChat:
    """POST /api/chat/ on a connection of its own, answered or left later."""

    def __init__(self, stack, token, content, conversation_id="default", **kw):
        body = {"message": steered(content, **kw), "conversation_id": conversation_id}
        raw = harness._build_request(stack.port, "POST", "/api/chat/", None, body, None,
                                     token, None)
        self.sock = socket.create_connection(("127.0.0.1", stack.port), timeout=60)
        self.sock.sendall(raw)

    def leave(self):
        self.sock.close()


def fake_saw(stack, marker):
    return sum(marker in (r.get("last_content") or "") for r in stack.fake_requests())


CHATS_DETAIL = "Too many chats in progress: at most 2 per user. Wait for one to finish and retry."


@harness.timeout(180)
@harness.stack_env(JARVAS_MAX_CHATS_PER_USER="2", JARVAS_PROCS_CHAT="2",
                   JARVAS_UPSTREAM_IDLE_TIMEOUT="15")
def test_chats_in_progress_per_user_are_capped_across_processes(stack):
    name, pw = stack.user("chatcap")
    access, _ = stack.login(name, pw)
    other_access, _ = stack.login(*stack.user("chatcap_other"))
    # Two chats in progress: one the model takes ~10 s over, one it never
    # answers; each in its own conversation (one generation per conversation).
    slow = HeldChat(stack, access, "slow one", "slow", tokens=4, delay_ms=2000)
    wait_for(lambda: fake_saw(stack, "slow one"), 20, "the slow chat upstream")
    hung = HeldChat(stack, access, "hung one", "hung", hang=1)
    wait_for(lambda: fake_saw(stack, "hung one"), 20, "the hung chat upstream")
    try:
        # The third is refused before anything is stored or sent upstream.
        r = chat(stack, access, "third one", tokens=1)
        assert r.status == 429, r
        assert r.json() == {"detail": CHATS_DETAIL}, r.json()
        assert r.headers.get("retry-after", "").isdigit(), r.headers
        assert fake_saw(stack, "third one") == 0
        assert stack.sqlite("SELECT count(*) FROM messages WHERE content LIKE ?",
                            ("third one%",)) == [(0,)]
        # Another user is not affected.
        assert chat(stack, other_access, "other user", tokens=1).status == 200
        # The slow one's client leaves; its slot comes back once the chat is over.
        slow.leave()
        deadline = time.monotonic() + 60
        while True:
            r = chat(stack, access, "after the slow one", tokens=1)
            if r.status != 429 or time.monotonic() > deadline:
                break
            time.sleep(0.3)
        assert r.status == 200, r
        # A chat's slot is back before its answer is: the next one, sent as
        # soon as the answer is in, is admitted.
        for i in range(10):
            r = chat(stack, access, f"in a row {i}", tokens=1)
            assert r.status == 200, (i, r)
    finally:
        slow.leave()
        hung.leave()
