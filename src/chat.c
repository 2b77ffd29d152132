/*
 * chat — the old non-streaming API (see chat.h).  POST /api/chat/ runs the
 * same exchange pipeline as the stream and answers once the model is
 * done; on any failure nothing is stored.  The history and conversation
 * endpoints only read and delete what exchanges stored.
 */
#include "chat.h"

#include <stdint.h>
#include <stdio.h>
#include <string.h>

#include "auth.h"
#include "config.h"
#include "conversations.h"
#include "db.h"
#include "exchange.h"
#include "generations.h"
#include "history.h"
#include "metrics.h"
#include "response.h"
#include "utf8.h"

/* "usage": the upstream's counters, those it sent, and its
 * "finish_reason" when it gave one.  0 or -1. */
static int add_usage(cJSON *o, const struct upstream_result *res)
{
	cJSON *u;

	if (res->finish_reason[0] &&
	    !cJSON_AddStringToObject(o, "finish_reason", res->finish_reason))
		return -1;
	if (res->prompt_tokens < 0 && res->completion_tokens < 0)
		return 0;
	if (!(u = cJSON_AddObjectToObject(o, "usage")))
		return -1;
	if (res->prompt_tokens >= 0 &&
	    !cJSON_AddNumberToObject(u, "prompt_tokens", (double)res->prompt_tokens))
		return -1;
	if (res->completion_tokens >= 0 &&
	    !cJSON_AddNumberToObject(u, "completion_tokens", (double)res->completion_tokens))
		return -1;
	return 0;
}

void chat_post(struct request *r)
{
	struct exchange ex;
	cJSON *o;
	int stored;

	if (exchange_begin(&ex, r, 0, 0) < 0) {
		resp_problem(r, &ex.problem);
		goto out;
	}
	/* A restart lets this finish: it is bounded by the total timeout. */
	if (exchange_run(&ex, config.upstream_total_timeout) < 0 && !ex.stopped) {
		exchange_release_slot(&ex);
		if (ex.result.outcome == UPSTREAM_STOPPED && ex.reply_cut) {
			resp_detail(r, 502, "The reply was too long and was stopped.");
		} else if (ex.result.outcome == UPSTREAM_STOPPED) {
			/* The client left: the model was stopped, nobody to answer. */
			r->client_gone = 1;
			r->status = 499; /* nginx's code for it, in the log */
			snprintf(r->note, sizeof r->note, "outcome=client_gone");
			metrics_client_abort();
		} else {
			resp_detail(r, ex.result.kind == METRICS_UE_TIMEOUT ? 504 : 502,
				    ex.result.error);
		}
		goto out;
	}
	/* Stopped (POST /api/chat/stop/): the reply so far is the answer. */
	stored = exchange_store(&ex, ex.stopped ? "stopped" : "done", NULL);
	exchange_release_slot(&ex); /* the chat is over, only its answer is left */
	if (stored < 0) {
		resp_detail(r, 503, "The reply could not be saved; please retry.");
		goto out;
	}
	o = cJSON_CreateObject();
	if (o && (!cJSON_AddStringToObject(o, "response", buf_str(&ex.reply)) ||
		  !cJSON_AddStringToObject(o, "conversation_id", ex.conversation) ||
		  !cJSON_AddStringToObject(o, "model", ex.model) ||
		  !cJSON_AddNumberToObject(o, "message_id", (double)ex.message_id) ||
		  !cJSON_AddStringToObject(o, "status", ex.stopped ? "stopped" : "done") ||
		  add_usage(o, &ex.result) < 0)) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json(r, 200, o);
out:
	exchange_end(&ex);
}

/* The conversation named in the query string (default "default");
 * 0, or -1 with a 400 sent. */
static int query_conversation(struct request *r, struct buf *out)
{
	int found = request_query(r, "conversation_id", out);

	if (found < 0 || (found && !history_conversation_valid(buf_str(out)))) {
		resp_field_error(r, "conversation_id",
				 "Use 1-64 characters of A-Z, a-z, 0-9, _ and -.");
		return -1;
	}
	if (!found && buf_puts(out, "default") != BUF_OK) {
		resp_json(r, 500, NULL);
		return -1;
	}
	return 0;
}

/* Who is calling: 0 with r->user_id set, or -1 with the 401 sent. */
static int authenticate(struct request *r)
{
	struct user u;

	if (auth_require(r, 0, &u) < 0)
		return -1;
	users_clear(&u); /* only the id is needed, and r->user_id has it */
	return 0;
}

/* A connection, or NULL with the 503 sent. */
static struct db *acquire(struct request *r)
{
	struct db *d = db_acquire();

	if (!d)
		resp_detail(r, 503, "Database unavailable.");
	return d;
}

/* Shared first steps of both history endpoints: who, which conversation,
 * a connection.  Returns the connection, or NULL with the answer sent. */
static struct db *history_begin(struct request *r, struct buf *conv)
{
	buf_init(conv, 4 * CONVERSATION_ID_MAX);
	if (authenticate(r) < 0 || query_conversation(r, conv) < 0)
		return NULL;
	return acquire(r);
}

/* A reply listed as 'streaming' whose process died (before any sweep
 * noticed): shown as it will be stored, interrupted, or not at all when
 * it has no text.  0 or -1. */
static int settle_streaming(struct db *d, long long user_id, cJSON *list)
{
	cJSON *m, *next;

	for (m = list->child; m; m = next) {
		const cJSON *status = cJSON_GetObjectItemCaseSensitive(m, "status");
		const cJSON *id = cJSON_GetObjectItemCaseSensitive(m, "id");
		const cJSON *content = cJSON_GetObjectItemCaseSensitive(m, "content");
		struct generation g;
		int rc;

		next = m->next;
		if (!cJSON_IsString(status) || strcmp(status->valuestring, "streaming") != 0)
			continue;
		rc = generations_find(d, user_id, (long long)id->valuedouble, NULL, &g);
		if (rc < 0)
			return -1;
		if (rc == 1 && g.alive)
			continue;
		if (cJSON_IsString(content) && content->valuestring[0] == '\0')
			cJSON_Delete(cJSON_DetachItemViaPointer(list, m));
		else if (!cJSON_ReplaceItemInObjectCaseSensitive(m, "status",
								 cJSON_CreateString("interrupted")))
			return -1;
	}
	return 0;
}

void chat_history_get(struct request *r)
{
	struct buf conv;
	struct db *d = history_begin(r, &conv);
	cJSON *o, *list;

	if (!d)
		goto out;
	/* One read transaction: the replies and their generations as of one
	 * moment (one that ends between the two reads is not taken for dead). */
	list = db_exec(d, "BEGIN") == 0 ? history_list(d, r->user_id, buf_str(&conv)) : NULL;
	if (list && settle_streaming(d, r->user_id, list) < 0) {
		cJSON_Delete(list);
		list = NULL;
	}
	db_release(d); /* ends the transaction */
	if (!list) {
		resp_detail(r, 503, "Database unavailable.");
		goto out;
	}
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddStringToObject(o, "conversation_id", buf_str(&conv))) {
		cJSON_Delete(o);
		cJSON_Delete(list);
		resp_json(r, 500, NULL);
		goto out;
	}
	cJSON_AddItemToObject(o, "messages", list);
	resp_json(r, 200, o);
out:
	buf_free(&conv);
}

void chat_history_delete(struct request *r)
{
	struct buf conv;
	struct db *d = history_begin(r, &conv);
	int rc;

	if (!d)
		goto out;
	rc = history_delete(d, r->user_id, buf_str(&conv));
	db_release(d);
	if (rc < 0)
		resp_detail(r, 503, "Database unavailable.");
	else
		resp_no_content(r);
out:
	buf_free(&conv);
}

static const char not_integer[] = "A valid integer is required.";

/* s[0..n) as a whole number in [min, max]: NULL with *out set, else the
 * reason (DRF's words; in msg when it names a bound).  Digits only: DRF's
 * "12.0" and " 12" are not worth a guess. */
static const char *whole_number(const char *s, size_t n, long long min, long long max,
				long long *out, char *msg, size_t msglen)
{
	long long v = 0;
	int over = 0;
	size_t i;

	if (n == 0)
		return not_integer;
	for (i = 0; i < n; i++) {
		int digit = s[i] - '0';

		if (s[i] < '0' || s[i] > '9')
			return not_integer;
		if (!over && v > (max - digit) / 10)
			over = 1; /* past max: the digits are still checked */
		else if (!over)
			v = v * 10 + digit;
	}
	if (over) {
		snprintf(msg, msglen, "Ensure this value is less than or equal to %lld.", max);
		return msg;
	}
	if (v < min) {
		snprintf(msg, msglen, "Ensure this value is greater than or equal to %lld.", min);
		return msg;
	}
	*out = v;
	return NULL;
}

/* The query parameter `name` as a whole number in [min, max] into *out
 * (left alone when absent), or its reason added to errors.  0, or -1 out
 * of memory. */
static int query_number(struct request *r, const char *name, long long min, long long max,
			long long *out, cJSON *errors)
{
	struct buf v;
	const char *problem = NULL;
	char msg[96];
	int found;

	/* A value decoded is never longer than the query string. */
	buf_init(&v, strlen(r->query) + 1);
	found = request_query(r, name, &v);
	if (found < 0)
		problem = request_bad_query;
	else if (found)
		problem = whole_number(buf_str(&v), v.len, min, max, out, msg, sizeof msg);
	buf_free(&v);
	return problem ? resp_add_field_error(errors, name, problem) : 0;
}

#define LIST_DEFAULT 50
#define LIST_MAX 200

void chat_conversations_get(struct request *r)
{
	long long limit = LIST_DEFAULT, before = INT64_MAX, next;
	cJSON *errors, *list, *o;
	struct db *d;

	if (authenticate(r) < 0)
		return;
	errors = cJSON_CreateObject();
	if (!errors || query_number(r, "limit", 1, LIST_MAX, &limit, errors) < 0 ||
	    query_number(r, "before", 1, INT64_MAX, &before, errors) < 0) {
		cJSON_Delete(errors);
		resp_json(r, 500, NULL);
		return;
	}
	if (errors->child) {
		resp_json(r, 400, errors);
		return;
	}
	cJSON_Delete(errors);
	if (!(d = acquire(r)))
		return;
	list = conversations_list(d, r->user_id, before, (int)limit, &next);
	db_release(d);
	if (!list) {
		resp_detail(r, 503, "Database unavailable.");
		return;
	}
	o = cJSON_CreateObject();
	if (!o || !cJSON_AddItemToObject(o, "conversations", list)) {
		cJSON_Delete(o);
		cJSON_Delete(list);
		resp_json(r, 500, NULL);
		return;
	}
	if (!(next ? cJSON_AddNumberToObject(o, "next", (double)next)
		   : cJSON_AddNullToObject(o, "next"))) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json(r, 200, o);
}

/* The conversation the path names (the route's "*" segment), or NULL with the
 * 404 sent: a malformed id is answered as one that does not exist. */
static const char *path_conversation(struct request *r)
{
	if (!r->segment || !history_conversation_valid(r->segment)) {
		resp_not_found(r);
		return NULL;
	}
	return r->segment;
}

/* The new title from the body, trimmed: 0 with *title, *len set, or -1
 * with the 400 sent. */
static int body_title(struct request *r, const char **title, size_t *len)
{
	int rc = request_field(r, "title", title);
	const char *problem = request_field_problem(rc);
	char msg[96];

	if (!problem) {
		*len = utf8_trim(title, strlen(*title));
		if (*len == 0) {
			problem = "This field may not be blank.";
		} else if (utf8_prefix(*title, *len, CONVERSATIONS_RENAME_MAX) < *len) {
			snprintf(msg, sizeof msg,
				 "Ensure this field has no more than %d characters.",
				 CONVERSATIONS_RENAME_MAX);
			problem = msg;
		}
	}
	if (problem) {
		resp_field_error(r, "title", problem);
		return -1;
	}
	return 0;
}

void chat_conversation_patch(struct request *r)
{
	const char *conv, *title;
	struct db *d = NULL;
	cJSON *o = NULL;
	size_t len;
	int rc;

	/* As DRF's UpdateAPIView: who, then which object (404), then the data. */
	if (authenticate(r) < 0 || !(conv = path_conversation(r)) || request_parse_body(r) < 0 ||
	    !(d = acquire(r)))
		goto out;
	rc = conversations_get(d, r->user_id, conv, &o);
	if (rc == 0) {
		cJSON_Delete(o);
		o = NULL;
		if (body_title(r, &title, &len) < 0)
			goto out;
		rc = conversations_rename(d, r->user_id, conv, title, len);
		if (rc == 0)
			rc = conversations_get(d, r->user_id, conv, &o);
	}
	if (rc < 0) {
		resp_detail(r, 503, "Database unavailable.");
	} else if (rc > 0) { /* none, or deleted meanwhile */
		resp_not_found(r);
	} else {
		resp_json(r, 200, o);
		o = NULL;
	}
out:
	db_release(d);
	cJSON_Delete(o);
}

void chat_conversation_delete(struct request *r)
{
	const char *conv;
	struct db *d;
	int rc;

	if (authenticate(r) < 0 || !(conv = path_conversation(r)) || !(d = acquire(r)))
		return;
	rc = history_delete(d, r->user_id, conv);
	db_release(d);
	if (rc < 0)
		resp_detail(r, 503, "Database unavailable.");
	else if (rc == 0) /* nothing of this user's: unknown, or another's */
		resp_not_found(r);
	else
		resp_no_content(r);
}
