/*
 * conversations — SQL for the conversation list and renamed titles (see
 * conversations.h).
 *
 * A conversation's figures come from the messages index (user_id,
 * conversation_id, id): its count and largest id by one walk of the
 * user's entries, its first user message and its last message's time by
 * a lookup each.  Message ids only grow, so the largest id orders
 * conversations by their last message and is the cursor of a page.
 */
#include "conversations.h"

#include <string.h>

#include "buf.h"
#include "utf8.h"

/* Columns: id, message count, last id, last time, renamed title (or
 * NULL), first user message (or NULL).  `g` is the grouped messages. */
#define CONVERSATION_COLUMNS                                                                       \
	"SELECT g.conversation_id, g.n, g.last_id, "                                               \
	"(SELECT created_at FROM messages WHERE id = g.last_id), "                                 \
	"(SELECT title FROM conversation_titles "                                                  \
	" WHERE user_id = ?1 AND conversation_id = g.conversation_id), "                           \
	"(SELECT content FROM messages "                                                           \
	" WHERE user_id = ?1 AND conversation_id = g.conversation_id AND role = 'user' "           \
	" ORDER BY id LIMIT 1) "                                                                   \
	"FROM (SELECT conversation_id, count(*) AS n, max(id) AS last_id FROM messages "

/* The title of a row: the renamed one, else the first user message
 * trimmed and cut on a character boundary. */
static int add_title(cJSON *o, struct db_stmt *st)
{
	const char *text = db_column_text(st, 4);
	size_t n;
	struct buf title;
	int ok;

	if (text)
		return cJSON_AddStringToObject(o, "title", text) ? 0 : -1;
	text = db_column_text(st, 5);
	n = text ? (size_t)db_column_bytes(st, 5) : 0;
	if (!text)
		text = ""; /* no user message: history never keeps such a reply */
	n = utf8_trim(&text, n);
	buf_init(&title, 4 * CONVERSATIONS_TITLE_CHARS);
	ok = buf_append(&title, text, utf8_prefix(text, n, CONVERSATIONS_TITLE_CHARS)) == BUF_OK &&
	     cJSON_AddStringToObject(o, "title", buf_str(&title));
	buf_free(&title);
	return ok ? 0 : -1;
}

/* The conversation on the statement's current row as a JSON object. */
static cJSON *row_object(struct db_stmt *st)
{
	const char *id = db_column_text(st, 0);
	const char *when = db_column_text(st, 3);
	cJSON *o = cJSON_CreateObject();

	if (!o || !cJSON_AddStringToObject(o, "conversation_id", id ? id : "") ||
	    add_title(o, st) < 0 ||
	    !cJSON_AddNumberToObject(o, "message_count", (double)db_column_int64(st, 1)) ||
	    !cJSON_AddStringToObject(o, "last_message_at", when ? when : "") ||
	    !cJSON_AddNumberToObject(o, "last_message_id", (double)db_column_int64(st, 2))) {
		cJSON_Delete(o);
		return NULL;
	}
	return o;
}

cJSON *conversations_list(struct db *d, long long user_id, long long before, int limit,
			  long long *next)
{
	/* The page is chosen inside, so that titles and times are looked up
	 * for its rows only; one row more than asked for tells whether
	 * another page follows. */
	static const char sql[] = CONVERSATION_COLUMNS
		"WHERE user_id = ?1 GROUP BY conversation_id HAVING max(id) < ?2 "
		"ORDER BY last_id DESC LIMIT ?3) AS g ORDER BY g.last_id DESC";
	struct db_stmt *st = db_stmt(d, sql);
	cJSON *list = cJSON_CreateArray(), *o;
	long long last = 0;
	int rc, n = 0;

	*next = 0;
	if (!st || !list)
		goto fail;
	db_bind_int64(st, 1, user_id);
	db_bind_int64(st, 2, before);
	db_bind_int(st, 3, limit + 1);
	while ((rc = db_step(st)) == DB_ROW) {
		if (n++ == limit) {
			*next = last; /* the probe row itself is not sent */
			continue;
		}
		if (!(o = row_object(st)) || !cJSON_AddItemToArray(list, o)) {
			cJSON_Delete(o);
			goto fail;
		}
		last = db_column_int64(st, 2);
	}
	if (rc != DB_DONE)
		goto fail;
	db_reset(st);
	return list;
fail:
	if (st)
		db_reset(st);
	cJSON_Delete(list);
	*next = 0;
	return NULL;
}

int conversations_get(struct db *d, long long user_id, const char *conversation, cJSON **out)
{
	static const char sql[] = CONVERSATION_COLUMNS
		"WHERE user_id = ?1 AND conversation_id = ?2 GROUP BY conversation_id) AS g";
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	*out = NULL;
	if (!st)
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_text(st, 2, conversation, -1);
	rc = db_step(st);
	if (rc == DB_ROW)
		*out = row_object(st);
	db_reset(st);
	if (rc == DB_DONE)
		return 1;
	return *out ? 0 : -1;
}

int conversations_rename(struct db *d, long long user_id, const char *conversation,
			 const char *title, size_t len)
{
	/* One statement: a conversation deleted meanwhile is not renamed back
	 * into existence (its title would outlive it). */
	static const char sql[] =
		"INSERT INTO conversation_titles (user_id, conversation_id, title) "
		"SELECT ?1, ?2, ?3 WHERE EXISTS "
		"(SELECT 1 FROM messages WHERE user_id = ?1 AND conversation_id = ?2) "
		"ON CONFLICT (user_id, conversation_id) DO UPDATE SET title = excluded.title";
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	if (!st)
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_text(st, 2, conversation, -1);
	db_bind_text(st, 3, title, (int)len);
	rc = db_step(st);
	db_reset(st);
	if (rc != DB_DONE)
		return -1;
	return db_changes(d) > 0 ? 0 : 1;
}
