/*
 * sse — event formatting and flushing (see sse.h).  This is the per-chunk
 * hot path: no allocation once the scratch buffer has grown.
 */
#include "sse.h"

#include <string.h>

#include "response.h"
#include "upstream.h"

void sse_init(struct sse *s, struct request *r, long long message_id)
{
	s->r = r;
	s->message_id = message_id;
	s->seq = 0;
	buf_init(&s->scratch, 16u << 20);
}

void sse_free(struct sse *s)
{
	buf_free(&s->scratch);
}

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

static int send_event(struct sse *s)
{
	if (resp_write(s->r, s->scratch.data, s->scratch.len) < 0)
		return -1;
	return resp_flush(s->r);
}

int sse_start(struct sse *s)
{
	if (resp_headers(s->r, 200, "text/event-stream; charset=utf-8", -1,
			 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0)
		return -1;
	/* nginx holds the headers back until body bytes follow; a comment
	 * gets them to the browser now, not with the first token. */
	if (resp_write(s->r, ": connected\n\n", 13) < 0)
		return -1;
	return resp_flush(s->r);
}

int sse_chunk(struct sse *s, const char *text, size_t n)
{
	buf_reset(&s->scratch);
	s->seq++;
	if (buf_printf(&s->scratch, "id: %lld:%d\ndata: {\"type\": \"chunk\", \"content\": \"",
		       s->message_id, s->seq) != BUF_OK ||
	    sse_json_escape(&s->scratch, text, n) < 0 || buf_puts(&s->scratch, "\"}\n\n") != BUF_OK)
		return -1;
	return send_event(s);
}

/* ", \"name\": N" for a counter the model reported. */
static void add_counter(struct buf *b, const char *name, long long v)
{
	if (v >= 0)
		buf_printf(b, ", \"%s\": %lld", name, v);
}

int sse_done(struct sse *s, const char *conversation, const struct upstream_result *res)
{
	buf_reset(&s->scratch);
	buf_printf(&s->scratch,
		   "event: done\ndata: {\"finished\": true, \"conversation_id\": \"%s\", "
		   "\"message_id\": %lld",
		   conversation, s->message_id); /* conversation ids are [A-Za-z0-9_-] */
	add_counter(&s->scratch, "eval_count", res->eval_count);
	add_counter(&s->scratch, "prompt_eval_count", res->prompt_eval_count);
	add_counter(&s->scratch, "total_duration", res->total_duration);
	add_counter(&s->scratch, "eval_duration", res->eval_duration);
	if (buf_puts(&s->scratch, "}\n\n") != BUF_OK)
		return -1;
	return send_event(s);
}

int sse_error(struct sse *s, const char *message)
{
	buf_reset(&s->scratch);
	if (buf_puts(&s->scratch, "event: error\ndata: {\"type\": \"error\", \"message\": \"") !=
		    BUF_OK ||
	    sse_json_escape(&s->scratch, message, strlen(message)) < 0 ||
	    buf_puts(&s->scratch, "\"}\n\n") != BUF_OK)
		return -1;
	return send_event(s);
}

int sse_ping(struct sse *s)
{
	if (resp_write(s->r, ": ping\n\n", 8) < 0)
		return -1;
	return resp_flush(s->r);
}
