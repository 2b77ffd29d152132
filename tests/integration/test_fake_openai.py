"""tests/fake_ollama speaks OpenAI's chat completions protocol (issue 13).

The fake alone, over plain http.client on 127.0.0.1 (the stack's own fake,
by stack.fake_port; the -k test starts one of its own): POST
/v1/chat/completions streams server-sent events whose deltas are exactly
the contents /api/chat sends for the same directive, ends with a finish
chunk, a usage chunk only when stream_options.include_usage asks, and
data: [DONE]; answers non-stream requests with one chat.completion; GET
/v1/models lists /api/tags' models; every failure mode has its OpenAI (or
vLLM) shape; /_fake/requests records which API a request came by."""

import http.client
import json
import socket
import subprocess
import time
import uuid
from urllib.parse import quote_from_bytes

import harness

FAKE = harness.FAKE_OLLAMA
TIMEOUT = 10


def fake(**kw):
    return "[[fake " + " ".join(f"{k}={v}" for k, v in kw.items()) + "]]"


def mark():
    return "m" + uuid.uuid4().hex[:12]


def loads(raw):
    """JSON of bytes that may hold invalid UTF-8 (the fake relays any bytes)."""
    return json.loads(raw.decode("utf-8", "surrogateescape"))


class Answer:
    def __init__(self, status, headers, body, complete):
        self.status = status
        self.headers = headers
        self.body = body
        self.complete = complete  # False: the connection ended mid-body

    def json(self):
        return loads(self.body)


def call(port, method, path, body=None, headers=None, timeout=TIMEOUT):
    """The whole answer; a body cut short is returned as far as it came."""
    c = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout)
    try:
        data = body if isinstance(body, (bytes, type(None))) else json.dumps(body).encode()
        h = {"Content-Type": "application/json"} if data is not None else {}
        h.update(headers or {})
        c.request(method, path, body=data, headers=h)
        r = c.getresponse()
        try:
            raw, complete = r.read(), True
        except http.client.IncompleteRead as e:
            raw, complete = e.partial, False
        return Answer(r.status, {k.lower(): v for k, v in r.getheaders()}, raw, complete)
    finally:
        c.close()


def chat_body(content, stream=None, usage=None, model="llama3.2:latest", messages=None):
    b = {"model": model,
         "messages": messages or [{"role": "system", "content": "be brief"},
                                  {"role": "user", "content": content}]}
    if stream is not None:
        b["stream"] = stream
    if usage is not None:
        b["stream_options"] = {"include_usage": usage}
    return b


def openai(stack, content, stream=True, usage=None, **kw):
    return call(stack.fake_port, "POST", "/v1/chat/completions",
                chat_body(content, stream, usage, **kw))


def ollama(stack, content, stream=True):
    return call(stack.fake_port, "POST", "/api/chat", chat_body(content, stream))


def sse(body):
    """Server-sent events as the spec reads them: [(data, comments before)]
    of the dispatched events, and whether anything followed the last one."""
    events, data, comments, tail = [], None, 0, False
    for line in body.decode("utf-8", "surrogateescape").split("\n"):
        line = line.removesuffix("\r")
        if line == "":
            if data is not None:
                events.append(("\n".join(data), comments))
                comments = 0
            data, tail = None, False
            continue
        tail = True
        if line.startswith(":"):
            comments += 1
        elif line.startswith("data:"):
            v = line[5:].removeprefix(" ")
            data = [v] if data is None else data + [v]
    return events, tail


def ndjson(body):
    return [loads(ln) for ln in body.split(b"\n") if ln.strip()]


def ollama_pieces(stack, content):
    """The content of each /api/chat line for this directive, and its done line."""
    a = ollama(stack, content)
    assert a.status == 200 and a.complete, (a.status, a.body[:300])
    lines = ndjson(a.body)
    assert lines[-1]["done"] is True, lines[-1]
    return [ln["message"]["content"] for ln in lines[:-1]], lines[-1]


def openai_stream(stack, content, usage=None):
    """(chunks as JSON, the raw events) of a healthy OpenAI stream."""
    a = openai(stack, content, stream=True, usage=usage)
    assert a.status == 200 and a.complete, (a.status, a.body[:300])
    assert a.headers["content-type"].startswith("text/event-stream"), a.headers
    assert a.headers.get("transfer-encoding") == "chunked", a.headers
    events, tail = sse(a.body)
    assert not tail, a.body[-200:]
    assert events and events[-1][0] == "[DONE]", events[-3:]
    return [loads(d.encode("utf-8", "surrogateescape")) for d, _ in events[:-1]], events


def check_chunks(chunks, model="llama3.2:latest"):
    """The common fields; returns the deltas' contents (finish chunk excluded)."""
    ids = {c["id"] for c in chunks}
    assert len(ids) == 1 and ids.pop().startswith("chatcmpl-"), chunks[:2]
    assert {c["object"] for c in chunks} == {"chat.completion.chunk"}
    assert len({c["created"] for c in chunks}) == 1 and isinstance(chunks[0]["created"], int)
    assert {c["model"] for c in chunks} == {model}
    content = [c for c in chunks if c["choices"]]
    for i, c in enumerate(content):
        (ch,) = c["choices"]
        assert ch["index"] == 0
        if i == 0:
            assert ch["delta"].get("role") == "assistant", ch
        else:
            assert "role" not in ch["delta"], ch
    *tokens, fin = content
    assert fin["choices"][0]["finish_reason"] in ("stop", "length"), fin
    for t in tokens:
        assert t["choices"][0]["finish_reason"] is None, t
        assert set(t["choices"][0]["delta"]) <= {"role", "content"}, t
    return [t["choices"][0]["delta"]["content"] for t in tokens], fin


def text_bytes(data):
    return quote_from_bytes(data, safe="")


# directives whose content must come through both protocols alike
SAME = [
    ("default_tokens", {"tokens": 10}),
    ("one_token", {"tokens": 1}),
    ("twenty_tokens_cycle", {"tokens": 20}),
    ("text_words", {"text": text_bytes("Olá <b>&amp;</b> \"q\" \\ 🎉\ttab\nnl \u2028 end".encode())}),
    ("text_one_byte_split_utf8", {"text": text_bytes("ção 🎉 €".encode()), "chunk": 1,
                                  "split_utf8": 1}),
    ("text_chunk3", {"text": text_bytes("ção 🎉 € abc".encode()), "chunk": 3}),
    ("invalid_utf8_and_nul", {"text": text_bytes(b"a\x80b \xf0\x9f\x8e x\x00y"), "chunk": 2,
                              "split_utf8": 1}),
    ("long_line", {"long_line": 70000}),
]


@harness.cases(SAME, name=lambda c: c[0])
def test_stream_deltas_are_the_ollama_contents(stack, case):
    _, keys = case
    content = "same " + fake(**keys)
    pieces, done = ollama_pieces(stack, content)
    chunks, events = openai_stream(stack, content)
    deltas, fin = check_chunks(chunks)
    assert deltas == pieces, (deltas[:5], pieces[:5])
    assert fin["choices"][0] == {"index": 0, "delta": {}, "finish_reason": "stop"}, fin
    assert all("usage" not in c for c in chunks), chunks[-1]
    assert all(n == 0 for _, n in events), "no comments unless asked"
    # and the same content JSON-escaped byte for byte
    a = openai(stack, content, stream=True)
    o = ollama(stack, content)
    esc_o = [ln.split(b'"content":', 1)[1].rsplit(b'},"done"', 1)[0]
             for ln in o.body.split(b"\n") if ln.strip()][:-1]
    esc_a = [ev.split(b'"content":', 1)[1].rsplit(b'},"finish_reason"', 1)[0]
             for ev in a.body.split(b"\n\n") if b'"content":' in ev]
    assert esc_a == esc_o, (esc_a[:3], esc_o[:3])


def test_zero_tokens_finish_carries_the_role(stack):
    chunks, _ = openai_stream(stack, "none " + fake(tokens=0))
    assert len(chunks) == 1, chunks
    assert chunks[0]["choices"] == [{"index": 0, "finish_reason": "stop",
                                     "delta": {"role": "assistant", "content": ""}}], chunks


def test_usage_chunk_only_with_include_usage(stack):
    content = "usage " + fake(tokens=5)
    _, done = ollama_pieces(stack, content)
    for usage in (None, False):
        chunks, _ = openai_stream(stack, content, usage=usage)
        assert all("usage" not in c for c in chunks), (usage, chunks[-1])
        assert chunks[-1]["choices"][0]["finish_reason"] == "stop"
    chunks, _ = openai_stream(stack, content, usage=True)
    last = chunks[-1]
    assert last["choices"] == [], last
    assert last["usage"] == {"prompt_tokens": done["prompt_eval_count"], "completion_tokens": 5,
                             "total_tokens": done["prompt_eval_count"] + 5}, (last, done)
    assert done["eval_count"] == 5
    # OpenAI sends "usage": null on the other chunks then
    assert all(c["usage"] is None for c in chunks[:-1]), chunks[:-1]
    deltas, fin = check_chunks(chunks)
    assert len(deltas) == 5 and fin["choices"][0]["finish_reason"] == "stop"


def test_non_stream_answer(stack):
    content = "whole " + fake(tokens=7)
    o = ollama(stack, content, stream=False)
    assert o.status == 200, o.body
    o = o.json()
    for stream in (False, None):  # OpenAI's stream defaults to false
        a = openai(stack, content, stream=stream)
        assert a.status == 200 and a.headers["content-type"].startswith("application/json"), a.headers
        j = a.json()
        assert j["id"].startswith("chatcmpl-") and j["object"] == "chat.completion", j
        assert isinstance(j["created"], int) and j["model"] == "llama3.2:latest", j
        assert j["choices"] == [{"index": 0, "finish_reason": "stop",
                                 "message": {"role": "assistant",
                                             "content": o["message"]["content"]}}], j
        assert j["usage"] == {"prompt_tokens": o["prompt_eval_count"], "completion_tokens": 7,
                              "total_tokens": o["prompt_eval_count"] + 7}, j


def test_finish_length(stack):
    content = "long " + fake(tokens=3, finish="length")
    chunks, _ = openai_stream(stack, content, usage=True)
    _, fin = check_chunks(chunks)
    assert fin["choices"][0]["finish_reason"] == "length", fin
    j = openai(stack, content, stream=False).json()
    assert j["choices"][0]["finish_reason"] == "length", j
    _, done = ollama_pieces(stack, content)
    assert done["done_reason"] == "length", done
    _, done = ollama_pieces(stack, "stop " + fake(tokens=3))
    assert done["done_reason"] == "stop", done


def openai_error(a, status, message=None, code=None, param=None):
    assert a.status == status, (a.status, a.body[:300])
    assert a.headers["content-type"].startswith("application/json"), a.headers
    j = a.json()
    assert set(j) == {"error"}, j
    e = j["error"]
    assert set(e) == {"message", "type", "param", "code"}, e
    assert e["type"] == ("server_error" if status >= 500 else "invalid_request_error"), e
    if message is not None:
        assert e["message"] == message, e
    else:
        assert isinstance(e["message"], str) and e["message"], e
    assert e["code"] == code and e["param"] == param, e
    return e


def test_http_errors_in_openai_shape(stack):
    for stream in (True, False):
        openai_error(openai(stack, "x " + fake(status=503, message="busy%20now"), stream),
                     503, "busy now")
        openai_error(openai(stack, "x " + fake(status=429), stream), 429,
                     "fake upstream failure")
        openai_error(openai(stack, "x " + fake(model_missing=1), stream, model="nope:1b"), 404,
                     "The model `nope:1b` does not exist or you do not have access to it.",
                     code="model_not_found")
        # and vLLM's shape when asked for
        a = openai(stack, "x " + fake(status=400, message="too%20long", error_style="vllm"),
                   stream)
        assert a.status == 400 and a.json() == {"object": "error", "message": "too long",
                                                "type": "BadRequestError", "param": None,
                                                "code": 400}, a.body
        a = openai(stack, "x " + fake(model_missing=1, error_style="vllm"), stream)
        assert a.status == 404 and a.json()["type"] == "NotFoundError", a.body
        a = openai(stack, "x " + fake(status=502, error_style="vllm"), stream)
        assert a.status == 502 and a.json()["type"] == "InternalServerError", a.body
    # the Ollama side keeps its own shape
    o = ollama(stack, "x " + fake(status=503, message="busy"))
    assert o.status == 503 and o.json() == {"error": "busy"}, o.body


def test_bad_requests_in_openai_shape(stack):
    port = stack.fake_port
    post = lambda body: call(port, "POST", "/v1/chat/completions", body)  # noqa: E731
    openai_error(post(b""), 400)
    openai_error(post(b"{not json"), 400)
    openai_error(post(b"[1,2]"), 400)
    openai_error(post({"messages": [{"role": "user", "content": "hi"}]}), 400)
    openai_error(post({"model": "", "messages": [{"role": "user", "content": "hi"}]}), 400)
    openai_error(post({"model": "m"}), 400, param="messages", code="missing_required_parameter")
    openai_error(post({"model": "m", "messages": []}), 400, param="messages", code="empty_array")
    openai_error(post({"model": "m", "messages": "hi"}), 400, param="messages",
                 code="invalid_type")
    openai_error(post({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": "yes"}), 400, param="stream", code="invalid_type")
    openai_error(post({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream_options": {"include_usage": True}}), 400,
                 param="stream_options", code="invalid_value")
    openai_error(post({"model": "m", "messages": [{"role": "user", "content": "hi"}],
                       "stream": True, "stream_options": {"include_usage": "yes"}}), 400,
                 param="stream_options.include_usage", code="invalid_type")


def test_error_mid_stream(stack):
    a = openai(stack, "e " + fake(tokens=5, error_after=2, message="it%20broke"))
    assert a.status == 200 and a.complete, a.body
    events, tail = sse(a.body)
    assert not tail and len(events) == 3, events
    chunks = [json.loads(d) for d, _ in events[:2]]
    assert [c["choices"][0]["delta"]["content"] for c in chunks] == ["Olá", "!"], chunks
    assert json.loads(events[2][0]) == {"error": {"message": "it broke", "type": "server_error",
                                                  "param": None, "code": None}}, events[2]
    # vLLM: its error object, then [DONE]
    a = openai(stack, "e " + fake(tokens=5, error_after=1, error_style="vllm"))
    events, tail = sse(a.body)
    assert a.complete and not tail and len(events) == 3, events
    assert json.loads(events[1][0]) == {"object": "error", "message": "fake error mid-stream",
                                        "type": "BadRequestError", "param": None,
                                        "code": 400}, events[1]
    assert events[2][0] == "[DONE]"
    # at once, and non-stream: HTTP 500
    a = openai(stack, "e " + fake(error_after=0))
    events, _ = sse(a.body)
    assert [json.loads(d)["error"]["message"] for d, _ in events] == ["fake error mid-stream"]
    openai_error(openai(stack, "e " + fake(error_after=2, message="late"), stream=False), 500,
                 "late")


def test_malformed_event(stack):
    a = openai(stack, "bad " + fake(tokens=5, malformed_after=1))
    assert a.status == 200 and a.complete, a.body
    events, tail = sse(a.body)
    assert len(events) == 2 and not tail, events
    json.loads(events[0][0])
    try:
        json.loads(events[1][0])
        raise AssertionError(f"the malformed event parses: {events[1]!r}")
    except json.JSONDecodeError:
        pass
    assert events[1][0].startswith("{") and "broken" in events[1][0], events[1]
    a = openai(stack, "bad " + fake(malformed_after=0), stream=False)
    assert a.status == 200, a.body
    try:
        a.json()
        raise AssertionError(f"the malformed answer parses: {a.body!r}")
    except json.JSONDecodeError:
        pass


def test_cut_and_nodone(stack):
    a = openai(stack, "cut " + fake(tokens=6, cut_after=3), usage=True)
    assert a.status == 200 and not a.complete, a.body[-200:]
    events, _ = sse(a.body)
    assert len(events) == 3 and all(json.loads(d)["choices"][0]["finish_reason"] is None
                                    for d, _ in events), events
    # non-stream cut: the connection closes without an answer
    try:
        a = openai(stack, "cut " + fake(cut_after=2), stream=False)
        raise AssertionError(f"an answer came: {a.status} {a.body[:200]!r}")
    except (http.client.RemoteDisconnected, ConnectionError):
        pass
    # nodone: the body ends properly with neither finish, usage nor [DONE]
    a = openai(stack, "nd " + fake(tokens=3, nodone=1), usage=True)
    assert a.status == 200 and a.complete, a.body
    events, tail = sse(a.body)
    assert len(events) == 3 and not tail, events
    assert all(json.loads(d)["choices"][0]["finish_reason"] is None for d, _ in events), events
    j = openai(stack, "nd " + fake(tokens=3, nodone=1), stream=False).json()
    assert j["choices"][0]["finish_reason"] is None, j


def test_garbage(stack):
    a = openai(stack, "g " + fake(garbage=1, tokens=3))
    assert a.status == 200 and a.complete, a.body
    assert a.headers["content-type"].startswith("text/event-stream"), a.headers
    assert a.body.count(b"\n") == 3 and b"not json" in a.body and b"data:" not in a.body, a.body
    o = ollama(stack, "g " + fake(garbage=1, tokens=3))
    assert o.body == a.body


def test_comments_between_events(stack):
    content = "c " + fake(tokens=4)
    plain, _ = openai_stream(stack, content, usage=True)
    chunks, events = openai_stream(stack, content + " " + fake(comments=1), usage=True)
    assert [c["choices"] for c in chunks] == [c["choices"] for c in plain]
    assert [n for _, n in events] == [1] * len(events), events
    a = openai(stack, content + " " + fake(comments=1))
    assert b"\n\n: keep-alive\n\ndata: " in a.body and a.body.startswith(b": keep-alive\n\n")


def test_delays(stack):
    t = time.monotonic()
    chunks, _ = openai_stream(stack, "slow " + fake(tokens=3, delay_ms=60, first_ms=50,
                                                    headers_ms=50))
    took = time.monotonic() - t
    # headers 50, the first token at 100, the others and the finish 60 apart
    assert len(chunks) == 4 and 0.27 <= took < 5, took


def test_hang_then_client_closes(stack):
    m = mark()
    c = http.client.HTTPConnection("127.0.0.1", stack.fake_port, timeout=TIMEOUT)
    try:
        c.request("POST", "/v1/chat/completions",
                  body=json.dumps(chat_body(f"{m} " + fake(tokens=9, hang=1, hang_after=2),
                                            True)).encode())
        r = c.getresponse()
        assert r.status == 200
        got = b""
        while got.count(b"\n\n") < 2:
            got += r.read1(65536)
        c.sock.settimeout(0.5)
        try:
            more = r.read1(65536)
            raise AssertionError(f"the hung stream sent {more!r}")
        except (socket.timeout, TimeoutError):
            pass
        events, _ = sse(got)
        assert len(events) == 2, events
    finally:
        c.close()
    deadline = time.monotonic() + 5
    while True:
        (rec,) = [r for r in stack.fake_requests() if (r["last_content"] or "").startswith(m)]
        if rec["finished"] or time.monotonic() > deadline:
            break
        time.sleep(0.05)
    assert rec["api"] == "openai" and rec["client_closed"] and rec["tokens_sent"] == 2, rec


def test_linger_keeps_the_body_open_after_done(stack):
    c = http.client.HTTPConnection("127.0.0.1", stack.fake_port, timeout=TIMEOUT)
    try:
        c.request("POST", "/v1/chat/completions",
                  body=json.dumps(chat_body("l " + fake(tokens=2, linger=1), True)).encode())
        r = c.getresponse()
        got = b""
        while b"data: [DONE]\n\n" not in got:
            more = r.read1(65536)
            assert more, got
            got += more
        c.sock.settimeout(0.5)
        try:
            more = r.read1(65536)
            raise AssertionError(f"the lingering body went on: {more!r}")
        except (socket.timeout, TimeoutError):
            pass
        assert len(sse(got)[0]) == 4, got  # two tokens, the finish, [DONE]
    finally:
        c.close()


def test_http10_client_gets_the_events_unchunked(stack):
    body = json.dumps(chat_body("h " + fake(tokens=3), True, True)).encode()
    with socket.create_connection(("127.0.0.1", stack.fake_port), timeout=TIMEOUT) as s:
        s.sendall(b"POST /v1/chat/completions HTTP/1.0\r\nContent-Type: application/json\r\n"
                  b"Content-Length: %d\r\n\r\n" % len(body) + body)
        raw = b""
        while chunk := s.recv(65536):
            raw += chunk
    head, _, rest = raw.partition(b"\r\n\r\n")
    assert head.startswith(b"HTTP/1.1 200") and b"chunked" not in head.lower(), head
    assert b"text/event-stream" in head, head
    events, tail = sse(rest)
    assert not tail and [d for d, _ in events][-1] == "[DONE]" and len(events) == 6, events


def test_v1_models_lists_the_tags(stack):
    a = call(stack.fake_port, "GET", "/v1/models")
    assert a.status == 200 and a.headers["content-type"].startswith("application/json"), a
    j = a.json()
    tags = call(stack.fake_port, "GET", "/api/tags").json()
    assert j["object"] == "list", j
    assert [d["id"] for d in j["data"]] == [t["name"] for t in tags["models"]], (j, tags)
    for d in j["data"]:
        assert d["object"] == "model" and isinstance(d["created"], int), d
        assert d["owned_by"] == "library", d
    h = call(stack.fake_port, "HEAD", "/v1/models")
    assert h.status == 200 and h.body == b""


def test_requests_record_the_api(stack):
    m = mark()
    before = max([r["seq"] for r in stack.fake_requests()] or [0])
    openai_stream(stack, f"{m} a " + fake(tokens=2), usage=True)
    openai(stack, f"{m} b " + fake(tokens=2), stream=False)
    ollama_pieces(stack, f"{m} c " + fake(tokens=2))
    openai(stack, f"{m} d " + fake(status=500), stream=True)
    call(stack.fake_port, "POST", "/v1/chat/completions", {"model": "m", "messages": []})
    a = call(stack.fake_port, "GET", f"/_fake/requests?since={before}")
    recs = a.json()["requests"]
    mine = {(r["last_content"] or "")[len(m) + 1:len(m) + 2]: r for r in recs
            if (r["last_content"] or "").startswith(m)}
    assert set(mine) == {"a", "b", "c", "d"}, recs
    assert mine["a"]["api"] == "openai" and mine["a"]["stream"] is True, mine["a"]
    assert mine["a"]["tokens_sent"] == 2 and mine["a"]["status"] == 200, mine["a"]
    assert mine["a"]["body"]["stream_options"] == {"include_usage": True}, mine["a"]
    assert mine["a"]["message_count"] == 2 and mine["a"]["model"] == "llama3.2:latest"
    assert mine["b"]["api"] == "openai" and mine["b"]["stream"] is False, mine["b"]
    assert mine["c"]["api"] == "ollama" and mine["c"]["stream"] is True, mine["c"]
    assert mine["d"]["api"] == "openai" and mine["d"]["status"] == 500, mine["d"]
    for r in mine.values():
        assert r["finished"] and not r["client_closed"], r
    (bad,) = [r for r in recs if r["body"] == {"model": "m", "messages": []}]
    assert bad["api"] == "openai" and bad["status"] == 400 and bad["finished"], bad


def start_fake(*args):
    """A fake of this test's own: (process, port)."""
    p = subprocess.Popen([str(FAKE), "-p", "0", "-q", *args], stdin=subprocess.DEVNULL,
                         stdout=subprocess.PIPE, stderr=subprocess.DEVNULL)
    try:
        line = p.stdout.readline().decode()  # printed and flushed once it listens
        assert "listening on 127.0.0.1:" in line, line
        return p, int(line.rsplit(":", 1)[1])
    except BaseException:
        p.kill()
        p.wait(5)
        raise


def test_api_key(stack):
    p, port = start_fake("-k", "sk-test-123")
    try:
        body = chat_body("k " + fake(tokens=2), True)
        a = call(port, "POST", "/v1/chat/completions", body)
        e = openai_error(a, 401)
        assert "didn't provide an API key" in e["message"], e
        for auth in ("Bearer sk-wrong", "Basic sk-test-123", "Bearer sk-test-1234", "Bearer"):
            a = call(port, "POST", "/v1/chat/completions", body, {"Authorization": auth})
            openai_error(a, 401, code="invalid_api_key")
        openai_error(call(port, "GET", "/v1/models"), 401)
        ok = {"Authorization": "Bearer sk-test-123"}
        a = call(port, "POST", "/v1/chat/completions", body, ok)
        assert a.status == 200 and sse(a.body)[0][-1][0] == "[DONE]", a.body
        a = call(port, "POST", "/v1/chat/completions", body, {"Authorization": "bearer  sk-test-123"})
        assert a.status == 200, a.body
        assert call(port, "GET", "/v1/models", headers=ok).status == 200
        # Ollama's endpoints never ask
        assert call(port, "POST", "/api/chat", body).status == 200
        assert call(port, "GET", "/api/tags").status == 200
        recs = call(port, "GET", "/_fake/requests").json()["requests"]
        assert [r["status"] for r in recs if r["api"] == "openai"] == [401] * 5 + [200, 200], recs
    finally:
        p.terminate()
        try:
            p.wait(5)
        except subprocess.TimeoutExpired:
            p.kill()
            p.wait(5)
        p.stdout.close()
    assert p.returncode == 0, p.returncode
