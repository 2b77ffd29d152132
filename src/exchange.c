/*
 * exchange — the shared chat pipeline (see exchange.h).
 */
#include "exchange.h"

#include <stdlib.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "db.h"
#include "generations.h"
#include "journal.h"
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
	buf_init(&ex->chunks, 4u << 20); /* a million pieces at least */
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

static const char not_boolean[] = "Must be a valid boolean.";

/* DRF's BooleanField: true/false, 1/0, and their usual spellings. */
static int boolean_text(const char *v, int *out)
{
	static const char *const yes[] = {"true", "True", "TRUE", "1", "yes", "on"};
	static const char *const no[] = {"false", "False", "FALSE", "0", "no", "off"};
	size_t i;

	for (i = 0; i < sizeof yes / sizeof yes[0]; i++) {
		if (strcmp(v, yes[i]) == 0)
			return *out = 1, 0;
		if (strcmp(v, no[i]) == 0)
			return *out = 0, 0;
	}
	return -1;
}

static int read_resumable_body(struct exchange *ex)
{
	const cJSON *v = cJSON_GetObjectItemCaseSensitive(ex->r->data, "resumable");
	int b;

	if (!v)
		return 0;
	if (cJSON_IsBool(v))
		b = cJSON_IsTrue(v);
	else if (cJSON_IsNumber(v) && (v->valuedouble == 0 || v->valuedouble == 1))
		b = v->valuedouble == 1;
	else if (cJSON_IsNull(v))
		return resp_field_error(ex->r, "resumable", "This field may not be null."), -1;
	else if (!cJSON_IsString(v) || boolean_text(v->valuestring, &b) < 0)
		return resp_field_error(ex->r, "resumable", not_boolean), -1;
	ex->resumable = b;
	return 0;
}

static int read_resumable_query(struct exchange *ex, struct buf *v)
{
	int found = request_query(ex->r, "resumable", v), b;

	if (found == 0)
		return 0;
	if (found < 0 || boolean_text(buf_str(v), &b) < 0)
		return resp_field_error(ex->r, "resumable", not_boolean), -1;
	ex->resumable = b;
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
	if (rc == 0)
		rc = read_resumable_query(ex, &v);
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
	if (take_conversation(ex, rc == REQUEST_FIELD_FOUND ? conversation : NULL) < 0)
		return -1;
	return read_resumable_body(ex);
}

/* The writes every exchange makes at its start, in one transaction: its
 * two message ids, the prompt-cache hit (or the newly built prompt) and
 * its place as the one generation of its conversation; a stream also
 * stores its user message and the empty reply (status 'streaming'): a
 * responder killed mid-stream must not lose the message, and a client
 * reloading finds the reply to resume.  0, 1 when another generation
 * runs in the conversation (ex->running), or -1. */
static int reserve(struct exchange *ex, struct db *d, int stream)
{
	int rc;

	if (history_reserve_ids(d, &ex->user_msg_id, &ex->message_id) < 0 ||
	    prompt_record(d, &ex->prompt) < 0)
		return -1;
	rc = generations_claim(d, ex->message_id, ex->user.id, ex->conversation, ex->resumable,
			       &ex->running);
	if (rc != 0)
		return rc;
	if (stream &&
	    (history_store_message(d, ex->user_msg_id, ex->user.id, ex->conversation, "user",
				   buf_str(&ex->message), ex->message.len, 1) < 0 ||
	     history_start_reply(d, ex->message_id, ex->user.id, ex->conversation) < 0))
		return -1;
	return 0;
}

/* Reads, then the short write transaction of reserve().  0, 1 when
 * another generation runs in the conversation, or -1. */
static int load_context(struct exchange *ex, int stream)
{
	struct db *d = db_acquire();
	int rc;

	if (!d)
		return -1;
	if (history_last(d, ex->user.id, ex->conversation, config.history_limit, &ex->history) <
		    0 ||
	    prompt_get(d, &ex->user, &ex->prompt) < 0 || db_begin(d) < 0)
		goto fail;
	rc = reserve(ex, d, stream);
	if (rc == 1) {
		db_rollback(d);
		db_release(d);
		return 1;
	}
	if (rc < 0 || db_commit(d) < 0)
		goto fail;
	ex->reserved = ex->claimed = 1;
	ex->user_stored = stream;
	db_release(d);
	return 0;
fail:
	log_error("loading context for user %lld failed: %s", ex->user.id, db_errmsg(d));
	db_release(d); /* rolls back an open transaction */
	return -1;
}

/* 409: the conversation has a generation running. */
static void busy(struct exchange *ex)
{
	cJSON *o = cJSON_CreateObject();

	if (o && (!cJSON_AddStringToObject(o, "detail",
					   "A reply is already being generated in this "
					   "conversation; resume it or stop it.") ||
		  !cJSON_AddNumberToObject(o, "message_id", (double)ex->running))) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json(ex->r, 409, o);
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
	switch (load_context(ex, stream)) {
	case 0: return 0;
	case 1: busy(ex); return -1;
	default: resp_detail(r, 503, "Database unavailable, please retry."); return -1;
	}
}

int exchange_append_reply(struct exchange *ex, const char *text, size_t n)
{
	if (buf_append(&ex->reply, text, n) != BUF_OK) {
		log_warn("reply of message %lld over %zu bytes; stopping", ex->message_id,
			 ex->reply.max);
		ex->reply_cut = 1;
		return -1;
	}
	/* Only a resumable reply's: another's client has all that was stored
	 * when it left, so its reconnects have nothing to cut in chunks (and
	 * each stream keeps a little less memory). */
	if (ex->resumable && !ex->chunks_lost && history_chunk_put(&ex->chunks, n) < 0)
		ex->chunks_lost = 1;
	return 0;
}

void exchange_truncate_reply(struct exchange *ex, size_t n)
{
	const unsigned char *p = (const unsigned char *)ex->chunks.data, *kept = p;
	const unsigned char *end = p + ex->chunks.len;
	size_t len, sum = 0;

	if (n < ex->reply.len) {
		ex->reply.len = n;
		ex->reply.data[n] = '\0';
	}
	/* The chunks that end within n stay (n is on a chunk's end). */
	while (history_chunk_next(&p, end, &len) == 1 && (sum += len) <= n)
		kept = p;
	ex->chunks.len = (size_t)(kept - (const unsigned char *)ex->chunks.data);
}

static int collect(void *ctx, const char *text, size_t n)
{
	return exchange_append_reply(ctx, text, n);
}

/* A stop request for this reply, from any process (journal.h). */
static int stop_requested(void *ctx)
{
	struct exchange *ex = ctx;

	if (ex->reserved && journal_stop_requested(ex->message_id))
		ex->stopped = 1;
	return ex->stopped;
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
	call.stop_requested = stop_requested;
	rc = upstream_chat(ex->r->worker, &call, &ex->result);
	free(msgs);
	return rc;
}

/* The rows of an exchange, in the caller's write transaction.  A stream
 * stored its user message at the start: only the reply is left to write,
 * or, when the user saw nothing, the user message to take back (history
 * keeps no exchange without a reply, unless the user stopped it). */
static int store_rows(struct exchange *ex, struct db *d, const struct history_reply *rep)
{
	if (ex->user_stored && ex->reply.len == 0 && strcmp(rep->status, "stopped") != 0)
		return history_forget(d, ex->user.id, ex->user_msg_id, ex->message_id);
	if (ex->user_stored)
		return history_save_reply(d, ex->user_msg_id, ex->message_id, ex->user.id,
					  ex->conversation, rep, 0);
	if (ex->reply.len == 0 && strcmp(rep->status, "stopped") != 0)
		return 0; /* the user saw nothing: there is nothing to keep */
	return history_store(d, ex->user.id, ex->conversation, ex->user_msg_id,
			     buf_str(&ex->message), ex->message_id, rep);
}

int exchange_store(struct exchange *ex, const char *status, const char *error)
{
	struct history_reply rep = {
		.text = buf_str(&ex->reply),
		.len = ex->reply.len,
		.status = status,
		.prompt_tokens = ex->result.prompt_eval_count,
		.completion_tokens = ex->result.eval_count,
		.chunks = ex->chunks_lost ? NULL : ex->chunks.data,
		.chunks_len = ex->chunks.len,
		.error = error,
	};
	struct db *d;
	int rc;

	if (!ex->reserved)
		return 0; /* never started: nothing was written */
	if (ex->reply.len == 0)
		rep.chunks = NULL;
	if (!rep.chunks)
		rep.chunks_len = 0;
	d = db_acquire();
	if (!d)
		return -1;
	rc = db_begin(d) == 0 && store_rows(ex, d, &rep) == 0 &&
			     (!ex->claimed || generations_release(d, ex->message_id) == 0) &&
			     db_commit(d) == 0
		     ? 0
		     : -1;
	if (rc < 0)
		log_error("storing exchange of user %lld failed: %s", ex->user.id, db_errmsg(d));
	else
		ex->claimed = 0;
	db_release(d); /* rolls back what failed */
	return rc;
}

/* A generation that ends without its exchange stored: its row goes. */
static void unclaim(struct exchange *ex)
{
	struct db *d;

	if (!ex->claimed)
		return;
	d = db_acquire();
	if (!d || generations_release(d, ex->message_id) < 0)
		log_warn("the generation of message %lld stays registered until a sweep",
			 ex->message_id);
	db_release(d);
	ex->claimed = 0;
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
	unclaim(ex);
	if (ex->have_user)
		users_clear(&ex->user);
	history_free(&ex->history);
	prompt_free(&ex->prompt);
	buf_free(&ex->message);
	buf_free(&ex->reply);
	buf_free(&ex->chunks);
}
