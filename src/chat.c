/*
 * chat — the old non-streaming API (see chat.h).  POST /api/chat/ runs the
 * same exchange pipeline as the stream and answers once the model is
 * done; on any failure nothing is stored.
 */
#include "chat.h"

#include <stdio.h>

#include "auth.h"
#include "config.h"
#include "db.h"
#include "exchange.h"
#include "history.h"
#include "metrics.h"
#include "response.h"

void chat_post(struct request *r)
{
	struct exchange ex;
	cJSON *o;
	int stored;

	if (exchange_begin(&ex, r, 0, 0) < 0)
		goto out;
	/* A restart lets this finish: it is bounded by the total timeout. */
	if (exchange_run(&ex, config.upstream_total_timeout) < 0) {
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
	stored = exchange_store(&ex, 1);
	exchange_release_slot(&ex); /* the chat is over, only its answer is left */
	if (stored < 0) {
		resp_detail(r, 503, "The reply could not be saved; please retry.");
		goto out;
	}
	o = cJSON_CreateObject();
	if (o && (!cJSON_AddStringToObject(o, "response", buf_str(&ex.reply)) ||
		  !cJSON_AddStringToObject(o, "conversation_id", ex.conversation) ||
		  !cJSON_AddStringToObject(o, "model", config.model) ||
		  !cJSON_AddNumberToObject(o, "message_id", (double)ex.message_id))) {
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

/* Shared first steps of both history endpoints: who, which conversation,
 * a connection.  Returns the connection, or NULL with the answer sent. */
static struct db *history_begin(struct request *r, struct user *u, struct buf *conv)
{
	struct db *d;

	buf_init(conv, 4 * CONVERSATION_ID_MAX);
	if (auth_require(r, 0, u) < 0)
		return NULL;
	users_clear(u); /* only the id is needed, and r->user_id has it */
	if (query_conversation(r, conv) < 0)
		return NULL;
	d = db_acquire();
	if (!d)
		resp_detail(r, 503, "Database unavailable.");
	return d;
}

void chat_history_get(struct request *r)
{
	struct user u;
	struct buf conv;
	struct db *d = history_begin(r, &u, &conv);
	cJSON *o, *list;

	if (!d)
		goto out;
	list = history_list(d, r->user_id, buf_str(&conv));
	db_release(d);
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
	struct user u;
	struct buf conv;
	struct db *d = history_begin(r, &u, &conv);
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
