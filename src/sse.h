/*
 * sse — the Server-Sent Events of chat_stream.
 *
 * sse_start() sends the status and headers through libfcgi while a worker
 * thread still holds the request; every later event is formatted here
 * into bytes that relay.c frames and writes itself.  JSON escaping keeps
 * the framing intact: a newline in the model's text can never end an
 * event early.
 */
#ifndef JARVAS_SSE_H
#define JARVAS_SSE_H

#include <stddef.h>

#include "buf.h"

struct request;
struct upstream_result;

/* A comment line: keeps proxies and browsers from timing out. */
#define SSE_PING ": ping\n\n"

/* Status 200, the event-stream headers and a first comment, flushed.
 * 0, or -1 once the client is gone. */
int sse_start(struct request *r);

/* Append one event to out.  0, or -1 (out of memory or past out's cap). */
int sse_chunk(struct buf *out, long long message_id, int seq, const char *text, size_t n);
int sse_done(struct buf *out, long long message_id, const char *conversation,
	     const struct upstream_result *res);
int sse_error(struct buf *out, const char *message);

#endif
