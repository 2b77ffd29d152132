"""Integration-test harness: runs the real stack and talks to it.

Owns a test run's processes and files: a Stack is tests/fake_ollama (the
upstream) plus everything `spawn/jarvasctl start` starts, on free loopback
ports, with a fresh state directory that stop() removes again (kept when
JARVAS_KEEP_STATE=1). Invariant: a test reaches the server only through
nginx on 127.0.0.1, exactly as a client would; the database is only read.

Python 3 standard library only.
"""

import base64
import contextlib
import hashlib
import hmac
import http.client
import json as jsonlib
import os
import re
import shutil
import socket
import sqlite3
import subprocess
import tempfile
import time
import urllib.parse
import uuid
from pathlib import Path

# Where the checkout and the programs under test are: the one place to change
# for another build (JARVAS_TEST_BIN=<dir> holds token, chat, chat_stream and
# jarvas-admin, e.g. an ASan build). As root, the responders run as an
# unprivileged user (JARVAS_USER, default jarvas), from a copy of the
# programs when that user cannot reach these.
ROOT = Path(__file__).resolve().parents[2]
JARVASCTL = ROOT / "spawn" / "jarvasctl"
FAKE_OLLAMA = ROOT / "tests" / "fake_ollama"
BIN_DIR = Path(os.environ.get("JARVAS_TEST_BIN") or ROOT / "cgi-bin").resolve()
# The protocol the stacks speak to the fake upstream: ollama, or openai
# (then with an API key the fake checks), so one suite covers both paths.
UPSTREAM_API = os.environ.get("JARVAS_TEST_UPSTREAM_API") or "ollama"
UPSTREAM_API_KEY = "sk-jarvas-test-0123456789abcdef"


def model_missing_reason(model):
    """What the fake upstream says, in the protocol in use, of a model it
    does not have (as Ollama and OpenAI word it)."""
    if UPSTREAM_API == "openai":
        return f"The model `{model}` does not exist or you do not have access to it."
    return f'model "{model}" not found, try pulling it first'

PROGRAMS = ("token", "chat", "chat_stream", "jarvas-admin")

START_TIMEOUT = 60  # seconds for jarvasctl start/stop


class StackError(Exception):
    """The stack could not be started; str() carries the logs worth reading."""


# --- marks the runner reads ---------------------------------------------------


def stack_env(**env):
    """Run the decorated test on its own Stack with these extra variables."""

    def mark(fn):
        fn.stack_env = {k: str(v) for k, v in env.items()}
        return fn

    return mark


def cases(table, name=None):
    """Run the decorated test(stack, case) once per row of `table`, each
    reported as test_x[<name>]; `name(case)` gives the name (default: the
    first element of a tuple or the "name" key of a dict)."""

    def mark(fn):
        fn.cases = list(table)
        fn.case_name = name or _default_case_name
        return fn

    return mark


def _default_case_name(case):
    if isinstance(case, dict):
        return str(case.get("name"))
    if isinstance(case, (tuple, list)):
        return str(case[0])
    return str(case)


def timeout(seconds):
    """Give the decorated test more (or less) than the runner's default time."""

    def mark(fn):
        fn.timeout = seconds
        return fn

    return mark


def allows_restarts(fn):
    """The decorated test kills responders on purpose; do not fail it when the
    supervisor restarts one."""
    fn.allows_restarts = True
    return fn


# --- HTTP ---------------------------------------------------------------------


class Response:
    """An HTTP response: status, reason, headers (lower-case keys; repeated
    headers joined with ", "), body (bytes)."""

    def __init__(self, status, reason, headers, body):
        self.status = status
        self.reason = reason
        self.headers = headers
        self.body = body

    @property
    def text(self):
        return self.body.decode("utf-8", "replace")

    def json(self):
        try:
            return jsonlib.loads(self.body)
        except ValueError:
            raise AssertionError(
                f"response {self.status} is not JSON: {self.body[:300]!r}"
            ) from None

    def __repr__(self):
        return f"<Response {self.status} {self.body[:200]!r}>"


def _headers_of(resp):
    out = {}
    for k, v in resp.getheaders():
        k = k.lower()
        out[k] = f"{out[k]}, {v}" if k in out else v
    return out


def _build_request(port, method, path, body, json, headers, token, form):
    """The request as bytes. `path` (str or bytes) is sent verbatim."""
    hdrs = {"host": f"127.0.0.1:{port}", "user-agent": "jarvas-integration-tests",
            "connection": "close"}
    if json is not None:
        body = jsonlib.dumps(json).encode()
        hdrs["content-type"] = "application/json"
    elif form is not None:
        body = urllib.parse.urlencode(form).encode()
        hdrs["content-type"] = "application/x-www-form-urlencoded"
    elif isinstance(body, str):
        body = body.encode()
    if body is not None:
        hdrs["content-length"] = str(len(body))
    if token is not None:
        hdrs["authorization"] = f"Bearer {token}"
    for k, v in (headers or {}).items():
        if v is None:
            hdrs.pop(k.lower(), None)
        else:
            hdrs[k.lower()] = str(v)
    if isinstance(path, str):
        path = path.encode("utf-8", "surrogateescape")
    head = method.encode() + b" " + path + b" HTTP/1.1\r\n"
    head += b"".join(f"{k}: {v}\r\n".encode("utf-8") for k, v in hdrs.items())
    return head + b"\r\n" + (body or b"")


# --- SSE ----------------------------------------------------------------------


class SSEResult(list):
    """The events of one response, in order. Each event is a dict: id (the id
    field of that event, or None), event ("message" unless named; "comment"
    for a comment line, whose text is in data), data (parsed JSON when it
    parses, else the string), raw (the data string), t (time.monotonic() when
    the event's last byte arrived). Also: status, headers, body (the raw
    bytes, for responses that are not event streams), unfinished (the stream
    ended inside an event: no blank line after its last field), truncated
    (the HTTP response itself was cut off, e.g. the responder died), aborted
    (the client closed the connection because `until` said so)."""

    status = None
    headers = None
    body = b""
    unfinished = False
    truncated = False
    aborted = False
    t0 = None  # time.monotonic() when the request was sent

    def named(self, name):
        return [e for e in self if e["event"] == name]

    def data_events(self):
        return [e for e in self if e["event"] != "comment"]

    def json(self):
        return jsonlib.loads(self.body)


class SSEParser:
    """Incremental parser for text/event-stream (the WHATWG rules: lines end
    in CRLF, LF or CR; a blank line dispatches; "field: value" with one
    leading space removed; data lines joined with "\\n"; a block without
    data dispatches nothing; comments start with ":")."""

    def __init__(self):
        self.buf = b""
        self.first = True
        self._reset()

    def _reset(self):
        self.data = None
        self.event = None
        self.id = None

    def feed(self, chunk, t):
        """Feed bytes received at time t; return the events they complete."""
        self.buf += chunk
        out = []
        while True:
            m = re.search(rb"\r\n|\n|\r", self.buf)
            if not m:
                break
            if m.group() == b"\r" and m.end() == len(self.buf):
                break  # may be the first half of CRLF
            line, self.buf = self.buf[: m.start()], self.buf[m.end() :]
            ev = self._line(line.decode("utf-8", "replace"), t)
            if ev is not None:
                out.append(ev)
        return out

    def _line(self, line, t):
        if self.first:
            self.first = False
            line = line.removeprefix("\ufeff")
        if line == "":
            if self.data is None:
                self._reset()
                return None
            raw = self.data
            ev = {"id": self.id, "event": self.event or "message", "raw": raw,
                  "data": _maybe_json(raw), "t": t}
            self._reset()
            return ev
        if line.startswith(":"):
            text = line[1:].removeprefix(" ")
            return {"id": None, "event": "comment", "raw": text, "data": text, "t": t}
        field, _, value = line.partition(":")
        value = value.removeprefix(" ")
        if field == "data":
            self.data = value if self.data is None else self.data + "\n" + value
        elif field == "event":
            self.event = value
        elif field == "id" and "\0" not in value:
            self.id = value
        return None


def _maybe_json(s):
    try:
        return jsonlib.loads(s)
    except ValueError:
        return s


# --- JWT helpers --------------------------------------------------------------


def b64url(data):
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64url_decode(s):
    return base64.urlsafe_b64decode(s + "=" * (-len(s) % 4))


def jwt_parts(token):
    """(header, claims) of a JWT, decoded without checking the signature."""
    h, c, _ = token.split(".")
    return jsonlib.loads(b64url_decode(h)), jsonlib.loads(b64url_decode(c))


def jwt_sign(header, claims, key):
    """A JWT with this header and these claims, HMAC-SHA256-signed with key
    (bytes); header "alg" is not looked at, so tests can forge any."""
    signing_input = (
        b64url(jsonlib.dumps(header, separators=(",", ":")).encode())
        + "."
        + b64url(jsonlib.dumps(claims, separators=(",", ":")).encode())
    )
    sig = hmac.new(key, signing_input.encode(), hashlib.sha256).digest()
    return signing_input + "." + b64url(sig)


# --- the stack ----------------------------------------------------------------


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(fn, timeout, what):
    """fn()'s first truthy value, polling; fails after `timeout` seconds."""
    deadline = time.monotonic() + timeout
    while True:
        v = fn()
        if v:
            return v
        if time.monotonic() > deadline:
            raise AssertionError(f"{what}: not within {timeout}s")
        time.sleep(0.05)


def reachable_by_others(directory, names=PROGRAMS):
    """Whether any user may run directory/<name> for each name: every
    directory on the way can be entered by others, each program read and
    run. As root, jarvasctl runs the responders as an unprivileged user,
    who must reach them."""
    directory = Path(directory).resolve()
    for d in [directory, *directory.parents]:
        if not os.stat(d).st_mode & 0o001:
            return False
    return all(os.stat(directory / n).st_mode & 0o005 == 0o005 for n in names
               if (directory / n).exists())


def end_process(proc, grace):
    """SIGTERM to a subprocess.Popen the test started, SIGKILL when it has
    not exited after `grace` seconds; returns once it is gone."""
    proc.terminate()
    try:
        proc.wait(grace)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def log_tail(path, n=30):
    try:
        lines = Path(path).read_text(errors="replace").splitlines()
    except OSError:
        return ""
    return f"--- last lines of {path} ---\n" + "\n".join(lines[-n:]) + "\n"


class Stack:
    """The whole stack for a test run. Use start()/stop() or `with Stack():`.
    env: extra variables for jarvasctl (they win over the harness's own).
    fake_key: the key the fake upstream demands on /v1/ (its -k), for a
    stack built inside a test; by default UPSTREAM_API_KEY when the suite
    speaks openai, else none."""

    def __init__(self, env=None, fake_key=None):
        self.extra_env = dict(env or {})
        self.fake_key = fake_key if fake_key is not None else \
            (UPSTREAM_API_KEY if UPSTREAM_API == "openai" else None)
        self.state = None
        self.port = None
        self.fake = None
        self.fake_port = None
        self.env = None
        self.bin_copy = None  # a copy of BIN_DIR the responders' user can reach
        self._names = 0

    def __enter__(self):
        self.start()
        return self

    def __exit__(self, *exc):
        self.stop()

    # -- lifecycle --

    def start(self):
        self.state = Path(tempfile.mkdtemp(prefix="jarvas-test-"))
        (self.state / "log").mkdir()
        try:
            self._start_fake()
            self.port = free_port()
            env = {k: v for k, v in os.environ.items() if not k.startswith("JARVAS_")}
            env.update(
                JARVAS_ENV_FILE="/dev/null",  # a developer's spawn/jarvas.env stays out
                JARVAS_STATE_DIR=str(self.state),
                JARVAS_LISTEN=f"127.0.0.1:{self.port}",
                JARVAS_UPSTREAM_URL=f"http://127.0.0.1:{self.fake_port}",
                JARVAS_UPSTREAM_API=UPSTREAM_API,
                JARVAS_BIN_DIR=str(self._bin_dir()),
                # Tests open many streams and chats as one user; the caps have
                # their own tests.
                JARVAS_MAX_STREAMS_PER_USER="1000",
                JARVAS_MAX_CHATS_PER_USER="1000",
                # Every test logs in from 127.0.0.1, many fail on purpose;
                # throttling has its own test.
                JARVAS_LOGIN_FAILURES_PER_USER="1000000",
                JARVAS_LOGIN_FAILURES_PER_ADDR="1000000",
            )
            if UPSTREAM_API == "openai":
                env["JARVAS_UPSTREAM_API_KEY"] = UPSTREAM_API_KEY
            env.update(self.extra_env)
            self.env = env
            r = self.jarvasctl("start", timeout=START_TIMEOUT)
            if r.returncode != 0:
                raise StackError(
                    f"jarvasctl start failed (exit {r.returncode}):\n{r.stdout}{r.stderr}"
                    + self.logs()
                )
        except BaseException:
            self.stop(keep=True)
            raise
        return self

    def _bin_dir(self):
        """BIN_DIR, or (as root, when the responders' unprivileged user could
        not reach it: a checkout under a 0700 /root) a copy of it in a
        temporary directory, removed by stop(), so the responders always
        run as that user and never fall back to root."""
        if os.geteuid() != 0 or reachable_by_others(BIN_DIR):
            return BIN_DIR
        self.bin_copy = Path(tempfile.mkdtemp(prefix="jarvas-test-bin-"))
        self.bin_copy.chmod(0o755)
        for name in PROGRAMS:
            if (BIN_DIR / name).exists():
                shutil.copy2(BIN_DIR / name, self.bin_copy / name)
                (self.bin_copy / name).chmod(0o755)
        return self.bin_copy

    def _start_fake(self, port=0):
        """Start tests/fake_ollama on `port` (0: a free one) and learn its
        port from the line it prints (appended to log/fake_ollama.log)."""
        if not os.access(FAKE_OLLAMA, os.X_OK):
            raise StackError(f"{FAKE_OLLAMA} is missing: build it first (make)")
        log_path = self.state / "log" / "fake_ollama.log"
        seen = log_path.stat().st_size if log_path.exists() else 0
        with open(log_path, "ab") as log:
            key = ["-k", self.fake_key] if self.fake_key else []
            self.fake = subprocess.Popen([str(FAKE_OLLAMA), "-p", str(port)] + key,
                                         stdin=subprocess.DEVNULL, stdout=log, stderr=log)
        deadline = time.monotonic() + 10
        while True:
            with open(log_path, "rb") as f:
                f.seek(seen)
                m = re.search(r"listening on 127\.0\.0\.1:(\d+)",
                              f.read().decode(errors="replace"))
            if m:
                self.fake_port = int(m.group(1))
                return
            if self.fake.poll() is not None or time.monotonic() > deadline:
                raise StackError("tests/fake_ollama did not say where it listens\n"
                                 + self.logs())
            time.sleep(0.02)

    def fake_stop(self):
        """Stop the fake upstream (SIGTERM, then SIGKILL after 5 s): the
        responders then find nothing listening on its port."""
        if self.fake is None:
            return
        end_process(self.fake, 5)
        self.fake = None

    def fake_start(self):
        """Start the fake upstream again on the port it had (its config and
        request log start empty)."""
        if self.fake is None:
            self._start_fake(self.fake_port)

    def stop(self, keep=False):
        """Stop everything; remove the state directory unless keep or
        JARVAS_KEEP_STATE=1 (then say where it is)."""
        if self.state is None:
            return
        if self.env is not None:
            try:
                r = self.jarvasctl("stop", timeout=START_TIMEOUT)
                if r.returncode != 0:
                    print(f"jarvasctl stop failed (exit {r.returncode}):\n{r.stdout}{r.stderr}")
            except subprocess.TimeoutExpired:
                print(f"jarvasctl stop did not finish within {START_TIMEOUT}s")
        self.fake_stop()
        if keep or os.environ.get("JARVAS_KEEP_STATE") == "1":
            print(f"state kept in {self.state}")
        else:
            shutil.rmtree(self.state, ignore_errors=True)
        if self.bin_copy is not None:
            shutil.rmtree(self.bin_copy, ignore_errors=True)
            self.bin_copy = None
        self.state = None
        self.env = None

    def logs(self, n=30):
        """The last lines of every log in the state directory."""
        if self.state is None:
            return ""
        return "".join(log_tail(p, n) for p in sorted((self.state / "log").glob("*.log")))

    def restart_counts(self):
        """{instance: restarts} from the supervisors' run/<instance>.state."""
        out = {}
        for p in (self.state / "run").glob("*.state"):
            m = re.search(r"^restarts=(\d+)$", p.read_text(errors="replace"), re.M)
            if m:
                out[p.name[: -len(".state")]] = int(m.group(1))
        return out

    # -- operating --

    def jarvasctl(self, *args, input=None, timeout=30):
        """Run spawn/jarvasctl with this stack's environment; the
        CompletedProcess (text) is returned whatever the exit status."""
        return subprocess.run(
            [str(JARVASCTL), *args], input=input, env=self.env, text=True,
            capture_output=True, timeout=timeout, cwd=str(ROOT))

    def adduser(self, name, password):
        r = self.jarvasctl("adduser", name, input=password + "\n")
        assert r.returncode == 0, f"adduser {name} failed: {r.stdout}{r.stderr}"

    def unique_name(self, prefix="user"):
        self._names += 1
        return f"{prefix}_{self._names}_{uuid.uuid4().hex[:8]}"

    def user(self, prefix="user"):
        """A fresh user: (name, password)."""
        name = self.unique_name(prefix)
        password = "pw-" + uuid.uuid4().hex
        self.adduser(name, password)
        return name, password

    def login(self, name, password):
        r = self.request("POST", "/api/token/", json={"username": name, "password": password})
        assert r.status == 200, f"login {name}: {r.status} {r.body[:300]!r}"
        body = r.json()
        return body["access"], body["refresh"]

    def secret_key(self):
        """The JWT signing key: JARVAS_SECRET_KEY verbatim, else the hex text
        of state/secret.key as written (without the newline)."""
        if "JARVAS_SECRET_KEY" in self.env:
            return self.env["JARVAS_SECRET_KEY"].encode()
        return (self.state / "secret.key").read_text().strip().encode()

    # -- HTTP --

    def request(self, method, path, body=None, json=None, headers=None, token=None,
                form=None, timeout=30):
        """One request on a fresh connection; `path` is sent verbatim."""
        raw = _build_request(self.port, method, path, body, json, headers, token, form)
        with socket.create_connection(("127.0.0.1", self.port), timeout=timeout) as s:
            s.sendall(raw)
            resp = http.client.HTTPResponse(s, method=method)
            try:
                resp.begin()
                data = resp.read()
            finally:
                resp.close()
        return Response(resp.status, resp.reason, _headers_of(resp), data)

    def sse(self, path, token=None, method="GET", json=None, headers=None, timeout=30,
            until=None):
        """Read a response as Server-Sent Events, each stamped on arrival.
        Reads until the server ends the response, or until `until(event,
        events)` returns true (then the client closes the connection, as a
        browser tab that goes away). Fails when `timeout` seconds pass first."""
        raw = _build_request(self.port, method, path, None, json, headers, token, None)
        events = SSEResult()
        parser = SSEParser()
        deadline = time.monotonic() + timeout
        s = socket.create_connection(("127.0.0.1", self.port), timeout=timeout)
        try:
            events.t0 = time.monotonic()
            s.sendall(raw)
            resp = http.client.HTTPResponse(s, method=method)
            resp.begin()
            events.status = resp.status
            events.headers = _headers_of(resp)
            if not events.headers.get("content-type", "").startswith("text/event-stream"):
                events.body = resp.read()
                return events
            while True:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise AssertionError(
                        f"SSE {path}: no end within {timeout}s; events so far: {events!r}")
                s.settimeout(left)
                try:
                    chunk = resp.read1(65536)
                except socket.timeout:
                    # a timed-out socket file cannot be read again
                    raise AssertionError(
                        f"SSE {path}: no end within {timeout}s; events so far: {events!r}"
                    ) from None
                except http.client.IncompleteRead:
                    events.truncated = True
                    break
                if not chunk:
                    break
                for ev in parser.feed(chunk, time.monotonic()):
                    events.append(ev)
                    if until is not None and until(ev, events):
                        events.aborted = True
                        return events
            events.unfinished = bool(parser.buf) or parser.data is not None \
                or parser.event is not None
            return events
        finally:
            with contextlib.suppress(OSError):
                s.shutdown(socket.SHUT_RDWR)
            s.close()

    # -- the fake upstream --

    def _fake(self, method, path, body=None):
        c = http.client.HTTPConnection("127.0.0.1", self.fake_port, timeout=10)
        try:
            data = None if body is None else jsonlib.dumps(body).encode()
            c.request(method, path, body=data,
                      headers={"Content-Type": "application/json"} if data else {})
            r = c.getresponse()
            out = r.read()
            assert 200 <= r.status < 300, f"fake {method} {path}: {r.status} {out[:300]!r}"
            return jsonlib.loads(out) if out.strip() else None
        finally:
            c.close()

    def fake_requests(self):
        """What the fake upstream received, oldest first."""
        return self._fake("GET", "/_fake/requests")["requests"]

    def fake_config(self, **kw):
        return self._fake("POST", "/_fake/config", kw)

    def fake_reset(self):
        return self._fake("POST", "/_fake/reset", {})

    # -- the database (read only by convention) --

    def sqlite(self, query, args=()):
        """Rows (tuples) of a query on the state directory's jarvas.db."""
        con = sqlite3.connect(self.state / "jarvas.db", timeout=10)
        try:
            return con.execute(query, args).fetchall()
        finally:
            con.close()
