/*
 * sse — the Server-Sent Events of chat_stream.
 *
 * sse_start() sends the status and headers through libfcgi while a worker
 * thread still holds the request; every later event is formatted here
 * into bytes that relay.c frames and writes itself.  JSON escaping keeps
 * the framing intact: a newline in the model's text can never end an
 * event early.
 *
 * Every stream carries event ids from its first bytes on: the preamble
 * sets "<message_id>:0", chunks count from 1, and the closing done or
 * error event takes the next number.  So a browser that reconnects after
 * any end, even a failure before the first token, sends Last-Event-ID
 * instead of the same message again: it gets the rest of that reply
 * (stream.c), or 204, which stops EventSource.
 */
#ifndef JARVAS_SSE_H
#define JARVAS_SSE_H

#include <stddef.h>

#include "buf.h"

struct request;
struct upstream_result;

/* A comment line: keeps proxies and browsers from timing out. */
#define SSE_PING ": ping\n\n"

/* The error a reply ends with when its client left (and, resumable, did
 * not come back in time), as readers of its journal and later resumes see it. */
#define SSE_INTERRUPTED "This reply was interrupted before it finished."

/* The reconnection delay a browser is told to use (the retry: field), so
 * that a client that does reconnect backs off instead of hammering. */
#define SSE_RETRY_MS 3000

/* Status 200, the event-stream headers and the preamble (the comment,
 * the retry time and the id "<message_id>:<seq>": 0 for a new stream, the
 * last event a reconnecting client saw), flushed.  0, or -1 once the
 * client is gone. */
int sse_start(struct request *r, long long message_id, int seq, const char *comment);

/* Append one event with the id "<message_id>:<seq>" to out.  0, or -1
 * (out of memory or past out's cap). */
int sse_chunk(struct buf *out, long long message_id, int seq, const char *text, size_t n);
/* The end of a reply: status "done", or "stopped" with "stopped": true;
 * the model (NULL or "": not known), "usage" with the counters res has,
 * and its finish_reason when it has one. */
int sse_done(struct buf *out, long long message_id, int seq, const char *conversation,
	     const char *model, const struct upstream_result *res, int stopped);
int sse_error(struct buf *out, long long message_id, int seq, const char *message);

#endif
