"""Field types as DRF's CharField reads them (issue 10, item 8): null is
never "missing" (400 "This field may not be null.", not the default), a
boolean, array or object is "Not a valid string.", on the token endpoints
and on both chat endpoints that take a body. A refused request stores
nothing and never reaches the model.

One divergence from DRF, on purpose and as the rest of the suite expects:
DRF coerces a JSON number to a string; jarvas refuses it as "Not a valid
string." too, so a value is always what the client sent."""

import harness

NULL = ["This field may not be null."]
NOT_STRING = ["Not a valid string."]
REQUIRED = ["This field is required."]

# Values that are not strings, and what DRF says of each.
WRONG = [("null", None, NULL), ("true", True, NOT_STRING), ("false", False, NOT_STRING),
         ("number", 42, NOT_STRING), ("float", 1.5, NOT_STRING), ("array", ["x"], NOT_STRING),
         ("empty_array", [], NOT_STRING), ("object", {"a": "b"}, NOT_STRING)]

TOKEN_ENDPOINTS = [  # path, the fields it takes, a good value for each
    ("login", "/api/token/", {"username": "someone", "password": "secret"}),
    ("refresh", "/api/token/refresh/", {"refresh": "x.y.z"}),
    ("verify", "/api/token/verify/", {"token": "x.y.z"}),
]
CHAT_ENDPOINTS = [("chat", "/api/chat/"), ("stream", "/api/chat/stream/")]

TOKEN_CASES = [
    (f"{ep}_{field}_{vname}", path, dict(good, **{field: value}), {field: want})
    for ep, path, good in TOKEN_ENDPOINTS for field in good for vname, value, want in WRONG
] + [
    ("login_both_null", "/api/token/", {"username": None, "password": None},
     {"username": NULL, "password": NULL}),
    ("login_null_and_missing", "/api/token/", {"username": None},
     {"username": NULL, "password": REQUIRED}),
]


@harness.cases(TOKEN_CASES)
def test_token_endpoint_fields_that_are_not_strings_are_400(stack, case):
    _, path, body, want = case
    r = stack.request("POST", path, json=body)
    assert r.status == 400, r
    assert r.json() == want, r


CHAT_CASES = [
    (f"{ep}_{field}_{vname}", path, dict({"message": "hello"}, **{field: value}), {field: want})
    for ep, path in CHAT_ENDPOINTS for field in ("message", "conversation_id")
    for vname, value, want in WRONG
]


@harness.cases(CHAT_CASES)
def test_chat_fields_that_are_not_strings_are_400_and_store_nothing(stack, case):
    _, path, body, want = case
    name, pw = stack.user("fields")
    access, _ = stack.login(name, pw)
    asked = len(stack.fake_requests())
    r = stack.request("POST", path, json=body, token=access)
    assert r.status == 400, r
    assert r.json() == want, r
    assert stack.sqlite("SELECT count(*) FROM messages JOIN users ON users.id = user_id "
                        "WHERE username = ?", (name,)) == [(0,)]
    assert len(stack.fake_requests()) == asked, "the model was asked anyway"


def test_a_missing_conversation_id_is_still_the_default(stack):
    access, _ = stack.login(*stack.user("fields_default"))
    r = stack.request("POST", "/api/chat/", json={"message": "hello"}, token=access)
    assert r.status == 200 and r.json()["conversation_id"] == "default", r
