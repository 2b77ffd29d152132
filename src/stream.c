/*
 * stream — the chat_stream endpoint (see stream.h).
 *
 * What a chunk goes through: upstream.c's curl write callback → the
 * NDJSON splitter → parse_line → exchange.c collect() → on_content()
 * below → sse_chunk() → FCGX_FFlush to nginx.
 *
 * A client that leaves is noticed two ways: a failed write, or — while
 * the model is silent — the FastCGI socket reporting the peer's close
 * (nginx closes it when the browser goes; fastcgi_keep_conn is off).
 * Either way the upstream transfer is aborted at once.
 */
#include "stream.h"

#include <poll.h>
#include <time.h>

#include "config.h"
#include "exchange.h"
#include "log.h"
#include "metrics.h"
#include "response.h"
#include "server.h"
#include "sse.h"

#define GONE_CHECK_INTERVAL 0.25 /* seconds between socket checks */

struct stream_state {
	struct request *r;
	struct sse sse;
	double last_write;
	double last_check;
	int restarting; /* stopped because the server is shutting down */
};

static double now_s(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (double)ts.tv_sec + (double)ts.tv_nsec / 1e9;
}

static int on_content(void *ctx, const char *text, size_t n)
{
	struct stream_state *s = ctx;

	if (s->r->first_chunk_ms < 0) {
		s->r->first_chunk_ms = request_elapsed_ms(s->r);
		metrics_first_chunk(s->r->first_chunk_ms);
	}
	if (sse_chunk(&s->sse, text, n) < 0)
		return -1;
	s->last_write = now_s();
	return 0;
}

/* Has nginx closed the connection?  POLLRDHUP is set by the peer's close
 * even when unread bytes are still queued. */
static int peer_closed(struct request *r)
{
	struct pollfd p = {.fd = r->fcgx->ipcFd, .events = POLLRDHUP};

	return poll(&p, 1, 0) > 0 && (p.revents & (POLLRDHUP | POLLHUP | POLLERR));
}

static int on_tick(void *ctx)
{
	struct stream_state *s = ctx;
	double t = now_s();

	if (server_stopping()) {
		s->restarting = 1;
		return -1;
	}
	if (t - s->last_check >= GONE_CHECK_INTERVAL) {
		s->last_check = t;
		if (peer_closed(s->r)) {
			s->r->client_gone = 1;
			return -1;
		}
	}
	if (t - s->last_write >= config.ping_interval) {
		if (sse_ping(&s->sse) < 0)
			return -1;
		s->last_write = t;
	}
	return 0;
}

static void stream_run(struct request *r, int from_query)
{
	struct stream_state s = {.r = r};
	struct exchange ex;
	double started;
	int complete;

	/* A reconnecting EventSource would send the same message again. */
	if (request_param(r, "HTTP_LAST_EVENT_ID")) {
		resp_no_content(r);
		return;
	}
	if (exchange_begin(&ex, r, from_query, r->worker->id) < 0)
		goto out;
	sse_init(&s.sse, r, ex.message_id);
	ex.on_content = on_content;
	ex.on_tick = on_tick;
	ex.ctx = &s;
	metrics_active_streams(1);
	started = s.last_write = s.last_check = now_s();

	if (sse_start(&s.sse) == 0)
		exchange_run(&ex, 0);
	else
		ex.result.outcome = UPSTREAM_STOPPED;

	/* Store first: once "done" is out, history must already hold it. */
	complete = ex.result.outcome == UPSTREAM_DONE;
	if (exchange_store(&ex, complete) < 0 && !r->client_gone) {
		sse_error(&s.sse, "The reply could not be saved; please retry.");
	} else if (complete) {
		sse_done(&s.sse, ex.conversation, &ex.result);
	} else if (s.restarting) {
		sse_error(&s.sse, "The server is restarting; please retry in a moment.");
	} else if (ex.result.outcome == UPSTREAM_FAILED) {
		sse_error(&s.sse, ex.result.error);
	} else if (!r->client_gone) {
		/* Stopped by us with the client still there: the reply outgrew
		 * its buffer.  Never end a stream without done or error. */
		sse_error(&s.sse, "The reply was too long and was stopped.");
	}
	if (r->client_gone) {
		metrics_client_abort();
		snprintf(r->note, sizeof r->note, "outcome=client_gone message_id=%lld",
			 ex.message_id);
	} else {
		snprintf(r->note, sizeof r->note, "outcome=%s message_id=%lld",
			 complete	? "done"
			 : s.restarting ? "restarting"
					: "upstream_error",
			 ex.message_id);
	}
	metrics_stream_duration((now_s() - started) * 1e3);
	metrics_active_streams(-1);
	sse_free(&s.sse);
out:
	exchange_end(&ex);
}

void stream_get(struct request *r)
{
	stream_run(r, 1);
}

void stream_post(struct request *r)
{
	stream_run(r, 0);
}
