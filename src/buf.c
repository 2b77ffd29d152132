/*
 * buf — growable bounded byte buffer (see buf.h).
 * Growth doubles the capacity so appends are amortised O(1); the
 * maximum is checked before any allocation.
 */
#include "buf.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void buf_init(struct buf *b, size_t max)
{
	b->data = NULL;
	b->len = 0;
	b->cap = 0;
	b->max = max;
	b->err = BUF_OK;
}

void buf_free(struct buf *b)
{
	free(b->data);
	buf_init(b, b->max);
}

void buf_reset(struct buf *b)
{
	b->len = 0;
	b->err = BUF_OK;
	if (b->data)
		b->data[0] = '\0';
}

int buf_error(const struct buf *b)
{
	return b->err;
}

/* Record the first failure; every later append returns it. */
static int fail(struct buf *b, int rc)
{
	if (b->err == BUF_OK)
		b->err = rc;
	return b->err;
}

int buf_reserve(struct buf *b, size_t extra)
{
	size_t need, cap;
	char *p;

	if (b->err != BUF_OK)
		return b->err;
	if (extra > b->max - b->len)
		return fail(b, BUF_TOOBIG);
	need = b->len + extra + 1; /* + NUL */
	if (need <= b->cap)
		return BUF_OK;
	cap = b->cap ? b->cap : 64;
	while (cap < need)
		cap *= 2;
	if (cap > b->max + 1)
		cap = b->max + 1;
	p = realloc(b->data, cap);
	if (!p)
		return fail(b, BUF_NOMEM);
	b->data = p;
	b->cap = cap;
	return BUF_OK;
}

int buf_append(struct buf *b, const void *p, size_t n)
{
	int rc = buf_reserve(b, n);

	if (rc != BUF_OK)
		return rc;
	if (n)
		memcpy(b->data + b->len, p, n);
	b->len += n;
	b->data[b->len] = '\0';
	return BUF_OK;
}

int buf_puts(struct buf *b, const char *s)
{
	return buf_append(b, s, strlen(s));
}

int buf_putc(struct buf *b, char c)
{
	return buf_append(b, &c, 1);
}

int buf_vprintf(struct buf *b, const char *fmt, va_list ap)
{
	va_list ap2;
	size_t room = b->cap > b->len ? b->cap - b->len : 0;
	int n, rc;

	if (b->err != BUF_OK)
		return b->err;

	/* Format straight into the spare room when it fits (it usually
	 * does): one vsnprintf() instead of a measuring one and a second. */
	va_copy(ap2, ap);
	n = vsnprintf(room ? b->data + b->len : NULL, room, fmt, ap2);
	va_end(ap2);
	if (n < 0) {
		if (room)
			b->data[b->len] = '\0';
		return fail(b, BUF_NOMEM);
	}
	if ((size_t)n < room) { /* within max too: cap is at most max + 1 */
		b->len += (size_t)n;
		return BUF_OK;
	}
	if (room)
		b->data[b->len] = '\0';
	rc = buf_reserve(b, (size_t)n);
	if (rc != BUF_OK)
		return rc;
	if (vsnprintf(b->data + b->len, (size_t)n + 1, fmt, ap) != n) {
		b->data[b->len] = '\0';
		return fail(b, BUF_NOMEM);
	}
	b->len += (size_t)n;
	return BUF_OK;
}

int buf_printf(struct buf *b, const char *fmt, ...)
{
	va_list ap;
	int rc;

	va_start(ap, fmt);
	rc = buf_vprintf(b, fmt, ap);
	va_end(ap);
	return rc;
}

void buf_consume(struct buf *b, size_t n)
{
	if (n >= b->len) {
		buf_reset(b);
		return;
	}
	memmove(b->data, b->data + n, b->len - n);
	b->len -= n;
	b->data[b->len] = '\0';
}

char *buf_steal(struct buf *b)
{
	char *p = b->data;

	if (!p)
		p = calloc(1, 1);
	buf_init(b, b->max);
	return p;
}

const char *buf_str(const struct buf *b)
{
	return b->data ? b->data : "";
}

int buf_json_escape(struct buf *out, const char *text, size_t n)
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
