/*
 * sse — event formatting (see sse.h).  sse_chunk() is on the per-chunk
 * hot path: it appends to the caller's buffer, which relay.c reuses, so
 * no allocation once that buffer has grown.
 */
#include "sse.h"

#include <string.h>

#include "response.h"
#include "upstream.h"

int sse_json_escape(struct buf *out, const char *text, size_t n)
{
	static const char hex[] = "0123456789abcdef";
	const char *p = text, *end = text + n, *run = text;

	for (; p < end; p++) {
		unsigned char c = (unsigned char)*p;
		char esc[6] = {'\\', 0, '0', '0', 0, 0};
		size_t esclen = 2;

		if (c >= 0x20 && c != '"' && c != '\\')
			continue;
		/* Copy the plain run before this byte in one go. */
		if (buf_append(out, run, (size_t)(p - run)) != BUF_OK)
			return -1;
		switch (c) {
		case '"': esc[1] = '"'; break;
		case '\\': esc[1] = '\\'; break;
		case '\n': esc[1] = 'n'; break;
		case '\r': esc[1] = 'r'; break;
		case '\t': esc[1] = 't'; break;
		case '\b': esc[1] = 'b'; break;
		case '\f': esc[1] = 'f'; break;
		default:
			esc[1] = 'u';
			esc[4] = hex[c >> 4];
			esc[5] = hex[c & 15];
			esclen = 6;
		}
		if (buf_append(out, esc, esclen) != BUF_OK)
			return -1;
		run = p + 1;
	}
	return buf_append(out, run, (size_t)(end - run)) == BUF_OK ? 0 : -1;
}

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

int sse_chunk(struct buf *out, long long message_id, int seq, const char *text, size_t n)
{
	if (buf_printf(out, "id: %lld:%d\ndata: {\"type\": \"chunk\", \"content\": \"", message_id,
		       seq) != BUF_OK ||
	    sse_json_escape(out, text, n) < 0 || buf_puts(out, "\"}\n\n") != BUF_OK)
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
	    sse_json_escape(out, message, strlen(message)) < 0 ||
	    buf_puts(out, "\"}\n\n") != BUF_OK)
		return -1;
	return 0;
}
