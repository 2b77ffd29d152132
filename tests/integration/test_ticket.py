"""Stream tickets (issue 10, item 5): POST /api/chat/stream/ticket/ gives a
short-lived, single-use credential that a browser's EventSource carries as
?ticket= instead of a JWT in the URL. A ticket works once, for 60 s
(JARVAS_STREAM_TICKET_LIFETIME), from any chat_stream process, as its
issuer; it never reaches a log, and the database keeps only its hash. A
ticket together with another credential is refused, and nothing but the
GET stream takes one. The stream helpers are test_stream's."""

import base64
import hashlib
import os
import re
import time

import harness
from test_stream import (NOT_PROVIDED, STREAM, account, conv, fake, fake_requests_with, history,
                         marker, pairs, parse_stream, query, wait_request_finished)

TICKET = "/api/chat/stream/ticket/"
LIFETIME = 60
PER_USER_MAX = 16  # src/tickets.h TICKETS_PER_USER_MAX
NOT_VALID = {"detail": "Stream ticket not valid: unknown, expired or already used.",
             "code": "ticket_not_valid"}
WITH_OTHER = {"detail": "A stream ticket is a credential of its own: send it without an "
                        "Authorization header or access_token.", "code": "ticket_not_valid"}
TOKEN_NOT_VALID = {"detail": "Given token not valid for any token type", "code": "token_not_valid"}


# --- helpers ------------------------------------------------------------------


def issue(stack, user, **kw):
    """A fresh ticket of this user (asserting the 200's shape)."""
    r = stack.request("POST", TICKET, token=user["access"], **kw)
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"ticket", "expires_in"}, body
    assert isinstance(body["ticket"], str) and re.fullmatch(r"[A-Za-z0-9_-]{43}", body["ticket"]), body
    assert r.headers.get("cache-control") == "no-store", r.headers
    return body["ticket"]


def stream_path(message, conversation=None, **credentials):
    params = dict(message=message)
    if conversation is not None:
        params["conversation_id"] = conversation
    params.update(credentials)
    return STREAM + query(**params)


def with_ticket(stack, ticket, message, conversation=None, headers=None, **more):
    """A GET stream carrying ?ticket= (and whatever else), read as SSE."""
    return stack.sse(stream_path(message, conversation, ticket=ticket, **more), headers=headers)


def assert_refused(ev, want=NOT_VALID):
    """A plain 401 JSON answer naming the ticket, with WWW-Authenticate."""
    assert ev.status == 401, f"{ev.status} {ev.body[:300]!r}"
    assert ev.json() == want, ev.body
    assert ev.headers.get("www-authenticate") == 'Bearer realm="api"', ev.headers


def stored(stack, user):
    return stack.sqlite("SELECT count(*) FROM messages WHERE user_id = ?", (user["user_id"],))[0][0]


def ticket_rows(stack, user):
    return stack.sqlite("SELECT hash, expires_at FROM stream_tickets WHERE user_id = ?",
                        (user["user_id"],))


# --- issuing ------------------------------------------------------------------

# name, request keywords for stack.request
GOOD_BODIES = [
    ("no_body", {}),
    ("empty_body", dict(body=b"", headers={"content-type": "application/json"})),
    ("empty_object", dict(json={})),
    ("unknown_fields_ignored", dict(json={"purpose": "eventsource"})),
]


@harness.cases(GOOD_BODIES)
def test_ticket_is_issued_for_an_access_token(stack, case):
    _, kw = case
    user = account(stack, "tk")
    before = time.time()
    ticket = issue(stack, user, **kw)
    r = stack.request("POST", TICKET, token=user["access"], **kw)
    assert r.json()["expires_in"] == LIFETIME, r.json()
    assert r.json()["ticket"] != ticket, "two tickets alike"
    # The table holds the BLAKE2b-256 of the ticket (libsodium's
    # crypto_generichash), never the ticket, expiring LIFETIME s from now.
    rows = dict(ticket_rows(stack, user))
    digest = hashlib.blake2b(ticket.encode(), digest_size=32).digest()
    assert digest in rows, f"no row keyed on the ticket's hash: {list(rows)}"
    assert before * 1000 + LIFETIME * 1000 - 2000 <= rows[digest] <= \
        time.time() * 1000 + LIFETIME * 1000, (rows[digest], before)
    for path in stack.state.glob("jarvas.db*"):
        assert ticket.encode() not in path.read_bytes(), f"the ticket itself is in {path.name}"


# name, request keywords, status, body
BAD_ISSUES = [
    ("no_credentials", dict(), 401, NOT_PROVIDED),
    ("bad_token", dict(token="x.y.z"), 401, TOKEN_NOT_VALID),
    ("refresh_token", dict(token="<refresh>"), 401, TOKEN_NOT_VALID),
    ("access_token_in_the_query_is_not_taken", dict(path="?access_token=<access>"), 401,
     NOT_PROVIDED),
    ("a_ticket_does_not_buy_tickets", dict(path="?ticket=<ticket>"), 401, NOT_PROVIDED),
    ("malformed_json", dict(token="<access>", body="{", content_type="application/json"), 400,
     {"detail": "JSON parse error - malformed JSON."}),
    ("not_an_object", dict(token="<access>", body="[]", content_type="application/json"), 400,
     {"detail": "Invalid data. Expected a dictionary."}),
]


@harness.cases(BAD_ISSUES)
def test_bad_ticket_requests_are_refused(stack, case):
    _, kw, status, want = case
    user = account(stack, "tkbad")
    subst = {"<access>": user["access"], "<refresh>": user["refresh"],
             "<ticket>": issue(stack, user)}
    kw = {k: subst.get(v, v) if isinstance(v, str) else v for k, v in kw.items()}
    path = TICKET + re.sub("<[a-z]+>", lambda m: subst[m.group()], kw.pop("path", ""))
    ctype = kw.pop("content_type", None)
    r = stack.request("POST", path, headers={"content-type": ctype} if ctype else None, **kw)
    assert r.status == status, r
    assert r.json() == want, r.body
    assert len(ticket_rows(stack, user)) == 1, "a refused request left a ticket"


def test_get_on_the_ticket_endpoint_is_405(stack):
    user = account(stack, "tk405")
    r = stack.request("GET", TICKET, token=user["access"])
    assert r.status == 405, r
    assert r.headers.get("allow") == "POST, OPTIONS", r.headers
    assert r.json() == {"detail": 'Method "GET" not allowed.'}


@harness.stack_env(JARVAS_STREAM_TICKET_LIFETIME="3")
def test_unused_tickets_are_capped_per_user_and_expired_ones_purged(stack):
    a, b = account(stack, "cap"), account(stack, "capother")
    tickets = [issue(stack, a) for _ in range(PER_USER_MAX)]
    r = stack.request("POST", TICKET, token=a["access"])
    assert r.status == 429, r
    assert "at most 16 per user" in r.json()["detail"], r.json()
    assert r.headers.get("retry-after", "").isdigit() and 1 <= int(r.headers["retry-after"]) <= 3, \
        r.headers
    issue(stack, b)  # another user is not affected
    # Spending one frees its place at once.
    parse_stream(with_ticket(stack, tickets[0], "cap " + fake(tokens=1)))
    issue(stack, a)
    assert stack.request("POST", TICKET, token=a["access"]).status == 429
    # Expired tickets free theirs too, and leave the table with the next issue.
    time.sleep(3.5)
    issue(stack, a)
    assert len(ticket_rows(stack, a)) == 1, ticket_rows(stack, a)
    assert len(ticket_rows(stack, b)) == 0, "another user's expired ticket was kept"


def test_ticket_requests_are_counted_in_the_metrics(stack):
    def count(status):
        r = stack.request("GET", "/api/metrics")
        m = re.search(rf'^jarvas_requests_total{{endpoint="chat_stream_ticket",status="{status}"}}'
                      r" (\d+)$", r.text, re.M)
        return int(m.group(1)) if m else 0

    user = account(stack, "tkmetrics")
    ok, refused = count(200), count(401)
    issue(stack, user)
    assert stack.request("POST", TICKET).status == 401
    assert (count(200), count(401)) == (ok + 1, refused + 1)


# --- spending -------------------------------------------------------------------


def test_a_ticket_streams_once_as_its_issuer(stack):
    user = account(stack, "once")
    c, mark = conv(), marker()
    ticket = issue(stack, user)
    message = f"ticketed {mark} {fake(tokens=3)}"
    s = parse_stream(with_ticket(stack, ticket, message, c, resumable="1"), c)
    assert pairs(history(stack, user, c)) == [("user", message), ("assistant", s["text"])]
    # Spent, kept until it expires for the client's reconnects (issue 12):
    # those get the rest of the reply, with the same ids, and spend nothing.
    assert stack.sqlite("SELECT spent FROM stream_tickets WHERE user_id = ?",
                        (user["user_id"],)) == [(1,)]
    rest = with_ticket(stack, ticket, message, c, resumable="1",
                       headers={"Last-Event-ID": f"{s['message_id']}:1"})
    assert rest.status == 200, rest.body
    assert "".join(e["data"]["content"] for e in rest if e["event"] == "message") == \
        s["text"][len(s["chunks"][0]["data"]["content"]):]
    assert [e["id"] for e in rest if e["event"] == "message"][0] == f"{s['message_id']}:2"
    # Used: the second time is a 401 and reaches nothing.
    again = with_ticket(stack, ticket, f"again {mark} {fake(tokens=3)}", c)
    assert_refused(again)
    assert len(fake_requests_with(stack, mark)) == 1, "the refused request went upstream"
    assert len(history(stack, user, c)) == 2


@harness.stack_env(JARVAS_STREAM_TICKET_LIFETIME="3")
def test_a_ticket_expires_after_its_lifetime(stack):
    user = account(stack, "expiry")
    r = stack.request("POST", TICKET, token=user["access"])
    assert r.json()["expires_in"] == 3, r.json()
    fresh, old = r.json()["ticket"], issue(stack, user)
    parse_stream(with_ticket(stack, fresh, "in time " + fake(tokens=1)))
    time.sleep(3.5)
    c = conv()
    assert_refused(with_ticket(stack, old, "too late " + fake(tokens=1), c))
    assert history(stack, user, c) == []


def test_another_users_ticket_streams_as_the_issuer_and_never_with_other_credentials(stack):
    a, b = account(stack, "issuer"), account(stack, "holder")
    c = conv()
    # Whoever holds the ticket streams as its issuer: the exchange is A's.
    message = "whose? " + fake(tokens=2)
    parse_stream(with_ticket(stack, issue(stack, a), message, c), c)
    assert pairs(history(stack, a, c))[0] == ("user", message)
    assert history(stack, b, c) == [] and stored(stack, b) == 0
    # A ticket with another credential is refused, and spent.
    for name, kw in [("header", dict(headers={"authorization": f"Bearer {b['access']}"})),
                     ("access_token", dict(access_token=b["access"])),
                     ("issuer_header", dict(headers={"authorization": f"Bearer {a['access']}"})),
                     ("empty_access_token", dict(access_token=""))]:
        ticket, c2 = issue(stack, a), conv()
        ev = with_ticket(stack, ticket, "both " + fake(tokens=1), c2, **kw)
        assert ev.status == 401, f"{name}: {ev.status} {ev.body[:200]!r}"
        assert_refused(ev, WITH_OTHER)
        assert history(stack, a, c2) == [] and history(stack, b, c2) == [], name
        assert_refused(with_ticket(stack, ticket, "alone now " + fake(tokens=1), c2))


def _random_ticket():
    return base64.urlsafe_b64encode(os.urandom(32)).rstrip(b"=").decode()


def _flip(t):
    return ("B" if t[0] == "A" else "A") + t[1:]


# name, the ?ticket= value as sent (raw, already encoded) from a live ticket t
# of the user and the user's access token a
BAD_TICKETS = [
    ("empty", lambda t, a: ""),
    ("one_character", lambda t, a: "x"),
    ("unknown_but_well_formed", lambda t, a: _random_ticket()),
    ("first_character_changed", lambda t, a: _flip(t)),
    ("one_character_short", lambda t, a: t[:-1]),
    ("one_character_long", lambda t, a: t + "A"),
    ("upper_cased", lambda t, a: t.upper() if t.upper() != t else t.lower()),
    ("padded_base64", lambda t, a: t + "%3D"),
    ("with_spaces", lambda t, a: "+" + t + "+"),
    ("percent_encoded_nul", lambda t, a: t + "%00"),
    ("not_utf8", lambda t, a: "%ff" + t),
    ("bad_percent_encoding", lambda t, a: t + "%zz"),
    ("overlong_5000", lambda t, a: "A" * 5000),
    ("given_twice", lambda t, a: t + "&ticket=" + t),
    ("the_access_token", lambda t, a: a),
    ("the_stored_hash_in_hex", lambda t, a: hashlib.blake2b(t.encode(), digest_size=32).hexdigest()),
]


@harness.cases(BAD_TICKETS)
def test_bad_tickets_get_401_and_reach_nothing(stack, case):
    name, make = case
    user = account(stack, "badtk")
    live = issue(stack, user)
    c, mark = conv(), marker()
    path = STREAM + query(message=f"bad {mark} {fake(tokens=1)}", conversation_id=c) + \
        "&ticket=" + make(live, user["access"])
    ev = stack.sse(path)
    assert_refused(ev)
    assert fake_requests_with(stack, mark) == [], "a refused request went upstream"
    assert stored(stack, user) == 0
    # Nothing that merely resembles a ticket spends it.
    parse_stream(with_ticket(stack, live, "still good " + fake(tokens=1)))


# name, method, path (with <ticket>), keywords
NOT_TAKEN = [
    ("post_stream", "POST", STREAM + "?ticket=<ticket>", dict(json={"message": "hi"})),
    ("chat", "POST", "/api/chat/?ticket=<ticket>", dict(json={"message": "hi"})),
    ("history", "GET", "/api/chat/history/?ticket=<ticket>", {}),
    ("ticket_endpoint", "POST", TICKET + "?ticket=<ticket>", {}),
]


@harness.cases(NOT_TAKEN)
def test_a_ticket_is_taken_by_the_get_stream_only(stack, case):
    _, method, path, kw = case
    user = account(stack, "nottaken")
    ticket = issue(stack, user)
    r = stack.request(method, path.replace("<ticket>", ticket), **kw)
    assert r.status == 401 and r.json() == NOT_PROVIDED, r
    # ... and it was not spent there.
    parse_stream(with_ticket(stack, ticket, "unspent " + fake(tokens=1)))


def test_last_event_id_with_a_ticket_gets_204_and_leaves_the_ticket(stack):
    user = account(stack, "tk204")
    ticket = issue(stack, user)
    r = stack.request("GET", stream_path("again " + fake(tokens=1), ticket=ticket),
                      headers={"Last-Event-ID": "7:0"})
    assert r.status == 204, r
    parse_stream(with_ticket(stack, ticket, "first real use " + fake(tokens=1)))


@harness.stack_env(JARVAS_PROCS_CHAT_STREAM="2")
def test_a_ticket_issued_by_one_process_works_in_another(stack):
    rounds, crossed = 6, 0
    for i in range(rounds):
        user = account(stack, f"procs{i}")
        ticket = issue(stack, user)
        parse_stream(with_ticket(stack, ticket, f"round {i} " + fake(tokens=1)))
        lines = wait_request_finished(stack, user["user_id"], 2)
        pid = {("ticket" if "/stream/ticket" in ln else "stream"): re.search(r"\bpid=(\d+)", ln)
               .group(1) for ln in lines}
        assert set(pid) == {"ticket", "stream"}, lines
        crossed += pid["ticket"] != pid["stream"]
    assert crossed, f"in {rounds} rounds no ticket was spent by another process than its " \
                    "issuer's: nothing was shown"


def test_tickets_never_reach_a_log(stack):
    user = account(stack, "tklog")
    tickets = [issue(stack, user) for _ in range(4)]
    c = conv()
    parse_stream(with_ticket(stack, tickets[0], "log me " + fake(tokens=2), c), c)
    assert_refused(with_ticket(stack, tickets[0], "used " + fake(tokens=1)))
    parse_stream(with_ticket(stack, tickets[1], "failing " + fake(status=500)), outcome="error")
    # A client that leaves mid-stream, a reconnect, another credential.
    stack.sse(stream_path("leave " + fake(tokens=50, delay_ms=50), ticket=tickets[2]),
              until=lambda ev, evs: ev["event"] == "message")
    stack.request("GET", stream_path("x", ticket=tickets[3]), headers={"Last-Event-ID": "1:1"})
    with_ticket(stack, tickets[3], "two " + fake(tokens=1), access_token=user["access"])
    wait_request_finished(stack, user["user_id"], 4 + 3)  # the issues, the three streams
    time.sleep(0.5)  # nginx writes its logs after the responders
    logs = sorted(p for p in stack.state.rglob("*") if p.is_file() and
                  (p.suffix == ".log" or "log" in p.parts))
    assert any(p.name == "nginx-access.log" for p in logs), logs
    for p in logs:
        text = p.read_text(errors="replace")
        for t in tickets:
            assert t not in text, f"a ticket is in {p.relative_to(stack.state)}"
