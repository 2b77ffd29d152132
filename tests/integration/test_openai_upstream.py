"""jarvas against an OpenAI-compatible upstream (JARVAS_UPSTREAM_API=openai):
what only that protocol has. The rest of the OpenAI path is the whole
streaming and chat suite run a second time against the fake's /v1/
endpoints (JARVAS_TEST_UPSTREAM_API=openai in make test); these tests run
in either pass, on a stack of their own."""

import time

import harness
from test_stream import (account, conv, fake, fake_request, history, marker, pairs,
                         parse_stream, stream)

CHAT = "/api/chat/"
OPENAI = dict(JARVAS_UPSTREAM_API="openai")
TEXT = ["Olá", "!", " Tudo", " bem", "?", ' "quoted"', " new\nline", " emoji 🎉"]


def chat(stack, user, message, conversation):
    return stack.request("POST", CHAT, json={"message": message, "conversation_id": conversation},
                         token=user["access"])


@harness.stack_env(**OPENAI)
def test_the_request_is_openais_streamed_chat_with_usage_asked_for(stack):
    user, c, mark = account(stack, "oa"), conv(), marker()
    s = parse_stream(stream(stack, user, f"{mark} " + fake(tokens=3), c), c)
    rec = fake_request(stack, mark)
    assert rec["api"] == "openai", rec
    body = rec["body"]
    assert body["model"] == "llama3.2" and body["stream"] is True, body
    assert body["stream_options"] == {"include_usage": True}, body
    assert [m["role"] for m in body["messages"]] == ["system", "user"], body
    assert body["messages"][-1]["content"] == f"{mark} " + fake(tokens=3), body
    assert s["final"]["usage"]["completion_tokens"] == 3, s["final"]


# name, fake keys: every way an OpenAI stream may end whole
WHOLE_ENDS = [
    ("finish_usage_done", {}),
    ("comments_between_events", dict(comments=1)),
    ("no_done_marker", dict(no_end=1)),
    ("no_done_marker_and_the_body_left_open", dict(no_end=1, linger=1)),
    ("done_and_the_body_left_open", dict(linger=1)),
]


@harness.stack_env(**OPENAI)
@harness.cases(WHOLE_ENDS)
def test_a_finished_answer_ends_with_done_however_it_ends(stack, case):
    _, keys = case
    user, c = account(stack, "oa"), conv()
    t0 = time.monotonic()
    s = parse_stream(stream(stack, user, "x " + fake(tokens=8, **keys), c, timeout=20), c)
    took = time.monotonic() - t0
    assert s["text"] == "".join(TEXT), s["text"]
    assert s["final"]["status"] == "done" and s["final"]["finish_reason"] == "stop", s["final"]
    assert s["final"]["usage"]["completion_tokens"] == 8, s["final"]
    r = chat(stack, user, "y " + fake(tokens=8, **keys), c)
    assert r.status == 200 and r.json()["response"] == "".join(TEXT), r
    # an open body after the finish is ended within the grace, not the idle timeout (120 s)
    assert took < 15, took
    assert pairs(history(stack, user, c))[1] == ("assistant", "".join(TEXT))


# name, fake keys, the reason the client is told
FAILURES = [
    ("openai_error_event", dict(error_after=2, message="engine%20overloaded"),
     "engine overloaded"),
    ("vllm_error_event", dict(error_after=2, error_style="vllm", message="bad%20input"),
     "bad input"),
    ("malformed_event", dict(malformed_after=2), "malformed"),
    ("cut_before_the_finish", dict(cut_after=2), "broke"),
    ("ended_without_a_finish", dict(nodone=1, tokens=2), "ended before"),
    ("http_error_in_openai_shape", dict(status=503, message="try%20later"), "try later"),
]


@harness.stack_env(**OPENAI)
@harness.cases(FAILURES)
def test_an_openai_failure_ends_in_an_error_event_and_a_502(stack, case):
    _, keys, reason = case
    user, c = account(stack, "oa"), conv()
    s = parse_stream(stream(stack, user, "x " + fake(**keys), c), c, outcome="error")
    assert reason in s["final"]["message"], s["final"]
    r = chat(stack, user, "y " + fake(**keys), conv())
    assert r.status == 502 and reason in r.json()["detail"], r
    sent = [m for m in history(stack, user, c) if m["role"] == "assistant"]
    # what the client was sent before the failure is what history keeps
    assert [m["content"] for m in sent] == ([s["text"]] if s["text"] else []), sent


@harness.stack_env(JARVAS_UPSTREAM_API="openai",
                   JARVAS_UPSTREAM_URL="http://user:hunter2@127.0.0.1:9")
def test_health_names_the_protocol_and_hides_credentials_in_the_url(stack):
    r = stack.request("GET", "/api/health/")
    body = r.json()
    assert r.status == 503 and body["upstream"].startswith("error: "), body
    assert body["upstream_api"] == "openai", body
    assert body["upstream_url"] == "http://***@127.0.0.1:9", body
    assert "hunter2" not in r.body.decode(), body
