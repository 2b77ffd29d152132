/*
 * sse — event formatting (see sse.h).  sse_chunk() is on the per-chunk
 * hot path: it appends to the caller's buffer, which relay.c reuses, so
 * no allocation once that buffer has grown.
 */
#include "sse.h"

#include <string.h>

#include "response.h"
#include "upstream.h"

int sse_start(struct request *r)
{
	if (resp_headers(r, 200, "text/event-stream; charset=utf-8", -1,
			 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0)
		return -1;
	/* nginx holds the headers back until body bytes follow; a comment
	 * gets them to the browser now, not with the first token. */
	if (resp_write(r, ": connected\n\n", 13) < 0)
		return -1;
	return resp_flush(r);
}

/* Append n in decimal (buf_printf's vsnprintf costs more than the rest
 * of a chunk's formatting). */
static int put_decimal(struct buf *out, unsigned long long n)
{
	char digits[24];
	size_t i = sizeof digits;

	do
		digits[--i] = (char)('0' + n % 10);
	while ((n /= 10) > 0);
	return buf_append(out, digits + i, sizeof digits - i);
}

int sse_chunk(struct buf *out, long long message_id, int seq, const char *text, size_t n)
{
	static const char data[] = "\ndata: {\"type\": \"chunk\", \"content\": \"";

	if (buf_puts(out, "id: ") != BUF_OK || message_id < 0 || seq < 0 ||
	    put_decimal(out, (unsigned long long)message_id) != BUF_OK ||
	    buf_putc(out, ':') != BUF_OK || put_decimal(out, (unsigned long long)seq) != BUF_OK ||
	    buf_append(out, data, sizeof data - 1) != BUF_OK || buf_json_escape(out, text, n) < 0 ||
	    buf_puts(out, "\"}\n\n") != BUF_OK)
		return -1;
	return 0;
}

/* ", \"name\": N" for a counter the model reported. */
static void add_counter(struct buf *b, const char *name, long long v)
{
	if (v >= 0)
		buf_printf(b, ", \"%s\": %lld", name, v);
}

int sse_done(struct buf *out, long long message_id, const char *conversation,
	     const struct upstream_result *res)
{
	buf_printf(out,
		   "event: done\ndata: {\"finished\": true, \"conversation_id\": \"%s\", "
		   "\"message_id\": %lld",
		   conversation, message_id); /* conversation ids are [A-Za-z0-9_-] */
	add_counter(out, "eval_count", res->eval_count);
	add_counter(out, "prompt_eval_count", res->prompt_eval_count);
	add_counter(out, "total_duration", res->total_duration);
	add_counter(out, "eval_duration", res->eval_duration);
	return buf_puts(out, "}\n\n") == BUF_OK ? 0 : -1;
}

int sse_error(struct buf *out, const char *message)
{
	if (buf_puts(out, "event: error\ndata: {\"type\": \"error\", \"message\": \"") != BUF_OK ||
	    buf_json_escape(out, message, strlen(message)) < 0 ||
	    buf_puts(out, "\"}\n\n") != BUF_OK)
		return -1;
	return 0;
}
