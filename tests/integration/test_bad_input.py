"""Bad input on every endpoint (API.md "Limits and bad input"): every bad
input gets a 4xx JSON answer with a reason — never a 5xx, a hang or a crash —
and loses no stored data.

One table, CASES. Each row is (name, method, path, headers, body, expected,
check): expected is a status or a set of acceptable statuses, check is the
JSON key the reason must be under (or a function of the response), and
path, headers and body may be functions of the fixture (tokens are only
known once the stack runs). The rows are written once per kind of bad input
and expanded over every endpoint the input is relevant to, so a row such as
"truncated_json" runs as truncated_json@token, ...@refresh, ...@verify,
...@chat and ...@stream_post.

Requests are sent raw on a socket with a deadline for the whole exchange
(odd bytes reach nginx exactly as written; nothing can hang). Bad inputs
that need credentials carry the credentials of one user, the "victim", whose
history is stored first; every case checks that the victim's rows are
untouched, and the last test checks that every row stored before this module
ran is byte-identical afterwards and that the service still answers. The few
rows that must succeed (a message of exactly 16 KiB, ...) run as another
user.
"""

import hashlib
import hmac
import http.client
import io
import json as jsonlib
import os
import select
import socket
import time
import urllib.parse

import harness
from harness import b64url, jwt_sign

MESSAGE_MAX = 16 * 1024
BODY_MAX = 1 << 20
NGINX_BODY_MAX = 2 << 20
ACCESS_LIFETIME = 5 * 60
DEADLINE = 20  # seconds for one whole request/response exchange
BIG_DEADLINE = 60  # ... when megabytes are sent
NO_CREDENTIALS = "Authentication credentials were not provided."
BAD_CONVERSATION = "..%2Fx"  # "../x": refused once the credentials pass

# --- endpoints -------------------------------------------------------------------


class Endpoint:
    """One endpoint as a bad input sees it. field: the string field a row
    spoils; auth: "header", "query" (access_token) or None; allow: the
    methods its path serves (the Allow header of a 405)."""

    def __init__(self, name, method, path, field=None, auth=None, allow=()):
        self.name, self.method, self.path = name, method, path
        self.field, self.auth, self.allow = field, auth, set(allow)


TOKEN_ALLOW = {"POST"}
CHAT_ALLOW = {"POST"}
HISTORY_ALLOW = {"GET", "DELETE"}
STREAM_ALLOW = {"GET", "POST"}
GET_ALLOW = {"GET"}

TOKEN = Endpoint("token", "POST", "/api/token/", "username", None, TOKEN_ALLOW)
REFRESH = Endpoint("refresh", "POST", "/api/token/refresh/", "refresh", None, TOKEN_ALLOW)
VERIFY = Endpoint("verify", "POST", "/api/token/verify/", "token", None, TOKEN_ALLOW)
CHAT = Endpoint("chat", "POST", "/api/chat/", "message", "header", CHAT_ALLOW)
HISTORY_GET = Endpoint("history_get", "GET", "/api/chat/history/", None, "header",
                       HISTORY_ALLOW)
HISTORY_DELETE = Endpoint("history_delete", "DELETE", "/api/chat/history/", None, "header",
                          HISTORY_ALLOW)
STREAM_GET = Endpoint("stream_get", "GET", "/api/chat/stream/", "message", "header",
                      STREAM_ALLOW)
STREAM_GET_QTOKEN = Endpoint("stream_get_access_token", "GET", "/api/chat/stream/", "message",
                             "query", STREAM_ALLOW)
STREAM_POST = Endpoint("stream_post", "POST", "/api/chat/stream/", "message", "header",
                       STREAM_ALLOW)
HEALTH = Endpoint("health", "GET", "/api/health/", None, None, GET_ALLOW)
METRICS = Endpoint("metrics", "GET", "/api/metrics", None, None, GET_ALLOW)

BODY_EPS = [TOKEN, REFRESH, VERIFY, CHAT, STREAM_POST]  # read a JSON or form body
TOKEN_EPS = [TOKEN, REFRESH, VERIFY]
CHAT_BODY_EPS = [CHAT, STREAM_POST]  # message + conversation_id in the body
QUERY_EPS = [HISTORY_GET, HISTORY_DELETE, STREAM_GET]  # read the query string
HEADER_AUTH_EPS = [CHAT, HISTORY_GET, HISTORY_DELETE, STREAM_GET, STREAM_POST]
OPEN_EPS = [HEALTH, METRICS]  # no credentials, no input
ALL_EPS = BODY_EPS + [HISTORY_GET, HISTORY_DELETE, STREAM_GET] + OPEN_EPS
PATH_EPS = [TOKEN, REFRESH, VERIFY, CHAT, HISTORY_GET, STREAM_GET, HEALTH, METRICS]  # one per path

# --- the fixture -------------------------------------------------------------------


class Account:
    def __init__(self, stack, prefix):
        self.stack = stack
        self.name, self.password = stack.user(prefix)
        (self.id,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (self.name,))[0]
        self._login()

    def _login(self):
        self._access, self.refresh = self.stack.login(self.name, self.password)
        self.at = time.monotonic()

    def access(self):
        """A valid access token (they live 5 minutes; this module runs longer)."""
        if time.monotonic() - self.at > 120:
            self._login()
        return self._access


class Fixture:
    """Made once per stack: the victim (stored history, credentials of every
    bad input), the prober (the rows that must succeed), a deleted user's
    tokens, and the messages table as it was before any bad input."""

    def __init__(self, stack):
        self.stack = stack
        self.key = stack.secret_key()
        self.victim = Account(stack, "victim")
        self.prober = Account(stack, "prober")
        gone = Account(stack, "gone")
        self.gone_access, self.gone_refresh, self.gone_id = gone.access(), gone.refresh, gone.id
        r = stack.jarvasctl("deluser", gone.name)
        assert r.returncode == 0, f"deluser: {r.stdout}{r.stderr}"
        for conversation, text in [("default", "first message, kept"),
                                   ("default", "Olá — “quoted” \\ back\nslash 🎉"),
                                   ("keep-1", "another conversation")]:
            body = {"message": text, "conversation_id": conversation}
            r = stack.request("POST", "/api/chat/", json=body, token=self.victim.access())
            assert r.status == 200, f"storing the victim's history: {r}"
        self.before = all_messages(stack)
        self.victim_before = user_messages(stack, self.victim.id)
        assert len(self.victim_before) == 6, self.victim_before
        self.restarts = stack.restart_counts()
        self.tried = 0  # bad inputs sent
        self.controls = 0  # rows that must succeed
        self.failed = []


def fixture(stack):
    f = getattr(stack, "_bad_input_fixture", None)
    if f is None:
        f = stack._bad_input_fixture = Fixture(stack)
    return f


MESSAGE_COLUMNS = ("id, user_id, conversation_id, role, CAST(content AS BLOB), complete, "
                   "created_at")


def all_messages(stack):
    return stack.sqlite(f"SELECT {MESSAGE_COLUMNS} FROM messages ORDER BY id")


def user_messages(stack, user_id):
    return stack.sqlite(f"SELECT {MESSAGE_COLUMNS} FROM messages WHERE user_id = ? ORDER BY id",
                        (user_id,))


# --- raw HTTP ----------------------------------------------------------------------


def _bytes(v):
    return v if isinstance(v, bytes) else str(v).encode("utf-8", "surrogateescape")


def build_raw(port, method, target, headers, body):
    """The request as bytes. headers: (name, value) pairs sent in order
    (repeats allowed); a value of None drops that default header. A
    Content-Length is added for a body unless the row sets its own framing."""
    defaults = [("Host", f"127.0.0.1:{port}"), ("User-Agent", "jarvas-bad-input-tests"),
                ("Connection", "close")]
    names = {k.lower() for k, _ in headers}
    hdrs = [(k, v) for k, v in defaults if k.lower() not in names]
    hdrs += [(k, v) for k, v in headers if v is not None]
    if body is not None and not names & {"content-length", "transfer-encoding"}:
        hdrs.append(("Content-Length", str(len(body))))
    head = _bytes(method) + b" " + _bytes(target) + b" HTTP/1.1\r\n"
    head += b"".join(_bytes(k) + b": " + _bytes(v) + b"\r\n" for k, v in hdrs)
    return head + b"\r\n" + (body or b"")


class _Recorded:
    """What http.client needs of a socket, over bytes already received."""

    def __init__(self, data):
        self.data = data

    def makefile(self, *args, **kw):
        return io.BytesIO(self.data)


def exchange(port, raw, method, timeout):
    """Send raw, read until the server closes; a harness.Response. Sending
    and reading interleave (a server may answer 413 before the body is in),
    and the whole exchange is bounded by `timeout` seconds."""
    deadline = time.monotonic() + timeout
    got = bytearray()
    out = memoryview(raw)
    with socket.create_connection(("127.0.0.1", port), timeout=timeout) as s:
        s.setblocking(False)
        while True:
            left = deadline - time.monotonic()
            if left <= 0:
                raise AssertionError(f"no complete answer within {timeout}s (a hang); "
                                     f"received so far: {bytes(got[:300])!r}")
            rd, wr, _ = select.select([s], [s] if out else [], [], left)
            if wr:
                try:
                    out = out[s.send(out[:1 << 16]):]
                except BlockingIOError:
                    pass
                except OSError:
                    out = out[:0]  # the server stopped reading: read its answer
            if rd:
                try:
                    chunk = s.recv(1 << 16)
                except BlockingIOError:
                    continue
                except ConnectionResetError:
                    break
                if not chunk:
                    break
                got += chunk
    if not got:
        raise AssertionError("the connection was closed without any answer")
    resp = http.client.HTTPResponse(_Recorded(bytes(got)), method=method)
    try:
        resp.begin()
        body = resp.read()
    except (http.client.HTTPException, ValueError) as exc:
        raise AssertionError(f"not a complete HTTP answer ({type(exc).__name__}): "
                             f"{bytes(got[:300])!r}") from None
    headers = {}
    for k, v in resp.getheaders():
        k = k.lower()
        headers[k] = f"{headers[k]}, {v}" if k in headers else v
    return harness.Response(resp.status, resp.reason, headers, body)


# --- building rows -------------------------------------------------------------------


def q(s):
    return urllib.parse.quote(s, safe="")


def bearer(fx, who="victim"):
    return [("Authorization", "Bearer " + getattr(fx, who).access())]


def base_fields(ep, fx, who="victim"):
    """A body the endpoint would accept, as (key, JSON text) pairs."""
    acct = getattr(fx, who)
    if ep is TOKEN:
        return [("username", jsonlib.dumps(acct.name)), ("password", jsonlib.dumps(acct.password))]
    if ep is REFRESH:
        return [("refresh", jsonlib.dumps(acct.refresh))]
    if ep is VERIFY:
        return [("token", jsonlib.dumps(acct.access()))]
    return [("message", '"hi"')]


def json_object(pairs):
    return ("{" + ", ".join(f"{jsonlib.dumps(k)}: {v}" for k, v in pairs) + "}").encode()


def raw_object(pairs):
    """pairs of (key, raw JSON value bytes) as an object; bytes kept as is."""
    return b"{" + b", ".join(_bytes(jsonlib.dumps(k)) + b": " + _bytes(v)
                             for k, v in pairs) + b"}"


def with_field(ep, value, who="victim"):
    """The endpoint's base body with its field's value replaced by the raw
    JSON text `value` (bytes: sent exactly, bad UTF-8 and all)."""
    return lambda fx: raw_object([(k, value if k == ep.field else v)
                                  for k, v in base_fields(ep, fx, who)])


def auth_for(ep, who="victim"):
    if ep.auth == "header":
        return lambda fx: bearer(fx, who)
    return []


def resolve(v, fx):
    return v(fx) if callable(v) else v


# The reason checks. A check is the JSON key the reason must be under, a
# function (response, fixture), or None (any reason: "detail" or a field).


def detail_is(text):
    def check(r, fx):
        assert r.json().get("detail") == text, r

    return check


def code_is(code):
    def check(r, fx):
        assert r.json().get("code") == code, r

    return check


def body_is(want):
    def check(r, fx):
        assert r.json() == want, r

    return check


def method_not_allowed(ep, method):
    def check(r, fx):
        allow = {m.strip() for m in r.headers.get("allow", "").split(",") if m.strip()}
        assert ep.allow <= allow, f"Allow: {r.headers.get('allow')!r}, want {ep.allow}"
        assert method not in allow, f"Allow: {r.headers.get('allow')!r} lists {method}"
        assert "detail" in r.json(), r

    return check


def chat_ok(r, fx):
    body = r.json()
    assert set(body) >= {"response", "conversation_id", "model", "message_id"}, body


def stream_ok(r, fx):
    assert r.headers.get("content-type", "").startswith("text/event-stream"), r.headers
    assert b"event: done" in r.body, r.body[-500:]


def health_ok(r, fx):
    assert r.json().get("status") == "ok", r


def metrics_ok(r, fx):
    assert r.headers.get("content-type", "").startswith("text/plain"), r.headers
    assert b"jarvas_" in r.body, r.body[:300]


def verify_ok(r, fx):
    assert r.json() == {}, r


INVALID = {"detail": "Token is invalid or expired", "code": "token_not_valid"}

CASES = []


def case(name, method, path, headers, body, expected, check=None):
    CASES.append((name, method, path, headers, body, expected, check))


def per_ep(fn):
    """Mark fn as a function of the endpoint, for row()."""
    fn.per_endpoint = True
    return fn


def row(name, eps, body=None, headers=None, path=None, method=None, expected=400,
        check=None, query=None):
    """Expand one bad input over endpoints. body/headers/path/query/expected/
    check may be functions of the endpoint (called here, at table time), whose
    results may in turn be functions of the fixture (called per request)."""
    for ep in eps:
        def at(v):
            return v(ep) if callable(v) and getattr(v, "per_endpoint", False) else v

        p = at(path)
        if p is None:
            qs = at(query)
            if qs is None:
                p = ep.path
            elif isinstance(qs, bytes):
                p = ep.path.encode() + b"?" + qs
            else:
                p = ep.path + "?" + qs
        h = at(headers)
        if h is None:
            h = auth_for(ep)
        case(f"{name}@{ep.name}", at(method) or ep.method, p, h, at(body), at(expected),
             at(check))


# What a request carries so that, whatever else is wrong with it, the
# endpoint refuses it even when everything else passes.


def refused_path(ep):
    """The endpoint's path with a query refused once authenticated."""
    if ep in (HISTORY_GET, HISTORY_DELETE):
        return ep.path + "?conversation_id=" + BAD_CONVERSATION
    if ep is STREAM_GET:
        return ep.path + "?message=hi&conversation_id=" + BAD_CONVERSATION
    return ep.path


def refused_body(ep):
    """A body the endpoint refuses (400) even with valid credentials."""
    if ep in CHAT_BODY_EPS:
        return chat_body("hi", "../x")
    if ep in TOKEN_EPS:
        return b"{}"
    return None


@per_ep
def refused_or_open(ep):
    """What a request carrying the refused payload gets when nginx lets it
    through: 400 from the endpoint; the open endpoints just answer."""
    return {200, 400} if ep in OPEN_EPS else 400


@per_ep
def stream_message_first(ep):
    """The query prefix that makes the stream's message valid."""
    return "message=hi&" if ep is STREAM_GET else ""


# --- 1. bodies that are not a JSON object -------------------------------------------

JSON_CT = [("Content-Type", "application/json")]


def with_ct(ctype):
    @per_ep
    def headers(ep):
        auth = auth_for(ep)
        return lambda fx: resolve(auth, fx) + [("Content-Type", ctype)]

    return headers


# name, body (FIELD is replaced by the endpoint's field name)
MALFORMED = [
    ("malformed_trailing_comma", b'{"FIELD": "hi",}'),
    ("malformed_single_quotes", b"{'FIELD': 'hi'}"),
    ("malformed_missing_colon", b'{"FIELD" "hi"}'),
    ("malformed_unquoted_key", b'{FIELD: "hi"}'),
    ("malformed_bare_word", b"hello"),
    ("malformed_comment", b'{"FIELD": "hi" /* c */}'),
    ("malformed_nan", b'{"FIELD": NaN}'),
    ("malformed_two_objects", b'{"FIELD": "hi"}{"FIELD": "hi"}'),
    ("malformed_trailing_garbage", b'{"FIELD": "hi"} x'),
    ("malformed_bad_escape", b'{"FIELD": "h\\qi"}'),
    ("malformed_short_unicode_escape", b'{"FIELD": "\\u12"}'),
    ("malformed_raw_control_char_in_string", b'{"FIELD": "a\x01b"}'),
    ("malformed_raw_newline_in_string", b'{"FIELD": "a\nb"}'),
    ("truncated_in_string", b'{"FIELD": "h'),
    ("truncated_after_colon", b'{"FIELD":'),
    ("truncated_open_brace", b"{"),
    ("truncated_after_value", b'{"FIELD": "hi"'),
    ("truncated_in_unicode_escape", b'{"FIELD": "\\u00'),
    ("not_an_object_array", b'["FIELD", "hi"]'),
    ("not_an_object_empty_array", b"[]"),
    ("not_an_object_string", b'"hi"'),
    ("not_an_object_number", b"42"),
    ("not_an_object_null", b"null"),
    ("not_an_object_true", b"true"),
    ("whitespace_only_body", b" \r\n\t "),
    ("empty_body", b""),
    ("empty_object", b"{}"),
    ("field_misspelled", b'{"FIELDx": "hi", "FIELD_": "hi"}'),
    ("invalid_utf8_outside_strings", b'{"FIELD": "hi"}\xff'),
    ("raw_nul_after_json", b'{"FIELD": "hi"}\x00'),
    ("raw_nul_in_key", b'{"FIE\x00LD": "hi"}'),
    ("escaped_nul_in_key", b'{"FIELD\\u0000": "hi"}'),
    ("nul_bytes_only", b"\x00\x00\x00\x00"),
    ("deep_arrays_10000", b"[" * 10000 + b"]" * 10000),
    ("deep_objects_10000", b'{"a":' * 10000 + b"1" + b"}" * 10000),
    ("deep_unclosed_100000", b"[" * 100000),
    ("duplicate_key_same_value", b'{"FIELD": "hi", "FIELD": "hi"}'),
    ("duplicate_key_string_then_number", b'{"FIELD": "hi", "FIELD": 1}'),
    # 5000 keys (and the field a number, refused even if the keys are not)
    ("5000_keys", b"{" + b", ".join(b'"k%d": 1' % i for i in range(5000)) + b', "FIELD": 42}'),
]


def malformed_body(template):
    @per_ep
    def body(ep):
        # The other fields of the endpoint stay valid, so only the spoiled
        # part can be the reason.
        return template.replace(b"FIELD", ep.field.encode())

    return body


# The reason: a parse error is a "detail"; a usable object without the field
# names the field; either is fine where DRF and this server may differ.
FIELD_REASON = {"empty_body", "empty_object", "field_misspelled"}
ANY_REASON = {"duplicate_key_same_value", "duplicate_key_string_then_number", "5000_keys"}
for _name, _template in MALFORMED:
    row(_name, BODY_EPS, body=malformed_body(_template), headers=with_ct("application/json"),
        check=(per_ep(lambda ep: ep.field) if _name in FIELD_REASON else
               None if _name in ANY_REASON else "detail"))

# --- 2. the field with a wrong type or a bad value -----------------------------------

# name, raw JSON value of the field, expected (token endpoints, chat endpoints),
# reason key ("field": the field's own name; None: any)
VALUES = [
    ("number", b"42", 400, "field"),
    ("zero", b"0", 400, "field"),
    ("float", b"1.5", 400, "field"),
    ("huge_exponent", b"1e999", 400, "field"),
    ("huge_negative_exponent", b"-1e999", 400, "field"),
    ("tiny_exponent", b"1e-999", 400, "field"),
    ("twenty_digit_integer", b"12345678901234567890", 400, "field"),
    ("four_hundred_digit_integer", b"9" * 400, 400, "field"),
    ("true", b"true", 400, "field"),
    ("false", b"false", 400, "field"),
    ("null", b"null", 400, "field"),
    ("empty_array", b"[]", 400, "field"),
    ("array_of_string", b'["hi"]', 400, "field"),
    ("empty_object", b"{}", 400, "field"),
    ("object", b'{"text": "hi"}', 400, "field"),
    ("deep_array_10000", b"[" * 10000 + b"]" * 10000, 400, None),
    ("deep_object_10000", b'{"a":' * 10000 + b'"x"' + b"}" * 10000, 400, None),
    ("empty_string", b'""', 400, "field"),
    # DRF trims a CharField: blank. The token endpoints may answer 401 instead
    # (the credentials are then simply wrong); both are fine.
    ("blank_string", b'"  \\t\\n  "', {"chat": 400, "token": {400, 401}}, None),
    ("escaped_nul", b'"\\u0000"', 400, None),
    ("escaped_nul_inside", b'"hi\\u0000there"', 400, None),
    ("escaped_nul_at_end", b'"hi\\u0000"', 400, None),
    ("lone_high_surrogate", b'"\\ud800"', 400, None),
    ("lone_low_surrogate", b'"\\udc00"', 400, None),
    ("high_surrogate_then_letter", b'"\\ud800\\u0041"', 400, None),
    ("high_surrogate_at_end", b'"hi\\ud83d"', 400, None),
    ("reversed_surrogate_pair", b'"\\ude00\\ud83d"', 400, None),
    ("invalid_utf8_ff", b'"\xff\xfe"', 400, None),
    ("invalid_utf8_latin1", b'"caf\xe9"', 400, None),
    ("invalid_utf8_overlong_slash", b'"\xc0\xaf"', 400, None),
    ("invalid_utf8_overlong_nul", b'"\xc0\x80"', 400, None),
    ("invalid_utf8_cesu_surrogate", b'"\xed\xa0\x80"', 400, None),
    ("invalid_utf8_truncated", b'"hi\xc3"', 400, None),
    ("invalid_utf8_lone_continuation", b'"\x80hi"', 400, None),
    ("invalid_utf8_above_10ffff", b'"\xf4\x90\x80\x80"', 400, None),
    ("raw_nul_in_string", b'"hi\x00there"', 400, None),
]


def value_expected(expected):
    @per_ep
    def fn(ep):
        if isinstance(expected, dict):
            return expected["token" if ep in TOKEN_EPS else "chat"]
        return expected

    return fn


def value_check(reason):
    @per_ep
    def fn(ep):
        return ep.field if reason == "field" else None

    return fn


for _name, _value, _expected, _reason in VALUES:
    row(f"field_{_name}", BODY_EPS, body=per_ep(lambda ep, v=_value: with_field(ep, v)),
        headers=with_ct("application/json"), expected=value_expected(_expected),
        check=value_check(_reason))

# The other fields of the token endpoints: the password of a login.
for _name, _value in [("number", b"42"), ("null", b"null"), ("array", b'["x"]'),
                      ("huge_exponent", b"1e999"), ("escaped_nul", b'"pw\\u0000"'),
                      ("lone_surrogate", b'"\\udfff"'), ("invalid_utf8", b'"\xff"')]:
    row(f"password_{_name}", [TOKEN],
        body=lambda fx, v=_value: raw_object([("username", jsonlib.dumps(fx.victim.name)),
                                              ("password", v)]),
        headers=JSON_CT, check="password" if _name in ("number", "null", "array",
                                                       "huge_exponent") else None)

# --- 3. unknown Content-Type and bad form bodies -------------------------------------

for _name, _ctype in [("text_plain", "text/plain"), ("xml", "application/xml"),
                      ("multipart", "multipart/form-data; boundary=x"),
                      ("text_json", "text/json"), ("json_suffix", "application/jsonx"),
                      ("octet_stream", "application/octet-stream"),
                      ("garbage", "%%%; ;;"), ("no_subtype", "application")]:
    row(f"content_type_{_name}", BODY_EPS,
        body=per_ep(lambda ep: (lambda fx: json_object(base_fields(ep, fx)))),
        headers=with_ct(_ctype), expected=415, check="detail")

FORM_CT = "application/x-www-form-urlencoded"
# name, form body (FIELD replaced), reason key
FORMS = [
    ("form_lone_percent", b"FIELD=%", None),
    ("form_percent_non_hex", b"FIELD=%G1", None),
    ("form_percent_nul", b"FIELD=hi%00there", None),
    ("form_lone_lead_byte", b"FIELD=%C3", None),
    ("form_overlong", b"FIELD=%C0%AF", None),
    ("form_surrogate", b"FIELD=%ED%A0%80", None),
    ("form_raw_invalid_utf8", b"FIELD=\xff\xfe", None),
    ("form_raw_nul", b"FIELD=hi\x00there", None),
    ("form_bad_key_encoding", b"FIE%LD=hi", None),
    ("form_empty_value", b"FIELD=", "field"),
    ("form_plus_only", b"FIELD=+++", {"chat": "field"}),
    # a field given twice is refused as a whole, as in JSON and query strings
    ("form_repeated_last_empty", b"FIELD=hi&FIELD=", None),
    ("form_empty_keys", b"&&=&=&", "field"),
]


for _name, _template, _reason in FORMS:
    def _form_check(ep, reason=_reason):
        if isinstance(reason, dict):
            reason = reason.get("token" if ep in TOKEN_EPS else "chat")
        return ep.field if reason == "field" else None

    _expected = 400
    if _name == "form_plus_only":  # blank: DRF 400; a login may just fail
        _expected = per_ep(lambda ep: {400, 401} if ep in TOKEN_EPS else 400)
    row(_name, BODY_EPS, body=malformed_body(_template),
        headers=with_ct(FORM_CT), expected=_expected, check=per_ep(_form_check))

# --- 4. message and conversation_id ----------------------------------------------------

LONG = "a" * (MESSAGE_MAX + 1)
EXACT = "a" * MESSAGE_MAX


def chat_body(message=None, conversation_id=None):
    pairs = []
    if message is not None:
        pairs.append(("message", jsonlib.dumps(message)))
    if conversation_id is not None:
        pairs.append(("conversation_id", conversation_id if isinstance(conversation_id, bytes)
                      else jsonlib.dumps(conversation_id)))
    return raw_object(pairs)


# name, message (None: absent), conversation_id (str, raw JSON bytes or None),
# expected, reason key
MESSAGE_BODIES = [
    ("message_missing", None, "default", 400, "message"),
    ("message_missing_conversation_only", None, "keep-1", 400, "message"),
    ("message_empty", "", None, 400, "message"),
    ("message_blank_ascii", " \t\r\n\f\v ", None, 400, "message"),
    ("message_blank_unicode", "\u00a0\u2003\u3000", None, 400, "message"),
    ("message_over_16KiB", LONG, None, 400, "message"),
    ("message_over_16KiB_multibyte", "é" * (MESSAGE_MAX // 2 + 1), None, 400, "message"),
    ("message_over_16KiB_after_trim", " " + "a" * (MESSAGE_MAX + 1) + " ", None, 400, "message"),
    ("message_1MiB_minus", "a" * (BODY_MAX - 64), None, 400, "message"),
    ("conversation_65_chars", "hi", "c" * 65, 400, "conversation_id"),
    ("conversation_dot_dot_slash", "hi", "../x", 400, "conversation_id"),
    ("conversation_slash", "hi", "a/b", 400, "conversation_id"),
    ("conversation_space", "hi", "my chat", 400, "conversation_id"),
    ("conversation_unicode", "hi", "café", 400, "conversation_id"),
    ("conversation_emoji", "hi", "🎉", 400, "conversation_id"),
    ("conversation_empty", "hi", "", 400, "conversation_id"),
    ("conversation_newline", "hi", "default\n", 400, "conversation_id"),
    ("conversation_percent", "hi", "default%00", 400, "conversation_id"),
    ("conversation_escaped_nul", "hi", b'"default\\u0000x"', 400, None),
    ("conversation_number", "hi", b"7", 400, "conversation_id"),
    ("conversation_array", "hi", b'["default"]', 400, "conversation_id"),
    ("conversation_object", "hi", b'{"id": "default"}', 400, "conversation_id"),
    ("conversation_true", "hi", b"true", 400, "conversation_id"),
    ("conversation_huge_number", "hi", b"1e999", 400, "conversation_id"),
    ("conversation_lone_surrogate", "hi", b'"\\ud800"', 400, None),
    ("conversation_invalid_utf8", "hi", b'"d\xe9fault"', 400, None),
    ("conversation_65_chars_and_blank_message", "", "c" * 65, 400, None),
]

for _name, _msg, _conv, _expected, _reason in MESSAGE_BODIES:
    row(_name, CHAT_BODY_EPS, body=chat_body(_msg, _conv), headers=with_ct("application/json"),
        expected=_expected, check=_reason)

# The same through the query string of GET /api/chat/stream/.
# name, query, expected, reason key
MESSAGE_QUERIES = [
    ("message_missing", "conversation_id=default", 400, "message"),
    ("message_empty", "message=", 400, "message"),
    ("message_no_equals", "message", 400, "message"),
    ("message_plus_is_blank", "message=+", 400, "message"),
    ("message_blank_encoded", "message=%20%09%0D%0A", 400, "message"),
    ("message_blank_unicode", "message=%C2%A0%E3%80%80", 400, "message"),
    ("message_over_16KiB", "message=" + LONG, {400, 414}, None),
    ("message_over_16KiB_encoded", "message=" + "%61" * (MESSAGE_MAX + 1), {400, 414}, None),
    ("message_lone_percent", "message=%", 400, None),
    ("message_percent_at_end", "message=hi%", 400, None),
    ("message_percent_one_digit", "message=hi%4", 400, None),
    ("message_percent_non_hex", "message=%G1", 400, None),
    ("message_percent_nul", "message=hi%00there", 400, None),
    ("message_lone_lead_byte", "message=%C3", 400, None),
    ("message_lone_continuation", "message=%80", 400, None),
    ("message_overlong_slash", "message=%C0%AF", 400, None),
    ("message_overlong_nul", "message=%C0%80", 400, None),
    ("message_surrogate", "message=%ED%A0%80", 400, None),
    ("message_above_10ffff", "message=%F4%90%80%80", 400, None),
    ("message_raw_invalid_utf8", b"message=\xff\xfe", 400, None),
    ("message_raw_latin1", b"message=caf\xe9", 400, None),
    ("message_empty_keys_only", "&&=&=&", 400, "message"),
    ("message_twice_last_blank", "message=hi&message=", 400, "message"),
    ("message_twice_first_blank", "message=&message=hi", 400, "message"),
    ("message_and_bad_conversation", "message=hi&conversation_id=" + BAD_CONVERSATION, 400,
     "conversation_id"),
    ("message_7KiB_of_junk_params",
     "message=hi&" + "&".join(f"k{i}=v{i}" for i in range(700)) + "&conversation_id=%", 400, None),
]

for _name, _query, _expected, _reason in MESSAGE_QUERIES:
    row(f"query_{_name}", [STREAM_GET], query=_query, expected=_expected, check=_reason)

# conversation_id in the query string of the history endpoints and the
# stream. Many are near "default", where the victim's history is: a parser
# that cut or skipped the bad part would find (or delete) it.
CONVERSATION_QUERIES = [
    ("empty", "conversation_id="),
    ("no_equals", "conversation_id"),
    ("65_chars", "conversation_id=" + "c" * 65),
    ("7KiB", "conversation_id=" + "a" * 7168),
    ("7KiB_encoded", "conversation_id=" + "%61" * 2400),
    ("dot_dot_slash", "conversation_id=../x"),
    ("dot_dot_slash_encoded", "conversation_id=" + BAD_CONVERSATION),
    ("dots_all_encoded", "conversation_id=%2E%2E%2F%78"),
    ("space_encoded", "conversation_id=my%20chat"),
    ("plus_is_space", "conversation_id=default+"),
    ("plus_only", "conversation_id=+"),
    ("unicode", "conversation_id=caf%C3%A9"),
    ("lone_percent", "conversation_id=default%"),
    ("percent_one_digit", "conversation_id=default%2"),
    ("percent_non_hex", "conversation_id=default%G1"),
    ("percent_nul", "conversation_id=default%00"),
    ("percent_nul_then_more", "conversation_id=default%00x"),
    ("lone_lead_byte", "conversation_id=default%C3"),
    ("overlong_slash", "conversation_id=default%C0%AF"),
    ("surrogate", "conversation_id=default%ED%A0%80"),
    ("double_encoded", "conversation_id=default%252D"),
    ("double_encoded_percent", "conversation_id=%2525"),
    ("raw_invalid_utf8", b"conversation_id=default\xff"),
    ("raw_utf8", "conversation_id=café"),
    ("semicolon_separator", "conversation_id=default;x"),
    ("empty_keys_around", "&&=&conversation_id=&&=&"),
    ("given_twice_bad_last", "conversation_id=default&conversation_id=" + BAD_CONVERSATION),
    ("given_twice_bad_first", "conversation_id=" + BAD_CONVERSATION + "&conversation_id=default"),
    ("encoded_key", "conversation%5Fid=" + BAD_CONVERSATION),
    ("7KiB_of_junk_then_bad", "&".join(f"k{i}=v{i}" for i in range(700))
     + "&conversation_id=default%"),
]



for _name, _query in CONVERSATION_QUERIES:
    row(f"query_conversation_{_name}", QUERY_EPS,
        query=per_ep(lambda ep, qs=_query: stream_message_first(ep) + qs if isinstance(qs, str)
                     else stream_message_first(ep).encode() + qs))

# Request lines nginx itself must refuse (raw bytes in the target).
for _name, _suffix in [("raw_nul", b"conversation_id=default\x00x"),
                       ("raw_control_char", b"conversation_id=default\x01"),
                       ("raw_space", b"conversation_id=my chat"),
                       ("raw_del", b"conversation_id=default\x7f")]:
    row(f"request_line_{_name}", QUERY_EPS + OPEN_EPS,
        path=per_ep(lambda ep, s=_suffix: ep.path.encode() + b"?" + s), expected=400)

# A query string of 64,000 bytes: a request line that may fit one of nginx's
# header buffers, or not (414).
row("query_conversation_64000_bytes", QUERY_EPS,
    query=per_ep(lambda ep: stream_message_first(ep) + "conversation_id=" + "a" * 64000),
    expected={400, 414})
row("query_ignored_64000_bytes", OPEN_EPS, query="x=" + "a" * 64000, headers=[],
    expected={200, 414})

# The open endpoints read no query string: odd ones are ignored.
for _name, _query in [("lone_percent", "%"), ("percent_nul", "x=%00"),
                      ("lone_lead_byte", "x=%C3"), ("raw_invalid_utf8", None),
                      ("empty_keys", "&&=&"), ("7KiB", "x=" + "a" * 7168),
                      ("access_token_garbage", "access_token=%&access_token=x")]:
    for _ep in OPEN_EPS:
        _p = (_ep.path + "?" + _query) if _query is not None else _ep.path.encode() + b"?x=\xff\xfe"
        case(f"query_ignored_{_name}@{_ep.name}", "GET", _p, [], None, 200,
             health_ok if _ep is HEALTH else metrics_ok)

# --- 5. tokens that are almost valid ---------------------------------------------------


def forge(fx, kind="access", **over):
    """A token of the victim's signed with the server's key; a claim given
    as None is left out."""
    now = int(time.time())
    life = ACCESS_LIFETIME if kind == "access" else 86400
    claims = {"token_type": kind, "exp": now + life, "iat": now,
              "jti": os.urandom(16).hex(), "user_id": fx.victim.id}
    claims.update(over)
    claims = {k: v for k, v in claims.items() if v is not None}
    return jwt_sign({"alg": "HS256", "typ": "JWT"}, claims, fx.key)


def real(fx, kind):
    return fx.victim.access() if kind == "access" else fx.victim.refresh


def flip_signature(tok):
    h, c, s = tok.split(".")
    sig = bytearray(harness.b64url_decode(s))
    sig[0] ^= 1
    return f"{h}.{c}.{b64url(bytes(sig))}"


def flip_payload_char(tok):
    h, c, s = tok.split(".")
    i = len(c) // 2
    c = c[:i] + ("A" if c[i] != "A" else "B") + c[i + 1:]
    return f"{h}.{c}.{s}"


def other_payload(tok, fx):
    h, _, s = tok.split(".")
    claims = {"token_type": "access", "exp": int(time.time()) + 300, "iat": int(time.time()),
              "jti": "x", "user_id": fx.prober.id}
    return f"{h}.{b64url(jsonlib.dumps(claims).encode())}.{s}"


def pad(segment):
    return segment + "=" * (-len(segment) % 4 or 4)


def pad_part(tok, i):
    parts = tok.split(".")
    parts[i] = pad(parts[i])
    return ".".join(parts)


def resign(fx, header_bytes, tok, digest="sha256"):
    """tok's claims under another header, HMAC-signed with the server's key."""
    _, c, _ = tok.split(".")
    h = b64url(header_bytes)
    sig = hmac.new(fx.key, f"{h}.{c}".encode(), getattr(hashlib, digest)).digest()
    return f"{h}.{c}.{b64url(sig)}"


# name, token from (fixture, "access"|"refresh"), expected per endpoint group,
# reason check per endpoint group. Groups: "auth" (Bearer header or
# access_token), "refresh", "verify"; a group missing from `expected` means
# the row does not apply there.
NOT_VALID = code_is("token_not_valid")
TOKENS = [
    ("signature_one_bit_flipped", lambda fx, k: flip_signature(real(fx, k))),
    ("payload_one_char_changed", lambda fx, k: flip_payload_char(real(fx, k))),
    ("payload_swapped_for_another_user", lambda fx, k: other_payload(real(fx, k), fx)),
    ("header_changed_not_resigned", lambda fx, k: b64url(b'{"alg":"HS256","typ":"JWS"}') + "."
     + real(fx, k).split(".", 1)[1]),
    ("missing_signature_segment", lambda fx, k: real(fx, k).rsplit(".", 1)[0]),
    ("empty_signature_segment", lambda fx, k: real(fx, k).rsplit(".", 1)[0] + "."),
    ("header_segment_only", lambda fx, k: real(fx, k).split(".")[0]),
    ("fourth_segment", lambda fx, k: real(fx, k) + ".AAAA"),
    ("base64_padding_on_signature", lambda fx, k: pad_part(real(fx, k), 2)),
    ("base64_padding_on_payload", lambda fx, k: pad_part(real(fx, k), 1)),
    ("base64_standard_alphabet", lambda fx, k: real(fx, k).replace("-", "+").replace("_", "/")
     + ("" if any(ch in real(fx, k) for ch in "-_") else "+")),
    ("truncated_by_one_char", lambda fx, k: real(fx, k)[:-1]),
    ("alg_none_unsigned", lambda fx, k: b64url(b'{"alg":"none","typ":"JWT"}') + "."
     + real(fx, k).split(".")[1] + "."),
    ("alg_none_with_signature", lambda fx, k: resign(fx, b'{"alg":"none","typ":"JWT"}',
                                                      real(fx, k))),
    ("alg_hs512", lambda fx, k: resign(fx, b'{"alg":"HS512","typ":"JWT"}', real(fx, k),
                                       "sha512")),
    ("alg_hs512_header_hs256_signature",
     lambda fx, k: resign(fx, b'{"alg":"HS512","typ":"JWT"}', real(fx, k))),
    ("alg_lowercase", lambda fx, k: resign(fx, b'{"alg":"hs256","typ":"JWT"}', real(fx, k))),
    ("alg_missing", lambda fx, k: resign(fx, b'{"typ":"JWT"}', real(fx, k))),
    ("header_not_json", lambda fx, k: resign(fx, b"HS256", real(fx, k))),
    ("expired", lambda fx, k: forge(fx, k, exp=int(time.time()) - 10,
                                    iat=int(time.time()) - 400)),
    ("exp_as_string", lambda fx, k: forge(fx, k, exp=str(int(time.time()) + 300))),
    ("exp_missing", lambda fx, k: forge(fx, k, exp=None)),
    ("token_type_missing", lambda fx, k: forge(fx, k, token_type=None)),
    ("token_type_unknown", lambda fx, k: forge(fx, k, token_type="id")),
    ("user_id_missing", lambda fx, k: forge(fx, k, user_id=None)),
    ("user_id_as_object", lambda fx, k: forge(fx, k, user_id={"id": 1})),
    ("signed_with_another_key", lambda fx, k: jwt_sign(
        {"alg": "HS256", "typ": "JWT"},
        {"token_type": k, "exp": int(time.time()) + 300, "iat": int(time.time()), "jti": "x",
         "user_id": fx.victim.id}, b"another key")),
    ("garbage", lambda fx, k: "not.a.jwt"),
    ("empty_parts", lambda fx, k: ".."),
    ("15KiB", lambda fx, k: real(fx, k) + "A" * (15 * 1024)),
]
# Rows whose expectations differ from "401 token_not_valid everywhere".
TOKEN_SPECIAL = [
    # SimpleJWT: the right type somewhere else. verify accepts any type.
    ("wrong_token_type", lambda fx, k: real(fx, "refresh" if k == "access" else "access"),
     {"auth": 401, "refresh": 401, "verify": 200},
     {"auth": NOT_VALID, "refresh": body_is(INVALID), "verify": verify_ok}),
    # A deleted user: SimpleJWT's "User not found" and "no_active_account";
    # verify does not look the user up.
    ("deleted_user", lambda fx, k: fx.gone_access if k == "access" else fx.gone_refresh,
     {"auth": 401, "refresh": 401, "verify": 200},
     {"auth": code_is("user_not_found"), "refresh": code_is("no_active_account"),
      "verify": verify_ok}),
    ("user_that_never_existed", lambda fx, k: forge(fx, k, user_id=987654321),
     {"auth": 401, "refresh": 401, "verify": 200},
     {"auth": code_is("user_not_found"), "refresh": code_is("no_active_account"),
      "verify": verify_ok}),
]


def token_rows(name, make, expected, checks):
    exp = expected or {"auth": 401, "refresh": 401, "verify": 401}
    chk = checks or {"auth": NOT_VALID, "refresh": body_is(INVALID), "verify": body_is(INVALID)}
    for ep in HEADER_AUTH_EPS:
        case(f"token_{name}@{ep.name}", ep.method, refused_path(ep),
             lambda fx, m=make: [("Authorization", "Bearer " + m(fx, "access"))] + JSON_CT,
             refused_body(ep), exp["auth"], chk["auth"])
    ep = STREAM_GET_QTOKEN
    case(f"token_{name}@{ep.name}", "GET",
         lambda fx, m=make: refused_path(STREAM_GET) + "&access_token=" + q(m(fx, "access")),
         [], None, exp["auth"], chk["auth"])
    case(f"token_{name}@refresh", "POST", REFRESH.path, JSON_CT,
         lambda fx, m=make: json_object([("refresh", jsonlib.dumps(m(fx, "refresh")))]),
         exp["refresh"], chk["refresh"])
    case(f"token_{name}@verify", "POST", VERIFY.path, JSON_CT,
         lambda fx, m=make: json_object([("token", jsonlib.dumps(m(fx, "access")))]),
         exp["verify"], chk["verify"])


for _name, _make in TOKENS:
    token_rows(_name, _make, None, None)
for _name, _make, _expected, _checks in TOKEN_SPECIAL:
    token_rows(_name, _make, _expected, _checks)

# The Authorization header itself (SimpleJWT: header.split(), "Bearer" only).
# name, header value from the fixture, expected, check. 400 means the token
# was accepted and the refused payload (conversation "../x") answered.
AUTH_HEADERS = [
    ("bearer_lowercase", lambda fx: "bearer " + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("bearer_uppercase", lambda fx: "BEARER " + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("scheme_token", lambda fx: "Token " + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("scheme_token_x", lambda fx: "Token x", 401, detail_is(NO_CREDENTIALS)),
    ("scheme_basic", lambda fx: "Basic dXNlcjpwYXNz", 401, detail_is(NO_CREDENTIALS)),
    ("scheme_jwt", lambda fx: "JWT " + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("empty_header", lambda fx: "", 401, detail_is(NO_CREDENTIALS)),
    ("bearer_alone", lambda fx: "Bearer", 401, code_is("bad_authorization_header")),
    ("bearer_three_parts", lambda fx: "Bearer " + fx.victim.access() + " extra", 401,
     code_is("bad_authorization_header")),
    ("bearer_glued", lambda fx: "Bearer" + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("bearer_colon", lambda fx: "Bearer: " + fx.victim.access(), 401, detail_is(NO_CREDENTIALS)),
    ("token_with_comma", lambda fx: "Bearer " + fx.victim.access() + ",", 401, NOT_VALID),
    ("token_quoted", lambda fx: 'Bearer "' + fx.victim.access() + '"', 401, NOT_VALID),
    ("token_raw_invalid_utf8", lambda fx: b"Bearer \xff\xfe" + fx.victim.access().encode(), 401,
     NOT_VALID),
    ("refresh_token_as_access", lambda fx: "Bearer " + fx.victim.refresh, 401, NOT_VALID),
    # SimpleJWT splits on runs of whitespace: these are accepted, so the
    # refused payload answers (400), not the authentication.
    ("two_spaces", lambda fx: "Bearer  " + fx.victim.access(), 400, "conversation_id"),
    ("tab", lambda fx: "Bearer\t" + fx.victim.access(), 400, "conversation_id"),
]

for _name, _value, _expected, _check in AUTH_HEADERS:
    for _ep in HEADER_AUTH_EPS:
        case(f"authorization_{_name}@{_ep.name}", _ep.method, refused_path(_ep),
             lambda fx, v=_value: [("Authorization", v(fx))] + JSON_CT,
             refused_body(_ep), _expected, _check)

# Two Authorization headers: whichever is used, never a 5xx or a success.
for _name, _order in [("bad_then_good", (0, 1)), ("good_then_bad", (1, 0))]:
    for _ep in HEADER_AUTH_EPS:
        def _two(fx, order=_order):
            values = ["Bearer " + flip_signature(fx.victim.access()),
                      "Bearer " + fx.victim.access()]
            return [("Authorization", values[order[0]]), ("Authorization", values[order[1]])] \
                + JSON_CT
        case(f"authorization_twice_{_name}@{_ep.name}", _ep.method, refused_path(_ep), _two,
             refused_body(_ep), {400, 401})

# access_token in the query string of GET /api/chat/stream/.
ACCESS_TOKEN_QUERIES = [
    ("lone_percent", lambda fx: "%"),
    ("percent_nul_after_token", lambda fx: fx.victim.access() + "%00"),
    ("lone_lead_byte", lambda fx: "%C3"),
    ("raw_invalid_utf8", lambda fx: fx.victim.access() + "\udcff"),
    ("empty", lambda fx: ""),
    ("plus", lambda fx: "+"),
    ("dots_double_encoded", lambda fx: fx.victim.access().replace(".", "%252E")),
    ("refresh_token", lambda fx: fx.victim.refresh),
]
for _name, _value in ACCESS_TOKEN_QUERIES:
    case(f"access_token_{_name}@stream_get", "GET",
         lambda fx, v=_value: refused_path(STREAM_GET) + "&access_token=" + v(fx),
         [], None, 401, NOT_VALID)
case("access_token_no_equals@stream_get", "GET",
     refused_path(STREAM_GET) + "&access_token", [], None, 401, None)
case("access_token_twice_bad_first@stream_get", "GET",
     lambda fx: refused_path(STREAM_GET) + "&access_token=x&access_token=" + fx.victim.access(),
     [], None, {400, 401}, None)

# --- 6. methods ----------------------------------------------------------------------

for _ep in PATH_EPS:
    _methods = ["PUT", "PATCH", "TRACE", "FOO", "PROPFIND", "M" * 40]
    _methods += [m for m in ("GET", "POST", "DELETE") if m not in _ep.allow]
    for _m in _methods:
        _label = _m if len(_m) < 10 else f"{_m[0]}x{len(_m)}"
        _path = _ep.path if _ep not in (HISTORY_GET,) else _ep.path + "?conversation_id=default"
        case(f"method_{_label}@{_ep.name.removesuffix('_get')}", _m, _path,
             lambda fx: bearer(fx) + JSON_CT,
             b'{"message": "hi"}' if _m in ("PUT", "PATCH", "POST", "FOO") else None,
             405, method_not_allowed(_ep, _m))
    case(f"method_lowercase_get@{_ep.name.removesuffix('_get')}", "get", _ep.path,
         lambda fx: bearer(fx), None, 400)

# --- 7. headers and framing ----------------------------------------------------------


def many_headers(n, size):
    return [(f"X-Pad-{i}", "v" * size) for i in range(n)]


@per_ep
def refused_or_unauthorized(ep):
    """The same, for a row that spoils the credentials."""
    return {200, 400} if ep in OPEN_EPS else {400, 401} if ep.auth else 400


# Headers nginx must refuse (400), or may pass on (its buffers are a choice
# of the configuration): the request carries a refused payload and the
# victim's credentials, so whatever reaches a responder is refused there
# too. Never a 5xx. name, headers, expected
HEADER_ROWS = [
    ("authorization_20KiB", lambda fx: [("Authorization", "Bearer " + "A" * (20 * 1024))],
     refused_or_unauthorized),
    # Just under 64 KiB: one header line that fits a 64k buffer.
    ("authorization_63KiB", lambda fx: [("Authorization", "Bearer " + "A" * (63 * 1024))],
     refused_or_unauthorized),
    ("authorization_100KiB", lambda fx: [("Authorization", "Bearer " + "A" * (100 * 1024))],
     refused_or_unauthorized),
    ("any_header_20KiB", lambda fx: bearer(fx) + [("X-Junk", "j" * (20 * 1024))],
     refused_or_open),
    ("cookie_20KiB", lambda fx: bearer(fx) + [("Cookie", "c=" + "j" * (20 * 1024))],
     refused_or_open),
    ("2000_headers", lambda fx: bearer(fx) + many_headers(2000, 40), refused_or_open),
    # Headers nginx may accept whose FastCGI parameters together pass 64 KiB
    # (one FastCGI record): 4 x 16,300 bytes fit 4 buffers of 16k.
    ("four_headers_of_16300_bytes", lambda fx: bearer(fx) + [(f"X-Junk-{i}", "j" * 16300)
                                                            for i in range(4)], refused_or_open),
    ("four_headers_of_15000_bytes", lambda fx: bearer(fx) + [(f"X-Junk-{i}", "j" * 15000)
                                                            for i in range(4)], refused_or_open),
    ("eight_headers_of_12KiB", lambda fx: bearer(fx) + [(f"X-Junk-{i}", "j" * 12288)
                                                       for i in range(8)], refused_or_open),
    ("two_headers_of_40KiB", lambda fx: bearer(fx) + [(f"X-Junk-{i}", "j" * 40960)
                                                     for i in range(2)], refused_or_open),
    ("raw_nul_in_header", lambda fx: bearer(fx) + [("X-Junk", "a\x00b")], 400),
    ("raw_nul_in_authorization", lambda fx: [("Authorization", "Bearer " + fx.victim.access()
                                              + "\x00")], 400),
    ("raw_nul_in_content_type", lambda fx: bearer(fx) + [("Content-Type",
                                                          "application/json\x00x")], 400),
    ("no_host", lambda fx: bearer(fx) + [("Host", None)], 400),
    ("two_hosts", lambda fx: bearer(fx) + [("Host", "a"), ("Host", "b")], 400),
    ("expect_unknown", lambda fx: bearer(fx) + [("Expect", "banana")], per_ep(
        lambda ep: {200, 400, 417} if ep in OPEN_EPS else {400, 417})),
]

for _name, _headers, _expected in HEADER_ROWS:
    row(_name, ALL_EPS, headers=_headers, expected=_expected,
        path=per_ep(refused_path), body=per_ep(refused_body))

# Request lines nginx must refuse (or may pass on). A header line without a
# colon and an odd HTTP version are smuggled in through the request target.
REQUEST_LINE_ROWS = [
    ("header_line_without_colon",
     lambda ep: refused_path(ep) + " HTTP/1.1\r\nX-No-Colon-Here\r\nX-Y: z",
     refused_or_open),
    ("http_version_2_0", lambda ep: refused_path(ep) + " HTTP/2.0\r\nX-Y: z", 400),
    ("http_version_1_9", lambda ep: refused_path(ep) + " HTTP/1.9\r\nX-Y: z", refused_or_open),
    ("unknown_protocol", lambda ep: refused_path(ep) + " FOO/1.1\r\nX-Y: z", 400),
    ("path_percent_nul", lambda ep: ep.path + "%00" + refused_path(ep)[len(ep.path):], 400),
    ("path_300KiB", lambda ep: ep.path + "a" * (300 * 1024), 414),
    ("path_dot_dot_above_root", lambda ep: "/../.." + refused_path(ep), 400),
    ("asterisk_target", lambda ep: "*", 400),
]
for _name, _target, _expected in REQUEST_LINE_ROWS:
    row(_name, ALL_EPS, path=per_ep(_target), expected=_expected, body=per_ep(refused_body))

# Many headers that fit: the responders see them all, and still answer the
# bad input (no credentials, no body) as usual.
for _ep in ALL_EPS:
    _exp = 200 if _ep in OPEN_EPS else 400 if _ep in TOKEN_EPS else 401
    _check = (health_ok if _ep is HEALTH else metrics_ok if _ep is METRICS else
              detail_is(NO_CREDENTIALS) if _exp == 401 else None)
    case(f"300_headers_no_credentials@{_ep.name}", _ep.method, _ep.path,
         many_headers(300, 40), b"" if _ep.method == "POST" else None, _exp, _check)


def padded(size):
    """A JSON object of exactly `size` bytes (refused whatever its size)."""
    head, tail = b'{"message": "hi", "conversation_id": "../x", "pad": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


def chunked(data, size=1 << 16):
    out = b""
    for i in range(0, len(data), size):
        part = data[i:i + size]
        out += b"%x\r\n" % len(part) + part + b"\r\n"
    return out + b"0\r\n\r\n"


def framing_headers(extra):
    return lambda fx: bearer(fx) + JSON_CT + extra


# Body framing and size. name, endpoints, extra headers, body, expected
SIZE_ROWS = [
    ("body_1MiB_plus_1", BODY_EPS, [], padded(BODY_MAX + 1), 413),
    ("body_2MiB_plus_1", ALL_EPS, [], padded(NGINX_BODY_MAX + 1), 413),
    ("body_3MiB", ALL_EPS, [], padded(3 << 20), 413),
    ("declared_3MiB_nothing_sent", ALL_EPS, [("Content-Length", str(3 << 20))], b"", 413),
    ("content_length_20_digits", ALL_EPS, [("Content-Length", "9" * 20)], b"", {400, 413}),
    ("content_length_negative", ALL_EPS, [("Content-Length", "-1")], b"", 400),
    ("content_length_not_a_number", ALL_EPS, [("Content-Length", "ten")], b"", 400),
    ("content_length_twice", ALL_EPS, [("Content-Length", "2"), ("Content-Length", "3")],
     b"{}", 400),
    ("content_length_and_chunked", ALL_EPS, [("Content-Length", "2"),
                                             ("Transfer-Encoding", "chunked")],
     chunked(b"{}"), 400),
    ("chunked_1MiB_plus_1", BODY_EPS, [("Transfer-Encoding", "chunked")],
     chunked(padded(BODY_MAX + 1)), 413),
    ("chunked_3MiB", BODY_EPS, [("Transfer-Encoding", "chunked")], chunked(padded(3 << 20)), 413),
    ("chunked_bad_size", BODY_EPS, [("Transfer-Encoding", "chunked")], b"zz\r\nhello\r\n0\r\n\r\n",
     400),
    ("transfer_encoding_gzip", BODY_EPS, [("Transfer-Encoding", "gzip")], b"{}", 400),
    ("transfer_encoding_identity", BODY_EPS, [("Transfer-Encoding", "identity")], b"{}", 400),
]
for _name, _eps, _extra, _body, _expected in SIZE_ROWS:
    row(_name, _eps, headers=framing_headers(_extra), body=_body, expected=_expected,
        path=per_ep(refused_path))

# --- the rows that must succeed (run as the prober; they may store) -------------------

ACCEPTED = [
    ("message_exactly_16KiB", CHAT_BODY_EPS, lambda ep: chat_body(EXACT, "controls")),
    ("message_exactly_16KiB_multibyte", CHAT_BODY_EPS,
     lambda ep: chat_body("é" * (MESSAGE_MAX // 2), "controls")),
    ("message_16KiB_plus_surrounding_blanks", CHAT_BODY_EPS,
     lambda ep: chat_body(" \n" + EXACT + "\t ", "controls")),
    ("conversation_64_chars", CHAT_BODY_EPS, lambda ep: chat_body("hi", "c" * 64)),
]
for _name, _eps, _body in ACCEPTED:
    for _ep in _eps:
        case(f"accepted_{_name}@{_ep.name}", _ep.method, _ep.path,
             lambda fx: bearer(fx, "prober") + JSON_CT, _body(_ep), 200,
             chat_ok if _ep is CHAT else stream_ok)
case("accepted_message_exactly_16KiB@stream_get", "GET",
     STREAM_GET.path + "?conversation_id=controls&message=" + EXACT,
     lambda fx: bearer(fx, "prober"), None, 200, stream_ok)
case("accepted_message_exactly_16KiB_encoded@stream_get", "GET",
     STREAM_GET.path + "?conversation_id=controls&message=" + "%61" * MESSAGE_MAX,
     lambda fx: bearer(fx, "prober"), None, 200, stream_ok)
case("accepted_message_plus_is_space@stream_get", "GET",
     STREAM_GET.path + "?conversation_id=controls&message=hi+there",
     lambda fx: bearer(fx, "prober"), None, 200, stream_ok)
case("accepted_message_with_escaped_backslash_u0000@chat", "POST", CHAT.path,
     lambda fx: bearer(fx, "prober") + JSON_CT,
     b'{"message": "the text \\\\u0000 is not a NUL", "conversation_id": "controls"}', 200,
     chat_ok)

# --- the tests -----------------------------------------------------------------------


def test_the_victims_history_is_stored_before_any_bad_input(stack):
    fx = fixture(stack)
    rows = user_messages(stack, fx.victim.id)
    assert rows == fx.victim_before, rows


def assert_json_reason(r, expected_key):
    ctype = r.headers.get("content-type", "")
    assert ctype.startswith("application/json"), f"Content-Type {ctype!r}: {r}"
    body = r.json()
    assert isinstance(body, dict) and body, f"not a JSON object with a reason: {r}"
    reasons = {k: v for k, v in body.items()
               if (k == "detail" and isinstance(v, str) and v)
               or (isinstance(v, list) and v and all(isinstance(x, str) and x for x in v))}
    assert reasons, f"no reason (a detail or a field's messages) in {body}"
    if expected_key is not None:
        assert expected_key in body, f"the reason is not under {expected_key!r}: {body}"


@harness.cases(CASES)
def test_bad_input(stack, case):
    name, method, path, headers, body, expected, check = case
    fx = fixture(stack)
    expected = {expected} if isinstance(expected, int) else set(expected)
    target = resolve(path, fx)
    hdrs = list(resolve(headers, fx) or [])
    data = resolve(body, fx)
    big = data is not None and len(data) > 100000
    raw = build_raw(stack.port, method, target, hdrs, data)
    bad = not expected & {200, 204}
    fx.tried += bad
    fx.controls += not bad
    victim_rows = user_messages(stack, fx.victim.id) if bad else None
    try:
        r = exchange(stack.port, raw, method, BIG_DEADLINE if big else DEADLINE)
        damage = ""
        if bad:
            after = user_messages(stack, fx.victim.id)
            if after != victim_rows:
                damage = (
                    f"\n  ...and it changed the victim's stored history: "
                    f"gone {[m[:4] for m in victim_rows if m not in after]}, "
                    f"new {[m[:4] for m in after if m not in victim_rows]}")
        assert r.status < 500, f"a {r.status} for a bad input: {r}{damage}"
        assert r.status in expected, f"status {r.status}, want {sorted(expected)}: {r}{damage}"
        if r.status >= 400:
            assert_json_reason(r, check if isinstance(check, str) else None)
            if r.status == 401:
                assert r.headers.get("www-authenticate") == 'Bearer realm="api"', r.headers
        if callable(check):
            check(r, fx)
        assert not damage, damage.strip()
    except AssertionError:
        fx.failed.append(name)
        raise


def test_service_still_answers_and_stored_history_is_unchanged(stack):
    fx = fixture(stack)
    print(f"bad inputs tried: {fx.tried}, plus {fx.controls} rows that must succeed "
          f"({len(CASES)} cases in the table); {len(fx.failed)} failed"
          + (": " + ", ".join(fx.failed) if fx.failed else ""))
    # Login, a chat, a stream, health: as if nothing had happened.
    access, _ = stack.login(fx.victim.name, fx.victim.password)
    r = stack.request("POST", "/api/chat/", json={"message": "still there?",
                                                  "conversation_id": "after"},
                      token=fx.prober.access(), timeout=DEADLINE)
    assert r.status == 200 and r.json().get("response"), r
    events = stack.sse("/api/chat/stream/", token=fx.prober.access(), method="POST",
                       json={"message": "and streaming?", "conversation_id": "after"},
                       timeout=DEADLINE)
    assert events.status == 200, (events.status, events.body)
    assert events.named("done"), list(events)
    r = stack.request("GET", "/api/health/", timeout=DEADLINE)
    assert r.status == 200 and r.json().get("status") == "ok", r
    assert stack.restart_counts() == fx.restarts, \
        f"responders restarted during this module: {stack.restart_counts()} (was {fx.restarts})"
    # Every row stored before the first bad input is byte-identical, no bad
    # input stored anything for the victim, and the API still shows it all.
    now = {m[0]: m for m in all_messages(stack)}
    changed = [m[:4] for m in fx.before if now.get(m[0]) != m]
    new_for_victim = [m[:4] for m in user_messages(stack, fx.victim.id) if m not in fx.before]
    assert not changed, f"stored rows changed or gone after the bad inputs: {changed}"
    assert not new_for_victim, f"bad input stored messages for the victim: {new_for_victim}"
    r = stack.request("GET", "/api/chat/history/?conversation_id=default", token=access)
    assert r.status == 200, r
    shown = [(m["id"], m["role"], m["content"]) for m in r.json()["messages"]]
    want = [(m[0], m[3], m[4].decode()) for m in fx.victim_before if m[2] == "default"]
    assert shown == want, f"history through the API: {shown}, stored: {want}"
