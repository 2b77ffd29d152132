"""What the model sends is relayed and stored readable (issue 10, item 9).

The model's text may be invalid UTF-8, hold NULs, or be cut anywhere
between its lines; a reason may be longer than jarvas keeps; the last line
may come with the HTTP body left open. What the client is sent and what
history stores is always valid UTF-8 (each invalid sequence one U+FFFD, as
a browser decodes it), never cut at a NUL or inside a character, and a
finished answer ends with done at once.

The oracle for "as a browser decodes it" is Python's own decoder
(errors="replace" substitutes maximal subparts, as WHATWG does)."""

import time
from urllib.parse import quote_from_bytes, unquote_to_bytes

import harness
from test_stream import (account, conv, describe, fake, history, pairs, parse_stream, shared,
                         stream)

CHAT = "/api/chat/"


def fake_bytes(data, **kw):
    """A directive making the fake reply exactly these bytes."""
    return fake(text=quote_from_bytes(data, safe=""), **kw)


def decoded(data):
    """What the client and history must hold for these reply bytes."""
    return data.decode("utf-8", "replace").replace("\x00", "\ufffd")


# name, reply bytes
CONTENT = [
    ("lone_continuation_bytes", b"a\x80b\xbf c"),
    ("invalid_lead_bytes", b"x\xc0\xc1\xf5\xff y"),
    ("overlong_slash", b"\xc0\xaf and \xe0\x80\xaf"),
    ("surrogate_half", b"pre \xed\xa0\x80 post"),
    ("past_u10ffff", b"\xf4\x90\x80\x80 high"),
    ("truncated_sequences", b"\xe2\x82 euro \xf0\x9f\x8e party"),
    ("truncated_at_the_very_end", b"the end \xf0\x9f\x8e"),
    ("nul_in_the_middle", b"before\x00after"),
    ("nuls_and_more", b"\x00lead, mid\x00dle, trail\x00"),
    ("valid_text_untouched", "Olá 🎉 ção € 𝄞 你好".encode()),
]
# how the fake cuts it into lines: whole words, 1 byte a line (valid
# characters split across lines: they must be joined again), 2 bytes
SPLITS = [("words", {}), ("one_byte_lines", dict(chunk=1, split_utf8=1)),
          ("two_byte_lines", dict(chunk=2, split_utf8=1))]
CASES = [(f"{name}_{split}", data, keys) for name, data in CONTENT for split, keys in SPLITS]


@harness.cases(CASES)
def test_the_stream_and_history_hold_valid_utf8(stack, case):
    name, data, keys = case
    user = shared(stack)
    c = conv()
    message = f"bytes {name} " + fake_bytes(data, **keys)
    ev = stream(stack, user, message, c)
    s = parse_stream(ev, c)
    assert s["text"] == decoded(data), (s["text"], decoded(data))
    # history answers valid JSON and holds what was sent
    assert pairs(history(stack, user, c)) == [("user", message), ("assistant", decoded(data))]


@harness.cases(CONTENT)
def test_a_chat_answer_and_history_hold_valid_utf8(stack, case):
    name, data = case
    user = shared(stack)
    c = conv()
    message = f"chat bytes {name} " + fake_bytes(data)
    r = stack.request("POST", CHAT, json={"message": message, "conversation_id": c},
                      token=user["access"])
    assert r.status == 200, r
    assert r.json()["response"] == decoded(data)
    assert pairs(history(stack, user, c)) == [("user", message), ("assistant", decoded(data))]


LONG = "é" * 300 + "ção" * 100  # 900 bytes of 2-byte characters, then more


# name, fake keys (the reason comes as an HTTP error body or as an error line)
REASONS = [
    ("long_http_error", dict(status=500, message=quote_from_bytes(LONG.encode(), safe=""))),
    ("long_error_line", dict(tokens=3, error_after=0,
                             message=quote_from_bytes(LONG.encode(), safe=""))),
    ("invalid_http_error", dict(status=503, message="bad%FF%C3%28reason")),
    ("invalid_error_line", dict(tokens=3, error_after=0, message="bad%FF%C3%28reason")),
]


def check_reason(got, keys):
    """The reason as sent, repaired, and at most cut short between characters
    (a character cut in two would decode here as an extra U+FFFD)."""
    want = decoded(unquote_to_bytes(keys["message"]))
    assert got and want.startswith(got), (got[:80], want[:80])
    assert len(got.encode()) < 512, len(got.encode())


@harness.cases(REASONS)
def test_an_upstream_reason_is_cut_between_characters_and_repaired(stack, case):
    name, keys = case
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, f"reason {name} " + fake(**keys), c)
    s = parse_stream(ev, c, outcome="error")
    check_reason(s["final"]["message"], keys)
    r = stack.request("POST", CHAT, json={"message": f"chat reason {name} " + fake(**keys)},
                      token=user["access"])
    assert r.status == 502, r
    check_reason(r.json()["detail"], keys)


def test_a_done_line_with_the_body_left_open_ends_the_stream_at_once(stack):
    user = shared(stack)
    c = conv()
    ev = stream(stack, user, "linger " + fake(tokens=3, linger=1), c, timeout=20)
    s = parse_stream(ev, c)
    assert len(s["chunks"]) == 3, describe(ev)
    took = ev.named("done")[0]["t"] - ev.t0
    assert took < 5, f"done came only after {took:.1f}s (the idle timeout is 120 s)"
    assert [m["role"] for m in history(stack, user, c)] == ["user", "assistant"]


def test_a_done_line_with_the_body_left_open_ends_a_chat_at_once(stack):
    user = account(stack, "linger")
    t0 = time.monotonic()
    r = stack.request("POST", CHAT, json={"message": "linger " + fake(tokens=3, linger=1)},
                      token=user["access"], timeout=20)
    took = time.monotonic() - t0
    assert r.status == 200, r
    assert took < 5, f"the answer came only after {took:.1f}s"
    # and the next chat works (the model server connection was not left hanging)
    r = stack.request("POST", CHAT, json={"message": "after " + fake(tokens=2)},
                      token=user["access"], timeout=20)
    assert r.status == 200, r
