/*
 * sse — event formatting (see sse.h).  sse_chunk() is on the per-chunk
 * hot path: it appends to the caller's buffer, which relay.c reuses, so
 * no allocation once that buffer has grown.
 */
#include "sse.h"

#include <string.h>

#include "response.h"
#include "upstream.h"

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

/* "id: <message_id>:<seq>\n" */
static int put_id(struct buf *out, long long message_id, int seq)
{
	if (message_id < 0 || seq < 0 || buf_puts(out, "id: ") != BUF_OK ||
	    put_decimal(out, (unsigned long long)message_id) != BUF_OK ||
	    buf_putc(out, ':') != BUF_OK || put_decimal(out, (unsigned long long)seq) != BUF_OK ||
	    buf_putc(out, '\n') != BUF_OK)
		return -1;
	return 0;
}

int sse_start(struct request *r, long long message_id, int seq, const char *comment)
{
	struct buf pre;
	int rc = -1;

	/* nginx holds the headers back until body bytes follow; the preamble
	 * gets them to the browser now, not with the first token.  An id
	 * without data dispatches no event but still sets the browser's last
	 * event id (WHATWG "dispatch the event", step 1). */
	buf_init(&pre, 128);
	if (buf_printf(&pre, ": %s\nretry: %d\n", comment, SSE_RETRY_MS) != BUF_OK ||
	    put_id(&pre, message_id, seq) < 0 || buf_putc(&pre, '\n') != BUF_OK)
		goto out;
	if (resp_headers(r, 200, "text/event-stream; charset=utf-8", -1,
			 "Cache-Control: no-cache\r\nX-Accel-Buffering: no\r\n") < 0 ||
	    resp_write(r, pre.data, pre.len) < 0)
		goto out;
	rc = resp_flush(r);
out:
	buf_free(&pre);
	return rc;
}

int sse_chunk(struct buf *out, long long message_id, int seq, const char *text, size_t n)
{
	static const char data[] = "data: {\"type\": \"chunk\", \"content\": \"";

	if (put_id(out, message_id, seq) < 0 || buf_append(out, data, sizeof data - 1) != BUF_OK ||
	    buf_json_escape(out, text, n) < 0 || buf_puts(out, "\"}\n\n") != BUF_OK)
		return -1;
	return 0;
}

/* ", \"name\": \"text\"", unless text is NULL or "".  0 or -1. */
static int add_text(struct buf *b, const char *name, const char *text)
{
	if (!text || !text[0])
		return 0;
	return buf_printf(b, ", \"%s\": \"", name) == BUF_OK &&
			       buf_json_escape(b, text, strlen(text)) == 0 &&
			       buf_putc(b, '"') == BUF_OK
		       ? 0
		       : -1;
}

/* ", \"usage\": {...}" with the counters known; nothing without any. */
static int add_usage(struct buf *b, long long prompt_tokens, long long completion_tokens)
{
	if (prompt_tokens < 0 && completion_tokens < 0)
		return 0;
	if (buf_puts(b, ", \"usage\": {") != BUF_OK)
		return -1;
	if (prompt_tokens >= 0 && buf_printf(b, "\"prompt_tokens\": %lld%s", prompt_tokens,
					     completion_tokens >= 0 ? ", " : "") != BUF_OK)
		return -1;
	if (completion_tokens >= 0 &&
	    buf_printf(b, "\"completion_tokens\": %lld", completion_tokens) != BUF_OK)
		return -1;
	return buf_putc(b, '}') == BUF_OK ? 0 : -1;
}

int sse_done(struct buf *out, long long message_id, int seq, const char *conversation,
	     const char *model, const struct upstream_result *res, int stopped)
{
	if (put_id(out, message_id, seq) < 0 ||
	    buf_printf(out,
		       "event: done\ndata: {\"finished\": true, \"conversation_id\": \"%s\", "
		       "\"message_id\": %lld, \"status\": \"%s\"%s",
		       conversation, /* conversation ids are [A-Za-z0-9_-] */
		       message_id, stopped ? "stopped" : "done",
		       stopped ? ", \"stopped\": true" : "") != BUF_OK ||
	    add_text(out, "model", model) < 0 ||
	    add_usage(out, res->prompt_tokens, res->completion_tokens) < 0 ||
	    add_text(out, "finish_reason", res->finish_reason) < 0 ||
	    buf_puts(out, "}\n\n") != BUF_OK)
		return -1;
	return 0;
}

int sse_error(struct buf *out, long long message_id, int seq, const char *message)
{
	if (put_id(out, message_id, seq) < 0 ||
	    buf_puts(out, "event: error\ndata: {\"type\": \"error\", \"message\": \"") != BUF_OK ||
	    buf_json_escape(out, message, strlen(message)) < 0 ||
	    buf_puts(out, "\"}\n\n") != BUF_OK)
		return -1;
	return 0;
}
