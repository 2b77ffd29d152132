"""The JWT signing key (issue 10, items 10 and 14): a removed secret.key is
not an outage. Across `jarvasctl restart` (each responder re-executes
itself) the key travels in memory, every reload says so loudly in the log,
and /api/health/ reports "degraded"; a fresh start refuses to make a new
key while users exist, and `jarvasctl new-key` makes one on purpose.
JARVAS_SECRET_KEY must be as long as the file's key (32 bytes)."""

import hashlib
import os
import hmac
import re
import time

import harness

RESPONDERS = ("token", "chat", "chat_stream")
LOUD = "SECRET KEY FILE MISSING"


def pids(stack):
    return {p.name: p.read_text().strip() for p in (stack.state / "run").glob("*.pid")
            if p.stem in RESPONDERS}


def loud_lines(stack):
    return {name: (stack.state / "log" / f"{name}.log").read_text(errors="replace").count(LOUD)
            for name in RESPONDERS}


def wait_for(pred, seconds, what):
    deadline = time.monotonic() + seconds
    while not pred():
        if time.monotonic() > deadline:
            raise AssertionError(f"not within {seconds}s: {what}")
        time.sleep(0.1)


def history_status(stack, access):
    return stack.request("GET", "/api/chat/history/?conversation_id=default", token=access).status


def health(stack):
    r = stack.request("GET", "/api/health/")
    return r.status, r.json()


@harness.stack_env(JARVAS_PROMPT_CACHE_TTL="3598")  # a stack of its own
@harness.timeout(180)
def test_a_removed_key_file_survives_reloads_with_the_key_in_memory(stack):
    name, pw = stack.user("keep")
    access, refresh = stack.login(name, pw)
    key = stack.secret_key()
    (stack.state / "secret.key").unlink()
    status, body = health(stack)
    assert status == 200 and body["status"] == "degraded", body
    assert body["secret_key"].startswith("missing:"), body
    before = pids(stack)

    for reload in (1, 2):  # loud on every reload, not just the first
        r = stack.jarvasctl("restart", timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        wait_for(lambda: all(n >= reload for n in loud_lines(stack).values()), 30,
                 f"reload {reload} logged by every responder: {loud_lines(stack)}")
        wait_for(lambda: health(stack)[0] == 200, 30, "health answers again")

    assert pids(stack) == before, "a responder was replaced instead of reloaded"
    assert not (stack.state / "secret.key").exists(), "a key file was made behind our back"
    # Old tokens, refresh and new logins all work with the key kept.
    assert history_status(stack, access) == 200
    r = stack.request("POST", "/api/token/refresh/", json={"refresh": refresh})
    assert r.status == 200, r
    access2, _ = stack.login(name, pw)
    assert history_status(stack, access2) == 200
    # ...and what is signed now is signed with that same key.
    signing_input, _, sig = access2.rpartition(".")
    assert hmac.compare_digest(
        harness.b64url_decode(sig),
        hmac.new(key, signing_input.encode(), hashlib.sha256).digest())
    status, body = health(stack)
    assert status == 200 and body["status"] == "degraded", body
    assert "new-key" in body["secret_key"], body
    # Putting the file back is the cure.
    (stack.state / "secret.key").write_bytes(key + b"\n")
    (stack.state / "secret.key").chmod(0o600)
    owner = (stack.state / "jarvas.db").stat()  # the responders' user, as an operator would
    os.chown(stack.state / "secret.key", owner.st_uid, owner.st_gid)
    status, body = health(stack)
    assert status == 200 and body["status"] == "ok" and body["secret_key"] == "ok", body


@harness.stack_env(JARVAS_PROMPT_CACHE_TTL="3597")
@harness.timeout(180)
def test_start_refuses_to_make_a_new_key_while_users_exist_and_new_key_makes_one(stack):
    name, pw = stack.user("lost")
    access, _ = stack.login(name, pw)
    (stack.state / "secret.key").unlink()
    assert stack.jarvasctl("stop", timeout=60).returncode == 0
    r = stack.jarvasctl("start", timeout=60)
    assert r.returncode != 0, r.stdout
    assert "refusing to make a new key" in r.stderr and "jarvasctl new-key" in r.stderr, r.stderr
    assert not (stack.state / "secret.key").exists()
    assert not pids(stack), "responders started without a key"
    # The database and its user are untouched.
    assert stack.sqlite("SELECT count(*) FROM users WHERE username = ?", (name,)) == [(1,)]

    r = stack.jarvasctl("new-key")
    assert r.returncode == 0, r.stderr
    assert "restart" in r.stdout, r.stdout
    text = (stack.state / "secret.key").read_text()
    assert re.fullmatch(r"[0-9a-f]{64}\n", text), text
    assert oct((stack.state / "secret.key").stat().st_mode & 0o777) == "0o600"
    r = stack.jarvasctl("start", timeout=60)
    assert r.returncode == 0, r.stdout + r.stderr
    assert history_status(stack, access) == 401, "a token of the old key still works"
    access, _ = stack.login(name, pw)
    assert history_status(stack, access) == 200
    status, body = health(stack)
    assert status == 200 and body["secret_key"] == "ok", body


def test_new_key_then_restart_switches_keys_and_health_says_so_between(stack):
    """The shared stack: a new key on purpose shows as "changed" until the
    restart picks it up. Then the old key's tokens end."""
    name, pw = stack.user("rotate")
    access, _ = stack.login(name, pw)
    r = stack.jarvasctl("new-key")
    assert r.returncode == 0, r.stderr
    status, body = health(stack)
    assert status == 200 and body["secret_key"].startswith("changed:"), body
    logged = {n: (stack.state / "log" / f"{n}.log").read_text().count("ready:")
              for n in RESPONDERS}
    assert stack.jarvasctl("restart", timeout=60).returncode == 0
    wait_for(lambda: all((stack.state / "log" / f"{n}.log").read_text().count("ready:")
                         > logged[n] for n in RESPONDERS), 30, "every responder reloaded")
    status, body = health(stack)
    assert status == 200 and body["secret_key"] == "ok", body
    assert history_status(stack, access) == 401
    access, _ = stack.login(name, pw)
    assert history_status(stack, access) == 200


SHORT_KEYS = [("31_bytes", "k" * 31), ("one_byte", "k")]


@harness.cases(SHORT_KEYS)
def test_a_short_jarvas_secret_key_is_a_startup_error(stack, case):
    _, key = case
    other = harness.Stack({"JARVAS_SECRET_KEY": key})
    try:
        other.start()
    except harness.StackError as e:
        assert "JARVAS_SECRET_KEY: too short" in str(e), str(e)[-2000:]
    else:
        raise AssertionError("the stack started with a short JARVAS_SECRET_KEY")
    finally:
        other.stop()
