/*
 * stream — the chat_stream endpoint (see stream.h): the part of a stream
 * that runs in a worker thread.
 *
 * The worker checks everything that can fail before the stream starts —
 * room in this process, auth, input, the user's stream cap, the one
 * generation of the conversation, history and prompt — answering a plain
 * HTTP error if it does; then sends the 200 and the event-stream headers
 * and hands the stream to relay.c, which relays the model's reply and
 * ends it.  The worker is free again as soon as the headers are out.
 *
 * A client that reconnects (Last-Event-ID, or ?resume=) is sent the rest
 * of its reply: while the reply is generated, by relay.c following the
 * generation's journal (journal.h), from whichever process; once it is
 * stored, by the worker from history, cut in the chunks it was sent in.
 */
#include "stream.h"

#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "auth.h"
#include "db.h"
#include "exchange.h"
#include "generations.h"
#include "history.h"
#include "journal.h"
#include "limits.h"
#include "log.h"
#include "relay.h"
#include "response.h"
#include "sse.h"
#include "utf8.h"

/* The 200 is out but the relay could not take the stream: end it with
 * an error event through libfcgi.  Nothing went upstream, nothing is
 * stored. */
static void fail_started(struct request *r, long long message_id)
{
	struct buf ev;

	buf_init(&ev, 4096);
	if (sse_error(&ev, message_id, 1, "Out of memory, please retry.") == 0 &&
	    resp_write(r, ev.data, ev.len) == 0)
		resp_flush(r);
	buf_free(&ev);
}

/* "<message_id>:<seq>" (both whole numbers, the id positive): 0 with
 * both set, or -1. */
static int parse_event_id(const char *v, long long *message_id, int *seq)
{
	char *end;
	long long id, n;

	if (!v || *v < '1' || *v > '9')
		return -1;
	id = strtoll(v, &end, 10);
	if (*end != ':' || end[1] < '0' || end[1] > '9')
		return -1;
	n = strtoll(end + 1, &end, 10);
	if (*end || n > 0x7fffffff || id <= 0)
		return -1;
	*message_id = id;
	*seq = (int)n;
	return 0;
}

/* The number of chunks a stored reply was sent in, or -1 when its
 * record does not add up to its text. */
static long count_chunks(const struct history_stored *h)
{
	const unsigned char *p = h->chunks, *end = p + h->chunks_len;
	size_t len, sum = 0;
	long n = 0;
	int rc;

	while ((rc = history_chunk_next(&p, end, &len)) == 1 && len <= h->len - sum) {
		sum += len;
		n++;
	}
	return rc == 0 && sum == h->len ? n : -1;
}

/* A stored reply, from the event after seq: its chunks as they were sent
 * (or, without their lengths recorded, the whole text as one chunk to a
 * client that saw none), then its end.  Written by this worker. */
static void replay_stored(struct request *r, long long id, int seq, const struct history_stored *h)
{
	const unsigned char *p = h->chunks, *end = p + h->chunks_len;
	long n = h->chunks ? count_chunks(h) : (h->len > 0 ? 1 : 0), i;
	size_t from = 0, len = h->len;
	struct upstream_result res;
	struct buf ev;
	int rc = 0;

	if (n < 0 || (!h->chunks && h->len > 0 && seq > 0) || seq > n) {
		resp_no_content(r); /* nothing left, or not known what is */
		return;
	}
	if (sse_start(r, id, seq, "resumed") < 0)
		return;
	buf_init(&ev, 64u << 20);
	for (i = 0; i < n && rc == 0; i++, from += len) {
		if (h->chunks)
			history_chunk_next(&p, end, &len); /* count_chunks() checked them */
		if (i < seq)
			continue; /* the client has it */
		buf_reset(&ev);
		rc = sse_chunk(&ev, id, (int)i + 1, h->text + from, len) < 0 ||
				     resp_write(r, ev.data, ev.len) < 0
			     ? -1
			     : 0;
	}
	if (rc == 0) {
		memset(&res, 0, sizeof res);
		res.completion_tokens = h->completion_tokens;
		res.prompt_tokens = h->prompt_tokens;
		utf8_copy(res.finish_reason, sizeof res.finish_reason, h->finish_reason);
		buf_reset(&ev);
		if (strcmp(h->status, "done") == 0 || strcmp(h->status, "stopped") == 0)
			rc = sse_done(&ev, id, (int)n + 1, h->conversation, h->model, &res,
				      strcmp(h->status, "stopped") == 0);
		else if (strcmp(h->status, "failed") == 0)
			rc = sse_error(&ev, id, (int)n + 1,
				       h->error ? h->error : "The model failed to answer.");
		else
			rc = sse_error(&ev, id, (int)n + 1, SSE_INTERRUPTED);
		if (rc == 0 && resp_write(r, ev.data, ev.len) == 0)
			resp_flush(r);
	}
	buf_free(&ev);
	snprintf(r->note, sizeof r->note, "outcome=replayed message_id=%lld from=%d", id, seq);
}

/* 503: this process holds config.streams_max streams. */
static void server_full(struct request *r)
{
	resp_json_text(r, 503,
		       "{\"detail\": \"This server holds as many streams as it can; "
		       "retry in a moment.\"}",
		       "Retry-After: 5\r\n");
}

/* Hand a client to the relay to follow the journal: its place, its slot
 * under the user's cap, the headers.  Answers whatever fails. */
static void follow(struct request *r, struct journal_reader *jr, long long user_id, int seq)
{
	int slot;

	if (relay_reserve() < 0) {
		server_full(r);
		goto fail;
	}
	if (limits_enter(user_id, &slot) < 0) {
		resp_json_text(r, 429,
			       "{\"detail\": \"Too many open streams. Close one and retry.\"}",
			       "Retry-After: 5\r\n");
		relay_unreserve();
		goto fail;
	}
	if (sse_start(r, jr->message_id, seq, "resumed") == 0 &&
	    relay_follow(r, jr, user_id, slot) == 0)
		return; /* the relay has jr, the slot and the place */
	limits_leave(slot);
	relay_unreserve();
fail:
	journal_close(jr);
	free(jr);
}

/* What a reconnecting client is sent: the journal followed (1, *jr set),
 * the stored reply (0, *h filled), or nothing (-1: 204; -2: 503 sent).
 * A reply still 'streaming' whose journal is not there yet (being
 * created) or not any more (just stored) is looked at again shortly. */
static int find_rest(struct request *r, long long user_id, long long id, int seq,
		     struct journal_reader **jr, struct history_stored *h)
{
	static const struct timespec pause = {0, 50 * 1000 * 1000};
	struct generation g;
	int tries, rc, found;

	for (tries = 0; tries < 40; tries++) {
		struct db *d = db_acquire();

		found = d ? history_get_reply(d, user_id, id, h) : -1;
		rc = found == 1 && strcmp(h->status, "streaming") == 0
			     ? generations_find(d, user_id, id, NULL, &g)
			     : 0;
		db_release(d);
		if (found < 0 || rc < 0) {
			resp_detail(r, 503, "Database unavailable, please retry.");
			return -2;
		}
		if (found == 0)
			return -1;
		if (strcmp(h->status, "streaming") != 0)
			return 0;
		if (rc == 0 || !g.alive) { /* its process died: what was saved is all */
			snprintf(h->status, sizeof h->status, "interrupted");
			return 0;
		}
		if (!g.resumable)
			return -1; /* its client holds it; nothing to join */
		history_stored_free(h);
		*jr = malloc(sizeof **jr);
		if (!*jr) {
			resp_detail(r, 503, "Out of memory, please retry.");
			return -2;
		}
		rc = journal_open(*jr, id, seq);
		if (rc == 0)
			return 1;
		journal_close(*jr);
		free(*jr);
		*jr = NULL;
		if (rc < 0) {
			resp_detail(r, 503, "The stream cannot be resumed here; please retry.");
			return -2;
		}
		nanosleep(&pause, NULL);
	}
	return -1;
}

/* Last-Event-ID, or ?resume=<message_id> (from the start). */
static void resume(struct request *r, int from_query, const char *last_event_id)
{
	struct history_stored h = {0};
	struct journal_reader *jr = NULL;
	long long id = 0;
	int seq = 0, rc;
	struct user u;
	struct buf v;

	if (!last_event_id) {
		char *end = NULL;

		buf_init(&v, 32);
		if (request_query(r, "resume", &v) == 1 && buf_str(&v)[0] >= '1' &&
		    buf_str(&v)[0] <= '9' && v.len < 19)
			id = strtoll(buf_str(&v), &end, 10);
		rc = end && *end == '\0' ? 0 : -1;
		buf_free(&v);
		if (rc < 0) {
			resp_field_error(r, "resume", "A valid integer is required.");
			return;
		}
	} else if (parse_event_id(last_event_id, &id, &seq) < 0) {
		resp_no_content(r); /* not one of ours: nothing to resume */
		return;
	}
	if (auth_require(r, from_query ? AUTH_QUERY_KEEP_TICKET : 0, &u) < 0)
		return;
	rc = find_rest(r, u.id, id, seq, &jr, &h);
	if (rc == 1)
		follow(r, jr, u.id, seq);
	else if (rc == 0)
		replay_stored(r, id, seq, &h);
	else if (rc == -1)
		resp_no_content(r);
	history_stored_free(&h);
	users_clear(&u);
}

/* Does the query string name a reply to resume? */
static int asks_resume(const struct request *r)
{
	return strstr(r->query, "resume=") != NULL;
}

static void stream_run(struct request *r, int from_query)
{
	const char *last = request_param(r, "HTTP_LAST_EVENT_ID");
	struct exchange *ex;

	/* A reconnecting client gets the rest of its reply, never the same
	 * message sent again. */
	if (last || (from_query && asks_resume(r))) {
		resume(r, from_query, last);
		return;
	}
	if (relay_reserve() < 0) {
		server_full(r);
		return;
	}
	ex = malloc(sizeof *ex);
	if (!ex) {
		resp_detail(r, 503, "Out of memory, please retry.");
		relay_unreserve();
		return;
	}
	if (exchange_begin(ex, r, from_query, 1) < 0) {
		resp_problem(r, &ex->problem);
	} else if (sse_start(r, ex->message_id, 0, "connected") == 0) {
		if (relay_submit(r, ex) == 0)
			return; /* the relay has ex, the connection and the place */
		fail_started(r, ex->message_id);
	}
	/* Never reached the relay: take back the user message stored at the
	 * start (nothing was said to the model). */
	if (ex->reserved && exchange_store(ex, "interrupted", NULL) < 0)
		log_warn("message %lld stays in history without a reply", ex->user_msg_id);
	exchange_end(ex);
	free(ex);
	relay_unreserve();
}

void stream_get(struct request *r)
{
	stream_run(r, 1);
}

void stream_post(struct request *r)
{
	stream_run(r, 0);
}
