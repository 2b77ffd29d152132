/*
 * buf — a growable byte buffer with a hard maximum.
 *
 * Every variable-length thing jarvas holds (request bodies, NDJSON lines,
 * replies, SQL results) lives in a buf.  It grows on demand up to the `max`
 * given at init and fails cleanly past it, so one type gives both memory
 * safety and our size limits.  Invariant: data[len] == '\0' whenever
 * data != NULL, so the contents can always be used as a C string.
 *
 * Errors are sticky, as in curl's dynbuf: once an append fails, every
 * later append fails too without changing the contents (until buf_reset()
 * or buf_free()), so a text built in many steps is never used with a
 * piece missing from its middle.  Every append's result must be looked
 * at (warn_unused_result); checking the last one of a sequence is enough.
 */
#ifndef JARVAS_BUF_H
#define JARVAS_BUF_H

#include <stdarg.h>
#include <stddef.h>

struct buf {
	char *data;
	size_t len;
	size_t cap;
	size_t max; /* largest len allowed */
	int err;    /* BUF_OK, or the first append's failure (sticky) */
};

enum { BUF_OK = 0, BUF_NOMEM = -1, BUF_TOOBIG = -2 };

#define BUF_CHECK __attribute__((warn_unused_result))

void buf_init(struct buf *b, size_t max);
void buf_free(struct buf *b);
void buf_reset(struct buf *b); /* len = 0 and no error; keeps the memory */
/* The sticky error: BUF_OK, BUF_NOMEM or BUF_TOOBIG. */
int buf_error(const struct buf *b);
/* Room for `extra` more bytes now, so that the appends that follow do
 * not reallocate.  BUF_OK, BUF_TOOBIG or BUF_NOMEM. */
int buf_reserve(struct buf *b, size_t extra) BUF_CHECK;
int buf_append(struct buf *b, const void *p, size_t n) BUF_CHECK;
int buf_puts(struct buf *b, const char *s) BUF_CHECK;
int buf_putc(struct buf *b, char c) BUF_CHECK;
int buf_printf(struct buf *b, const char *fmt, ...)
	__attribute__((format(printf, 2, 3), warn_unused_result));
int buf_vprintf(struct buf *b, const char *fmt, va_list ap) BUF_CHECK;
/* Drop the first n bytes, moving the rest to the front. */
void buf_consume(struct buf *b, size_t n);
/* Hand the contents to the caller (who frees them); b is left empty. */
char *buf_steal(struct buf *b);
/* Append text as the inside of a JSON string: quote, backslash and
 * control bytes escaped, everything else (UTF-8 included) as it is, so
 * the result never holds a raw newline.  0 or -1. */
int buf_json_escape(struct buf *b, const char *text, size_t n) BUF_CHECK;
/* Contents as a C string; "" for a buffer that never held anything. */
const char *buf_str(const struct buf *b);

#endif
