"""The conversations API of the `chat` responder (issue 11, item 2; README
"Chat", "Conversations"): GET /api/chat/conversations/ (newest first,
paginated by a message-id cursor), PATCH and DELETE
/api/chat/conversations/<id>/.

Conversations are made by real exchanges (POST /api/chat/ through the fake
upstream); the database is only read, to show that what a refused request
or another user's request must not touch is byte for byte as it was.
"""

import urllib.parse

import harness
from test_chat import (ISO_UTC, NOT_FOUND, account, exchange, fresh_token, history, messages,
                       requests_total, scrape, stored)

LIST = "/api/chat/conversations/"
NO_CREDENTIALS = {"detail": "Authentication credentials were not provided."}
NOT_AN_INTEGER = "A valid integer is required."
MALFORMED = "Malformed in the query string: bad percent-encoding, not UTF-8, or given twice."


# --- helpers ------------------------------------------------------------------


def item_path(conversation, slash=True):
    return LIST + urllib.parse.quote(conversation, safe="") + ("/" if slash else "")


def listing(stack, acct, query=""):
    """GET the list with this exact query string; the JSON body."""
    r = stack.request("GET", LIST + (f"?{query}" if query else ""),
                      token=fresh_token(stack, acct))
    assert r.status == 200, r
    body = r.json()
    assert set(body) == {"conversations", "next"}, body
    return body


def ids(body):
    return [c["conversation_id"] for c in body["conversations"]]


def find(stack, acct, conversation):
    """The list's item for this conversation, or None."""
    for c in listing(stack, acct, "limit=200")["conversations"]:
        if c["conversation_id"] == conversation:
            return c
    return None


def rename(stack, acct, conversation, title=None, body=None, form=None, slash=True):
    if body is None and form is None:
        body = {"title": title}
    return stack.request("PATCH", item_path(conversation, slash), json=body, form=form,
                         token=fresh_token(stack, acct))


def delete(stack, acct, conversation, slash=True):
    return stack.request("DELETE", item_path(conversation, slash), token=fresh_token(stack, acct))


def titles(stack, user_id):
    """The user's renamed titles, straight from the database."""
    return stack.sqlite("SELECT conversation_id, title FROM conversation_titles "
                        "WHERE user_id = ? ORDER BY conversation_id", (user_id,))


def everything(stack, acct):
    """All a user has stored: messages and renamed titles."""
    return stored(stack, acct["id"]), titles(stack, acct["id"])


def with_conversations(stack, prefix, names, per=1):
    """A fresh user with one conversation per name (`per` exchanges each,
    made in the order given, so the last name is the newest)."""
    acct = account(stack, prefix)
    for name in names:
        for i in range(per):
            exchange(stack, acct, f"{name} message {i}", name)
    return acct


# --- the list -------------------------------------------------------------------


def test_list_is_newest_first_by_last_message_with_counts_and_times(stack):
    acct = account(stack, "order")
    exchange(stack, acct, "first in a", "a")
    exchange(stack, acct, "first in b", "b")
    exchange(stack, acct, "first in c", "c")
    exchange(stack, acct, "second in a", "a")  # a is the newest again
    body = listing(stack, acct)
    assert ids(body) == ["a", "c", "b"], body
    assert body["next"] is None, body
    for c in body["conversations"]:
        msgs = messages(stack, acct, c["conversation_id"])
        assert set(c) == {"conversation_id", "title", "message_count", "last_message_at",
                          "last_message_id"}, c
        assert c["message_count"] == len(msgs), (c, msgs)
        assert c["last_message_id"] == msgs[-1]["id"], (c, msgs)
        assert c["last_message_at"] == msgs[-1]["created_at"], (c, msgs)
        assert ISO_UTC.match(c["last_message_at"]), c
        assert c["title"] == "first in " + c["conversation_id"], c
    assert [c["message_count"] for c in body["conversations"]] == [4, 2, 2], body


def test_a_user_without_conversations_gets_an_empty_list(stack):
    acct = account(stack, "empty")
    assert listing(stack, acct) == {"conversations": [], "next": None}


def test_the_list_needs_credentials(stack):
    r = stack.request("GET", LIST)
    assert r.status == 401 and r.json() == NO_CREDENTIALS, r
    for method, path in (("PATCH", item_path("x")), ("DELETE", item_path("x"))):
        r = stack.request(method, path, json={"title": "t"} if method == "PATCH" else None)
        assert r.status == 401 and r.json() == NO_CREDENTIALS, (method, r)


# name, first user message as sent, the title expected. A string that is
# cut by bytes, or by UTF-16 units, instead of code points fails the long
# rows; "[:80]" is Python's cut by code points.
MIXED = "a€🎉é" * 30  # 1, 3, 4 and 2 bytes; 🎉 is two UTF-16 units
TITLES = [
    ("short_ascii", "hello there", "hello there"),
    ("white_space_trimmed", " \t\n  hello there \r\n ", "hello there"),
    ("unicode_white_space_trimmed", "\u3000\u00a0\u2003 olá \u2029\u0085", "olá"),
    ("long_ascii_cut_at_80", "x" * 79 + "yz" + "w" * 100, "x" * 79 + "y"),
    ("long_two_byte_cut_at_80_characters", "é" * 120, "é" * 80),
    ("long_three_byte_cut_at_80_characters", "€" * 81, "€" * 80),
    ("long_emoji_cut_at_80_characters", "🎉" * 100, "🎉" * 80),
    ("long_mixed_widths_cut_on_a_character", MIXED, MIXED[:80]),
    ("exactly_80_characters_kept", "ж" * 80, "ж" * 80),
    ("inner_white_space_kept", "a  b\tc\nd", "a  b\tc\nd"),
]


@harness.cases(TITLES)
def test_title_is_the_first_user_message_trimmed_and_cut_to_80_characters(stack, case):
    name, message, want = case
    acct = account(stack, "title")
    conv = "t-" + name[:40]
    exchange(stack, acct, message, conv)
    exchange(stack, acct, "a later message is not the title", conv)
    c = find(stack, acct, conv)
    assert c is not None, listing(stack, acct)
    assert c["title"] == want, (c["title"], want)
    assert len(c["title"]) <= 80
    assert message.strip().startswith(c["title"]), c


def test_pagination_with_limit_2_walks_three_pages_without_duplicates_or_gaps(stack):
    names = [f"p{i}" for i in range(5)]
    acct = with_conversations(stack, "pages", names)
    everything_at_once = listing(stack, acct)
    newest_first = list(reversed(names))
    assert ids(everything_at_once) == newest_first, everything_at_once
    pages, query = [], "limit=2"
    while True:
        body = listing(stack, acct, query)
        pages.append(ids(body))
        if body["next"] is None:
            break
        assert body["next"] == body["conversations"][-1]["last_message_id"], body
        query = f"limit=2&before={body['next']}"
        assert len(pages) < 5, pages
    assert pages == [newest_first[0:2], newest_first[2:4], newest_first[4:5]], pages
    # A page that holds exactly what is left says so: no empty last page.
    assert listing(stack, acct, "limit=5")["next"] is None
    assert listing(stack, acct, "limit=4")["next"] is not None
    # A cursor is only a message id: any id splits the list at that point.
    last_ids = [c["last_message_id"] for c in everything_at_once["conversations"]]
    body = listing(stack, acct, f"before={last_ids[1] + 1}")
    assert ids(body) == newest_first[1:], body
    assert listing(stack, acct, "before=1") == {"conversations": [], "next": None}


def test_limit_defaults_to_50_and_goes_up_to_200(stack):
    acct = with_conversations(stack, "many", [f"m{i:02d}" for i in range(52)])
    body = listing(stack, acct)
    assert len(body["conversations"]) == 50 and body["next"] is not None, len(body)
    rest = listing(stack, acct, f"before={body['next']}")
    assert ids(rest) == ["m01", "m00"] and rest["next"] is None, rest
    body = listing(stack, acct, "limit=200")
    assert len(body["conversations"]) == 52 and body["next"] is None
    assert len(listing(stack, acct, "limit=1")["conversations"]) == 1


# name, query string, {field: reason} expected
BAD_QUERIES = [
    ("limit_0", "limit=0", {"limit": ["Ensure this value is greater than or equal to 1."]}),
    ("limit_201", "limit=201", {"limit": ["Ensure this value is less than or equal to 200."]}),
    ("limit_huge", "limit=" + "9" * 30,
     {"limit": ["Ensure this value is less than or equal to 200."]}),
    ("limit_negative", "limit=-1", {"limit": [NOT_AN_INTEGER]}),
    ("limit_fraction", "limit=1.5", {"limit": [NOT_AN_INTEGER]}),
    ("limit_word", "limit=ten", {"limit": [NOT_AN_INTEGER]}),
    ("limit_empty", "limit=", {"limit": [NOT_AN_INTEGER]}),
    ("limit_blank", "limit=+2", {"limit": [NOT_AN_INTEGER]}),  # "+" is a space
    ("limit_100_digits", "limit=" + "1" * 100,
     {"limit": ["Ensure this value is less than or equal to 200."]}),
    ("limit_100_digits_then_a_letter", "limit=" + "1" * 100 + "x", {"limit": [NOT_AN_INTEGER]}),
    ("limit_twice", "limit=2&limit=3", {"limit": [MALFORMED]}),
    ("limit_bad_encoding", "limit=%ZZ", {"limit": [MALFORMED]}),
    ("before_0", "before=0", {"before": ["Ensure this value is greater than or equal to 1."]}),
    ("before_word", "before=abc", {"before": [NOT_AN_INTEGER]}),
    ("before_past_64_bits", "before=9223372036854775808",
     {"before": ["Ensure this value is less than or equal to 9223372036854775807."]}),
    ("before_twice", "before=5&before=6", {"before": [MALFORMED]}),
    ("both_bad", "limit=0&before=x",
     {"limit": ["Ensure this value is greater than or equal to 1."],
      "before": [NOT_AN_INTEGER]}),
]


@harness.cases(BAD_QUERIES)
def test_a_bad_limit_or_before_is_400_naming_the_field(stack, case):
    _, query, want = case
    acct = account(stack, "badq")
    r = stack.request("GET", f"{LIST}?{query}", token=acct["access"])
    assert r.status == 400, r
    assert r.json() == want, r


def test_unknown_query_parameters_are_ignored(stack):
    acct = with_conversations(stack, "extra", ["e"])
    assert ids(listing(stack, acct, "page=3&conversation_id=zzz")) == ["e"]


# --- renaming -----------------------------------------------------------------------


def test_rename_then_list_shows_the_new_title_and_keeps_the_history(stack):
    acct = with_conversations(stack, "rename", ["r1", "r2"], per=2)
    before = stored(stack, acct["id"])
    r = rename(stack, acct, "r1", "  My first chat  ")
    assert r.status == 200, r
    listed = find(stack, acct, "r1")
    assert r.json() == listed, (r.json(), listed)
    assert listed["title"] == "My first chat" and listed["message_count"] == 4, listed
    assert stored(stack, acct["id"]) == before  # a rename touches no message
    # Renamed again, by a form body and without the trailing slash.
    r = rename(stack, acct, "r1", form={"title": "Zweiter Name"}, slash=False)
    assert r.status == 200 and r.json()["title"] == "Zweiter Name", r
    assert find(stack, acct, "r1")["title"] == "Zweiter Name"
    assert find(stack, acct, "r2")["title"] == "r2 message 0"  # the other one is untouched
    # A rename is not a message: the order stays by the last message.
    assert ids(listing(stack, acct)) == ["r2", "r1"]
    # 200 characters are counted as code points, not bytes.
    r = rename(stack, acct, "r2", "ü" * 200)
    assert r.status == 200 and r.json()["title"] == "ü" * 200, r
    assert titles(stack, acct["id"]) == [("r1", "Zweiter Name"), ("r2", "ü" * 200)]


# name, body (JSON unless "form" in name), {field: reason}
BAD_TITLES = [
    ("missing", {}, {"title": ["This field is required."]}),
    ("other_field_only", {"name": "x"}, {"title": ["This field is required."]}),
    ("null", {"title": None}, {"title": ["This field may not be null."]}),
    ("number", {"title": 5}, {"title": ["Not a valid string."]}),
    ("boolean", {"title": True}, {"title": ["Not a valid string."]}),
    ("array", {"title": ["a"]}, {"title": ["Not a valid string."]}),
    ("object", {"title": {"a": 1}}, {"title": ["Not a valid string."]}),
    ("empty", {"title": ""}, {"title": ["This field may not be blank."]}),
    ("white_space_only", {"title": " \t\u3000\n"}, {"title": ["This field may not be blank."]}),
    ("201_characters", {"title": "ü" * 201},
     {"title": ["Ensure this field has no more than 200 characters."]}),
    ("form_empty", {"title": ""}, {"title": ["This field may not be blank."]}),
    ("form_white_space_only", {"title": "   "}, {"title": ["This field may not be blank."]}),
]


@harness.cases(BAD_TITLES)
def test_a_bad_title_is_400_and_changes_nothing(stack, case):
    name, body, want = case
    acct = with_conversations(stack, "badtitle", ["bt"])
    assert rename(stack, acct, "bt", "kept title").status == 200
    before = everything(stack, acct)
    if name.startswith("form_"):
        r = rename(stack, acct, "bt", form=body)
    else:
        r = rename(stack, acct, "bt", body=body)
    assert r.status == 400, r
    assert r.json() == want, r
    assert everything(stack, acct) == before
    assert find(stack, acct, "bt")["title"] == "kept title"


def test_a_title_is_measured_after_trimming(stack):
    acct = with_conversations(stack, "trimlen", ["tl"])
    r = rename(stack, acct, "tl", "  " + "t" * 200 + "  ")
    assert r.status == 200 and r.json()["title"] == "t" * 200, r


# name, raw body, content type, the 400 detail
BAD_BODIES = [
    ("malformed_json", '{"title": ', "application/json", "JSON parse error - malformed JSON."),
    ("not_an_object", '["title"]', "application/json", "Invalid data. Expected a dictionary."),
    ("duplicate_key", '{"title": "a", "title": "b"}', "application/json",
     "JSON parse error - duplicate keys or more than 64 fields in object."),
]


@harness.cases(BAD_BODIES)
def test_a_bad_body_is_400_and_changes_nothing(stack, case):
    _, raw, ctype, detail = case
    acct = with_conversations(stack, "badbody", ["bb"])
    before = everything(stack, acct)
    r = stack.request("PATCH", item_path("bb"), body=raw, headers={"content-type": ctype},
                      token=acct["access"])
    assert r.status == 400 and r.json() == {"detail": detail}, r
    assert everything(stack, acct) == before


# --- deleting -----------------------------------------------------------------------


def delete_by_conversations(stack, acct, conv):
    return delete(stack, acct, conv)


def delete_by_history(stack, acct, conv):
    return history(stack, fresh_token(stack, acct), conv, method="DELETE")


DELETERS = [("conversations_endpoint", delete_by_conversations),
            ("history_endpoint", delete_by_history)]


@harness.cases(DELETERS)
def test_delete_removes_the_conversation_its_history_and_its_title(stack, case):
    _, deleter = case
    acct = with_conversations(stack, "del", ["d1", "d2"], per=2)
    assert rename(stack, acct, "d1", "to be deleted").status == 200
    assert rename(stack, acct, "d2", "to be kept").status == 200
    kept = [row for row in stored(stack, acct["id"]) if row[1] == "d2"]
    r = deleter(stack, acct, "d1")
    assert r.status == 204 and r.body == b"", r
    assert ids(listing(stack, acct)) == ["d2"]
    assert messages(stack, acct, "d1") == []
    assert stored(stack, acct["id"]) == kept
    assert titles(stack, acct["id"]) == [("d2", "to be kept")]
    # Now empty: this endpoint says so, the history one still answers 204.
    assert delete(stack, acct, "d1").status == 404
    assert delete_by_history(stack, acct, "d1").status == 204


def test_delete_without_the_trailing_slash(stack):
    acct = with_conversations(stack, "delslash", ["ds"])
    r = delete(stack, acct, "ds", slash=False)
    assert r.status == 204, r
    assert listing(stack, acct)["conversations"] == []


@harness.cases(DELETERS)
def test_a_conversation_deleted_then_used_again_starts_fresh(stack, case):
    _, deleter = case
    acct = with_conversations(stack, "reuse", ["again"], per=2)
    assert rename(stack, acct, "again", "the old name").status == 200
    assert deleter(stack, acct, "again").status == 204
    exchange(stack, acct, "  a new beginning  ", "again")
    c = find(stack, acct, "again")
    assert c["title"] == "a new beginning" and c["message_count"] == 2, c
    assert titles(stack, acct["id"]) == []


# --- what is not the caller's -----------------------------------------------------------

# name, the conversation id as it appears in the path (percent-encoded)
BAD_IDS = [
    ("dot", "bad.id"),
    ("65_characters", "x" * 65),
    ("non_ascii", "%C3%A9t%C3%A9"),
    ("space", "two%20words"),
    ("plus", "a+b"),
    ("encoded_slash", "a%2Fb"),  # nginx decodes it: two segments
    ("tilde", "~x"),
]
# name, what follows LIST in a path that names no conversation: each bad
# id with and without the trailing slash, and paths of another shape.
NO_CONVERSATION_PATHS = [(f"{name}{tail}", raw + slash) for name, raw in BAD_IDS
                         for tail, slash in (("", "/"), ("_no_slash", ""))] + [
    ("two_segments", "fine/b/"),
    ("empty_segment", "/"),
    ("trailing_double_slash", "fine//"),
]


@harness.cases(NO_CONVERSATION_PATHS)
def test_a_path_that_names_no_conversation_is_404_not_400(stack, case):
    _, rest = case
    acct = with_conversations(stack, "badid", ["fine"])
    assert rename(stack, acct, "fine", "a good id is served").status == 200  # the contrast
    before = everything(stack, acct)
    for method, body in (("PATCH", {"title": "t"}), ("DELETE", None)):
        r = stack.request(method, LIST + rest, json=body, token=acct["access"])
        assert r.status == 404 and r.json() == NOT_FOUND, (method, rest, r)
    assert everything(stack, acct) == before


def test_another_users_or_an_empty_conversation_is_404_and_nothing_changes(stack):
    owner = with_conversations(stack, "owner", ["secret", "mine"], per=2)
    assert rename(stack, owner, "secret", "owner's title").status == 200
    intruder = with_conversations(stack, "intruder", ["mine"])
    owner_before, intruder_before = everything(stack, owner), everything(stack, intruder)
    for conv in ("secret", "never-used"):  # the owner's, and nobody's
        for method, body in (("PATCH", {"title": "taken over"}), ("DELETE", None)):
            r = stack.request(method, item_path(conv), json=body, token=intruder["access"])
            assert r.status == 404 and r.json() == NOT_FOUND, (conv, method, r)
    # An id both have: the intruder's own rename and delete reach only theirs.
    assert rename(stack, intruder, "mine", "intruder's").status == 200
    assert find(stack, owner, "mine")["title"] == "mine message 0"
    assert delete(stack, intruder, "mine").status == 204
    assert everything(stack, owner) == owner_before
    assert stored(stack, intruder["id"]) == []
    assert intruder_before[0] != []
    # Neither list shows the other user's conversations.
    assert ids(listing(stack, owner)) == ["mine", "secret"]
    assert listing(stack, intruder)["conversations"] == []


def test_lists_are_per_user(stack):
    a = with_conversations(stack, "iso_a", ["same", "only-a"])
    b = with_conversations(stack, "iso_b", ["same"], per=3)
    la, lb = listing(stack, a), listing(stack, b)
    assert ids(la) == ["only-a", "same"] and ids(lb) == ["same"], (la, lb)
    assert la["conversations"][1]["message_count"] == 2
    assert lb["conversations"][0]["message_count"] == 6
    assert la["conversations"][1]["title"] == "same message 0"
    b_ids = {m["id"] for m in messages(stack, b, "same")}
    assert la["conversations"][1]["last_message_id"] not in b_ids


# --- HTTP ---------------------------------------------------------------------------

# name, method, path, the Allow header's methods
METHODS = [
    ("POST_list", "POST", LIST, {"GET", "HEAD", "OPTIONS"}),
    ("DELETE_list", "DELETE", LIST, {"GET", "HEAD", "OPTIONS"}),
    ("PATCH_list", "PATCH", LIST, {"GET", "HEAD", "OPTIONS"}),
    ("GET_item", "GET", item_path("x"), {"PATCH", "DELETE", "OPTIONS"}),
    ("PUT_item", "PUT", item_path("x"), {"PATCH", "DELETE", "OPTIONS"}),
    ("POST_item", "POST", item_path("x"), {"PATCH", "DELETE", "OPTIONS"}),
]


@harness.cases(METHODS)
def test_other_methods_are_405_with_allow(stack, case):
    _, method, path, allow = case
    acct = with_conversations(stack, "method", ["x"])
    before = everything(stack, acct)
    r = stack.request(method, path, token=acct["access"],
                      json={"title": "t"} if method != "GET" else None)
    assert r.status == 405, r
    assert {m.strip() for m in r.headers.get("allow", "").split(",")} == allow, r.headers
    assert r.json() == {"detail": f'Method "{method}" not allowed.'}, r
    assert everything(stack, acct) == before
    r = stack.request("OPTIONS", path, token=acct["access"])
    assert r.status == 200, r
    assert {m.strip() for m in r.headers.get("allow", "").split(",")} == allow, r.headers


def test_the_list_without_the_trailing_slash_and_with_head(stack):
    acct = with_conversations(stack, "slash", ["s"])
    r = stack.request("GET", LIST.rstrip("/"), token=acct["access"])
    assert r.status == 200 and [c["conversation_id"] for c in r.json()["conversations"]] == ["s"]
    r = stack.request("HEAD", LIST, token=acct["access"])
    assert r.status == 200 and r.body == b"", r


def test_metrics_count_the_conversations_endpoint(stack):
    acct = with_conversations(stack, "metrics", ["mc"])
    before = scrape(stack)
    listing(stack, acct)
    assert rename(stack, acct, "mc", "counted").status == 200
    assert delete(stack, acct, "nope").status == 404
    assert delete(stack, acct, "mc").status == 204
    after = scrape(stack)
    for status, n in ((200, 2), (404, 1), (204, 1)):
        delta = requests_total(after, "chat_conversations", status) - \
            requests_total(before, "chat_conversations", status)
        assert delta == n, (status, delta)


def test_the_schema_is_at_migration_5(stack):
    assert stack.sqlite("PRAGMA user_version")[0][0] >= 5
    (sql,) = stack.sqlite("SELECT sql FROM sqlite_schema WHERE name = 'conversation_titles'")[0]
    assert "REFERENCES users(id) ON DELETE CASCADE" in sql, sql
