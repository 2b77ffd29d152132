"""Authentication (API.md "Authentication"): /api/token/, /api/token/refresh/,
/api/token/verify/ behave as SimpleJWT's views do. Cases are tables; each row
is reported as a test of its own."""

import hashlib
import hmac
import os
import re
import sqlite3
import stat
import time

import harness
from harness import b64url, jwt_parts, jwt_sign

NO_ACCOUNT = {"detail": "No active account found with the given credentials"}
INVALID = {"detail": "Token is invalid or expired", "code": "token_not_valid"}
REQUIRED = ["This field is required."]
ACCESS_LIFETIME = 5 * 60
REFRESH_LIFETIME = 24 * 60 * 60


def fixture(stack):
    """One user and a fresh pair of tokens per stack, made on first use."""
    f = getattr(stack, "_token_fixture", None)
    if f is None:
        name, password = stack.user("tok")
        access, refresh = stack.login(name, password)
        (uid,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (name,))[0]
        f = stack._token_fixture = dict(name=name, password=password, access=access,
                                        refresh=refresh, user_id=uid)
    return f


def claims_for(stack, token_type="access", **over):
    now = int(time.time())
    life = ACCESS_LIFETIME if token_type == "access" else REFRESH_LIFETIME
    c = {"token_type": token_type, "exp": now + life, "iat": now,
         "jti": os.urandom(16).hex(), "user_id": fixture(stack)["user_id"]}
    c.update(over)
    return {k: v for k, v in c.items() if v is not None}


def forge(stack, token_type="access", header=None, **over):
    """A token signed with the server's own key (so only what we change in it
    can make it invalid)."""
    return jwt_sign(header or {"alg": "HS256", "typ": "JWT"},
                    claims_for(stack, token_type, **over), stack.secret_key())


def tamper(token):
    """Flip one bit of the signature's first byte."""
    h, c, s = token.split(".")
    sig = bytearray(harness.b64url_decode(s))
    sig[0] ^= 1
    return f"{h}.{c}.{b64url(bytes(sig))}"


def hs512(stack):
    h, c, _ = forge(stack).split(".")
    h = b64url(b'{"alg":"HS512","typ":"JWT"}')
    sig = hmac.new(stack.secret_key(), f"{h}.{c}".encode(), hashlib.sha512).digest()
    return f"{h}.{c}.{b64url(sig)}"


def alg_none(stack, keep_signature=False):
    h, c, s = forge(stack).split(".")
    h = b64url(b'{"alg":"none","typ":"JWT"}')
    return f"{h}.{c}." + (s if keep_signature else "")


def post(stack, path, **kw):
    return stack.request("POST", path, **kw)


def check_jwt(stack, token, token_type, lifetime, user_id):
    header, claims = jwt_parts(token)
    assert header.get("alg") == "HS256", header
    signing_input, _, sig = token.rpartition(".")
    want = hmac.new(stack.secret_key(), signing_input.encode(), hashlib.sha256).digest()
    assert hmac.compare_digest(harness.b64url_decode(sig), want), \
        "signature is not HMAC-SHA256 with the state dir's key"
    assert set(claims) >= {"token_type", "exp", "iat", "jti", "user_id"}, claims
    assert claims["token_type"] == token_type, claims
    assert claims["exp"] - claims["iat"] == lifetime, claims
    assert abs(claims["iat"] - time.time()) < 60, claims
    assert isinstance(claims["jti"], str) and claims["jti"], claims
    assert int(claims["user_id"]) == user_id, (claims, user_id)
    return claims


# --- obtain ------------------------------------------------------------------


def test_login_returns_an_hs256_access_and_refresh_pair(stack):
    f = fixture(stack)
    r = post(stack, "/api/token/", json={"username": f["name"], "password": f["password"]})
    assert r.status == 200, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    body = r.json()
    assert set(body) == {"refresh", "access"}, body
    a = check_jwt(stack, body["access"], "access", ACCESS_LIFETIME, f["user_id"])
    b = check_jwt(stack, body["refresh"], "refresh", REFRESH_LIFETIME, f["user_id"])
    assert a["jti"] != b["jti"], "access and refresh share a jti"


def test_login_accepts_a_form_encoded_body(stack):
    f = fixture(stack)
    r = post(stack, "/api/token/", form={"username": f["name"], "password": f["password"]})
    assert r.status == 200, r
    assert set(r.json()) == {"refresh", "access"}, r


BAD_CREDENTIALS = [
    ("wrong_password", lambda f: {"username": f["name"], "password": f["password"] + "x"}),
    ("unknown_user", lambda f: {"username": f["name"] + "-nobody", "password": f["password"]}),
    ("username_in_other_case", lambda f: {"username": f["name"].upper(), "password": f["password"]}),
    ("password_with_trailing_newline",
     lambda f: {"username": f["name"], "password": f["password"] + "\n"}),
]


@harness.cases(BAD_CREDENTIALS)
def test_login_with_wrong_credentials_is_401(stack, case):
    _, body = case
    r = post(stack, "/api/token/", json=body(fixture(stack)))
    assert r.status == 401, r
    assert r.json() == NO_ACCOUNT, r


MISSING_FIELDS = [
    ("no_fields", {}, {"username": REQUIRED, "password": REQUIRED}),
    ("no_username", {"password": "x"}, {"username": REQUIRED}),
    ("no_password", {"username": "x"}, {"password": REQUIRED}),
]


@harness.cases(MISSING_FIELDS)
def test_login_missing_field_is_400_per_field(stack, case):
    _, body, want = case
    r = post(stack, "/api/token/", json=body)
    assert r.status == 400, r
    assert r.json() == want, r


BLANK = ["This field may not be blank."]
# name, path, body, expected body (DRF: a blank string is not a missing field)
BLANK_FIELDS = [
    ("login_blank_username", "/api/token/", {"username": "", "password": "x"}, {"username": BLANK}),
    ("login_blank_password", "/api/token/", {"username": "x", "password": ""}, {"password": BLANK}),
    ("refresh_blank", "/api/token/refresh/", {"refresh": ""}, {"refresh": BLANK}),
    ("verify_blank", "/api/token/verify/", {"token": ""}, {"token": BLANK}),
]


@harness.cases(BLANK_FIELDS)
def test_blank_field_is_400_per_field(stack, case):
    _, path, body, want = case
    r = post(stack, path, json=body)
    assert r.status == 400, r
    assert r.json() == want, r


def test_passwd_and_deluser_take_effect_at_once(stack):
    name, old = stack.user("pw")
    stack.login(name, old)
    r = stack.jarvasctl("passwd", name, input="new-secret\n")
    assert r.returncode == 0, r.stderr
    assert post(stack, "/api/token/", json={"username": name, "password": old}).status == 401
    stack.login(name, "new-secret")
    r = stack.jarvasctl("deluser", name)
    assert r.returncode == 0, r.stderr
    r = post(stack, "/api/token/", json={"username": name, "password": "new-secret"})
    assert r.status == 401 and r.json() == NO_ACCOUNT, r


def test_passwords_are_stored_only_as_a_slow_salted_hash(stack):
    a, pw = stack.user("hash")
    b = stack.unique_name("hash")
    stack.adduser(b, pw)  # same password, different salt
    rows = dict(stack.sqlite("SELECT username, password_hash FROM users WHERE username IN (?, ?)",
                             (a, b)))
    assert pw not in rows[a] and len(rows[a]) >= 32, rows[a]
    assert rows[a] != rows[b], "same password gave the same hash: no salt"


def test_secret_key_file_is_private_64_hex_characters(stack):
    path = stack.state / "secret.key"
    assert stat.S_IMODE(path.stat().st_mode) == 0o600, oct(path.stat().st_mode)
    text = path.read_text()
    assert len(text) == 65 and text.endswith("\n"), repr(text)
    int(text[:64], 16)


# --- refresh -----------------------------------------------------------------


def test_refresh_gives_a_new_access_token(stack):
    f = fixture(stack)
    r = post(stack, "/api/token/refresh/", json={"refresh": f["refresh"]})
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"access"}, body
    check_jwt(stack, body["access"], "access", ACCESS_LIFETIME, f["user_id"])
    r = post(stack, "/api/token/verify/", json={"token": body["access"]})
    assert r.status == 200 and r.json() == {}, r


# name, token made from the stack
REFRESH_REJECTS = [
    ("access_token", lambda s: fixture(s)["access"]),
    ("garbage", lambda s: "not.a.jwt"),
    ("tampered_signature", lambda s: tamper(fixture(s)["refresh"])),
    ("expired", lambda s: forge(s, "refresh", exp=int(time.time()) - 10,
                                iat=int(time.time()) - REFRESH_LIFETIME - 10)),
    ("alg_none", lambda s: alg_none(s)),
    ("alg_hs512", hs512),
    ("signed_with_another_key", lambda s: jwt_sign({"alg": "HS256", "typ": "JWT"},
                                                    claims_for(s, "refresh"), b"another key")),
]


@harness.cases(REFRESH_REJECTS)
def test_refresh_rejects_bad_tokens_with_401(stack, case):
    _, make = case
    r = post(stack, "/api/token/refresh/", json={"refresh": make(stack)})
    assert r.status == 401, r
    assert r.json() == INVALID, r


def test_refresh_without_the_field_is_400(stack):
    r = post(stack, "/api/token/refresh/", json={"token": fixture(stack)["refresh"]})
    assert r.status == 400 and r.json() == {"refresh": REQUIRED}, r


# --- verify ------------------------------------------------------------------

# name, token made from the stack, expected status
VERIFY = [
    ("valid_access", lambda s: fixture(s)["access"], 200),
    ("valid_refresh", lambda s: fixture(s)["refresh"], 200),
    ("forged_with_the_server_key", lambda s: forge(s), 200),
    ("garbage", lambda s: "garbage", 401),
    ("three_garbage_parts", lambda s: "a.b.c", 401),
    ("tampered_signature", lambda s: tamper(fixture(s)["access"]), 401),
    ("tampered_claims", lambda s: ".".join([fixture(s)["access"].split(".")[0],
                                            b64url(b'{"token_type":"access","user_id":1,'
                                                   b'"exp":9999999999,"iat":1,"jti":"x"}'),
                                            fixture(s)["access"].split(".")[2]]), 401),
    ("alg_none_unsigned", lambda s: alg_none(s), 401),
    ("alg_none_with_signature", lambda s: alg_none(s, keep_signature=True), 401),
    ("alg_hs512", hs512, 401),
    ("expired", lambda s: forge(s, exp=int(time.time()) - 10,
                                iat=int(time.time()) - ACCESS_LIFETIME - 10), 401),
    ("no_exp_claim", lambda s: forge(s, exp=None), 401),
    ("signed_with_another_key", lambda s: jwt_sign({"alg": "HS256", "typ": "JWT"},
                                                    claims_for(s), b"another key"), 401),
    ("bearer_prefix", lambda s: "Bearer " + fixture(s)["access"], 401),
]


@harness.cases(VERIFY)
def test_verify(stack, case):
    _, make, status = case
    r = post(stack, "/api/token/verify/", json={"token": make(stack)})
    assert r.status == status, r
    assert r.json() == ({} if status == 200 else INVALID), r


def test_verify_without_the_field_is_400(stack):
    r = post(stack, "/api/token/verify/", json={})
    assert r.status == 400 and r.json() == {"token": REQUIRED}, r


# --- bodies, paths, methods --------------------------------------------------

# name, body bytes, content type
BAD_BODIES = [
    ("malformed_json", b'{"username": "a", "password": ', "application/json"),
    ("not_json_at_all", b"hello", "application/json"),
    ("json_array", b'["a", "b"]', "application/json"),
    ("json_string", b'"username"', "application/json"),
    ("empty_body", b"", "application/json"),
    ("object_as_username", b'{"username": {"a": 1}, "password": "x"}', "application/json"),
    ("invalid_utf8", b'{"username": "\xff\xfe", "password": "x"}', "application/json"),
]


@harness.cases(BAD_BODIES)
def test_login_with_a_bad_body_is_400_json(stack, case):
    _, body, ctype = case
    r = post(stack, "/api/token/", body=body, headers={"Content-Type": ctype})
    assert r.status == 400, r
    assert isinstance(r.json(), dict), r


def padded_login(size):
    """A JSON login body of exactly `size` bytes."""
    head, tail = b'{"username": "nobody", "password": "x", "pad": "', b'"}'
    return head + b"a" * (size - len(head) - len(tail)) + tail


# name, body size, expected status (the responder caps at 1 MiB, nginx at 2 MiB)
BODY_SIZES = [
    ("exactly_1_MiB", 1 << 20, 401),
    ("1_MiB_plus_1", (1 << 20) + 1, 413),
    ("3_MiB", 3 << 20, 413),
]


@harness.cases(BODY_SIZES)
def test_body_size_limit(stack, case):
    _, size, status = case
    r = post(stack, "/api/token/", body=padded_login(size),
             headers={"Content-Type": "application/json"})
    assert r.status == status, r
    assert r.headers.get("content-type", "").startswith("application/json"), r.headers
    if status == 413:
        assert "detail" in r.json(), r


SLASH_PATHS = [
    ("/api/token", {"username": "nobody", "password": "x"}, 401),
    ("/api/token/", {"username": "nobody", "password": "x"}, 401),
    ("/api/token/refresh", {"refresh": "x"}, 401),
    ("/api/token/refresh/", {"refresh": "x"}, 401),
    ("/api/token/verify", {"token": "x"}, 401),
    ("/api/token/verify/", {"token": "x"}, 401),
]


@harness.cases(SLASH_PATHS)
def test_trailing_slash_is_optional(stack, case):
    path, body, status = case
    r = post(stack, path, json=body)
    assert r.status == status, r


UNKNOWN_PATHS = ["/api/token/nope", "/api/token/nope/", "/api/token/refresh/x",
                 "/api/token//", "/api/tokens/", "/api/token/verify/extra/"]


@harness.cases(UNKNOWN_PATHS)
def test_unknown_path_is_404_json(stack, path):
    r = post(stack, path, json={"username": "a", "password": "b"})
    assert r.status == 404, r
    assert r.json() == {"detail": "Not found."}, r


WRONG_METHODS = [(f"{m}_{p}", m, p) for p in ("/api/token/", "/api/token/refresh/",
                                               "/api/token/verify/")
                 for m in ("GET", "PUT", "DELETE", "PATCH")]


@harness.cases(WRONG_METHODS)
def test_wrong_method_is_405_with_allow(stack, case):
    _, method, path = case
    r = stack.request(method, path, json={} if method in ("PUT", "PATCH") else None)
    assert r.status == 405, r
    assert "POST" in r.headers.get("allow", ""), r.headers
    assert r.json() == {"detail": f'Method "{method}" not allowed.'}, r


# --- configuration ------------------------------------------------------------


@harness.stack_env(JARVAS_ACCESS_LIFETIME="60", JARVAS_REFRESH_LIFETIME="120")
def test_token_lifetimes_are_configurable(stack):
    f = fixture(stack)
    check_jwt(stack, f["access"], "access", 60, f["user_id"])
    check_jwt(stack, f["refresh"], "refresh", 120, f["user_id"])


@harness.stack_env(JARVAS_SECRET_KEY="a key given in the environment, 32+ bytes")
def test_secret_key_from_the_environment_is_used_verbatim(stack):
    f = fixture(stack)
    check_jwt(stack, f["access"], "access", ACCESS_LIFETIME, f["user_id"])
    r = post(stack, "/api/token/verify/", json={"token": forge(stack)})
    assert r.status == 200, r


# --- revocation: deleted users, changed passwords (issue 10, item 2) -----------

PASSWORD_CHANGED = {"detail": "The user's password has been changed.",
                    "code": "password_changed"}


def history_of(stack, access, conversation_id="default"):
    return stack.request("GET", f"/api/chat/history/?conversation_id={conversation_id}",
                         token=access)


def say(stack, access, text):
    r = stack.request("POST", "/api/chat/", json={"message": text}, token=access)
    assert r.status == 200, r


def test_tokens_carry_simplejwts_hash_password_claim(stack):
    """CHECK_REVOKE_TOKEN's claim: MD5 of the stored hash, upper-case hex."""
    f = fixture(stack)
    (stored,) = stack.sqlite("SELECT password_hash FROM users WHERE id = ?", (f["user_id"],))[0]
    want = hashlib.md5(stored.encode()).hexdigest().upper()
    r = post(stack, "/api/token/refresh/", json={"refresh": f["refresh"]})
    assert r.status == 200, r
    for token in (f["access"], f["refresh"], r.json()["access"]):
        assert jwt_parts(token)[1].get("hash_password") == want, jwt_parts(token)


def test_a_password_change_ends_every_token_issued_before_it(stack):
    name, old = stack.user("revoke")
    access, refresh = stack.login(name, old)
    assert history_of(stack, access).status == 200
    r = stack.jarvasctl("passwd", name, input="another-secret\n")
    assert r.returncode == 0, r.stderr
    r = history_of(stack, access)
    assert r.status == 401 and r.json() == PASSWORD_CHANGED, r
    r = post(stack, "/api/token/refresh/", json={"refresh": refresh})
    assert r.status == 401 and r.json() == PASSWORD_CHANGED, r
    # The new password gives tokens that work, refresh included.
    access, refresh = stack.login(name, "another-secret")
    assert history_of(stack, access).status == 200
    r = post(stack, "/api/token/refresh/", json={"refresh": refresh})
    assert r.status == 200, r
    assert history_of(stack, r.json()["access"]).status == 200


def test_a_deleted_users_tokens_never_reach_the_next_user(stack):
    """Delete the newest user, add another: the new one gets a new id, and
    the deleted user's tokens are refused rather than read the new user's
    history (SQLite reused the largest rowid before AUTOINCREMENT)."""
    gone, pw = stack.user("gone")
    access, refresh = stack.login(gone, pw)
    (gone_id,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (gone,))[0]
    assert stack.jarvasctl("deluser", gone).returncode == 0
    heir, heir_pw = stack.user("heir")
    heir_access, _ = stack.login(heir, heir_pw)
    say(stack, heir_access, "the heir's private words")
    (heir_id,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (heir,))[0]
    assert heir_id > gone_id, (gone_id, heir_id)

    r = history_of(stack, access)
    assert r.status == 401 and r.json()["code"] == "user_not_found", r
    r = post(stack, "/api/token/refresh/", json={"refresh": refresh})
    assert r.status == 401 and r.json()["code"] == "no_active_account", r
    r = stack.request("POST", "/api/chat/", json={"message": "hi"}, token=access)
    assert r.status == 401, r
    # ...and nothing the heir said, however the old token is presented.
    r = stack.request("GET", "/api/chat/stream/?message=hi&access_token=" + access)
    assert r.status == 401 and b"private words" not in r.body, r
    assert [m for (m,) in stack.sqlite("SELECT content FROM messages WHERE user_id = ?",
                                       (heir_id,))][0] == "the heir's private words"


def test_a_token_without_the_claim_or_with_anothers_is_refused(stack):
    """Forged with the server's own key: only the claim is wrong."""
    f = fixture(stack)
    for claim in (None, "0" * 32, hashlib.md5(b"x").hexdigest().upper(), 5):
        token = forge(stack, hash_password=claim)
        r = history_of(stack, token)
        assert r.status == 401 and r.json() == PASSWORD_CHANGED, (claim, r)
        r = post(stack, "/api/token/refresh/",
                 json={"refresh": forge(stack, "refresh", hash_password=claim)})
        assert r.status == 401 and r.json() == PASSWORD_CHANGED, (claim, r)
    assert history_of(stack, f["access"]).status == 200


def old_schema_blocks():
    """schema.sql's migrations 1 and 2, as shipped before migration 3."""
    text = (harness.ROOT / "schema.sql").read_text()
    parts = re.split(r"(?m)^-- migrate: (\d+)\n", text)
    return [(int(v), sql) for v, sql in zip(parts[1::2], parts[2::2]) if int(v) <= 2]


@harness.stack_env(JARVAS_PROMPT_CACHE_TTL="3599")  # a stack of its own
def test_migration_3_rebuilds_users_in_place_keeping_rows_ids_and_messages(stack):
    # Real password hashes from the real program, then a database as the
    # old schema made it, with a gap in the ids and history for two users.
    people = [stack.user("mig") for _ in range(3)]
    hashes = dict(stack.sqlite("SELECT username, password_hash FROM users"))
    assert stack.jarvasctl("stop").returncode == 0
    for suffix in ("", "-wal", "-shm"):
        (stack.state / f"jarvas.db{suffix}").unlink(missing_ok=True)
    con = sqlite3.connect(stack.state / "jarvas.db")
    con.execute("PRAGMA journal_mode = WAL")
    for version, sql in old_schema_blocks():
        con.executescript(f"BEGIN; {sql}; PRAGMA user_version = {version}; COMMIT;")
    con.execute("PRAGMA foreign_keys = ON")
    ids = [2, 5, 9]
    for uid, (name, _) in zip(ids, people):
        con.execute("INSERT INTO users (id, username, password_hash, context, created_at) "
                    "VALUES (?, ?, ?, ?, ?)",
                    (uid, name, hashes[name], f"ctx {uid}", f"2024-01-0{uid}T00:00:00.000Z"))
    rows = [(1, 2, "default", "user", "first words"), (2, 2, "default", "assistant", "reply"),
            (3, 9, "notes", "user", "kept note"), (4, 9, "notes", "assistant", "noted")]
    con.executemany("INSERT INTO messages (id, user_id, conversation_id, role, content) "
                    "VALUES (?, ?, ?, ?, ?)", rows)
    con.execute("UPDATE sequences SET value = 4 WHERE name = 'message'")
    con.commit()
    con.close()
    before_users = stack.sqlite("SELECT * FROM users ORDER BY id")
    # the columns migration 2 knew (later ones add theirs)
    columns = "id, user_id, conversation_id, role, content, complete, created_at"
    before_messages = stack.sqlite(f"SELECT {columns} FROM messages ORDER BY id")

    r = stack.jarvasctl("start", timeout=harness.START_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr + stack.logs()
    assert stack.sqlite("PRAGMA user_version")[0][0] >= 3
    (sql,) = stack.sqlite("SELECT sql FROM sqlite_schema WHERE name = 'users'")[0]
    assert "AUTOINCREMENT" in sql, sql
    assert stack.sqlite("SELECT * FROM users ORDER BY id") == before_users
    assert stack.sqlite(f"SELECT {columns} FROM messages ORDER BY id") == before_messages
    assert stack.sqlite("PRAGMA foreign_key_check") == []
    # The users log in as before and see their history.
    access, _ = stack.login(*people[2])
    r = history_of(stack, access, "notes")
    assert [m["content"] for m in r.json()["messages"]] == ["kept note", "noted"], r
    # Ids go on after the largest, and deleting still cascades.
    newcomer, _ = stack.user("mig_new")
    (nid,) = stack.sqlite("SELECT id FROM users WHERE username = ?", (newcomer,))[0]
    assert nid == 10, nid
    assert stack.jarvasctl("deluser", people[0][0]).returncode == 0
    assert stack.sqlite("SELECT count(*) FROM messages WHERE user_id = 2") == [(0,)]
    assert stack.sqlite("SELECT count(*) FROM messages") == [(2,)]
