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
#include "metrics.h"
#include "response.h"
#include "server.h"
#include "usage.h"
#include "utf8.h"

static void exchange_zero(struct exchange *ex, struct request *r)
{
	memset(ex, 0, sizeof *ex);
	ex->r = r;
	ex->stream_slot = -1;
	ex->model = config.model;
	ex->model_index = config_model_index(config.model);
	buf_init(&ex->message, config.message_max);
	buf_init(&ex->reply, 64u << 20);
	buf_init(&ex->chunks, 4u << 20); /* a million pieces at least */
	prompt_init(&ex->prompt);
}

static int message_too_long(struct exchange *ex)
{
	return resp_problem_set(&ex->problem, 400, "message",
				"Ensure this field has no more than %zu bytes.",
				config.message_max);
}

/* A 400 naming one field. */
static int bad_field(struct exchange *ex, const char *field, const char *why)
{
	return resp_problem_set(&ex->problem, 400, field, "%s", why);
}

static int out_of_memory(struct exchange *ex)
{
	return resp_problem_set(&ex->problem, 500, NULL, "Out of memory, please retry.");
}

/* Copy the message, trimmed as DRF's CharField trims it, and check it. */
static int take_message(struct exchange *ex, const char *text, size_t n)
{
	n = utf8_trim(&text, n);
	if (n == 0)
		return bad_field(ex, "message", "This field may not be blank.");
	if (n > config.message_max)
		return message_too_long(ex);
	if (buf_append(&ex->message, text, n) != BUF_OK)
		return out_of_memory(ex);
	return 0;
}

static int take_conversation(struct exchange *ex, const char *id)
{
	if (!id)
		id = "default";
	if (!history_conversation_valid(id))
		return bad_field(ex, "conversation_id",
				 "Use 1-64 characters of A-Z, a-z, 0-9, _ and -.");
	memcpy(ex->conversation, id, strlen(id) + 1);
	return 0;
}

/* One of JARVAS_MODELS (DRF's ChoiceField); NULL: the default. */
static int take_model(struct exchange *ex, const char *name)
{
	int i = name ? config_model_index(name) : config_model_index(config.model);

	if (i < 0)
		return resp_problem_set(&ex->problem, 400, "model",
					"\"%.*s\" is not a valid choice.", CONFIG_MODEL_MAX, name);
	ex->model_index = i;
	ex->model = config.models[i];
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
		return bad_field(ex, "resumable", "This field may not be null.");
	else if (!cJSON_IsString(v) || boolean_text(v->valuestring, &b) < 0)
		return bad_field(ex, "resumable", not_boolean);
	ex->resumable = b;
	return 0;
}

/* The optional query parameter name into v: 1 found, 0 absent, or -1
 * with the 400 set. */
static int query_param(struct exchange *ex, const char *name, struct buf *v)
{
	int found = request_query(ex->r, name, v);

	return found < 0 ? bad_field(ex, name, request_bad_query) : found;
}

static int read_input_query(struct exchange *ex)
{
	struct buf v;
	int b, found;

	buf_init(&v, config.message_max * 3 + 1024);
	found = request_query(ex->r, "message", &v);
	if (found < 0) {
		/* Either bad %-encoding / not UTF-8, or past the buffer's cap. */
		if (v.len >= v.max)
			message_too_long(ex);
		else
			bad_field(ex, "message", request_bad_query);
		goto fail;
	}
	if (!found) {
		bad_field(ex, "message", "This field is required.");
		goto fail;
	}
	if (take_message(ex, buf_str(&v), v.len) < 0 ||
	    (found = query_param(ex, "conversation_id", &v)) < 0 ||
	    take_conversation(ex, found ? buf_str(&v) : NULL) < 0 ||
	    (found = query_param(ex, "model", &v)) < 0 ||
	    take_model(ex, found ? buf_str(&v) : NULL) < 0 ||
	    (found = query_param(ex, "resumable", &v)) < 0)
		goto fail;
	if (found && boolean_text(buf_str(&v), &b) < 0) {
		bad_field(ex, "resumable", not_boolean);
		goto fail;
	}
	if (found)
		ex->resumable = b;
	buf_free(&v);
	return 0;
fail:
	buf_free(&v);
	return -1;
}

/* An optional string field: absent is the default (*out NULL), null and
 * other types are refused (DRF).  0 or -1. */
static int optional_field(struct exchange *ex, const char *name, const char **out)
{
	int rc = request_field(ex->r, name, out);

	if (rc < 0)
		return bad_field(ex, name, request_field_problem(rc));
	if (rc != REQUEST_FIELD_FOUND)
		*out = NULL;
	return 0;
}

static int read_input_body(struct exchange *ex)
{
	const char *message = NULL, *conversation, *model;
	int rc;

	if (request_parse_body(ex->r) < 0)
		return -1; /* answered (400, 413) */
	rc = request_field(ex->r, "message", &message);
	if (rc != REQUEST_FIELD_FOUND)
		return bad_field(ex, "message", request_field_problem(rc));
	if (take_message(ex, message, strlen(message)) < 0 ||
	    optional_field(ex, "conversation_id", &conversation) < 0 ||
	    take_conversation(ex, conversation) < 0 || optional_field(ex, "model", &model) < 0 ||
	    take_model(ex, model) < 0)
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
	     history_start_reply(d, ex->message_id, ex->user.id, ex->conversation, ex->model) < 0))
		return -1;
	return 0;
}

/* The user's daily token quota (JARVAS_TOKENS_PER_DAY), read with the
 * context: 0, 1 when it is used up (the 429 set), or -1. */
static int over_quota(struct exchange *ex, struct db *d)
{
	long long used;
	int reset_in;

	if (!config.tokens_per_day)
		return 0;
	if (usage_today(d, ex->user.id, &used, &reset_in) < 0)
		return -1;
	if (used < config.tokens_per_day)
		return 0;
	resp_problem_set(&ex->problem, 429, NULL,
			 "Daily token quota used up: %lld of %lld tokens today. It resets at "
			 "00:00 UTC.",
			 used, config.tokens_per_day);
	ex->problem.retry_after = reset_in;
	return 1;
}

/* Reads, then the short write transaction of reserve().  0, 1 when the
 * exchange is refused (ex->problem), or -1. */
static int load_context(struct exchange *ex, int stream)
{
	struct db *d = db_acquire();
	int rc;

	if (!d)
		return -1;
	if ((rc = over_quota(ex, d)) != 0) {
		db_release(d);
		return rc;
	}
	if (history_last(d, ex->user.id, ex->conversation, config.history_limit, &ex->history) <
		    0 ||
	    prompt_get(d, &ex->user, &ex->prompt) < 0 || db_begin(d) < 0)
		goto fail;
	rc = reserve(ex, d, stream);
	if (rc == 1) {
		db_rollback(d);
		db_release(d);
		resp_problem_set(&ex->problem, 409, NULL,
				 "A reply is already being generated in this conversation; resume "
				 "it or stop it.");
		ex->problem.message_id = ex->running;
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

/* The user's cap on open streams (stream) or on chats in progress,
 * before anything is written or sent upstream for this one. */
static int admit(struct exchange *ex, int stream)
{
	if (limits_enter(ex->user.id, &ex->stream_slot) == 0)
		return 0;
	if (stream)
		resp_problem_set(&ex->problem, 429, NULL,
				 "Too many open streams: at most %d per user. Close one and retry.",
				 config.max_streams_per_user);
	else
		resp_problem_set(&ex->problem, 429, NULL,
				 "Too many chats in progress: at most %d per user. Wait for one to "
				 "finish and retry.",
				 config.max_chats_per_user);
	ex->problem.retry_after = 5;
	return -1;
}

int exchange_begin(struct exchange *ex, struct request *r, int from_query, int stream)
{
	exchange_zero(ex, r);
	if (auth_require(r, from_query, &ex->user) < 0)
		return -1; /* answered (401) */
	ex->have_user = 1;
	if ((from_query ? read_input_query(ex) : read_input_body(ex)) < 0 || admit(ex, stream) < 0)
		return -1;
	switch (load_context(ex, stream)) {
	case 0: return 0;
	case 1: return -1;
	default:
		return resp_problem_set(&ex->problem, 503, NULL,
					"Database unavailable, please retry.");
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

int exchange_messages(struct exchange *ex, struct wire_message **out, int *nout)
{
	struct wire_message *msgs;
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
	struct wire_message *msgs;
	struct upstream_call call;
	int n, rc;

	if (exchange_messages(ex, &msgs, &n) < 0) {
		ex->result.outcome = UPSTREAM_FAILED;
		snprintf(ex->result.error, sizeof ex->result.error, "Out of memory.");
		return -1;
	}
	memset(&call, 0, sizeof call);
	call.model = ex->model;
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
		.prompt_tokens = ex->result.prompt_tokens,
		.completion_tokens = ex->result.completion_tokens,
		.chunks = ex->chunks_lost ? NULL : ex->chunks.data,
		.chunks_len = ex->chunks.len,
		.error = error,
		.model = ex->model,
		.finish_reason = ex->result.finish_reason,
	};
	int counted = rep.prompt_tokens >= 0 || rep.completion_tokens >= 0;
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
			     (!counted ||
			      usage_record(d, ex->message_id, ex->user.id, ex->model,
					   rep.prompt_tokens, rep.completion_tokens) == 0) &&
			     (!ex->claimed || generations_release(d, ex->message_id) == 0) &&
			     db_commit(d) == 0
		     ? 0
		     : -1;
	if (rc < 0) {
		log_error("storing exchange of user %lld failed: %s", ex->user.id, db_errmsg(d));
	} else {
		ex->claimed = 0;
		if (counted)
			metrics_tokens(ex->model_index, rep.prompt_tokens, rep.completion_tokens);
	}
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
