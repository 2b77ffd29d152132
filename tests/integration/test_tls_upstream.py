"""An https:// upstream (README "Configuration": JARVAS_UPSTREAM_URL,
JARVAS_UPSTREAM_CA_FILE, JARVAS_UPSTREAM_API_KEY).

A real nginx terminates TLS on 127.0.0.1 in front of the stack's
tests/fake_ollama (unbuffered, HTTP/1.1 keep-alive), with certificates the
openssl command makes for this run: a CA of its own, a server certificate
for 127.0.0.1 and localhost, and one for elsewhere.invalid only. The fake
demands the API key on /v1/ (its -k). Each test builds its own Stack: the
upstream's URL names the proxy's port, and the proxy can only point at the
fake once the stack has started it; so nothing here depends on
JARVAS_TEST_UPSTREAM_API.

Specified: with the CA given, either protocol streams chunk by chunk and
/api/chat/, health and /api/models/ reach the upstream through TLS; without
it, or with a certificate for another name, every path refuses the upstream
before sending it anything and says it is the certificate; a wrong API key
gives the user the server's own reason; the key is in no log, nor in what
health or metrics show."""

import atexit
import contextlib
import shutil
import socket
import subprocess
import tempfile
import time
from pathlib import Path

import harness
from test_chat import scrape
from test_stream import STREAM, account, conv, describe, fake_text, parse_stream, query

KEY = "sk-tls-test-" + "7f3a9c1e5b2d4f6a8c0e"  # what the fake demands
WRONG_KEY = "sk-tls-test-" + "0000wrong0000wrong00"
MODEL = "llama3.2"
# The fake's reply for the text below: whitespace-led words, one chunk each.
WORDS = ["over", " TLS", " chunk", " by", " chunk"]

# name: subjectAltName of a server certificate the test CA signs
SERVER_CERTS = {
    "localhost": "IP:127.0.0.1,DNS:localhost",
    "elsewhere": "DNS:elsewhere.invalid",
}

NGINX_CONF = """\
daemon off;
worker_processes 1;
pid {dir}/nginx.pid;
error_log {dir}/error.log warn;
events {{ worker_connections 256; }}
http {{
    access_log {dir}/access.log;
    client_body_temp_path {dir}/client_body;
    client_body_buffer_size 1m;
    proxy_temp_path {dir}/proxy;
    fastcgi_temp_path {dir}/fastcgi;
    uwsgi_temp_path {dir}/uwsgi;
    scgi_temp_path {dir}/scgi;
    server {{
        listen 127.0.0.1:{port} ssl;
        ssl_certificate {cert};
        ssl_certificate_key {key};
        location / {{
            proxy_pass http://127.0.0.1:{upstream};
            proxy_buffering off;
            proxy_http_version 1.1;
            proxy_set_header Connection "";
            proxy_read_timeout 3600s;
        }}
    }}
}}
"""


# --- the certificates ---------------------------------------------------------------

_PKI = {}


def openssl(*args, cwd):
    r = subprocess.run(["openssl", *args], cwd=cwd, capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, f"openssl {' '.join(args)} failed: {r.stderr[-600:]}"


def pki():
    """The test CA and its server certificates, made once per run:
    {"ca": ca.pem, name: (cert.pem, key.pem) for each of SERVER_CERTS}."""
    if _PKI:
        return _PKI
    d = Path(tempfile.mkdtemp(prefix="jarvas-tls-pki-"))
    atexit.register(shutil.rmtree, d, True)
    d.chmod(0o755)  # the responders' unprivileged user reads ca.pem
    ec = ["-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:P-256", "-nodes"]
    openssl("req", "-x509", *ec, "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=jarvas test CA", "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign", cwd=d)
    (d / "ca.pem").chmod(0o644)
    for name, san in SERVER_CERTS.items():
        (d / f"{name}.ext").write_text(
            f"subjectAltName={san}\nbasicConstraints=CA:FALSE\n"
            "keyUsage=critical,digitalSignature\nextendedKeyUsage=serverAuth\n")
        openssl("req", *ec, "-keyout", f"{name}.key", "-out", f"{name}.csr",
                "-subj", f"/CN={san.split(':')[-1]}", cwd=d)
        openssl("x509", "-req", "-in", f"{name}.csr", "-CA", "ca.pem", "-CAkey", "ca.key",
                "-CAcreateserial", "-days", "2", "-extfile", f"{name}.ext",
                "-out", f"{name}.pem", cwd=d)
        _PKI[name] = (str(d / f"{name}.pem"), str(d / f"{name}.key"))
    _PKI["ca"] = str(d / "ca.pem")
    return _PKI


# --- the TLS proxy ------------------------------------------------------------------


class TlsProxy:
    """nginx on 127.0.0.1:port presenting one of SERVER_CERTS, proxying
    to 127.0.0.1:upstream; its files in a directory of its own."""

    def __init__(self, port, upstream, cert):
        self.port, self.upstream, self.cert = port, upstream, cert
        self.dir = self.proc = None

    def start(self):
        self.dir = Path(tempfile.mkdtemp(prefix="jarvas-tls-nginx-"))
        self.dir.chmod(0o755)
        cert, key = pki()[self.cert]
        conf = self.dir / "nginx.conf"
        conf.write_text(NGINX_CONF.format(dir=self.dir, port=self.port, cert=cert, key=key,
                                          upstream=self.upstream))
        with open(self.dir / "stderr.log", "wb") as err:
            self.proc = subprocess.Popen(
                ["nginx", "-p", f"{self.dir}/", "-e", str(self.dir / "error.log"),
                 "-c", str(conf)], stdin=subprocess.DEVNULL, stdout=err, stderr=err)
        deadline = time.monotonic() + 10
        while not self._listening():
            if self.proc.poll() is not None or time.monotonic() > deadline:
                raise AssertionError("the TLS proxy did not start:\n" + self.logs())
            time.sleep(0.05)
        return self

    def _listening(self):
        with contextlib.suppress(OSError), socket.create_connection(
                ("127.0.0.1", self.port), timeout=1):
            return True
        return False

    def logs(self):
        return "".join(harness.log_tail(self.dir / n, 10)
                       for n in ("stderr.log", "error.log"))

    def access_log(self):
        return (self.dir / "access.log").read_text(errors="replace")

    def stop(self):
        if self.proc is not None:
            harness.end_process(self.proc, 10)
            self.proc = None
        if self.dir is not None:
            shutil.rmtree(self.dir, ignore_errors=True)
            self.dir = None


@contextlib.contextmanager
def tls_upstream(api="openai", cert="localhost", ca=True, key=KEY):
    """(stack, proxy): a Stack whose upstream is https://127.0.0.1:<proxy>,
    speaking `api` with `key`, the CA file given when `ca`; the proxy
    presents SERVER_CERTS[cert] in front of the stack's fake (which wants
    KEY)."""
    certs = pki()  # first: a failing openssl is the test's failure, not a stack's
    port = harness.free_port()
    env = dict(JARVAS_UPSTREAM_API=api, JARVAS_UPSTREAM_URL=f"https://127.0.0.1:{port}",
               JARVAS_UPSTREAM_API_KEY=key)
    if ca:
        env["JARVAS_UPSTREAM_CA_FILE"] = certs["ca"]
    stack = harness.Stack(env, fake_key=KEY)
    proxy = None
    try:
        stack.start()
        proxy = TlsProxy(port, stack.fake_port, cert).start()
        yield stack, proxy
    finally:
        if proxy is not None:
            proxy.stop()
        stack.stop()


# --- the exchanges --------------------------------------------------------------------


def streamed(stack, user, text, **kw):
    c = conv()
    return c, stack.sse(STREAM + query(message="tls " + fake_text(text, **kw), conversation_id=c),
                        token=user["access"], timeout=30)


def chat(stack, user, text):
    return stack.request("POST", "/api/chat/", token=user["access"],
                         json={"message": "tls " + fake_text(text)}, timeout=30)


def error_message(stack, user):
    """The message of the error event that ends a stream."""
    c, ev = streamed(stack, user, "never seen")
    return parse_stream(ev, c, outcome="error")["final"]["message"]


# --- a verified upstream --------------------------------------------------------------


@harness.cases(["openai", "ollama"])
def test_an_https_upstream_with_the_ca_given_serves_every_path(stack, api):
    with tls_upstream(api) as (own, proxy):
        user = account(own, "tls")
        c, ev = streamed(own, user, "".join(WORDS), delay_ms=150)
        s = parse_stream(ev, c)
        assert [e["data"]["content"] for e in s["chunks"]] == WORDS, describe(ev)
        times = [e["t"] for e in s["chunks"]]
        assert times[-1] - times[0] >= 0.4, f"chunks bunched: {describe(ev)}"

        r = chat(own, user, "a whole answer")
        assert r.status == 200, r
        assert r.json()["response"] == "a whole answer", r

        r = own.request("GET", "/api/health/")
        assert r.status == 200, r
        assert r.json()["upstream"] == "ok", r
        assert r.json()["upstream_url"] == own.env["JARVAS_UPSTREAM_URL"], r

        r = own.request("GET", "/api/models/", token=user["access"])
        assert r.status == 200, r
        assert r.json() == {"default": MODEL, "upstream": "ok", "models": [
            {"name": MODEL, "default": True, "available": True}]}, r

        # It all went through the TLS proxy, by the protocol asked for.
        path = {"openai": "/v1/chat/completions", "ollama": "/api/chat"}[api]
        assert proxy.access_log().count(f"POST {path} ") == 2, proxy.access_log()[-600:]
        assert [q["api"] for q in own.fake_requests()] == [api, api]


# --- an upstream that does not verify -------------------------------------------------

# name, certificate the proxy presents, whether the stack has the CA file
UNVERIFIED = [
    ("a_ca_the_system_does_not_know", "localhost", False),
    ("a_certificate_for_another_host_name", "elsewhere", True),
]


@harness.cases(UNVERIFIED)
def test_an_upstream_certificate_that_does_not_verify_is_refused_everywhere(stack, case):
    _, cert, ca = case
    with tls_upstream(cert=cert, ca=ca) as (own, proxy):
        url = own.env["JARVAS_UPSTREAM_URL"]
        user = account(own, "badcert")
        message = error_message(own, user)
        assert "certificate" in message and url in message, message

        r = chat(own, user, "never seen")
        assert r.status == 502, r
        assert "certificate" in r.json()["detail"], r

        r = own.request("GET", "/api/health/")
        assert r.status == 503, r
        body = r.json()
        assert body["database"] == "ok", body
        assert body["upstream"].startswith("error: ") and "certificate" in body["upstream"], body

        r = own.request("GET", "/api/models/", token=user["access"])
        assert r.status == 200, r
        body = r.json()
        assert "certificate" in body["upstream"], body
        assert body["models"] == [{"name": MODEL, "default": True, "available": None}], body

        # Refused at the handshake: no request reached the server, and the
        # failures count as failures to connect.
        assert own.fake_requests() == [], own.fake_requests()
        assert "POST" not in proxy.access_log(), proxy.access_log()[-600:]
        assert scrape(own).get("jarvas_upstream_errors_total", kind="connect") == 2


# --- the API key ----------------------------------------------------------------------


def test_a_wrong_api_key_gives_the_user_the_servers_reason(stack):
    reason = "Incorrect API key provided."
    with tls_upstream(key=WRONG_KEY) as (own, _):
        user = account(own, "wrongkey")
        message = error_message(own, user)
        assert message.startswith(reason), message

        r = chat(own, user, "never seen")
        assert r.status == 502, r
        assert r.json()["detail"].startswith(reason), r

        r = own.request("GET", "/api/health/")
        assert r.status == 503, r
        assert r.json()["upstream"].startswith("error: GET /v1/models answered HTTP 401: "
                                               + reason), r.json()


# name, the key the stack holds (the fake always wants KEY)
KEYS = [("accepted", KEY), ("refused", WRONG_KEY)]


@harness.cases(KEYS)
def test_the_api_key_is_in_no_log_nor_in_health_or_metrics(stack, case):
    _, key = case
    with tls_upstream(key=key) as (own, _):
        user = account(own, "keylog")
        streamed(own, user, "a stream")
        streamed(own, user, "cut short", error_after=1)
        chat(own, user, "a chat")
        own.request("GET", "/api/models/", token=user["access"])
        shown = {"/api/health/": own.request("GET", "/api/health/").text,
                 "/api/metrics": own.request("GET", "/api/metrics").text}
        for name, text in shown.items():
            assert key not in text, f"{name} shows the key"
        logs = sorted((own.state / "log").glob("*"))
        assert any('path="/api/chat/stream"' in p.read_text(errors="replace") for p in logs), \
            "the stream's log line is missing: the logs looked at are not the stack's"
        for p in logs:
            assert key.encode() not in p.read_bytes(), f"{p.name} holds the key"
