"""Models and usage: the models a user may pick (JARVAS_MODELS, "model",
GET /api/models/), the model and token counts each reply keeps, the totals
of GET /api/usage/, the daily quota (JARVAS_TOKENS_PER_DAY) and
jarvas_tokens_total. Protocol-neutral: the same tests hold against the
fake's Ollama and OpenAI endpoints (JARVAS_TEST_UPSTREAM_API)."""

import datetime
import json
import os
import re
import subprocess

import harness
from test_stream import account, conv, fake, fake_request, history, marker, query

CHAT = "/api/chat/"
STREAM = "/api/chat/stream/"
MODELS = "/api/models/"
USAGE = "/api/usage/"
DEFAULT = "llama3.2"
OTHER = "qwen2.5:0.5b"  # the fake's second model
ABSENT = "absent-model:7b"  # allowed here, not on the fake
PICKABLE = dict(JARVAS_MODELS=f"{DEFAULT}, {OTHER},{ABSENT}")


def chat(stack, user, message, **extra):
    return stack.request("POST", CHAT, json=dict(message=message, **extra), token=user["access"])


def streamed(stack, user, message, method="GET", **params):
    """A finished stream: (status, the done or error event's data, text)."""
    if method == "GET":
        ev = stack.sse(STREAM + query(message=message, **params), token=user["access"])
    else:
        ev = stack.sse(STREAM, method="POST", json=dict(message=message, **params),
                       token=user["access"])
    if ev.status != 200:
        return ev.status, ev.body, None
    data = ev.data_events()
    text = "".join(e["data"]["content"] for e in data if e["event"] == "message")
    return ev.status, data[-1]["data"], text


def usage(stack, user, since=None):
    r = stack.request("GET", USAGE + (query(since=since) if since is not None else ""),
                      token=user["access"])
    assert r.status == 200, r
    return r.json()


def tokens_metric(stack, kind, model):
    r = stack.request("GET", "/api/metrics")
    assert r.status == 200, r
    m = re.search(r'^jarvas_tokens_total\{kind="%s",model="%s"\} (\d+)$'
                  % (kind, re.escape(model)), r.body.decode(), re.M)
    assert m, f"no jarvas_tokens_total for {kind}/{model}"
    return int(m.group(1))


# --- the models a request may name ------------------------------------------------


@harness.stack_env(**PICKABLE)
def test_models_lists_the_pickable_ones_the_default_first_and_what_the_upstream_has(stack):
    user = account(stack, "mo")
    r = stack.request("GET", MODELS, token=user["access"])
    assert r.status == 200, r
    body = r.json()
    assert body["default"] == DEFAULT and body["upstream"] == "ok", body
    # llama3.2 is the fake's llama3.2:latest (Ollama's default tag)
    assert body["models"] == [
        {"name": DEFAULT, "default": True, "available": True},
        {"name": OTHER, "default": False, "available": True},
        {"name": ABSENT, "default": False, "available": False},
    ], body


def test_models_needs_a_token(stack):
    r = stack.request("GET", MODELS)
    assert r.status == 401, r


@harness.stack_env(**PICKABLE)
def test_models_says_available_null_when_the_upstream_cannot_be_asked(stack):
    user = account(stack, "mo")
    stack.fake_stop()
    try:
        r = stack.request("GET", MODELS, token=user["access"])
    finally:
        stack.fake_start()
    assert r.status == 200, r
    body = r.json()
    assert body["upstream"].startswith("error: "), body
    assert [m["available"] for m in body["models"]] == [None, None, None], body


@harness.stack_env(**PICKABLE)
@harness.cases(["chat", "stream_get", "stream_post"])
def test_a_picked_model_goes_upstream_and_stays_with_the_reply(stack, how):
    user, c, mark = account(stack, "mo"), conv(), marker()
    message = f"{mark} " + fake(tokens=3)
    if how == "chat":
        r = chat(stack, user, message, model=OTHER, conversation_id=c)
        assert r.status == 200, r
        assert r.json()["model"] == OTHER, r.json()
    else:
        status, final, _ = streamed(stack, user, message, "GET" if how == "stream_get" else "POST",
                                    model=OTHER, conversation_id=c)
        assert status == 200 and final["model"] == OTHER, final
    assert fake_request(stack, mark)["model"] == OTHER
    msgs = history(stack, user, c)
    assert [(m["role"], m.get("model")) for m in msgs] == [("user", None), ("assistant", OTHER)]


@harness.stack_env(**PICKABLE)
def test_without_a_model_the_default_is_used(stack):
    user, c, mark = account(stack, "mo"), conv(), marker()
    r = chat(stack, user, f"{mark} " + fake(tokens=2), conversation_id=c)
    assert r.status == 200 and r.json()["model"] == DEFAULT, r
    assert fake_request(stack, mark)["model"] == DEFAULT
    assert history(stack, user, c)[1]["model"] == DEFAULT


BAD_MODELS = [
    ("not_in_the_list", "mistral", '"mistral" is not a valid choice.'),
    ("the_fake_name", "llama3.2:latest", '"llama3.2:latest" is not a valid choice.'),
    ("empty", "", '"" is not a valid choice.'),
    ("a_number", 7, "Not a valid string."),
    ("null", None, "This field may not be null."),
]


@harness.stack_env(**PICKABLE)
@harness.cases(BAD_MODELS)
def test_a_model_outside_the_list_is_400_and_nothing_is_stored(stack, case):
    _, model, reason = case
    user, c = account(stack, "mo"), conv()
    seen = len(stack.fake_requests())
    for r in (chat(stack, user, "hi", model=model, conversation_id=c),
              stack.request("POST", STREAM, json=dict(message="hi", model=model,
                                                      conversation_id=c),
                            token=user["access"])):
        assert r.status == 400, r
        assert r.json() == {"model": [reason]}, r.json()
    if isinstance(model, str):
        status, body, _ = streamed(stack, user, "hi", model=model, conversation_id=c)
        assert status == 400 and json.loads(body) == {"model": [reason]}, body
    assert history(stack, user, c) == []
    assert len(stack.fake_requests()) == seen


# --- usage ----------------------------------------------------------------------


def test_usage_sums_the_counts_of_each_reply_by_model(stack):
    user = account(stack, "us")
    want = {"prompt_tokens": 0, "completion_tokens": 0}
    for n in (2, 5):
        r = chat(stack, user, "count " + fake(tokens=n), conversation_id=conv())
        assert r.status == 200, r
        u = r.json()["usage"]
        assert u["completion_tokens"] == n, u
        for k in want:
            want[k] += u[k]
    status, final, _ = streamed(stack, user, "count " + fake(tokens=4), conversation_id=conv())
    assert status == 200 and final["usage"]["completion_tokens"] == 4, final
    for k in want:
        want[k] += final["usage"][k]
    got = usage(stack, user)
    total = want["prompt_tokens"] + want["completion_tokens"]
    assert got["since"] == datetime.datetime.now(datetime.timezone.utc).strftime(
        "%Y-%m-%dT00:00:00.000Z"), got
    assert {k: got[k] for k in ("prompt_tokens", "completion_tokens", "total_tokens",
                                "replies")} == dict(want, total_tokens=total, replies=3), got
    assert got["models"] == [dict(model=DEFAULT, total_tokens=total, replies=3, **want)], got
    assert got["quota"] is None, got


def test_usage_outlives_a_deleted_conversation_and_is_the_users_own(stack):
    user, other, c = account(stack, "us"), account(stack, "us"), conv()
    r = chat(stack, user, "count " + fake(tokens=3), conversation_id=c)
    assert r.status == 200, r
    spent = r.json()["usage"]
    d = stack.request("DELETE", "/api/chat/history/" + query(conversation_id=c),
                      token=user["access"])
    assert d.status == 204, d
    got = usage(stack, user)
    assert got["completion_tokens"] == 3 and got["prompt_tokens"] == spent["prompt_tokens"], got
    assert usage(stack, other)["replies"] == 0


SINCE = [
    ("a_date", "2000-01-01", "2000-01-01T00:00:00.000Z"),
    ("utc_time", "2000-01-01T08:30:00Z", "2000-01-01T08:30:00.000Z"),
    ("fraction", "2000-01-01T08:30:00.250Z", "2000-01-01T08:30:00.000Z"),
    ("an_offset", "2000-01-01T08:30:00+02:00", "2000-01-01T06:30:00.000Z"),
    ("no_seconds", "2000-01-01T08:30", "2000-01-01T08:30:00.000Z"),
    ("a_leap_day", "2024-02-29", "2024-02-29T00:00:00.000Z"),
]


@harness.cases(SINCE)
def test_usage_since_takes_a_date_or_an_iso_time(stack, case):
    _, since, normal = case
    user = account(stack, "us")
    assert chat(stack, user, "x " + fake(tokens=1), conversation_id=conv()).status == 200
    got = usage(stack, user, since)
    assert got["since"] == normal and got["replies"] == 1, got


def test_usage_since_a_later_time_counts_nothing(stack):
    user = account(stack, "us")
    assert chat(stack, user, "x " + fake(tokens=1), conversation_id=conv()).status == 200
    later = (datetime.datetime.now(datetime.timezone.utc) + datetime.timedelta(minutes=5))
    got = usage(stack, user, later.strftime("%Y-%m-%dT%H:%M:%SZ"))
    assert got["replies"] == 0 and got["total_tokens"] == 0 and got["models"] == [], got


BAD_SINCE = ["yesterday", "2026-13-01", "2026-02-30", "2023-02-29", "2026-01-01T25:00",
             "2026-01-01T10:00:00+2", "1969-12-31", "2026-01-01Z", "%FF"]


@harness.cases(BAD_SINCE, name=lambda v: re.sub(r"\W", "_", v))
def test_usage_since_that_is_no_time_is_400(stack, since):
    user = account(stack, "us")
    r = stack.request("GET", USAGE + "?since=" + since, token=user["access"])
    assert r.status == 400, r
    assert list(r.json()) == ["since"], r.json()


def test_tokens_metric_counts_what_replies_cost(stack):
    user = account(stack, "us")
    before = {k: tokens_metric(stack, k, DEFAULT) for k in ("prompt", "completion")}
    r = chat(stack, user, "count " + fake(tokens=6), conversation_id=conv())
    assert r.status == 200, r
    u = r.json()["usage"]
    after = {k: tokens_metric(stack, k, DEFAULT) for k in ("prompt", "completion")}
    assert after["completion"] - before["completion"] == 6, (before, after)
    assert after["prompt"] - before["prompt"] == u["prompt_tokens"], (before, after, u)


# --- the daily quota -------------------------------------------------------------


@harness.stack_env(JARVAS_TOKENS_PER_DAY="60")
def test_a_used_up_quota_refuses_new_chats_and_streams_with_429_until_midnight(stack):
    user = account(stack, "qu")
    # the reply that crosses the quota finishes
    r = chat(stack, user, "spend " + fake(tokens=80), conversation_id=conv())
    assert r.status == 200, r
    spent = r.json()["usage"]
    assert spent["prompt_tokens"] + spent["completion_tokens"] >= 60, spent
    now = datetime.datetime.now(datetime.timezone.utc)
    midnight = (now + datetime.timedelta(days=1)).replace(hour=0, minute=0, second=0,
                                                          microsecond=0)
    seen = len(stack.fake_requests())
    refusals = [chat(stack, user, "more", conversation_id=conv()),
                stack.request("POST", STREAM, json=dict(message="more"), token=user["access"]),
                stack.request("GET", STREAM + query(message="more"), token=user["access"])]
    for r in refusals:
        assert r.status == 429, r
        assert r.headers.get("content-type", "").startswith("application/json"), r.headers
        assert "quota" in r.json()["detail"], r.json()
        wait = int(r.headers["retry-after"])
        assert abs(wait - (midnight - now).total_seconds()) <= 5, (wait, now)
    assert len(stack.fake_requests()) == seen, "a refused request reached the upstream"
    got = usage(stack, user)["quota"]
    assert got["tokens_per_day"] == 60 and got["remaining"] == 0, got
    assert got["used_today"] == spent["prompt_tokens"] + spent["completion_tokens"], got
    assert got["resets_at"] == midnight.strftime("%Y-%m-%dT%H:%M:%S.000Z"), got
    # another user still has all of theirs
    other = account(stack, "qu")
    assert chat(stack, other, "hi " + fake(tokens=1), conversation_id=conv()).status == 200
    assert usage(stack, other)["quota"]["remaining"] > 0


@harness.stack_env(JARVAS_TOKENS_PER_DAY="1000000")
def test_a_quota_not_used_up_lets_everything_through(stack):
    user = account(stack, "qu")
    for _ in range(3):
        assert chat(stack, user, "x " + fake(tokens=2), conversation_id=conv()).status == 200
    q = usage(stack, user)["quota"]
    assert 0 < q["used_today"] < 1000000 and q["remaining"] == 1000000 - q["used_today"], q


def test_a_reply_cut_by_its_token_limit_says_so(stack):
    user, c = account(stack, "fr"), conv()
    r = chat(stack, user, "long " + fake(tokens=3, finish="length"), conversation_id=c)
    assert r.status == 200 and r.json()["finish_reason"] == "length", r.json()
    status, final, _ = streamed(stack, user, "long " + fake(tokens=3, finish="length"),
                                conversation_id=c)
    assert status == 200 and final["finish_reason"] == "length", final
    msgs = history(stack, user, c)
    assert [m.get("finish_reason") for m in msgs] == [None, "length", None, "length"], msgs


# --- settings that cannot be served are refused at start, with a reason ---------------

# name, the variables, what the refusal says
BAD_SETTINGS = [
    ("unknown_protocol", dict(JARVAS_UPSTREAM_API="gemini"),
     "JARVAS_UPSTREAM_API=gemini: expected ollama or openai"),
    ("default_outside_the_list", dict(JARVAS_MODELS="a,b", JARVAS_MODEL="c"),
     "JARVAS_MODEL=c is not one of JARVAS_MODELS"),
    ("a_name_with_a_space", dict(JARVAS_MODELS="a, b c"), '"b c" is not a model name'),
    ("too_many_models", dict(JARVAS_MODELS=",".join(f"m{i}" for i in range(33))),
     "at most 32 models"),
    ("a_key_with_a_line_break", dict(JARVAS_UPSTREAM_API_KEY="sk-1\r\nX-Injected: 1"),
     "JARVAS_UPSTREAM_API_KEY: holds a control character"),
    ("a_negative_quota", dict(JARVAS_TOKENS_PER_DAY="-1"),
     "JARVAS_TOKENS_PER_DAY=-1: expected a whole number"),
]


@harness.cases(BAD_SETTINGS)
def test_a_setting_that_cannot_be_served_stops_the_start_with_its_reason(stack, case):
    _, env, reason = case
    run_env = {k: v for k, v in os.environ.items() if not k.startswith("JARVAS_")}
    run_env.update(JARVAS_STATE_DIR=str(stack.state), **env)
    p = subprocess.run([str(harness.BIN_DIR / "jarvas-admin"), "users"], env=run_env,
                       capture_output=True, text=True, timeout=30)
    assert p.returncode != 0 and reason in p.stderr, (p.returncode, p.stderr)
