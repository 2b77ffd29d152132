"""Operations (issue 10: items 14, 3, 5, 8 and "for a new user"): who the
processes run as and what they own, who may connect to the sockets, what
reaches the logs, the bounds nginx keeps on what it passes to the
responders, the operator's commands and the documentation of every setting.

Tests that stop or restart parts of the stack, or change its files, run on
stacks of their own (harness.stack_env). As root, the responders run as
JARVAS_USER (default jarvas); the checks that need another user switch to
it with setpriv, as jarvasctl does.
"""

import errno
import grp
import os
import pty
import pwd
import re
import select
import shutil
import socket
import stat
import subprocess
import sys
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

import harness

ROOT = harness.ROOT
RESPONDERS = ("token", "chat", "chat_stream")
AS_ROOT = os.geteuid() == 0
OWN = dict(JARVAS_USER="jarvas")  # a stack of its own (the value is the default)
# For code run as another user: the system's Python, which any user can run
# (this one may live under a 0700 home).
PYTHON = "/usr/bin/python3" if os.access("/usr/bin/python3", os.X_OK) else sys.executable


# --- helpers ---------------------------------------------------------------------------


def responders_ids(stack):
    """(uid, gid) the responders must run as: JARVAS_USER's as root, else ours."""
    if not AS_ROOT:
        return os.geteuid(), os.getegid()
    pw = pwd.getpwnam(stack.env.get("JARVAS_USER", "jarvas"))
    assert pw.pw_uid != 0
    return pw.pw_uid, pw.pw_gid


def process_ids(pid):
    """(real uid, real gid) of a process, from /proc/<pid>/status."""
    text = Path(f"/proc/{pid}/status").read_text()
    uid = int(re.search(r"^Uid:\s+(\d+)", text, re.M).group(1))
    gid = int(re.search(r"^Gid:\s+(\d+)", text, re.M).group(1))
    return uid, gid


def instance_pid(stack, inst):
    return int((stack.state / "run" / f"{inst}.pid").read_text().strip())


def run_as(user, code, *args):
    """Python code run as another user (setpriv, no supplementary groups);
    its stdout."""
    pw = pwd.getpwnam(user)
    r = subprocess.run(["setpriv", f"--reuid={pw.pw_uid}", f"--regid={pw.pw_gid}",
                        "--clear-groups", PYTHON, "-c", code, *args],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    return r.stdout.strip()


CONNECT = """
import socket, sys
s = socket.socket(socket.AF_UNIX)
try:
    s.connect(sys.argv[1])
    print("connected")
except OSError as e:
    print(e.errno)
"""


def stream_token_query(stack, message, token):
    return ("/api/chat/stream/?message=" + urllib.parse.quote(message, safe="")
            + "&access_token=" + token)


def all_logs(stack):
    """{file name: bytes} of every file in the state's log/."""
    return {p.name: p.read_bytes() for p in sorted((stack.state / "log").iterdir())
            if p.is_file()}


def stop_instance(stack, inst):
    """Stop one responder instance the way an operator's kill would: TERM
    its supervisor, which stops it and removes its socket."""
    sup = int((stack.state / "run" / f"{inst}.supervisor.pid").read_text().strip())
    os.kill(sup, 15)
    harness.wait_for(lambda: not (stack.state / "run" / f"{inst}.sock").exists(), 20,
             f"{inst} stopped")


def start_missing(stack):
    r = stack.jarvasctl("start", timeout=harness.START_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr


# --- 1. the responders' user (item 14) ----------------------------------------------------


def test_responders_run_as_the_unprivileged_user(stack):
    want = responders_ids(stack)
    for inst in RESPONDERS:
        got = process_ids(instance_pid(stack, inst))
        assert got == want, f"{inst} runs as uid/gid {got}, want {want}"
    status = stack.jarvasctl("status")
    user = pwd.getpwuid(want[0]).pw_name
    for inst in RESPONDERS:
        line = next(ln for ln in status.stdout.splitlines() if ln.startswith(inst + " "))
        assert f"user={user}" in line, status.stdout
    assert "WARNING" not in status.stdout, status.stdout


def test_what_the_responders_write_belongs_to_their_user(stack):
    uid, gid = responders_ids(stack)
    name, pw = stack.user("owner")
    access, _ = stack.login(name, pw)
    ev = stack.sse(stream_token_query(stack, "own it [[fake tokens=2]]", access))
    assert ev.status == 200 and ev.named("done"), ev
    state = stack.state
    files = [state / "jarvas.db", state / "secret.key", state / "metrics"]
    files += [p for p in (state / "jarvas.db-wal", state / "jarvas.db-shm") if p.exists()]
    files += sorted((state / "metrics").iterdir()) + sorted((state / "run").glob("streams.*"))
    files += sorted((state / "run").glob("*.sock"))
    assert len(list((state / "run").glob("streams.*"))) >= 1, "no run/streams.<pid>"
    assert len(list((state / "metrics").iterdir())) >= 3, "no metrics files"
    for p in files:
        st = p.lstat()
        assert st.st_uid == uid, f"{p} belongs to uid {st.st_uid}, want {uid}"
    # What root reads or writes stays root's: the responders cannot replace it.
    for p in [state / "nginx.conf", state / "log", state / "run" / "chat.pid",
              state / "run" / "chat.supervisor.pid", state / "run" / "chat.state"]:
        assert p.lstat().st_uid == os.geteuid(), f"{p} belongs to uid {p.lstat().st_uid}"
    for d in (state, state / "run"):
        st = d.stat()
        assert st.st_mode & 0o002 == 0, f"{d} is writable by anyone: {oct(st.st_mode)}"
        if AS_ROOT:
            # the responders' group may create files; sticky: not rename root's
            assert st.st_gid == gid and st.st_mode & 0o1070 == 0o1070, \
                f"{d}: gid {st.st_gid} mode {oct(st.st_mode)}"


def test_jarvasctl_user_commands_create_files_as_the_responders_user(stack):
    """adduser on a state dir that does not exist yet: jarvas-admin creates
    the database and the key, as the responders' user."""
    uid, _ = responders_ids(stack)
    fresh = Path(tempfile.mkdtemp(prefix="jarvas-test-admin-"))
    fresh.chmod(0o711)  # the responders' user may pass, as to any state dir's parent
    try:
        env = dict(stack.env, JARVAS_STATE_DIR=str(fresh / "state"))
        r = subprocess.run([str(harness.JARVASCTL), "adduser", "first"], input="password-1\n",
                           env=env, capture_output=True, text=True, timeout=60)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "created user first" in r.stdout, r.stdout
        for p in ("jarvas.db", "secret.key"):
            st = (fresh / "state" / p).lstat()
            assert st.st_uid == uid, f"{p} belongs to uid {st.st_uid}, want {uid}"
    finally:
        shutil.rmtree(fresh, ignore_errors=True)


@harness.stack_env(**OWN)
def test_start_takes_over_files_a_root_run_left_behind(stack):
    if not AS_ROOT:
        return  # nothing to take over from
    uid, _ = responders_ids(stack)
    name, pw = stack.user("takeover")
    r = stack.jarvasctl("stop", timeout=harness.START_TIMEOUT)
    assert r.returncode == 0, r.stdout + r.stderr
    state = stack.state
    # As a root run leaves them (and a root sqlite3 run while the service is
    # down: an empty -wal and -shm).
    planted = [state / "jarvas.db", state / "secret.key",
               *(state / "metrics").iterdir(), *(state / "run").glob("streams.*")]
    for ext in ("-wal", "-shm"):
        p = state / f"jarvas.db{ext}"
        p.touch()
        planted.append(p)
    for p in planted:
        os.chown(p, 0, 0)
    start_missing(stack)
    for p in planted:
        if p.exists():  # a responder may clear a dead process's file at once
            assert p.lstat().st_uid == uid, f"{p} still root's"
    access, _ = stack.login(name, pw)
    r = stack.request("POST", "/api/chat/", token=access,
                      json={"message": "still works [[fake tokens=2]]"})
    assert r.status == 200, r


def test_responders_fall_back_to_root_loudly_when_their_user_cannot_reach_the_programs(stack):
    """A checkout under a 0700 directory (/root): the stack still starts,
    the responders run as root, and the terminal, `status` and the
    responders' log say so."""
    if not AS_ROOT:
        return  # only root can run the responders as someone else
    hidden = Path(tempfile.mkdtemp(prefix="jarvas-test-hidden-"))  # 0700
    (hidden / "bin").mkdir()
    for name in harness.PROGRAMS:
        shutil.copy2(harness.BIN_DIR / name, hidden / "bin" / name)
    s = harness.Stack({"JARVAS_BIN_DIR": str(hidden / "bin")})
    try:
        s.start()
        for inst in RESPONDERS:
            assert process_ids(instance_pid(s, inst))[0] == 0, f"{inst} is not root"
        status = s.jarvasctl("status")
        assert re.search(r"WARNING: the responders run as root: \w+ cannot reach "
                         + re.escape(str(hidden)), status.stdout), status.stdout
        assert "user=root" in status.stdout, status.stdout
        assert "event=warning user=root" in (s.state / "log" / "chat.log").read_text()
        r = s.jarvasctl("stop", timeout=harness.START_TIMEOUT)
        assert r.returncode == 0, r.stdout + r.stderr
        r = s.jarvasctl("start", timeout=harness.START_TIMEOUT)
        assert r.returncode == 0, r.stdout + r.stderr
        assert "WARNING: the responders run as ROOT" in r.stderr, r.stderr
        assert s.request("GET", "/api/health/").status == 200
    finally:
        s.stop()
        shutil.rmtree(hidden, ignore_errors=True)


# --- 2. sockets (item 3) ------------------------------------------------------------------


def test_only_nginx_and_the_responders_user_may_connect_to_the_sockets(stack):
    uid, _ = responders_ids(stack)
    socks = sorted((stack.state / "run").glob("*.sock"))
    assert {p.stem for p in socks} >= set(RESPONDERS), socks
    for p in socks:
        st = p.lstat()
        assert stat.S_ISSOCK(st.st_mode) and st.st_uid == uid, f"{p}: uid {st.st_uid}"
        if AS_ROOT:
            assert st.st_gid == grp.getgrnam("www-data").gr_gid, f"{p}: gid {st.st_gid}"
            assert stat.S_IMODE(st.st_mode) == 0o660, f"{p}: {oct(st.st_mode)}"
        else:
            assert stat.S_IMODE(st.st_mode) == 0o600, f"{p}: {oct(st.st_mode)}"
    if not AS_ROOT:
        return
    chat_sock = str(stack.state / "run" / "chat.sock")
    assert run_as("www-data", CONNECT, chat_sock) == "connected"  # nginx's workers
    assert run_as("nobody", CONNECT, chat_sock) == str(errno.EACCES)


# --- 3. nothing private in any log (item 5) -------------------------------------------------


def _down(stack):
    if (stack.state / "run" / "chat_stream.sock").exists():
        stop_instance(stack, "chat_stream")


def _up(stack):
    if not (stack.state / "run" / "chat_stream.sock").exists():
        start_missing(stack)


# Requests that make nginx write an error line quoting a request line that
# carries a message and an access token. name, responder state, request
# (method, path with {m} and {t}, headers, body), what the line says.
LOG_CASES = [
    dict(name="stream_get_responder_down", state=_down, method="GET",
         path="/api/chat/stream/?message={m}&access_token={t}", headers={}, body=None,
         line="connect() to unix:"),
    dict(name="stream_get_token_first_responder_down", state=_down, method="GET",
         path="/api/chat/stream/?access_token={t}&conversation_id=c1&message={m}", headers={},
         body=None, line="connect() to unix:"),
    # past nginx's 2 KiB error line: the request line is cut mid-query
    dict(name="stream_get_3KiB_query_responder_down", state=_down, method="GET",
         path="/api/chat/stream/?message={m}" + "w" * 3000 + "&access_token={t}", headers={},
         body=None, line="connect() to unix:"),
    dict(name="referrer_with_a_token_responder_down", state=_down, method="GET",
         path="/api/chat/stream/?message={m}", headers={"Referer": "http://app/?access_token={t}"},
         body=None, line="connect() to unix:"),
    dict(name="stream_post_body_to_a_temp_file", state=_up, method="POST",
         path="/api/chat/stream/?access_token={t}&message={m}",
         headers={"Content-Type": "application/json"},
         body=b'{"message": "x", "pad": "' + b"p" * (100 * 1024) + b'"}',
         line="a client request body is buffered to a temporary file"),
]


@harness.allows_restarts
@harness.stack_env(**OWN)
@harness.cases(LOG_CASES)
def test_neither_the_token_nor_the_message_reaches_any_log(stack, case):
    name, pw = stack.user("logs")
    token, _ = stack.login(name, pw)
    message = "private" + uuid.uuid4().hex  # the same percent-encoded
    before = {k: len(v) for k, v in all_logs(stack).items()}
    case["state"](stack)
    path = case["path"].format(m=message, t=token)
    headers = {k: v.format(m=message, t=token) for k, v in case["headers"].items()}
    r = stack.request(case["method"], path, headers=headers, body=case["body"])
    assert r.status < 600, r

    def line_logged():
        new = all_logs(stack).get("nginx-error.log", b"")[before.get("nginx-error.log", 0):]
        return case["line"].encode() in new and b"/api/chat/stream/" in new

    harness.wait_for(line_logged, 10, f"nginx logged {case['line']!r}")
    for log, data in all_logs(stack).items():
        data = data[before.get(log, 0):]
        for secret, what in ((token, "access token"), (message, "message"),
                             (token.split(".")[-1], "token signature")):
            assert secret.encode() not in data, f"the {what} reached log/{log}"
    _up(stack)


def test_a_stream_leaves_no_query_in_the_responders_logs(stack):
    name, pw = stack.user("quiet")
    token, _ = stack.login(name, pw)
    message = "private" + uuid.uuid4().hex
    before = {k: len(v) for k, v in all_logs(stack).items()}
    ev = stack.sse(stream_token_query(stack, message + " [[fake tokens=2]]", token))
    assert ev.status == 200 and ev.named("done"), ev
    harness.wait_for(lambda: b"/api/chat/stream" in all_logs(stack)["chat_stream.log"]
             [before.get("chat_stream.log", 0):], 10, "the stream's log line")
    for log, data in all_logs(stack).items():
        data = data[before.get(log, 0):]
        assert token.encode() not in data and message.encode() not in data, log


# --- 4. bounds: bad input never gets a 5xx (item 8) -------------------------------------------


def _sized(prefix, n):
    return prefix + "a" * (n - len(prefix))


TOO_LONG_URI = {"detail": "Request URI too long."}
NOT_VALID = {"detail": "Given token not valid for any token type", "code": "token_not_valid"}
NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}
HEADERS_TOO_LARGE = {"detail": "Request headers too large."}
PATH_MAX, QUERY_MAX, AUTH_MAX, CTYPE_MAX, LEID_MAX, METHOD_MAX = 2048, 53248, 4096, 1024, 512, 64

# name, method, path, headers, expected status (or set), expected JSON (None: any JSON)
BOUND_CASES = [
    ("path_32KiB", "GET", _sized("/api/chat/", 32 * 1024), {}, 414, TOO_LONG_URI),
    ("path_40KiB", "GET", _sized("/api/chat/", 40 * 1024), {}, 414, TOO_LONG_URI),
    ("path_over_bound", "GET", _sized("/api/chat/", PATH_MAX + 1), {}, 414, TOO_LONG_URI),
    ("path_at_bound", "GET", _sized("/api/chat/", PATH_MAX), {}, 404, {"detail": "Not found."}),
    ("query_over_bound", "GET", "/api/chat/history/?" + _sized("x=", QUERY_MAX + 1), {}, 414,
     TOO_LONG_URI),
    ("query_at_bound", "GET", "/api/chat/history/?" + _sized("x=", QUERY_MAX), {}, 401, None),
    ("query_at_bound_stream", "GET", "/api/chat/stream/?" + _sized("message=", QUERY_MAX), {},
     {400, 401}, None),
    # no token that long is valid: the answer to an invalid token, or none
    ("authorization_over_bound", "GET", "/api/chat/history/",
     {"Authorization": _sized("Bearer ", AUTH_MAX + 1)}, 401, NOT_VALID),
    ("authorization_over_bound_no_space", "GET", "/api/chat/history/",
     {"Authorization": "B" * (AUTH_MAX + 1)}, 401, NO_CREDENTIALS),
    ("authorization_60KiB", "GET", "/api/chat/history/",
     {"Authorization": _sized("Bearer ", 60 * 1024)}, 401, NOT_VALID),
    ("authorization_over_bound_token", "POST", "/api/token/",
     {"Authorization": _sized("Bearer ", AUTH_MAX + 1)}, 400, None),
    ("authorization_over_bound_health", "GET", "/api/health/",
     {"Authorization": _sized("Bearer ", AUTH_MAX + 1)}, 200, None),
    ("authorization_at_bound", "GET", "/api/chat/history/",
     {"Authorization": _sized("Bearer ", AUTH_MAX)}, 401, NOT_VALID),
    ("content_type_over_bound", "POST", "/api/token/",
     {"Content-Type": _sized("application/json;x=", CTYPE_MAX + 1)}, 400, HEADERS_TOO_LARGE),
    ("content_type_at_bound", "POST", "/api/token/",
     {"Content-Type": _sized("application/json;x=", CTYPE_MAX)}, {400, 415}, None),
    ("last_event_id_over_bound", "GET", "/api/chat/stream/",
     {"Last-Event-ID": _sized("1:", LEID_MAX + 1)}, 400, HEADERS_TOO_LARGE),
    ("last_event_id_at_bound", "GET", "/api/chat/stream/",
     {"Last-Event-ID": _sized("1:", LEID_MAX)}, {204, 400, 401}, None),
    ("method_over_bound", "M" * (METHOD_MAX + 1), "/api/chat/", {}, 405,
     {"detail": f'Method "{"M" * (METHOD_MAX + 1)}" not allowed.'}),
    ("method_at_bound", "M" * METHOD_MAX, "/api/chat/", {}, 405, None),
    ("trace", "TRACE", "/api/chat/", {}, 405, {"detail": 'Method "TRACE" not allowed.'}),
    ("trace_stream", "TRACE", "/api/chat/stream/", {}, 405,
     {"detail": 'Method "TRACE" not allowed.'}),
    ("trace_token", "TRACE", "/api/token/", {}, 405, {"detail": 'Method "TRACE" not allowed.'}),
    # inputs each under what nginx buffers, together past one FastCGI record
    ("path_6KiB_and_query_53KiB", "GET",
     _sized("/api/chat/", 6 * 1024) + "?" + _sized("x=", QUERY_MAX), {}, 414, TOO_LONG_URI),
    ("query_53KiB_and_authorization_12KiB", "GET",
     "/api/chat/history/?" + _sized("x=", QUERY_MAX),
     {"Authorization": _sized("Bearer ", 12 * 1024)}, 401, NOT_VALID),
    # every bound at once: the parameters together still fit one record
    ("everything_at_its_bound", "M" * METHOD_MAX,
     _sized("/api/chat/", PATH_MAX) + "?" + _sized("x=", QUERY_MAX),
     {"Authorization": _sized("Bearer ", AUTH_MAX),
      "Content-Type": _sized("text/plain;x=", CTYPE_MAX),
      "Last-Event-ID": _sized("1:", LEID_MAX)}, {404, 405}, None),
    ("everything_at_its_bound_stream", "GET",
     "/api/chat/stream/?" + _sized("message=", QUERY_MAX),
     {"Authorization": _sized("Bearer ", AUTH_MAX),
      "Content-Type": _sized("text/plain;x=", CTYPE_MAX),
      "Last-Event-ID": _sized("1:", LEID_MAX)}, {204, 400, 401}, None),
]


@harness.cases(BOUND_CASES)
def test_what_nginx_passes_on_is_bounded_with_a_json_4xx(stack, case):
    _, method, path, headers, want, body = case
    r = stack.request(method, path, headers=headers)
    want = want if isinstance(want, set) else {want}
    assert r.status in want, f"{r.status} {r.body[:300]!r}"
    if r.status == 204:
        return  # Last-Event-ID: the stream is over (no body)
    got = r.json()
    assert "detail" in got or "status" in got or r.status == 400, got
    if body is not None:
        assert got == body, got
    if r.status == 405:
        assert "allow" in r.headers, r.headers


def test_a_get_stream_takes_a_16KiB_message_percent_encoded_with_an_access_token(stack):
    name, pw = stack.user("bigget")
    token, _ = stack.login(name, pw)
    message = "é" * (8 * 1024)  # 16 KiB of UTF-8: 48 KiB percent-encoded
    path = stream_token_query(stack, message, token)
    assert len(path) > 48 * 1024, len(path)
    ev = stack.sse(path, timeout=60)
    assert ev.status == 200, (ev.status, ev.body[:300])
    assert ev.named("done"), ev


# --- 5. the operator's commands ------------------------------------------------------------


PASSWORD_ROWS = [
    # name, stdin, exit status, what it says
    ("empty", "\n", 1, "password is empty"),
    ("seven_characters", "seven77\n", 1, "at least 8 characters"),
    ("seven_two_byte_characters", "ééééééé\n", 1, "at least 8 characters"),
    ("eight_characters", "eight888\n", 0, "created user"),
]


@harness.cases(PASSWORD_ROWS)
def test_adduser_from_stdin_refuses_passwords_under_8_characters(stack, case):
    _, stdin, code, says = case
    name = stack.unique_name("pwlen")
    r = stack.jarvasctl("adduser", name, input=stdin)
    assert r.returncode == code, r.stdout + r.stderr
    assert says in r.stdout + r.stderr, r.stdout + r.stderr
    rows = stack.sqlite("SELECT COUNT(*) FROM users WHERE username = ?", (name,))
    assert rows == [(1 if code == 0 else 0,)], rows
    if code == 0:
        assert r.stdout.strip() == f"created user {name}", r.stdout


def test_passwd_says_what_it_did_and_refuses_a_short_password(stack):
    name, old = stack.user("pwchange")
    r = stack.jarvasctl("passwd", name, input="short\n")
    assert r.returncode == 1 and "at least 8 characters" in r.stderr, r.stderr
    stack.login(name, old)
    r = stack.jarvasctl("passwd", name, input="a-new-password\n")
    assert r.returncode == 0 and r.stdout.strip() == f"changed the password of {name}", r.stdout
    stack.login(name, "a-new-password")


def _at_a_terminal(stack, args, answers, timeout=60):
    """Run jarvasctl ARGS on a pseudo-terminal; each answer is typed once the
    prompt before it has appeared. (exit status, everything shown)."""
    pid, fd = pty.fork()
    if pid == 0:  # the child: jarvasctl with the stack's environment
        try:
            os.chdir(str(ROOT))
            os.execve(str(harness.JARVASCTL), [str(harness.JARVASCTL), *args], stack.env)
        finally:
            os._exit(127)
    shown, deadline, i = b"", time.monotonic() + timeout, 0
    try:
        while True:
            left = deadline - time.monotonic()
            assert left > 0, f"no end within {timeout}s; shown so far: {shown!r}"
            ready, _, _ = select.select([fd], [], [], min(left, 0.5))
            if ready:
                try:
                    data = os.read(fd, 4096)
                except OSError:  # EIO: the child closed the terminal
                    data = b""
                if not data:
                    break
                shown += data
            prompts = len(re.findall(rb"Password( \(again\))?: ", shown))
            if i < len(answers) and prompts > i:
                os.write(fd, answers[i].encode() + b"\r")
                i += 1
        _, status = os.waitpid(pid, 0)
        return os.waitstatus_to_exitcode(status), shown.decode("utf-8", "replace")
    finally:
        os.close(fd)


def test_adduser_at_a_terminal_asks_twice_without_echo(stack):
    name = stack.unique_name("tty")
    first, good = "first-try-" + uuid.uuid4().hex[:6], "good-pass-" + uuid.uuid4().hex[:6]
    # a mismatch, then a short one, then twice the same
    code, shown = _at_a_terminal(stack, ["adduser", name], [first, good, "short", good, good])
    assert code == 0, shown
    assert "do not match" in shown and "at least 8 characters" in shown, shown
    assert shown.count("Password (again): ") == 2, shown
    assert first not in shown and good not in shown, f"the password was echoed: {shown!r}"
    assert f"created user {name}" in shown, shown
    stack.login(name, good)


def test_users_prints_a_header(stack):
    name, _ = stack.user("listed")
    r = stack.jarvasctl("users")
    assert r.returncode == 0, r.stderr
    lines = r.stdout.splitlines()
    assert lines[0].split("\t") == ["username", "active", "created_at"], lines[:2]
    assert any(ln.split("\t")[0] == name for ln in lines[1:]), r.stdout


# --- 6. the development upstream's pace ----------------------------------------------------


def test_fake_upstream_default_delay_paces_a_reply_without_a_directive(stack):
    """tests/fake_ollama -d MS (what `make run` starts, with 40): a reply
    without a delay of its own arrives token by token; the tests' own fake
    (no -d) still answers at once."""
    assert stack.fake_config()["config"]["delay_ms"] == 0
    p = subprocess.Popen([str(harness.FAKE_OLLAMA), "-p", "0", "-d", "60"],
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    try:
        port = int(re.search(r":(\d+)$", p.stdout.readline().strip()).group(1))
        body = ('{"model": "m", "messages": [{"role": "user", "content": "hi"}]}').encode()
        with socket.create_connection(("127.0.0.1", port), timeout=30) as s:
            s.sendall(b"POST /api/chat HTTP/1.0\r\nContent-Length: %d\r\n\r\n" % len(body) + body)
            t0, data = time.monotonic(), b""
            while chunk := s.recv(65536):
                data += chunk
            took = time.monotonic() - t0
        assert data.count(b'"done":false') == 8, data[-300:]
        # 8 tokens and the done line, 60 ms apart: never faster than that
        assert took >= 8 * 0.060 * 0.9, f"the reply took {took:.3f}s"
    finally:
        p.terminate()
        p.wait(10)


# --- 7. documentation ----------------------------------------------------------------------


def test_every_setting_the_code_reads_is_documented(stack):
    """Every JARVAS_* name the responders or jarvasctl read appears in the
    README and in spawn/jarvas.env.example (a name ending in "_" is a
    prefix, as JARVAS_WORKERS_<RESPONDER>)."""
    names = set()
    for src in [*sorted((ROOT / "src").glob("*.c")), ROOT / "spawn" / "jarvasctl"]:
        names |= set(re.findall(r"\bJARVAS_[A-Z0-9_]+", src.read_text()))
    assert {"JARVAS_STATE_DIR", "JARVAS_USER"} <= names, sorted(names)
    readme = (ROOT / "README.md").read_text()
    example = (ROOT / "spawn" / "jarvas.env.example").read_text()
    missing = [(n, where) for n in sorted(names) for where, text in
               (("README.md", readme), ("spawn/jarvas.env.example", example)) if n not in text]
    assert not missing, missing


def test_the_repository_needs_nothing_outside_it(stack):
    """A clone has no ../shared: the API reference lives in the README."""
    r = subprocess.run(["git", "-C", str(ROOT), "grep", "-n", "-I", "-e", "../shared", "--",
                        ".", ":!tests/integration/test_ops.py"],
                       capture_output=True, text=True, timeout=30)
    assert r.returncode == 1 and not r.stdout, r.stdout  # 1: no match
    readme = (ROOT / "README.md").read_text()
    for endpoint in ("/api/token/", "/api/token/refresh/", "/api/token/verify/", "/api/chat/",
                     "/api/chat/history/", "/api/chat/stream/", "/api/chat/stream/ticket/",
                     "/api/chat/conversations/", "/api/health/", "/api/metrics"):
        assert f"`POST {endpoint}" in readme or f"`GET {endpoint}" in readme \
            or f"`DELETE {endpoint}" in readme, f"README does not document {endpoint}"
