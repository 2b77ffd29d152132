-- jarvas database schema (SQLite 3, WAL mode).
--
-- Applied by db_migrate() in src/db.c, which is built with this file embedded:
-- each block starting with a "-- migrate: N" line runs once, inside one
-- transaction, when PRAGMA user_version < N, and then sets user_version = N.
-- So an existing database is migrated in place and keeps its rows.
-- Never edit a block that has shipped: add a new one below.

-- migrate: 1
CREATE TABLE users (
    id            INTEGER PRIMARY KEY,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,              -- libsodium crypto_pwhash_str (argon2id)
    is_active     INTEGER NOT NULL DEFAULT 1,
    context       TEXT    NOT NULL DEFAULT '',   -- the user's part of the system prompt
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);

-- History: one row per message.  A user message and the assistant reply it
-- got are inserted together in one transaction when the exchange ends.
CREATE TABLE messages (
    id              INTEGER PRIMARY KEY,         -- from sequences('message')
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    conversation_id TEXT    NOT NULL,
    role            TEXT    NOT NULL CHECK (role IN ('user', 'assistant')),
    content         TEXT    NOT NULL,
    complete        INTEGER NOT NULL DEFAULT 1,  -- 0: reply cut short, client left
    created_at      TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
-- "The last N messages of this user and conversation".
CREATE INDEX messages_by_conversation ON messages (user_id, conversation_id, id);

-- Message ids are handed out before a stream starts (the SSE event ids carry
-- them), so they come from this counter rather than from rowid.
CREATE TABLE sequences (
    name  TEXT    PRIMARY KEY,
    value INTEGER NOT NULL
);
INSERT INTO sequences (name, value) VALUES ('message', 0);

-- Built system prompts.  The key is a hash of everything the prompt is built
-- from, so a change to the base prompt or to the user is a new key at once.
CREATE TABLE prompt_cache (
    key        TEXT    PRIMARY KEY,
    value      TEXT    NOT NULL,
    created_at INTEGER NOT NULL,                 -- unix seconds
    expires_at INTEGER NOT NULL,                 -- unix seconds
    hits       INTEGER NOT NULL DEFAULT 0
);
CREATE INDEX prompt_cache_by_expiry ON prompt_cache (expires_at);

-- migrate: 2
-- Failed logins per username and per client address, for throttling: a
-- key over its limit within the window gets 429 until the window ends.
CREATE TABLE login_failures (
    key          TEXT    PRIMARY KEY,          -- "user:<name>" or "addr:<ip>"
    failures     INTEGER NOT NULL,
    window_start INTEGER NOT NULL              -- unix seconds
);

-- migrate: 3
-- users.id with AUTOINCREMENT: an id once handed out is never handed out
-- again, even after its user is deleted, so a deleted user's tokens can
-- never name somebody else.  Rebuilt in place as SQLite documents it
-- (lang_altertable.html, "Making Other Kinds Of Table Schema Changes"):
-- db_migrate() runs this block with foreign keys off, so dropping the old
-- table does not cascade to messages, and checks them before it commits.
-- Every row keeps its id; the sequence starts after the largest.  (Ids of
-- users deleted before this migration cannot be known; their tokens carry
-- no hash_password claim and are refused for that, see jwt.h.)
CREATE TABLE users_new (
    id            INTEGER PRIMARY KEY AUTOINCREMENT,
    username      TEXT    NOT NULL UNIQUE,
    password_hash TEXT    NOT NULL,              -- libsodium crypto_pwhash_str (argon2id)
    is_active     INTEGER NOT NULL DEFAULT 1,
    context       TEXT    NOT NULL DEFAULT '',   -- the user's part of the system prompt
    created_at    TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
INSERT INTO users_new (id, username, password_hash, is_active, context, created_at)
    SELECT id, username, password_hash, is_active, context, created_at FROM users;
DROP TABLE users;
ALTER TABLE users_new RENAME TO users;

-- One row that /api/health/ rewrites: proof that the database still takes
-- writes (a read-only or full database answers reads but not logins).
CREATE TABLE health_probe (
    id         INTEGER PRIMARY KEY CHECK (id = 1),
    checked_at INTEGER NOT NULL                  -- unix seconds of the last probe
);
INSERT INTO health_probe (id, checked_at) VALUES (1, 0);

-- login_failures keys from here on (src/throttle.h): "pair:<addr>|<name>"
-- per address and username, "addr:<addr>", and "user:<name>" for the
-- per-username ceiling; a part over 150 bytes is its SHA-256, "#<hex>".

-- migrate: 4
-- Stream tickets (src/tickets.c): short-lived, single-use credentials for
-- EventSource, which cannot send an Authorization header.  Only a hash of
-- each ticket is kept, so this table holds nothing a client could use.
CREATE TABLE stream_tickets (
    hash       BLOB    PRIMARY KEY,            -- crypto_generichash (BLAKE2b-256) of the ticket
    user_id    INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    expires_at INTEGER NOT NULL                -- unix milliseconds
) WITHOUT ROWID;
CREATE INDEX stream_tickets_by_user ON stream_tickets (user_id);
CREATE INDEX stream_tickets_by_expiry ON stream_tickets (expires_at);

-- migrate: 5
-- Conversations a user renamed (PATCH /api/chat/conversations/<id>/).
-- A conversation is its messages; without a row here its title is its
-- first user message.  A row lives only while its conversation has
-- messages: the trigger below removes it with the conversation's last
-- message, whichever statement deletes it (a history DELETE, an exchange
-- taken back, a user deleted), so a conversation id used again starts
-- without the old title.
CREATE TABLE conversation_titles (
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    conversation_id TEXT    NOT NULL,
    title           TEXT    NOT NULL,            -- trimmed, 1-200 characters
    PRIMARY KEY (user_id, conversation_id)
) WITHOUT ROWID;
CREATE TRIGGER conversation_titles_follow_messages AFTER DELETE ON messages
WHEN NOT EXISTS (SELECT 1 FROM messages
                 WHERE user_id = OLD.user_id AND conversation_id = OLD.conversation_id)
BEGIN
    DELETE FROM conversation_titles
    WHERE user_id = OLD.user_id AND conversation_id = OLD.conversation_id;
END;

-- migrate: 6
-- Streams that outlive their connection (src/journal.h, src/generations.h).
-- A reply's row exists from its stream's start with status 'streaming' and
-- grows with the periodic saves; its end sets the final status:
--   done         the model finished
--   stopped      POST /api/chat/stop/ ended it
--   failed       the model failed (error says how) or the reply was too long
--   interrupted  the client left (and no reconnect came within the grace),
--                or the server restarted
-- User messages are 'done'.  chunks holds the length in bytes of each SSE
-- chunk a resumable reply was sent in, in order, each an unsigned LEB128
-- number (one byte for most tokens), so a client reconnecting after the
-- end gets the rest in the same events (NULL for other replies: replayed
-- from the start as one chunk).
ALTER TABLE messages ADD COLUMN status TEXT NOT NULL DEFAULT 'done'
    CHECK (status IN ('streaming', 'done', 'stopped', 'failed', 'interrupted'));
ALTER TABLE messages ADD COLUMN prompt_tokens INTEGER;      -- the upstream's counters,
ALTER TABLE messages ADD COLUMN completion_tokens INTEGER;  -- NULL when it sent none
ALTER TABLE messages ADD COLUMN chunks BLOB;
ALTER TABLE messages ADD COLUMN error TEXT;                 -- why a 'failed' reply failed
UPDATE messages SET status = 'interrupted' WHERE complete = 0;

-- The replies being generated right now: one per user and conversation
-- (the unique index makes a second one a constraint error, answered 409).
-- owner is "<pid>:<start time>" of the process generating it, so a row
-- left by a process that died is recognised and cleared.
CREATE TABLE generations (
    message_id      INTEGER PRIMARY KEY,           -- the reply's id
    user_id         INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    conversation_id TEXT    NOT NULL,
    owner           TEXT    NOT NULL,
    resumable       INTEGER NOT NULL DEFAULT 0     -- journaled: readers can join
);
CREATE UNIQUE INDEX generations_one_per_conversation ON generations (user_id, conversation_id);

-- A stream ticket, once spent on a stream, stays until it expires for the
-- reconnects of that client (EventSource sends the same URL again, with
-- Last-Event-ID): those only read replies, and only the user's own.
ALTER TABLE stream_tickets ADD COLUMN spent INTEGER NOT NULL DEFAULT 0;

-- migrate: 7
-- Any LLM server (src/wire/): the model that wrote each reply (one of
-- JARVAS_MODELS; NULL for replies older than this), and why it stopped
-- ('stop', 'length': cut by its token limit, ...; NULL when not said).
ALTER TABLE messages ADD COLUMN model TEXT;
ALTER TABLE messages ADD COLUMN finish_reason TEXT;

-- Tokens spent, one row per reply the upstream counted: what
-- GET /api/usage/ sums and JARVAS_TOKENS_PER_DAY limits.  Kept apart from
-- messages so that deleting a conversation does not give its tokens back.
CREATE TABLE usage (
    message_id        INTEGER PRIMARY KEY,         -- the reply's id
    user_id           INTEGER NOT NULL REFERENCES users(id) ON DELETE CASCADE,
    model             TEXT    NOT NULL,
    prompt_tokens     INTEGER NOT NULL,
    completion_tokens INTEGER NOT NULL,
    created_at        TEXT    NOT NULL DEFAULT (strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))
);
CREATE INDEX usage_by_user_time ON usage (user_id, created_at);
