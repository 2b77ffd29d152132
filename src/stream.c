/*
 * stream — the chat_stream endpoint (see stream.h): the part of a stream
 * that runs in a worker thread.
 *
 * The worker checks everything that can fail before the stream starts —
 * Last-Event-ID, room in this process, auth, input, the user's stream cap,
 * history and prompt — answering a plain HTTP error if it does; then sends
 * the 200 and the event-stream headers and hands the stream to relay.c,
 * which relays the model's reply and ends it.  The worker is free again
 * as soon as the headers are out.
 */
#include "stream.h"

#include <stdlib.h>

#include "exchange.h"
#include "log.h"
#include "relay.h"
#include "response.h"
#include "sse.h"

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

static void stream_run(struct request *r, int from_query)
{
	struct exchange *ex;

	/* A reconnecting EventSource would send the same message again. */
	if (request_param(r, "HTTP_LAST_EVENT_ID")) {
		resp_no_content(r);
		return;
	}
	if (relay_reserve() < 0) {
		resp_json_text(r, 503,
			       "{\"detail\": \"This server holds as many streams as it can; "
			       "retry in a moment.\"}",
			       "Retry-After: 5\r\n");
		return;
	}
	ex = malloc(sizeof *ex);
	if (!ex) {
		resp_detail(r, 503, "Out of memory, please retry.");
		relay_unreserve();
		return;
	}
	if (exchange_begin(ex, r, from_query, 1) == 0 && sse_start(r, ex->message_id) == 0) {
		if (relay_submit(r, ex) == 0)
			return; /* the relay has ex, the connection and the place */
		fail_started(r, ex->message_id);
	}
	/* Never reached the relay: take back the user message stored at the
	 * start (nothing was said to the model). */
	if (ex->user_stored && exchange_store(ex, 0) < 0)
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
