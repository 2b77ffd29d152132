"""The `chat` responder through real nginx + spawn-fcgi (API.md "Chat",
"History and prompt cache", "Limits and bad input", "Processes"):
POST /api/chat/, /api/chat/history/, /api/health/, /api/metrics.

Cases are tables; each row is reported as a test of its own. The upstream is
tests/fake_ollama, steered per request by a "[[fake k=v ...]]" directive at
the end of the user message. Whatever fails, a test also checks that nothing
was stored that should not be: the database is read (never written) to
compare a user's messages before and after.
"""

import datetime
import json as jsonlib
import os
import re
import signal
import subprocess
import threading
import time
import urllib.parse

import harness
from harness import b64url, jwt_parts, jwt_sign

NOT_FOUND = {"detail": "Not found."}
NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}
TOKEN_NOT_VALID = {"detail": "Given token not valid for any token type",
                   "code": "token_not_valid"}
WWW_AUTHENTICATE = 'Bearer realm="api"'
MODEL = "llama3.2"
# What the fake answers without a text= directive (8 tokens; see fake_ollama.c).
DEFAULT_REPLY = 'Olá! Tudo bem? "quoted" new\nline emoji 🎉'
ISO_UTC = re.compile(r"^\d{4}-\d{2}-\d{2}T\d{2}:\d{2}:\d{2}(\.\d+)?Z$")
MESSAGE_MAX = 16 * 1024
BODY_MAX = 1 << 20
CLOSED_PORT_URL = "http://127.0.0.1:1"  # nothing listens on port 1 here


# --- helpers ------------------------------------------------------------------


def directive(**kw):
    """A fake_ollama directive; text values are %-encoded as it expects."""
    parts = []
    for k, v in kw.items():
        if k in ("text", "message"):
            v = urllib.parse.quote(v, safe="")
        parts.append(f"{k}={v}")
    return "[[fake " + " ".join(parts) + "]]" if parts else ""


def steered(content, **kw):
    """A user message that ends with a fake_ollama directive."""
    d = directive(**kw)
    return f"{content} {d}" if d else content


def account(stack, prefix="chat"):
    """A fresh user with an access token: dict(name, password, access,
    refresh, id, at)."""
    name, password = stack.user(prefix)
    access, refresh = stack.login(name, password)
    (uid,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (name,))[0]
    return dict(name=name, password=password, access=access, refresh=refresh, id=uid,
                at=time.monotonic())


def fresh_token(stack, acct):
    """Access tokens live 5 minutes; log in again when this one is old."""
    if time.monotonic() - acct["at"] > 120:
        acct["access"], acct["refresh"] = stack.login(acct["name"], acct["password"])
        acct["at"] = time.monotonic()
    return acct["access"]


def chat(stack, token, content, conversation_id=None, timeout=30, **kw):
    """POST /api/chat/ (JSON); kw become a fake_ollama directive."""
    body = {"message": steered(content, **kw)}
    if conversation_id is not None:
        body["conversation_id"] = conversation_id
    return stack.request("POST", "/api/chat/", json=body, token=token, timeout=timeout)


def exchange(stack, acct, content, conversation_id=None, reply=None, **kw):
    """One successful exchange; its JSON body. reply= makes the fake say it."""
    if reply is not None:
        kw["text"] = reply
    r = chat(stack, fresh_token(stack, acct), content, conversation_id, **kw)
    assert r.status == 200, r
    return r.json()


def history(stack, token, conversation_id=None, method="GET", query=None):
    """GET (or DELETE) /api/chat/history/ with conversation_id, or with this
    exact query string."""
    if query is None:
        query = "" if conversation_id is None else "conversation_id=" + \
            urllib.parse.quote(conversation_id, safe="")
    path = "/api/chat/history/" + (f"?{query}" if query else "")
    return stack.request(method, path, token=token)


def messages(stack, acct, conversation_id=None):
    r = history(stack, fresh_token(stack, acct), conversation_id)
    assert r.status == 200, r
    body = r.json()
    assert body["conversation_id"] == (conversation_id or "default"), body
    return body["messages"]


def stored(stack, user_id):
    """Every stored message of a user, straight from the database."""
    return stack.sqlite(
        "SELECT id, conversation_id, role, content, complete, created_at FROM messages "
        "WHERE user_id = ? ORDER BY id", (user_id,))


def snapshot(stack, acct, conversations=("default",)):
    """A user's history as the database holds it and as the API answers it
    (raw bytes), to be compared byte for byte."""
    token = fresh_token(stack, acct)
    api = {}
    for c in conversations:
        r = history(stack, token, c)
        assert r.status == 200, r
        api[c] = r.body
    return stored(stack, acct["id"]), api


def fake_seq(stack):
    """The sequence number of the last request the fake upstream received."""
    reqs = stack.fake_requests()
    return reqs[-1]["seq"] if reqs else 0


def assert_json_reason(r, status):
    """A 4xx JSON answer that carries a reason."""
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert isinstance(body, dict) and body, r
    for v in body.values():
        assert v and (isinstance(v, str) or
                      (isinstance(v, list) and all(isinstance(x, str) and x for x in v))), r
    return body


wait_for = harness.wait_for


def assert_no_restarts(stack):
    died = {i: n for i, n in stack.restart_counts().items() if n}
    assert not died, f"responders restarted: {died}\n{stack.logs(15)}"


# --- metrics ------------------------------------------------------------------

SAMPLE = re.compile(r"^([a-zA-Z_:][a-zA-Z0-9_:]*)(?:\{(.*)\})?\s+(\S+)(?:\s+-?\d+)?$")
LABEL = re.compile(r'([a-zA-Z_][a-zA-Z0-9_]*)="((?:[^"\\]|\\.)*)"')


class Metrics:
    """One scrape: text, and samples by (name, sorted labels)."""

    def __init__(self, text):
        self.text = text
        self.samples = {}
        for line in text.splitlines():
            if not line.strip() or line.startswith("#"):
                continue
            m = SAMPLE.match(line)
            assert m, f"not a Prometheus sample line: {line!r}"
            labels = tuple(sorted(LABEL.findall(m.group(2) or "")))
            self.samples[(m.group(1), labels)] = float(m.group(3))

    def get(self, name, **labels):
        """The sample's value; 0 when absent (counters start at zero)."""
        return self.samples.get((name, tuple(sorted(labels.items()))), 0.0)

    def has(self, name):
        return any(n == name for n, _ in self.samples)


def scrape(stack):
    r = stack.request("GET", "/api/metrics")
    assert r.status == 200, r
    return Metrics(r.text)


def requests_total(m, endpoint, status):
    return m.get("jarvas_requests_total", endpoint=endpoint, status=str(status))


# --- 1. the exchange ------------------------------------------------------------

# name, directive keywords, the reply expected
REPLIES = [
    ("default_tokens", {}, DEFAULT_REPLY),
    ("ascii_words", {"text": "Hello there, how are you today?"},
     "Hello there, how are you today?"),
    ("utf8_accents_and_emoji", {"text": "Olá, ação! 日本語 🎉👍🏽"}, "Olá, ação! 日本語 🎉👍🏽"),
    ("newlines_and_crlf", {"text": "line one\nline two\r\n\nline four\n"},
     "line one\nline two\r\n\nline four\n"),
    ("quotes_and_backslashes", {"text": 'say "hi" \\ back\\slash \\"x\\" \'single\''},
     'say "hi" \\ back\\slash \\"x\\" \'single\''),
    ("tabs_and_control_characters", {"text": "a\tb \x01c \x1fd \x7fe"},
     "a\tb \x01c \x1fd \x7fe"),
    ("leading_and_trailing_whitespace", {"text": "  padded  "}, "  padded  "),
    ("html_the_upstream_escapes", {"text": "<b>&amp;</b> <script>x</script>"},
     "<b>&amp;</b> <script>x</script>"),
    ("json_looking_text", {"text": '{"response": "fake", "message_id": 1}'},
     '{"response": "fake", "message_id": 1}'),
    ("sse_looking_text", {"text": "data: x\n\nevent: done\n"}, "data: x\n\nevent: done\n"),
    ("plus_and_percent", {"text": "1+1=2 100% %41"}, "1+1=2 100% %41"),
    ("one_byte_chunks", {"text": "Olá 🎉 ok", "chunk": 1}, "Olá 🎉 ok"),
    ("long_reply_200_KiB", {"long_line": 200 * 1024},
     "".join(chr(ord("a") + i % 26) for i in range(200 * 1024))),
]


@harness.cases(REPLIES)
def test_chat_returns_the_upstream_reply_exactly_and_stores_it(stack, case):
    _, kw, want = case
    acct = account(stack, "reply")
    message = steered("Tell me something", **kw)
    r = chat(stack, acct["access"], message)
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"response", "conversation_id", "model", "message_id", "status",
                         "usage", "finish_reason"}, str(body)[:300]
    assert body["status"] == "done" and body["finish_reason"] == "stop", str(body)[:300]
    # the fake's counters, as OpenAI names them
    assert set(body["usage"]) == {"prompt_tokens", "completion_tokens"}, body["usage"]
    assert all(isinstance(v, int) and v >= 0 for v in body["usage"].values()), body["usage"]
    assert body["response"] == want, (body["response"][:300], want[:300])
    assert body["conversation_id"] == "default", body
    assert body["model"] == MODEL, body
    assert isinstance(body["message_id"], int) and body["message_id"] > 0, body
    msgs = messages(stack, acct)
    assert [(m["role"], m["content"]) for m in msgs] == \
        [("user", message), ("assistant", want)], msgs
    assert msgs[1]["id"] == body["message_id"], (msgs, body)


def test_conversation_id_defaults_to_default_and_is_echoed(stack):
    acct = account(stack, "conv")
    a = exchange(stack, acct, "first", reply="one")
    b = exchange(stack, acct, "second", conversation_id="work_2-B", reply="two")
    assert a["conversation_id"] == "default", a
    assert b["conversation_id"] == "work_2-B", b
    assert [m["content"] for m in messages(stack, acct)] == [
        steered("first", text="one"), "one"]
    assert [m["content"] for m in messages(stack, acct, "work_2-B")] == [
        steered("second", text="two"), "two"]
    # Giving "default" explicitly is the same conversation as giving none.
    exchange(stack, acct, "third", conversation_id="default", reply="three")
    assert len(messages(stack, acct)) == 4


def test_history_holds_each_exchange_oldest_first_with_ids_and_utc_times(stack):
    acct = account(stack, "order")
    t0 = time.time()
    sent = []
    for i in range(3):
        body = exchange(stack, acct, f"question {i}", reply=f"answer {i}")
        sent.append((steered(f"question {i}", text=f"answer {i}"), f"answer {i}",
                     body["message_id"]))
    r = history(stack, acct["access"])
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"conversation_id", "messages"}, body
    assert body["conversation_id"] == "default", body
    msgs = body["messages"]
    assert len(msgs) == 6, msgs
    for m in msgs:
        assert set(m) - {"usage", "model", "finish_reason"} == {"id", "role", "content",
                                                                "created_at", "status"}, m
        assert m["status"] == "done", m
        for reply_only in ("usage", "model", "finish_reason"):
            assert (reply_only in m) == (m["role"] == "assistant"), m
        if m["role"] == "assistant":
            assert m["model"] == "llama3.2" and m["finish_reason"] == "stop", m
        assert isinstance(m["id"], int), m
        assert ISO_UTC.match(m["created_at"]), m
        when = datetime.datetime.fromisoformat(m["created_at"].replace("Z", "+00:00"))
        assert when.utcoffset() == datetime.timedelta(0), m
        assert t0 - 120 <= when.timestamp() <= time.time() + 120, (m, t0)
    ids = [m["id"] for m in msgs]
    assert ids == sorted(ids) and len(set(ids)) == 6, ids
    times = [m["created_at"] for m in msgs]
    assert times == sorted(times), times
    for i, (question, answer, message_id) in enumerate(sent):
        user, assistant = msgs[2 * i], msgs[2 * i + 1]
        assert (user["role"], user["content"]) == ("user", question), user
        assert (assistant["role"], assistant["content"]) == ("assistant", answer), assistant
        assert assistant["id"] == message_id, (assistant, message_id)
        assert user["id"] < assistant["id"], (user, assistant)


def test_chat_accepts_a_form_encoded_body(stack):
    acct = account(stack, "form")
    message = steered("form é + & = ok", text="form reply")
    r = stack.request("POST", "/api/chat/", form={"message": message,
                                                    "conversation_id": "formconv"},
                      token=acct["access"])
    assert r.status == 200, r
    body = r.json()
    assert body["response"] == "form reply", body
    assert body["conversation_id"] == "formconv", body
    assert [m["content"] for m in messages(stack, acct, "formconv")] == [message, "form reply"]


def test_chat_accepts_json_with_a_charset_parameter(stack):
    acct = account(stack, "charset")
    r = stack.request("POST", "/api/chat/",
                      body=('{"message": "%s"}' % steered("charset", text="ok")).encode(),
                      headers={"Content-Type": "application/json; charset=utf-8"},
                      token=acct["access"])
    assert r.status == 200 and r.json()["response"] == "ok", r


def test_message_is_stored_trimmed_as_drf_trims_it(stack):
    acct = account(stack, "trim")
    message = steered("  \n\t spaced out", text="fine") + " \n "
    r = chat(stack, acct["access"], message)
    assert r.status == 200, r
    assert [m["content"] for m in messages(stack, acct)] == [message.strip(), "fine"]
    assert stack.fake_requests()[-1]["last_content"] == message.strip()


@harness.stack_env(JARVAS_HISTORY_LIMIT=4)
def test_upstream_gets_system_prompt_then_last_n_stored_messages_then_the_new_one(stack):
    acct = account(stack, "limit")
    other = account(stack, "limit_other")
    exchange(stack, other, "other user's words", reply="other reply")
    exchange(stack, acct, "elsewhere", conversation_id="elsewhere", reply="elsewhere reply")
    for i in range(3):
        exchange(stack, acct, f"q{i}", reply=f"a{i}")
    r = chat(stack, acct["access"], "q3", text="a3")
    assert r.status == 200, r
    sent = stack.fake_requests()[-1]["body"]
    assert sent["model"] == MODEL and sent["stream"] is True, sent
    roles = [m["role"] for m in sent["messages"]]
    contents = [m["content"] for m in sent["messages"]]
    assert roles == ["system", "user", "assistant", "user", "assistant", "user"], sent
    assert contents[0], sent
    assert contents[1:] == [steered("q1", text="a1"), "a1", steered("q2", text="a2"), "a2",
                            steered("q3", text="a3")], contents


# --- 2. upstream failures ---------------------------------------------------------

# name, directive keywords, metrics kind, what the detail must contain
UPSTREAM_FAILURES = [
    ("http_500", {"status": 500, "message": "boom from upstream"}, "http_status",
     "boom from upstream"),
    ("http_503", {"status": 503, "message": "overloaded"}, "http_status", "overloaded"),
    ("error_line_mid_stream", {"error_after": 2, "message": "went wrong"}, "error_line",
     "went wrong"),
    ("error_line_first", {"error_after": 0, "message": "failed at once"}, "error_line",
     "failed at once"),
    ("cut_mid_stream", {"cut_after": 2}, "cut", ""),
    ("cut_before_any_token", {"cut_after": 0}, "cut", ""),
    ("model_missing", {"model_missing": 1}, "http_status",
     harness.model_missing_reason(MODEL)),
    ("malformed_line", {"malformed_after": 1}, "malformed", ""),
    ("binary_garbage", {"garbage": 1}, "malformed", ""),
    ("no_done_line", {"nodone": 1}, "cut", ""),
]


def failure_fixture(stack):
    """A user with some history, shared by the failure rows of a stack."""
    f = getattr(stack, "_test_chat_failure_user", None)
    if f is None:
        f = stack._test_chat_failure_user = account(stack, "fail")
        exchange(stack, f, "before the failures", reply="kept")
    return f


@harness.cases(UPSTREAM_FAILURES)
def test_upstream_failure_is_502_with_the_reason_and_stores_nothing(stack, case):
    _, kw, _, reason = case
    acct = failure_fixture(stack)
    before = snapshot(stack, acct)
    r = chat(stack, fresh_token(stack, acct), "this will fail", **kw)
    body = assert_json_reason(r, 502)
    assert isinstance(body.get("detail"), str) and body["detail"], body
    assert reason in body["detail"], body
    assert snapshot(stack, acct) == before, "a failed exchange changed the history"


@harness.cases(UPSTREAM_FAILURES)
def test_metrics_count_upstream_errors_by_kind(stack, case):
    _, kw, kind, _ = case
    acct = failure_fixture(stack)
    before = scrape(stack)
    r = chat(stack, fresh_token(stack, acct), "counted failure", **kw)
    assert r.status == 502, r
    after = scrape(stack)
    key = "jarvas_upstream_errors_total"
    assert after.get(key, kind=kind) - before.get(key, kind=kind) == 1, \
        (kind, [(k, v) for k, v in after.samples.items() if k[0] == key])
    assert requests_total(after, "chat", 502) - requests_total(before, "chat", 502) == 1


@harness.stack_env(JARVAS_UPSTREAM_URL=CLOSED_PORT_URL)
def test_refused_upstream_is_502_and_stores_nothing(stack):
    acct = account(stack, "refused")
    before = snapshot(stack, acct)
    r = chat(stack, acct["access"], "anyone there?")
    body = assert_json_reason(r, 502)
    assert "detail" in body, body
    assert snapshot(stack, acct) == before


# name, directive keywords
SILENT_UPSTREAMS = [
    ("silent_before_any_token", {"hang": 1}),
    ("silent_after_two_tokens", {"hang": 1, "hang_after": 2}),
    ("no_headers", {"headers_ms": 60000}),
]


@harness.cases(SILENT_UPSTREAMS)
@harness.stack_env(JARVAS_UPSTREAM_IDLE_TIMEOUT=2)
def test_silent_upstream_is_504_after_the_idle_timeout_and_stores_nothing(stack, case):
    _, kw = case
    acct = failure_fixture(stack)
    before = snapshot(stack, acct)
    r = chat(stack, fresh_token(stack, acct), "are you there?", timeout=60, **kw)
    body = assert_json_reason(r, 504)
    assert "detail" in body, body
    assert snapshot(stack, acct) == before


# --- 3. history and isolation ------------------------------------------------------


def two_users(stack):
    """Users a and b with the same conversation names and their own words."""
    a, b = account(stack, "iso_a"), account(stack, "iso_b")
    for who, acct in (("a", a), ("b", b)):
        for conv in ("default", "work"):
            for i in range(2):
                exchange(stack, acct, f"{who}-{conv}-q{i}", None if conv == "default" else conv,
                         reply=f"{who}-{conv}-r{i}")
    return a, b


def contents(msgs):
    return [m["content"] for m in msgs]


def test_history_lists_only_this_users_messages_of_that_conversation(stack):
    a, b = two_users(stack)
    for who, acct in (("a", a), ("b", b)):
        for conv in ("default", "work"):
            want = []
            for i in range(2):
                want += [steered(f"{who}-{conv}-q{i}", text=f"{who}-{conv}-r{i}"),
                         f"{who}-{conv}-r{i}"]
            assert contents(messages(stack, acct, conv)) == want, (who, conv)
    assert messages(stack, a, "never-used") == []


def test_delete_history_removes_that_conversation_of_this_user_only(stack):
    a, b = two_users(stack)
    a_default = snapshot(stack, a, ("default",))[1]
    b_before = snapshot(stack, b, ("default", "work"))
    r = history(stack, a["access"], "work", method="DELETE")
    assert r.status == 204, r
    assert r.body == b"", r
    assert messages(stack, a, "work") == []
    assert not [row for row in stored(stack, a["id"]) if row[1] == "work"]
    assert snapshot(stack, a, ("default",))[1] == a_default
    assert snapshot(stack, b, ("default", "work")) == b_before
    # Deleting again, or a conversation that never existed, is still 204.
    assert history(stack, a["access"], "work", method="DELETE").status == 204
    assert history(stack, a["access"], "never-used", method="DELETE").status == 204
    assert snapshot(stack, b, ("default", "work")) == b_before


def test_new_exchanges_after_a_delete_start_a_fresh_conversation(stack):
    acct = account(stack, "redo")
    exchange(stack, acct, "old", reply="old reply")
    assert history(stack, acct["access"], "default", method="DELETE").status == 204
    exchange(stack, acct, "new", reply="new reply")
    assert contents(messages(stack, acct)) == [steered("new", text="new reply"), "new reply"]
    sent = stack.fake_requests()[-1]["body"]["messages"]
    assert [m["role"] for m in sent] == ["system", "user"], sent


def victim_fixture(stack):
    """User a with a private conversation and b who tries to reach it."""
    f = getattr(stack, "_test_chat_victim", None)
    if f is None:
        a, b = account(stack, "victim"), account(stack, "intruder")
        private = "a-private-" + os.urandom(4).hex()
        exchange(stack, a, "SECRET-A-default", reply="SECRET-A-default-reply")
        exchange(stack, a, "SECRET-A-private", conversation_id=private,
                 reply="SECRET-A-private-reply")
        exchange(stack, a, "SECRET-A-work", conversation_id="work", reply="SECRET-A-work-reply")
        f = stack._test_chat_victim = dict(a=a, b=b, private=private)
        f["before"] = snapshot(stack, a, ("default", "work", private))
        # the words an intruder must never see are really there
        assert all(b"SECRET-A" in body for body in f["before"][1].values()), f["before"]
    return f


def pct_all(s):
    return "".join(f"%{b:02X}" for b in s.encode())


# name, query string made from (a, private), JSON body or None
INTRUSIONS = [
    ("conversation_id_of_the_other_user", lambda a, p: f"conversation_id={p}", None),
    ("user_id_param", lambda a, p: f"user_id={a['id']}", None),
    ("user_id_with_conversation", lambda a, p: f"conversation_id={p}&user_id={a['id']}", None),
    ("user_id_first", lambda a, p: f"user_id={a['id']}&conversation_id=work", None),
    ("user_param", lambda a, p: f"user={a['name']}&conversation_id={p}", None),
    ("user_param_as_id", lambda a, p: f"user={a['id']}", None),
    ("username_param", lambda a, p: f"username={a['name']}&conversation_id={p}", None),
    ("duplicated_conversation_id", lambda a, p: f"conversation_id=default&conversation_id={p}",
     None),
    ("duplicated_user_id", lambda a, p: f"user_id=0&user_id={a['id']}&conversation_id={p}",
     None),
    ("percent_encoded_param_name", lambda a, p: f"%63onversation_id={p}&user%5Fid={a['id']}",
     None),
    ("percent_encoded_value", lambda a, p: f"conversation_id={pct_all(p)}", None),
    ("percent_encoded_user_name", lambda a, p: f"username={pct_all(a['name'])}", None),
    ("array_style_param", lambda a, p: f"user_id[]={a['id']}&conversation_id[]={p}", None),
    ("semicolon_separator", lambda a, p: f"conversation_id=work;user_id={a['id']}", None),
    ("user_id_in_body", lambda a, p: f"conversation_id={p}",
     lambda a, p: {"user_id": a["id"], "username": a["name"], "conversation_id": p}),
]


@harness.cases(INTRUSIONS)
def test_other_user_cannot_read_history_by_any_parameter(stack, case):
    _, query, body = case
    f = victim_fixture(stack)
    a, b = f["a"], f["b"]
    r = stack.request("GET", "/api/chat/history/?" + query(a, f["private"]),
                      json=body(a, f["private"]) if body else None,
                      token=fresh_token(stack, b))
    assert b"SECRET-A" not in r.body, r
    assert r.status in (200, 400), r
    if r.status == 200:
        b_ids = {row[0] for row in stored(stack, b["id"])}
        assert {m["id"] for m in r.json()["messages"]} <= b_ids, r
    else:
        assert_json_reason(r, 400)


@harness.cases(INTRUSIONS)
def test_other_user_cannot_delete_history_by_any_parameter(stack, case):
    _, query, body = case
    f = victim_fixture(stack)
    a, b = f["a"], f["b"]
    r = stack.request("DELETE", "/api/chat/history/?" + query(a, f["private"]),
                      json=body(a, f["private"]) if body else None,
                      token=fresh_token(stack, b))
    assert r.status in (204, 400), r
    assert snapshot(stack, a, ("default", "work", f["private"])) == f["before"], \
        "another user's DELETE changed this user's history"


def with_user_id(token, user_id):
    """The token with its user_id claim changed and the signature kept."""
    h, _, s = token.split(".")
    _, claims = jwt_parts(token)
    claims["user_id"] = user_id
    c = b64url(jsonlib.dumps(claims, separators=(",", ":")).encode())
    return f"{h}.{c}.{s}"


TAMPERED = [("GET", "/api/chat/history/"), ("DELETE", "/api/chat/history/"),
            ("POST", "/api/chat/")]


@harness.cases(TAMPERED, name=lambda c: c[0])
def test_token_with_a_tampered_user_id_claim_is_401(stack, case):
    method, path = case
    f = victim_fixture(stack)
    a, b = f["a"], f["b"]
    forged = with_user_id(fresh_token(stack, b), a["id"])
    seq = fake_seq(stack)
    r = stack.request(method, f"{path}?conversation_id={f['private']}", token=forged,
                      json={"message": "hi", "conversation_id": f["private"]}
                      if method == "POST" else None)
    assert r.status == 401, r
    assert r.json() == TOKEN_NOT_VALID, r
    assert r.headers.get("www-authenticate") == WWW_AUTHENTICATE, r.headers
    assert b"SECRET-A" not in r.body
    assert snapshot(stack, a, ("default", "work", f["private"])) == f["before"]
    assert fake_seq(stack) == seq, "the upstream was called for a forged token"


# name, query string (conversation_id as it goes on the wire)
BAD_CONVERSATION_QUERIES = [
    ("too_long_65", "conversation_id=" + "a" * 65),
    ("far_too_long", "conversation_id=" + "a" * 5000),
    ("empty", "conversation_id="),
    ("no_value", "conversation_id"),
    ("space", "conversation_id=a%20b"),
    ("plus_is_a_space", "conversation_id=a+b"),
    ("slash", "conversation_id=a%2Fb"),
    ("dot_dot_slash", "conversation_id=..%2F..%2Fetc"),
    ("dot", "conversation_id=a.b"),
    ("non_ascii", "conversation_id=%C3%A9t%C3%A9"),
    ("nul", "conversation_id=a%00b"),
    ("newline", "conversation_id=a%0Ab"),
    ("sql_quote", "conversation_id=x%27%20OR%20%271%27%3D%271"),
    ("bad_percent_escape", "conversation_id=%zz"),
    ("truncated_percent_escape", "conversation_id=ab%4"),
    ("invalid_utf8", "conversation_id=%FF%FE"),
]


@harness.cases([(f"{m}_{n}", m, q) for m in ("GET", "DELETE")
                for n, q in BAD_CONVERSATION_QUERIES])
def test_bad_conversation_id_in_the_query_is_400_json(stack, case):
    _, method, query = case
    f = victim_fixture(stack)
    a = f["a"]
    r = stack.request(method, "/api/chat/history/?" + query, token=fresh_token(stack, a))
    assert_json_reason(r, 400)
    assert snapshot(stack, a, ("default", "work", f["private"])) == f["before"]


def test_conversation_id_of_64_characters_is_accepted(stack):
    acct = account(stack, "conv64")
    conv = "Az09_-" + "x" * 58
    assert len(conv) == 64
    body = exchange(stack, acct, "long id", conversation_id=conv, reply="ok")
    assert body["conversation_id"] == conv, body
    assert contents(messages(stack, acct, conv)) == [steered("long id", text="ok"), "ok"]
    assert history(stack, acct["access"], conv, method="DELETE").status == 204
    assert messages(stack, acct, conv) == []


def test_history_without_a_token_is_401(stack):
    for method in ("GET", "DELETE"):
        r = stack.request(method, "/api/chat/history/?conversation_id=default")
        assert r.status == 401, r
        assert r.json() == NO_CREDENTIALS, r
        assert r.headers.get("www-authenticate") == WWW_AUTHENTICATE, r.headers


ACCESS_TOKEN_IN_QUERY = [("POST", "/api/chat/"), ("GET", "/api/chat/history/"),
                         ("DELETE", "/api/chat/history/")]


@harness.cases(ACCESS_TOKEN_IN_QUERY, name=lambda c: c[0] + "_" + c[1].split("/")[-2])
def test_access_token_query_parameter_is_only_for_the_stream(stack, case):
    """Only GET /api/chat/stream/ takes ?access_token= (EventSource cannot
    set headers); elsewhere it is no credentials at all."""
    method, path = case
    acct = bad_input_fixture(stack)
    before = snapshot(stack, acct)
    seq = fake_seq(stack)
    r = stack.request(method, f"{path}?access_token={acct['access']}",
                      json={"message": "hi"} if method == "POST" else None)
    assert r.status == 401, r
    assert r.json() == NO_CREDENTIALS, r
    assert r.headers.get("www-authenticate") == WWW_AUTHENTICATE, r.headers
    assert snapshot(stack, acct) == before
    assert fake_seq(stack) == seq


# --- 4. bad input on POST /api/chat/ ---------------------------------------------------


def padded(size, message="padded body"):
    """A valid JSON chat body of exactly `size` bytes."""
    head = ('{"message": "%s", "pad": "' % message).encode()
    tail = b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def nested(depth):
    return b'{"message": "hi", "x": ' + b"[" * depth + b"]" * depth + b"}"


JSON = "application/json"
FORM = "application/x-www-form-urlencoded"

# name, body bytes, content type, token kind (user | none | a function of
# (stack, acct) giving the Authorization header value), expected status,
# expected body (None: any JSON reason)
BAD_INPUT = [
    ("malformed_json", b'{"message": "hi"', JSON, "user", 400, None),
    ("not_json_at_all", b"hello there", JSON, "user", 400, None),
    ("trailing_garbage", b'{"message": "hi"} x', JSON, "user", 400, None),
    ("two_objects", b'{"message": "hi"}{"message": "ho"}', JSON, "user", 400, None),
    ("json_array", b'[{"message": "hi"}]', JSON, "user", 400, None),
    ("json_string", b'"hi"', JSON, "user", 400, None),
    ("json_number", b"42", JSON, "user", 400, None),
    ("json_null", b"null", JSON, "user", 400, None),
    ("empty_body", b"", JSON, "user", 400, None),
    ("message_number", b'{"message": 5}', JSON, "user", 400, None),
    ("message_null", b'{"message": null}', JSON, "user", 400, None),
    ("message_array", b'{"message": []}', JSON, "user", 400, None),
    ("message_array_of_string", b'{"message": ["hi"]}', JSON, "user", 400, None),
    ("message_object", b'{"message": {"message": "hi"}}', JSON, "user", 400, None),
    ("message_true", b'{"message": true}', JSON, "user", 400, None),
    ("message_empty", b'{"message": ""}', JSON, "user", 400, None),
    ("message_blank", b'{"message": "  \\n\\t\\r  "}', JSON, "user", 400, None),
    ("message_missing", b'{"conversation_id": "default"}', JSON, "user", 400, None),
    ("message_key_other_case", b'{"Message": "hi"}', JSON, "user", 400, None),
    ("message_over_16_KiB", ('{"message": "%s"}' % ("a" * (MESSAGE_MAX + 1))).encode(), JSON,
     "user", 400, None),
    ("message_over_16_KiB_multibyte", ('{"message": "%s"}' % ("é" * (MESSAGE_MAX // 2 + 1)))
     .encode(), JSON, "user", 400, None),
    ("body_over_1_MiB", padded(BODY_MAX + 1), JSON, "user", 413, None),
    ("body_over_2_MiB", padded(3 * BODY_MAX), JSON, "user", 413, None),
    ("invalid_utf8", b'{"message": "caf\xe9"}', JSON, "user", 400, None),
    ("invalid_utf8_ff", b'{"message": "\xff\xfe"}', JSON, "user", 400, None),
    ("overlong_utf8", b'{"message": "\xc0\xaf"}', JSON, "user", 400, None),
    ("utf8_encoded_surrogate", b'{"message": "\xed\xa0\x80"}', JSON, "user", 400, None),
    ("truncated_utf8", b'{"message": "ok \xe2\x82"}', JSON, "user", 400, None),
    ("invalid_utf8_in_a_key", b'{"message": "hi", "\xff": 1}', JSON, "user", 400, None),
    ("lone_surrogate_escape", b'{"message": "a\\ud800b"}', JSON, "user", 400, None),
    ("nul_escape_in_message", b'{"message": "a\\u0000b"}', JSON, "user", 400, None),
    ("nul_escape_at_the_end", b'{"message": "a\\u0000"}', JSON, "user", 400, None),
    ("raw_nul_byte", b'{"message": "a\x00b"}', JSON, "user", 400, None),
    ("duplicated_message_key", b'{"message": "first", "message": "second"}', JSON, "user",
     400, None),
    ("duplicated_conversation_key",
     b'{"message": "hi", "conversation_id": "a", "conversation_id": "b"}', JSON, "user", 400,
     None),
    ("deeply_nested_json", nested(100000), JSON, "user", 400, None),
    ("conversation_id_number", b'{"message": "hi", "conversation_id": 5}', JSON, "user", 400,
     None),
    ("conversation_id_array", b'{"message": "hi", "conversation_id": ["a"]}', JSON, "user",
     400, None),
    ("conversation_id_empty", b'{"message": "hi", "conversation_id": ""}', JSON, "user", 400,
     None),
    ("conversation_id_too_long", ('{"message": "hi", "conversation_id": "%s"}' % ("c" * 65))
     .encode(), JSON, "user", 400, None),
    ("conversation_id_with_space", b'{"message": "hi", "conversation_id": "a b"}', JSON,
     "user", 400, None),
    ("conversation_id_non_ascii", '{"message": "hi", "conversation_id": "été"}'.encode(),
     JSON, "user", 400, None),
    ("conversation_id_slash", b'{"message": "hi", "conversation_id": "../x"}', JSON, "user",
     400, None),
    ("text_plain", b'{"message": "hi"}', "text/plain", "user", 415, None),
    ("application_xml", b"<message>hi</message>", "application/xml", "user", 415, None),
    ("json_lookalike_type", b'{"message": "hi"}', "application/jsonlines", "user", 415, None),
    ("form_bad_percent_escape", b"message=%zz", FORM, "user", 400, None),
    ("form_invalid_utf8", b"message=caf%E9", FORM, "user", 400, None),
    ("form_nul", b"message=a%00b", FORM, "user", 400, None),
    ("form_blank_message", b"message=+++", FORM, "user", 400, None),
    ("form_without_message", b"conversation_id=default", FORM, "user", 400, None),
    ("no_token", b'{"message": "hi"}', JSON, "none", 401, NO_CREDENTIALS),
    ("no_token_and_malformed_json", b'{"message": ', JSON, "none", 401, NO_CREDENTIALS),
    ("other_auth_scheme", b'{"message": "hi"}', JSON, lambda s, a: "Basic dXNlcjpwYXNz",
     401, NO_CREDENTIALS),
    ("lowercase_bearer", b'{"message": "hi"}', JSON, lambda s, a: "bearer " + a["access"],
     401, NO_CREDENTIALS),
    ("bearer_without_token", b'{"message": "hi"}', JSON, lambda s, a: "Bearer", 401, None),
    ("garbage_token", b'{"message": "hi"}', JSON, lambda s, a: "Bearer garbage", 401,
     TOKEN_NOT_VALID),
    ("refresh_token", b'{"message": "hi"}', JSON, lambda s, a: "Bearer " + a["refresh"], 401,
     TOKEN_NOT_VALID),
    ("tampered_signature", b'{"message": "hi"}', JSON,
     lambda s, a: "Bearer " + a["access"][:-2] + ("AA" if a["access"][-2:] != "AA" else "BB"),
     401, TOKEN_NOT_VALID),
    ("expired_token", b'{"message": "hi"}', JSON,
     lambda s, a: "Bearer " + jwt_sign({"alg": "HS256", "typ": "JWT"},
                                       dict(jwt_parts(a["access"])[1],
                                            exp=int(time.time()) - 10,
                                            iat=int(time.time()) - 400), s.secret_key()),
     401, TOKEN_NOT_VALID),
    ("signed_with_another_key", b'{"message": "hi"}', JSON,
     lambda s, a: "Bearer " + jwt_sign({"alg": "HS256", "typ": "JWT"},
                                       jwt_parts(a["access"])[1], b"another key"),
     401, TOKEN_NOT_VALID),
]


def bad_input_fixture(stack):
    """A user with history in two conversations; every bad request is made
    as this user and must leave it byte-identical."""
    f = getattr(stack, "_test_chat_bad_input_user", None)
    if f is None:
        f = stack._test_chat_bad_input_user = account(stack, "badin")
        exchange(stack, f, "keep me", reply="kept reply")
        exchange(stack, f, "and me", conversation_id="notes", reply="kept too")
    fresh_token(stack, f)
    return f


@harness.cases(BAD_INPUT)
def test_bad_input_is_4xx_json_and_leaves_history_untouched(stack, case):
    _, body, ctype, token, status, want = case
    acct = bad_input_fixture(stack)
    before = snapshot(stack, acct, ("default", "notes", "a", "b"))
    seq = fake_seq(stack)
    headers = {"Content-Type": ctype}
    if callable(token):
        headers["Authorization"] = token(stack, acct)
    r = stack.request("POST", "/api/chat/", body=body, headers=headers,
                      token=acct["access"] if token == "user" else None)
    got = assert_json_reason(r, status)
    if want is not None:
        assert got == want, r
    if status == 401:
        assert r.headers.get("www-authenticate") == WWW_AUTHENTICATE, r.headers
    assert snapshot(stack, acct, ("default", "notes", "a", "b")) == before, \
        "a rejected request changed the stored history"
    assert fake_seq(stack) == seq, "a rejected request reached the upstream"


# name, body, expected status
SIZE_LIMITS = [
    ("message_of_exactly_16_KiB", ('{"message": "%s"}' % ("m" * MESSAGE_MAX)).encode(), 200),
    ("message_of_16_KiB_plus_1", ('{"message": "%s"}' % ("m" * (MESSAGE_MAX + 1))).encode(),
     400),
    ("body_of_exactly_1_MiB", padded(BODY_MAX), 200),
    ("body_of_1_MiB_plus_1", padded(BODY_MAX + 1), 413),
]


@harness.cases(SIZE_LIMITS)
def test_size_limits(stack, case):
    _, body, status = case
    acct = account(stack, "size")
    r = stack.request("POST", "/api/chat/", body=body, headers={"Content-Type": JSON},
                      token=acct["access"])
    if status == 200:
        assert r.status == 200, r
        assert len(messages(stack, acct)) == 2
    else:
        assert_json_reason(r, status)
        assert stored(stack, acct["id"]) == []


# --- 5. routing ------------------------------------------------------------------------


@harness.cases(["/api/chat", "/api/chat/"])
def test_chat_path_works_with_and_without_the_trailing_slash(stack, path):
    acct = account(stack, "slash")
    r = stack.request("POST", path, json={"message": steered("slash", text="ok")},
                      token=acct["access"])
    assert r.status == 200, r
    assert r.json()["response"] == "ok", r


@harness.cases(["/api/chat/history", "/api/chat/history/", "/api/health", "/api/health/",
                "/api/metrics", "/api/metrics/"])
def test_get_paths_work_with_and_without_the_trailing_slash(stack, path):
    acct = account(stack, "slash")
    r = stack.request("GET", path, token=acct["access"] if "history" in path else None)
    assert r.status == 200, r


UNKNOWN_PATHS = [
    ("GET", "/api/nope/"), ("POST", "/api/nope/"), ("GET", "/api/"),
    ("GET", "/api/chat/history/x"), ("DELETE", "/api/chat/history/x"),
    ("POST", "/api/chat/x"), ("POST", "/api/chat//"), ("GET", "/api/chat/history//"),
    ("POST", "/api/chats/"), ("GET", "/api/healthz"), ("GET", "/api/health/x"),
    ("GET", "/api/metrics/x"), ("GET", "/index.html"), ("GET", "/API/chat/"),
    ("GET", "/web"), ("GET", "/web/nope.js"), ("GET", "/web/package.json"),
    ("GET", "/web/node_modules/marked/package.json"), ("GET", "/src/web/app.js"),
]


@harness.cases(UNKNOWN_PATHS, name=lambda c: f"{c[0]}_{c[1]}")
def test_unknown_path_is_404_json(stack, case):
    method, path = case
    r = stack.request(method, path, json={"message": "hi"} if method == "POST" else None)
    assert r.status == 404, r
    assert r.json() == NOT_FOUND, r


# name, method, path, a method Allow must name
WRONG_METHODS = [
    ("PUT_chat", "PUT", "/api/chat/", "POST"),
    ("PATCH_chat", "PATCH", "/api/chat/", "POST"),
    ("GET_chat", "GET", "/api/chat/", "POST"),
    ("DELETE_chat", "DELETE", "/api/chat/", "POST"),
    ("PUT_history", "PUT", "/api/chat/history/", "GET"),
    ("POST_history", "POST", "/api/chat/history/", "DELETE"),
    ("PATCH_history", "PATCH", "/api/chat/history/", "GET"),
    ("POST_health", "POST", "/api/health/", "GET"),
    ("DELETE_health", "DELETE", "/api/health/", "GET"),
    ("POST_metrics", "POST", "/api/metrics", "GET"),
]


@harness.cases(WRONG_METHODS)
def test_wrong_method_is_405_with_allow(stack, case):
    _, method, path, allowed = case
    acct = bad_input_fixture(stack)
    before = snapshot(stack, acct)
    r = stack.request(method, path, token=acct["access"],
                      json={"message": "hi"} if method in ("PUT", "PATCH", "POST") else None)
    assert r.status == 405, r
    allow = [m.strip() for m in r.headers.get("allow", "").split(",")]
    assert allowed in allow and method not in allow, r.headers
    assert r.json() == {"detail": f'Method "{method}" not allowed.'}, r
    assert snapshot(stack, acct) == before


# --- 6. health -------------------------------------------------------------------------


def test_health_is_ok_without_authentication(stack):
    r = stack.request("GET", "/api/health/")
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert {k: body.get(k) for k in ("status", "database", "upstream")} == \
        {"status": "ok", "database": "ok", "upstream": "ok"}, body


@harness.stack_env(JARVAS_UPSTREAM_URL=CLOSED_PORT_URL)
def test_health_is_503_naming_the_upstream_when_it_is_down(stack):
    r = stack.request("GET", "/api/health/")
    assert r.status == 503, r
    body = r.json()
    assert body.get("status") != "ok", body
    assert body.get("upstream") not in (None, "ok"), body
    assert body.get("database") == "ok", body


def replace_with_garbage(db):
    tmp = db.with_name("garbage.tmp")
    tmp.write_bytes(os.urandom(64 * 1024))
    os.replace(tmp, db)
    for suffix in ("-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def remove_database(db):
    for suffix in ("", "-wal", "-shm"):
        db.with_name(db.name + suffix).unlink(missing_ok=True)


def overwrite_in_place(db):
    """Garbage into the very files the open connections use (same inodes,
    same sizes: a mapped -shm must not shrink)."""
    for suffix in ("", "-wal", "-shm"):
        p = db.with_name(db.name + suffix)
        if p.exists():
            with open(p, "r+b") as fh:
                size = fh.seek(0, os.SEEK_END)
                fh.seek(0)
                fh.write(os.urandom(size))


DB_BREAKAGES = [
    ("replaced_by_a_garbage_file", replace_with_garbage),
    ("removed_with_its_wal_and_shm", remove_database),
    ("overwritten_in_place_with_garbage", overwrite_in_place),
]


@harness.cases(DB_BREAKAGES)
@harness.timeout(180)
def test_health_is_503_naming_the_database_when_it_is_broken(stack, case):
    """On a stack of its own that has served chats (so its connections are
    open, as on any live server), the database is broken under it."""
    _, breaker = case
    with harness.Stack() as own:
        acct = account(own, "dbdown")
        exchange(own, acct, "before the breakage", reply="fine")
        r = own.request("GET", "/api/health/")
        assert r.status == 200, r
        breaker(own.state / "jarvas.db")
        r = own.request("GET", "/api/health/")
        body = r.json()
        assert r.status == 503, r
        assert body.get("status") != "ok", body
        assert body.get("database") not in (None, "ok"), body
        assert body.get("upstream") == "ok", body
        assert_no_restarts(own)


@harness.cases(DB_BREAKAGES[:2])
@harness.timeout(180)
def test_a_chat_is_refused_not_lost_when_the_database_file_is_gone(stack, case):
    """A pooled connection would go on writing into a deleted or replaced
    file, and the reply would be lost with a 200: it must be a 503."""
    _, breaker = case
    with harness.Stack() as own:
        acct = account(own, "dbgone")
        exchange(own, acct, "before the breakage", reply="fine")
        breaker(own.state / "jarvas.db")
        r = own.request("POST", "/api/chat/", token=acct["access"],
                        json={"message": "after [[fake tokens=2]]"})
        assert r.status == 503, r
        assert r.json().get("detail"), r


def test_health_answers_within_seconds_when_the_upstream_hangs(stack):
    """The fake upstream is stopped (SIGSTOP): connections are accepted by the
    kernel, and nothing ever answers."""
    pid = stack.fake.pid
    os.kill(pid, signal.SIGSTOP)
    try:
        t0 = time.monotonic()
        r = stack.request("GET", "/api/health/", timeout=60)
        took = time.monotonic() - t0
    finally:
        os.kill(pid, signal.SIGCONT)
    assert took < 10, f"health took {took:.1f}s with a hanging upstream"
    assert r.status == 503, r
    body = r.json()
    assert body.get("upstream") not in (None, "ok"), body
    assert body.get("database") == "ok", body
    wait_for(lambda: stack.request("GET", "/api/health/").status == 200, 15,
             "health back to 200 once the upstream answers")


@harness.stack_env(JARVAS_UPSTREAM_IDLE_TIMEOUT=2)
def test_health_answers_at_once_while_a_chat_waits_on_a_silent_upstream(stack):
    acct = account(stack, "busy")
    seq = fake_seq(stack)
    result = {}

    def hung_chat():
        try:
            result["r"] = chat(stack, acct["access"], "wait for it", timeout=60)
        except Exception as exc:  # noqa: BLE001 — reported below
            result["error"] = exc

    stack.fake_config(headers_ms=600000)
    t = threading.Thread(target=hung_chat, daemon=True)
    try:
        t.start()
        wait_for(lambda: fake_seq(stack) > seq, 10, "the chat reaching the upstream")
        t0 = time.monotonic()
        r = stack.request("GET", "/api/health/", timeout=30)
        took = time.monotonic() - t0
    finally:
        stack.fake_config(headers_ms=None)
        t.join(60)
    assert took < 10, f"health took {took:.1f}s while a chat waited upstream"
    assert r.status == 200, r
    assert not t.is_alive(), "the hung chat did not end"
    assert "error" not in result, result
    assert result["r"].status == 504, result["r"]
    assert stored(stack, acct["id"]) == []


# --- 7. metrics ------------------------------------------------------------------------


def test_metrics_are_prometheus_text_that_promtool_accepts(stack):
    acct = account(stack, "prom")
    exchange(stack, acct, "something to count", reply="counted")
    r = stack.request("GET", "/api/metrics")
    assert r.status == 200, r
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("text/plain") and "version=0.0.4" in ctype, r.headers
    m = Metrics(r.text)
    for name in ("jarvas_requests_total", "jarvas_first_chunk_seconds_count",
                 "jarvas_active_streams", "jarvas_prompt_cache_hits_total",
                 "jarvas_prompt_cache_misses_total", "jarvas_upstream_errors_total",
                 "jarvas_client_aborts_total"):
        assert m.has(name), f"{name} missing from:\n{r.text}"
    try:
        p = subprocess.run(["promtool", "check", "metrics"], input=r.body,
                           capture_output=True, timeout=30)
    except FileNotFoundError:
        raise AssertionError("promtool is missing: apt-get install prometheus") from None
    assert p.returncode == 0, f"promtool: {p.stdout.decode()}{p.stderr.decode()}\n{r.text}"


def test_metrics_need_no_authentication_and_ignore_the_query_string(stack):
    assert stack.request("GET", "/api/metrics?x=1").status == 200


def test_metrics_count_requests_of_every_responder_by_endpoint_and_status(stack):
    acct = account(stack, "count")
    before = scrape(stack)
    stack.login(acct["name"], acct["password"])  # token process
    r = stack.request("POST", "/api/token/", json={"username": acct["name"], "password": "no"})
    assert r.status == 401, r
    exchange(stack, acct, "count me", reply="counted")  # chat process
    assert chat(stack, None, "no token").status == 401
    assert history(stack, fresh_token(stack, acct)).status == 200
    after = scrape(stack)
    for endpoint, status in (("token", 200), ("token", 401), ("chat", 200), ("chat", 401),
                             ("chat_history", 200)):
        delta = requests_total(after, endpoint, status) - requests_total(before, endpoint, status)
        assert delta == 1, (endpoint, status, delta,
                            [l for l in after.text.splitlines() if "requests_total" in l])


CHAT_LOG_LINE = re.compile(r'responder=chat pid=(\d+) method="POST" path="/api/chat" status=200')


@harness.stack_env(JARVAS_PROCS_CHAT=2)
def test_metrics_sum_the_counters_of_both_chat_processes(stack):
    acct = account(stack, "procs")
    run = stack.state / "run"
    assert (run / "chat.pid").exists() and (run / "chat.2.pid").exists(), \
        sorted(p.name for p in run.iterdir())
    log = stack.state / "log" / "chat.log"
    offset = log.stat().st_size
    before = scrape(stack)
    sent, pids = 0, {}
    while sent < 80:
        exchange(stack, acct, f"spread {sent}", tokens=1)
        sent += 1
        with open(log, "rb") as fh:
            fh.seek(offset)
            lines = fh.read().decode("utf-8", "replace")
        pids = {}
        for pid in CHAT_LOG_LINE.findall(lines):
            pids[pid] = pids.get(pid, 0) + 1
        if sent >= 8 and len(pids) >= 2:
            break
    assert len(pids) == 2, f"{sent} chats all went to chat process(es) {pids}"
    assert sum(pids.values()) == sent, (pids, sent)
    for _ in range(4):  # each scrape may be answered by either process
        m = scrape(stack)
        delta = requests_total(m, "chat", 200) - requests_total(before, "chat", 200)
        assert delta == sent, (delta, sent, pids)


def test_prompt_cache_hit_rate_is_above_70_percent_after_ten_exchanges(stack):
    acct = account(stack, "cache")
    before = scrape(stack)
    for i in range(10):
        exchange(stack, acct, f"cached {i}", tokens=1)
    after = scrape(stack)
    hits = after.get("jarvas_prompt_cache_hits_total") - \
        before.get("jarvas_prompt_cache_hits_total")
    misses = after.get("jarvas_prompt_cache_misses_total") - \
        before.get("jarvas_prompt_cache_misses_total")
    assert hits + misses == 10, (hits, misses)
    assert hits / (hits + misses) > 0.7, (hits, misses)
    # The table says the same: the user's entry was hit on each later request.
    rows = stack.sqlite("SELECT hits FROM prompt_cache WHERE value LIKE ?",
                        (f'%"{acct["name"]}"%',))
    assert len(rows) == 1 and rows[0][0] >= 7, rows


def stream_once(stack, acct):
    ev = stack.sse("/api/chat/stream/?message=" + urllib.parse.quote(steered("stream", tokens=3)),
                   token=fresh_token(stack, acct), timeout=30)
    assert ev.status == 200, (ev.status, ev.body)
    assert ev.named("done"), list(ev)
    return ev


def test_active_streams_is_zero_when_idle(stack):
    acct = account(stack, "idle")
    stream_once(stack, acct)
    wait_for(lambda: scrape(stack).get("jarvas_active_streams") == 0, 10,
             "jarvas_active_streams back to 0 after the stream ended")
    m = scrape(stack)
    assert m.get("jarvas_active_streams") == 0, m.text


def test_first_chunk_histogram_counts_a_stream(stack):
    acct = account(stack, "first")
    before = scrape(stack)
    stream_once(stack, acct)
    name = "jarvas_first_chunk_seconds"

    def grown():
        m = scrape(stack)
        return m if m.get(f"{name}_count") > before.get(f"{name}_count") else None

    m = wait_for(grown, 10, f"{name}_count growing")
    count = m.get(f"{name}_count")
    assert count == before.get(f"{name}_count") + 1, (before.get(f"{name}_count"), count)
    assert m.get(f"{name}_bucket", le="+Inf") == count, m.text
    buckets = sorted(((float(dict(labels)["le"]), v) for (n, labels), v in m.samples.items()
                      if n == f"{name}_bucket"))
    values = [v for _, v in buckets]
    assert values == sorted(values), buckets
    assert m.get(f"{name}_sum") > before.get(f"{name}_sum"), m.text
