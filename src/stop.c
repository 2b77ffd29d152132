/*
 * stop — the stop endpoint (see stop.h).
 *
 * The worker finds the generation in the database (this user's only),
 * leaves a stop request where every chat_stream process watches
 * (journal.h), and waits until the reply is stored with its final status,
 * which it answers.  The process generating the reply aborts the
 * upstream request at once and ends its readers' streams with done,
 * "stopped": true.  A generation that has ended already is answered with
 * the status it ended with: stopping twice is not an error.
 */
#include "stop.h"

#include <stdio.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "db.h"
#include "generations.h"
#include "history.h"
#include "journal.h"
#include "log.h"
#include "response.h"

#define WAIT_MS 5000	/* for the reply to be stored */
#define POLL_MS 50	/* between looks at its status */
#define RENEW_MS 1000	/* a request not acted on is made again (see below) */

/* The message to stop, from the body: 0 with *id or conv set, or -1 with
 * the 400 sent. */
static int read_target(struct request *r, long long *id, const char **conv)
{
	const cJSON *m, *c;

	if (request_parse_body(r) < 0)
		return -1;
	m = cJSON_GetObjectItemCaseSensitive(r->data, "message_id");
	c = cJSON_GetObjectItemCaseSensitive(r->data, "conversation_id");
	if (m) {
		if (cJSON_IsString(m) && m->valuestring[0] >= '1' && m->valuestring[0] <= '9' &&
		    strspn(m->valuestring, "0123456789") == strlen(m->valuestring) &&
		    strlen(m->valuestring) < 19)
			*id = strtoll(m->valuestring, NULL, 10); /* form fields are text */
		else if (cJSON_IsNumber(m) && m->valuedouble >= 1 && m->valuedouble < 9e15 &&
			 m->valuedouble == (double)(long long)m->valuedouble)
			*id = (long long)m->valuedouble;
		else
			return resp_field_error(r, "message_id", "A valid integer is required."), -1;
		return 0;
	}
	if (c) {
		if (!cJSON_IsString(c) || !history_conversation_valid(c->valuestring))
			return resp_field_error(r, "conversation_id",
						"Use 1-64 characters of A-Z, a-z, 0-9, _ and -."),
			       -1;
		*conv = c->valuestring;
		return 0;
	}
	resp_field_error(r, "message_id", "This field is required (or give conversation_id).");
	return -1;
}

/* Where reply id stands: "streaming" while its generation runs (a
 * /api/chat/ reply has no row before its end), else its stored status
 * ("interrupted" for a row left 'streaming' by a process that died).
 * 1 found, 0 not this user's reply (or, after a stop, nothing was kept),
 * -1. */
static int look(long long user_id, long long id, struct history_stored *h)
{
	struct db *d = db_acquire();
	struct generation g;
	int found, rc;

	if (!d)
		return -1;
	history_stored_free(h);
	rc = generations_find(d, user_id, id, NULL, &g);
	found = rc < 0 ? -1 : history_get_reply(d, user_id, id, h);
	db_release(d);
	if (rc < 0 || found < 0)
		return -1;
	if (rc == 1 && g.alive) {
		snprintf(h->conversation, sizeof h->conversation, "%s", g.conversation);
		snprintf(h->status, sizeof h->status, "streaming");
		return 1;
	}
	if (found == 1 && strcmp(h->status, "streaming") == 0)
		snprintf(h->status, sizeof h->status, "interrupted"); /* nothing will end it */
	return found;
}

static void answer(struct request *r, long long id, const struct history_stored *h, int status)
{
	cJSON *o = cJSON_CreateObject();

	if (o && (!cJSON_AddNumberToObject(o, "message_id", (double)id) ||
		  !cJSON_AddStringToObject(o, "conversation_id", h->conversation) ||
		  !cJSON_AddStringToObject(o, "status", h->status))) {
		cJSON_Delete(o);
		o = NULL;
	}
	resp_json(r, status, o);
}

void stop_post(struct request *r)
{
	static const struct timespec poll = {0, POLL_MS * 1000 * 1000};
	struct history_stored h = {0};
	const char *conv = NULL;
	char conversation[CONVERSATION_ID_MAX + 1];
	struct generation g;
	long long id = 0;
	struct user u;
	struct db *d;
	int rc, waited;

	if (auth_require(r, 0, &u) < 0)
		return;
	if (read_target(r, &id, &conv) < 0)
		goto out;
	if (conv) {
		d = db_acquire();
		rc = d ? generations_find(d, u.id, 0, conv, &g) : -1;
		db_release(d);
		if (rc < 0)
			goto unavailable;
		if (rc == 0) {
			resp_detail(r, 404, "Nothing is being generated in this conversation.");
			goto out;
		}
		id = g.message_id;
	}
	rc = look(u.id, id, &h);
	if (rc < 0)
		goto unavailable;
	if (rc == 0) {
		resp_not_found(r);
		goto out;
	}
	/* The generator may start watching after the request is made, or
	 * miss a file made twice in a row; one made again gets noticed. */
	for (waited = 0; strcmp(h.status, "streaming") == 0 && waited < WAIT_MS;
	     waited += POLL_MS) {
		if (waited % RENEW_MS == 0) {
			journal_clear_stop(id);
			if (journal_request_stop(id) < 0)
				goto unavailable;
		}
		nanosleep(&poll, NULL);
		memcpy(conversation, h.conversation, sizeof conversation);
		rc = look(u.id, id, &h);
		if (rc < 0)
			goto unavailable;
		if (rc == 0) { /* ended keeping nothing (the model had said nothing) */
			memcpy(h.conversation, conversation, sizeof conversation);
			snprintf(h.status, sizeof h.status, "stopped");
		}
	}
	journal_clear_stop(id);
	snprintf(r->note, sizeof r->note, "message_id=%lld status=%s", id, h.status);
	/* Still running after the wait: asked, not done (202). */
	answer(r, id, &h, strcmp(h.status, "streaming") == 0 ? 202 : 200);
	goto out;
unavailable:
	resp_detail(r, 503, "Database unavailable, please retry.");
out:
	history_stored_free(&h);
	users_clear(&u);
}
