"""Streams that survive a dropped connection (issue 12): the "resumable"
opt-in, Last-Event-ID and ?resume= reconnects (also through the other of
two chat_stream processes, and after the end), POST /api/chat/stop/ from
any process, one generation per conversation (409), JARVAS_DETACH_GRACE,
and the status and usage of every stored reply.

The upstream is tests/fake_ollama, steered by the "[[fake ...]]" directive
in each message; its /_fake/requests records say when jarvas closed a
request (client_closed, closed_at). The only timed assertions are the
documented bounds: an upstream closed within 2 s of a stop (or of a client
leaving a stream without the opt-in), and not before most of the grace has
passed (nor long after it) for a detached one. Every wait is bounded."""

import json
import re
import socket
import threading
import time
import http.client

import harness
from test_stream import (STREAM, DEFAULT_TOKENS, account, conv, default_text, fake,
                         fake_requests_with, fake_request, history, marker, query,
                         raw_blocks, wait_for)

STOP = "/api/chat/stop/"
CHAT = "/api/chat/"
ID = re.compile(r"(\d+):(\d+)")
CONFLICT = "A reply is already being generated in this conversation; resume it or stop it."
NOTHING_RUNNING = "Nothing is being generated in this conversation."
INTERRUPTED = "This reply was interrupted before it finished."
PACE = 100  # ms per token of the replies the tests drop and resume
SLOW = 500  # where what a client saw is compared with what was stored: no chunk in flight


# --- a client that reads in the background --------------------------------------


class IdParser(harness.SSEParser):
    """harness.SSEParser that also keeps the last event id as a browser
    does: set by any id field, also in a block without data (the
    preamble)."""

    last_id = None
    preamble_id = None  # the id set by blocks without data before the first event
    _evented = False

    def _line(self, line, t):
        if line == "" and self.data is None and not self._evented and self.last_id:
            self.preamble_id = self.last_id  # a block without data ends
        if not line.startswith(":"):
            field, _, value = line.partition(":")
            if field == "id" and "\0" not in value:
                self.last_id = value.removeprefix(" ")
        ev = super()._line(line, t)
        if ev is not None and ev["event"] != "comment":
            self._evented = True
        return ev


class Reader:
    """One response read as a client reads it, in a background thread:
    status, headers, body (when it is not an event stream), events (as
    harness.sse gives them), last_id (what a browser would send as
    Last-Event-ID), ended (the server ended the response), truncated.
    close() leaves, as a tab that goes away; then nothing more is read."""

    def __init__(self, stack, path, token=None, method="GET", json=None, headers=None,
                 timeout=60):
        self.path = path
        self.status = None
        self.headers = None
        self.body = b""
        self.events = []
        self.last_id = None
        self.preamble_id = None
        self.ended = False
        self.truncated = False
        self.failure = None
        self.left_at = None  # time.time() when close() was called
        self._closing = False
        self._parser = IdParser()
        raw = harness._build_request(stack.port, method, path, None, json, headers, token, None)
        self.sock = socket.create_connection(("127.0.0.1", stack.port), timeout=timeout)
        self.t0 = time.monotonic()
        self.sent_at = time.time()
        self.sock.sendall(raw)
        self._head = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def _run(self):
        try:
            resp = http.client.HTTPResponse(self.sock, method="GET")
            resp.begin()
            self.headers = harness._headers_of(resp)
            self.status = resp.status
            self._head.set()
            if not self.headers.get("content-type", "").startswith("text/event-stream"):
                self.body = resp.read()
                self.ended = True
                return
            while True:
                try:
                    chunk = resp.read1(65536)
                except http.client.IncompleteRead:
                    self.truncated = True
                    chunk = b""
                if not chunk:
                    self.ended = not self._closing
                    return
                for ev in self._parser.feed(chunk, time.monotonic()):
                    self.events.append(ev)
                self.last_id = self._parser.last_id
                self.preamble_id = self._parser.preamble_id
        except (OSError, ValueError, http.client.HTTPException) as e:
            if not self._closing:
                self.failure = f"{type(e).__name__}: {e}"
        finally:
            self._head.set()

    # -- what arrived --

    def data_events(self):
        return [e for e in self.events if e["event"] != "comment"]

    def chunks(self):
        return [e for e in self.events if e["event"] == "message"]

    def text(self):
        return "".join(e["data"]["content"] for e in self.chunks())

    def final(self):
        """The done or error event that ended it, or None."""
        ends = [e for e in self.events if e["event"] in ("done", "error")]
        return ends[-1] if ends else None

    def describe(self, n=8):
        evs = self.data_events()
        shown = "; ".join(f"{e['event']} id={e['id']} {e['raw'][:100]!r}" for e in evs[:n])
        more = f" ... {len(evs)} events, last: {evs[-1]['event']} id={evs[-1]['id']} " \
               f"{evs[-1]['raw'][:200]!r}" if len(evs) > n else ""
        return (f"{self.path[:60]} status {self.status}, ended={self.ended}, "
                f"failure={self.failure}, body={self.body[:200]!r}, events: {shown}{more}")

    # -- waiting --

    def wait_head(self, timeout=20):
        assert self._head.wait(timeout), f"no response head within {timeout}s: {self.path[:60]}"
        return self

    def wait(self, pred, what, timeout=30):
        deadline = time.monotonic() + timeout
        while not pred(self):
            if self.ended or self.failure or time.monotonic() > deadline:
                if pred(self):
                    break
                raise AssertionError(f"{what}: not within {timeout}s (or the response ended): "
                                     + self.describe())
            time.sleep(0.02)
        return self

    def wait_chunks(self, n, timeout=30):
        return self.wait(lambda r: len(r.chunks()) >= n, f"{n} chunks", timeout)

    def wait_end(self, timeout=60):
        deadline = time.monotonic() + timeout
        self._thread.join(timeout)
        assert not self._thread.is_alive() and time.monotonic() <= deadline + 1, \
            f"the response did not end within {timeout}s: " + self.describe()
        assert self.failure is None, self.describe()
        return self

    def close(self):
        """Leave: shut the connection down (nginx sees the client go)."""
        self.left_at = time.time()
        self._closing = True
        try:
            self.sock.shutdown(socket.SHUT_RDWR)
        except OSError:
            pass
        self.sock.close()
        self._thread.join(10)
        return self


# --- requests ---------------------------------------------------------------------


def open_stream(stack, user, message, conversation, method="POST", resumable=True,
                in_query=False, headers=None):
    """A new stream (resumable unless told otherwise), read in the background."""
    if method == "GET":
        params = dict(message=message, conversation_id=conversation)
        if resumable is not None:
            params["resumable"] = "1" if resumable is True else resumable
        if in_query:
            params["access_token"] = user["access"]
        return Reader(stack, STREAM + query(**params), token=None if in_query else user["access"],
                      headers=headers)
    body = dict(message=message, conversation_id=conversation)
    if resumable is not None:
        body["resumable"] = resumable
    return Reader(stack, STREAM, token=user["access"], method="POST", json=body, headers=headers)


def reconnect(stack, user, last_id, method="GET", body=None, in_query=False):
    """A reconnect with Last-Event-ID, as a browser's (GET) or a fetch
    client repeating its POST."""
    headers = {"Last-Event-ID": last_id}
    if method == "POST":
        return Reader(stack, STREAM, token=user["access"], method="POST", json=body or {},
                      headers=headers)
    if in_query:
        return Reader(stack, STREAM + query(access_token=user["access"]), headers=headers)
    return Reader(stack, STREAM, token=user["access"], headers=headers)


def resume(stack, user, message_id, in_query=False):
    """GET /api/chat/stream/?resume=<message_id>: from the start."""
    if in_query:
        return Reader(stack, STREAM + query(resume=message_id, access_token=user["access"]))
    return Reader(stack, STREAM + query(resume=message_id), token=user["access"])


def stop(stack, user, **body):
    return stack.request("POST", STOP, json=body, token=user["access"])


def parse_id(ev):
    m = ID.fullmatch(ev["id"] or "")
    assert m, f"event {ev['event']} has no id <message_id>:<seq>: {ev['id']!r} {ev['raw'][:100]!r}"
    return int(m.group(1)), int(m.group(2))


def message_id_of(reader, timeout=20):
    """The reply's id, from the preamble's (or any later) event id."""
    reader.wait(lambda r: r.last_id and ID.fullmatch(r.last_id), "an event id", timeout)
    return int(ID.fullmatch(reader.last_id).group(1))


def assemble(parts, end="done"):
    """The events of one reply over several connections, in order, checked:
    every event has the id <message_id>:<seq> of one message, no id comes
    twice, the chunks' seqs are 1..n without a gap, each part goes on where
    the one before stopped, and the last ends with `end` at seq n+1.
    Returns dict(text, final (data of the end event), n, message_id, chunks)."""
    seen, chunks, mid, final = [], [], None, None
    for i, part in enumerate(parts):
        evs = part.data_events() if isinstance(part, Reader) else \
            [e for e in part if e["event"] != "comment"]
        for e in evs:
            m, seq = parse_id(e)
            mid = m if mid is None else mid
            assert m == mid, f"part {i}: ids name two messages ({mid} and {e['id']})"
            assert (m, seq) not in seen, f"part {i}: the id {e['id']} came twice"
            if seen:
                assert seq == seen[-1][1] + 1, \
                    f"part {i}: after {seen[-1][1]} came {seq} (a gap or a step back)"
            seen.append((m, seq))
            if e["event"] == "message":
                assert final is None, f"a chunk after the end: {e}"
                d = e["data"]
                assert isinstance(d, dict) and d.get("type") == "chunk", e["raw"][:200]
                chunks.append(e)
            else:
                assert e["event"] == end and i == len(parts) - 1, \
                    f"part {i}: unexpected {e['event']} event {e['raw'][:300]!r}"
                final = e["data"]
    assert final is not None, f"no {end} event at the end: " + \
        (parts[-1].describe() if isinstance(parts[-1], Reader) else str(parts[-1][-3:]))
    if chunks:
        assert parse_id(chunks[0])[1] == 1, f"the first chunk is {chunks[0]['id']}, not seq 1"
    assert seen[-1][1] == len(chunks) + 1, (seen[-1], len(chunks))
    return dict(text="".join(e["data"]["content"] for e in chunks), final=final, n=len(chunks),
                message_id=mid, chunks=chunks)


def assert_resumed_preamble(reader, last_id):
    """A resumed response starts with ": resumed" and sets the id it resumes
    from before any event."""
    assert reader.status == 200, reader.describe()
    assert reader.headers.get("content-type", "").startswith("text/event-stream"), reader.headers
    first = reader.events[0] if reader.events else None
    assert first and first["event"] == "comment" and first["raw"] == "resumed", \
        "no ': resumed' comment first: " + reader.describe()
    if last_id is not None:
        assert reader.preamble_id == last_id, \
            f"the preamble set the id {reader.preamble_id!r}, not {last_id!r}"


def assistant(msgs):
    a = [m for m in msgs if m["role"] == "assistant"]
    assert len(a) == 1, msgs
    return a[0]


def settled(stack, user, conversation, timeout=15):
    """History once its reply is no longer "streaming"."""
    return wait_for(lambda: (lambda h: h if h and all(m.get("status") != "streaming"
                                                     for m in h) else None)(
        history(stack, user, conversation)), timeout, "the reply being stored as ended")


def usage_for(rec):
    """What the fake reported for this request: prompt_eval_count (its
    characters / 4 + 1) and eval_count (the tokens it sent)."""
    body = rec["body"]
    chars = sum(len(m["content"].encode()) for m in body["messages"]
                if isinstance(m.get("content"), str))
    return {"prompt_tokens": chars // 4 + 1, "completion_tokens": rec["tokens_sent"]}


def finished_record(stack, mark, timeout=20):
    return wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("finished")
                             or r.get("closed_at")], timeout,
                    f"the upstream request {mark} ending")[0]


def closed_record(stack, mark, timeout=10):
    return wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r.get("client_closed")],
                    timeout, f"the fake seeing jarvas close the request {mark}")[0]


def log_lines(stack, user_id, path):
    """This user's log lines of requests to `path` (e.g. /api/chat/stop)."""
    out = []
    for p in (stack.state / "log").glob("chat_stream*.log"):
        for line in p.read_text(errors="replace").splitlines():
            if f'path="{path}"' in line and re.search(rf"\buser={user_id}\b", line):
                out.append(line)
    return out


def pids(lines):
    return {re.search(r"\bpid=(\d+)", ln).group(1) for ln in lines}


def message_count(stack, user):
    return stack.sqlite("SELECT count(*) FROM messages WHERE user_id = ?",
                        (user["user_id"],))[0][0]


# --- 1. drop and reconnect ---------------------------------------------------------

# name, how the stream is opened, how it is reconnected
DROPS = [("POST_then_GET", "POST", "GET"), ("GET_then_GET", "GET", "GET"),
         ("POST_then_POST", "POST", "POST"), ("GET_query_token", "GET", "GET_query")]


@harness.cases(DROPS)
def test_a_dropped_resumable_stream_reconnected_after_1s_gets_the_rest_exactly_once(stack, case):
    name, opened, again = case
    user = account(stack, "drop")
    c = conv()
    mark = marker()
    n = 30
    message = f"drop {name} {mark} " + fake(tokens=n, delay_ms=PACE)
    first = open_stream(stack, user, message, c, method=opened, in_query=opened == "GET")
    first.wait_chunks(4)
    first.close()
    last = first.last_id
    assert first.final() is None, "the stream ended before the client left: " + first.describe()
    time.sleep(1)
    second = reconnect(stack, user, last, method="POST" if again == "POST" else "GET",
                       in_query=again == "GET_query",
                       body=dict(message=message, conversation_id=c, resumable=True))
    second.wait_end(30)
    assert_resumed_preamble(second, last)
    got = assemble([first, second])
    assert got["text"] == default_text(n), (got["text"], default_text(n))
    assert got["final"]["status"] == "done" and "stopped" not in got["final"], got["final"]
    # one upstream request, which ran to its end
    rec = fake_request(stack, mark)
    rec = finished_record(stack, mark)
    assert rec["finished"] and not rec["client_closed"] and rec["tokens_sent"] == n, rec
    msgs = settled(stack, user, c)
    a = assistant(msgs)
    assert a["content"] == default_text(n) and a["status"] == "done", a
    assert a["id"] == got["message_id"], (a, got["message_id"])


@harness.timeout(180)
@harness.stack_env(JARVAS_PROCS_CHAT_STREAM="2")
def test_reconnects_through_either_of_two_processes_get_the_rest_exactly_once(stack):
    """nginx sends each new connection to the less busy chat_stream process
    (least_conn; a tie goes round robin): a reply dropped and reconnected
    again and again is served by both, which the log shows (pid=)."""
    user = account(stack, "twoprocs")
    c = conv()
    mark = marker()
    n = 80
    message = f"two processes {mark} " + fake(tokens=n, delay_ms=PACE)
    parts = [open_stream(stack, user, message, c).wait_chunks(3).close()]
    sent = [None]  # the Last-Event-ID each part was asked with
    reconnects = 0
    while reconnects < 8 and parts[-1].final() is None:
        time.sleep(0.3)
        sent.append(parts[-1].last_id)
        r = reconnect(stack, user, sent[-1])
        reconnects += 1
        r.wait_head()
        assert r.status == 200, r.describe()
        have = len(r.chunks())
        r.wait(lambda x: len(x.chunks()) >= have + 3 or x.final() is not None, "3 more chunks")
        if r.final() is None:
            r.close()
        parts.append(r)
    if parts[-1].final() is None:
        sent.append(parts[-1].last_id)
        last = reconnect(stack, user, sent[-1])
        reconnects += 1
        parts.append(last.wait_end(30))
    for p, last_id in zip(parts[1:], sent[1:]):
        assert_resumed_preamble(p, last_id)
    got = assemble(parts)
    assert got["text"] == default_text(n)
    rec = finished_record(stack, mark)
    assert rec["finished"] and not rec["client_closed"], rec
    assert len(fake_requests_with(stack, mark)) == 1
    lines = wait_for(lambda: (lambda ls: ls if len(ls) >= 1 + reconnects else None)(
        log_lines(stack, user["user_id"], "/api/chat/stream")), 15,
        f"the log holding the stream and its {reconnects} reconnects")
    assert len(pids(lines)) == 2, \
        f"all {len(lines)} requests were served by one process: {lines}"


def test_a_reconnect_after_the_end_replays_the_rest_of_the_stored_reply(stack):
    """The same ids, the same chunk boundaries, then the final event."""
    user = account(stack, "after")
    c = conv()
    n = 12
    whole = open_stream(stack, user, "whole " + fake(tokens=n, delay_ms=20), c).wait_end()
    ref = assemble([whole])
    mid = ref["message_id"]
    settled(stack, user, c)
    for k in (0, 1, 5, n - 1):
        r = reconnect(stack, user, f"{mid}:{k}").wait_end()
        assert_resumed_preamble(r, f"{mid}:{k}")
        evs = r.data_events()
        assert [(e["id"], e["data"]) for e in evs[:-1]] == \
            [(e["id"], e["data"]) for e in ref["chunks"][k:]], f"from {k}: " + r.describe()
        assert evs[-1]["event"] == "done" and evs[-1]["id"] == f"{mid}:{n + 1}", r.describe()
        assert evs[-1]["data"]["status"] == "done" and \
            evs[-1]["data"]["usage"] == ref["final"]["usage"], (evs[-1], ref["final"])
    # The last chunk seen, not the done: only the done is left.
    r = reconnect(stack, user, f"{mid}:{n}").wait_end()
    assert [e["event"] for e in r.data_events()] == ["done"], r.describe()
    # The preamble names where it resumes from.
    raw = stack.request("GET", STREAM, token=user["access"], headers={"Last-Event-ID": f"{mid}:5"})
    assert raw.status == 200, raw
    pre = raw_blocks(raw.body)[0]
    assert pre.get("id") == f"{mid}:5" and pre.get("retry", "").isdigit() and \
        "data" not in pre, (pre, raw.body[:300])
    assert raw.body.startswith(b": resumed\n"), raw.body[:100]


def test_a_stream_dropped_and_reconnected_after_its_end_gets_the_rest(stack):
    user = account(stack, "afterdrop")
    c = conv()
    mark = marker()
    n = 15
    first = open_stream(stack, user, f"finish without me {mark} " +
                        fake(tokens=n, delay_ms=50), c, method="GET").wait_chunks(3).close()
    rec = finished_record(stack, mark)
    assert rec["finished"] and not rec["client_closed"], rec  # it went on without the client
    msgs = settled(stack, user, c)
    assert assistant(msgs)["status"] == "done" and assistant(msgs)["content"] == default_text(n)
    second = reconnect(stack, user, first.last_id).wait_end()
    got = assemble([first, second])
    assert got["text"] == default_text(n), got["text"]


# where the reply is when ?resume= asks for it, credential in the query
RESUMES = [("running", False), ("running_query_token", True), ("finished", False),
           ("finished_query_token", True)]


@harness.cases(RESUMES)
def test_resume_by_message_id_replays_from_the_start(stack, case):
    """What a page that reloaded does: it knows the id from history."""
    name, in_query = case
    user = account(stack, "resume")
    c = conv()
    n = 20
    running = name.startswith("running")
    first = open_stream(stack, user, f"resume {name} " +
                        fake(tokens=n, delay_ms=PACE if running else 10), c)
    if running:
        first.wait_chunks(3)
        mid = message_id_of(first)
        first.close()
        msgs = history(stack, user, c)
        a = assistant(msgs)
        assert a["id"] == mid and a["status"] == "streaming", a  # what a reloaded page sees
    else:
        first.wait_end()
        mid = message_id_of(first)
        settled(stack, user, c)
    again = resume(stack, user, mid, in_query=in_query).wait_end(30)
    assert_resumed_preamble(again, f"{mid}:0")
    got = assemble([again])
    assert got["text"] == default_text(n) and got["message_id"] == mid, got["text"]
    if not running:
        ref = assemble([first])
        assert [(e["id"], e["data"]) for e in got["chunks"]] == \
            [(e["id"], e["data"]) for e in ref["chunks"]]


def test_several_readers_of_one_generation_each_get_all_of_it(stack):
    user = account(stack, "readers")
    c = conv()
    n = 25
    first = open_stream(stack, user, "many readers " + fake(tokens=n, delay_ms=PACE), c)
    mid = message_id_of(first.wait_chunks(2))
    others = [resume(stack, user, mid), reconnect(stack, user, f"{mid}:1")]
    for r in [first] + others:
        r.wait_end(30)
    assert assemble([first])["text"] == default_text(n)
    assert assemble([others[0]])["text"] == default_text(n)
    rest = others[1].data_events()
    assert parse_id(rest[0]) == (mid, 2), others[1].describe()
    assert "".join(e["data"]["content"] for e in rest[:-1]) == default_text(n)[len(DEFAULT_TOKENS[0]):]


# --- 2. what is not resumed: 204 ----------------------------------------------------


def test_resumes_that_have_nothing_to_give_get_204_and_nothing_happens(stack):
    owner, other = account(stack, "own"), account(stack, "other")
    c = conv()
    n = 5
    done = open_stream(stack, owner, "finished " + fake(tokens=n), c).wait_end()
    mid = assemble([done])["message_id"]
    settled(stack, owner, c)
    c2 = conv()
    running = open_stream(stack, owner, "still running " + fake(tokens=300, delay_ms=PACE), c2)
    run_mid = message_id_of(running.wait_chunks(1))
    c3 = conv()
    plain = open_stream(stack, owner, "not resumable " + fake(tokens=300, delay_ms=PACE), c3,
                        resumable=False)
    plain_mid = message_id_of(plain.wait_chunks(1))
    cases = [
        ("another_users_finished", other, {"Last-Event-ID": f"{mid}:0"}, None),
        ("another_users_finished_resume", other, None, mid),
        ("another_users_running", other, {"Last-Event-ID": f"{run_mid}:0"}, None),
        ("another_users_running_resume", other, None, run_mid),
        ("unknown", owner, {"Last-Event-ID": f"{mid + run_mid + 1000000}:0"}, None),
        ("unknown_resume", owner, None, mid + run_mid + 1000000),
        ("seq_already_the_done", owner, {"Last-Event-ID": f"{mid}:{n + 1}"}, None),
        ("seq_past_the_end", owner, {"Last-Event-ID": f"{mid}:{n + 40}"}, None),
        ("running_without_the_opt_in", owner, {"Last-Event-ID": f"{plain_mid}:1"}, None),
        ("running_without_the_opt_in_resume", owner, None, plain_mid),
    ] + [(f"malformed_{i}", owner, {"Last-Event-ID": v}, None) for i, v in enumerate([
        "abc", f"{mid}", f"{mid}:", f":{n}", f"{mid}:x", f"{mid}:1:2", f"{mid}.1", f"-{mid}:1",
        f"{mid}:-1", "99999999999999999999999999:1", f"{mid}:99999999999999999999999", "0x10:1",
        f"{mid}: 1", f"{mid}:1 2"])]
    before = (message_count(stack, owner), message_count(stack, other),
              len(stack.fake_requests()))
    wrong = []
    for name, who, headers, rid in cases:
        path = STREAM + (query(resume=rid) if rid is not None else "")
        for method in ("GET", "POST") if rid is None else ("GET",):
            r = stack.request(method, path, headers=headers, token=who["access"],
                              json={} if method == "POST" else None)
            if r.status != 204 or r.body != b"":
                wrong.append(f"{name} {method}: {r.status} {r.body[:200]!r}")
    running.close()
    plain.close()
    assert not wrong, "\n".join(wrong)
    assert (message_count(stack, owner), message_count(stack, other),
            len(stack.fake_requests())) == before, "a 204 stored or sent something"


# --- 3. stop -------------------------------------------------------------------------


def check_stopped_final(reader, mid, c):
    f = reader.final()
    assert f is not None and f["event"] == "done", "no done after the stop: " + reader.describe()
    d = f["data"]
    assert d.get("stopped") is True and d.get("status") == "stopped" and \
        d.get("message_id") == mid and d.get("conversation_id") == c, d
    return d


def stop_once(stack, round_no, silent):
    """One generation stopped through the API while the model is silent or
    streaming, read by its client and (streaming) a resumed reader. Returns
    whether the stop was served by another process than the generation."""
    user = account(stack, f"stop{round_no}")
    c = conv()
    mark = marker()
    n = 200
    keys = dict(first_ms=60000, tokens=n) if silent else dict(tokens=n, delay_ms=PACE)
    message = f"stop me {mark} " + fake(**keys)
    reader = open_stream(stack, user, message, c)
    mid = message_id_of(reader)
    fake_request(stack, mark, timeout=10)
    readers = [reader]
    if not silent:
        reader.wait_chunks(5)
        readers.append(resume(stack, user, mid))
        readers[-1].wait_chunks(5)
    msgs = history(stack, user, c)
    assert [m["role"] for m in msgs] == ["user", "assistant"] and \
        assistant(msgs)["status"] == "streaming" and assistant(msgs)["id"] == mid, msgs
    t_stop = time.time()
    r = stop(stack, user, message_id=mid)
    assert r.status == 200, r
    assert r.json() == {"message_id": mid, "conversation_id": c, "status": "stopped"}, r.json()
    rec = closed_record(stack, mark)
    late = rec["closed_at"] - t_stop * 1000
    assert late <= 2000, f"the upstream was closed {late:.0f} ms after the stop"
    assert rec["tokens_sent"] < n, rec
    for x in readers:
        x.wait_end(10)
        check_stopped_final(x, mid, c)
    msgs = history(stack, user, c)  # stored before the 200
    a = assistant(msgs)
    assert a["status"] == "stopped", a
    assert a["content"] == reader.text(), (a["content"][-60:], reader.text()[-60:])
    if silent:
        assert a["content"] == "", a
    else:
        assert len(reader.chunks()) >= 5 and default_text(n).startswith(a["content"]), a
        assert readers[1].text() == reader.text()
    # Stopping again is no error: it says what the reply is.
    again = stop(stack, user, message_id=mid)
    assert again.status == 200 and again.json()["status"] == "stopped", again
    stream_pids = pids(log_lines(stack, user["user_id"], "/api/chat/stream")[:1])
    stop_pids = pids(log_lines(stack, user["user_id"], "/api/chat/stop")[:1])
    return bool(stream_pids and stop_pids and stream_pids != stop_pids)


def wait_logged(stack, user, path, count=1):
    return wait_for(lambda: len(log_lines(stack, user["user_id"], path)) >= count, 10,
                    f"{count} log line(s) of {path}")


@harness.timeout(200)
@harness.stack_env(JARVAS_PROCS_CHAT_STREAM="2")
@harness.cases([("while_the_model_is_silent", True), ("while_streaming", False)])
def test_stop_from_either_process_stops_the_model_and_ends_every_reader(stack, case):
    name, silent = case
    crossed = 0
    for i in range(5):
        crossed += stop_once(stack, i, silent)
        if crossed and i >= 1:
            break
    assert crossed, "in 5 rounds no stop was served by another process than its generation's"


def test_stop_by_conversation_id(stack):
    user = account(stack, "stopconv")
    c = conv()
    mark = marker()
    reader = open_stream(stack, user, f"stop the conversation {mark} " +
                         fake(tokens=300, delay_ms=PACE), c, method="GET")
    mid = message_id_of(reader.wait_chunks(2))
    t_stop = time.time()
    r = stop(stack, user, conversation_id=c)
    assert r.status == 200 and r.json() == {"message_id": mid, "conversation_id": c,
                                            "status": "stopped"}, r
    rec = closed_record(stack, mark)
    assert rec["closed_at"] - t_stop * 1000 <= 2000, rec
    check_stopped_final(reader.wait_end(10), mid, c)
    assert assistant(history(stack, user, c))["status"] == "stopped"
    # nothing runs there any more
    r = stop(stack, user, conversation_id=c)
    assert r.status == 404 and r.json() == {"detail": NOTHING_RUNNING}, r


def test_stop_of_a_detached_generation(stack):
    """The client left a resumable stream; a stop ends what goes on without it."""
    user = account(stack, "stopdetached")
    c = conv()
    mark = marker()
    reader = open_stream(stack, user, f"detached {mark} " + fake(tokens=300, delay_ms=PACE), c)
    mid = message_id_of(reader.wait_chunks(2))
    reader.close()
    time.sleep(0.5)
    assert not [r for r in fake_requests_with(stack, mark) if r.get("closed_at")], \
        "the upstream was closed when the client of a resumable stream left"
    t_stop = time.time()
    r = stop(stack, user, message_id=mid)
    assert r.status == 200 and r.json()["status"] == "stopped", r
    rec = closed_record(stack, mark)
    assert rec["closed_at"] - t_stop * 1000 <= 2000, rec
    a = assistant(history(stack, user, c))
    assert a["status"] == "stopped" and a["content"].startswith(reader.text()) and \
        default_text(300).startswith(a["content"]), a
    # what a reconnect gets now: the stored rest, then done with stopped
    again = reconnect(stack, user, reader.last_id).wait_end()
    got = assemble([reader, again])
    assert got["text"] == a["content"] and got["final"].get("stopped") is True and \
        got["final"]["status"] == "stopped", got["final"]


def test_stop_refusals(stack):
    owner, other = account(stack, "stopown"), account(stack, "stopother")
    c = conv()
    reader = open_stream(stack, owner, "running " + fake(tokens=300, delay_ms=PACE), c)
    mid = message_id_of(reader.wait_chunks(1))
    try:
        r = stop(stack, other, message_id=mid)
        assert r.status == 404 and r.json() == {"detail": "Not found."}, r
        r = stop(stack, other, conversation_id=c)  # the same id is another user's conversation
        assert r.status == 404 and r.json() == {"detail": NOTHING_RUNNING}, r
        r = stop(stack, owner, message_id=mid + 1000000)
        assert r.status == 404 and r.json() == {"detail": "Not found."}, r
        r = stop(stack, owner, conversation_id=conv())
        assert r.status == 404 and r.json() == {"detail": NOTHING_RUNNING}, r
        for body in ({}, {"message_id": "x"}, {"message_id": None}, {"conversation_id": 5},
                     {"conversation_id": "bad id!"}, {"message_id": [mid]}):
            r = stop(stack, owner, **body)
            assert r.status == 400, (body, r)
        r = stack.request("POST", STOP, json={"message_id": mid})
        assert r.status == 401, r
        time.sleep(0.3)
        assert reader.final() is None, "a refused stop ended the stream: " + reader.describe()
    finally:
        reader.close()
    # a reply that ended already: 200 with the status it has
    c2 = conv()
    done = open_stream(stack, owner, "done already " + fake(tokens=2), c2).wait_end()
    dmid = assemble([done])["message_id"]
    settled(stack, owner, c2)
    r = stop(stack, owner, message_id=dmid)
    assert r.status == 200 and r.json() == {"message_id": dmid, "conversation_id": c2,
                                            "status": "done"}, r
    assert assistant(history(stack, owner, c2))["status"] == "done"


# --- 4. one generation per conversation ---------------------------------------------------


@harness.cases(["attached", "detached", "not_resumable"])
def test_a_second_generation_in_a_conversation_is_409_until_the_first_ends(stack, how):
    user = account(stack, f"conflict")
    c = conv()
    mark = marker()
    first = open_stream(stack, user, f"first {mark} " + fake(tokens=25, delay_ms=PACE), c,
                        resumable=how != "not_resumable")
    mid = message_id_of(first.wait_chunks(1))
    if how == "detached":
        first.close()
    want = {"detail": CONFLICT, "message_id": mid}
    refused = marker()
    tries = [
        ("POST stream", lambda: stack.request("POST", STREAM, token=user["access"], json=dict(
            message=f"second {refused} " + fake(tokens=1), conversation_id=c, resumable=True))),
        ("GET stream", lambda: stack.request("GET", STREAM + query(
            message=f"second {refused} " + fake(tokens=1), conversation_id=c),
            token=user["access"])),
        ("chat", lambda: stack.request("POST", CHAT, token=user["access"], json=dict(
            message=f"second {refused} " + fake(tokens=1), conversation_id=c))),
    ]
    for what, send in tries:
        r = send()
        assert r.status == 409, (what, r)
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert r.json() == want, (what, r.json())
    # another conversation is not held up
    c2 = conv()
    other = open_stream(stack, user, "elsewhere " + fake(tokens=2), c2).wait_end()
    assert assemble([other])["text"] == default_text(2)
    assert fake_requests_with(stack, refused) == [], "a refused message went upstream"
    msgs = history(stack, user, c)
    assert len(msgs) == 2 and refused not in json.dumps(msgs), msgs
    # once the first has ended, the conversation takes messages again
    if how == "detached":
        finished_record(stack, mark, timeout=20)
    else:
        first.wait_end(20)
    settled(stack, user, c)
    again = open_stream(stack, user, "third " + fake(tokens=2), c).wait_end()
    assert assemble([again])["text"] == default_text(2)
    r = stack.request("POST", CHAT, token=user["access"],
                      json=dict(message="fourth " + fake(tokens=2), conversation_id=c))
    assert r.status == 200 and r.json()["response"] == default_text(2), r
    assert [m["role"] for m in history(stack, user, c)] == ["user", "assistant"] * 3


# --- 5. the grace ------------------------------------------------------------------------


@harness.stack_env(JARVAS_DETACH_GRACE="2")
def test_a_detached_generation_nobody_resumes_ends_after_the_grace_as_interrupted(stack):
    user = account(stack, "grace")
    c = conv()
    mark = marker()
    n = 400
    reader = open_stream(stack, user, f"leave me {mark} " + fake(tokens=n, delay_ms=PACE), c)
    reader.wait_chunks(3).close()
    rec = closed_record(stack, mark, timeout=15)
    late = rec["closed_at"] - reader.left_at * 1000
    assert 1500 <= late <= 10000, f"upstream closed {late:.0f} ms after the client left (grace 2 s)"
    a = assistant(settled(stack, user, c))
    assert a["status"] == "interrupted", a
    seen = reader.text()
    # what was generated meanwhile is kept, not only what the client saw
    assert a["content"].startswith(seen) and default_text(n).startswith(a["content"]) and \
        len(a["content"]) > len(seen), (len(seen), len(a["content"]))
    # a reconnect now gets the stored rest and the interruption
    again = reconnect(stack, user, reader.last_id).wait_end()
    got = assemble([reader, again], end="error")
    assert got["text"] == a["content"] and got["final"]["message"] == INTERRUPTED, got["final"]
    # the conversation is free again
    nxt = open_stream(stack, user, "next " + fake(tokens=2), c).wait_end()
    assert assemble([nxt])["text"] == default_text(2)


@harness.stack_env(JARVAS_DETACH_GRACE="2")
def test_a_reconnect_within_the_grace_keeps_the_generation_to_its_end(stack):
    user = account(stack, "graceback")
    c = conv()
    mark = marker()
    n = 50  # 5 s: past the grace
    first = open_stream(stack, user, f"come back {mark} " + fake(tokens=n, delay_ms=PACE), c)
    first.wait_chunks(3).close()
    time.sleep(1)
    second = reconnect(stack, user, first.last_id).wait_end(30)
    assert assemble([first, second])["text"] == default_text(n)
    rec = finished_record(stack, mark)
    assert rec["finished"] and not rec["client_closed"], rec
    assert assistant(settled(stack, user, c))["status"] == "done"


@harness.stack_env(JARVAS_DETACH_GRACE="2")
def test_without_the_opt_in_a_client_leaving_closes_the_upstream_within_2s(stack):
    user = account(stack, "nooptin")
    c = conv()
    mark = marker()
    reader = open_stream(stack, user, f"plain {mark} " + fake(tokens=200, delay_ms=SLOW), c,
                         method="GET", resumable=None)
    reader.wait_chunks(3).close()
    rec = closed_record(stack, mark)
    late = rec["closed_at"] - reader.left_at * 1000
    assert late <= 2000, f"upstream closed {late:.0f} ms after the client left"
    a = assistant(settled(stack, user, c))
    assert a["status"] == "interrupted" and a["content"] == reader.text(), \
        (a, reader.text())


# --- 6. status and usage -------------------------------------------------------------------


@harness.cases(["POST", "GET"])
def test_done_and_history_carry_the_upstreams_usage(stack, method):
    user = account(stack, "usage")
    c = conv()
    mark = marker()
    n = 7
    r = open_stream(stack, user, f"count {mark} " + fake(tokens=n), c, method=method,
                    resumable=None).wait_end()
    got = assemble([r])
    rec = finished_record(stack, mark)
    want = usage_for(rec)
    assert want["completion_tokens"] == n, rec
    final = got["final"]
    assert final["usage"] == want, (final, want)
    assert final["status"] == "done" and "stopped" not in final, final
    # Ollama's own counters are not passed on: usage is the same in either protocol
    assert "eval_count" not in final and "prompt_eval_count" not in final, final
    assert final["model"] == "llama3.2" and final["finish_reason"] == "stop", final
    msgs = settled(stack, user, c)
    assert [(m["role"], m["status"]) for m in msgs] == [("user", "done"), ("assistant", "done")]
    assert msgs[1]["usage"] == want, msgs[1]
    assert "usage" not in msgs[0] or msgs[0]["usage"] is None, msgs[0]


def test_the_chat_answer_carries_usage_and_status(stack):
    user = account(stack, "chatusage")
    c = conv()
    mark = marker()
    r = stack.request("POST", CHAT, token=user["access"],
                      json=dict(message=f"count {mark} " + fake(tokens=4), conversation_id=c))
    assert r.status == 200, r
    body = r.json()
    want = usage_for(fake_request(stack, mark))
    assert body["usage"] == want and body["status"] == "done", (body, want)
    msgs = history(stack, user, c)
    assert [(m["role"], m["status"]) for m in msgs] == [("user", "done"), ("assistant", "done")]
    assert msgs[1]["usage"] == want and msgs[1]["id"] == body["message_id"], msgs


def test_failed_and_interrupted_replies_say_so_in_history_and_on_replay(stack):
    user = account(stack, "statuses")
    c1, c2 = conv(), conv()
    failed = open_stream(stack, user, "fail " + fake(tokens=6, error_after=3), c1).wait_end()
    assemble([failed], end="error")
    a = assistant(settled(stack, user, c1))
    assert a["status"] == "failed" and a["content"] == default_text(3), a
    replay = resume(stack, user, a["id"]).wait_end()
    got = assemble([replay], end="error")
    assert got["text"] == default_text(3) and got["final"]["message"] == \
        failed.final()["data"]["message"], (got["final"], failed.final())
    plain = open_stream(stack, user, "leave " + fake(tokens=100, delay_ms=SLOW), c2,
                        resumable=False).wait_chunks(2).close()
    a = assistant(settled(stack, user, c2))
    assert a["status"] == "interrupted" and a["content"] == plain.text(), a
    replay = resume(stack, user, a["id"]).wait_end()
    got = assemble([replay], end="error")
    assert got["text"] == plain.text() and got["final"]["message"] == INTERRUPTED, got["final"]


# --- 7. the opt-in itself --------------------------------------------------------------------

BOOLEAN = {"resumable": ["Must be a valid boolean."]}
# name, method, value, accepted
OPT_INS = [
    ("POST_true", "POST", True, True), ("POST_false", "POST", False, True),
    ("POST_1", "POST", 1, True), ("POST_0", "POST", 0, True),
    ("POST_string_true", "POST", "true", True), ("POST_string_0", "POST", "0", True),
    ("POST_maybe", "POST", "maybe", False), ("POST_2", "POST", 2, False),
    ("POST_null", "POST", None, False), ("POST_list", "POST", [True], False),
    ("GET_1", "GET", "1", True), ("GET_true", "GET", "true", True), ("GET_0", "GET", "0", True),
    ("GET_false", "GET", "false", True), ("GET_maybe", "GET", "maybe", False),
    ("GET_empty", "GET", "", False),
]


@harness.cases(OPT_INS)
def test_the_resumable_field_is_a_boolean(stack, case):
    name, method, value, ok = case
    user = account(stack, "optin")
    c = conv()
    mark = marker()
    message = f"opt in {mark} " + fake(tokens=1)
    if method == "POST":
        r = stack.request("POST", STREAM, token=user["access"],
                          json=dict(message=message, conversation_id=c, resumable=value))
    else:
        r = stack.request("GET", STREAM + query(message=message, conversation_id=c,
                                                resumable=value), token=user["access"])
    if ok:
        assert r.status == 200 and b"event: done" in r.body, r
    else:
        want = [BOOLEAN]
        if value is None:  # as for every field given as null (README, Conventions)
            want.append({"resumable": ["This field may not be null."]})
        assert r.status == 400 and r.json() in want, r
        assert fake_requests_with(stack, mark) == [] and history(stack, user, c) == []


# --- 8. a reader too far behind ------------------------------------------------------------


@harness.timeout(180)
def test_a_reader_further_behind_than_the_journal_gets_a_gap_event_and_goes_on(stack):
    """The journal keeps at most 1 MiB of a generation's events: a reader
    that asks for older ones is told which it lost, then gets the rest."""
    user = account(stack, "gap")
    c = conv()
    mark = marker()
    burst = 60000  # ~60 bytes an event: several MiB of journal, then the model waits
    flood = fake(tokens=burst + 10, hang=1, hang_after=burst)
    reader = open_stream(stack, user, f"flood {mark} " + flood, c)
    reader.wait_chunks(1).close()
    mid = message_id_of(reader)
    first_seq = parse_id(reader.chunks()[-1])[1]
    wait_for(lambda: [r for r in fake_requests_with(stack, mark) if r["tokens_sent"] >= burst],
             60, "the fake sending its burst")
    time.sleep(1.5)  # read by the relay and journaled
    late = reconnect(stack, user, f"{mid}:{first_seq}")
    try:
        late.wait(lambda r: r.data_events(), "a first event", 30)
        gap = late.data_events()[0]
        assert gap["event"] == "gap", late.describe()
        d = gap["data"]
        assert d.get("type") == "gap" and d.get("from") == first_seq + 1 and \
            d.get("to") >= d["from"], d
        late.wait(lambda r: len(r.data_events()) > 1, "events after the gap", 30)
        # wait until it caught up with the silent model: nothing new for a second
        count = -1
        for _ in range(60):
            if len(late.events) == count:
                break
            count = len(late.events)
            time.sleep(1)
    finally:
        r = stop(stack, user, message_id=mid)
    assert r.status == 200, r
    late.wait_end(20)
    evs = late.data_events()
    after = evs[1:-1]
    assert after and all(e["event"] == "message" for e in after), late.describe()
    assert parse_id(after[0])[1] == d["to"] + 1, (after[0]["id"], d)
    seqs = [parse_id(e)[1] for e in after]
    assert seqs == list(range(seqs[0], seqs[0] + len(seqs))), "a gap after the gap"
    check_stopped_final(late, mid, c)
    replayed = sum(len(e["raw"]) for e in after)
    assert replayed <= 1024 * 1024, f"{replayed} bytes replayed from a 1 MiB journal"
    stored = assistant(history(stack, user, c))["content"]
    tail = "".join(e["data"]["content"] for e in after)
    assert stored.endswith(tail) and len(stored) > len(tail) + len(reader.text()), \
        (len(stored), len(tail))
