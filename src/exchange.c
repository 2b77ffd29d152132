/*
 * exchange — the shared chat pipeline (see exchange.h).
 */
#include "exchange.h"

#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "db.h"
#include "limits.h"
#include "log.h"
#include "response.h"
#include "server.h"
#include "utf8.h"

static void exchange_zero(struct exchange *ex, struct request *r)
{
	memset(ex, 0, sizeof *ex);
	ex->r = r;
	ex->stream_slot = -1;
	buf_init(&ex->message, config.message_max);
	buf_init(&ex->reply, 64u << 20);
	prompt_init(&ex->prompt);
}

static int message_too_long(struct exchange *ex)
{
	char msg[96];

	snprintf(msg, sizeof msg, "Ensure this field has no more than %zu bytes.",
		 config.message_max);
	resp_field_error(ex->r, "message", msg);
	return -1;
}

/* Copy the message, trimmed as DRF's CharField trims it, and check it. */
static int take_message(struct exchange *ex, const char *text, size_t n)
{
	n = utf8_trim(&text, n);
	if (n == 0)
		return resp_field_error(ex->r, "message", "This field may not be blank."), -1;
	if (n > config.message_max)
		return message_too_long(ex);
	if (buf_append(&ex->message, text, n) != BUF_OK)
		return resp_json(ex->r, 500, NULL), -1;
	return 0;
}

static int take_conversation(struct exchange *ex, const char *id)
{
	if (!id)
		id = "default";
	if (!history_conversation_valid(id))
		return resp_field_error(ex->r, "conversation_id",
					"Use 1-64 characters of A-Z, a-z, 0-9, _ and -."),
		       -1;
	memcpy(ex->conversation, id, strlen(id) + 1);
	return 0;
}

static int read_input_query(struct exchange *ex)
{
	struct buf v;
	int rc, found;

	buf_init(&v, config.message_max * 3 + 1024);
	found = request_query(ex->r, "message", &v);
	if (found < 0) {
		/* Either bad %-encoding / not UTF-8, or past the buffer's cap. */
		if (v.len >= v.max)
			message_too_long(ex);
		else
			resp_field_error(ex->r, "message", request_bad_query);
		goto fail;
	}
	if (!found) {
		resp_field_error(ex->r, "message", "This field is required.");
		goto fail;
	}
	if (take_message(ex, buf_str(&v), v.len) < 0)
		goto fail;
	found = request_query(ex->r, "conversation_id", &v);
	if (found < 0) {
		resp_field_error(ex->r, "conversation_id", request_bad_query);
		goto fail;
	}
	rc = take_conversation(ex, found ? buf_str(&v) : NULL);
	buf_free(&v);
	return rc;
fail:
	buf_free(&v);
	return -1;
}

static int read_input_body(struct exchange *ex)
{
	const char *message = NULL, *conversation = NULL;
	int rc;

	if (request_parse_body(ex->r) < 0)
		return -1;
	rc = request_field(ex->r, "message", &message);
	if (rc != REQUEST_FIELD_FOUND)
		return resp_field_error(ex->r, "message", request_field_problem(rc)), -1;
	if (take_message(ex, message, strlen(message)) < 0)
		return -1;
	/* Optional: absent is the default, null is refused (DRF). */
	rc = request_field(ex->r, "conversation_id", &conversation);
	if (rc < 0)
		return resp_field_error(ex->r, "conversation_id", request_field_problem(rc)), -1;
	return take_conversation(ex, rc == REQUEST_FIELD_FOUND ? conversation : NULL);
}

/* The writes every exchange makes once: its two message ids and the
 * prompt-cache hit (or the newly built prompt).  In the caller's write
 * transaction. */
static int reserve(struct exchange *ex, struct db *d)
{
	if (history_reserve_ids(d, &ex->user_msg_id, &ex->message_id) < 0 ||
	    prompt_record(d, &ex->prompt) < 0)
		return -1;
	ex->reserved = 1;
	return 0;
}

/* A stream's user message goes to history at its start, with the ids: a
 * responder killed mid-stream must not lose it (the reply follows as it
 * grows, relay.c). */
static int store_user_message(struct exchange *ex, struct db *d)
{
	if (history_store_message(d, ex->user_msg_id, ex->user.id, ex->conversation, "user",
				  buf_str(&ex->message), ex->message.len, 1) < 0)
		return -1;
	ex->user_stored = 1;
	return 0;
}

/* Reads; then, for a stream, whose events carry the message id from the
 * start, a short write transaction to reserve and store the user message.
 * A non-stream exchange reserves in the same transaction that stores it:
 * one write, not two. */
static int load_context(struct exchange *ex, int reserve_now)
{
	struct db *d = db_acquire();

	if (!d)
		return -1;
	if (history_last(d, ex->user.id, ex->conversation, config.history_limit, &ex->history) <
		    0 ||
	    prompt_get(d, &ex->user, &ex->prompt) < 0)
		goto fail;
	if (reserve_now && (db_begin(d) < 0 || reserve(ex, d) < 0 ||
			    store_user_message(ex, d) < 0 || db_commit(d) < 0)) {
		ex->user_stored = 0; /* rolled back */
		goto fail;
	}
	db_release(d);
	return 0;
fail:
	log_error("loading context for user %lld failed: %s", ex->user.id, db_errmsg(d));
	db_release(d); /* rolls back an open transaction */
	return -1;
}

/* The user's cap on open streams (stream) or on chats in progress,
 * before anything is written or sent upstream for this one. */
static int admit(struct exchange *ex, int stream)
{
	char msg[128];
	cJSON *o;

	if (limits_enter(ex->user.id, &ex->stream_slot) == 0)
		return 0;
	if (stream)
		snprintf(msg, sizeof msg,
			 "Too many open streams: at most %d per user. Close one and retry.",
			 config.max_streams_per_user);
	else
		snprintf(msg, sizeof msg,
			 "Too many chats in progress: at most %d per user. Wait for one to "
			 "finish and retry.",
			 config.max_chats_per_user);
	o = cJSON_CreateObject();
	if (o && !cJSON_AddStringToObject(o, "detail", msg)) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json_headers(ex->r, 429, o, "Retry-After: 5\r\n");
	return -1;
}

int exchange_begin(struct exchange *ex, struct request *r, int from_query, int stream)
{
	exchange_zero(ex, r);
	if (auth_require(r, from_query, &ex->user) < 0)
		return -1;
	ex->have_user = 1;
	if ((from_query ? read_input_query(ex) : read_input_body(ex)) < 0)
		return -1;
	if (admit(ex, stream) < 0)
		return -1;
	if (load_context(ex, stream) < 0) {
		resp_detail(r, 503, "Database unavailable, please retry.");
		return -1;
	}
	return 0;
}

int exchange_append_reply(struct exchange *ex, const char *text, size_t n)
{
	if (buf_append(&ex->reply, text, n) != BUF_OK) {
		log_warn("reply of message %lld over %zu bytes; stopping", ex->message_id,
			 ex->reply.max);
		ex->reply_cut = 1;
		return -1;
	}
	return 0;
}

void exchange_truncate_reply(struct exchange *ex, size_t n)
{
	if (n < ex->reply.len) {
		ex->reply.len = n;
		ex->reply.data[n] = '\0';
	}
}

static int collect(void *ctx, const char *text, size_t n)
{
	return exchange_append_reply(ctx, text, n);
}

int exchange_messages(struct exchange *ex, struct upstream_message **out, int *nout)
{
	struct upstream_message *msgs;
	int i, n = 0;

	msgs = calloc((size_t)ex->history.n + 2, sizeof *msgs);
	if (!msgs)
		return -1;
	msgs[n].role = "system";
	msgs[n++].content = buf_str(&ex->prompt.text);
	for (i = 0; i < ex->history.n; i++) {
		msgs[n].role = ex->history.items[i].role;
		msgs[n++].content = ex->history.items[i].content;
	}
	msgs[n].role = "user";
	msgs[n++].content = buf_str(&ex->message);
	*out = msgs;
	*nout = n;
	return 0;
}

void exchange_release_context(struct exchange *ex)
{
	history_free(&ex->history);
	prompt_free(&ex->prompt);
	prompt_init(&ex->prompt);
}

int exchange_run(struct exchange *ex, int total_timeout)
{
	struct upstream_message *msgs;
	struct upstream_call call;
	int n, rc;

	if (exchange_messages(ex, &msgs, &n) < 0) {
		ex->result.outcome = UPSTREAM_FAILED;
		snprintf(ex->result.error, sizeof ex->result.error, "Out of memory.");
		return -1;
	}
	memset(&call, 0, sizeof call);
	call.messages = msgs;
	call.nmessages = n;
	call.on_content = collect;
	call.ctx = ex;
	call.idle_timeout = config.upstream_idle_timeout;
	call.total_timeout = total_timeout;
	call.client_fd = ex->r->fcgx->ipcFd;
	rc = upstream_chat(ex->r->worker, &call, &ex->result);
	free(msgs);
	return rc;
}

/* The rows of an exchange, in the caller's write transaction.  A stream
 * stored its user message at the start: only the reply is left to write,
 * or, when the user saw nothing, the user message to take back (history
 * keeps no exchange without a reply). */
static int store_rows(struct exchange *ex, struct db *d, int complete)
{
	if (ex->user_stored && ex->reply.len == 0)
		return history_forget(d, ex->user.id, ex->user_msg_id, ex->message_id);
	if (ex->user_stored)
		return history_save_reply(d, ex->user_msg_id, ex->message_id, ex->user.id,
					  ex->conversation, buf_str(&ex->reply), ex->reply.len,
					  complete, 0);
	return history_store(d, ex->user.id, ex->conversation, ex->user_msg_id,
			     buf_str(&ex->message), ex->message_id, buf_str(&ex->reply),
			     ex->reply.len, complete);
}

int exchange_store(struct exchange *ex, int complete)
{
	struct db *d;
	int rc;

	if (ex->reply.len == 0 && !ex->user_stored)
		return 0; /* the user saw nothing: there is nothing to keep */
	d = db_acquire();
	if (!d)
		return -1;
	rc = db_begin(d) == 0 && (ex->reserved || reserve(ex, d) == 0) &&
			     store_rows(ex, d, complete) == 0 && db_commit(d) == 0
		     ? 0
		     : -1;
	if (rc < 0)
		log_error("storing exchange of user %lld failed: %s", ex->user.id, db_errmsg(d));
	db_release(d); /* rolls back what failed */
	return rc;
}

void exchange_release_slot(struct exchange *ex)
{
	if (ex->stream_slot >= 0)
		limits_leave(ex->stream_slot);
	ex->stream_slot = -1;
}

void exchange_end(struct exchange *ex)
{
	exchange_release_slot(ex);
	if (ex->have_user)
		users_clear(&ex->user);
	history_free(&ex->history);
	prompt_free(&ex->prompt);
	buf_free(&ex->message);
	buf_free(&ex->reply);
}
