/*
 * sse — the Server-Sent Events writer of chat_stream.
 *
 * Each event is assembled in one reusable buffer, written with one call
 * and flushed at once, so nginx (fastcgi_buffering off) passes it on the
 * moment the model produced it.  JSON escaping keeps the framing intact:
 * a newline in the model's text can never end an event early.
 */
#ifndef JARVAS_SSE_H
#define JARVAS_SSE_H

#include <stddef.h>

#include "buf.h"

struct request;
struct upstream_result;

struct sse {
	struct request *r;
	struct buf scratch; /* one event at a time, reused */
	long long message_id;
	int seq; /* chunks sent so far */
};

void sse_init(struct sse *s, struct request *r, long long message_id);
void sse_free(struct sse *s);

/* Status 200 and the event-stream headers.  Every function returns 0, or
 * -1 once the client is gone. */
int sse_start(struct sse *s);
int sse_chunk(struct sse *s, const char *text, size_t n);
int sse_done(struct sse *s, const char *conversation, const struct upstream_result *res);
int sse_error(struct sse *s, const char *message);
int sse_ping(struct sse *s);

/* Append text as the inside of a JSON string. 0 or -1. */
int sse_json_escape(struct buf *out, const char *text, size_t n);

#endif
