/*
 * history — SQL for the messages table (see history.h).
 */
#include "history.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "utf8.h"

int history_conversation_valid(const char *id)
{
	size_t i;

	for (i = 0; id[i]; i++) {
		char c = id[i];
		if (i >= CONVERSATION_ID_MAX ||
		    !((c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9') ||
		      c == '_' || c == '-'))
			return 0;
	}
	return i > 0;
}

void history_free(struct history *h)
{
	int i;

	for (i = 0; i < h->n; i++)
		free(h->items[i].content);
	free(h->items);
	h->items = NULL;
	h->n = 0;
}

/* ?1..?3 of a messages row: its id, its user and conversation. */
static void bind_row(struct db_stmt *st, long long id, long long user_id, const char *conversation)
{
	db_bind_int64(st, 1, id);
	db_bind_int64(st, 2, user_id);
	db_bind_text(st, 3, conversation, -1);
}

int history_last(struct db *d, long long user_id, const char *conversation, int limit,
		 struct history *out)
{
	/* Newest first with LIMIT, then reversed: the index serves both. */
	static const char sql[] =
		"SELECT role, content FROM messages WHERE user_id = ?1 AND conversation_id = ?2 "
		"ORDER BY id DESC LIMIT ?3";
	struct db_stmt *st;
	int rc, i;

	out->items = NULL;
	out->n = 0;
	if (limit <= 0)
		return 0;
	st = db_stmt(d, sql);
	if (!st)
		return -1;
	out->items = calloc((size_t)limit, sizeof *out->items);
	if (!out->items)
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_text(st, 2, conversation, -1);
	db_bind_int(st, 3, limit);
	while ((rc = db_step(st)) == DB_ROW && out->n < limit) {
		const char *role = db_column_text(st, 0);
		const char *text = db_column_text(st, 1);
		struct history_msg *m = &out->items[out->n];

		m->role = role && strcmp(role, "user") == 0 ? "user" : "assistant";
		m->content = strdup(text ? text : "");
		if (!m->content)
			goto fail;
		out->n++;
	}
	if (rc != DB_DONE && rc != DB_ROW)
		goto fail;
	db_reset(st);
	for (i = 0; i < out->n / 2; i++) {
		struct history_msg t = out->items[i];
		out->items[i] = out->items[out->n - 1 - i];
		out->items[out->n - 1 - i] = t;
	}
	return 0;
fail:
	db_reset(st);
	history_free(out);
	return -1;
}

/* "usage": {"prompt_tokens", "completion_tokens"} from columns i, i+1
 * of st, those that are not NULL; nothing when both are.  0 or -1. */
static int add_usage(cJSON *m, struct db_stmt *st, int i)
{
	static const char *const names[] = {"prompt_tokens", "completion_tokens"};
	cJSON *u = NULL;
	int k;

	for (k = 0; k < 2; k++) {
		if (db_column_is_null(st, i + k))
			continue;
		if (!u && !(u = cJSON_AddObjectToObject(m, "usage")))
			return -1;
		if (!cJSON_AddNumberToObject(u, names[k], (double)db_column_int64(st, i + k)))
			return -1;
	}
	return 0;
}

/* "name": column i of st, unless it is NULL.  0 or -1. */
static int add_text(cJSON *m, struct db_stmt *st, int i, const char *name)
{
	const char *v = db_column_text(st, i);

	return !v || cJSON_AddStringToObject(m, name, v) ? 0 : -1;
}

cJSON *history_list(struct db *d, long long user_id, const char *conversation)
{
	static const char sql[] =
		"SELECT id, role, content, created_at, status, prompt_tokens, completion_tokens, "
		"model, finish_reason FROM messages WHERE user_id = ?1 AND conversation_id = ?2 "
		"ORDER BY id";
	struct db_stmt *st = db_stmt(d, sql);
	cJSON *list = cJSON_CreateArray(), *m;
	int rc;

	if (!st || !list)
		goto fail;
	db_bind_int64(st, 1, user_id);
	db_bind_text(st, 2, conversation, -1);
	while ((rc = db_step(st)) == DB_ROW) {
		const char *role = db_column_text(st, 1);
		const char *text = db_column_text(st, 2);
		const char *when = db_column_text(st, 3);
		const char *status = db_column_text(st, 4);

		m = cJSON_CreateObject();
		if (!m)
			goto fail;
		cJSON_AddItemToArray(list, m);
		if (!cJSON_AddNumberToObject(m, "id", (double)db_column_int64(st, 0)) ||
		    !cJSON_AddStringToObject(m, "role", role ? role : "") ||
		    !cJSON_AddStringToObject(m, "content", text ? text : "") ||
		    !cJSON_AddStringToObject(m, "created_at", when ? when : "") ||
		    !cJSON_AddStringToObject(m, "status", status ? status : "done") ||
		    add_usage(m, st, 5) < 0 || add_text(m, st, 7, "model") < 0 ||
		    add_text(m, st, 8, "finish_reason") < 0)
			goto fail;
	}
	if (rc != DB_DONE)
		goto fail;
	db_reset(st);
	return list;
fail:
	if (st)
		db_reset(st);
	cJSON_Delete(list);
	return NULL;
}

int history_reserve_ids(struct db *d, long long *user_msg_id, long long *reply_id)
{
	/* Two statements, not UPDATE ... RETURNING: RETURNING builds a
	 * temporary table (and its page cache) on every run. */
	static const char sql_bump[] =
		"UPDATE sequences SET value = value + 2 WHERE name = 'message'";
	static const char sql_read[] = "SELECT value FROM sequences WHERE name = 'message'";
	struct db_stmt *st = db_stmt(d, sql_bump);
	int rc;

	if (!st)
		return -1;
	rc = db_step(st);
	db_reset(st);
	if (rc != DB_DONE || !(st = db_stmt(d, sql_read)))
		return -1;
	rc = db_step(st);
	if (rc == DB_ROW) {
		*reply_id = db_column_int64(st, 0);
		*user_msg_id = *reply_id - 1;
	}
	db_reset(st);
	return rc == DB_ROW ? 0 : -1;
}

int history_store_message(struct db *d, long long id, long long user_id, const char *conversation,
			  const char *role, const char *text, size_t len, int complete)
{
	static const char sql[] =
		"INSERT INTO messages (id, user_id, conversation_id, role, content, complete) "
		"VALUES (?1, ?2, ?3, ?4, ?5, ?6)";
	struct db_stmt *st = db_stmt(d, sql);

	if (!st)
		return -1;
	bind_row(st, id, user_id, conversation);
	db_bind_text(st, 4, role, -1);
	db_bind_text(st, 5, text, (int)len);
	db_bind_int(st, 6, complete);
	return db_step_done(st);
}

/* Bind the final fields of a reply to ?5..?10, ?12 and ?13 of a
 * statement that inserts or updates one (status, complete, the two
 * counters, the chunk ends, the error; the model, the finish reason). */
static void bind_reply(struct db_stmt *st, const struct history_reply *rep)
{
	if (rep->model)
		db_bind_text(st, 12, rep->model, -1);
	if (rep->finish_reason && rep->finish_reason[0])
		db_bind_text(st, 13, rep->finish_reason, -1);
	db_bind_text(st, 5, rep->status, -1);
	db_bind_int(st, 6, strcmp(rep->status, "done") == 0);
	if (rep->prompt_tokens >= 0)
		db_bind_int64(st, 7, rep->prompt_tokens);
	if (rep->completion_tokens >= 0)
		db_bind_int64(st, 8, rep->completion_tokens);
	if (rep->chunks)
		db_bind_blob(st, 9, rep->chunks, (int)rep->chunks_len);
	if (rep->error)
		db_bind_text(st, 10, rep->error, -1);
}

int history_store(struct db *d, long long user_id, const char *conversation, long long user_msg_id,
		  const char *user_text, long long reply_id, const struct history_reply *rep)
{
	static const char sql[] = "INSERT INTO messages (id, user_id, conversation_id, role, "
				  "content, status, complete, "
				  "prompt_tokens, completion_tokens, chunks, error, model, "
				  "finish_reason) "
				  "VALUES (?1, ?2, ?3, 'assistant', ?4, ?5, ?6, ?7, ?8, ?9, ?10, "
				  "?12, ?13)";
	struct db_stmt *st;

	if (history_store_message(d, user_msg_id, user_id, conversation, "user", user_text,
				  strlen(user_text), 1) < 0 ||
	    !(st = db_stmt(d, sql)))
		return -1;
	bind_row(st, reply_id, user_id, conversation);
	db_bind_text(st, 4, rep->text, (int)rep->len);
	bind_reply(st, rep);
	return db_step_done(st);
}

int history_start_reply(struct db *d, long long reply_id, long long user_id,
			const char *conversation, const char *model)
{
	static const char sql[] = "INSERT INTO messages (id, user_id, conversation_id, role, "
				  "content, complete, status, model) "
				  "VALUES (?1, ?2, ?3, 'assistant', '', 0, 'streaming', ?4)";
	struct db_stmt *st = db_stmt(d, sql);

	if (!st)
		return -1;
	bind_row(st, reply_id, user_id, conversation);
	db_bind_text(st, 4, model, -1);
	return db_step_done(st);
}

int history_save_reply(struct db *d, long long user_msg_id, long long reply_id, long long user_id,
		       const char *conversation, const struct history_reply *rep, int partial)
{
	/* Only next to its user message: a conversation deleted while its
	 * reply streamed stays deleted. */
	static const char sql_final[] =
		"INSERT INTO messages (id, user_id, conversation_id, role, content, status, "
		"complete, "
		"prompt_tokens, completion_tokens, chunks, error, model, finish_reason) "
		"SELECT ?1, ?2, ?3, 'assistant', ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?12, ?13 WHERE "
		"EXISTS "
		"(SELECT 1 FROM messages WHERE id = ?11 AND user_id = ?2 AND role = 'user') "
		"ON CONFLICT (id) DO UPDATE SET content = excluded.content, "
		"status = excluded.status, complete = excluded.complete, "
		"prompt_tokens = excluded.prompt_tokens, completion_tokens = "
		"excluded.completion_tokens, chunks = excluded.chunks, error = "
		"excluded.error, model = excluded.model, finish_reason = excluded.finish_reason";
	static const char sql_partial[] =
		"INSERT INTO messages (id, user_id, conversation_id, role, content, complete, "
		"status, model) "
		"SELECT ?1, ?2, ?3, 'assistant', ?4, 0, 'streaming', ?12 WHERE EXISTS "
		"(SELECT 1 FROM messages WHERE id = ?11 AND user_id = ?2 AND role = 'user') "
		"ON CONFLICT (id) DO UPDATE SET content = excluded.content "
		"WHERE messages.status = 'streaming' AND "
		"length(CAST(messages.content AS BLOB)) < length(CAST(excluded.content AS BLOB))";
	struct db_stmt *st = db_stmt(d, partial ? sql_partial : sql_final);

	if (!st)
		return -1;
	bind_row(st, reply_id, user_id, conversation);
	db_bind_text(st, 4, rep->text, (int)rep->len);
	if (!partial)
		bind_reply(st, rep);
	else if (rep->model)
		db_bind_text(st, 12, rep->model, -1);
	db_bind_int64(st, 11, user_msg_id);
	return db_step_done(st);
}

int history_chunk_put(struct buf *b, size_t len)
{
	unsigned char v[10];
	size_t n = 0;

	do {
		v[n] = (unsigned char)(len & 0x7f);
		len >>= 7;
		if (len)
			v[n] |= 0x80;
		n++;
	} while (len);
	return buf_append(b, v, n) == BUF_OK ? 0 : -1;
}

int history_chunk_next(const unsigned char **p, const unsigned char *end, size_t *len)
{
	size_t v = 0;
	int shift;

	if (*p >= end)
		return 0;
	for (shift = 0; *p < end && shift < 35; shift += 7) {
		unsigned char c = *(*p)++;

		v |= (size_t)(c & 0x7f) << shift;
		if (!(c & 0x80)) {
			*len = v;
			return 1;
		}
	}
	return -1;
}

/* A copy of column i's bytes (NUL-terminated), or NULL. */
static void *column_copy(struct db_stmt *st, int i, size_t *len)
{
	const void *p = db_column_is_blob(st, i) ? db_column_blob(st, i) : db_column_text(st, i);
	size_t n = (size_t)db_column_bytes(st, i);
	char *c;

	if (!p || !(c = malloc(n + 1)))
		return NULL;
	memcpy(c, p, n);
	c[n] = '\0';
	if (len)
		*len = n;
	return c;
}

/* Column i's text into a fixed field, cut between characters ("" NULL). */
static void copy_text(char *out, size_t cap, struct db_stmt *st, int i)
{
	const char *v = db_column_text(st, i);

	utf8_copy(out, cap, v ? v : "");
}

int history_get_reply(struct db *d, long long user_id, long long message_id,
		      struct history_stored *out)
{
	static const char sql[] =
		"SELECT conversation_id, status, content, chunks, error, prompt_tokens, "
		"completion_tokens, model, finish_reason FROM messages WHERE id = ?1 AND user_id = "
		"?2 AND role = "
		"'assistant'";
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	memset(out, 0, sizeof *out);
	if (!st)
		return -1;
	db_bind_int64(st, 1, message_id);
	db_bind_int64(st, 2, user_id);
	rc = db_step(st);
	if (rc == DB_ROW) {
		const char *conv = db_column_text(st, 0);
		const char *status = db_column_text(st, 1);

		snprintf(out->conversation, sizeof out->conversation, "%s", conv ? conv : "");
		snprintf(out->status, sizeof out->status, "%s", status ? status : "done");
		out->text = column_copy(st, 2, &out->len);
		if (db_column_is_blob(st, 3))
			out->chunks = column_copy(st, 3, &out->chunks_len);
		if (!db_column_is_null(st, 4))
			out->error = column_copy(st, 4, NULL);
		out->prompt_tokens = db_column_is_null(st, 5) ? -1 : db_column_int64(st, 5);
		out->completion_tokens = db_column_is_null(st, 6) ? -1 : db_column_int64(st, 6);
		copy_text(out->model, sizeof out->model, st, 7);
		copy_text(out->finish_reason, sizeof out->finish_reason, st, 8);
		if (!out->text) {
			db_reset(st);
			history_stored_free(out);
			return -1;
		}
	}
	db_reset(st);
	return rc == DB_ROW ? 1 : rc == DB_DONE ? 0 : -1;
}

void history_stored_free(struct history_stored *s)
{
	free(s->text);
	free(s->chunks);
	free(s->error);
	s->text = s->error = NULL;
	s->chunks = NULL;
}

int history_forget(struct db *d, long long user_id, long long user_msg_id, long long reply_id)
{
	static const char sql[] = "DELETE FROM messages WHERE user_id = ?1 AND id IN (?2, ?3)";
	struct db_stmt *st = db_stmt(d, sql);

	if (!st)
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_int64(st, 2, user_msg_id);
	db_bind_int64(st, 3, reply_id);
	return db_step_done(st);
}

int history_delete(struct db *d, long long user_id, const char *conversation)
{
	static const char sql[] =
		"DELETE FROM messages WHERE user_id = ?1 AND conversation_id = ?2";
	struct db_stmt *st = db_stmt(d, sql);
	int rc;

	if (!st)
		return -1;
	db_bind_int64(st, 1, user_id);
	db_bind_text(st, 2, conversation, -1);
	rc = db_step(st);
	db_reset(st);
	return rc == DB_DONE ? db_changes(d) : -1;
}
